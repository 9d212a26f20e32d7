//! The configuration checks: defaults, every error at once with its position.

use std::str::FromStr;

use super::imap::parse_host_port;
use super::*;
use crate::audit::Target;
use crate::reply::{
    SmtpReply, AUTH_MAILBOX_DISABLED, AUTH_TENANT_DISABLED, CONCURRENCY_LIMIT, TENANT_DISABLED,
};
use crate::sent_items::store::imap::{LoginMode, TlsMode, DEFAULT_MAX_IDLE};

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(Path::new("sg.yaml"), text)
}

#[test]
fn example_parses_with_defaults() {
    let c = parse("policy: [\"inet:127.0.0.1:10040\", \"unix:/tmp/sg.sock\"]\n").unwrap();
    assert_eq!(c.policy_listeners.len(), 2);
    assert_eq!(c.lease_idle_timeout, Duration::from_secs(300));
    assert_eq!(c.policies_dir, PathBuf::from("./policies"));
    assert_eq!(c.replies.concurrency_limit.to_string(), CONCURRENCY_LIMIT);
    assert_eq!(c.replies.tenant_disabled.to_string(), TENANT_DISABLED);
    assert_eq!(c.unix_socket_mode, 0o666);
    assert_eq!(c.audit.target, Target::File(PathBuf::from("./audit.log")));
}

#[test]
fn unknown_key_has_position() {
    let e = parse("policy: [\"inet:127.0.0.1:1\"]\npolicys: x\n").unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].line, 2);
    assert!(e.0[0].message.contains("unknown field `policys`"), "{e}");
}

#[test]
fn every_semantic_error_at_once_with_lines() {
    let text = "\
policy: [\"inet:127.0.0.1\"]
lease_idle_timeout: soon
unix_socket_mode: \"999\"
control: \"inet:127.0.0.1:5\"
replies:
  tenant_disabled: \"250 2.0.0 fine\"
  concurrency_limit: \"432 5.3.2 mixed classes\"
  mailbox_disabled: \"550 5.7.139 bad\\r\\ntext\"
";
    let e = parse(text).unwrap_err();
    let lines: Vec<usize> = e.0.iter().map(|x| x.line).collect();
    assert_eq!(lines, vec![1, 2, 3, 4, 6, 7, 8], "{e}");
    let s = e.to_string();
    assert!(s.contains("sg.yaml:6:20: replies.tenant_disabled"), "{s}");
}

#[test]
fn sent_items_defaults_and_checks() {
    let c = parse("policy: [\"inet:127.0.0.1:1\"]\n").unwrap();
    assert_eq!(c.sent_items.spool, PathBuf::from("./spool"));
    assert_eq!(
        c.sent_items.store,
        store::Settings::Maildir {
            root: DEFAULT_MAILDIR_ROOT.into()
        }
    );
    let e = parse(
            "policy: [\"inet:127.0.0.1:1\"]\nsent_items:\n  store: { backend: maildir, root: \"/var/mail/{domain}\" }\n",
        )
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("sg.yaml:3:36: sent_items.store.root"),
        "{e}"
    );
    let e = parse(
            "policy: [\"inet:127.0.0.1:1\"]\nsent_items: { store: { backend: maildir, root: \"/m/{user}\" } }\n",
        )
        .unwrap_err();
    assert!(e.to_string().contains("unknown placeholder {user}"), "{e}");
}

