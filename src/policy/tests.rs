//! Tests of policy loading and evaluation: the truth table of DESIGN's precedence and every
//! validation error with its position.

use std::path::PathBuf;
use std::sync::Arc;

use super::*;
use crate::reason::Reason;

fn load(files: &[(&str, &str)]) -> Result<PolicySnapshot, PolicyErrors> {
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(n, t)| (PathBuf::from(n), t.to_string()))
        .collect();
    load_files(
        &files,
        &LoadOptions {
            default_domain: Some("contoso.com".into()),
        },
    )
}

fn org(name: &str, domains: &str, disabled: &str, mailboxes: &str) -> String {
    format!(
        "organization: {name}\ndomains: {domains}\nsmtp_client_authentication_disabled: {disabled}\nmailboxes:\n{mailboxes}"
    )
}

fn decide(snap: &PolicySnapshot, login: &str) -> Decision {
    evaluate(snap, &Submission { login })
}

#[test]
fn precedence_truth_table() {
    // org value × mailbox value (true / false / null / absent) → effective, reason.
    for org_disabled in [false, true] {
        for (mb, expect_disabled, reason) in [
            (
                "{ smtp_client_authentication_disabled: true }",
                Some(true),
                Reason::MailboxDisabled,
            ),
            (
                "{ smtp_client_authentication_disabled: false }",
                Some(false),
                Reason::MailboxDisabled,
            ),
            (
                "{ smtp_client_authentication_disabled: null }",
                None,
                Reason::OrgDisabled,
            ),
            ("{}", None, Reason::OrgDisabled),
        ] {
            let text = org(
                "contoso",
                "[contoso.com]",
                &org_disabled.to_string(),
                &format!("  user@contoso.com: {mb}\n"),
            );
            let snap = load(&[("c.yaml", &text)]).unwrap();
            let effective = expect_disabled.unwrap_or(org_disabled);
            let d = decide(&snap, "User@Contoso.com");
            if effective {
                assert_eq!(
                    d,
                    Decision::Reject {
                        reason,
                        mailbox: "user@contoso.com".into(),
                        organization: Some("contoso".into()),
                    },
                    "org={org_disabled} mailbox={mb}"
                );
            } else {
                assert!(
                    matches!(d, Decision::Allow(_)),
                    "org={org_disabled} mailbox={mb}: {d:?}"
                );
            }
            // A mailbox without an entry follows the organization.
            let other = decide(&snap, "nobody@contoso.com");
            assert_eq!(matches!(other, Decision::Reject { .. }), org_disabled);
        }
    }
}

#[test]
fn unknown_organization_is_denied_unless_a_fallback_exists() {
    let snap = load(&[("c.yaml", &org("contoso", "[contoso.com]", "false", ""))]).unwrap();
    assert_eq!(
        decide(&snap, "x@elsewhere.org"),
        Decision::Reject {
            reason: Reason::UnknownOrganization,
            mailbox: "x@elsewhere.org".into(),
            organization: None,
        }
    );
    let snap = load(&[
        ("c.yaml", &org("contoso", "[contoso.com]", "false", "")),
        (
            "z.yaml",
            &org(
                "rest",
                "[\"*\"]",
                "false",
                "  guest@elsewhere.org: { max_concurrent_sessions_per_mailbox: 7 }\n",
            ),
        ),
    ])
    .unwrap();
    match decide(&snap, "x@elsewhere.org") {
        Decision::Allow(a) => {
            assert_eq!(a.organization, "rest");
            assert_eq!(a.limit, 3);
        }
        d => panic!("{d:?}"),
    }
    match decide(&snap, "guest@elsewhere.org") {
        Decision::Allow(a) => assert_eq!(a.limit, 7),
        d => panic!("{d:?}"),
    }
    // The specific domain still wins over "*".
    match decide(&snap, "a@contoso.com") {
        Decision::Allow(a) => assert_eq!(a.organization, "contoso"),
        d => panic!("{d:?}"),
    }
}

#[test]
fn login_without_domain_uses_default_domain() {
    let snap = load(&[(
        "c.yaml",
        &org(
            "contoso",
            "[contoso.com]",
            "false",
            "  alice@contoso.com: { smtp_client_authentication_disabled: true }\n",
        ),
    )])
    .unwrap();
    assert!(matches!(
        decide(&snap, " ALICE "),
        Decision::Reject {
            reason: Reason::MailboxDisabled,
            ..
        }
    ));
}

