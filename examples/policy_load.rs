//! Load generator for the policy delegation front end. It drives N connections the way Postfix
//! does (one request at a time per connection; each transaction is RCPT, DATA, END-OF-MESSAGE
//! with Postfix 3.7's full attribute set; many mailboxes) against two servers in the same run:
//! a do-nothing responder that answers every request with DUNNO, and submitgate (policy,
//! limiter and audit log on, to a file). It prints requests/s and latency percentiles of both.
//!
//! ```text
//! cargo run --release --example policy_load -- [--connections 10] [--seconds 10] [--mailboxes 10000] [--rounds 2]
//! cargo run --release --example policy_load -- --target 127.0.0.1:10040   # an already running server
//! cargo run --release --example policy_load -- --redis redis://127.0.0.1:6379/  # also submitgate with the Redis limiter
//! cargo run --release --example policy_load -- --auth-rules  # also submitgate with authentication policies on
//! ```
//!
//! `--auth-rules` (issue 16) adds a third server in the same run: the same policy with Basic
//! authentication off, TLS required and legacy TLS refused for every organization, and the
//! legacy-TLS exception on every tenth mailbox (the overrides side table). Every request then
//! authenticates with XOAUTH2 over TLS 1.3, so both servers answer DUNNO and the difference is
//! the cost of the rules.

use std::time::{Duration, Instant};

use submitgate::config::Config;
use submitgate::daemon::Daemon;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

struct Args {
    connections: usize,
    seconds: u64,
    mailboxes: usize,
    rounds: usize,
    target: Option<String>,
    redis: Option<String>,
    auth_rules: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        connections: 10,
        seconds: 10,
        mailboxes: 10_000,
        rounds: 2,
        target: None,
        redis: None,
        auth_rules: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--auth-rules" {
            a.auth_rules = true;
            continue;
        }
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--connections" => a.connections = val().parse().expect("--connections N"),
            "--seconds" => a.seconds = val().parse().expect("--seconds N"),
            "--mailboxes" => a.mailboxes = val().parse().expect("--mailboxes N"),
            "--rounds" => a.rounds = val().parse().expect("--rounds N"),
            "--target" => a.target = Some(val()),
            "--redis" => a.redis = Some(val()),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// The SASL mechanism of every request: PLAIN, or XOAUTH2 with `--auth-rules` (Basic
/// authentication is off there).
static MECHANISM: std::sync::OnceLock<&str> = std::sync::OnceLock::new();

/// A request exactly as Postfix 3.7 sends it (see tests/fixtures/postfix-3.7).
fn request(state: &str, login: &str, client_port: usize, instance: &str) -> String {
    let mechanism = MECHANISM.get().copied().unwrap_or("PLAIN");
    format!(
        "request=smtpd_access_policy\nprotocol_state={state}\nprotocol_name=ESMTP\n\
client_address=10.1.2.3\nclient_name=client.example\nclient_port={client_port}\n\
reverse_client_name=client.example\nserver_address=127.0.0.1\nserver_port=587\n\
helo_name=client.example\nsender={login}\nrecipient=someone@example.net\nrecipient_count={}\n\
queue_id={}\ninstance={instance}\nsize=10240\netrn_domain=\nstress=\nsasl_method={mechanism}\n\
sasl_username={login}\nsasl_sender=\nccert_subject=\nccert_issuer=\nccert_fingerprint=\n\
ccert_pubkey_fingerprint=\nencryption_protocol=TLSv1.3\nencryption_cipher=TLS_AES_256_GCM_SHA384\n\
encryption_keysize=256\npolicy_context=\n\n",
        if state == "RCPT" { 0 } else { 1 },
        if state == "RCPT" { "" } else { "4ABCDE1234" },
    )
}

