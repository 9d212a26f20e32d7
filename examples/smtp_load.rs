//! SMTP submission load client for the end-to-end benchmark (`tests/e2e/bench.sh`): whole
//! sessions (EHLO, AUTH PLAIN, MAIL, 2 RCPT, 10 KiB DATA, QUIT) against several Postfix
//! submission services in the same run, taking turns, and the ratios between them.
//!
//! Each `--target NAME=PORT` is a submission service on 127.0.0.1; a target given
//! `--spool NAME=DIR` has a submitgate whose Sent Items spool is watched: after each of its
//! load phases the client waits until the spool's queue is empty again and reports how long
//! that took (the delivery workers keep up when it is back to 0 within 5 s). The targets run
//! one after the other in `--rounds` rounds (so that load from elsewhere on the machine hits
//! all alike), each round `--seconds` long per target, at every `--connections` count; the
//! summary shows the best round of each target and its ratio to the first target (and to
//! `--floor NAME`).
//!
//! A target given `--pid NAME=PID` has its milter's process watched as well: the CPU time it
//! used (user + system, `/proc/PID/stat`, its exited threads included) from the start of each
//! phase until its spool was empty again, per session. Unlike sessions/s, this hardly moves
//! with the rest of the machine's load, so it compares two builds, or a milter with the floor,
//! more finely than the throughput ratio does.
//!
//! Sessions log in as `user0..user{N-1}@DOMAIN` (`--users N --domain D --password P`):
//! connection `c` uses `user(c + connections × k)` for its `k`-th session, so that no two
//! connections use one mailbox at the same time.
//!
//! ```text
//! cargo run --release --example smtp_load -- --target postfix=10587 --target sg=10589 \
//!     --spool sg=/tmp/sg/spool --floor postfix --connections 10 --seconds 10 --rounds 3 \
//!     --password secret
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use submitgate::sent_items::spool::Spool;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Every SMTP reply must come within this long, or the session counts as failed.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// The spool must be empty again within this long after a phase (the issue's bound).
const DRAIN_TARGET: Duration = Duration::from_secs(5);
/// How long the client waits for a spool to drain before giving up on it.
const DRAIN_GIVE_UP: Duration = Duration::from_secs(60);
/// After a phase of a target with a watched process but no watched spool, wait this long before
/// reading its CPU time.
const CPU_SETTLE: Duration = Duration::from_millis(500);
/// The message body's size, headers included.
const MESSAGE_BYTES: usize = 10 * 1024;

struct Target {
    name: String,
    port: u16,
    spool: Option<PathBuf>,
    /// The milter's process, whose CPU time is reported per session.
    pid: Option<u32>,
}

struct Args {
    targets: Vec<Target>,
    connections: Vec<usize>,
    seconds: f64,
    rounds: u32,
    warmup: f64,
    users: usize,
    domain: String,
    password: String,
    floor: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: smtp_load --target NAME=PORT... [--spool NAME=DIR]... [--pid NAME=PID]... [--floor NAME] \
         [--connections N[,N...]] [--seconds S] [--rounds R] [--warmup S] [--users N] \
         [--domain D] --password P"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut a = Args {
        targets: Vec::new(),
        connections: vec![10],
        seconds: 10.0,
        rounds: 3,
        warmup: 2.0,
        users: 1000,
        domain: "contoso.com".into(),
        password: String::new(),
        floor: None,
    };
    let mut spools = Vec::new();
    let mut pids = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        let num = |v: &str| v.parse::<f64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--target" => {
                let (name, port) = value.split_once('=').unwrap_or_else(|| usage());
                a.targets.push(Target {
                    name: name.to_string(),
                    port: port.parse().unwrap_or_else(|_| usage()),
                    spool: None,
                    pid: None,
                });
            }
            "--spool" => {
                let (name, dir) = value.split_once('=').unwrap_or_else(|| usage());
                spools.push((name.to_string(), PathBuf::from(dir)));
            }
            "--pid" => {
                let (name, pid) = value.split_once('=').unwrap_or_else(|| usage());
                pids.push((name.to_string(), pid.parse().unwrap_or_else(|_| usage())));
            }
            "--connections" => {
                a.connections = value
                    .split([',', ' '])
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().unwrap_or_else(|_| usage()))
                    .collect()
            }
            "--seconds" => a.seconds = num(&value),
            "--rounds" => a.rounds = num(&value) as u32,
            "--warmup" => a.warmup = num(&value),
            "--users" => a.users = num(&value) as usize,
            "--domain" => a.domain = value,
            "--password" => a.password = value,
            "--floor" => a.floor = Some(value),
            _ => usage(),
        }
    }
    // `--spool` and `--pid` name a target given by `--target`.
    fn named<'a>(targets: &'a mut [Target], name: &str) -> &'a mut Target {
        targets
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| usage())
    }
    for (name, dir) in spools {
        named(&mut a.targets, &name).spool = Some(dir);
    }
    for (name, pid) in pids {
        named(&mut a.targets, &name).pid = Some(pid);
    }
    if a.targets.is_empty() || a.password.is_empty() || a.users == 0 {
        usage();
    }
    a
}

