//! Milter load generator: plays Postfix against submitgate's milter front end and against a
//! continue-only responder, in one run, and reports sessions/s, latency percentiles and the
//! ratio of the two.
//!
//! Each session is a whole submission, as Postfix sends it: negotiate, CONNECT, HELO,
//! authenticated MAIL (`{auth_authen}` macro), two RCPT, DATA, headers, a 10 KiB body in four
//! chunks, end-of-message, QUIT, then the filter's close. Every connection uses its own
//! mailbox, so the session limit never refuses one.
//!
//! Every target is a process of its own on loopback, started by re-executing this example
//! (`examples/common/child.rs`), with its own tokio runtime, as the real daemon has:
//! submitgate (`--serve CONFIG`) with its spool on (every message made durable in
//! `--spool-dir`, which should be on a real disk, not tmpfs) and audit logging on; the floor, a
//! responder that negotiates the same no-reply flags as submitgate and so answers only MAIL and
//! end-of-message, with `TCP_QUICKACK` re-armed after each read; and a responder that answers
//! every event (protocol flags 0). The targets take turns in `--rounds` interleaved slices, so
//! that other load on the machine hits all alike; each round is reported, then all rounds
//! together and the best round of each target (on a shared machine the best round is the one
//! least disturbed by others).
//!
//! ```text
//! cargo run --release --example milter_load -- --connections 10 --seconds 10 --rounds 5
//! ```
//!
//! The floor alone, as a milter for Postfix (`tests/e2e/bench.sh` uses it): `milter_load
//! --responder same --listen 127.0.0.1:10045` (`same`: submitgate's flags; `all`: flags 0).

#[path = "common/child.rs"]
mod child;

#[path = "common/alloc.rs"]
mod alloc;

/// The allocator the `submitgate` binary uses (src/main.rs), or another one named by `ALLOC=`
/// (glibc, mimalloc, jemalloc), in every process of the run.
#[global_allocator]
static ALLOCATOR: alloc::Switch = alloc::Switch::new();

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use submitgate::milter::codec::{
    Command, MilterCodec, MtaCodec, Reply, SMFIA_INET, SMFIC_CONNECT, SMFIC_DATA, SMFIC_HELO,
    SMFIC_MAIL, SMFIC_RCPT, SMFI_CURR_ACTS, SMFI_CURR_PROT,
};
use submitgate::milter::session::WANTED_PROTOCOL;
use submitgate::sent_items::spool::Spool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, Encoder, Framed};

/// What this process is: the load generator, or one of its targets.
enum Mode {
    Load(Args),
    /// `--serve CONFIG`: submitgate.
    Serve(PathBuf),
    /// `--responder same|all|FLAGS [--listen ADDR]`: a continue-only milter.
    Responder {
        protocol: u32,
        listen: String,
        until_stdin_closes: bool,
    },
}

struct Args {
    connections: usize,
    seconds: u64,
    rounds: u32,
    spool_dir: PathBuf,
}

fn usage() -> ! {
    eprintln!(
        "usage: milter_load [--connections N] [--seconds S] [--rounds R] [--spool-dir DIR]\n       \
         milter_load --responder same|all|FLAGS [--listen HOST:PORT]"
    );
    std::process::exit(2);
}

fn parse_args() -> Mode {
    let mut args = Args {
        connections: 10,
        seconds: 10,
        rounds: 5,
        spool_dir: PathBuf::from("target/milter-load"),
    };
    let (mut serve, mut responder, mut listen) = (None, None, "127.0.0.1:0".to_string());
    let mut until_stdin_closes = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--until-stdin-closes" {
            until_stdin_closes = true;
            continue;
        }
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--connections" => args.connections = value.parse().unwrap_or_else(|_| usage()),
            "--seconds" => args.seconds = value.parse().unwrap_or_else(|_| usage()),
            "--rounds" => args.rounds = value.parse().unwrap_or_else(|_| usage()),
            "--spool-dir" => args.spool_dir = PathBuf::from(value),
            "--serve" => serve = Some(PathBuf::from(value)),
            "--responder" => {
                responder = Some(match value.as_str() {
                    "same" => WANTED_PROTOCOL,
                    "all" => 0,
                    n => n.parse().unwrap_or_else(|_| usage()),
                })
            }
            "--listen" => listen = value,
            _ => usage(),
        }
    }
    match (serve, responder) {
        (Some(config), None) => Mode::Serve(config),
        (None, Some(protocol)) => Mode::Responder {
            protocol,
            listen,
            until_stdin_closes,
        },
        (None, None) => Mode::Load(args),
        _ => usage(),
    }
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
/// answer (with submitgate's flags: only MAIL and end-of-message), as its own process: the cost
/// of the conversation itself. `TCP_QUICKACK` is set again after every read (Linux clears it)
/// and `TCP_NODELAY` once, so that Postfix's small packets are acknowledged at once.
fn run_responder(listen: &str, protocol: u32, until_stdin_closes: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        child::announce(listener.local_addr()?.port());
        let accept = async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(respond(stream, protocol));
            }
        };
        if until_stdin_closes {
            tokio::select! {
                _ = accept => {}
                _ = child::stdin_closed() => {}
            }
        } else {
            accept.await;
        }
        Ok(())
    })
}

