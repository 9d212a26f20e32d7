//! Connection caps: how many connections one front end (policy, milter, auth policy) serves at
//! once, so that a flood on one of them never costs the others their service. The accept loop
//! accepts first and asks the cap; a connection over it is closed at once (never left in the
//! listen backlog), with a debug line naming the peer and at most one warning per
//! [`WARNING_INTERVAL`] per cap counting the connections refused. Also here: raising
//! `RLIMIT_NOFILE` to its hard limit at start, and the warning when the caps need more file
//! descriptors than that.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most one "cap reached" warning per cap this often.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// File descriptors set aside beside the connections: listeners, the audit log, the control
/// socket, the policy watcher, Redis, spool files and IMAP store connections.
pub const FD_HEADROOM: u64 = 256;

/// One cap: a number of connections served at once, shared by every listener it is given to.
pub struct ConnectionCap {
    /// What it caps, for log lines ("policy", "milter", "auth policy", "all front ends").
    name: &'static str,
    /// The configuration key that sets it, so the warning says what to raise.
    key: &'static str,
    limit: usize,
    permits: Arc<Semaphore>,
    refusals: RefusalLog,
    refused_total: AtomicU64,
}

impl fmt::Debug for ConnectionCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionCap")
            .field("name", &self.name)
            .field("limit", &self.limit)
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl ConnectionCap {
    /// A cap of `limit` connections (at least one), named `name`, set by the key `key`.
    pub fn new(name: &'static str, key: &'static str, limit: usize) -> Arc<ConnectionCap> {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(ConnectionCap {
            name,
            key,
            limit,
            permits: Arc::new(Semaphore::new(limit)),
            refusals: RefusalLog::new(WARNING_INTERVAL),
            refused_total: AtomicU64::new(0),
        })
    }

    /// The number of connections it allows at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Connections holding a slot now.
    pub fn in_use(&self) -> usize {
        self.limit - self.permits.available_permits()
    }

    /// Connections refused since start.
    pub fn refused(&self) -> u64 {
        self.refused_total.load(Ordering::Relaxed)
    }

    fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Counts one refusal and logs it: a debug line per connection, a warning at most once
    /// per [`WARNING_INTERVAL`] with the number refused since the previous warning.
    fn note_refused(&self, listener: &str, peer: &str) {
        self.refused_total.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            peer,
            "{listener}: {} ({}) reached; connection closed",
            self.key,
            self.limit
        );
        if let Some(count) = self.refusals.refused(Instant::now()) {
            tracing::warn!(
                latest_peer = peer,
                "{listener}: {} connections served at once, the {} cap ({}); {count} new \
                 connection(s) closed since the last warning",
                self.limit,
                self.name,
                self.key,
            );
        }
    }
}

/// The caps one front end's connections count against: its own and, when the top-level
/// `max_connections` is set, the one shared by all front ends.
#[derive(Debug, Clone)]
pub struct ConnectionCaps {
    own: Arc<ConnectionCap>,
    shared: Option<Arc<ConnectionCap>>,
}

/// The slots an admitted connection holds; dropping it gives them back.
#[derive(Debug)]
pub struct Admitted {
    _own: OwnedSemaphorePermit,
    _shared: Option<OwnedSemaphorePermit>,
}

impl ConnectionCaps {
    /// `own`, and `shared` across front ends when configured.
    pub fn new(own: Arc<ConnectionCap>, shared: Option<Arc<ConnectionCap>>) -> ConnectionCaps {
        ConnectionCaps { own, shared }
    }

    /// The front end's own cap.
    pub fn own(&self) -> &Arc<ConnectionCap> {
        &self.own
    }

    /// A slot in every cap, or `None` (logged as refused by the cap that was full).
    /// `listener` and `peer` name the connection in log lines.
    pub fn admit(&self, listener: &str, peer: &str) -> Option<Admitted> {
        let Some(own) = self.own.try_take() else {
            self.own.note_refused(listener, peer);
            return None;
        };
        let shared = match &self.shared {
            None => None,
            Some(cap) => match cap.try_take() {
                Some(p) => Some(p),
                None => {
                    cap.note_refused(listener, peer);
                    return None;
                }
            },
        };
        Some(Admitted {
            _own: own,
            _shared: shared,
        })
    }
}

/// The rate limit on "cap reached" warnings: the first refusal warns, later ones are counted
/// and reported by the first refusal after the interval.
#[derive(Debug)]
struct RefusalLog {
    interval: Duration,
    state: Mutex<RefusalState>,
}

#[derive(Debug, Default)]
struct RefusalState {
    last_warning: Option<Instant>,
    unreported: u64,
}

impl RefusalLog {
    fn new(interval: Duration) -> RefusalLog {
        RefusalLog {
            interval,
            state: Mutex::new(RefusalState::default()),
        }
    }

