//! Load generator for the policy delegation front end. It drives N connections the way Postfix
//! does (one request at a time per connection; each transaction is RCPT, DATA, END-OF-MESSAGE
//! with Postfix 3.7's full attribute set; many mailboxes) against two servers in the same run:
//! a do-nothing responder that answers every request with DUNNO, and submitgate (policy,
//! limiter and audit log on, to a file). It prints requests/s and latency percentiles of both.
//! Each server is a process of its own with its own tokio runtime, as the real daemon is: the
//! example re-executes itself with `--responder` or `--serve CONFIG` (examples/common/child.rs).
//!
//! ```text
//! cargo run --release --example policy_load -- [--connections 10] [--seconds 10] [--mailboxes 10000] [--rounds 2]
//! cargo run --release --example policy_load -- --target 127.0.0.1:10040   # an already running server
//! cargo run --release --example policy_load -- --redis redis://127.0.0.1:6379/  # also submitgate with the Redis limiter
//! cargo run --release --example policy_load -- --compare-limits   # also submitgate with every sending limit off
//! cargo run --release --example policy_load -- --auth-rules  # also submitgate with authentication policies on
//! ```
//!
//! submitgate runs with every sending limit and outbound spam threshold set (to values this
//! load never reaches: at tens of thousands of transactions a second over 10 000 mailboxes,
//! Exchange's 30 messages a minute would defer most of them, and a refused transaction costs
//! less than an accepted one): every transaction is judged and counted. `--compare-limits`
//! adds a submitgate whose policy sets every limit to 0 (nothing judged, nothing counted) to
//! the same run, and prints limits-on / limits-off.
//!
//! `--auth-rules` (issue 16) adds a server in the same run: the same policy with Basic
//! authentication off, TLS required and legacy TLS refused for every organization, and the
//! legacy-TLS exception on every tenth mailbox (the overrides side table). Every request then
//! authenticates with XOAUTH2 over TLS 1.3, so both servers answer DUNNO and the difference is
//! the cost of the rules; the two take turns going first.

#[path = "common/child.rs"]
mod child;

#[path = "common/alloc.rs"]
mod alloc;

/// The allocator the `submitgate` binary uses (src/main.rs), or another one named by `ALLOC=`
/// (glibc, mimalloc, jemalloc), in every process of the run.
#[global_allocator]
static ALLOCATOR: alloc::Switch = alloc::Switch::new();

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

struct Args {
    connections: usize,
    seconds: u64,
    mailboxes: usize,
    rounds: usize,
    target: Option<String>,
    redis: Option<String>,
    compare_limits: bool,
    /// `--auth-rules`: also measure submitgate with every authentication rule on.
    auth_rules: bool,
    /// Child modes: `--responder`, `--serve CONFIG`.
    responder: bool,
    serve: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        connections: 10,
        seconds: 10,
        mailboxes: 10_000,
        rounds: 2,
        target: None,
        redis: None,
        compare_limits: false,
        auth_rules: false,
        responder: false,
        serve: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--responder" => {
                a.responder = true;
                continue;
            }
            "--until-stdin-closes" => continue,
            "--compare-limits" => {
                a.compare_limits = true;
                continue;
            }
            "--auth-rules" => {
                a.auth_rules = true;
                continue;
            }
            _ => {}
        }
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--connections" => a.connections = val().parse().expect("--connections N"),
            "--seconds" => a.seconds = val().parse().expect("--seconds N"),
            "--mailboxes" => a.mailboxes = val().parse().expect("--mailboxes N"),
            "--rounds" => a.rounds = val().parse().expect("--rounds N"),
            "--target" => a.target = Some(val()),
            "--redis" => a.redis = Some(val()),
            "--serve" => a.serve = Some(val()),
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
    /// The server's CPU time per request, µs.
    cpu_us: Option<f64>,
    rps: f64,
    p50: u32,
    p99: u32,
    p999: u32,
    not_dunno: u64,
}

/// Drives `addr` for `--seconds`; `pid` is the server's process, whose CPU time per request
/// is reported.
async fn measure(addr: &str, pid: Option<u32>, a: &Args) -> Result {
    let cpu_before = pid.map(child::cpu_time);
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
    let cpu = pid
        .zip(cpu_before)
        .map(|(pid, before)| (child::cpu_time(pid) - before).as_secs_f64() * 1e6);
    Result {
        cpu_us: cpu.map(|c| c / all.len().max(1) as f64),
        rps: all.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        p999: pct(0.999),
        not_dunno,
    }
}

