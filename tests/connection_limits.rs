//! Connection starvation (issue 11, item 1) over real sockets: 2 000 silent policy connections
//! cost the other front ends nothing, each front end has its own cap, a connection over a cap
//! is accepted and closed at once instead of waiting in the listen backlog, the policy front
//! end closes idle connections and requests that do not arrive whole in time, and the daemon
//! raises its own `RLIMIT_NOFILE` soft limit at start.

mod support;

use std::time::{Duration, Instant};

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use submitgate::audit::FrontEnd;
use submitgate::milter::codec::Reply;
use support::daemon::{MilterClient, TestDaemon, Txn, CONTOSO};
use support::wait_for;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Every front end, the milter's spool under the test directory.
const ALL_FRONT_ENDS: &str = "policy: [\"inet:127.0.0.1:0\"]\nmilter: [\"inet:127.0.0.1:0\"]\n\
auth_policy: [\"inet:127.0.0.1:0\"]\nsent_items: { spool: {dir}/spool }\n";

/// How fast every front end must answer, whatever the silent connections do.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// How long a closed connection may take to be seen as closed.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

async fn start(extra: &str) -> TestDaemon {
    TestDaemon::start_with(ALL_FRONT_ENDS, &[("contoso.yaml", CONTOSO)], extra).await
}

fn in_use(t: &TestDaemon, front_end: FrontEnd) -> usize {
    t.daemon.connection_cap(front_end).in_use()
}

/// One allowed request on a new policy connection: its answer, and how long it took.
async fn policy_answer(t: &TestDaemon) -> (Option<String>, Duration) {
    let started = Instant::now();
    let ask = async {
        let mut c = t.client().await;
        let txn = Txn {
            login: "alice@contoso.com",
            client_port: 40001,
            instance: "probe.1",
        };
        c.raw(txn.request("RCPT").as_bytes()).await
    };
    let answer = tokio::time::timeout(ANSWER_WITHIN * 5, ask)
        .await
        .ok()
        .flatten();
    (answer, started.elapsed())
}

/// Negotiation, CONNECT, HELO and an allowed MAIL FROM on a new milter connection.
async fn milter_answer(t: &TestDaemon) -> (Reply, Duration) {
    let started = Instant::now();
    let mut m = MilterClient::connect(t.milter_port()).await;
    m.open().await;
    let reply = m.mail(Some("alice@contoso.com")).await;
    (reply, started.elapsed())
}

/// Dovecot's `command=allow` on a new auth policy connection: the status line, and the time.
async fn auth_policy_answer(t: &TestDaemon) -> (String, Duration) {
    let started = Instant::now();
    let body = r#"{"device_id":"","login":"alice@contoso.com","protocol":"smtp","pwhash":"08fd","remote":"127.0.0.1","session_id":"","tls":false}"#;
    let request = format!(
        "POST /?command=allow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let ask = async {
        let mut s = BufReader::new(
            TcpStream::connect(("127.0.0.1", t.auth_policy_port()))
                .await
                .unwrap(),
        );
        s.get_mut().write_all(request.as_bytes()).await.unwrap();
        let mut status = String::new();
        s.read_line(&mut status).await.unwrap();
        status.trim_end().to_string()
    };
    let status = tokio::time::timeout(ANSWER_WITHIN * 5, ask)
        .await
        .unwrap_or_default();
    (status, started.elapsed())
}

/// Whether the peer closes `stream` within `limit` (end of file or a reset), reading and
/// discarding anything it sends first.
async fn closes_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// `n` connections to `port` that never send a byte; fails if one cannot connect within 5 s
/// (a listener that stopped accepting leaves connections hanging in its backlog).
async fn silent_connections(port: u16, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let connect = TcpStream::connect(("127.0.0.1", port));
        let s = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .unwrap_or_else(|_| panic!("connection {i} not accepted within 5 s"))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        out.push(s);
    }
    out
}

