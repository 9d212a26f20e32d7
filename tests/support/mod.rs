//! What the integration test suites share, in one place: polling with a deadline
//! ([`wait_for`], [`wait_for_sync`]) instead of sleeping, the one audit-log reader
//! ([`read_audit`]), a real daemon under test ([`daemon`]), a private Dovecot with delivery
//! workers ([`dovecot`]), real Redis deployments (one server, a cluster, a sentinel-watched
//! master: [`redis`]) and the one check for an external program a test needs
//! ([`require`]: fails under CI, skips with a note elsewhere). Each suite declares
//! `mod support;` and uses what it needs.
#![allow(dead_code)]

pub mod daemon;
pub mod dovecot;
pub mod redis;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(20);

/// A deadline for polling a condition: [`Deadline::tick`] fails the test naming what it waited
/// for once the limit has passed, else sleeps one poll interval. For loops whose condition needs
/// `&mut` state (a client connection); otherwise use [`wait_for`].
pub struct Deadline {
    until: Instant,
    limit: Duration,
    what: String,
}

impl Deadline {
    pub fn new(limit: Duration, what: &str) -> Deadline {
        Deadline {
            until: Instant::now() + limit,
            limit,
            what: what.to_string(),
        }
    }

    /// Whether the limit has passed (to fail with more detail than [`Deadline::tick`] gives).
    pub fn passed(&self) -> bool {
        Instant::now() >= self.until
    }

    fn check(&self) {
        assert!(
            Instant::now() < self.until,
            "timed out after {:?} waiting for {}",
            self.limit,
            self.what
        );
    }

    /// Fails the test if the deadline has passed, else sleeps one poll interval.
    pub async fn tick(&self) {
        self.check();
        tokio::time::sleep(POLL).await;
    }

    /// [`Deadline::tick`] for code outside the runtime.
    pub fn tick_sync(&self) {
        self.check();
        std::thread::sleep(POLL);
    }
}

/// Waits until `check` holds, polling every 20 ms; fails the test naming `what` after `limit`.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Deadline::new(limit, what);
    while !check().await {
        deadline.tick().await;
    }
}

/// [`wait_for`] for code outside the runtime (starting child processes).
pub fn wait_for_sync(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Deadline::new(limit, what);
    while !check() {
        deadline.tick_sync();
    }
}

/// Every event of a JSON-lines audit log (none if the file does not exist yet). A line that is
/// not JSON fails the test with its number: the daemon must never write one. Only a last line
/// without its newline is left out: the writer may be in the middle of it.
pub fn read_audit(path: &Path) -> Vec<serde_json::Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("cannot read the audit log {}: {e}", path.display()),
    };
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete
        .lines()
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "{}:{}: not a JSON audit event ({e}): {line:?}",
                    path.display(),
                    n + 1
                )
            })
        })
        .collect()
}

/// The Debian package that installs `program`, for the hint in [`require`]'s message.
fn package_of(program: &str) -> &str {
    match program {
        "redis-server" | "redis-cli" => "redis-server",
        "redis-sentinel" => "redis-sentinel",
        "dovecot" | "doveadm" => "dovecot-imapd",
        "miltertest" => "miltertest",
        "openssl" => "openssl",
        "chromedriver" => "chromium-driver",
        "promtool" => "prometheus",
        other => other,
    }
}

/// Whether the `CI` environment variable says this is a CI run (CI systems set `CI=true`;
/// unset, empty, `0` and `false` mean a developer's machine).
pub fn is_ci(ci: Option<&OsStr>) -> bool {
    match ci.and_then(OsStr::to_str) {
        None => ci.is_some(),
        Some(v) => !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false"),
    }
}

/// `program` found as an executable file in one of the directories of `path` (a `PATH`
/// value), the first one in order, as `Command::new(program)` would run it.
pub fn find_program(program: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// What [`require`] decides, from a `PATH` and a `CI` value rather than the process's own:
/// `Ok(Some(path))` when `program` is on `path`; when it is not, `Ok(None)` (skip) outside CI
/// and `Err(message)` under CI.
pub fn require_in(
    program: &str,
    path: Option<&OsStr>,
    ci: Option<&OsStr>,
) -> Result<Option<PathBuf>, String> {
    if let Some(found) = find_program(program, path) {
        return Ok(Some(found));
    }
    if is_ci(ci) {
        return Err(format!(
            "{program} is required but not on PATH ({}), and CI is set: a test that needs it \
             must not pass without it (apt-get install {}; .ci/run installs it)",
            path.map_or_else(|| "unset".into(), |p| p.to_string_lossy()),
            package_of(program)
        ));
    }
    Ok(None)
}

/// The path of an external program a test needs (`redis-server`, `dovecot`, `miltertest`…),
/// looked up on `PATH`. When it is missing: under CI (`CI` set, as CI systems do) the test
/// **fails** with a message naming the program and its package, so that a failed install can
/// never give a green run; elsewhere this prints a visible note (past the harness's capture)
/// and returns `None`, and the test returns early.
#[track_caller]
pub fn require(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH");
    let ci = std::env::var_os("CI");
    match require_in(program, path.as_deref(), ci.as_deref()) {
        Ok(Some(found)) => Some(found),
        Ok(None) => {
            let test = std::thread::current()
                .name()
                .unwrap_or("this test")
                .to_string();
            note(&format!(
                "{test}: SKIPPED: {program} is not installed (apt-get install {}); \
                 under CI=true this fails",
                package_of(program)
            ));
            None
        }
        Err(message) => panic!("{message}"),
    }
}

/// Writes straight to stderr, past the test harness's capture, so that a skip is seen.
pub fn note(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "note: {text}");
}