#[test]
fn limits_and_sent_items_inherit() {
    let text = "\
organization: contoso
domains: [contoso.com]
max_concurrent_sessions_per_mailbox: 5
sent_items: { enabled: true, folder: Gesendet }
mailboxes:
  printer@contoso.com:
    max_concurrent_sessions_per_mailbox: 10
    sent_items: { enabled: false }
  bob@contoso.com: {}
  carol@contoso.com:
";
    let snap = load(&[("c.yaml", text)]).unwrap();
    let Decision::Allow(p) = decide(&snap, "printer@contoso.com") else {
        panic!()
    };
    assert_eq!(p.limit, 10);
    assert!(!p.sent_items.enabled);
    assert_eq!(p.sent_items.folder, "Gesendet");
    let Decision::Allow(b) = decide(&snap, "bob@contoso.com") else {
        panic!()
    };
    assert_eq!(b.limit, 5);
    assert_eq!(
        b.sent_items,
        SentItems {
            enabled: true,
            folder: "Gesendet".into()
        }
    );
    assert_eq!(snap.mailbox_count(), 3);
}

#[test]
fn defaults() {
    let snap = load(&[("c.yaml", "organization: contoso\ndomains: [contoso.com]\n")]).unwrap();
    let Decision::Allow(a) = decide(&snap, "x@contoso.com") else {
        panic!()
    };
    assert_eq!(a.limit, DEFAULT_MAX_SESSIONS);
    assert_eq!(a.sent_items, SentItems::default());
}

#[test]
fn describe_shows_own_org_and_effective_values() {
    let text = org(
        "contoso",
        "[contoso.com]",
        "true",
        "  printer@contoso.com: { smtp_client_authentication_disabled: false, max_concurrent_sessions_per_mailbox: 10 }\n",
    );
    let snap = load(&[("c.yaml", &text)]).unwrap();
    let v = snap.describe("printer@contoso.com");
    assert_eq!(v.mailbox_smtp_client_authentication_disabled, Some(false));
    assert_eq!(
        v.organization_smtp_client_authentication_disabled,
        Some(true)
    );
    assert!(!v.effective_smtp_client_authentication_disabled);
    assert_eq!(v.source, Source::Mailbox);
    assert_eq!(v.effective_max_concurrent_sessions, Some(10));
    let v = snap.describe("x@contoso.com");
    assert_eq!(v.mailbox_smtp_client_authentication_disabled, None);
    assert!(v.effective_smtp_client_authentication_disabled);
    assert_eq!(v.source, Source::Organization);
    assert!(!v.listed);
    let v = snap.describe("x@nowhere.example");
    assert_eq!(v.source, Source::UnknownOrganization);
    assert!(v.effective_smtp_client_authentication_disabled);
}

fn errors(files: &[(&str, &str)]) -> Vec<String> {
    match load(files) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn every_error_in_a_file_at_once_with_positions() {
    let text = "\
organization: contoso
domains: [contoso.com, \"bad domain\"]
smtp_client_authentication_disabled: yes
max_concurrent_sessions_per_mailbox: 0
sent_item: {}
sent_items: { enabled: true, folder: 3 }
mailboxes:
  alice@contoso.com: { smtp_client_authentication_disabled: maybe }
  Alice@contoso.com: {}
  bob@fabrikam.com: {}
  not-an-address: {}
  carol@contoso.com: { max_concurrent_sessions_per_mailbox: lots, colour: red }
";
    let e = errors(&[("c.yaml", text)]);
    let expect = [
        "c.yaml:2:24: \"bad domain\" is not a domain name",
        "c.yaml:3:38: smtp_client_authentication_disabled must be true, false or null, found \"yes\"",
        "c.yaml:4:38: max_concurrent_sessions_per_mailbox must be a whole number from 1 to 100000 (or null), found 0",
        "c.yaml:5:1: unknown key \"sent_item\" in an organization file (did you mean \"sent_items\"?)",
        "c.yaml:6:38: sent_items.folder must be a string, found 3",
        "c.yaml:8:61: smtp_client_authentication_disabled must be true, false or null, found \"maybe\"",
        "c.yaml:9:3: mailbox alice@contoso.com is already listed at c.yaml:8",
        "c.yaml:10:3: mailbox bob@fabrikam.com is outside organization \"contoso\"'s domains (contoso.com)",
        "c.yaml:11:3: \"not-an-address\" is not a mailbox address",
        "c.yaml:12:61: max_concurrent_sessions_per_mailbox must be a whole number",
        "c.yaml:12:67: unknown key \"colour\" in mailbox carol@contoso.com",
    ];
    assert_eq!(e.len(), expect.len(), "{e:#?}");
    for (got, want) in e.iter().zip(expect) {
        assert!(got.starts_with(want), "\n got: {got}\nwant: {want}");
    }
}

#[test]
fn cross_file_errors() {
    let a = org(
        "contoso",
        "[contoso.com, shared.com]",
        "false",
        "  a@contoso.com: {}\n",
    );
    let b = org(
        "fabrikam",
        "[fabrikam.com, shared.com]",
        "false",
        "  a@contoso.com: {}\n  b@fabrikam.com: {}\n",
    );
    let c = org("Contoso", "[\"*\"]", "false", "");
    let d = org("rest", "[\"*\"]", "false", "");
    let e = errors(&[
        ("a.yaml", &a),
        ("b.yaml", &b),
        ("c.yaml", &c),
        ("d.yaml", &d),
    ]);
    let expect = [
        "b.yaml:2:25: domain \"shared.com\" already belongs to the organization at a.yaml:2",
        "b.yaml:5:3: mailbox a@contoso.com is already listed at a.yaml:5",
        "c.yaml:1:15: organization \"Contoso\" is already defined at a.yaml:1",
        "d.yaml:2:11: a second fallback organization (\"*\"); the first is at c.yaml:2",
    ];
    assert_eq!(e.len(), expect.len(), "{e:#?}");
    for (got, want) in e.iter().zip(expect) {
        assert!(got.starts_with(want), "\n got: {got}\nwant: {want}");
    }
}

#[test]
fn a_mailbox_under_the_fallback_org_must_not_belong_to_another() {
    let a = org("contoso", "[contoso.com]", "false", "");
    let z = org(
        "rest",
        "[\"*\"]",
        "false",
        "  x@contoso.com: {}\n  y@other.org: {}\n",
    );
    let e = errors(&[("a.yaml", &a), ("z.yaml", &z)]);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].starts_with("z.yaml:5:3: mailbox x@contoso.com is outside organization \"rest\"'s domains: contoso.com belongs to organization \"contoso\""), "{}", e[0]);
}