/// One Postfix-like connection: transactions back to back until `until`.
async fn drive(addr: String, conn: usize, mailboxes: usize, until: Instant) -> (Vec<u32>, u64) {
    let stream = TcpStream::connect(&addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut stream = BufReader::new(stream);
    let mut latencies = Vec::with_capacity(1 << 20);
    let mut not_dunno = 0u64;
    let mut line = String::new();
    let mut txn = 0usize;
    while Instant::now() < until {
        let mailbox = (conn * 7919 + txn * 104_729) % mailboxes;
        let login = format!("user{mailbox}@org{}.example", mailbox % 100);
        let instance = format!("{conn:x}.{txn:x}");
        for state in ["RCPT", "DATA", "END-OF-MESSAGE"] {
            let req = request(state, &login, 40000 + conn, &instance);
            let t0 = Instant::now();
            stream
                .get_mut()
                .write_all(req.as_bytes())
                .await
                .expect("write");
            line.clear();
            stream.read_line(&mut line).await.expect("read");
            if line != "action=DUNNO\n" {
                not_dunno += 1;
            }
            line.clear();
            stream.read_line(&mut line).await.expect("read");
            latencies.push(t0.elapsed().as_micros() as u32);
        }
        txn += 1;
    }
    (latencies, not_dunno)
}

struct Result {
    /// CPU time of this whole process (load generator and in-process servers) per request, µs:
    /// under a loaded machine a steadier comparison of two servers than requests/s.
    cpu_us: f64,
    rps: f64,
    p50: u32,
    p99: u32,
    p999: u32,
    not_dunno: u64,
}

async fn measure(addr: &str, a: &Args) -> Result {
    let cpu_before = process_cpu();
    let until = Instant::now() + Duration::from_secs(a.seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..a.connections)
        .map(|c| tokio::spawn(drive(addr.to_string(), c, a.mailboxes, until)))
        .collect();
    let mut all = Vec::new();
    let mut not_dunno = 0;
    for t in tasks {
        let (l, n) = t.await.expect("driver");
        all.extend(l);
        not_dunno += n;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Result {
        cpu_us: (process_cpu() - cpu_before).as_secs_f64() * 1e6 / all.len().max(1) as f64,
        rps: all.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        p999: pct(0.999),
        not_dunno,
    }
}

/// User + system CPU time of this process so far, from /proc/self/stat (in USER_HZ ticks, 100
/// per second on Linux).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// The baseline: reads a request up to its empty line, answers DUNNO; nothing else.
async fn dunno_responder() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let mut buf = Vec::with_capacity(1024);
                loop {
                    buf.clear();
                    // Read lines until the empty one.
                    loop {
                        let before = buf.len();
                        match r.read_until(b'\n', &mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if &buf[before..] == b"\n" {
                            break;
                        }
                    }
                    if w.write_all(b"action=DUNNO\n\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// submitgate with 100 organizations holding the mailboxes, audit log to a file; with
/// `auth_rules`, every authentication policy rule on (see the module documentation).
async fn start_submitgate(
    dir: &std::path::Path,
    mailboxes: usize,
    limiter: &str,
    auth_rules: bool,
) -> (Daemon, String) {
    let name = format!("{}{}", limiter.len(), if auth_rules { "-auth" } else { "" });
    let pdir = dir.join(format!("policies-{name}"));
    std::fs::create_dir_all(&pdir).expect("mkdir");
    for org in 0..100 {
        let rules = if auth_rules {
            "allow_basic_auth_smtp: false\nrequire_tls: true\n"
        } else {
            ""
        };
        let mut text = format!(
            "organization: org{org}\ndomains: [org{org}.example]\nmax_concurrent_sessions_per_mailbox: 3\n{rules}mailboxes:\n"
        );
        // Every tenth mailbox has settings of its own, like a real directory.
        for m in (org..mailboxes).step_by(100).filter(|m| m % 10 == 0) {
            let own = if auth_rules {
                ", allow_legacy_tls_clients: true"
            } else {
                ""
            };
            text.push_str(&format!(
                "  user{m}@org{org}.example: {{ max_concurrent_sessions_per_mailbox: 5{own} }}\n"
            ));
        }
        std::fs::write(pdir.join(format!("org{org}.yaml")), text).expect("write policy");
    }
    let cfg = format!(
        "policy: [\"inet:127.0.0.1:0\"]\npolicies: {}\naudit: {{ path: {} }}\nlimiter: {limiter}\n",
        pdir.display(),
        dir.join(format!("audit-{name}.log")).display()
    );
    let path = dir.join(format!("submitgate-{name}.yaml"));
    std::fs::write(&path, cfg).expect("write config");
    let config = Config::load(&path).expect("config");
    let daemon = Daemon::start(config).await.expect("start");
    let addr = match &daemon.policy_endpoints()[0] {
        submitgate::endpoint::Endpoint::Inet { host, port } => format!("{host}:{port}"),
        other => panic!("unexpected {other}"),
    };
    (daemon, addr)
}

fn print(name: &str, r: &Result) {
    println!(
        "{name:<22} {:>9.0} req/s   p50 {:>5} µs   p99 {:>5} µs   p99.9 {:>5} µs   CPU {:.1} µs/req{}",
        r.rps,
        r.p50,
        r.p99,
        r.p999,
        r.cpu_us,
        if r.not_dunno > 0 {
            format!("   ({} non-DUNNO answers)", r.not_dunno)
        } else {
            String::new()
        }
    );
}

fn main() {
    let a = parse_args();
    if a.auth_rules {
        let _ = MECHANISM.set("XOAUTH2");
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        println!(
            "{} connections, {} s per measurement, {} mailboxes, {} round(s)",
            a.connections, a.seconds, a.mailboxes, a.rounds
        );
        if let Some(target) = &a.target {
            print(target, &measure(target, &a).await);
            return;
        }
        let dir = tempfile_dir();
        let baseline = dunno_responder().await;
        let (daemon, sg) = start_submitgate(&dir, a.mailboxes, "{ backend: memory }", false).await;
        let redis = match &a.redis {
            Some(url) => {
                let limiter =
                    format!("{{ backend: redis, url: \"{url}\", key_prefix: \"bench:\" }}");
                Some(start_submitgate(&dir, a.mailboxes, &limiter, false).await)
            }
            None => None,
        };
        let auth = if a.auth_rules {
            Some(start_submitgate(&dir, a.mailboxes, "{ backend: memory }", true).await)
        } else {
            None
        };
        let (mut best_base, mut best_sg, mut best_redis, mut best_auth) = (0f64, 0f64, 0f64, 0f64);
        let mut cpu_ratios: Vec<f64> = Vec::new();
        for round in 1..=a.rounds {
            let b = measure(&baseline, &a).await;
            print(&format!("DUNNO responder (r{round})"), &b);
            // With --auth-rules, every other round measures the rules first: whichever server
            // goes second shares the machine with the first one's audit backlog.
            let auth_first = match &auth {
                Some((_, addr)) if round % 2 == 0 => Some(measure(addr, &a).await),
                _ => None,
            };
            let s = measure(&sg, &a).await;
            print(&format!("submitgate (r{round})"), &s);
            if let Some((_, addr)) = &redis {
                let r = measure(addr, &a).await;
                print(&format!("sg+redis (r{round})"), &r);
                best_redis = best_redis.max(r.rps);
            }
            if let Some((_, addr)) = &auth {
                let r = match auth_first {
                    Some(r) => r,
                    None => measure(addr, &a).await,
                };
                print(&format!("sg+auth rules (r{round})"), &r);
                println!(
                    "  round {round}: auth rules on / off: req/s {:.3}, CPU per request {:.3}",
                    r.rps / s.rps,
                    r.cpu_us / s.cpu_us
                );
                best_auth = best_auth.max(r.rps);
                cpu_ratios.push(r.cpu_us / s.cpu_us);
            }
            best_base = best_base.max(b.rps);
            best_sg = best_sg.max(s.rps);
        }
        daemon.context().audit.flush().await;
        let audit_lines: usize = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("audit"))
            .map(|e| {
                std::fs::read_to_string(e.path())
                    .map(|t| t.lines().count())
                    .unwrap_or(0)
            })
            .sum();
        println!(
            "submitgate / responder (best of each): {:.0} %   ({audit_lines} audit lines written)",
            100.0 * best_sg / best_base
        );
        if let Some((d, _)) = redis {
            println!(
                "submitgate with redis / responder (best of each): {:.0} %",
                100.0 * best_redis / best_base
            );
            d.shutdown().await;
        }
        if let Some((d, _)) = auth {
            cpu_ratios.sort_by(f64::total_cmp);
            println!(
                "submitgate with auth rules / without (best round of each): {:.3} req/s; \
                 CPU per request, median of the rounds: {:.3}",
                best_auth / best_sg,
                cpu_ratios[cpu_ratios.len() / 2]
            );
            d.shutdown().await;
        }
        daemon.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("policy_load.{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
