//! Wires the parts together: loads the policy, opens the audit log, binds every listener and
//! runs the front ends until shutdown. [`Daemon`] is what `submitgate serve` runs and what the
//! integration tests start on port 0.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{Audit, AuditEvent, AuditWriter, EventKind};
use crate::config::{Config, LimiterConfig};
use crate::endpoint::{Endpoint, Listener};
use crate::limiter::Limiter;
use crate::milter;
use crate::policy::{self, PolicyErrors, PolicySnapshot};
use crate::postfix_policy;
use crate::reply::Replies;
use crate::sent_items::spool::{Spool, SpoolError};
use crate::sent_items::{store::Store, worker};

/// How long shutdown waits for connections to finish their current request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("policy files are invalid:\n{0}")]
    Policy(PolicyErrors),
    #[error("audit log: {0}")]
    Audit(std::io::Error),
    #[error("Sent Items spool: {0}")]
    Spool(SpoolError),
    #[error("{0}")]
    Limiter(crate::limiter::redis::SetupError),
    #[error(transparent)]
    AuthPolicyKey(#[from] crate::auth_policy::ApiKeyError),
    #[error("cannot listen on {endpoint}: {source}")]
    Bind {
        endpoint: Endpoint,
        source: std::io::Error,
    },
    /// The Sent Items store cannot be set up (CA file, master secret).
    #[error("sent items: {0}")]
    SentItems(String),
}

/// Counters that are not worth an audit line.
#[derive(Debug, Default)]
pub struct Stats {
    /// Policy requests and milter MAIL FROMs without a login (not submissions).
    pub unauthenticated: AtomicU64,
    /// Auth policy requests for protocols it does not check (IMAP logins and the like).
    pub auth_policy_other_protocol: AtomicU64,
}

/// What every front end shares: the current policy, the limiter, the audit log.
#[derive(Clone)]
pub struct Context {
    pub policy: Arc<ArcSwap<PolicySnapshot>>,
    pub limiter: Limiter,
    pub audit: Audit,
    pub replies: Arc<Replies>,
    pub stats: Arc<Stats>,
}

