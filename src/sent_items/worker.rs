//! Delivery workers: drain the spool into the configured store, at least once and without
//! duplicates.
//!
//! A dispatcher task lists the spool (at start-up, after a [`Delivery::wake`], and every
//! `scan_interval`), takes the entries committed into the same [`Spool`] as they come (see
//! [`Spool::take_committed`]: a commit costs no listing), and hands due entries, oldest first,
//! to at most `workers` concurrent attempts. One attempt:
//!
//! 1. read the entry's [`DeliveryState`], metadata and message at once ([`Spool::load`]); not
//!    yet due → come back at `next_attempt_at`;
//! 2. past `max_age` since its first attempt → `fail` (moved to `failed/`), audit
//!    `sent_copy_failed`;
//! 3. for a store that is not idempotent (IMAP), durably record the attempt first
//!    (`attempts + 1`, `outcome_unknown = true`, not to be retried before `retry.initial` has
//!    passed): if the process dies from here on, the next attempt — once the server has had time
//!    to finish an `APPEND` it was still working on — searches the folder before storing again;
//! 4. deliver; success → `complete` (entry removed), audit `sent_copy_stored`;
//!    transient failure → back off exponentially with jitter, capped, state written;
//!    permanent failure, or too many refused logins → `fail`, audit `sent_copy_failed`;
//!    configuration failure → the entry stays queued and the attempt is not counted (nor does
//!    `max_age` run until the store works again); the cause is logged once and listed in
//!    [`Problems`] (`submitgate status`) until a delivery shows it fixed; retries back off with
//!    the problem's age, capped at `retry.max`.
//!
//! The attempts of a store whose work is blocking file I/O (Maildir,
//! [`SentItemsStore::blocking_io`]) run on a runtime of their own, `workers` threads named
//! `sent-items` that may block: the spool reads, the copy and the done mark's commit happen in
//! place on them, with no hand-off to tokio's blocking pool and back, and never on the threads
//! that serve Postfix's connections. The IMAP store's attempts (network I/O) run on the
//! daemon's runtime.
//!
//! On shutdown no new attempt starts; running ones get [`Settings::shutdown_grace`] to finish,
//! then are abandoned — safe, since step 3 makes an abandoned attempt look "outcome unknown"
//! (an attempt blocked in a system call on a `sent-items` thread is left to it, and the
//! dispatcher stops waiting a second after the grace).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::spool::{DeliveryState, EntryId, EntryMeta, Spool, SpoolError};
use super::store::problems::{Problems, Recorded};
use super::store::{FailureKind, SentCopy, SentItemsStore, StoreError, Stored};
use crate::audit::{Audit, AuditEvent, EventKind};
use crate::reason::Reason;

/// The delivery workers' checked settings (built by the configuration's `sent_items` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Concurrent deliveries.
    pub workers: usize,
    /// Give up on an entry this long after its first attempt.
    pub max_age: Duration,
    /// Backoff and login-failure limits.
    pub retry: RetrySettings,
    /// Rescan the spool at least this often (entries put back by `submitgate spool retry`, or
    /// committed by another process).
    pub scan_interval: Duration,
    /// How long running attempts may go on after shutdown was asked for.
    pub shutdown_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            // 8: with 4, an IMAP store fell behind ~250 messages/s of Postfix submissions
            // (README, "Performance"); a Maildir store is not slowed by more.
            workers: 8,
            max_age: Duration::from_secs(5 * 24 * 3600),
            retry: RetrySettings::default(),
            scan_interval: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Delivery retry timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySettings {
    /// Delay after the first transient failure; doubled after each further one.
    pub initial: Duration,
    /// Largest delay between attempts.
    pub max: Duration,
    /// Attempts that end in an authentication or authorization failure (wrong master
    /// password, unknown mailbox) before the entry is moved to `failed/`.
    pub auth_failure_attempts: u32,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(15 * 60),
            auth_failure_attempts: 3,
        }
    }
}

/// A handle on running workers.
#[derive(Debug, Clone)]
pub struct Delivery {
    wake: Arc<Notify>,
    problems: Problems,
}

