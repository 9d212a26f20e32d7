//! What the integration test suites share, in one place: polling with a deadline
//! ([`wait_for`], [`wait_for_sync`]) instead of sleeping, the one audit-log reader
//! ([`read_audit`]), a real daemon under test ([`daemon`]) and a private Dovecot with delivery
//! workers ([`dovecot`]). Each suite declares `mod support;` and uses what it needs.
#![allow(dead_code)]

pub mod daemon;
pub mod dovecot;

use std::path::Path;
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
