//! IMAP delivery over TLS into a real Dovecot: STARTTLS and implicit TLS trusting a CA file,
//! certificate verification refusing an unknown issuer by default (system roots) and a wrong
//! name (a configuration error: logged once, shown in `submitgate status`, copies kept), and
//! `tls_verify: false`. Skipped, with a note, without Dovecot.

mod support;

use std::time::Duration;

use support::dovecot::{message, Dovecot, Options, Rig, MASTER, SECRET};

const ALICE: &str = "alice@contoso.com";

fn tls_dovecot(test: &str) -> Option<Dovecot> {
    Dovecot::start(
        test,
        Options {
            tls: true,
            ..Options::default()
        },
    )
}

fn store(dovecot: &Dovecot, port: u16, tls: &str, extra: &str) -> String {
    format!(
        "  store: {{ backend: imap, address: \"127.0.0.1:{port}\", tls: {tls}, login: sasl_authzid, master_user: {MASTER}, master_password_file: \"{}\", timeout: 10s{extra} }}\n  retry: {{ initial: 100ms, max: 200ms }}\n  scan_interval: 200ms\n",
        dovecot.secret_file(SECRET).display()
    )
}

async fn delivers(dovecot: &Dovecot, config: &str, n: usize) {
    let rig = Rig::start(config);
    let (body, mid) = message(n, 4096);
    rig.commit(ALICE, &body, &mid).await;
    rig.drained(Duration::from_secs(20)).await;
    assert!(rig.spool.list(true).await.expect("failed").is_empty());
    rig.stop().await;
    let stored = dovecot.fetch(ALICE, "Sent Items").await;
    assert!(stored.contains(&(body, true)), "{}", dovecot.log());
}

#[tokio::test]
async fn starttls_and_implicit_tls_with_a_ca_file() {
    let Some(dovecot) = tls_dovecot("starttls_and_implicit_tls_with_a_ca_file") else {
        return;
    };
    let ca = dovecot.dir.path().join("ca.pem");
    let ca = format!(", ca_file: \"{}\"", ca.display());
    delivers(&dovecot, &store(&dovecot, dovecot.port, "starttls", &ca), 1).await;
    delivers(
        &dovecot,
        &store(&dovecot, dovecot.imaps_port, "implicit", &ca),
        2,
    )
    .await;
    // The certificate also names "localhost".
    let by_name = format!("{ca}, tls_server_name: localhost");
    delivers(
        &dovecot,
        &store(&dovecot, dovecot.imaps_port, "implicit", &by_name),
        3,
    )
    .await;
    assert_eq!(dovecot.fetch(ALICE, "Sent Items").await.len(), 3);
}

async fn refused(config: &str, expect: &str) {
    let rig = Rig::start(config);
    let (body, mid) = message(9, 1000);
    rig.commit(ALICE, &body, &mid).await;
    let spool = rig.spool.clone();
    support::wait_for(Duration::from_secs(10), "a failed attempt", move || {
        let spool = spool.clone();
        async move {
            spool
                .list(false)
                .await
                .map(|l| l.first().is_some_and(|e| e.last_error.is_some()))
                .unwrap_or(false)
        }
    })
    .await;
    let queued = rig.spool.list(false).await.expect("list");
    let error = queued[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("TLS handshake"), "{error}");
    assert!(error.contains(expect), "{error}");
    rig.stop().await;
}

#[tokio::test]
async fn certificate_verification_is_on_by_default() {
    let Some(dovecot) = tls_dovecot("certificate_verification_is_on_by_default") else {
        return;
    };
    // System roots do not know the test CA.
    refused(
        &store(&dovecot, dovecot.port, "starttls", ""),
        "invalid peer certificate",
    )
    .await;
    // The right CA, the wrong name.
    let wrong_name = format!(
        ", ca_file: \"{}\", tls_server_name: imap.example.com",
        dovecot.dir.path().join("ca.pem").display()
    );
    refused(
        &store(&dovecot, dovecot.imaps_port, "implicit", &wrong_name),
        "not valid for name",
    )
    .await;
    assert!(dovecot.fetch(ALICE, "Sent Items").await.is_empty());
    // Explicitly off: accepted.
    delivers(
        &dovecot,
        &store(
            &dovecot,
            dovecot.imaps_port,
            "implicit",
            ", tls_verify: false",
        ),
        4,
    )
    .await;
}

