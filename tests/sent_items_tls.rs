//! IMAP delivery over TLS into a real Dovecot: STARTTLS and implicit TLS trusting a CA file,
//! certificate verification refusing an unknown issuer by default (system roots) and a wrong
//! name, and `tls_verify: false`. Skipped, with a note, without Dovecot.

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
