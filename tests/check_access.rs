//! `submitgate check` and the daemon's user: run as that user (`runuser -u nobody`) it fails
//! on a secret it cannot read and a spool or audit directory it cannot write; run as root with
//! `--user nobody` it warns about the same files, naming owner and mode, and still exits 0. The
//! test needs root (to switch users); elsewhere it skips with a note.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use support::daemon::CONTOSO;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A configuration in a fresh 0755 directory whose secrets are 0600 root.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let p = dir.path();
    std::fs::create_dir(p.join("policies")).unwrap();
    std::fs::write(p.join("policies/contoso.yaml"), CONTOSO).unwrap();
    std::fs::write(p.join("imap.secret"), "secret\n").unwrap();
    chmod(&p.join("imap.secret"), 0o600);
    std::fs::write(p.join("auth.key"), "key\n").unwrap();
    chmod(&p.join("auth.key"), 0o600);
    std::fs::write(
        p.join("sg.yaml"),
        "milter: [\"unix:milter.sock\"]\npolicies: policies\naudit: { path: audit.log }\n\
         auth_policy: [\"inet:127.0.0.1:0\"]\nauth_policy_api_key_file: auth.key\n\
         sent_items:\n  spool: spool\n  store: { backend: imap, address: \"127.0.0.1:143\", tls: none, \
         login: master_user, master_user: submitgate, master_password_file: imap.secret }\n",
    )
    .unwrap();
    for f in ["sg.yaml", "policies/contoso.yaml"] {
        chmod(&p.join(f), 0o644);
    }
    chmod(&p.join("policies"), 0o755);
    // The binary where nobody can run it (target/ may sit under a 0700 home).
    std::fs::copy(env!("CARGO_BIN_EXE_submitgate"), p.join("submitgate")).unwrap();
    chmod(&p.join("submitgate"), 0o755);
    dir
}

fn root_with_runuser() -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!("note: check_access: SKIPPED: needs root to run check as another user");
        return false;
    }
    support::require("runuser").is_some()
}

#[test]
fn check_as_the_daemon_user_fails_on_what_it_cannot_read_or_write() {
    if !root_with_runuser() {
        return;
    }
    let dir = setup();
    let p = dir.path();
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(p.join("submitgate"))
        .arg("check")
        .arg("--config")
        .arg(p.join("sg.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let key = p.join("auth.key");
    let secret = p.join("imap.secret");
    assert!(
        text.contains(&format!("{}: Permission denied", key.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "cannot read master_password_file {}: Permission denied",
            secret.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "sent_items.spool: {}: cannot write to it: Permission denied",
            p.display()
        )),
        "{text}"
    );
    assert!(text.contains("audit.path: "), "{text}");
    // Each problem once, and the OS error's text once per line.
    assert_eq!(text.matches("imap.secret").count(), 1, "{text}");
    assert!(!text.contains("os error 13) (os error"), "{text}");

    // Fixed as the package does it (group of the daemon, 0640; a writable directory): OK.
    for f in ["auth.key", "imap.secret"] {
        std::os::unix::fs::chown(p.join(f), None, Some(65534)).unwrap();
        chmod(&p.join(f), 0o640);
    }
    std::fs::create_dir(p.join("spool")).unwrap();
    std::os::unix::fs::chown(p.join("spool"), Some(65534), None).unwrap();
    std::fs::write(p.join("audit.log"), "").unwrap();
    std::os::unix::fs::chown(p.join("audit.log"), Some(65534), None).unwrap();
    let out = Command::new("runuser")
        .args(["-u", "nobody", "-g", "nogroup", "--"])
        .arg(p.join("submitgate"))
        .arg("check")
        .arg("--config")
        .arg(p.join("sg.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
}

#[test]
fn check_as_root_warns_about_the_daemon_users_files() {
    if !root_with_runuser() {
        return;
    }
    let dir = setup();
    let p = dir.path();
    let out = Command::new(p.join("submitgate"))
        .args(["check", "--user", "nobody", "--config"])
        .arg(p.join("sg.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // Root reads everything: the configuration is fine, the warnings say what nobody would meet.
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "warning: sent_items.store.master_password_file ({}: the nobody user cannot read it ({} owned by root:root, mode 0600))",
            p.join("imap.secret").display(),
            p.join("imap.secret").display()
        )),
        "{text}"
    );
    assert!(
        text.contains("warning: auth_policy_api_key_file ("),
        "{text}"
    );
    assert!(text.contains("warning: sent_items.spool ("), "{text}");
    assert!(!text.contains("warning: policies"), "{text}");
}