/// One responder connection: every command of a read is handled, their replies go out in one
/// write.
async fn respond(mut stream: TcpStream, protocol: u32) {
    let _ = stream.set_nodelay(true);
    let mut codec = MilterCodec::default();
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = BytesMut::with_capacity(256);
    let mut negotiated = 0;
    loop {
        match stream.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let _ = stream.set_quickack(true);
        loop {
            let command = match codec.decode(&mut input) {
                Ok(Some(command)) => command,
                Ok(None) => break,
                Err(_) => return,
            };
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
                Command::Quit => return,
                _ => Reply::Continue,
            };
            if command.expects_reply(negotiated) && codec.encode(reply, &mut output).is_err() {
                return;
            }
        }
        if !output.is_empty() {
            if stream.write_all(&output).await.is_err() {
                return;
            }
            output.clear();
        }
    }
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
    alloc::init();
    let args = match parse_args() {
        Mode::Load(args) => args,
        Mode::Serve(config) => return child::serve_daemon(&config),
        Mode::Responder {
            protocol,
            listen,
            until_stdin_closes,
        } => return run_responder(&listen, protocol, until_stdin_closes),
    };
    std::fs::create_dir_all(&args.spool_dir)?;
    // Absolute: the configuration's paths must not depend on where it is read from.
    let spool_dir = std::fs::canonicalize(&args.spool_dir)?;
    let work = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&spool_dir)?;
    let policies = work.path().join("policies");
    std::fs::create_dir(&policies)?;
    std::fs::write(
        policies.join("bench.yaml"),
        // Sending limits on (judged and counted), at values this load never reaches: Exchange's
        // 30 messages a minute per mailbox would defer most of it.
        "organization: bench\ndomains: [bench.example]\nmax_concurrent_sessions_per_mailbox: 3\n\
         sending_limits: { messages_per_minute: 100000, recipients_per_day: 100000000 }\n",
    )?;
    let config_path = work.path().join("submitgate.yaml");
    let spool_path = work.path().join("spool");
    std::fs::write(
        &config_path,
        format!(
            "milter: [\"inet:127.0.0.1:0\"]\npolicies: {}\naudit: {{ path: {} }}\nsent_items: {{ spool: {} }}\n",
            policies.display(),
            work.path().join("audit.log").display(),
            spool_path.display()
        ),
    )?;
    let config = config_path.to_string_lossy().into_owned();
    let sg = child::spawn(&["--serve", &config, "--until-stdin-closes"])?;
    let same = child::spawn(&["--responder", "same", "--until-stdin-closes"])?;
    let every = child::spawn(&["--responder", "all", "--until-stdin-closes"])?;
    let spool = Spool::attach(&spool_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (sg_port, same_flags, every_event) = (sg.port, same.port, every.port);
        let Args {
            connections,
            seconds,
            rounds,
            ..
        } = args;
        let rounds = rounds.max(1);
        println!(
            "milter_load: {connections} connections, {seconds} s per target in {rounds} interleaved rounds, \
             10 KiB messages in 4 chunks, 2 recipients; each target its own process \
             (submitgate pid {}); load average {}",
            sg.id(),
            loadavg()
        );
        // Warm-up, not reported.
        run_phase(same_flags, connections, Duration::from_secs(1), "warm").await;
        run_phase(sg_port, connections, Duration::from_secs(1), "warm").await;
        // The targets take turns, so that load from elsewhere on the machine hits all alike.
        let slice = Duration::from_secs(seconds) / rounds;
        let (mut base, mut all, mut sgo) = (Outcome::empty(), Outcome::empty(), Outcome::empty());
        // Sessions/s of each target, per round.
        let mut rates: Vec<[f64; 3]> = Vec::new();
        let before = pending(&spool).await;
        for round in 0..rounds {
            let b = run_phase(same_flags, connections, slice, &format!("base{round}")).await;
            let a = run_phase(every_event, connections, slice, &format!("all{round}")).await;
            let s = run_phase(sg_port, connections, slice, &format!("sg{round}")).await;
            let rate = [b.rate(), a.rate(), s.rate()];
            println!(
                "round {}: responder {:.0}, every event {:.0}, submitgate {:.0} sessions/s; \
                 submitgate / responder {:.2}",
                round + 1,
                rate[0],
                rate[1],
                rate[2],
                rate[2] / rate[0]
            );
            rates.push(rate);
            base.add(b);
            all.add(a);
            sgo.add(s);
        }
        let committed = pending(&spool).await.saturating_sub(before);
        report("responder, same flags (floor)", &base);
        report("responder, replies to every event", &all);
        report("submitgate (spool, audit)", &sgo);
        let best = |i: usize| rates.iter().map(|r| r[i]).fold(0.0, f64::max);
        let mut ratios: Vec<f64> = rates.iter().map(|r| r[2] / r[0]).collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "best of {rounds} rounds: responder {:.0}, every event {:.0}, submitgate {:.0} sessions/s; \
             submitgate / responder: {:.2} (best rounds), per round median {:.2}, best {:.2}; \
             p50 {:.2}x, p99 {:.2}x the floor's (all rounds)",
            best(0),
            best(1),
            best(2),
            best(2) / best(0),
            ratios.get(ratios.len() / 2).copied().unwrap_or(0.0),
            ratios.last().copied().unwrap_or(0.0),
            sgo.percentile(0.5).as_secs_f64() / base.percentile(0.5).as_secs_f64(),
            sgo.percentile(0.99).as_secs_f64() / base.percentile(0.99).as_secs_f64(),
        );
        println!(
            "spool entries committed: {committed} for {} sessions; load average {}",
            sgo.sessions,
            loadavg()
        );
        Ok(())
    })
}

/// Entries waiting in the spool (no store is configured: every committed copy stays).
async fn pending(spool: &Spool) -> usize {
    spool.pending().await.map(|p| p.len()).unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
