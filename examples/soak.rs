//! Soak: the daemon under moderate load on all three front ends for N minutes, and whether
//! anything it holds grows.
//!
//! One process runs a daemon built with `submitgate::daemon::Daemon` (as the integration tests
//! do, through `tests/support/`) with a milter, a policy and a Dovecot auth policy listener on
//! loopback, and clients that play Postfix and Dovecot against it:
//!
//! - milter sessions (negotiate, CONNECT, HELO, authenticated MAIL FROM, RCPT, headers, body,
//!   end-of-message, QUIT), each taking and giving back a lease and spooling a Sent Items copy
//!   that workers deliver into a private Dovecot over IMAP (or a Maildir without Dovecot);
//! - policy transactions (RCPT, END-OF-MESSAGE) on connections that are closed and reopened
//!   every few transactions (limiter churn: leases given back on close too);
//! - auth policy `allow` / `report` requests, one HTTP connection each;
//! - a policy file rewritten and reloaded every few seconds;
//! - Dovecot stopped half-way through and started again 5 s later (`--outage-seconds`;
//!   deliveries back off and resume, then drain the backlog).
//!
//! RSS, the bytes in use (allocated and not freed, counted by the global allocator), open file
//! descriptors (`/proc/self/fd`), threads and live tokio tasks are measured after a warm-up and
//! again at the end, each time with the load paused and the daemon idle (no connection open,
//! every lease back, the spool drained) and after the allocator has given back the free memory
//! it can, as the daemon does after each reload, so that both points are the same state. Exit
//! status 1 if the bytes in use grew by more than 10 % + 1 MiB, RSS by more than 10 % + 4 MiB,
//! or fds or tasks by more than 2. Samples taken under load every 30 s are printed, not judged.
//!
//! `ALLOC=glibc heaptrack …/soak --minutes 2` shows where bytes in use come from.
//!
//! ```sh
//! cargo run --release --example soak -- --minutes 10 [--warmup-seconds 60]
//! ```

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

#[path = "common/alloc.rs"]
mod alloc;

/// The allocator the `submitgate` binary uses (src/main.rs), so that RSS is what production
/// sees, counting the bytes in use: what the process holds, apart from what the allocator
/// keeps of freed memory. `ALLOC=glibc|mimalloc|jemalloc` in the environment compares another
/// one; with `ALLOC=glibc`, heap profilers that intercept malloc (heaptrack) see every
/// allocation.
#[global_allocator]
static ALLOCATOR: alloc::Switch = alloc::Switch::counting();

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use submitgate::milter::codec::Reply;
use support::daemon::{MilterClient, PolicyClient, TestDaemon, Txn};
use support::dovecot::{Dovecot, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MILTER_WORKERS: usize = 4;
const POLICY_WORKERS: usize = 4;
const AUTH_WORKERS: usize = 2;
/// Each worker waits this long between its operations: moderate, not maximal, load.
const PACE: Duration = Duration::from_millis(5);
const MAILBOXES: usize = 200;
/// A policy connection is closed and reopened after this many transactions.
const TXNS_PER_CONNECTION: u64 = 20;
const RELOAD_EVERY: Duration = Duration::from_secs(5);
const REPORT_EVERY: Duration = Duration::from_secs(30);

fn policy_text(version: u64) -> String {
    format!(
        // Sending limits on (counted, so the limiter's windows churn too), at values this load
        // never reaches: Exchange's 30 messages a minute per mailbox would defer most of it.
        "organization: contoso\ndomains: [contoso.com]\nmax_concurrent_sessions_per_mailbox: 3\n\
sending_limits: {{ messages_per_minute: 100000, recipients_per_day: 100000000 }}\n\
mailboxes:\n  blocked@contoso.com: {{ smtp_client_authentication_disabled: true }}\n\
  # reload {version}\n  printer@contoso.com: {{ max_concurrent_sessions_per_mailbox: {} }}\n",
        5 + version % 3
    )
}

#[derive(Default)]
struct Counters {
    milter_sessions: AtomicU64,
    milter_refused: AtomicU64,
    policy_transactions: AtomicU64,
    policy_connections: AtomicU64,
    auth_requests: AtomicU64,
    reloads: AtomicU64,
    errors: AtomicU64,
}

/// What the process holds at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    /// The anonymous part of RSS (heap, stacks), without the binary's mapped pages.
    anon_kib: u64,
    /// Bytes in use (allocated and not freed), in KiB.
    heap_kib: i64,
    fds: usize,
    threads: u64,
    tasks: usize,
}

