//! The Redis limiter's sending limits and restricted senders against real Redis deployments
//! the tests start: one server (limits shared by two daemons; one round trip per decision,
//! counted with MONITOR), a 3-master Redis Cluster (`redis-cli --cluster create`: every
//! mailbox's keys in one slot, lists gathered from every master) and a master with a replica
//! and a sentinel, failed over in the middle of a load twice (`SENTINEL FAILOVER`, then the
//! master killed): what is lost is measured and printed, and restricted senders and the
//! policy's flags keep being enforced. Without redis-server they are skipped with a note, and
//! fail under CI (`support::require`).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::daemon::{PolicyClient, TestDaemon};
use support::redis::{cli, Cluster, Monitor, Sentinels, Server, MASTER_NAME};

const RATE: &str = "451 4.7.0 Message submission rate for this mailbox has exceeded the configured limit, try again later";
const RESTRICTED: &str = "550 5.1.8 Access denied, bad outbound sender";
const DISABLED: &str =
    "550 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.";

const CONTOSO: &str = "\
organization: contoso
domains: [contoso.com]
mailboxes:
  blocked@contoso.com: { smtp_client_authentication_disabled: true }
  spammer@contoso.com:
    outbound_spam: { recipient_limit_external_per_hour: 3, action_when_threshold_reached: block_user }
";

/// Many messages a minute for the load of the failover test (counted, never refused).
const BUSY: &str = "\
organization: busy
domains: [busy.example]
sending_limits: { messages_per_minute: 1000000 }
";

fn request(login: &str, port: u32, instance: &str, state: &str, rcpt: &str, count: u32) -> String {
    format!(
        "request=smtpd_access_policy\nprotocol_state={state}\nprotocol_name=ESMTP\n\
client_address=192.0.2.10\nclient_name=client.example\nclient_port={port}\n\
server_address=127.0.0.1\nserver_port=10587\nsender={login}\nrecipient={rcpt}\n\
recipient_count={count}\nqueue_id=\ninstance={instance}\nsize=100\nsasl_method=PLAIN\n\
sasl_username={login}\nencryption_protocol=TLSv1.3\n\n"
    )
}

/// One message of `n` external recipients through the policy front end; the last answer.
async fn message(c: &mut PolicyClient, login: &str, instance: &str, n: u32) -> String {
    for i in 0..n {
        let rcpt = format!("r{i}@example.net");
        let a = c
            .raw(request(login, 40000, instance, "RCPT", &rcpt, i).as_bytes())
            .await
            .expect("reply");
        if a != "DUNNO" {
            return a;
        }
    }
    c.raw(request(login, 40000, instance, "END-OF-MESSAGE", "", n).as_bytes())
        .await
        .expect("reply")
}

fn redis_config(topology: &str, node: &str) -> String {
    format!(
        "limiter: {{ backend: redis, {topology}, node_id: {node}, lease_ttl: 60s, timeout: 500ms }}\ncontrol: \"unix:{{dir}}/control.sock\"\n"
    )
}