impl Delivery {
    /// Tells the workers that the spool has a new entry (cheap; wake-ups coalesce).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The store's configuration problems the workers met and no delivery has fixed yet.
    pub fn problems(&self) -> &Problems {
        &self.problems
    }
}

/// Starts the dispatcher on `tracker`; it stops when `shutdown` is cancelled, after running
/// attempts finished or were abandoned, and after the store released its connections.
pub fn start<S: SentItemsStore>(
    spool: Spool,
    store: Arc<S>,
    audit: Audit,
    settings: Settings,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Delivery {
    let wake = Arc::new(Notify::new());
    let problems = Problems::new();
    let shared = Arc::new(Shared {
        problems: problems.clone(),
        spool,
        store,
        audit,
        settings,
        shutdown,
        wake: wake.clone(),
        finished: Notify::new(),
        schedule: Mutex::new(Schedule::default()),
        jitter: RandomState::new(),
    });
    let runtime = if shared.store.blocking_io() {
        delivery_runtime(shared.settings.workers)
    } else {
        None
    };
    tracker.spawn(dispatch(shared, runtime));
    Delivery { wake, problems }
}

struct Shared<S> {
    spool: Spool,
    store: Arc<S>,
    audit: Audit,
    settings: Settings,
    shutdown: CancellationToken,
    wake: Arc<Notify>,
    /// An attempt ended: a permit is free, and its entry may be due again at some time.
    finished: Notify,
    schedule: Mutex<Schedule>,
    jitter: RandomState,
    problems: Problems,
}

/// What the dispatcher knows between scans.
#[derive(Default)]
struct Schedule {
    in_flight: HashSet<EntryId>,
    /// Entries not to be tried before the given time.
    deferred: HashMap<EntryId, SystemTime>,
}

/// How an attempt ended, for the dispatcher.
enum Next {
    /// Delivered, failed for good, or gone from the queue.
    Done,
    /// Try again at this time.
    NotBefore(SystemTime),
}

/// The runtime the attempts of a store with blocking file work run on: `workers` threads that
/// may block ([`crate::fsutil::allow_blocking_here`]), so that an attempt reads the spool,
/// writes its copy and commits its done mark in place, without a trip to another thread and
/// back for each (14 % less CPU per message for submitgate under Postfix, README,
/// "Performance"), and without holding up the runtime that serves Postfix's connections while
/// it waits for a sync. Dropped, it lets its threads go without waiting for them (an attempt
/// may be blocked in a system call), wherever it is dropped.
struct DeliveryThreads(Option<tokio::runtime::Runtime>);

impl DeliveryThreads {
    fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.0.as_ref().map(tokio::runtime::Runtime::handle)
    }
}

impl Drop for DeliveryThreads {
    fn drop(&mut self) {
        // A plain drop would wait for every thread to finish what it is doing.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// [`DeliveryThreads`] for `workers` attempts; `None` (attempts then run on the daemon's
/// runtime, as the IMAP store's do) if the system refuses the threads.
fn delivery_runtime(workers: usize) -> Option<DeliveryThreads> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .thread_name("sent-items")
        .on_thread_start(crate::fsutil::allow_blocking_here)
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(DeliveryThreads(Some(runtime))),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the Sent Items delivery threads; delivering from the daemon's runtime");
            None
        }
    }
}

