//! The policy in force and how it changes at run time: the [`PolicyHandle`] every front end
//! reads (an atomically swapped [`PolicySnapshot`]), the [`Reloader`] (one reload at a time, the
//! last result kept for `status`, audited as `policy_reloaded` / `policy_reload_failed`) and the
//! policy directory watcher. Used by `daemon` (SIGHUP, start) and `control` (`submitgate
//! reload`); it knows neither of them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::{load_dir, reload_dir, LoadOptions, PolicyError, PolicyErrors, PolicySnapshot, Reload};
use crate::audit::{Audit, AuditEvent, EventKind};

/// How long the policy directory must be quiet before a reload: editors write in bursts.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);

/// What gives the memory a load or reload freed back to the system (see [`set_memory_release`]).
static MEMORY_RELEASE: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what gives freed memory back to the system once a policy has been loaded or a reload
/// has ended (swapped, unchanged or failed): the binary's allocator's own call (jemalloc's
/// `arena.<all>.purge`), which this library, free of `unsafe`, does not make itself. It runs on
/// the loader's thread, which made and freed the memory. Without it, memory goes back whenever
/// the allocator decides (jemalloc's background thread: over the ~10 s after it is freed).
/// The first call wins.
pub fn set_memory_release(release: fn()) {
    let _ = MEMORY_RELEASE.set(release);
}

fn release_memory() {
    if let Some(release) = MEMORY_RELEASE.get() {
        release();
    }
}

/// The policy in force, shared by every front end; cheap to clone. Only a [`Reloader`]
/// replaces it, so readers always see one whole snapshot.
#[derive(Clone, Debug)]
pub struct PolicyHandle(Arc<ArcSwap<PolicySnapshot>>);

impl PolicyHandle {
    /// A handle on `snapshot`.
    pub fn new(snapshot: PolicySnapshot) -> Self {
        PolicyHandle(Arc::new(ArcSwap::from_pointee(snapshot)))
    }

    /// The current snapshot, for one decision (cheap, no reference count taken).
    pub fn load(&self) -> Guard<Arc<PolicySnapshot>> {
        self.0.load()
    }

    /// The current snapshot, to keep (a milter session keeps its snapshot to its end).
    pub fn load_full(&self) -> Arc<PolicySnapshot> {
        self.0.load_full()
    }

    /// Puts `snapshot` in force; returns the one it replaces.
    fn swap(&self, snapshot: Arc<PolicySnapshot>) -> Arc<PolicySnapshot> {
        self.0.swap(snapshot)
    }
}

/// The result of a reload.
#[derive(Debug, Clone)]
pub enum ReloadOutcome {
    Reloaded {
        version: String,
        organizations: usize,
        mailboxes: usize,
        /// The files had not changed: nothing was swapped or audited (the success is still
        /// recorded for `status`).
        unchanged: bool,
    },
    /// The old policy stays in force.
    Failed(PolicyErrors),
}

/// The last reload and its result, for `submitgate status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadRecord {
    pub at: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Loads the policy directory off the async threads.
pub async fn load(dir: &Path, options: &LoadOptions) -> Result<PolicySnapshot, PolicyErrors> {
    let (dir, options) = (dir.to_path_buf(), options.clone());
    tokio::task::spawn_blocking(move || {
        let loaded = load_dir(&dir, &options);
        release_memory();
        loaded
    })
    .await
    .unwrap_or_else(|e| Err(join_error(e)))
}

/// Reloads the policy files into a [`PolicyHandle`], one reload at a time.
#[derive(Debug)]
pub struct Reloader {
    policy: PolicyHandle,
    dir: PathBuf,
    options: LoadOptions,
    audit: Audit,
    lock: Mutex<()>,
    last: std::sync::Mutex<Option<ReloadRecord>>,
}

impl Reloader {
    /// A reloader of `dir` (loaded with `options`) into `policy`, auditing to `audit`.
    pub fn new(policy: PolicyHandle, dir: PathBuf, options: LoadOptions, audit: Audit) -> Self {
        Reloader {
            policy,
            dir,
            options,
            audit,
            lock: Mutex::new(()),
            last: std::sync::Mutex::new(None),
        }
    }

    /// The handle this reloader swaps.
    pub fn policy(&self) -> &PolicyHandle {
        &self.policy
    }