fn status_field(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A sample of the idle daemon once the allocator has given back the free memory it can, as
/// the daemon does after each reload: without it, RSS at an idle moment may be whatever the
/// last burst left (mimalloc gives pages back only when it is called again; glibc keeps its
/// arenas' free memory until trimmed; jemalloc purges on its own over ~10 s), which says
/// little about growth. The sample before the release is printed too ("idle, kept"). Bytes in
/// use are exact either way.
async fn settled_sample() -> Sample {
    // What the allocator holds on its own, before it is asked to give memory back.
    print_sample("idle, kept", sample());
    alloc::release();
    tokio::time::sleep(Duration::from_secs(1)).await;
    sample()
}

fn sample() -> Sample {
    Sample {
        rss_kib: status_field("VmRSS:"),
        anon_kib: status_field("RssAnon:"),
        heap_kib: alloc::bytes_in_use() / 1024,
        fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()),
        threads: status_field("Threads:"),
        tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
    }
}

fn print_sample(label: &str, s: Sample) {
    println!(
        "{label:>14}: RSS {:>6.1} MiB (anon {:>6.1})  heap in use {:>5.1} MiB  fds {:>4}  threads {:>3}  tokio tasks {:>4}",
        s.rss_kib as f64 / 1024.0,
        s.anon_kib as f64 / 1024.0,
        s.heap_kib as f64 / 1024.0,
        s.fds,
        s.threads,
        s.tasks
    );
}

struct Args {
    minutes: f64,
    warmup: Duration,
    /// How long Dovecot stays stopped half-way: a longer outage leaves a larger backlog of
    /// copies to drain (and a larger peak of memory to give back).
    outage: Duration,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        minutes: 1.0,
        warmup: Duration::from_secs(30),
        outage: Duration::from_secs(5),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--minutes" => {
                a.minutes = value
                    .parse()
                    .ok()
                    .filter(|m: &f64| *m > 0.0 && *m <= 24.0 * 60.0)
                    .ok_or(format!(
                        "--minutes {value}: a number of minutes, 0 < N ≤ 1440"
                    ))?
            }
            "--warmup-seconds" => {
                a.warmup = Duration::from_secs(
                    value
                        .parse()
                        .map_err(|_| format!("--warmup-seconds {value}: whole seconds"))?,
                )
            }
            "--outage-seconds" => {
                a.outage = Duration::from_secs(
                    value
                        .parse()
                        .map_err(|_| format!("--outage-seconds {value}: whole seconds"))?,
                )
            }
            other => {
                return Err(format!(
                    "unknown argument {other} (--minutes N, --warmup-seconds S, --outage-seconds S)"
                ))
            }
        }
    }
    Ok(a)
}