async fn dispatch<S: SentItemsStore>(shared: Arc<Shared<S>>, threads: Option<DeliveryThreads>) {
    let attempts = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(shared.settings.workers));
    let mut ready: VecDeque<EntryId> = VecDeque::new();
    let mut queued: HashSet<EntryId> = HashSet::new();
    let mut rescan = true;
    let mut fresh = false;
    let mut last_scan = tokio::time::Instant::now();
    // Commits through this process tell their ids: no listing of the whole queue per commit.
    shared.spool.watch_commits();
    tracing::info!(
        spool = %shared.spool.path().display(),
        store = shared.store.name(),
        workers = shared.settings.workers,
        "Sent Items delivery started"
    );
    'run: loop {
        if shared.shutdown.is_cancelled() {
            break;
        }
        let now = SystemTime::now();
        if std::mem::take(&mut fresh) {
            match shared.spool.take_committed() {
                Some(ids) => {
                    let schedule = lock(&shared.schedule);
                    for id in ids {
                        // New entries have no delay yet; one the scan found first is queued.
                        if !schedule.in_flight.contains(&id) && queued.insert(id) {
                            ready.push_back(id);
                        }
                    }
                }
                None => rescan = true,
            }
        }
        if rescan || ready.is_empty() && last_scan.elapsed() >= shared.settings.scan_interval {
            rescan = false;
            last_scan = tokio::time::Instant::now();
            match shared.spool.pending().await {
                Ok(ids) => {
                    let present: HashSet<EntryId> = ids.iter().copied().collect();
                    let schedule = lock(&shared.schedule);
                    let mut schedule = schedule;
                    schedule.deferred.retain(|id, _| present.contains(id));
                    for id in ids {
                        let due = !schedule.deferred.get(&id).is_some_and(|at| *at > now);
                        if due && !schedule.in_flight.contains(&id) && queued.insert(id) {
                            ready.push_back(id);
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot list the spool; retrying"),
            }
        }
        {
            let mut schedule = lock(&shared.schedule);
            let due: Vec<EntryId> = schedule
                .deferred
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                schedule.deferred.remove(&id);
                if !schedule.in_flight.contains(&id) && queued.insert(id) {
                    ready.push_back(id);
                }
            }
        }
        while let Some(id) = ready.pop_front() {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break 'run,
                },
                _ = shared.shutdown.cancelled() => break 'run,
            };
            queued.remove(&id);
            lock(&shared.schedule).in_flight.insert(id);
            let shared = shared.clone();
            let task = async move {
                let next = attempt_bounded(&shared, id).await;
                {
                    let mut schedule = lock(&shared.schedule);
                    schedule.in_flight.remove(&id);
                    if let Some(Next::NotBefore(at)) = next {
                        schedule.deferred.insert(id, at);
                    }
                }
                drop(permit);
                shared.finished.notify_one();
            };
            match threads.as_ref().and_then(DeliveryThreads::handle) {
                Some(handle) => drop(attempts.spawn_on(task, handle)),
                None => drop(attempts.spawn(task)),
            }
        }
        // A drained backlog gives its room back: the queues' capacity would otherwise stay at
        // the largest backlog seen (a store outage leaves megabytes behind for good).
        if oversized(queued.capacity(), queued.len()) {
            queued.shrink_to(queued.len() * 2);
        }
        if oversized(ready.capacity(), ready.len()) {
            ready.shrink_to(ready.len() * 2);
        }
        {
            let mut schedule = lock(&shared.schedule);
            if oversized(schedule.deferred.capacity(), schedule.deferred.len()) {
                let keep = schedule.deferred.len() * 2;
                schedule.deferred.shrink_to(keep);
            }
            if oversized(schedule.in_flight.capacity(), schedule.in_flight.len()) {
                let keep = schedule.in_flight.len() * 2;
                schedule.in_flight.shrink_to(keep);
            }
        }
        // Sleep until something is due, a wake-up, or the next scan.
        let next_due = lock(&shared.schedule).deferred.values().min().copied();
        let mut sleep_for = shared
            .settings
            .scan_interval
            .saturating_sub(last_scan.elapsed());
        if let Some(at) = next_due {
            sleep_for = sleep_for.min(at.duration_since(SystemTime::now()).unwrap_or_default());
        }
        tokio::select! {
            _ = shared.wake.notified() => rescan = true,
            _ = shared.spool.committed() => fresh = true,
            _ = shared.finished.notified() => {}
            _ = tokio::time::sleep(sleep_for) => {}
            _ = shared.shutdown.cancelled() => break,
        }
        shared.store.release_idle(false).await;
    }
    attempts.close();
    // An attempt gives up `shutdown_grace` after the cancellation; one blocked in place in a
    // system call on a delivery thread cannot notice that before the call returns, so the
    // wait is bounded here as well: such an attempt is abandoned with its thread.
    let bound = shared.settings.shutdown_grace + Duration::from_secs(1);
    if tokio::time::timeout(bound, attempts.wait()).await.is_err() {
        tracing::warn!(
            running = attempts.len(),
            "delivery attempts still blocked at shutdown; abandoned (checked and retried at the next start)"
        );
    }
    drop(threads);
    shared.store.release_idle(true).await;
    tracing::info!("Sent Items delivery stopped");
}