#[test]
fn missing_keys_wrong_shapes_and_syntax() {
    let e = errors(&[("a.yaml", "smtp_client_authentication_disabled: false\n")]);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].contains("missing key \"organization\""));
    assert!(e[1].contains("missing key \"domains\""));

    let e = errors(&[("a.yaml", "- just\n- a list\n")]);
    assert!(
        e[0].starts_with("a.yaml:1:1: an organization file must be a mapping"),
        "{e:?}"
    );

    let e = errors(&[(
        "a.yaml",
        "organization: x\ndomains: contoso.com\nmailboxes: [a]\n",
    )]);
    assert!(
        e[0].starts_with("a.yaml:2:10: domains must be a list"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("a.yaml:3:12: mailboxes must be a mapping"),
        "{e:?}"
    );

    let e = errors(&[(
        "a.yaml",
        "organization: x\ndomains: [a.com]\nmailboxes:\n  a@a.com: {\n",
    )]);
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("a.yaml:"), "{e:?}");

    let e = errors(&[(
        "a.yaml",
        "organization: x\norganization: y\ndomains: [a.com]\n",
    )]);
    assert!(
        e[0].starts_with("a.yaml:2:1: duplicate key \"organization\""),
        "{e:?}"
    );
}

#[test]
fn errors_from_several_files_are_all_reported() {
    let e = errors(&[
        ("a.yaml", "organization: a\ndomains: [a.com]\nbogus: 1\n"),
        (
            "b.yaml",
            "organization: b\ndomains: [b.com]\nmax_concurrent_sessions_per_mailbox: -1\n",
        ),
    ]);
    assert_eq!(e.len(), 2);
    assert!(e[0].starts_with("a.yaml:3:1:"));
    assert!(e[1].starts_with("b.yaml:3:38:"));
}

#[test]
fn load_dir_reads_yaml_files_only_and_names_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "organization: a\ndomains: [a.com]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.yml"),
        "organization: b\ndomains: [b.com]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join(".a.yaml.swp"), "garbage: [").unwrap();
    std::fs::write(dir.path().join("README"), "not yaml: [").unwrap();
    let snap = load_dir(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(snap.organizations().len(), 2);
    assert_eq!(snap.files.len(), 2);
    let v1 = snap.version.clone();
    assert_eq!(
        load_dir(dir.path(), &LoadOptions::default())
            .unwrap()
            .version,
        v1
    );

    std::fs::write(dir.path().join("c.yaml"), b"organization: \xff\n").unwrap();
    let e = load_dir(dir.path(), &LoadOptions::default()).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert!(
        e.0[0].to_string().contains("c.yaml: not valid UTF-8"),
        "{}",
        e
    );

    let e = load_dir(&dir.path().join("missing"), &LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("cannot read directory"));
}

/// A policy directory with one good organization, for the file-safety tests.
fn dir_with_contoso() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("contoso.yaml"),
        "organization: contoso\ndomains: [contoso.com]\n",
    )
    .unwrap();
    dir
}