    /// Reloads the policy files. A broken set keeps the old policy, logs every error and
    /// audits `policy_reload_failed`; an unchanged set swaps and audits nothing, but like any
    /// successful reload it is recorded for `status` (clearing an earlier failure).
    pub async fn reload(&self) -> ReloadOutcome {
        let _one_at_a_time = self.lock.lock().await;
        // Read, compared, built and swapped on one blocking-pool thread. Only the files whose
        // text changed are parsed; the others keep the tables of the snapshot in force, which
        // the new snapshot shares, so a reload costs the changed files, not a second policy.
        // Unchanged files (SIGHUP, a save without changes, a reverted edit) build nothing.
        // The thread also frees what the new snapshot no longer uses when no session holds the
        // old one any more: frees on the allocating thread let the allocator reuse and return
        // the pages at once (frees from another thread are deferred until the idle loader
        // thread runs again).
        let (dir, options, policy) = (self.dir.clone(), self.options.clone(), self.policy.clone());
        let swapped = tokio::task::spawn_blocking(move || {
            let current = policy.load_full();
            let summary = |s: &PolicySnapshot| {
                (
                    s.version.clone(),
                    s.organizations().len(),
                    s.mailbox_count(),
                )
            };
            let outcome = match reload_dir(&dir, &options, &current) {
                Ok(Reload::Unchanged) => Ok((summary(&current), true)),
                Ok(Reload::Changed(snapshot)) => {
                    let new = summary(&snapshot);
                    drop(policy.swap(Arc::from(snapshot)));
                    Ok((new, false))
                }
                Err(errors) => Err(errors),
            };
            drop(current);
            release_memory();
            outcome
        })
        .await
        .unwrap_or_else(|e| Err(join_error(e)));
        match swapped {
            Ok(((version, organizations, mailboxes), true)) => {
                // Still a successful reload: it clears a FAILED left by a broken edit that
                // has since been reverted to the text in force.
                self.record(true, Vec::new());
                tracing::debug!(%version, "policy files unchanged");
                ReloadOutcome::Reloaded {
                    version,
                    organizations,
                    mailboxes,
                    unchanged: true,
                }
            }
            Ok(((version, organizations, mailboxes), false)) => {
                self.record(true, Vec::new());
                let mut ev = AuditEvent::new(EventKind::PolicyReloaded);
                ev.version = Some(version.clone());
                tracing::info!(%version, "policy reloaded");
                self.audit.record(ev).await;
                ReloadOutcome::Reloaded {
                    version,
                    organizations,
                    mailboxes,
                    unchanged: false,
                }
            }
            Err(errors) => {
                self.record(false, errors.0.iter().map(|e| e.to_string()).collect());
                for e in &errors.0 {
                    tracing::error!("policy reload failed, keeping the old policy: {e}");
                }
                let mut ev = AuditEvent::new(EventKind::PolicyReloadFailed);
                ev.version = Some(self.policy.load().version.clone());
                // Place and kind only: the audit log may be readable by people who may not
                // read the policy files, and a message quotes a token of the file.
                ev.errors = Some(errors.0.iter().map(|e| e.place_and_kind()).collect());
                crate::alerts::raise(crate::alerts::AlertEvent::policy_reload_failed(
                    ev.version.as_deref().unwrap_or_default(),
                    ev.errors.as_deref().unwrap_or_default(),
                ));
                self.audit.record(ev).await;
                ReloadOutcome::Failed(errors)
            }
        }
    }

    fn record(&self, ok: bool, errors: Vec<String>) {
        crate::metrics::policy_reload(ok);
        let record = ReloadRecord {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            ok,
            errors,
        };
        if let Ok(mut last) = self.last.lock() {
            *last = Some(record);
        }
    }

    /// The last reload attempt, if any.
    pub fn last_reload(&self) -> Option<ReloadRecord> {
        self.last.lock().ok().and_then(|l| l.clone())
    }
}

/// A watch on the policy directory, registered before the policy is first loaded so that no
/// change between the load and the watch can be missed.
pub struct PolicyWatch {
    watcher: notify::RecommendedWatcher,
    dir: PathBuf,
    changes: tokio::sync::mpsc::UnboundedReceiver<()>,
}

/// Starts watching `dir` for changes to policy files (editors that save via rename are seen as
/// a create/rename in the directory). A watch that cannot start leaves SIGHUP and
/// `submitgate reload` working; the error is logged.
pub fn watch(dir: &Path) -> Option<PolicyWatch> {
    use notify::{RecursiveMode, Watcher};
    let (tx, changes) = tokio::sync::mpsc::unbounded_channel();
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(ev) => {
            let relevant = ev.paths.iter().any(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    !n.starts_with('.') && (n.ends_with(".yaml") || n.ends_with(".yml"))
                })
            });
            if relevant && !matches!(ev.kind, notify::EventKind::Access(_)) {
                let _ = tx.send(());
            }
        }
        Err(e) => tracing::warn!("policy watcher: {e}"),
    };
    match notify::recommended_watcher(handler)
        .and_then(|mut w| w.watch(dir, RecursiveMode::NonRecursive).map(|()| w))
    {
        Ok(watcher) => {
            tracing::info!(dir = %dir.display(), "watching the policy directory for changes");
            Some(PolicyWatch {
                watcher,
                dir: dir.to_path_buf(),
                changes,
            })
        }
        Err(e) => {
            tracing::error!(
                dir = %dir.display(),
                "cannot watch the policy directory ({e}); reload with SIGHUP or `submitgate reload`"
            );
            None
        }
    }
}

/// Reloads after changes, debounced: a burst of writes is one reload. Runs until `shutdown`.
pub async fn run_watch(
    mut watch: PolicyWatch,
    reloader: Arc<Reloader>,
    shutdown: CancellationToken,
) {
    use notify::Watcher;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = watch.changes.recv() => if ev.is_none() { break },
        }
        // Debounce: wait until the directory has been quiet for a moment.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                more = tokio::time::timeout(WATCH_DEBOUNCE, watch.changes.recv()) => match more {
                    Ok(Some(())) => continue,
                    Ok(None) | Err(_) => break,
                },
            }
        }
        tracing::info!("policy files changed; reloading");
        reloader.reload().await;
    }
    let _ = watch.watcher.unwatch(&watch.dir);
}

fn join_error(e: tokio::task::JoinError) -> PolicyErrors {
    PolicyErrors(vec![PolicyError {
        file: "policies".into(),
        line: 0,
        column: 0,
        kind: crate::yaml::ErrorKind::Internal,
        message: format!("policy loader failed: {e}"),
    }])
}