/// The real daemon with a certificate that does not carry the configured name: a
/// configuration error, logged once for all copies and retries, listed by `submitgate status`;
/// the copies stay queued, uncounted.
#[tokio::test]
async fn a_name_mismatch_is_a_configuration_error_logged_once_and_shown_in_status() {
    use std::process::{Command, Stdio};
    use submitgate::sent_items::spool::Spool;

    let Some(dovecot) =
        tls_dovecot("a_name_mismatch_is_a_configuration_error_logged_once_and_shown_in_status")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("policies");
    std::fs::write(
        policies.join("contoso.yaml"),
        "organization: contoso\ndomains: [contoso.com]\n",
    )
    .expect("policy");
    let wrong_name = format!(
        ", ca_file: \"{}\", tls_server_name: imap.example.com",
        dovecot.dir.path().join("ca.pem").display()
    );
    let config = dir.path().join("submitgate.yaml");
    std::fs::write(
        &config,
        format!(
            "policy: [\"inet:127.0.0.1:0\"]\ncontrol: \"unix:{}\"\npolicies: \"{}\"\naudit: {{ path: \"{}\" }}\nsent_items:\n  spool: \"{}\"\n{}",
            dir.path().join("control.sock").display(),
            policies.display(),
            dir.path().join("audit.log").display(),
            dir.path().join("spool").display(),
            store(&dovecot, dovecot.imaps_port, "implicit", &wrong_name)
        ),
    )
    .expect("config");
    {
        let spool = Spool::open(dir.path().join("spool")).expect("spool");
        for (n, mailbox) in [ALICE, "bob@contoso.com", ALICE].into_iter().enumerate() {
            let (body, mid) = message(20 + n, 500);
            support::dovecot::commit(&spool, mailbox, &body, &mid).await;
        }
    }
    let stderr = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_submitgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("SUBMITGATE_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("spawn submitgate");
    let status = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_submitgate"));
        cmd.arg("status").arg("--config").arg(&config);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().expect("submitgate status");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // Every copy retried at least twice (3 copies, 100 ms to 200 ms apart).
    let failed_attempts = || {
        let (ok, out) = status(true);
        let json: serde_json::Value = if ok {
            serde_json::from_str(&out).unwrap_or_default()
        } else {
            serde_json::Value::Null
        };
        json["sent_items_problems"][0]["failed_attempts"]
            .as_u64()
            .unwrap_or(0)
    };
    support::wait_for_sync(Duration::from_secs(20), "nine refused handshakes", || {
        failed_attempts() >= 9
    });
    let (ok, json) = status(true);
    assert!(ok, "{json}");
    let json: serde_json::Value = serde_json::from_str(&json).expect("status json");
    let problems = json["sent_items_problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 1, "one cause: {problems:?}");
    assert_eq!(problems[0]["store"], "imap");
    assert_eq!(problems[0]["scope"], "store");
    assert_eq!(problems[0]["mailboxes"], 2);
    let (ok, text) = status(false);
    assert!(ok, "{text}");
    assert!(text.contains("CONFIGURATION ERROR"), "{text}");
    assert!(text.contains("not valid for name"), "{text}");

    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "clean exit after SIGTERM: {exit:?}");
    let log = std::fs::read_to_string(&stderr).expect("stderr");
    let loud: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("not valid for name"))
        .collect();
    assert_eq!(loud.len(), 1, "logged once, not per copy or retry:\n{log}");
    assert!(loud[0].contains("CONFIGURATION ERROR"), "{log}");

    let spool = Spool::attach(dir.path().join("spool")).expect("attach");
    assert!(spool.list(true).await.expect("failed").is_empty());
    let queued = spool.list(false).await.expect("queued");
    assert_eq!(queued.len(), 3, "kept queued");
    // Not counted (an attempt cut short by the stop would show as 1).
    assert!(queued.iter().all(|e| e.attempts <= 1), "{queued:?}");
    assert!(dovecot.fetch(ALICE, "Sent Items").await.is_empty());
}