    /// Counts a refusal at `now`; `Some(n)` when a warning is due, `n` the refusals it reports.
    fn refused(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.unreported += 1;
        let due = s
            .last_warning
            .map_or(true, |t| now.saturating_duration_since(t) >= self.interval);
        if !due {
            return None;
        }
        s.last_warning = Some(now);
        Some(std::mem::take(&mut s.unreported))
    }
}

/// The soft and hard `RLIMIT_NOFILE` after [`raise_nofile_limit`] (`None`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (the default soft limit, 1024, is below
/// what the connection caps allow) and returns the limits in force. An unlimited hard limit
/// is not a valid soft limit for file descriptors; then the soft limit goes to `fs.nr_open`'s
/// usual default (1 048 576) if that is higher. A failure is logged and leaves the limit as
/// it was.
pub fn raise_nofile_limit() -> NofileLimit {
    let before = getrlimit(Resource::Nofile);
    let target = before.maximum.unwrap_or(1 << 20);
    if before.current.is_some_and(|soft| soft < target) {
        let raised = Rlimit {
            current: Some(target),
            maximum: before.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::debug!("RLIMIT_NOFILE soft limit raised to {target}"),
            Err(e) => tracing::warn!(
                "cannot raise the RLIMIT_NOFILE soft limit from {} to {target}: {e}",
                before.current.unwrap_or_default()
            ),
        }
    }
    let now = getrlimit(Resource::Nofile);
    NofileLimit {
        soft: now.current,
        hard: now.maximum,
    }
}

/// File descriptors the caps may need: every connection (a milter connection twice: its
/// message may be spooled to a file) plus [`FD_HEADROOM`]; never more connections than
/// `shared` when it is set.
pub fn fds_needed(policy: u64, milter: u64, auth_policy: u64, shared: Option<u64>) -> u64 {
    let connections = policy.saturating_add(milter).saturating_add(auth_policy);
    let (connections, milter) = match shared {
        Some(total) => (connections.min(total), milter.min(total)),
        None => (connections, milter),
    };
    connections
        .saturating_add(milter)
        .saturating_add(FD_HEADROOM)
}

/// The warning to log when `needed` file descriptors exceed the soft limit.
pub fn nofile_warning(needed: u64, limit: NofileLimit) -> Option<String> {
    let soft = limit.soft?;
    (needed > soft).then(|| {
        format!(
            "the connection caps may need {needed} file descriptors (connections, milter spool \
             files and {FD_HEADROOM} more), above RLIMIT_NOFILE ({soft}): raise the limit \
             (LimitNOFILE= in the systemd unit, ulimit -n) or lower the *_max_connections keys; \
             past it new connections fail to be accepted"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_rate_limited_and_count_refusals() {
        let log = RefusalLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.refused(t0), Some(1));
        for i in 1..=4 {
            assert_eq!(log.refused(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(log.refused(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(log.refused(t0 + Duration::from_secs(11)), None);
        assert_eq!(log.refused(t0 + Duration::from_secs(25)), Some(2));
    }

    #[test]
    fn a_full_cap_refuses_and_a_closed_connection_frees_its_slot() {
        let own = ConnectionCap::new("policy", "policy_max_connections", 2);
        let caps = ConnectionCaps::new(own.clone(), None);
        let a = caps.admit("policy", "p1").unwrap();
        let _b = caps.admit("policy", "p2").unwrap();
        assert!(caps.admit("policy", "p3").is_none());
        assert_eq!((own.in_use(), own.refused()), (2, 1));
        drop(a);
        assert!(caps.admit("policy", "p4").is_some());
    }

    #[test]
    fn the_shared_cap_counts_every_front_end() {
        let shared = ConnectionCap::new("all front ends", "max_connections", 2);
        let policy = ConnectionCaps::new(
            ConnectionCap::new("policy", "policy_max_connections", 5),
            Some(shared.clone()),
        );
        let milter = ConnectionCaps::new(
            ConnectionCap::new("milter", "milter_max_connections", 5),
            Some(shared.clone()),
        );
        let _p = policy.admit("policy", "p1").unwrap();
        let _m = milter.admit("milter", "m1").unwrap();
        assert!(milter.admit("milter", "m2").is_none());
        // The refused milter connection gave its own slot back.
        assert_eq!(milter.own().in_use(), 1);
        assert_eq!(shared.refused(), 1);
    }

    #[test]
    fn file_descriptor_budget() {
        assert_eq!(fds_needed(500, 500, 500, None), 2000 + FD_HEADROOM);
        assert_eq!(
            fds_needed(500, 500, 500, Some(1024)),
            1024 + 500 + FD_HEADROOM
        );
        assert_eq!(fds_needed(500, 0, 0, Some(100)), 100 + FD_HEADROOM);
        let limit = |soft| NofileLimit {
            soft: Some(soft),
            hard: Some(soft),
        };
        assert!(nofile_warning(2256, limit(1024)).is_some());
        assert!(nofile_warning(2256, limit(2256)).is_none());
        let unlimited = NofileLimit {
            soft: None,
            hard: None,
        };
        assert!(nofile_warning(u64::MAX, unlimited).is_none());
    }
}