/// Whether a queue of `capacity` that holds `len` entries is mostly empty room left by a
/// backlog (small queues are left alone: shrinking costs a rehash).
fn oversized(capacity: usize, len: usize) -> bool {
    capacity > 1024 && capacity / 4 > len
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data stays consistent even if a holder panicked (plain inserts and removes).
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One attempt, abandoned when shutdown's grace period runs out (`None` then).
async fn attempt_bounded<S: SentItemsStore>(shared: &Shared<S>, id: EntryId) -> Option<Next> {
    let grace = async {
        shared.shutdown.cancelled().await;
        tokio::time::sleep(shared.settings.shutdown_grace).await;
    };
    tokio::select! {
        next = attempt(shared, id) => Some(next),
        _ = grace => {
            tracing::warn!(entry = %id, "delivery abandoned at shutdown; it will be checked and retried at the next start");
            None
        }
    }
}

async fn attempt<S: SentItemsStore>(shared: &Shared<S>, id: EntryId) -> Next {
    let spool = &shared.spool;
    let retry_later = |what: &str, e: &SpoolError| {
        tracing::error!(entry = %id, error = %e, "{what}; retrying later");
        Next::NotBefore(SystemTime::now() + shared.settings.retry.initial)
    };
    let loaded = match spool.load(&id).await {
        Ok(loaded) => loaded,
        Err(SpoolError::UnknownEntry { .. }) => return Next::Done,
        Err(e) => return retry_later("cannot read spool entry", &e),
    };
    let mut state = match loaded.state {
        Ok(state) => state,
        Err(SpoolError::UnknownEntry { .. }) => return Next::Done,
        Err(e) if e.is_corrupt() => {
            // Treat as "maybe stored": the damaged state may have recorded an attempt.
            tracing::warn!(entry = %id, error = %e, "unreadable delivery state; starting afresh");
            DeliveryState {
                outcome_unknown: true,
                ..DeliveryState::default()
            }
        }
        Err(e) => return retry_later("cannot read delivery state", &e),
    };
    let now = SystemTime::now();
    if let Some(at) = state.next_attempt_at {
        if at > now {
            return Next::NotBefore(at);
        }
    }
    let (meta, message) = match loaded.entry {
        Ok(entry) => entry,
        Err(SpoolError::UnknownEntry { .. }) => return Next::Done,
        Err(e) if e.is_corrupt() => {
            give_up(shared, id, None, &state, Reason::Corrupt, e.to_string()).await;
            return Next::Done;
        }
        Err(e) => return retry_later("cannot read spool entry", &e),
    };
    let first = state.first_attempt.unwrap_or(now);
    if state.attempts > 0 && age(first, now) >= shared.settings.max_age {
        let reason = format!(
            "not delivered within max_age ({}) after {} attempt(s); last error: {}",
            humantime::format_duration(shared.settings.max_age),
            state.attempts,
            state.last_error.as_deref().unwrap_or("none")
        );
        give_up(shared, id, Some(&meta), &state, Reason::MaxAge, reason).await;
        return Next::Done;
    }
    // An idempotent store records no attempt: for an entry read back after a restart, only
    // the store itself can tell whether a crash came between its copy and the done mark.
    let maybe_stored = state.outcome_unknown || (loaded.recovered && shared.store.idempotent());
    let before = state.clone();
    state.attempts += 1;
    state.first_attempt = Some(first);
    state.next_attempt_at = None;
    if !shared.store.idempotent() {
        state.outcome_unknown = true;
        // Should this attempt be cut short (crash, lost connection), the server may still be
        // finishing the APPEND for a moment: a search made sooner could miss it and store a
        // second copy. So an interrupted attempt is looked at again no sooner than this.
        state.next_attempt_at = Some(now + shared.settings.retry.initial);
        if let Err(e) = spool.write_state(&id, &state).await {
            return match e {
                SpoolError::UnknownEntry { .. } => Next::Done,
                e => retry_later("cannot record the attempt", &e),
            };
        }
    }
    let copy = SentCopy {
        id,
        meta: &meta,
        message,
        maybe_stored,
    };
    match shared.store.deliver(copy).await {
        Ok(stored) => {
            if let Err(e) = spool.complete(&id).await {
                // Stored but still queued: the next attempt finds it (IMAP: the recorded
                // attempt makes it search; Maildir: the same file name), so no duplicate.
                tracing::error!(entry = %id, error = %e, "copy stored but the spool entry could not be removed");
                return Next::NotBefore(SystemTime::now() + shared.settings.retry.initial);
            }
            for fixed in shared.problems.delivered(&meta.mailbox) {
                tracing::warn!(
                    store = shared.store.name(),
                    since = %humantime::format_rfc3339_seconds(fixed.since),
                    failed_attempts = fixed.failed_attempts,
                    cause = %fixed.cause,
                    "Sent Items configuration problem fixed: deliveries resume"
                );
            }
            record_stored(shared, id, &meta, &state, stored).await;
            Next::Done
        }
        Err(e) if e.kind == FailureKind::Configuration => {
            blocked(shared, id, &meta, before, e).await
        }
        Err(e) => failed_attempt(shared, id, &meta, state, e, now).await,
    }
}

/// A configuration failure: the attempt is undone in the entry's state (not counted, and
/// `max_age` starts again once the store works), the error kept as `last_error`; the cause is
/// logged loudly the first time only. The delay grows with the problem's age, so that a queue
/// held up by one cause does not hammer the server.
async fn blocked<S: SentItemsStore>(
    shared: &Shared<S>,
    id: EntryId,
    meta: &EntryMeta,
    mut state: DeliveryState,
    error: StoreError,
) -> Next {
    crate::metrics::delivery(shared.store.name(), crate::metrics::DeliveryResult::Blocked);
    let settings = &shared.settings;
    let store = shared.store.name();
    match shared.problems.record(store, &error, &meta.mailbox) {
        Recorded::New => tracing::error!(
            store,
            mailbox = %meta.mailbox,
            cause = %error.cause(),
            "Sent Items CONFIGURATION ERROR: copies stay queued (not counted as attempts) until it is fixed; `submitgate status` lists it"
        ),
        Recorded::Unlisted { first: true } => tracing::error!(
            store,
            error = %error,
            "Sent Items CONFIGURATION ERROR: too many distinct problems to list; copies stay queued"
        ),
        Recorded::Known { .. } | Recorded::Unlisted { first: false } => tracing::debug!(
            entry = %id,
            mailbox = %meta.mailbox,
            error = %error,
            "Sent Items copy held up by a known configuration problem"
        ),
    }
    let lasted = shared
        .problems
        .since(&error)
        .map_or(Duration::ZERO, |since| age(since, SystemTime::now()));
    let base = lasted.clamp(
        settings.retry.initial,
        settings.retry.max.max(settings.retry.initial),
    );
    let unit = jitter_unit(&shared.jitter, &id, state.attempts);
    let delay = base / 2 + (base / 2).mul_f64(unit);
    let at = SystemTime::now() + delay;
    state.first_attempt = None;
    state.last_error = Some(error.message.clone());
    state.outcome_unknown = state.outcome_unknown || error.outcome_unknown;
    state.next_attempt_at = Some(at);
    if let Err(e) = shared.spool.write_state(&id, &state).await {
        tracing::error!(entry = %id, error = %e, "cannot record the failed attempt");
    }
    Next::NotBefore(at)
}

async fn failed_attempt<S: SentItemsStore>(
    shared: &Shared<S>,
    id: EntryId,
    meta: &EntryMeta,
    mut state: DeliveryState,
    error: StoreError,
    now: SystemTime,
) -> Next {
    let settings = &shared.settings;
    state.last_error = Some(error.message.clone());
    state.outcome_unknown = error.outcome_unknown;
    let first = state.first_attempt.unwrap_or(now);
    let give_up_reason = match error.kind {
        FailureKind::Permanent => Some(Reason::Permanent),
        FailureKind::Auth if state.attempts >= settings.retry.auth_failure_attempts => {
            Some(Reason::LoginRefused)
        }
        FailureKind::Configuration => None,
        _ if age(first, SystemTime::now()) >= settings.max_age => Some(Reason::MaxAge),
        _ => None,
    };
    if let Some(reason) = give_up_reason {
        // Keep the record of attempts with the entry in failed/.
        if let Err(e) = shared.spool.write_state(&id, &state).await {
            tracing::warn!(entry = %id, error = %e, "cannot record the last attempt");
        }
        let text = format!(
            "{} after {} attempt(s): {}",
            match reason {
                Reason::Permanent => "permanent failure",
                Reason::LoginRefused => "login refused",
                _ => "max_age reached",
            },
            state.attempts,
            error.message
        );
        give_up(shared, id, Some(meta), &state, reason, text).await;
        return Next::Done;
    }
    let mut delay = backoff(
        &settings.retry,
        state.attempts,
        jitter_unit(&shared.jitter, &id, state.attempts),
    );
    if state.outcome_unknown {
        // Give the server time to finish an APPEND it may still be working on (see step 3).
        delay = delay.max(settings.retry.initial);
    }
    let at = SystemTime::now() + delay;
    state.next_attempt_at = Some(at);
    crate::metrics::delivery(shared.store.name(), crate::metrics::DeliveryResult::Retry);
    tracing::warn!(
        entry = %id,
        mailbox = %meta.mailbox,
        attempts = state.attempts,
        retry_in = %humantime::format_duration(Duration::from_secs(delay.as_secs())),
        outcome_unknown = state.outcome_unknown,
        error = %error,
        "Sent Items copy not stored; will retry"
    );
    if let Err(e) = shared.spool.write_state(&id, &state).await {
        tracing::error!(entry = %id, error = %e, "cannot record the failed attempt");
    }
    Next::NotBefore(at)
}

/// Moves the entry to `failed/` and audits `sent_copy_failed`.
async fn give_up<S: SentItemsStore>(
    shared: &Shared<S>,
    id: EntryId,
    meta: Option<&EntryMeta>,
    state: &DeliveryState,
    reason: Reason,
    text: String,
) {
    crate::metrics::delivery(shared.store.name(), crate::metrics::DeliveryResult::Failed);
    tracing::error!(entry = %id, %reason, error = %text, "Sent Items copy given up; `submitgate spool retry` puts it back");
    if let Err(e) = shared.spool.fail(&id, text.clone()).await {
        tracing::error!(entry = %id, error = %e, "cannot move the entry to failed/");
    }
    let mut ev = copy_event(
        EventKind::SentCopyFailed,
        shared.store.name(),
        id,
        meta,
        state,
    );
    ev.reason = Some(reason);
    crate::alerts::raise(crate::alerts::AlertEvent::sent_copy_failed(
        ev.mailbox.as_deref(),
        ev.organization.as_deref(),
        reason.as_str(),
        &text,
    ));
    ev.message = Some(text);
    shared.audit.record(ev).await;
}

async fn record_stored<S: SentItemsStore>(
    shared: &Shared<S>,
    id: EntryId,
    meta: &EntryMeta,
    state: &DeliveryState,
    stored: Stored,
) {
    crate::metrics::delivery(shared.store.name(), crate::metrics::DeliveryResult::Stored);
    crate::metrics::delivery_lag(id.committed_at());
    tracing::debug!(entry = %id, mailbox = %meta.mailbox, already = stored.already_stored, "Sent Items copy stored");
    let mut ev = copy_event(
        EventKind::SentCopyStored,
        shared.store.name(),
        id,
        Some(meta),
        state,
    );
    if let Some((validity, uid)) = stored.appenduid {
        ev.uid_validity = Some(validity);
        ev.uid = Some(uid);
    }
    if stored.already_stored {
        ev.already_stored = Some(true);
    }
    shared.audit.record(ev).await;
}

fn copy_event(
    kind: EventKind,
    store: &'static str,
    id: EntryId,
    meta: Option<&EntryMeta>,
    state: &DeliveryState,
) -> AuditEvent {
    let mut ev = AuditEvent::new(kind);
    ev.spool_entry = Some(id.to_string());
    ev.store = Some(store);
    ev.attempts = Some(state.attempts);
    let since = meta.map_or(id.committed_at(), |m| m.submitted_at);
    ev.delay_ms =
        Some(u64::try_from(age(since, SystemTime::now()).as_millis()).unwrap_or(u64::MAX));
    if let Some(meta) = meta {
        ev.mailbox = Some(meta.mailbox.clone());
        ev.organization = Some(meta.organization.clone());
        ev.folder = Some(meta.folder.clone());
        ev.queue_id = Some(meta.queue_id.clone());
        ev.message_id = meta.message_id.clone();
        ev.size = Some(meta.size);
    }
    ev
}

fn age(since: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(since).unwrap_or_default()
}

/// A number in `[0, 1)` that differs per process, entry and attempt.
fn jitter_unit(state: &RandomState, id: &EntryId, attempt: u32) -> f64 {
    let mut h = state.build_hasher();
    std::hash::Hash::hash(id, &mut h);
    h.write_u32(attempt);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Delay before the attempt after `attempts` failed ones: `initial · 2^(attempts-1)`, capped at
/// `max`, then "equal jitter": half of it fixed, the other half scaled by `unit` ∈ [0, 1).
pub fn backoff(retry: &RetrySettings, attempts: u32, unit: f64) -> Duration {
    let exp = attempts.saturating_sub(1).min(32);
    let base = retry
        .initial
        .checked_mul(1u32 << exp.min(31))
        .unwrap_or(retry.max)
        .min(retry.max);
    let half = base / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry() -> RetrySettings {
        RetrySettings {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(600),
            auth_failure_attempts: 3,
        }
    }

    #[test]
    fn a_drained_backlog_gives_its_room_back() {
        assert!(!oversized(1024, 0), "small queues are left alone");
        assert!(!oversized(8192, 4000));
        assert!(oversized(8192, 100));
        let mut queued: HashSet<u64> = (0..50_000).collect();
        queued.retain(|id| *id < 10);
        assert!(oversized(queued.capacity(), queued.len()));
        queued.shrink_to(queued.len() * 2);
        assert!(queued.capacity() < 1024, "{}", queued.capacity());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let r = retry();
        let top = |n| backoff(&r, n, 0.999_999);
        let bottom = |n| backoff(&r, n, 0.0);
        assert_eq!(bottom(1), Duration::from_secs(5));
        assert!(top(1) <= Duration::from_secs(10) && top(1) > Duration::from_millis(9_999));
        assert_eq!(bottom(2), Duration::from_secs(10));
        assert_eq!(bottom(3), Duration::from_secs(20));
        assert_eq!(bottom(7), Duration::from_secs(300));
        assert_eq!(bottom(8), Duration::from_secs(300));
        assert_eq!(bottom(u32::MAX), Duration::from_secs(300));
        assert!(top(u32::MAX) <= Duration::from_secs(600));
        assert_eq!(backoff(&r, 0, 0.0), Duration::from_secs(5));
    }

    #[test]
    fn jitter_spreads() {
        let state = RandomState::new();
        let id: EntryId = "1718022896.000042-4242-7".parse().unwrap();
        let values: Vec<f64> = (1..50).map(|a| jitter_unit(&state, &id, a)).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let distinct: HashSet<u64> = values.iter().map(|v| v.to_bits()).collect();
        assert!(distinct.len() > 40);
    }
}