/// The baseline, as its own process (`--responder`, a multi-threaded runtime like
/// submitgate's): reads a request up to its empty line, answers DUNNO; nothing else.
fn run_responder() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        child::announce(listener.local_addr().expect("addr").port());
        let accept = async move {
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
        };
        tokio::select! {
            _ = accept => {}
            _ = child::stdin_closed() => {}
        }
    });
}

/// Every sending limit and outbound spam threshold on, none reached by this load.
const LIMITS_ON: &str = "sending_limits: { messages_per_minute: 100000, recipients_per_day: 100000000, recipients_per_message: 500 }\n\
outbound_spam: { recipient_limit_external_per_hour: 100000000, recipient_limit_internal_per_hour: 100000000, recipient_limit_per_day: 100000000, action_when_threshold_reached: block_user_for_today }\n";
/// No sending limit of any kind.
const LIMITS_OFF: &str =
    "sending_limits: { messages_per_minute: 0, recipients_per_day: 0, recipients_per_message: 0 }\n";

/// Writes the policy files (100 organizations holding the mailboxes, `limits` their sending
/// limit keys) and a configuration for submitgate with the audit log to a file; returns the
/// configuration's path. With `auth_rules`, every organization has every authentication rule
/// on (see the module documentation).
fn write_config(
    dir: &std::path::Path,
    mailboxes: usize,
    limiter: &str,
    limits: &str,
    auth_rules: bool,
) -> String {
    let name = format!(
        "{}-{}{}",
        limiter.len(),
        limits.len(),
        if auth_rules { "-auth" } else { "" }
    );
    let pdir = dir.join(format!("policies-{name}"));
    std::fs::create_dir_all(&pdir).expect("mkdir");
    let rules = if auth_rules {
        "allow_basic_auth_smtp: false\nrequire_tls: true\n"
    } else {
        ""
    };
    let own = if auth_rules {
        ", allow_legacy_tls_clients: true"
    } else {
        ""
    };
    for org in 0..100 {
        let mut text = format!(
            "organization: org{org}\ndomains: [org{org}.example]\nmax_concurrent_sessions_per_mailbox: 3\n{limits}{rules}mailboxes:\n"
        );
        // Every tenth mailbox has settings of its own, like a real directory.
        for m in (org..mailboxes).step_by(100).filter(|m| m % 10 == 0) {
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
    path.to_string_lossy().into_owned()
}

fn addr(child: &child::Child) -> String {
    format!("127.0.0.1:{}", child.port)
}

fn print(name: &str, r: &Result) {
    println!(
        "{name:<22} {:>9.0} req/s   p50 {:>5} µs   p99 {:>5} µs   p99.9 {:>5} µs{}{}",
        r.rps,
        r.p50,
        r.p99,
        r.p999,
        r.cpu_us
            .map(|c| format!("   server CPU {c:.1} µs/request"))
            .unwrap_or_default(),
        if r.not_dunno > 0 {
            format!("   ({} non-DUNNO answers)", r.not_dunno)
        } else {
            String::new()
        }
    );
}

fn main() {
    alloc::init();
    let a = parse_args();
    if a.responder {
        return run_responder();
    }
    if let Some(config) = &a.serve {
        if let Err(e) = child::serve_daemon(std::path::Path::new(config)) {
            eprintln!("policy_load --serve: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if a.auth_rules {
        let _ = MECHANISM.set("XOAUTH2");
    }
    let dir = tempfile_dir();
    let (baseline, sg, redis) = if a.target.is_none() {
        let baseline =
            child::spawn(&["--responder", "--until-stdin-closes"]).expect("start the responder");
        let config = write_config(&dir, a.mailboxes, "{ backend: memory }", LIMITS_ON, false);
        let sg =
            child::spawn(&["--serve", &config, "--until-stdin-closes"]).expect("start submitgate");
        let redis = a.redis.as_ref().map(|url| {
            let limiter = format!("{{ backend: redis, url: \"{url}\", key_prefix: \"bench:\" }}");
            let config = write_config(&dir, a.mailboxes, &limiter, LIMITS_ON, false);
            child::spawn(&["--serve", &config, "--until-stdin-closes"])
                .expect("start submitgate with redis")
        });
        (Some(baseline), Some(sg), redis)
    } else {
        (None, None, None)
    };
    let unlimited = (a.target.is_none() && a.compare_limits).then(|| {
        let config = write_config(&dir, a.mailboxes, "{ backend: memory }", LIMITS_OFF, false);
        child::spawn(&["--serve", &config, "--until-stdin-closes"])
            .expect("start submitgate without limits")
    });
    let auth = (a.target.is_none() && a.auth_rules).then(|| {
        let config = write_config(&dir, a.mailboxes, "{ backend: memory }", LIMITS_ON, true);
        child::spawn(&["--serve", &config, "--until-stdin-closes"])
            .expect("start submitgate with authentication rules")
    });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        println!(
            "{} connections, {} s per measurement, {} mailboxes, {} round(s); load average {}",
            a.connections,
            a.seconds,
            a.mailboxes,
            a.rounds,
            loadavg()
        );
        if let Some(target) = &a.target {
            print(target, &measure(target, None, &a).await);
            return;
        }
        let (Some(baseline), Some(sg)) = (&baseline, &sg) else {
            return;
        };
        println!(
            "each server is a process of its own: responder pid {}, submitgate pid {}; {}",
            baseline.id(),
            sg.id(),
            alloc::name()
        );
        let (mut best_base, mut best_sg, mut best_redis, mut best_off) = (0f64, 0f64, 0f64, 0f64);
        let mut p99s = Vec::new();
        // --auth-rules: (best req/s, server CPU per request on / off of each round).
        let mut best_auth = 0f64;
        let mut cpu_ratios: Vec<f64> = Vec::new();
        for round in 1..=a.rounds {
            // Every other round measures the rules first, so that neither server always runs
            // right after the other's audit backlog.
            let auth_first = match &auth {
                Some(c) if round % 2 == 0 => Some(measure(&addr(c), Some(c.id()), &a).await),
                _ => None,
            };
            let b = measure(&addr(baseline), Some(baseline.id()), &a).await;
            print(&format!("DUNNO responder (r{round})"), &b);
            let off = match &unlimited {
                Some(u) => {
                    let r = measure(&addr(u), Some(u.id()), &a).await;
                    print(&format!("sg, limits off (r{round})"), &r);
                    best_off = best_off.max(r.rps);
                    Some(r.rps)
                }
                None => None,
            };
            let s = measure(&addr(sg), Some(sg.id()), &a).await;
            print(&format!("submitgate (r{round})"), &s);
            if let Some(off) = off {
                println!("  round {round}: limits on / limits off {:.3}", s.rps / off);
            }
            println!(
                "  round {round}: submitgate / responder {:.2}",
                s.rps / b.rps
            );
            if let Some(c) = &auth {
                let r = match auth_first {
                    Some(r) => r,
                    None => measure(&addr(c), Some(c.id()), &a).await,
                };
                print(&format!("sg+auth rules (r{round})"), &r);
                let cpu = r.cpu_us.zip(s.cpu_us).map(|(on, off)| on / off);
                println!(
                    "  round {round}: auth rules on / off: req/s {:.3}, server CPU per request {}",
                    r.rps / s.rps,
                    cpu.map_or("-".to_string(), |c| format!("{c:.3}"))
                );
                best_auth = best_auth.max(r.rps);
                cpu_ratios.extend(cpu);
            }
            if let Some(r) = &redis {
                let r = measure(&addr(r), Some(r.id()), &a).await;
                print(&format!("sg+redis (r{round})"), &r);
                best_redis = best_redis.max(r.rps);
            }
            best_base = best_base.max(b.rps);
            best_sg = best_sg.max(s.rps);
            p99s.push(s.p99);
        }
        p99s.sort_unstable();
        println!(
            "submitgate / responder (best round of each): {:.2}; submitgate p99 best {} µs, \
             median {} µs over the rounds; load average {}",
            best_sg / best_base,
            p99s[0],
            p99s[p99s.len() / 2],
            loadavg()
        );
        if redis.is_some() {
            println!(
                "submitgate with redis / responder (best round of each): {:.2}",
                best_redis / best_base
            );
        }
        if unlimited.is_some() {
            println!(
                "limits on / limits off (best round of each): {:.3}; load average {}",
                best_sg / best_off,
                loadavg()
            );
        }
        if auth.is_some() {
            cpu_ratios.sort_by(f64::total_cmp);
            println!(
                "submitgate with auth rules / without: req/s (best round of each) {:.3}; server \
                 CPU per request (median of the rounds) {}; load average {}",
                best_auth / best_sg,
                cpu_ratios
                    .get(cpu_ratios.len() / 2)
                    .map_or("-".to_string(), |c| format!("{c:.3}")),
                loadavg()
            );
        }
    });
    // The children shut down (audit flushed) when dropped.
    drop((baseline, sg, redis, unlimited, auth));
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
    if a.target.is_none() {
        println!("{audit_lines} audit lines written");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("policy_load.{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
