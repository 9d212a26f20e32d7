//! Sent Items delivery benchmark: a backlog of 10 KiB copies drained into a private Dovecot over
//! IMAP and into Maildir, with 1 and 8 workers (or the counts given); prints copies per second
//! and drain time.
//!
//! ```text
//! cargo run --release --example delivery_bench [-- ENTRIES [MAILBOXES [imap|maildir|both [WORKERS,...]]]]
//! ```
//!
//! Needs Dovecot (see tests/dovecot/run.sh) and root, like the tests it borrows its harness from.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use submitgate::sent_items::spool::Spool;
use support::dovecot;
use support::dovecot::{message, Dovecot, Options, Rig, SECRET};

async fn run(label: &str, store: &str, workers: usize, entries: usize, mailboxes: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let spool = Spool::open(dir.path().join("spool")).expect("spool");
        for n in 0..entries {
            let (body, mid) = message(n, 10 * 1024);
            let mailbox = format!("user{}@contoso.com", n % mailboxes);
            dovecot::commit(&spool, &mailbox, &body, &mid).await;
        }
    }
    let started = Instant::now();
    let rig = Rig::start_in(
        dir,
        &format!("  workers: {workers}\n  scan_interval: 1s\n  store: {store}\n"),
    );
    rig.drained(Duration::from_secs(1800)).await;
    let took = started.elapsed();
    let failed = rig.spool.list(true).await.expect("failed").len();
    rig.stop().await;
    let rate = entries as f64 / took.as_secs_f64();
    println!(
        "{label:<8} workers={workers}  {entries} copies of 10 KiB in {:>7.2} s  = {rate:>7.0} copies/s{}",
        took.as_secs_f64(),
        if failed > 0 {
            format!("  ({failed} FAILED)")
        } else {
            String::new()
        }
    );
    rate
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let entries: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let mailboxes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let only = args.next().unwrap_or_default();
    let workers: Vec<usize> = args
        .next()
        .map(|w| {
            w.split(',')
                .map(|n| n.parse().expect("WORKERS: numbers separated by commas"))
                .collect()
        })
        .unwrap_or_else(|| vec![1, 8]);
    println!("backlog of {entries} entries over {mailboxes} mailboxes, drained from start to empty queue");

    let mail = tempfile::tempdir().expect("tempdir");
    let maildir = format!(
        "{{ backend: maildir, root: \"{}/{{domain}}/{{local}}/Maildir\" }}",
        mail.path().display()
    );
    if only != "imap" {
        for &workers in &workers {
            run("maildir", &maildir, workers, entries, mailboxes).await;
        }
    }
    if only == "maildir" {
        return;
    }

    // More Dovecot configuration, e.g. DELIVERY_BENCH_DOVECOT="service imap-login { service_count = 0 }".
    let options = Options {
        extra: std::env::var("DELIVERY_BENCH_DOVECOT").unwrap_or_default(),
        ..Options::default()
    };
    let Some(dovecot) = Dovecot::start("delivery_bench", options) else {
        return;
    };
    let secret = dovecot.secret_file(SECRET);
    let mut imap = dovecot.store_yaml("master_user", &secret);
    // More store settings, e.g. DELIVERY_BENCH_IMAP="idle_timeout: 0s".
    if let Ok(extra) = std::env::var("DELIVERY_BENCH_IMAP") {
        imap = format!("{}, {extra} }}", imap.trim_end_matches('}').trim_end());
    }
    for &workers in &workers {
        run("imap", &imap, workers, entries, mailboxes).await;
    }
}