#[test]
fn imap_store_and_delivery_settings() {
    let c = parse(
        "policy: [\"inet:127.0.0.1:1\"]
sent_items:
  spool: /var/spool/submitgate
  workers: 8
  max_age: 2d
  retry: { initial: 30s, max: 1h, auth_failure_attempts: 5 }
  store:
    backend: imap
    address: \"imap.contoso.com:993\"
    tls: implicit
    ca_file: /etc/ssl/contoso-ca.pem
    login: sasl_authzid
    master_user: submitgate
    master_password_file: /etc/submitgate/imap.secret
    idle_timeout: 10s
    max_idle_connections: 4
",
    )
    .unwrap();
    let si = &c.sent_items;
    assert!(si.deliver);
    assert_eq!(si.worker.workers, 8);
    assert_eq!(si.worker.max_age, Duration::from_secs(2 * 86400));
    assert_eq!(si.worker.retry.initial, Duration::from_secs(30));
    assert_eq!(si.worker.retry.max, Duration::from_secs(3600));
    assert_eq!(si.worker.retry.auth_failure_attempts, 5);
    let store::Settings::Imap(imap) = &si.store else {
        panic!("imap expected: {:?}", si.store);
    };
    assert_eq!(imap.host, "imap.contoso.com");
    assert_eq!(imap.port, 993);
    assert_eq!(imap.tls, TlsMode::Implicit);
    assert_eq!(imap.tls_server_name, "imap.contoso.com");
    assert!(imap.tls_verify);
    assert_eq!(imap.login, LoginMode::SaslAuthzid);
    assert_eq!(imap.master_separator, "*");
    assert_eq!(imap.idle_timeout, Duration::from_secs(10));
    assert_eq!(imap.max_idle_connections, 4);
    assert_eq!(imap.timeout, Duration::from_secs(60));

    let c = parse("policy: [\"inet:127.0.0.1:1\"]\nsent_items: { store: { backend: imap, address: \"[::1]:143\", master_user: m, master_password_file: /s } }\n").unwrap();
    let store::Settings::Imap(imap) = &c.sent_items.store else {
        panic!("imap expected");
    };
    assert_eq!((imap.host.as_str(), imap.port), ("::1", 143));
    assert_eq!(imap.tls, TlsMode::Starttls, "STARTTLS by default");
    assert_eq!(imap.login, LoginMode::MasterUser);
    assert_eq!(imap.max_idle_connections, DEFAULT_MAX_IDLE);

    let c = parse("policy: [\"inet:127.0.0.1:1\"]\n").unwrap();
    assert!(!c.sent_items.deliver);
    assert_eq!(c.sent_items.worker.workers, 8);
    assert_eq!(c.sent_items.worker.max_age, Duration::from_secs(5 * 86400));
}

#[test]
fn sent_items_errors_all_at_once_with_positions() {
    let text = "\
policy: [\"inet:127.0.0.1:1\"]
sent_items:
  workers: 0
  max_age: forever
  retry: { initial: 1m, max: 10s }
  store:
    backend: imap
    address: \"imap.contoso.com\"
    tls: sometimes
    login: kerberos
    root: /var/mail/{local}
    timeout: 1ms
";
    let e = parse(text).unwrap_err();
    let s = e.to_string();
    for expected in [
        "sg.yaml:3:12: sent_items.workers: 0 is not between 1 and 256",
        "sg.yaml:4:12: sent_items.max_age",
        "sg.yaml:5:30: sent_items.retry.max: 10s is shorter than retry.initial (1m)",
        "sg.yaml:8:14: sent_items.store.address",
        "sg.yaml:9:10: sent_items.store.tls: unknown TLS mode \"sometimes\"",
        "sg.yaml:10:12: sent_items.store.login: unknown login mode \"kerberos\"",
        "sg.yaml:11:11: sent_items.store.root: applies to the maildir backend only",
        "sg.yaml:12:14: sent_items.store.timeout",
        "sent_items.store: the imap backend needs `master_user`",
        "sent_items.store: the imap backend needs `master_password_file`",
    ] {
        assert!(s.contains(expected), "missing {expected:?} in:\n{s}");
    }

    let e = parse("policy: [\"inet:127.0.0.1:1\"]\nsent_items:\n  store: { backend: maildir, tls: none, master_user: x }\n").unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("sent_items.store.tls: applies to the imap backend only"),
        "{s}"
    );
    assert!(
        s.contains("sent_items.store.master_user: applies to the imap backend only"),
        "{s}"
    );

    let e = parse("policy: [\"inet:127.0.0.1:1\"]\nsent_items: { store: { backend: imap, address: \"127.0.0.1:143\", tls: none, ca_file: /ca.pem, master_user: m, master_password_file: /s } }\n").unwrap_err();
    assert!(
        e.to_string()
            .contains("sent_items.store.ca_file: has no effect with tls: none"),
        "{e}"
    );
    let e = parse("policy: [\"inet:127.0.0.1:1\"]\nsent_items: { store: { backend: pop3 } }\n")
        .unwrap_err();
    assert!(e.to_string().contains("expected maildir or imap"), "{e}");
}

