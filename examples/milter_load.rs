//! Milter load generator: plays Postfix against submitgate's milter front end and against a
//! continue-only responder, in one run, and reports sessions/s, latency percentiles and the
//! ratio of the two session costs.
//!
//! Each session is a whole submission, as Postfix sends it: negotiate, CONNECT, HELO,
//! authenticated MAIL (`{auth_authen}` macro), two RCPT, DATA, headers, a 10 KiB body in four
//! chunks, end-of-message, QUIT, then the filter's close. Every connection uses its own
//! mailbox, so the session limit never refuses one.
//!
//! All targets run in this process on loopback: submitgate with its spool on (every message
//! fsynced into `--spool-dir`, which should be on a real disk, not tmpfs) and audit logging on;
//! a responder that negotiates the same no-reply flags and answers "continue" (the cost of the
//! conversation itself); and one that answers every event (protocol flags 0). The targets take
//! turns in `--rounds` interleaved slices, so that other load on the machine hits all alike;
//! each round is reported, then all rounds together and the best round of each target (on a
//! shared machine the best round is the one least disturbed by others).
//!
//! ```text
//! cargo run --release --example milter_load -- --connections 10 --seconds 10 --rounds 5
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use submitgate::config::Config;
use submitgate::daemon::Daemon;
use submitgate::endpoint::Endpoint;
use submitgate::milter::codec::{
    Command, MilterCodec, MtaCodec, Reply, SMFIA_INET, SMFIC_CONNECT, SMFIC_DATA, SMFIC_HELO,
    SMFIC_MAIL, SMFIC_RCPT, SMFI_CURR_ACTS, SMFI_CURR_PROT,
};
use submitgate::milter::session::WANTED_PROTOCOL;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

struct Args {
    connections: usize,
    seconds: u64,
    rounds: u32,
    spool_dir: PathBuf,
}

fn usage() -> ! {
    eprintln!("usage: milter_load [--connections N] [--seconds S] [--rounds R] [--spool-dir DIR]");
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut args = Args {
        connections: 10,
        seconds: 10,
        rounds: 5,
        spool_dir: PathBuf::from("target/milter-load"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--connections" => args.connections = value.parse().unwrap_or_else(|_| usage()),
            "--seconds" => args.seconds = value.parse().unwrap_or_else(|_| usage()),
            "--rounds" => args.rounds = value.parse().unwrap_or_else(|_| usage()),
            "--spool-dir" => args.spool_dir = PathBuf::from(value),
            _ => usage(),
        }
    }
    args
}