async fn daemon(config: &str) -> TestDaemon {
    TestDaemon::start(&[("contoso.yaml", CONTOSO), ("busy.yaml", BUSY)], config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_the_counters_and_each_decision_is_one_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let Some(redis) = Server::start(dir.path()) else {
        return;
    };
    let url = format!("url: \"{}\"", redis.url());
    let a = daemon(&redis_config(&url, "mta-a")).await;
    let b = daemon(&redis_config(&url, "mta-b")).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    // 15 messages on each MTA: the 31st, on either, is deferred.
    for i in 0..15 {
        assert_eq!(
            message(&mut ca, "alice@contoso.com", &format!("a{i}"), 1).await,
            "DUNNO"
        );
        assert_eq!(
            message(&mut cb, "alice@contoso.com", &format!("b{i}"), 1).await,
            "DUNNO"
        );
    }
    assert_eq!(message(&mut ca, "alice@contoso.com", "a15", 1).await, RATE);
    assert_eq!(message(&mut cb, "alice@contoso.com", "b15", 1).await, RATE);
    // A block made through one MTA holds on the other.
    assert_eq!(
        message(&mut ca, "spammer@contoso.com", "s1", 4).await,
        RESTRICTED
    );
    assert_eq!(
        message(&mut cb, "spammer@contoso.com", "s2", 1).await,
        RESTRICTED
    );
    let listed = b.daemon.context().limiter.blocked_senders().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].mailbox, "spammer@contoso.com");
    assert_eq!(listed[0].until, 0, "block_user: until released");

    // Round trips: each decision (a transaction's first request, its end of message) is one
    // EVALSHA and nothing else; RCPTs after the first and DATA cost none. MONITOR shows every
    // command a client sent (the commands the scripts run are marked `lua` and left out).
    let monitor = Monitor::start(redis.port);
    let txns = 40usize;
    for i in 0..txns {
        let login = format!("user{i}@busy.example");
        assert_eq!(
            message(&mut ca, &login, &format!("rt{i}"), 3).await,
            "DUNNO"
        );
    }
    let commands = monitor.client_commands();
    let evalsha = commands.iter().filter(|c| *c == "evalsha").count();
    eprintln!(
        "redis commands for {txns} transactions of 3 recipients: {} ({evalsha} EVALSHA)",
        commands.len()
    );
    assert_eq!(
        commands.len(),
        2 * txns,
        "two decisions, two round trips: {commands:?}"
    );
    assert_eq!(evalsha, 2 * txns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_master_cluster_keeps_each_mailbox_in_one_slot() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let nodes = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let t = daemon(&redis_config(&format!("cluster: [{nodes}]"), "mta-c")).await;
    let mut c = t.client().await;
    // Many mailboxes: their keys spread over the masters, each mailbox's scripts still run.
    for i in 0..30 {
        let login = format!("user{i}@busy.example");
        assert_eq!(message(&mut c, &login, &format!("u{i}"), 2).await, "DUNNO");
    }
    let spread = cluster.keys_per_node();
    eprintln!("keys per master: {spread:?}");
    assert!(
        spread.iter().filter(|n| **n > 0).count() >= 2,
        "keys on one master only: {spread:?}"
    );
    // The message rate, across the cluster.
    for i in 0..30 {
        assert_eq!(
            message(&mut c, "alice@contoso.com", &format!("a{i}"), 1).await,
            "DUNNO"
        );
    }
    assert_eq!(message(&mut c, "alice@contoso.com", "a30", 1).await, RATE);
    // Restricted senders: blocked, listed from every master, released.
    assert_eq!(
        message(&mut c, "spammer@contoso.com", "s1", 4).await,
        RESTRICTED
    );
    let limiter = &t.daemon.context().limiter;
    let listed = limiter.blocked_senders().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let state = limiter.mailbox_state("spammer@contoso.com").await.unwrap();
    assert!(state.blocked.is_some());
    let released = limiter.release_sender("spammer@contoso.com").await.unwrap();
    assert!(released.is_some());
    assert_eq!(
        message(&mut c, "spammer@contoso.com", "s2", 1).await,
        "DUNNO"
    );
    // Sessions across the cluster (status): leases live in every master's slots.
    let mut held = Vec::new();
    for i in 0..6u32 {
        let mut h = t.client().await;
        let login = format!("user{i}@busy.example");
        let a = h
            .raw(request(&login, 50000 + i, "held", "RCPT", "x@example.net", 0).as_bytes())
            .await
            .unwrap();
        assert_eq!(a, "DUNNO");
        held.push(h);
    }
    let sessions = limiter.sessions().await;
    assert_eq!(sessions.len(), 6, "{sessions:?}");
    // The key names carry the mailbox as hash tag.
    let master = cluster.nodes[0].port;
    let slot_a = cli(
        master,
        &["cluster", "keyslot", "submitgate:count:{alice@contoso.com}"],
    );
    let slot_b = cli(
        master,
        &["cluster", "keyslot", "submitgate:lease:{alice@contoso.com}"],
    );
    assert_eq!(slot_a, slot_b);
}

/// The load of the failover test: 8 connections of one-recipient messages, each connection
/// for its own mailbox, until stopped. Counts the messages accepted (DUNNO at end of message).
struct Load {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    other: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(t: &Arc<TestDaemon>, accepted: &Arc<AtomicU64>, other: &Arc<AtomicU64>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for conn in 0..8u32 {
            let (t, stop, accepted, other) =
                (t.clone(), stop.clone(), accepted.clone(), other.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = t.client().await;
                let login = format!("load{conn}@busy.example");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let instance = format!("{conn}.{i}.{}", accepted.load(Ordering::Relaxed));
                    let a = message(&mut c, &login, &instance, 1).await;
                    if a == "DUNNO" {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        other.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            }));
        }
        Load {
            stop,
            accepted: accepted.clone(),
            other: other.clone(),
            tasks,
        }
    }

    /// Waits until `more` messages beyond now were accepted, then stops the load.
    async fn run_for(self, more: u64) {
        let target = self.accepted.load(Ordering::Relaxed) + more;
        let accepted = self.accepted.clone();
        support::wait_for(
            Duration::from_secs(30),
            "messages accepted after the failover",
            || {
                let accepted = accepted.clone();
                async move { accepted.load(Ordering::Relaxed) >= target }
            },
        )
        .await;
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let _ = self.other;
    }
}