#[test]
fn host_port_forms() {
    assert_eq!(
        parse_host_port("127.0.0.1:143").unwrap(),
        ("127.0.0.1".into(), 143)
    );
    assert_eq!(parse_host_port("[::1]:993").unwrap(), ("::1".into(), 993));
    assert_eq!(
        parse_host_port("imap.example.com:993").unwrap(),
        ("imap.example.com".into(), 993)
    );
    for bad in [
        "imap", "::1:143", ":143", "h:0", "h:70000", "[::1:143", "a b:1",
    ] {
        assert!(parse_host_port(bad).is_err(), "{bad}");
    }
}

#[test]
fn redis_limiter_settings() {
    use crate::limiter::redis::OnError;
    let c = parse(
            "policy: [\"inet:127.0.0.1:1\"]\nlimiter: { backend: redis, url: \"redis://:pw@10.0.0.5:6379/2\", lease_ttl: 10s, on_error: tempfail, node_id: mta1 }\n",
        )
        .unwrap();
    let LimiterConfig::Redis(r) = c.limiter else {
        panic!("{:?}", c.limiter)
    };
    assert_eq!(r.lease_ttl, Duration::from_secs(10));
    assert_eq!(r.timeout, Duration::from_millis(50));
    assert_eq!(r.on_error, OnError::Tempfail);
    assert_eq!(r.key_prefix, "submitgate:");
    assert_eq!(r.node_id, "mta1");
    let e = parse(
            "policy: [\"inet:127.0.0.1:1\"]\nlimiter:\n  backend: redis\n  url: \"http://x\"\n  on_error: maybe\n  lease_ttl: 0s\n",
        )
        .unwrap_err();
    let lines: Vec<usize> = e.0.iter().map(|x| x.line).collect();
    assert_eq!(lines, vec![4, 5, 6], "{e}");
    let e =
        parse("policy: [\"inet:127.0.0.1:1\"]\nlimiter: { backend: memory, url: \"redis://x\" }\n")
            .unwrap_err();
    assert!(
        e.to_string()
            .contains("limiter.url: only applies to backend: redis"),
        "{e}"
    );
}

#[test]
fn reply_validation() {
    assert!(SmtpReply::from_str("421 4.3.2 busy").is_ok());
    assert!(SmtpReply::from_str("550 5.7.1 no").is_ok());
    assert!(SmtpReply::from_str("550 4.7.1 wrong class").is_err());
    assert!(SmtpReply::from_str("650 6.7.1 bad code").is_err());
    assert!(SmtpReply::from_str("55 5.7.1 short").is_err());
    assert!(SmtpReply::from_str("550 5.7 two fields").is_err());
    assert!(SmtpReply::from_str("550 5.7.1").is_err());
    assert!(SmtpReply::from_str("550 5.7.1 caf\u{e9}").is_err());
}