/// Standard base64 with padding (AUTH PLAIN's token).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One SMTP connection: reads replies (multi-line ones whole), sends commands.
struct Smtp {
    stream: BufReader<TcpStream>,
    line: String,
}

impl Smtp {
    async fn reply(&mut self) -> Result<u16, String> {
        loop {
            self.line.clear();
            let n = tokio::time::timeout(REPLY_TIMEOUT, self.stream.read_line(&mut self.line))
                .await
                .map_err(|_| "no reply within 30 s".to_string())?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed".into());
            }
            let bytes = self.line.as_bytes();
            if bytes.len() < 4 {
                return Err(format!("short reply line {:?}", self.line));
            }
            if bytes[3] == b'-' {
                continue;
            }
            return self.line[..3]
                .parse()
                .map_err(|_| format!("bad reply {:?}", self.line));
        }
    }

    async fn expect(&mut self, code: u16, what: &str) -> Result<(), String> {
        let got = self.reply().await?;
        if got == code {
            Ok(())
        } else {
            Err(format!("{what}: {}", self.line.trim_end()))
        }
    }

    async fn command(&mut self, text: &[u8], code: u16, what: &str) -> Result<(), String> {
        self.stream
            .get_mut()
            .write_all(text)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        self.expect(code, what).await
    }
}

/// A 10 KiB message from `login`, CRLF line ends, dot-stuffing not needed (no line starts
/// with a dot), ended by `.\r\n`.
fn message(login: &str, n: u64) -> Vec<u8> {
    let mut m = format!(
        "From: {login}\r\nTo: carol@example.org, dave@example.net\r\nSubject: bench {n}\r\n\
Message-ID: <bench.{n}@client.bench>\r\nDate: Fri, 27 Nov 2026 13:45:42 +0000\r\n\r\n"
    )
    .into_bytes();
    let line = b"All work and no play makes Jack a dull boy. 0123456789 abcdefghij\r\n";
    while m.len() + line.len() <= MESSAGE_BYTES {
        m.extend_from_slice(line);
    }
    m.extend_from_slice(b".\r\n");
    m
}

/// One whole session.
async fn session(port: u16, login: &str, password: &str, n: u64) -> Result<(), String> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut s = Smtp {
        stream: BufReader::new(stream),
        line: String::new(),
    };
    s.expect(220, "greeting").await?;
    s.command(b"EHLO client.bench\r\n", 250, "EHLO").await?;
    let token = base64(format!("\0{login}\0{password}").as_bytes());
    s.command(format!("AUTH PLAIN {token}\r\n").as_bytes(), 235, "AUTH")
        .await?;
    s.command(format!("MAIL FROM:<{login}>\r\n").as_bytes(), 250, "MAIL")
        .await?;
    s.command(b"RCPT TO:<carol@example.org>\r\n", 250, "RCPT")
        .await?;
    s.command(b"RCPT TO:<dave@example.net>\r\n", 250, "RCPT")
        .await?;
    s.command(b"DATA\r\n", 354, "DATA").await?;
    s.command(&message(login, n), 250, "end of data").await?;
    s.command(b"QUIT\r\n", 221, "QUIT").await?;
    Ok(())
}