/// The result of a reload.
#[derive(Debug, Clone)]
pub enum ReloadOutcome {
    Reloaded {
        version: String,
        organizations: usize,
        mailboxes: usize,
        /// The files had not changed: nothing was swapped or audited.
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

/// What the daemon's long-lived tasks (front ends, policy watcher, control socket) share.
pub struct Shared {
    pub config: Arc<Config>,
    pub ctx: Context,
    /// The addresses each front end listens on (real ports when 0 was configured).
    pub listeners: Listeners,
    pub started: SystemTime,
    /// The Sent Items spool, when the daemon has one (for `status`).
    pub spool: Option<Spool>,
    reload_lock: Mutex<()>,
    last_reload: std::sync::Mutex<Option<ReloadRecord>>,
}

/// Bound listener addresses per front end.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Listeners {
    pub policy: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub milter: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control: Option<String>,
    /// Dovecot auth policy (HTTP) listeners.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub auth_policy: Vec<String>,
}

/// A running daemon.
pub struct Daemon {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    policy_endpoints: Vec<Endpoint>,
    auth_policy_endpoints: Vec<Endpoint>,
    milter_endpoints: Vec<Endpoint>,
    audit_writer: AuditWriter,
    sent_items: Option<SentItems>,
}

/// The Sent Items spool and its delivery workers, when a store is configured.
#[derive(Debug, Clone)]
pub struct SentItems {
    /// The spool, opened (and locked) by the daemon; the milter commits into it.
    pub spool: Spool,
    /// The running workers ([`worker::Delivery::wake`]; commits wake them by themselves).
    pub delivery: worker::Delivery,
}

impl Daemon {
    /// Loads the policy (an invalid policy stops the start), opens the audit log, binds every
    /// listener and starts serving.
    pub async fn start(config: Config) -> Result<Daemon, StartError> {
        let watch = if config.watch_policies {
            watch_policy_dir(&config.policies_dir)
        } else {
            None
        };
        let opts = config.policy_options();
        let dir = config.policies_dir.clone();
        let snapshot = tokio::task::spawn_blocking(move || policy::load_dir(&dir, &opts))
            .await
            .unwrap_or_else(|e| Err(join_error(e)))
            .map_err(StartError::Policy)?;
        tracing::info!(
            dir = %config.policies_dir.display(),
            version = %snapshot.version,
            organizations = snapshot.organizations().len(),
            mailboxes = snapshot.mailbox_count(),
            "policy loaded"
        );
        // Read before anything is bound, so that a bad key file stops the start cleanly.
        let auth_policy_key = match &config.auth_policy_api_key_file {
            Some(path) => Some(crate::auth_policy::ApiKey::read(path)?),
            None => None,
        };
        let (audit, audit_writer) = Audit::start(&config.audit).map_err(StartError::Audit)?;
        let limiter = match &config.limiter {
            LimiterConfig::Memory => Limiter::memory(),
            LimiterConfig::Redis(settings) => {
                tracing::info!(
                    url = crate::limiter::redis::redact(&settings.url),
                    node_id = settings.node_id,
                    "session leases shared through redis"
                );
                Limiter::redis(
                    crate::limiter::redis::RedisBackend::new(settings.clone(), Some(audit.clone()))
                        .map_err(StartError::Limiter)?,
                )
            }
        };
        let ctx = Context {
            policy: Arc::new(ArcSwap::from_pointee(snapshot)),
            limiter,
            audit,
            replies: Arc::new(config.replies.clone()),
            stats: Arc::new(Stats::default()),
        };
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let connections = Arc::new(Semaphore::new(config.max_connections));
        // The spool: written by the milter, drained by the delivery workers. Opened once (its
        // owner locks it and removes crash leftovers) before any listener, so that a spool or
        // store problem stops the start before anything is served.
        let spool = if !config.milter_listeners.is_empty() || config.sent_items.deliver {
            let dir = config.sent_items.spool.clone();
            let spool = tokio::task::spawn_blocking(move || Spool::open(dir))
                .await
                .map_err(|e| StartError::Spool(SpoolError::Task(e.to_string())))?
                .map_err(StartError::Spool)?;
            tracing::info!(spool = %spool.path().display(), "Sent Items spool opened");
            Some(spool)
        } else {
            None
        };
        // Bind everything before anything runs: a listener that cannot be bound stops the start
        // cleanly, with no worker or front end left behind.
        let mode = config.unix_socket_mode;
        let policy_listeners = bind_all(&config.policy_listeners, mode, "policy front end").await?;
        let milter_listeners = bind_all(&config.milter_listeners, mode, "milter front end").await?;
        let auth_policy_listeners =
            bind_all(&config.auth_policy_listeners, mode, "auth policy (Dovecot)").await?;
        let control = match &config.control {
            Some(endpoint) => Some(endpoint.bind(config.control_socket_mode).await.map_err(
                |source| StartError::Bind {
                    endpoint: endpoint.clone(),
                    source,
                },
            )?),
            None => None,
        };

        let sent_items = match &spool {
            Some(spool) if config.sent_items.deliver => Some(start_sent_items(
                spool.clone(),
                &config,
                &ctx,
                &shutdown,
                &tracker,
            )?),
            Some(spool) => {
                tracing::warn!(
                    spool = %spool.path().display(),
                    "sent_items has no `store`: copies are spooled but not delivered"
                );
                None
            }
            None => None,
        };

        let policy_settings = postfix_policy::server::Settings {
            lease_idle_timeout: config.lease_idle_timeout,
        };
        let mut policy_endpoints = Vec::new();
        for (listener, bound) in policy_listeners {
            policy_endpoints.push(bound);
            tracker.spawn(postfix_policy::server::serve(
                listener,
                ctx.clone(),
                policy_settings.clone(),
                connections.clone(),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        let milter_settings = Arc::new(milter::server::Settings {
            timeout: config.milter_timeout,
            max_frame: config.milter_max_frame,
            spool: spool.clone(),
        });
        let mut milter_endpoints = Vec::new();
        for (listener, bound) in milter_listeners {
            milter_endpoints.push(bound);
            tracker.spawn(milter::server::serve(
                listener,
                ctx.clone(),
                milter_settings.clone(),
                connections.clone(),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        let mut auth_policy_endpoints = Vec::new();
        if !auth_policy_listeners.is_empty() {
            let auth_policy = crate::auth_policy::AuthPolicy::new(
                ctx.clone(),
                crate::auth_policy::Settings {
                    api_key: auth_policy_key,
                    protocols: config.auth_policy_protocols.clone(),
                },
            );
            let router = Arc::new(auth_policy.routes(crate::http_server::Router::new()));
            for (listener, bound) in auth_policy_listeners {
                auth_policy_endpoints.push(bound);
                tracker.spawn(crate::http_server::serve(
                    "auth policy",
                    listener,
                    router.clone(),
                    connections.clone(),
                    shutdown.clone(),
                    tracker.clone(),
                ));
            }
        }
        let shared = Arc::new(Shared {
            listeners: Listeners {
                policy: policy_endpoints.iter().map(|e| e.to_string()).collect(),
                milter: milter_endpoints.iter().map(|e| e.to_string()).collect(),
                control: config.control.as_ref().map(|e| e.to_string()),
                auth_policy: auth_policy_endpoints
                    .iter()
                    .map(|e| e.to_string())
                    .collect(),
            },
            config: Arc::new(config),
            ctx,
            started: SystemTime::now(),
            spool: spool.clone(),
            reload_lock: Mutex::new(()),
            last_reload: std::sync::Mutex::new(None),
        });
        if let Some(listener) = control {
            tracing::info!(
                listener = shared.listeners.control.as_deref().unwrap_or_default(),
                "control socket listening"
            );
            tracker.spawn(crate::control::serve(
                listener,
                shared.clone(),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        if let Some(watch) = watch {
            tracker.spawn(run_policy_watch(watch, shared.clone(), shutdown.clone()));
        }
        Ok(Daemon {
            shared,
            shutdown,
            tracker,
            policy_endpoints,
            auth_policy_endpoints,
            milter_endpoints,
            audit_writer,
            sent_items,
        })
    }

    /// The Sent Items spool and its workers (`None` without `sent_items.store`).
    pub fn sent_items(&self) -> Option<&SentItems> {
        self.sent_items.as_ref()
    }

    /// The addresses the policy front end listens on (real ports when 0 was configured).
    pub fn policy_endpoints(&self) -> &[Endpoint] {
        &self.policy_endpoints
    }

    /// The addresses the auth policy endpoint listens on (real ports when 0 was configured).
    pub fn auth_policy_endpoints(&self) -> &[Endpoint] {
        &self.auth_policy_endpoints
    }

    /// The addresses the milter front end listens on (real ports when 0 was configured).
    pub fn milter_endpoints(&self) -> &[Endpoint] {
        &self.milter_endpoints
    }

    /// The shared context (policy, limiter, audit).
    pub fn context(&self) -> &Context {
        &self.shared.ctx
    }

    /// What the long-lived tasks share (status, reload).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Reloads the policy files (see [`Shared::reload`]).
    pub async fn reload(&self) -> ReloadOutcome {
        self.shared.reload().await
    }

    /// Reopens the audit log (SIGUSR1, after logrotate).
    pub async fn reopen_audit(&self) {
        self.shared.ctx.audit.reopen().await;
    }

    /// Stops accepting, lets connections answer what they are working on, releases every
    /// lease and writes every audit event before returning.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still busy after {SHUTDOWN_GRACE:?}; stopping anyway");
        }
        let Daemon {
            shared,
            audit_writer,
            ..
        } = self;
        // Close the queue explicitly: a task that outlived the grace period may still hold a
        // handle, and the writer must not wait for it.
        shared.ctx.audit.close().await;
        drop(shared);
        audit_writer.finish().await;
    }
}

impl Shared {
    /// Reloads the policy files. A broken set keeps the old policy, logs every error and
    /// audits `policy_reload_failed`; an unchanged set is a no-op.
    pub async fn reload(&self) -> ReloadOutcome {
        let _one_at_a_time = self.reload_lock.lock().await;
        let opts = self.config.policy_options();
        let dir = self.config.policies_dir.clone();
        let loaded = tokio::task::spawn_blocking(move || policy::load_dir(&dir, &opts))
            .await
            .unwrap_or_else(|e| Err(join_error(e)));
        match loaded {
            Ok(snapshot) if snapshot.version == self.ctx.policy.load().version => {
                tracing::debug!(version = %snapshot.version, "policy files unchanged");
                ReloadOutcome::Reloaded {
                    version: snapshot.version.clone(),
                    organizations: snapshot.organizations().len(),
                    mailboxes: snapshot.mailbox_count(),
                    unchanged: true,
                }
            }
            Ok(snapshot) => {
                self.record_reload(true, Vec::new());
                let outcome = ReloadOutcome::Reloaded {
                    version: snapshot.version.clone(),
                    organizations: snapshot.organizations().len(),
                    mailboxes: snapshot.mailbox_count(),
                    unchanged: false,
                };
                let mut ev = AuditEvent::new(EventKind::PolicyReloaded);
                ev.version = Some(snapshot.version.clone());
                tracing::info!(version = %snapshot.version, "policy reloaded");
                self.ctx.policy.store(Arc::new(snapshot));
                self.ctx.audit.record(ev).await;
                outcome
            }
            Err(errors) => {
                self.record_reload(false, errors.0.iter().map(|e| e.to_string()).collect());
                for e in &errors.0 {
                    tracing::error!("policy reload failed, keeping the old policy: {e}");
                }
                let mut ev = AuditEvent::new(EventKind::PolicyReloadFailed);
                ev.version = Some(self.ctx.policy.load().version.clone());
                ev.errors = Some(errors.0.iter().map(|e| e.to_string()).collect());
                self.ctx.audit.record(ev).await;
                ReloadOutcome::Failed(errors)
            }
        }
    }

    fn record_reload(&self, ok: bool, errors: Vec<String>) {
        let record = ReloadRecord {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            ok,
            errors,
        };
        if let Ok(mut last) = self.last_reload.lock() {
            *last = Some(record);
        }
    }

    /// The last reload attempt, if any.
    pub fn last_reload(&self) -> Option<ReloadRecord> {
        self.last_reload.lock().ok().and_then(|l| l.clone())
    }
}

/// How long the policy directory must be quiet before a reload: editors write in bursts.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);

/// A watch on the policy directory, registered before the policy is first loaded so that no
/// change between the load and the watch can be missed.
struct PolicyWatch {
    watcher: notify::RecommendedWatcher,
    dir: std::path::PathBuf,
    changes: tokio::sync::mpsc::UnboundedReceiver<()>,
}

/// Starts watching `dir` for changes to policy files (editors that save via rename are seen as
/// a create/rename in the directory). A watch that cannot start leaves SIGHUP and
/// `submitgate reload` working; the error is logged.
fn watch_policy_dir(dir: &std::path::Path) -> Option<PolicyWatch> {
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

/// Reloads after changes, debounced: a burst of writes is one reload.
async fn run_policy_watch(
    mut watch: PolicyWatch,
    shared: Arc<Shared>,
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
        shared.reload().await;
    }
    let _ = watch.watcher.unwatch(&watch.dir);
}

/// Starts the delivery workers from the daemon's spool into the configured store.
fn start_sent_items(
    spool: Spool,
    config: &Config,
    ctx: &Context,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<SentItems, StartError> {
    let si = &config.sent_items;
    let store =
        Store::from_settings(&si.store).map_err(|e| StartError::SentItems(e.to_string()))?;
    let delivery = worker::start(
        spool.clone(),
        Arc::new(store),
        ctx.audit.clone(),
        si.worker.clone(),
        shutdown.clone(),
        tracker,
    );
    Ok(SentItems { spool, delivery })
}

/// Binds every endpoint of one front end, logging each; the first failure names its endpoint.
async fn bind_all(
    endpoints: &[Endpoint],
    unix_mode: u32,
    front_end: &str,
) -> Result<Vec<(Listener, Endpoint)>, StartError> {
    let mut bound = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let listener = endpoint
            .bind(unix_mode)
            .await
            .map_err(|source| StartError::Bind {
                endpoint: endpoint.clone(),
                source,
            })?;
        let local = listener
            .local_endpoint()
            .unwrap_or_else(|_| endpoint.clone());
        tracing::info!(listener = %local, "{front_end} listening");
        bound.push((listener, local));
    }
    Ok(bound)
}

fn join_error(e: tokio::task::JoinError) -> PolicyErrors {
    PolicyErrors(vec![policy::PolicyError {
        file: "policies".into(),
        line: 0,
        column: 0,
        message: format!("policy loader failed: {e}"),
    }])
}