#[test]
fn milter_only_config_and_milter_settings() {
    let c = parse("milter: [\"inet:127.0.0.1:10041\", \"unix:/run/sg/milter.sock\"]\n").unwrap();
    assert!(c.policy_listeners.is_empty());
    assert_eq!(c.milter_listeners.len(), 2);
    assert_eq!(c.milter_timeout, DEFAULT_MILTER_TIMEOUT);
    assert_eq!(c.milter_max_frame, 1 << 20);
    let c =
        parse("milter: [\"inet:127.0.0.1:0\"]\nmilter_timeout: 10m\nmilter_max_frame: 2097152\n")
            .unwrap();
    assert_eq!(c.milter_timeout, Duration::from_secs(600));
    assert_eq!(c.milter_max_frame, 2 << 20);
    let e = parse("milter: [\"inet:nohost\"]\nmilter_timeout: never\nmilter_max_frame: 100\n")
        .unwrap_err();
    let lines: Vec<usize> = e.0.iter().map(|x| x.line).collect();
    assert_eq!(lines, vec![1, 2, 3], "{e}");
    let e = parse("policies: ./p\n").unwrap_err();
    assert!(e.to_string().contains("no front end configured"), "{e}");
}

#[test]
fn replies_can_be_overridden() {
    let c = parse(
            "policy: [\"inet:127.0.0.1:1\"]\nreplies: { concurrency_limit: \"421 4.7.0 Too many sessions\" }\n",
        )
        .unwrap();
    assert_eq!(c.replies.concurrency_limit.code, 421);
    assert_eq!(c.replies.tenant_disabled.to_string(), TENANT_DISABLED);
}