/// The result of one phase.
struct Outcome {
    sessions: usize,
    failures: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Outcome {
    fn empty() -> Outcome {
        Outcome {
            sessions: 0,
            failures: 0,
            elapsed: Duration::ZERO,
            latencies: Vec::new(),
        }
    }

    fn add(&mut self, other: Outcome) {
        self.sessions += other.sessions;
        self.failures += other.failures;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.latencies.sort();
    }

    fn rate(&self) -> f64 {
        self.sessions as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// One full session; `Ok(true)` when every decision was "continue".
async fn session(port: u16, mailbox: &str, n: u64) -> std::io::Result<bool> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let mut framed = Framed::new(stream, MtaCodec::default());
    let io = |e: submitgate::milter::codec::CodecError| std::io::Error::other(e.to_string());
    framed
        .send(Command::OptNeg {
            version: 6,
            actions: SMFI_CURR_ACTS,
            protocol: SMFI_CURR_PROT,
        })
        .await
        .map_err(io)?;
    let protocol = match framed.next().await {
        Some(Ok(Reply::OptNeg { protocol, .. })) => protocol,
        _ => return Ok(false),
    };
    let queue_id = format!("B{n:09X}");
    let macro_ = |stage: u8, pairs: &[(&str, &str)]| Command::Macro {
        stage,
        macros: pairs.iter().map(|(k, v)| (b(k), b(v))).collect(),
    };
    let sender = format!("<{mailbox}>");
    let chunk = Bytes::from(
        "All work and no play makes Jack a dull boy. 0123456789 abcdefghij\r\n"
            .repeat(40)
            .into_bytes()
            .into_iter()
            .take(2560)
            .collect::<Vec<u8>>(),
    );
    let mut script = vec![
        macro_(SMFIC_CONNECT, &[("j", "mx.bench"), ("{daemon_name}", "mx")]),
        Command::Connect {
            hostname: b("client.bench"),
            family: SMFIA_INET,
            port: Some(40000),
            address: b("127.0.0.1"),
        },
        macro_(SMFIC_HELO, &[("{tls_version}", "TLSv1.3")]),
        Command::Helo(b("client.bench")),
        macro_(
            SMFIC_MAIL,
            &[
                ("{auth_type}", "PLAIN"),
                ("{auth_authen}", mailbox),
                ("{mail_addr}", mailbox),
            ],
        ),
        Command::Mail {
            args: vec![b(&sender), b("size=10752")],
        },
    ];
    for rcpt in ["carol@example.org", "dave@example.net"] {
        script.push(macro_(SMFIC_RCPT, &[("{rcpt_addr}", rcpt)]));
        script.push(Command::Rcpt {
            args: vec![b(&format!("<{rcpt}>"))],
        });
    }
    script.push(macro_(SMFIC_DATA, &[("i", &queue_id)]));
    script.push(Command::Data);
    let message_id = format!(" <{queue_id}@client.bench>");
    for (name, value) in [
        ("Date", " Fri, 27 Nov 2026 13:45:42 +0000"),
        ("From", &format!(" {mailbox}")[..]),
        ("To", " carol@example.org, dave@example.net"),
        ("Subject", " load\n test"),
        ("Message-ID", &message_id[..]),
    ] {
        script.push(Command::Header {
            name: b(name),
            value: b(value),
        });
    }
    script.push(Command::EndOfHeaders);
    for _ in 0..4 {
        script.push(Command::Body(chunk.clone()));
    }
    script.push(Command::EndOfMessage(Bytes::new()));
    let mut ok = true;
    for command in script {
        let wants = command.expects_reply(protocol);
        framed.feed(command).await.map_err(io)?;
        if wants {
            SinkExt::<Command>::flush(&mut framed).await.map_err(io)?;
            match framed.next().await {
                Some(Ok(Reply::Continue)) => {}
                _ => ok = false,
            }
        }
    }
    framed.feed(Command::Abort).await.map_err(io)?;
    framed.send(Command::Quit).await.map_err(io)?;
    // The session ends when the filter has closed (lease released, audit written).
    while let Some(Ok(_)) = framed.next().await {}
    Ok(ok)
}

async fn run_phase(port: u16, connections: usize, length: Duration, tag: &str) -> Outcome {
    let start = Instant::now();
    let deadline = start + length;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let mailbox = format!("user{c}.{tag}@bench.example");
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0;
            let mut n = (c as u64) << 32;
            while Instant::now() < deadline {
                let t = Instant::now();
                n += 1;
                match session(port, &mailbox, n).await {
                    Ok(true) => latencies.push(t.elapsed()),
                    _ => failures += 1,
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for t in tasks {
        if let Ok((l, f)) = t.await {
            latencies.extend(l);
            failures += f;
        }
    }
    let elapsed = start.elapsed();
    latencies.sort();
    Outcome {
        sessions: latencies.len(),
        failures,
        elapsed,
        latencies,
    }
}

/// A milter that negotiates `protocol` and answers "continue" to everything that wants an
/// answer: the cost of the conversation itself.
async fn responder(protocol: u32) -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut framed = Framed::new(stream, MilterCodec::default());
                let mut negotiated = 0;
                while let Some(Ok(command)) = framed.next().await {
                    let reply = match &command {
                        Command::OptNeg {
                            protocol: offered, ..
                        } => {
                            negotiated = offered & protocol;
                            Reply::OptNeg {
                                version: 6,
                                actions: 0,
                                protocol: negotiated,
                            }
                        }
                        Command::Quit => break,
                        _ => Reply::Continue,
                    };
                    if command.expects_reply(negotiated) && framed.send(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(port)
}

fn report(name: &str, o: &Outcome) {
    println!(
        "{name:<34} {:>8.0} sessions/s  p50 {:>7.3} ms  p99 {:>7.3} ms  ({} sessions, {} failed)",
        o.rate(),
        o.percentile(0.50).as_secs_f64() * 1e3,
        o.percentile(0.99).as_secs_f64() * 1e3,
        o.sessions,
        o.failures
    );
}

fn main() -> anyhow::Result<()> {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        std::fs::create_dir_all(&args.spool_dir)?;
        let work = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(&args.spool_dir)?;
        let policies = work.path().join("policies");
        std::fs::create_dir(&policies)?;
        std::fs::write(
            policies.join("bench.yaml"),
            "organization: bench\ndomains: [bench.example]\nmax_concurrent_sessions_per_mailbox: 3\n",
        )?;
        let config_path = work.path().join("submitgate.yaml");
        std::fs::write(
            &config_path,
            format!(
                "milter: [\"inet:127.0.0.1:0\"]\npolicies: {}\naudit: {{ path: {} }}\nsent_items: {{ spool: {} }}\n",
                policies.display(),
                work.path().join("audit.log").display(),
                work.path().join("spool").display()
            ),
        )?;
        let config = Config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let daemon = Daemon::start(config).await?;
        let Some(Endpoint::Inet { port: sg_port, .. }) = daemon.milter_endpoints().first().cloned()
        else {
            anyhow::bail!("no inet milter listener");
        };
        let same_flags = responder(WANTED_PROTOCOL).await?;
        let every_event = responder(0).await?;
        let Args {
            connections,
            seconds,
            rounds,
            ..
        } = args;
        let rounds = rounds.max(1);
        println!(
            "milter_load: {connections} connections, {seconds} s per target in {rounds} interleaved rounds, \
             10 KiB messages in 4 chunks, 2 recipients"
        );
        // Warm-up, not reported.
        run_phase(same_flags, connections, Duration::from_secs(1), "warm").await;
        // The targets take turns, so that load from elsewhere on the machine hits all alike.
        let slice = Duration::from_secs(seconds) / rounds;
        let (mut base, mut all, mut sg) = (Outcome::empty(), Outcome::empty(), Outcome::empty());
        // Sessions/s of each target, per round.
        let mut rates: Vec<[f64; 3]> = Vec::new();
        let before = count_entries(&work.path().join("spool/queue"));
        for round in 0..rounds {
            let b = run_phase(same_flags, connections, slice, &format!("base{round}")).await;
            let a = run_phase(every_event, connections, slice, &format!("all{round}")).await;
            let s = run_phase(sg_port, connections, slice, &format!("sg{round}")).await;
            let rate = [b.rate(), a.rate(), s.rate()];
            println!(
                "round {}: responder {:.0}, every event {:.0}, submitgate {:.0} sessions/s; ratio {:.2}",
                round + 1,
                rate[0],
                rate[1],
                rate[2],
                rate[0] / rate[2]
            );
            rates.push(rate);
            base.add(b);
            all.add(a);
            sg.add(s);
        }
        let committed = count_entries(&work.path().join("spool/queue")) - before;
        report("continue-only responder", &base);
        report("continue-only, replies to every event", &all);
        report("submitgate (spool + fsync, audit)", &sg);
        println!(
            "session cost ratio submitgate / responder: {:.2} (mean), {:.2} (p50), {:.2} (p99)",
            base.rate() / sg.rate(),
            sg.percentile(0.5).as_secs_f64() / base.percentile(0.5).as_secs_f64(),
            sg.percentile(0.99).as_secs_f64() / base.percentile(0.99).as_secs_f64(),
        );
        let best = |i: usize| rates.iter().map(|r| r[i]).fold(0.0, f64::max);
        let mut ratios: Vec<f64> = rates.iter().map(|r| r[0] / r[2]).collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "best of {rounds} rounds: responder {:.0}, every event {:.0}, submitgate {:.0} sessions/s; \
             ratio of the best rounds {:.2}; per-round ratio best {:.2}, median {:.2}",
            best(0),
            best(1),
            best(2),
            best(0) / best(2),
            ratios.first().copied().unwrap_or(0.0),
            ratios.get(ratios.len() / 2).copied().unwrap_or(0.0),
        );
        println!(
            "spool entries committed: {committed} for {} sessions (each commit = fdatasync(file) + \
             its batch's share of one fsync(queue dir))",
            sg.sessions
        );
        daemon.shutdown().await;
        Ok(())
    })
}

fn count_entries(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}