/// What one phase (one target, one connection count, one round) measured.
#[derive(Clone, Default)]
struct Outcome {
    sessions: usize,
    failures: usize,
    first_error: Option<String>,
    elapsed: Duration,
    /// Session times, sorted.
    latencies: Vec<Duration>,
    /// How long the spool took to be empty after the phase (`None`: not watched).
    drain: Option<Duration>,
    /// CPU time the target's milter used from the phase's start until its spool was empty
    /// (`None`: no `--pid`, or its `/proc` entry unreadable).
    cpu: Option<Duration>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.sessions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The milter's CPU time per session, in milliseconds.
    fn cpu_ms(&self) -> Option<f64> {
        let cpu = self.cpu?;
        (self.sessions > 0).then(|| ms(cpu) / self.sessions as f64)
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
}

async fn phase(a: &Args, port: u16, connections: usize, length: Duration, base: u64) -> Outcome {
    let start = Instant::now();
    let deadline = start + length;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let users = a.users;
        let domain = a.domain.clone();
        let password = a.password.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut failures, mut first_error) = (0, None);
            let mut k = 0;
            while Instant::now() < deadline {
                let user = (c + connections * k) % users;
                let login = format!("user{user}@{domain}");
                let t = Instant::now();
                match session(port, &login, &password, base + (c * 1_000_000 + k) as u64).await {
                    Ok(()) => latencies.push(t.elapsed()),
                    Err(e) => {
                        failures += 1;
                        first_error.get_or_insert(format!("{login}: {e}"));
                    }
                }
                k += 1;
            }
            (latencies, failures, first_error)
        }));
    }
    let mut out = Outcome::default();
    for t in tasks {
        if let Ok((l, f, e)) = t.await {
            out.latencies.extend(l);
            out.failures += f;
            if out.first_error.is_none() {
                out.first_error = e;
            }
        }
    }
    out.elapsed = start.elapsed();
    out.latencies.sort();
    out.sessions = out.latencies.len();
    out
}

/// Entries waiting in the spool's queue.
async fn depth(spool: &Spool) -> usize {
    spool.pending().await.map(|p| p.len()).unwrap_or(usize::MAX)
}

/// Waits until the spool's queue is empty; how long that took (`None`: it did not within
/// [`DRAIN_GIVE_UP`]).
async fn drain(spool: &Spool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < DRAIN_GIVE_UP {
        if depth(spool).await == 0 {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// User + system CPU time of process `pid`, its exited threads included (`/proc/PID/stat`
/// fields 14 and 15, in clock ticks of 1/100 s on Linux).
fn cpu_time(pid: u32) -> Option<Duration> {
    const TICKS_PER_SECOND: u64 = 100;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / TICKS_PER_SECOND,
    ))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn line(name: &str, o: &Outcome) -> String {
    let drain = match (&o.drain, o.sessions) {
        (_, 0) => String::new(),
        (Some(d), _) => format!("  spool empty after {:.2} s", d.as_secs_f64()),
        (None, _) => String::new(),
    };
    let cpu = match o.cpu_ms() {
        Some(c) => format!("  cpu {c:.2} ms/session"),
        None => String::new(),
    };
    let failed = match &o.first_error {
        Some(e) => format!("  {} FAILED (first: {e})", o.failures),
        None => String::new(),
    };
    format!(
        "{name:<14} {:>7.0} sessions/s  p50 {:>6.1} ms  p99 {:>6.1} ms  ({} sessions){cpu}{drain}{failed}",
        o.rate(),
        ms(o.percentile(0.5)),
        ms(o.percentile(0.99)),
        o.sessions
    )
}

fn main() -> anyhow::Result<()> {
    let a = parse_args();
    // One thread: the client should cost the machine as little as it can; Postfix, the milters
    // and Dovecot share the same cores.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut spools = HashMap::new();
        for t in &a.targets {
            if let Some(dir) = &t.spool {
                let spool = Spool::attach(dir)
                    .map_err(|e| anyhow::anyhow!("spool {}: {e}", dir.display()))?;
                spools.insert(t.name.clone(), spool);
            }
        }
        let slice = Duration::from_secs_f64(a.seconds);
        println!(
            "smtp_load: {} target(s), {:?} connections, {} s per target and round, {} rounds, \
             {} users, 10 KiB messages to 2 recipients; load average {}",
            a.targets.len(),
            a.connections,
            a.seconds,
            a.rounds,
            a.users,
            loadavg()
        );
        let mut failed = false;
        let mut n = 0u64;
        for &connections in &a.connections {
            // Postfix starts its smtpd processes on demand: warm every target up first.
            for t in &a.targets {
                n += 1 << 40;
                let w = phase(
                    &a,
                    t.port,
                    connections,
                    Duration::from_secs_f64(a.warmup),
                    n,
                )
                .await;
                if let Some(spool) = spools.get(&t.name) {
                    drain(spool).await;
                }
                if w.sessions == 0 {
                    anyhow::bail!(
                        "target {} (port {}): no session succeeded in the warm-up ({})",
                        t.name,
                        t.port,
                        w.first_error.unwrap_or_default()
                    );
                }
            }
            let mut results: Vec<Vec<Outcome>> = vec![Vec::new(); a.targets.len()];
            for round in 1..=a.rounds {
                println!(
                    "-- {connections} connections, round {round}/{}, load average {}",
                    a.rounds,
                    loadavg()
                );
                for (i, t) in a.targets.iter().enumerate() {
                    n += 1 << 40;
                    let cpu_before = t.pid.and_then(cpu_time);
                    let mut o = phase(&a, t.port, connections, slice, n).await;
                    if let Some(spool) = spools.get(&t.name) {
                        o.drain = drain(spool).await;
                        if o.drain.map_or(true, |d| d > DRAIN_TARGET) {
                            failed = true;
                        }
                    }
                    if t.pid.is_some() && t.spool.is_none() {
                        // Work the milter finishes after the replies (a delivery from an
                        // unwatched spool) counts as well.
                        tokio::time::sleep(CPU_SETTLE).await;
                    }
                    let cpu_after = t.pid.and_then(cpu_time);
                    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
                        o.cpu = Some(after.saturating_sub(before));
                    }
                    failed |= o.failures > 0;
                    println!("{}", line(&t.name, &o));
                    results[i].push(o);
                }
            }
            summary(&a, connections, &results);
        }
        println!("load average at the end {}", loadavg());
        if failed {
            println!("smtp_load: some sessions failed, or a spool was not empty within 5 s");
            std::process::exit(1);
        }
        Ok(())
    })
}