/// What the current master counted for the load's mailboxes.
async fn counted(t: &TestDaemon) -> u64 {
    let mut counted = 0u64;
    for conn in 0..8 {
        let state = t
            .daemon
            .context()
            .limiter
            .mailbox_state(&format!("load{conn}@busy.example"))
            .await
            .expect("the master answers");
        counted += u64::from(state.usage.recipients_last_day);
    }
    counted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_failovers_mid_load_lose_little_and_keep_flags() {
    let Some(mut s) = Sentinels::start() else {
        return;
    };
    let first_master = s.master.port;
    let topology = format!(
        "sentinel: {{ master_name: {MASTER_NAME}, nodes: [\"redis://127.0.0.1:{}/\"] }}, on_error: allow",
        s.sentinel.port
    );
    let t = Arc::new(daemon(&redis_config(&topology, "mta-s")).await);
    // A restricted sender before the failover, replicated to the replica.
    let mut c = t.client().await;
    assert_eq!(
        message(&mut c, "spammer@contoso.com", "s1", 4).await,
        RESTRICTED
    );
    support::wait_for_sync(
        Duration::from_secs(10),
        "the block to reach the replica",
        || {
            cli(
                s.replica.port,
                &["exists", "submitgate:blocked:{spammer@contoso.com}"],
            ) == "1"
        },
    );
    let accepted = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let report = |phase: &str, switched: Duration, total: u64, counted: u64, outages: usize| {
        let lost = total.saturating_sub(counted);
        eprintln!(
            "sentinel, {phase}: new master after {switched:?}; {total} messages accepted so far, \
             {counted} counted by the new master, {lost} lost ({:.2} %), {} other answers, \
             {outages} limiter_unavailable event(s) so far",
            100.0 * lost as f64 / total.max(1) as f64,
            other.load(Ordering::Relaxed),
        );
        lost
    };
    let outages = |audit: Vec<serde_json::Value>| {
        audit
            .iter()
            .filter(|e| e["event"] == "limiter_unavailable")
            .count()
    };

    // 1. `SENTINEL FAILOVER` (a forced, coordinated failover) in the middle of a load.
    let load = Load::start(&t, &accepted, &other);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    assert_eq!(
        cli(s.sentinel.port, &["sentinel", "failover", MASTER_NAME]),
        "OK"
    );
    support::wait_for_sync(
        Duration::from_secs(20),
        "the sentinel to name a new master",
        || {
            let p = s.current_master_port();
            p != 0 && p != first_master
        },
    );
    let switched = started.elapsed();
    // The policy's flags hold during the failover (local files).
    let mut d = t.client().await;
    assert_eq!(
        message(&mut d, "blocked@contoso.com", "b1", 1).await,
        DISABLED
    );
    load.run_for(300).await;
    let lost = report(
        "SENTINEL FAILOVER",
        switched,
        accepted.load(Ordering::Relaxed),
        counted(&t).await,
        outages(t.audit().await),
    );
    let accepted_after_one = accepted.load(Ordering::Relaxed);
    assert!(lost * 10 < accepted_after_one, "more than 10 % lost");
    // The restricted sender is still refused: its block was replicated.
    assert_eq!(
        message(&mut d, "spammer@contoso.com", "s2", 1).await,
        RESTRICTED
    );

    // 2. The new master dies (SIGKILL) in the middle of a load: the sentinel notices after
    // down-after-milliseconds (1 s) and promotes the old master, now its replica. Meanwhile
    // `on_error: allow` lets messages through uncounted.
    let second_master = s.current_master_port();
    assert_eq!(second_master, s.replica.port);
    let load = Load::start(&t, &accepted, &other);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_kill = counted(&t).await;
    let started = Instant::now();
    s.replica.kill();
    support::wait_for_sync(
        Duration::from_secs(30),
        "the sentinel to promote again",
        || s.current_master_port() == first_master,
    );
    let switched = started.elapsed();
    load.run_for(300).await;
    let total = accepted.load(Ordering::Relaxed);
    let after = counted(&t).await;
    let phase_one = (lost, accepted_after_one);
    let lost = report(
        "master killed",
        switched,
        total,
        after,
        outages(t.audit().await),
    );
    eprintln!(
        "sentinel, master killed: in this phase {} accepted, {} lost ({:.2} %)",
        total - phase_one.1,
        lost - phase_one.0,
        100.0 * (lost - phase_one.0) as f64 / (total - phase_one.1).max(1) as f64
    );
    assert!(
        after > before_kill,
        "counting went on after the second failover"
    );
    assert!(lost * 4 < total, "more than 25 % lost: {lost} of {total}");
    assert_eq!(
        message(&mut d, "spammer@contoso.com", "s3", 1).await,
        RESTRICTED
    );
    assert_eq!(
        message(&mut d, "blocked@contoso.com", "b2", 1).await,
        DISABLED
    );
}
