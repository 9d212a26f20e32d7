//! The load generators' targets as processes of their own: the example re-executes itself with
//! a target flag (`--serve CONFIG` for submitgate, `--responder ...` for a floor), so that each
//! target has its own process and tokio runtime, as the real daemon does, and none shares the
//! load generator's. A child announces its port on its first stdout line (`port N`) and ends
//! when its standard input closes (the parent ended or dropped it).

#![allow(dead_code)] // each example uses the part it needs

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use submitgate::config::Config;
use submitgate::daemon::Daemon;
use submitgate::endpoint::Endpoint;
use tokio::io::AsyncReadExt;

/// A target running as a child process.
pub struct Child {
    child: std::process::Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

/// Runs this example again with `args` and waits for its `port N` line.
pub fn spawn(args: &[&str]) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("child without stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port = line
        .trim()
        .strip_prefix("port ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("child {args:?} said {line:?}, not `port N`"))?;
    Ok(Child { child, port })
}

impl Child {
    /// The child's process id (for `perf record -p`).
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Child {
    /// Closes the child's stdin (it shuts down) and waits for it.
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Tells the parent where this child listens.
pub fn announce(port: u16) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "port {port}");
    let _ = out.flush();
}

/// Completes when standard input reaches its end.
pub async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// `--serve CONFIG`: the daemon as `submitgate serve` runs it (its own multi-threaded runtime),
/// announcing its first inet milter listener, else its first inet policy listener.
pub fn serve_daemon(config: &Path) -> anyhow::Result<()> {
    let config = Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let daemon = Daemon::start(config).await?;
        let port = daemon
            .milter_endpoints()
            .iter()
            .chain(daemon.policy_endpoints())
            .find_map(|e| match e {
                Endpoint::Inet { port, .. } => Some(*port),
                Endpoint::Unix(_) => None,
            })
            .ok_or_else(|| anyhow::anyhow!("no inet milter or policy listener"))?;
        announce(port);
        stdin_closed().await;
        daemon.shutdown().await;
        Ok(())
    })
}

/// CPU time (user + system) the process `pid` has used so far, from `/proc/PID/stat`; zero if
/// it cannot be read. Less disturbed by other load on the machine than throughput is.
pub fn cpu_time(pid: u32) -> std::time::Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return std::time::Duration::ZERO;
    };
    // The fields after the command name (which may hold spaces) in parentheses.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return std::time::Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).unwrap_or(100).max(1);
    std::time::Duration::from_micros(ticks * 1_000_000 / per_second)
}
