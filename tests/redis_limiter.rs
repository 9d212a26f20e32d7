//! The Redis limiter backend against a real redis-server (started by the tests; without
//! redis-server they are skipped with a note, and fail under CI: `support::require`): shared limits across daemons,
//! leases of a killed daemon expiring by themselves, live leases surviving many TTLs,
//! outages with `on_error: allow` and `tempfail`, and atomic acquires.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use submitgate::limiter::redis::{OnError, RedisBackend, RedisSettings};
use submitgate::limiter::{Acquire, Limiter};
use support::daemon::{TestDaemon, Txn, CONTOSO};

const LIMIT_REPLY: &str = "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded";

/// A private redis-server on a unix socket.
struct Redis {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Option<Redis> {
        support::require("redis-server")?;
        let mut r = Redis {
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        r.spawn();
        Some(r)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(self.socket())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let socket = self.socket();
        support::wait_for_sync(Duration::from_secs(10), "redis-server to start", || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn limiter_config(redis: &Redis, ttl: &str, on_error: &str, node: &str) -> String {
    format!(
        "limiter: {{ backend: redis, url: \"{}\", lease_ttl: {ttl}, on_error: {on_error}, node_id: {node}, timeout: 200ms }}\n",
        redis.url()
    )
}

fn backend(redis: &Redis, node: &str) -> Limiter {
    Limiter::redis(
        RedisBackend::new(
            RedisSettings {
                topology: submitgate::limiter::redis::Topology::Single,
                url: redis.url(),
                key_prefix: "t:".into(),
                lease_ttl: Duration::from_secs(30),
                timeout: Duration::from_millis(500),
                on_error: OnError::Tempfail,
                node_id: node.into(),
            },
            None,
        )
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_parallel_acquires_grant_exactly_three() {
    let Some(redis) = Redis::start() else { return };
    let nodes = [backend(&redis, "a"), backend(&redis, "b")];
    let mut tasks = Vec::new();
    for i in 0..50 {
        let l = nodes[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            l.acquire("hot@contoso.com", 3).await
        }));
    }
    let mut granted = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Acquire::Granted(l) => granted.push(l),
            Acquire::Refused { limit: 3, .. } => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(granted.len(), 3);
    assert_eq!(refused, 47);
    assert_eq!(nodes[0].in_use("hot@contoso.com").await, 3);
    let sessions = nodes[1].sessions().await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].sessions, 3);
    for l in granted {
        l.release().await;
    }
    assert_eq!(nodes[1].in_use("hot@contoso.com").await, 0);
    // The key is gone with its last lease.
    assert!(nodes[0].sessions().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_the_limit() {
    let Some(redis) = Redis::start() else { return };
    let a = TestDaemon::start(
        &[("c.yaml", CONTOSO)],
        &limiter_config(&redis, "30s", "allow", "mta-a"),
    )
    .await;
    let b = TestDaemon::start(
        &[("c.yaml", CONTOSO)],
        &limiter_config(&redis, "30s", "allow", "mta-b"),
    )
    .await;
    let txn = |port, instance| Txn {
        login: "bob@contoso.com",
        client_port: port,
        instance,
    };
    let mut a1 = a.client().await;
    let mut a2 = a.client().await;
    let mut b1 = b.client().await;
    assert_eq!(a1.ask(&txn(1, "a1"), "RCPT").await, "DUNNO");
    assert_eq!(b1.ask(&txn(2, "b1"), "RCPT").await, "DUNNO");
    assert_eq!(a2.ask(&txn(3, "a2"), "RCPT").await, "DUNNO");
    // The fourth, on either daemon, is refused.
    let mut a3 = a.client().await;
    let mut b2 = b.client().await;
    assert_eq!(a3.ask(&txn(4, "a3"), "RCPT").await, LIMIT_REPLY);
    assert_eq!(b2.ask(&txn(5, "b2"), "RCPT").await, LIMIT_REPLY);
    assert_eq!(a.in_use("bob@contoso.com").await, 3);
    // One finishes on daemon B: a new transaction passes on daemon A.
    assert_eq!(b1.ask(&txn(2, "b1"), "END-OF-MESSAGE").await, "DUNNO");
    assert_eq!(a3.ask(&txn(4, "a3"), "RCPT").await, "DUNNO");
    assert_eq!(b.in_use("bob@contoso.com").await, 3);
    // status on either daemon shows the cluster-wide count.
    let sessions = b.daemon.context().limiter.sessions().await;
    assert_eq!(sessions[0].sessions, 3);
}

/// Starts the real binary (so it can be killed with SIGKILL) with a policy front end.
fn spawn_daemon(dir: &Path, limiter: &str) -> (Child, u16) {
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(dir.join("policies/c.yaml"), CONTOSO).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = format!(
        "policy: [\"inet:127.0.0.1:{port}\"]\npolicies: {}\naudit: {{ path: {} }}\nwatch_policies: false\n{limiter}",
        dir.join("policies").display(),
        dir.join("audit.log").display()
    );
    std::fs::write(dir.join("sg.yaml"), config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_submitgate"))
        .args(["serve", "--config"])
        .arg(dir.join("sg.yaml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    support::wait_for_sync(Duration::from_secs(10), "the daemon to start", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (child, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemons_leases_expire_while_live_ones_are_refreshed() {
    let Some(redis) = Redis::start() else { return };
    let ttl = Duration::from_secs(2);
    let survivor = TestDaemon::start(
        &[("c.yaml", CONTOSO)],
        &limiter_config(&redis, "2s", "allow", "survivor"),
    )
    .await;
    let victim_dir = tempfile::tempdir().unwrap();
    let (mut victim, port) = spawn_daemon(
        victim_dir.path(),
        &limiter_config(&redis, "2s", "allow", "victim"),
    );

    let txn = |port, instance| Txn {
        login: "carol@contoso.com",
        client_port: port,
        instance,
    };
    let mut live = survivor.client().await;
    assert_eq!(live.ask(&txn(1, "live"), "RCPT").await, "DUNNO");
    let mut v1 = support::daemon::PolicyClient::connect(port).await;
    let mut v2 = support::daemon::PolicyClient::connect(port).await;
    assert_eq!(v1.ask(&txn(2, "v1"), "RCPT").await, "DUNNO");
    assert_eq!(v2.ask(&txn(3, "v2"), "RCPT").await, "DUNNO");
    assert_eq!(survivor.in_use("carol@contoso.com").await, 3);

    victim.kill().unwrap(); // SIGKILL: no release, no goodbye.
    victim.wait().unwrap();
    support::wait_for(
        ttl + Duration::from_secs(1),
        "the killed daemon's leases to expire",
        || async { survivor.in_use("carol@contoso.com").await == 1 },
    )
    .await;
    // The survivor's session keeps its lease over several TTLs (time passing is the test here,
    // not a synchronization).
    tokio::time::sleep(ttl * 3).await;
    assert_eq!(survivor.in_use("carol@contoso.com").await, 1);
    assert_eq!(live.ask(&txn(1, "live"), "END-OF-MESSAGE").await, "DUNNO");
    assert_eq!(survivor.in_use("carol@contoso.com").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_with_allow_lets_mail_through_audits_once_and_recovers() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let t = TestDaemon::start(
        &[("c.yaml", CONTOSO)],
        &limiter_config(&redis, "2s", "allow", "n1"),
    )
    .await;
    let mut held = Vec::new();
    for i in 0..2u16 {
        let mut c = t.client().await;
        let instance = format!("before{i}");
        let txn = Txn {
            login: "bob@contoso.com",
            client_port: 100 + i,
            instance: &instance,
        };
        assert_eq!(c.ask(&txn, "RCPT").await, "DUNNO");
        held.push(c);
    }
    redis.stop();
    // During the outage submissions pass (more than the limit, even).
    for i in 0..3u16 {
        let mut c = t.client().await;
        let instance = format!("during{i}");
        let txn = Txn {
            login: "bob@contoso.com",
            client_port: 200 + i,
            instance: &instance,
        };
        assert_eq!(c.ask(&txn, "RCPT").await, "DUNNO");
        held.push(c);
    }
    // The org/mailbox flags are still enforced from the local files.
    let mut c = t.client().await;
    let blocked = Txn {
        login: "blocked@contoso.com",
        client_port: 300,
        instance: "x",
    };
    assert!(c.ask(&blocked, "RCPT").await.starts_with("550 5.7.139"));
    let audit = t.audit().await;
    let outages: Vec<_> = audit
        .iter()
        .filter(|e| e["event"] == "limiter_unavailable")
        .collect();
    assert_eq!(outages.len(), 1, "audited once per outage, not per request");

    // Redis returns (empty: it lost everything). The five live leases are written back once,
    // so the limit holds again.
    redis.spawn();
    support::wait_for(
        Duration::from_secs(5),
        "5 leases after recovery",
        || async { t.in_use("bob@contoso.com").await == 5 },
    )
    .await;
    let mut c = t.client().await;
    let txn = Txn {
        login: "bob@contoso.com",
        client_port: 400,
        instance: "after",
    };
    assert_eq!(c.ask(&txn, "RCPT").await, LIMIT_REPLY);
    // Several refreshes later the count is still 5: written back once, not once per refresh
    // (time passing is the test here, not a synchronization).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(t.in_use("bob@contoso.com").await, 5);
    drop(held);
    support::wait_for(
        Duration::from_secs(3),
        "the leases to be released",
        || async { t.in_use("bob@contoso.com").await == 0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_with_tempfail_refuses_with_451() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let t = TestDaemon::start(
        &[("c.yaml", CONTOSO)],
        &limiter_config(&redis, "30s", "tempfail", "n1"),
    )
    .await;
    let mut c = t.client().await;
    let txn = |instance| Txn {
        login: "bob@contoso.com",
        client_port: 1,
        instance,
    };
    assert_eq!(c.ask(&txn("a"), "RCPT").await, "DUNNO");
    assert_eq!(c.ask(&txn("a"), "END-OF-MESSAGE").await, "DUNNO");
    redis.stop();
    let answer = c.ask(&txn("b"), "RCPT").await;
    assert!(answer.starts_with("451 4.3.0"), "{answer}");
    redis.spawn();
    let deadline = support::Deadline::new(Duration::from_secs(5), "answers after Redis is back");
    while c.ask(&txn("c"), "RCPT").await != "DUNNO" {
        deadline.tick().await;
    }
    let audit = t.audit().await;
    let defer = audit
        .iter()
        .find(|e| e["reason"] == "limiter_unavailable")
        .unwrap();
    assert_eq!(defer["decision"], "defer");
}