#[test]
fn the_invalid_login_replies_default_and_can_be_overridden() {
    let c = parse("policy: [\"inet:127.0.0.1:1\"]\n").unwrap();
    assert_eq!(
        c.replies.invalid_login.to_string(),
        crate::reply::INVALID_LOGIN
    );
    assert_eq!(
        c.replies.auth_invalid_login,
        crate::reply::AUTH_INVALID_LOGIN
    );
    let c = parse(
        "policy: [\"inet:127.0.0.1:1\"]\nreplies: { invalid_login: \"553 5.7.1 Bad login\", \
auth_invalid_login: \"Bad login\" }\n",
    )
    .unwrap();
    assert_eq!(c.replies.invalid_login.to_string(), "553 5.7.1 Bad login");
    assert_eq!(c.replies.auth_invalid_login, "Bad login");
    let e = parse("policy: [\"inet:127.0.0.1:1\"]\nreplies: { invalid_login: \"250 ok\" }\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("replies.invalid_login"), "{e}");
}

#[test]
fn the_authentication_policy_replies_default_and_can_be_overridden() {
    use crate::reply::{
        AUTH_BASIC_AUTH_DISABLED, AUTH_TLS_REQUIRED, BASIC_AUTH_DISABLED, LEGACY_TLS, TLS_REQUIRED,
    };
    let c = parse("policy: [\"inet:127.0.0.1:1\"]\n").unwrap();
    assert_eq!(
        c.replies.basic_auth_disabled.to_string(),
        BASIC_AUTH_DISABLED
    );
    assert_eq!(
        c.replies.basic_auth_disabled.to_string(),
        "550 5.7.30 Basic authentication is not supported for Client Submission."
    );
    assert_eq!(c.replies.legacy_tls.to_string(), LEGACY_TLS);
    assert_eq!(
        c.replies.legacy_tls.to_string(),
        "421 4.7.66 TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2."
    );
    assert_eq!(c.replies.tls_required.to_string(), TLS_REQUIRED);
    assert_eq!(c.replies.auth_basic_auth_disabled, AUTH_BASIC_AUTH_DISABLED);
    assert_eq!(c.replies.auth_tls_required, AUTH_TLS_REQUIRED);
    let c = parse(
        "policy: [\"inet:127.0.0.1:1\"]\nreplies:\n  basic_auth_disabled: \"535 5.7.139 Use OAuth\"\n  \
legacy_tls: \"554 5.7.66 Old TLS\"\n  tls_required: \"530 5.7.11 Encryption required\"\n  \
auth_basic_auth_disabled: \"Use OAuth\"\n  auth_tls_required: \"Use TLS\"\n",
    )
    .unwrap();
    assert_eq!(
        c.replies.basic_auth_disabled.to_string(),
        "535 5.7.139 Use OAuth"
    );
    assert_eq!(c.replies.legacy_tls.to_string(), "554 5.7.66 Old TLS");
    assert_eq!(
        c.replies.tls_required.to_string(),
        "530 5.7.11 Encryption required"
    );
    assert_eq!(c.replies.auth_basic_auth_disabled, "Use OAuth");
    assert_eq!(c.replies.auth_tls_required, "Use TLS");
    let e = parse("policy: [\"inet:127.0.0.1:1\"]\nreplies: { legacy_tls: \"421 5.7.66 x\" }\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("replies.legacy_tls"), "{e}");
}

#[test]
fn auth_policy_defaults_and_overrides() {
    let c = parse("policy: [\"inet:127.0.0.1:1\"]\n").unwrap();
    assert!(c.auth_policy_listeners.is_empty());
    assert_eq!(c.auth_policy_protocols, ["smtp"]);
    assert_eq!(c.auth_policy_api_key_file, None);
    assert_eq!(c.replies.auth_mailbox_disabled, AUTH_MAILBOX_DISABLED);
    assert_eq!(c.replies.auth_tenant_disabled, AUTH_TENANT_DISABLED);

    // The auth policy alone is a complete front end.
    let c = parse(
        "auth_policy: [\"inet:127.0.0.1:10042\", \"unix:/tmp/ap.sock\"]\n\
auth_policy_api_key_file: /etc/submitgate/auth-policy.key\n\
auth_policy_protocols: [SMTP, submission]\n\
replies: { auth_mailbox_disabled: \"SMTP AUTH is off for this mailbox\" }\n",
    )
    .unwrap();
    assert_eq!(c.auth_policy_listeners.len(), 2);
    assert!(c.policy_listeners.is_empty());
    assert_eq!(c.auth_policy_protocols, ["smtp", "submission"]);
    assert_eq!(
        c.auth_policy_api_key_file.as_deref(),
        Some(Path::new("/etc/submitgate/auth-policy.key"))
    );
    assert_eq!(
        c.replies.auth_mailbox_disabled,
        "SMTP AUTH is off for this mailbox"
    );
}

#[test]
fn auth_policy_errors_have_lines() {
    let text = "\
auth_policy: [\"inet:127.0.0.1\"]
auth_policy_protocols: [\"smtp imap\"]
replies:
  auth_tenant_disabled: \"caf\\u00e9\"
  auth_mailbox_disabled: \"\"
";
    let e = parse(text).unwrap_err();
    let lines: Vec<usize> = e.0.iter().map(|x| x.line).collect();
    assert_eq!(lines, vec![1, 2, 4, 5], "{e}");
    assert!(
        e.to_string().contains("replies.auth_tenant_disabled"),
        "{e}"
    );
    let e = parse("auth_policy_protocols: []\n").unwrap_err();
    assert!(e.to_string().contains("no front end configured"), "{e}");
    assert!(e.to_string().contains("list at least one protocol"), "{e}");
}

#[test]
fn duration_messages_keep_their_own_examples() {
    let e = parse(
        "milter: [\"inet:127.0.0.1:1\"]\nmilter_timeout: x\nlease_idle_timeout: y\nlimiter: { backend: redis, lease_ttl: z }\nsent_items: { max_age: w }\n",
    )
    .unwrap_err();
    let s = e.to_string();
    for expected in [
        "sg.yaml:2:17: milter_timeout: \"x\" is not a duration of at least 1s (e.g. 360s, 6m)",
        "sg.yaml:3:21: lease_idle_timeout: \"y\" is not a duration of at least 1s (e.g. 300s, 5m)",
        "sg.yaml:4:39: limiter.lease_ttl: \"z\" is not a duration of at least 1s\n",
        "sg.yaml:5:24: sent_items.max_age: \"w\" is not a duration of at least 1m (e.g. 30s, 15m, 5d)",
    ] {
        assert!(s.contains(expected), "missing {expected:?} in:\n{s}");
    }
}

#[test]
fn limiter_state_dir_cluster_and_sentinel() {
    use crate::limiter::redis::Topology;
    let c = parse("policy: [\"inet:127.0.0.1:1\"]\nlimiter: { backend: memory, state_dir: /var/lib/submitgate }\n")
        .unwrap();
    assert_eq!(
        c.limiter,
        LimiterConfig::Memory {
            state_dir: Some(PathBuf::from("/var/lib/submitgate"))
        }
    );
    let c = parse(
        "policy: [\"inet:127.0.0.1:1\"]\nlimiter: { backend: redis, cluster: [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"] }\n",
    )
    .unwrap();
    let LimiterConfig::Redis(r) = c.limiter else {
        panic!("{:?}", c.limiter)
    };
    assert_eq!(
        r.topology,
        Topology::Cluster(vec![
            "redis://10.0.0.1:7000".into(),
            "redis://10.0.0.2:7000".into()
        ])
    );
    let c = parse(
        "policy: [\"inet:127.0.0.1:1\"]\nlimiter: { backend: redis, sentinel: { master_name: mymaster, nodes: [\"redis://10.0.0.1:26379\"] } }\n",
    )
    .unwrap();
    let LimiterConfig::Redis(r) = c.limiter else {
        panic!("{:?}", c.limiter)
    };
    assert_eq!(
        r.topology,
        Topology::Sentinel {
            master: "mymaster".into(),
            nodes: vec!["redis://10.0.0.1:26379".into()]
        }
    );
    let e = parse(
        "policy: [\"inet:127.0.0.1:1\"]\nlimiter:\n  backend: redis\n  url: \"redis://x\"\n  cluster: []\n  key_prefix: \"a{b}\"\n  state_dir: /x\n",
    )
    .unwrap_err()
    .to_string();
    for want in [
        "sg.yaml:3:12: limiter.backend: set one of url",
        "sg.yaml:5:12: limiter.cluster: needs at least one redis:// node",
        "sg.yaml:6:15: limiter.key_prefix: must not contain { or }",
        "sg.yaml:7:14: limiter.state_dir: only applies to backend: memory",
    ] {
        assert!(e.contains(want), "missing {want:?} in\n{e}");
    }
    let e = parse(
        "policy: [\"inet:127.0.0.1:1\"]\nlimiter: { backend: memory, cluster: [\"redis://x\"] }\n",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("limiter.cluster: only applies to backend: redis"),
        "{e}"
    );
}

#[test]
fn sending_limit_replies_are_configurable() {
    let c = parse(
        "policy: [\"inet:127.0.0.1:1\"]\nreplies:\n  message_rate_limit: \"450 4.7.0 slow down\"\n  sender_restricted: \"550 5.7.1 blocked\"\n",
    )
    .unwrap();
    assert_eq!(
        c.replies.message_rate_limit.to_string(),
        "450 4.7.0 slow down"
    );
    assert_eq!(c.replies.sender_restricted.to_string(), "550 5.7.1 blocked");
    assert_eq!(
        c.replies.recipient_rate_limit.to_string(),
        crate::reply::RECIPIENT_RATE_LIMIT
    );
    assert_eq!(
        c.replies.recipients_per_message.to_string(),
        crate::reply::RECIPIENTS_PER_MESSAGE
    );
    let e =
        parse("policy: [\"inet:127.0.0.1:1\"]\nreplies: { recipients_per_message: \"250 ok\" }\n")
            .unwrap_err();
    assert!(
        e.to_string().contains("replies.recipients_per_message"),
        "{e}"
    );
}