/// Lowers this process's soft `RLIMIT_NOFILE` to 1024 (the usual default), so that the test
/// shows the daemon raising it back.
fn lower_nofile_soft_limit() -> Rlimit {
    let limit = getrlimit(Resource::Nofile);
    let low = Rlimit {
        current: Some(limit.current.unwrap_or(1024).min(1024)),
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, low).expect("lower RLIMIT_NOFILE");
    limit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_silent_policy_connections_starve_no_front_end() {
    let before = lower_nofile_soft_limit();
    let t = start("policy_max_connections: 2100\npolicy_read_timeout: 120s\n").await;
    // The daemon (this process) raised its soft limit to the hard one: 2 000 client sockets
    // and the daemon's 2 000 would not fit in 1024.
    let raised = getrlimit(Resource::Nofile);
    assert_eq!(raised.current, before.maximum.or(raised.current));
    assert!(raised.current.unwrap_or(u64::MAX) >= 4500, "{raised:?}");

    let silent = silent_connections(t.port(), 2000).await;
    wait_for(
        Duration::from_secs(20),
        "2000 policy connections served",
        || async { in_use(&t, FrontEnd::Policy) == 2000 },
    )
    .await;

    let (policy, took_policy) = policy_answer(&t).await;
    assert_eq!(policy.as_deref(), Some("DUNNO"));
    assert!(
        took_policy < ANSWER_WITHIN,
        "policy answered after {took_policy:?}"
    );
    let (milter, took_milter) = milter_answer(&t).await;
    assert!(matches!(milter, Reply::Continue), "{milter:?}");
    assert!(
        took_milter < ANSWER_WITHIN,
        "milter answered after {took_milter:?}"
    );
    let (auth, took_auth) = auth_policy_answer(&t).await;
    assert_eq!(auth, "HTTP/1.1 200 OK");
    assert!(
        took_auth < ANSWER_WITHIN,
        "auth policy answered after {took_auth:?}"
    );
    assert_eq!(t.daemon.connection_cap(FrontEnd::Policy).refused(), 0);
    eprintln!("with 2000 silent policy connections: policy {took_policy:?}, milter {took_milter:?}, auth policy {took_auth:?}");
    drop(silent);
}

#[tokio::test]
async fn a_full_cap_closes_new_connections_and_spares_the_other_front_ends() {
    let t = start("policy_max_connections: 5\nmilter_max_connections: 1\n").await;
    let _silent = silent_connections(t.port(), 5).await;
    wait_for(Duration::from_secs(5), "5 policy connections", || async {
        in_use(&t, FrontEnd::Policy) == 5
    })
    .await;

    // Over the cap: accepted, then closed at once — not left waiting in the backlog.
    let started = Instant::now();
    let mut over = silent_connections(t.port(), 3).await;
    for s in &mut over {
        assert!(
            closes_within(s, ANSWER_WITHIN).await,
            "over-cap connection left open"
        );
    }
    assert!(started.elapsed() < ANSWER_WITHIN * 2);
    assert_eq!(t.daemon.connection_cap(FrontEnd::Policy).refused(), 3);
    let (answer, _) = policy_answer(&t).await;
    assert_eq!(answer, None, "a sixth policy connection was served");

    // The policy cap is full; the milter and auth policy front ends do not notice.
    let (milter, took) = milter_answer(&t).await;
    assert!(matches!(milter, Reply::Continue), "{milter:?}");
    assert!(took < ANSWER_WITHIN, "milter answered after {took:?}");
    let (auth, took) = auth_policy_answer(&t).await;
    assert_eq!(auth, "HTTP/1.1 200 OK");
    assert!(took < ANSWER_WITHIN, "auth policy answered after {took:?}");

    // The milter's own cap (1): the connection above has ended, so one more fits, not two.
    wait_for(
        Duration::from_secs(5),
        "milter connection ended",
        || async { in_use(&t, FrontEnd::Milter) == 0 },
    )
    .await;
    let mut first = MilterClient::connect(t.milter_port()).await;
    first.open().await;
    let mut second = TcpStream::connect(("127.0.0.1", t.milter_port()))
        .await
        .unwrap();
    assert!(closes_within(&mut second, ANSWER_WITHIN).await);
    assert_eq!(t.daemon.connection_cap(FrontEnd::Milter).refused(), 1);

    // A connection that ends gives its slot back.
    drop(_silent);
    wait_for(
        Duration::from_secs(5),
        "policy slots given back",
        || async { in_use(&t, FrontEnd::Policy) == 0 },
    )
    .await;
    let (answer, _) = policy_answer(&t).await;
    assert_eq!(answer.as_deref(), Some("DUNNO"));
}

#[tokio::test]
async fn the_old_shared_max_connections_still_caps_all_front_ends_together() {
    let t = start("max_connections: 3\n").await;
    let _policy = silent_connections(t.port(), 2).await;
    let mut milter = MilterClient::connect(t.milter_port()).await;
    milter.open().await;
    wait_for(Duration::from_secs(5), "3 connections", || async {
        in_use(&t, FrontEnd::Policy) == 2 && in_use(&t, FrontEnd::Milter) == 1
    })
    .await;
    let mut over = TcpStream::connect(("127.0.0.1", t.auth_policy_port()))
        .await
        .unwrap();
    assert!(closes_within(&mut over, ANSWER_WITHIN).await);
}

#[tokio::test]
async fn policy_read_timeout_closes_stalled_and_slow_requests() {
    let t = start("policy_read_timeout: 300ms\npolicy_idle_timeout: 30s\n").await;
    let txn = Txn {
        login: "alice@contoso.com",
        client_port: 40002,
        instance: "slow.1",
    };
    let request = txn.request("RCPT");

    // A new connection that never sends its first request.
    let mut silent = TcpStream::connect(("127.0.0.1", t.port())).await.unwrap();
    // Half a request, then nothing.
    let mut stalled = TcpStream::connect(("127.0.0.1", t.port())).await.unwrap();
    stalled
        .write_all(&request.as_bytes()[..request.len() / 2])
        .await
        .unwrap();
    assert!(closes_within(&mut silent, CLOSE_WAIT).await, "silent");
    assert!(closes_within(&mut stalled, CLOSE_WAIT).await, "stalled");

    // Slowloris: a byte every 50 ms would take half a minute for the whole request; the
    // connection is closed long before.
    let mut slow = TcpStream::connect(("127.0.0.1", t.port())).await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    for byte in request.as_bytes() {
        if slow.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        // Paces the client (one byte per 50 ms) and notices the close.
        match tokio::time::timeout(Duration::from_millis(50), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => panic!("unexpected reply {:?}", &buf[..n]),
            Err(_) => {}
        }
        assert!(started.elapsed() < CLOSE_WAIT, "slow request still open");
    }
    assert!(closed, "a slow request was read to its end");

    // A request in one write is answered, and the connection stays for the next one.
    let mut c = t.client().await;
    assert_eq!(
        c.raw(request.as_bytes()).await.as_deref(),
        Some("DUNNO"),
        "a whole request"
    );
    assert_eq!(t.in_use("alice@contoso.com").await, 1);
}

#[tokio::test]
async fn policy_idle_timeout_closes_the_connection_and_gives_its_lease_back() {
    let t = start("policy_idle_timeout: 1s\n").await;
    let txn = Txn {
        login: "alice@contoso.com",
        client_port: 40003,
        instance: "idle.1",
    };
    let mut c = t.client().await;
    // Requests closer together than the idle timeout keep the connection, for longer than
    // the timeout in all.
    let started = Instant::now();
    let mut asked = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            c.raw(txn.request("RCPT").as_bytes()).await.as_deref(),
            Some("DUNNO")
        );
        asked += 1;
        // The client's pace: a request every 300 ms.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(asked >= 5);
    assert_eq!(t.in_use("alice@contoso.com").await, 1);

    // Then silence: closed after the idle timeout, lease given back (lease_idle_timeout is
    // still 300 s).
    let closed = tokio::time::timeout(CLOSE_WAIT, c.closed()).await;
    assert_eq!(closed.ok(), Some(true), "idle connection left open");
    wait_for(Duration::from_secs(2), "lease given back", || async {
        t.in_use("alice@contoso.com").await == 0
    })
    .await;
    wait_for(Duration::from_secs(2), "slot given back", || async {
        in_use(&t, FrontEnd::Policy) == 0
    })
    .await;
}