#[test]
fn a_symlink_out_of_the_directory_is_refused_without_quoting_its_target() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("shadow");
    std::fs::write(
        &secret,
        "root:$6$SECRETSALT$SECRETHASH:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
    )
    .unwrap();
    let dir = dir_with_contoso();
    std::os::unix::fs::symlink(&secret, dir.path().join("evil.yaml")).unwrap();
    let e = load_dir(dir.path(), &LoadOptions::default()).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(e.0[0].kind, crate::yaml::ErrorKind::OutsideDirectory);
    let text = e.to_string();
    assert!(
        text.contains("evil.yaml: is a symbolic link that leads out of the policy directory"),
        "{text}"
    );
    assert!(!text.contains("SECRET") && !text.contains("root"), "{text}");
    assert_eq!(
        e.0[0].place_and_kind(),
        format!(
            "{}: outside_directory",
            dir.path().join("evil.yaml").display()
        )
    );

    // A dangling link is refused the same way; a link inside the directory is read.
    std::fs::remove_file(dir.path().join("evil.yaml")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("gone"), dir.path().join("evil.yaml")).unwrap();
    let e = load_dir(dir.path(), &LoadOptions::default()).unwrap_err();
    assert_eq!(e.0[0].kind, crate::yaml::ErrorKind::OutsideDirectory, "{e}");
    std::fs::remove_file(dir.path().join("evil.yaml")).unwrap();
    std::fs::create_dir(dir.path().join("orgs")).unwrap();
    std::fs::write(
        dir.path().join("orgs/fabrikam.txt"),
        "organization: fabrikam\ndomains: [fabrikam.com]\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("orgs/fabrikam.txt", dir.path().join("fabrikam.yaml")).unwrap();
    let snap = load_dir(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(snap.organizations().len(), 2);
}

#[test]
fn non_regular_files_are_refused_by_name_and_a_fifo_does_not_block() {
    let dir = dir_with_contoso();
    std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(dir.path().join("pipe.yaml"))
        .status()
        .unwrap();
    assert!(status.success());
    let e = load_dir(dir.path(), &LoadOptions::default()).unwrap_err();
    let text = e.to_string();
    assert_eq!(e.0.len(), 2, "{text}");
    assert!(
        e.0.iter()
            .all(|e| e.kind == crate::yaml::ErrorKind::NotRegularFile),
        "{text}"
    );
    assert!(
        text.contains("pipe.yaml: is a special file, not a regular file"),
        "{text}"
    );
    assert!(
        text.contains("sub.yaml: is a directory, not a regular file"),
        "{text}"
    );
}

#[test]
fn errors_quote_at_most_one_short_escaped_token() {
    let long_key = "k".repeat(1_000);
    let e = load(&[(
        "a.yaml",
        &format!("organization: a\ndomains: [\"a.com\\u202e\\x1b[2J\"]\n{long_key}: 1\nmailboxes:\n  \"x\\ny@a.com\": {{}}\n"),
    )])
    .unwrap_err();
    assert_eq!(e.0.len(), 3, "{e}");
    for err in &e.0 {
        let m = &err.message;
        assert!(m.len() < 400, "message of {} bytes: {m}", m.len());
        assert!(
            !m.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{m:?}"
        );
    }
    assert!(
        e.0[0]
            .message
            .contains(r#""a.com\u{202e}\u{1b}[2j" is not a domain name"#),
        "{}",
        e.0[0].message
    );
    assert!(
        e.0[1]
            .message
            .contains(&format!("unknown key \"{}…\"", "k".repeat(64))),
        "{}",
        e.0[1].message
    );
    assert!(
        e.0[2]
            .message
            .contains(r#""x\ny@a.com" is not a mailbox address"#),
        "{}",
        e.0[2].message
    );
    assert_eq!(e.0[1].kind, crate::yaml::ErrorKind::UnknownKey);
    assert_eq!(e.0[1].place_and_kind(), "a.yaml:3:1: unknown_key");
}

#[test]
fn many_mailboxes_cost_a_few_dozen_bytes_each_and_versions_agree() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for f in 0..20 {
        let mut text = format!("organization: o{f}\ndomains: [o{f}.example]\nmailboxes:\n");
        for m in 0..1000 {
            let settings = match m % 4 {
                0 => "{ smtp_client_authentication_disabled: true }",
                1 => "{ sent_items: { folder: Gesendet } }",
                _ => "{}",
            };
            text.push_str(&format!("  user{m}@o{f}.example: {settings}\n"));
            n += 1;
        }
        std::fs::write(dir.path().join(format!("o{f}.yaml")), text).unwrap();
    }
    let snap = load_dir(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(snap.mailbox_count(), n);
    // Was a HashMap<String, entry> of about 150 bytes a mailbox before any allocator overhead.
    let per_mailbox = snap.mailbox_heap_bytes() / n;
    assert!(per_mailbox <= 64, "{per_mailbox} bytes per mailbox");
    let view = snap.describe("user1@o3.example");
    assert_eq!(view.sent_items.unwrap().folder, "Gesendet");
    assert!(
        snap.describe("user0@o19.example")
            .effective_smtp_client_authentication_disabled
    );
    assert_eq!(
        version_of_dir(dir.path()).as_deref(),
        Some(snap.version.as_str())
    );
    let files: Vec<(PathBuf, String)> = snap
        .files
        .iter()
        .map(|p| (p.clone(), std::fs::read_to_string(p).unwrap()))
        .collect();
    assert_eq!(
        load_files(&files, &LoadOptions::default()).unwrap().version,
        snap.version
    );
}

#[test]
fn authentication_policy_keys_mailbox_over_organization_over_default() {
    let contoso = "\
organization: contoso
domains: [contoso.com]
allow_basic_auth_smtp: false
basic_auth_mode: report_only
require_tls: true
mailboxes:
  printer@contoso.com: { allow_basic_auth_smtp: true, allow_legacy_tls_clients: true }
  scanner@contoso.com: { require_tls: false, allow_basic_auth_smtp: null }
  bob@contoso.com: {}
";
    let fabrikam = "\
organization: fabrikam
domains: [fabrikam.com]
allow_legacy_tls_clients: true
tls_mode: report_only
";
    let snap = load(&[("c.yaml", contoso), ("f.yaml", fabrikam)]).unwrap();
    let rules = |login: &str| match decide(&snap, login) {
        Decision::Allow(a) => a.auth,
        other => panic!("{other:?}"),
    };
    let org = AuthRules {
        allow_basic_auth_smtp: false,
        basic_auth_mode: RuleMode::ReportOnly,
        allow_legacy_tls_clients: false,
        require_tls: true,
        tls_mode: RuleMode::Enforce,
    };
    assert_eq!(rules("alice"), org);
    assert_eq!(rules("bob@contoso.com"), org);
    assert_eq!(
        rules("printer"),
        AuthRules {
            allow_basic_auth_smtp: true,
            allow_legacy_tls_clients: true,
            ..org
        }
    );
    assert_eq!(
        rules("scanner"),
        AuthRules {
            require_tls: false,
            ..org
        }
    );
    assert_eq!(
        rules("x@fabrikam.com"),
        AuthRules {
            allow_basic_auth_smtp: true,
            basic_auth_mode: RuleMode::Enforce,
            allow_legacy_tls_clients: true,
            require_tls: false,
            tls_mode: RuleMode::ReportOnly,
        }
    );
    // The organization remembers what its file sets, for `org get`'s sources.
    let c = snap.organization("contoso").unwrap();
    assert_eq!(c.auth.allow_basic_auth_smtp, Some(false));
    assert_eq!(c.auth.allow_legacy_tls_clients, None);
    let v = snap.describe("printer");
    assert_eq!(
        v.mailbox_authentication,
        AuthOverrides {
            allow_basic_auth_smtp: Some(true),
            allow_legacy_tls_clients: Some(true),
            require_tls: None,
        }
    );
    let view = v.authentication.unwrap();
    use authentication::ValueSource;
    assert_eq!(view.allow_basic_auth_smtp.source, ValueSource::Mailbox);
    assert_eq!(view.require_tls.source, ValueSource::Organization);
    assert_eq!(view.tls_mode.source, ValueSource::Default);
    assert!(snap.describe("x@unknown.example").authentication.is_none());
    // Only mailboxes that set one of them hold an overrides slot; an explicit null is unset.
    let entries: Vec<_> = snap.mailboxes_of("contoso");
    let scanner = entries
        .iter()
        .find(|(a, _)| *a == "scanner@contoso.com")
        .unwrap();
    assert_eq!(scanner.1.overrides.auth.allow_basic_auth_smtp, None);
    assert_eq!(scanner.1.overrides.auth.require_tls, Some(false));
}

#[test]
fn authentication_policy_values_are_checked_with_positions() {
    let text = "\
organization: contoso
domains: [contoso.com]
allow_basic_auth_smtp: nope
basic_auth_mode: audit
allow_legacy_tls_clients: 1
tls_mode: [enforce]
require_tls: \"true\"
mailboxes:
  alice@contoso.com: { allow_basic_auth_smtp: maybe, basic_auth_mode: enforce }
";
    let e = errors(&[("c.yaml", text)]);
    let expect = [
        "c.yaml:3:24: allow_basic_auth_smtp must be true, false or null, found \"nope\"",
        "c.yaml:4:18: basic_auth_mode must be enforce or report_only (or null), found \"audit\"",
        "c.yaml:5:27: allow_legacy_tls_clients must be true, false or null, found 1",
        "c.yaml:6:11: tls_mode must be enforce or report_only (or null), found a list",
        "c.yaml:7:14: require_tls must be true, false or null, found \"true\"",
        "c.yaml:9:47: allow_basic_auth_smtp must be true, false or null, found \"maybe\"",
        // Modes are the organization's: a mailbox cannot have its own.
        "c.yaml:9:54: unknown key \"basic_auth_mode\" in mailbox alice@contoso.com",
    ];
    assert_eq!(e.len(), expect.len(), "{e:#?}");
    for (got, want) in e.iter().zip(expect) {
        assert!(got.starts_with(want), "\n got: {got}\nwant: {want}");
    }
}

/// Writes `files` into `dir` (name, text).
fn write_all(dir: &std::path::Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// What a snapshot decides for `addresses`, and its organizations: equal for equal policies.
fn meaning(snap: &PolicySnapshot, addresses: &[&str]) -> String {
    let mut out = format!("{:?}\n", snap.organizations());
    for a in addresses {
        out.push_str(&format!("{:?}\n", snap.describe(a)));
    }
    for o in snap.organizations() {
        out.push_str(&format!("{}: {:?}\n", o.name, snap.mailboxes_of(&o.name)));
    }
    out
}

/// The table of organization `name`, to see whether two snapshots share it.
fn table_of<'s>(snap: &'s PolicySnapshot, name: &str) -> &'s Arc<OrgTable> {
    let i = snap
        .organizations()
        .iter()
        .position(|o| o.name == name)
        .unwrap();
    &snap.tables[i]
}

fn reloaded(dir: &std::path::Path, previous: &PolicySnapshot) -> PolicySnapshot {
    match reload_dir(dir, &LoadOptions::default(), previous).unwrap() {
        Reload::Changed(s) => *s,
        Reload::Unchanged => panic!("expected a changed policy"),
    }
}

const ADDRESSES: &[&str] = &[
    "a1@a.com",
    "a2@a.com",
    "b1@b.com",
    "m@moving.com",
    "x@moving.com",
    "g@free.org",
    "nobody@else.org",
];

#[test]
fn a_reload_with_one_changed_file_reuses_the_other_tables() {
    let dir = tempfile::tempdir().unwrap();
    write_all(
        dir.path(),
        &[
            (
                "a.yaml",
                &org(
                    "a",
                    "[a.com]",
                    "false",
                    "  a1@a.com: { smtp_client_authentication_disabled: true }\n",
                ),
            ),
            ("b.yaml", &org("b", "[b.com]", "false", "  b1@b.com: {}\n")),
            (
                "z.yaml",
                &org(
                    "rest",
                    "[\"*\"]",
                    "false",
                    "  g@free.org: { max_concurrent_sessions_per_mailbox: 9 }\n",
                ),
            ),
        ],
    );
    let first = load_dir(dir.path(), &LoadOptions::default()).unwrap();
    // Nothing changed (a rewrite with the same text included): nothing is built.
    std::fs::write(
        dir.path().join("b.yaml"),
        std::fs::read(dir.path().join("b.yaml")).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        reload_dir(dir.path(), &LoadOptions::default(), &first).unwrap(),
        Reload::Unchanged
    ));

    write_all(
        dir.path(),
        &[(
            "b.yaml",
            &org(
                "b",
                "[b.com]",
                "true",
                "  b1@b.com: { smtp_client_authentication_disabled: false }\n",
            ),
        )],
    );
    let second = reloaded(dir.path(), &first);
    assert!(Arc::ptr_eq(table_of(&first, "a"), table_of(&second, "a")));
    assert!(Arc::ptr_eq(
        table_of(&first, "rest"),
        table_of(&second, "rest")
    ));
    assert!(!Arc::ptr_eq(table_of(&first, "b"), table_of(&second, "b")));
    // The same policy, version and decisions as a load from scratch.
    let fresh = load_dir(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(second.version, fresh.version);
    assert_ne!(second.version, first.version);
    assert_eq!(meaning(&second, ADDRESSES), meaning(&fresh, ADDRESSES));
    assert!(
        !second
            .describe("b1@b.com")
            .effective_smtp_client_authentication_disabled
    );
    assert!(
        second
            .describe("b2@b.com")
            .effective_smtp_client_authentication_disabled
    );
    // The snapshot in force is untouched by the reload.
    assert!(
        !first
            .describe("b2@b.com")
            .effective_smtp_client_authentication_disabled
    );
    assert_eq!(second.mailbox_count(), 3);
}

#[test]
fn a_removed_file_disappears_from_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    write_all(
        dir.path(),
        &[
            ("a.yaml", &org("a", "[a.com]", "false", "  a1@a.com: {}\n")),
            (
                "b.yaml",
                &org(
                    "b",
                    "[b.com]",
                    "false",
                    "  b1@b.com: { max_concurrent_sessions_per_mailbox: 4 }\n",
                ),
            ),
        ],
    );
    let first = load_dir(dir.path(), &LoadOptions::default()).unwrap();
    std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
    let second = reloaded(dir.path(), &first);
    assert!(Arc::ptr_eq(table_of(&first, "a"), table_of(&second, "a")));
    assert_eq!(second.organizations().len(), 1);
    assert_eq!(second.files, vec![dir.path().join("a.yaml")]);
    assert_eq!(second.mailbox_count(), 1);
    assert!(second.mailboxes_of("b").is_empty());
    let v = second.describe("b1@b.com");
    assert_eq!((v.source, v.listed), (Source::UnknownOrganization, false));
    assert_eq!(
        meaning(&second, ADDRESSES),
        meaning(
            &load_dir(dir.path(), &LoadOptions::default()).unwrap(),
            ADDRESSES
        )
    );
}

#[test]
fn a_domain_moved_to_another_file_moves_its_mailboxes_and_is_checked_against_kept_tables() {
    let dir = tempfile::tempdir().unwrap();
    write_all(
        dir.path(),
        &[
            (
                "a.yaml",
                &org(
                    "a",
                    "[a.com, moving.com]",
                    "false",
                    "  m@moving.com: { max_concurrent_sessions_per_mailbox: 2 }\n",
                ),
            ),
            ("b.yaml", &org("b", "[b.com]", "true", "")),
            (
                "z.yaml",
                &org("rest", "[\"*\"]", "false", "  g@free.org: {}\n"),
            ),
        ],
    );
    let first = load_dir(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(
        first.describe("x@moving.com").organization.as_deref(),
        Some("a")
    );

    // moving.com (and its mailbox) goes from a to b.
    write_all(
        dir.path(),
        &[
            ("a.yaml", &org("a", "[a.com]", "false", "")),
            (
                "b.yaml",
                &org(
                    "b",
                    "[b.com, moving.com]",
                    "true",
                    "  m@moving.com: { smtp_client_authentication_disabled: false }\n",
                ),
            ),
        ],
    );
    let second = reloaded(dir.path(), &first);
    assert!(Arc::ptr_eq(
        table_of(&first, "rest"),
        table_of(&second, "rest")
    ));
    let v = second.describe("x@moving.com");
    assert_eq!(v.organization.as_deref(), Some("b"));
    assert!(v.effective_smtp_client_authentication_disabled);
    let m = second.describe("m@moving.com");
    assert_eq!((m.organization.as_deref(), m.listed), (Some("b"), true));
    assert!(!m.effective_smtp_client_authentication_disabled);
    assert!(second.mailboxes_of("a").is_empty());
    assert_eq!(
        meaning(&second, ADDRESSES),
        meaning(
            &load_dir(dir.path(), &LoadOptions::default()).unwrap(),
            ADDRESSES
        )
    );

    // A changed file that claims a domain the kept fallback table lists a mailbox of: the
    // kept table is checked again and its mailbox reported at its own line and column.
    write_all(
        dir.path(),
        &[("a.yaml", &org("a", "[a.com, free.org]", "false", ""))],
    );
    let e = reload_dir(dir.path(), &LoadOptions::default(), &second).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!(
        e.0[0].to_string(),
        format!(
            "{}:5:3: mailbox g@free.org is outside organization \"rest\"'s domains: free.org belongs to organization \"a\" ({})",
            dir.path().join("z.yaml").display(),
            dir.path().join("a.yaml").display()
        )
    );
    assert_eq!(
        e,
        load_dir(dir.path(), &LoadOptions::default()).unwrap_err()
    );
}

#[test]
fn one_large_file_is_read_entry_by_entry_with_the_same_errors() {
    // The mailboxes mapping is streamed; errors in it, and before a syntax error, behave as
    // with a whole tree: every mailbox error at its place, a syntax error alone.
    let mut text = String::from("mailboxes:\n");
    for i in 0..2000 {
        text.push_str(&format!("  u{i}@a.com: {{}}\n"));
    }
    text.push_str("  u5@a.com: { colour: red }\n  bad: {}\norganization: a\ndomains: [a.com]\n");
    let e = errors(&[("a.yaml", &text)]);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].starts_with("a.yaml:2002:3: mailbox u5@a.com is already listed at a.yaml:7"),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("a.yaml:2002:15: unknown key \"colour\" in mailbox u5@a.com"),
        "{}",
        e[1]
    );
    assert!(
        e[2].starts_with("a.yaml:2003:3: \"bad\" is not a mailbox address"),
        "{}",
        e[2]
    );
    let e = errors(&[("a.yaml", &format!("{text}  oops: [\n"))]);
    assert_eq!(e.len(), 1, "{e:#?}");
    let ok = text.replace("  u5@a.com: { colour: red }\n  bad: {}\n", "");
    let snap = load(&[("a.yaml", &ok)]).unwrap();
    assert_eq!(snap.mailbox_count(), 2000);
    assert!(snap.describe("u1999@a.com").listed);
}