/// The best round of each target (the one least disturbed by the rest of the machine), and
/// the ratios of the best rounds, to the first target and to the floor.
fn summary(a: &Args, connections: usize, results: &[Vec<Outcome>]) {
    let best: Vec<&Outcome> = results
        .iter()
        .map(|rounds| {
            rounds
                .iter()
                .max_by(|x, y| x.rate().total_cmp(&y.rate()))
                .unwrap_or_else(|| unreachable!("at least one round"))
        })
        .collect();
    let first = best[0].rate();
    let floor = a
        .floor
        .as_ref()
        .and_then(|f| a.targets.iter().position(|t| &t.name == f))
        .map(|i| (a.targets[i].name.as_str(), best[i].rate()));
    println!(
        "== {connections} connections, best of {} rounds (ratios of the best rounds)",
        a.rounds
    );
    for (i, t) in a.targets.iter().enumerate() {
        let o = best[i];
        let drain = results[i]
            .iter()
            .map(|r| r.drain)
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().max());
        let mut text = format!(
            "{:<14} {:>7.0} sessions/s  p50 {:>6.1} ms  p99 {:>6.1} ms  {:.2} of {}",
            t.name,
            o.rate(),
            ms(o.percentile(0.5)),
            ms(o.percentile(0.99)),
            o.rate() / first,
            a.targets[0].name
        );
        if let Some((name, rate)) = floor {
            if name != t.name && name != a.targets[0].name {
                text.push_str(&format!(", {:.2} of {name}", o.rate() / rate));
            }
        }
        // CPU per session over every round: more sessions, less rounding than the best one.
        let measured = results[i]
            .iter()
            .filter_map(|r| r.cpu.map(|cpu| (cpu, r.sessions)));
        let (cpu, sessions) =
            measured.fold((Duration::ZERO, 0), |(sum, n), (cpu, k)| (sum + cpu, n + k));
        if sessions > 0 {
            text.push_str(&format!(
                "; milter cpu {:.2} ms/session (all rounds)",
                ms(cpu) / sessions as f64
            ));
        }
        if t.spool.is_some() {
            match drain {
                Some(d) => text.push_str(&format!(
                    "; spool empty {:.2} s after the load (worst round)",
                    d.as_secs_f64()
                )),
                None => text.push_str("; spool NOT empty within 60 s"),
            }
        }
        println!("{text}");
    }
}