async fn milter_worker(d: Arc<TestDaemon>, n: usize, run: Arc<AtomicBool>, c: Arc<Counters>) {
    let mut i = n;
    while run.load(Ordering::Relaxed) {
        i += MILTER_WORKERS;
        let login = format!("user{}@contoso.com", i % MAILBOXES);
        let mut m = MilterClient::connect(d.milter_port()).await;
        // Without Nagle: the client's small writes do not wait for delayed ACKs (40 ms each).
        let _ = m.framed.get_ref().set_nodelay(true);
        m.open().await;
        match m.mail(Some(&login)).await {
            Reply::Continue => {
                let qid = format!("SOAK{i:08X}");
                let msgid = format!(" <soak-{i}@contoso.com>");
                let body: &[&[u8]] = &[b"Hello from the soak.\r\n", &[b'x'; 2000], b"\r\n"];
                let r = m
                    .message(
                        &qid,
                        &["rcpt@example.net"],
                        &[
                            ("From", &format!(" <{login}>")),
                            ("To", " <rcpt@example.net>"),
                            ("Subject", " soak"),
                            ("Message-ID", &msgid),
                        ],
                        body,
                    )
                    .await;
                if matches!(r, Reply::Continue | Reply::Accept) {
                    c.milter_sessions.fetch_add(1, Ordering::Relaxed);
                } else {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                }
                m.abort().await;
            }
            _ => {
                c.milter_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        m.quit().await;
        tokio::time::sleep(PACE).await;
    }
}

async fn policy_worker(d: Arc<TestDaemon>, n: usize, run: Arc<AtomicBool>, c: Arc<Counters>) {
    let mut txn: u64 = 0;
    while run.load(Ordering::Relaxed) {
        let mut client = PolicyClient::connect(d.port()).await;
        c.policy_connections.fetch_add(1, Ordering::Relaxed);
        for _ in 0..TXNS_PER_CONNECTION {
            if !run.load(Ordering::Relaxed) {
                break;
            }
            txn += 1;
            let login = format!("user{}@contoso.com", (txn as usize * 7 + n) % MAILBOXES);
            let instance = format!("{n}.{txn}");
            let t = Txn {
                login: &login,
                client_port: 40000 + n as u16,
                instance: &instance,
            };
            let rcpt = client.ask(&t, "RCPT").await;
            let eom = client.ask(&t, "END-OF-MESSAGE").await;
            // `ask` returns the text after `action=`: DUNNO, or the limit's 432 (rare).
            if (rcpt == "DUNNO" || rcpt.starts_with("432 ")) && eom == "DUNNO" {
                c.policy_transactions.fetch_add(1, Ordering::Relaxed);
            } else {
                c.errors.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(PACE).await;
        }
        // Dropping the connection gives back whatever it still holds.
    }
}

async fn auth_request(port: u16, command: &str, body: &str) -> std::io::Result<bool> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!(
        "POST /?command={command} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply))
        .await
        .map_err(|_| std::io::Error::other("no auth policy reply within 10 s"))??;
    Ok(reply.starts_with(b"HTTP/1.1 200"))
}

async fn auth_worker(d: Arc<TestDaemon>, n: usize, run: Arc<AtomicBool>, c: Arc<Counters>) {
    let port = d.auth_policy_port();
    let mut i = n;
    while run.load(Ordering::Relaxed) {
        i += AUTH_WORKERS;
        let login = format!("user{}@contoso.com", i % MAILBOXES);
        let allow = format!(
            r#"{{"device_id":"","login":"{login}","protocol":"smtp","pwhash":"08fd","remote":"127.0.0.1","session_id":"s{i}","tls":false}}"#
        );
        let report = format!(
            r#"{{"device_id":"","login":"{login}","protocol":"smtp","pwhash":"08fd","remote":"127.0.0.1","session_id":"s{i}","tls":false,"success":true,"policy_reject":false}}"#
        );
        let ok = matches!(auth_request(port, "allow", &allow).await, Ok(true))
            && matches!(auth_request(port, "report", &report).await, Ok(true));
        let counter = if ok { &c.auth_requests } else { &c.errors };
        counter.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(PACE).await;
    }
}

/// Runs every client until `run` is cleared; reloads the policy every [`RELOAD_EVERY`].
async fn load(
    phase: &str,
    d: &Arc<TestDaemon>,
    c: &Arc<Counters>,
    how_long: Duration,
    dovecot: Option<&Dovecot>,
    outage: Duration,
) {
    let run = Arc::new(AtomicBool::new(true));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..MILTER_WORKERS {
        tasks.spawn(milter_worker(d.clone(), n, run.clone(), c.clone()));
    }
    for n in 0..POLICY_WORKERS {
        tasks.spawn(policy_worker(d.clone(), n, run.clone(), c.clone()));
    }
    for n in 0..AUTH_WORKERS {
        tasks.spawn(auth_worker(d.clone(), n, run.clone(), c.clone()));
    }
    let start = Instant::now();
    let mut restarted = dovecot.is_none();
    let mut next_report = REPORT_EVERY;
    while start.elapsed() < how_long {
        tokio::time::sleep(RELOAD_EVERY).await;
        let version = c.reloads.fetch_add(1, Ordering::Relaxed) + 1;
        let file = d.policies_dir().join("contoso.yaml");
        if std::fs::write(&file, policy_text(version)).is_err() {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        d.daemon.reload().await;
        if !restarted && start.elapsed() >= how_long / 2 {
            if let Some(dovecot) = dovecot {
                println!(
                    "   {:>4} s: stopping Dovecot for {} s",
                    start.elapsed().as_secs(),
                    outage.as_secs()
                );
                tokio::task::block_in_place(|| dovecot.stop());
                tokio::time::sleep(outage).await;
                tokio::task::block_in_place(|| dovecot.restart());
                println!(
                    "   {:>4} s: Dovecot started again",
                    start.elapsed().as_secs()
                );
            }
            restarted = true;
        }
        if start.elapsed() >= next_report {
            next_report += REPORT_EVERY;
            print_sample(
                &format!("{phase} {} s", start.elapsed().as_secs()),
                sample(),
            );
        }
    }
    run.store(false, Ordering::Relaxed);
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            eprintln!("soak: a client task failed: {e}");
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Waits until the daemon holds nothing for the load: no lease, the spool's queue empty. A
/// backlog of copies (Dovecot was stopped; a busy machine delivers slowly) may take minutes to
/// drain: it fails only when the queue has not shrunk for [`STALL`].
async fn settle(d: &TestDaemon) -> Result<(), String> {
    const STALL: Duration = Duration::from_secs(120);
    let mut best = usize::MAX;
    let mut progress = Instant::now();
    loop {
        let mut leases = 0;
        for i in 0..MAILBOXES {
            leases += d.in_use(&format!("user{i}@contoso.com")).await;
        }
        // Entries pending, as `submitgate spool list` counts them (the segment files stay
        // until their last entry is done, the active one until the next).
        let queued = support::daemon::read_spool_entries(&d.spool_dir()).len();
        if leases == 0 && queued == 0 {
            // Let connection tasks that saw their peer close finish and blocking threads idle.
            tokio::time::sleep(Duration::from_secs(2)).await;
            return Ok(());
        }
        if queued < best {
            best = queued;
            progress = Instant::now();
        }
        if progress.elapsed() > STALL {
            return Err(format!(
                "not idle: {leases} leases held, {queued} spool entries queued, none delivered for {} s",
                STALL.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    };
    alloc::init();
    let dovecot = tokio::task::block_in_place(|| Dovecot::start("soak", Options::default()));
    let store = match &dovecot {
        Some(dc) => {
            let secret = dc.secret_file(support::dovecot::SECRET);
            format!("  store: {}\n", dc.store_yaml("master_user", &secret))
        }
        None => "  store: { backend: maildir, root: \"{dir}/mail/{domain}/{local}/Maildir\" }\n"
            .to_string(),
    };
    let front = "milter: [\"inet:127.0.0.1:0\"]\npolicy: [\"inet:127.0.0.1:0\"]\n\
auth_policy: [\"inet:127.0.0.1:0\"]\n";
    let extra = format!("sent_items:\n  spool: \"{{dir}}/spool\"\n{store}");
    let d =
        Arc::new(TestDaemon::start_with(front, &[("contoso.yaml", &policy_text(0))], &extra).await);
    let c = Arc::new(Counters::default());
    println!(
        "soak: {} min after {} s of warm-up, {}; Sent Items into {}",
        args.minutes,
        args.warmup.as_secs(),
        alloc::name(),
        if dovecot.is_some() {
            "Dovecot (IMAP), restarted half-way"
        } else {
            "a Maildir (no Dovecot installed)"
        }
    );

    load("warm-up", &d, &c, args.warmup, None, args.outage).await;
    if let Err(e) = settle(&d).await {
        eprintln!("soak: after the warm-up: {e}");
        // exit() runs no destructor: stop the private Dovecot first.
        drop(dovecot);
        std::process::exit(1);
    }
    let start = settled_sample().await;
    print_sample("start", start);
    let began = Instant::now();
    load(
        "soak",
        &d,
        &c,
        Duration::from_secs_f64(args.minutes * 60.0),
        dovecot.as_ref(),
        args.outage,
    )
    .await;
    let loaded = began.elapsed();
    if let Err(e) = settle(&d).await {
        eprintln!("soak: at the end: {e}");
        // exit() runs no destructor: stop the private Dovecot first.
        drop(dovecot);
        std::process::exit(1);
    }
    let end = settled_sample().await;
    print_sample("end", end);

    let secs = loaded.as_secs_f64().max(1.0);
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "load: {} milter sessions ({:.0}/s, {} refused at the limit), {} policy transactions \
({:.0}/s) on {} connections, {} auth policy allow+report pairs ({:.0}/s), {} reloads, {} errors",
        get(&c.milter_sessions),
        get(&c.milter_sessions) as f64 / secs,
        get(&c.milter_refused),
        get(&c.policy_transactions),
        get(&c.policy_transactions) as f64 / secs,
        get(&c.policy_connections),
        get(&c.auth_requests),
        get(&c.auth_requests) as f64 / secs,
        get(&c.reloads),
        get(&c.errors),
    );

    let mut failed = Vec::new();
    // Bytes in use are exact: any state kept per connection, session, message or reload shows
    // here. RSS also counts what the allocator keeps and its fragmentation, so it gets more room.
    let heap_limit = start.heap_kib + start.heap_kib / 10 + 1024;
    if end.heap_kib > heap_limit {
        failed.push(format!(
            "bytes in use grew from {} to {} KiB (limit {heap_limit})",
            start.heap_kib, end.heap_kib
        ));
    }
    let rss_limit = start.rss_kib + start.rss_kib / 10 + 4096;
    if end.rss_kib > rss_limit {
        failed.push(format!(
            "RSS grew from {} to {} KiB (limit {rss_limit})",
            start.rss_kib, end.rss_kib
        ));
    }
    if end.fds > start.fds + 2 {
        failed.push(format!("open fds grew from {} to {}", start.fds, end.fds));
    }
    if end.tasks > start.tasks + 2 {
        failed.push(format!(
            "tokio tasks grew from {} to {}",
            start.tasks, end.tasks
        ));
    }
    if get(&c.errors) > 0 {
        failed.push(format!("{} client errors", get(&c.errors)));
    }
    if get(&c.milter_sessions) == 0
        || get(&c.policy_transactions) == 0
        || get(&c.auth_requests) == 0
    {
        failed.push("a front end served nothing".to_string());
    }
    if failed.is_empty() {
        println!("soak: passed (nothing grew beyond tolerance)");
    } else {
        for f in &failed {
            eprintln!("soak: FAILED: {f}");
        }
        // exit() runs no destructor: stop the private Dovecot first.
        drop(dovecot);
        std::process::exit(1);
    }
}