#[test]
fn sending_limits_default_to_exchange_and_a_mailbox_overrides_key_by_key() {
    let text = "\
organization: contoso
domains: [contoso.com]
outbound_spam:
  recipient_limit_external_per_hour: 500
  recipient_limit_internal_per_hour: 1000
  recipient_limit_per_day: 1000
mailboxes:
  alice@contoso.com:
    sending_limits: { messages_per_minute: 5, recipients_per_day: null }
    outbound_spam: { action_when_threshold_reached: alert }
  bob@contoso.com: { smtp_client_authentication_disabled: false }
";
    let snap = load(&[("c.yaml", text)]).unwrap();
    let org = &snap.organizations()[0].limits;
    assert_eq!(org.messages_per_minute, 30);
    assert_eq!(org.recipients_per_day, 10_000);
    assert_eq!(org.recipients_per_message, 500);
    assert_eq!(org.recipient_limit_external_per_hour, 500);
    assert_eq!(
        org.action_when_threshold_reached,
        SpamAction::BlockUserForToday
    );
    let Decision::Allow(alice) = decide(&snap, "alice@contoso.com") else {
        panic!("allowed")
    };
    assert_eq!(alice.limits.messages_per_minute, 5);
    assert_eq!(alice.limits.recipients_per_day, 10_000, "null inherits");
    assert_eq!(alice.limits.recipient_limit_internal_per_hour, 1000);
    assert_eq!(
        alice.limits.action_when_threshold_reached,
        SpamAction::Alert
    );
    let Decision::Allow(bob) = decide(&snap, "bob@contoso.com") else {
        panic!("allowed")
    };
    assert_eq!(bob.limits, *org);
    let view = snap.describe("alice@contoso.com");
    assert_eq!(view.mailbox_limits.messages_per_minute, Some(5));
    assert_eq!(view.effective_limits.unwrap().messages_per_minute, 5);
    assert!(snap.is_internal_domain("contoso.com"));
    assert!(!snap.is_internal_domain("example.net"));
}

#[test]
fn sending_limit_errors_have_positions() {
    let text = "\
organization: contoso
domains: [contoso.com]
sending_limits:
  messages_per_minute: -1
  recipients_per_day: many
  recipients_per_mesage: 5
outbound_spam:
  action_when_threshold_reached: block
mailboxes:
  alice@contoso.com: { outbound_spam: { recipient_limit_per_day: 200000000 } }
  bob@contoso.com: { sending_limits: [1] }
";
    let e = errors(&[("c.yaml", text)]);
    let expect = [
        "c.yaml:4:24: sending_limits.messages_per_minute must be a whole number from 0 (no limit) to 100000000 (or null), found -1",
        "c.yaml:5:23: sending_limits.recipients_per_day must be a whole number",
        "c.yaml:6:3: unknown key \"recipients_per_mesage\" in sending_limits (did you mean \"recipients_per_message\"?)",
        "c.yaml:8:34: outbound_spam.action_when_threshold_reached must be block_user_for_today, block_user or alert, found \"block\"",
        "c.yaml:10:66: outbound_spam.recipient_limit_per_day must be a whole number",
        "c.yaml:11:38: sending_limits must be a mapping",
    ];
    assert_eq!(e.len(), expect.len(), "{e:#?}");
    for (got, want) in e.iter().zip(expect) {
        assert!(got.starts_with(want), "\n got: {got}\nwant: {want}");
    }
}
