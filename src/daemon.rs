//! Wires the parts together: loads the policy, opens the audit log, binds every listener and
//! runs the front ends until shutdown. [`Daemon`] is what `submitgate serve` runs and what the
//! integration tests start on port 0. The daemon only builds and wires: the front ends get a
//! [`Context`], the control socket its [`control::Handles`], the watcher a [`Reloader`]; none
//! of them imports this module.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{Audit, AuditWriter, FrontEnd};
use crate::config::{Config, LimiterConfig};
use crate::context::{Context, Stats};
use crate::control::{self, Listeners};
use crate::endpoint::cap::{self, ConnectionCap, ConnectionCaps};
use crate::endpoint::{Endpoint, Listener};
use crate::limiter::Limiter;
use crate::milter;
use crate::policy::reload::{self, PolicyHandle, ReloadOutcome, Reloader};
use crate::policy::PolicyErrors;
use crate::postfix_policy;
use crate::sent_items::spool::{Spool, SpoolError};
use crate::sent_items::{store::Store, worker};

/// How long shutdown waits for connections to finish their current request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("policy files are invalid:\n{0}")]
    Policy(PolicyErrors),
    /// The io error names the audit log file.
    #[error("{0}")]
    Audit(std::io::Error),
    #[error("Sent Items spool: {0}")]
    Spool(SpoolError),
    #[error("{0}")]
    Limiter(crate::limiter::redis::SetupError),
    /// The memory limiter's `state_dir` cannot be used (locked, unreadable, damaged).
    #[error("limiter state_dir: {0}")]
    LimiterState(String),
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

/// A running daemon.
pub struct Daemon {
    ctx: Context,
    reloader: Arc<Reloader>,
    control: Arc<control::Handles>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    policy_endpoints: Vec<Endpoint>,
    auth_policy_endpoints: Vec<Endpoint>,
    milter_endpoints: Vec<Endpoint>,
    metrics_endpoints: Vec<Endpoint>,
    audit_writer: AuditWriter,
    sent_items: Option<SentItems>,
    caps: FrontEndCaps,
    /// The alerter [`crate::alerts::raise`] uses while this daemon runs.
    alerts: Option<crate::alerts::Installed>,
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
            reload::watch(&config.policies_dir)
        } else {
            None
        };
        let snapshot = reload::load(&config.policies_dir, &config.policy_options())
            .await
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
            LimiterConfig::Memory { state_dir: None } => {
                tracing::info!(
                    "limiter in memory without state_dir: restricted senders and sending-limit \
                     counters do not survive a restart (set limiter.state_dir)"
                );
                Limiter::memory()
            }
            LimiterConfig::Memory {
                state_dir: Some(dir),
            } => {
                let dir = dir.clone();
                let backend = tokio::task::spawn_blocking(move || {
                    crate::limiter::memory::MemoryBackend::with_state(
                        &dir,
                        crate::limiter::now_secs(),
                    )
                })
                .await
                .map_err(|e| StartError::LimiterState(e.to_string()))?
                .map_err(|e| StartError::LimiterState(e.to_string()))?;
                tracing::info!(
                    state_dir = %backend.state_dir().map(|d| d.display().to_string()).unwrap_or_default(),
                    "limiter in memory; restricted senders and counters kept in state_dir"
                );
                Limiter::with_memory(backend)
            }
            LimiterConfig::Redis(settings) => {
                tracing::info!(
                    url = crate::limiter::redis::redact(&settings.url),
                    topology = ?settings.topology,
                    node_id = settings.node_id,
                    "session leases, sending-limit counters and restricted senders shared through redis"
                );
                Limiter::redis(
                    crate::limiter::redis::RedisBackend::new(settings.clone(), Some(audit.clone()))
                        .map_err(StartError::Limiter)?,
                )
            }
        };
        let ctx = Context {
            policy: PolicyHandle::new(snapshot),
            limiter,
            audit,
            replies: Arc::new(config.replies.clone()),
            stats: Arc::new(Stats::default()),
        };
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        // First, so that what goes wrong from here on can raise its alert.
        let alerts = config.alerts.clone().map(|settings| {
            tracing::info!(
                webhook = settings.webhook.as_deref(),
                command = settings.command.as_ref().map(|c| c.join(" ")),
                "alerts on"
            );
            crate::alerts::install(crate::alerts::start(
                settings,
                ctx.audit.clone(),
                shutdown.clone(),
                &tracker,
            ))
        });
        let caps = connection_caps(&config);
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
        let metrics_listeners =
            bind_all(&config.metrics_listeners, mode, "metrics (Prometheus)").await?;
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
            idle_timeout: config.policy_idle_timeout,
            read_timeout: config.policy_read_timeout,
        };
        let mut policy_endpoints = Vec::new();
        for (listener, bound) in policy_listeners {
            policy_endpoints.push(bound);
            tracker.spawn(postfix_policy::server::serve(
                listener,
                ctx.clone(),
                policy_settings.clone(),
                caps.policy.clone(),
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
                caps.milter.clone(),
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
            let service = Arc::new(auth_policy.service());
            for (listener, bound) in auth_policy_listeners {
                auth_policy_endpoints.push(bound);
                tracker.spawn(crate::http_server::serve(
                    "auth policy",
                    listener,
                    service.clone(),
                    caps.auth_policy.clone(),
                    shutdown.clone(),
                    tracker.clone(),
                ));
            }
        }
        let reloader = Arc::new(Reloader::new(
            ctx.policy.clone(),
            config.policies_dir.clone(),
            config.policy_options(),
            ctx.audit.clone(),
        ));
        let handles = Arc::new(control::Handles {
            policy: ctx.policy.clone(),
            limiter: ctx.limiter.clone(),
            audit: ctx.audit.clone(),
            reloader: reloader.clone(),
            listeners: Listeners {
                policy: policy_endpoints.iter().map(|e| e.to_string()).collect(),
                milter: milter_endpoints.iter().map(|e| e.to_string()).collect(),
                control: config.control.as_ref().map(|e| e.to_string()),
                auth_policy: auth_policy_endpoints
                    .iter()
                    .map(|e| e.to_string())
                    .collect(),
            },
            started: SystemTime::now(),
            spool: spool.clone(),
            store_problems: sent_items.as_ref().map(|s| s.delivery.problems().clone()),
        });
        if let Some(listener) = control {
            tracing::info!(
                listener = handles.listeners.control.as_deref().unwrap_or_default(),
                "control socket listening"
            );
            tracker.spawn(control::serve(
                listener,
                handles.clone(),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        if let Some(watch) = watch {
            tracker.spawn(reload::run_watch(watch, reloader.clone(), shutdown.clone()));
        }
        let mut metrics_endpoints = Vec::new();
        if !metrics_listeners.is_empty() {
            let service = Arc::new(crate::metrics::service(observe(
                handles.clone(),
                &caps,
                &config,
                ctx.stats.clone(),
            )));
            for (listener, bound) in metrics_listeners {
                metrics_endpoints.push(bound);
                tracker.spawn(crate::http_server::serve(
                    "metrics",
                    listener,
                    service.clone(),
                    caps.metrics.clone(),
                    shutdown.clone(),
                    tracker.clone(),
                ));
            }
        }
        Ok(Daemon {
            ctx,
            reloader,
            control: handles,
            shutdown,
            tracker,
            policy_endpoints,
            auth_policy_endpoints,
            milter_endpoints,
            metrics_endpoints,
            audit_writer,
            sent_items,
            caps,
            alerts,
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

    /// The addresses the Prometheus `/metrics` route listens on (real ports when 0 was configured).
    pub fn metrics_endpoints(&self) -> &[Endpoint] {
        &self.metrics_endpoints
    }

    /// A front end's connection cap: its limit, the connections it serves now, those it refused.
    pub fn connection_cap(&self, front_end: FrontEnd) -> &Arc<ConnectionCap> {
        match front_end {
            FrontEnd::Policy => self.caps.policy.own(),
            FrontEnd::Milter => self.caps.milter.own(),
            FrontEnd::AuthPolicy => self.caps.auth_policy.own(),
        }
    }

    /// The shared context (policy, limiter, audit).
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// What the control socket reads (status, reload).
    pub fn control_handles(&self) -> &Arc<control::Handles> {
        &self.control
    }

    /// Reloads the policy files (see [`Reloader::reload`]).
    pub async fn reload(&self) -> ReloadOutcome {
        self.reloader.reload().await
    }

    /// Reopens the audit log (SIGUSR1, after logrotate).
    pub async fn reopen_audit(&self) {
        self.ctx.audit.reopen().await;
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
            ctx,
            reloader,
            control,
            audit_writer,
            alerts,
            ..
        } = self;
        // The memory limiter's counters, for the next start (after every connection ended, so
        // that nothing is counted after the snapshot).
        let limiter = ctx.limiter.clone();
        match tokio::task::spawn_blocking(move || limiter.save_state()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(mailboxes = n, "sending-limit counters saved"),
            Ok(Err(e)) => tracing::error!("cannot save the sending-limit counters: {e}"),
            Err(e) => tracing::error!("cannot save the sending-limit counters: {e}"),
        }
        drop(alerts);
        // Close the queue explicitly: a task that outlived the grace period may still hold a
        // handle, and the writer must not wait for it.
        ctx.audit.close().await;
        drop((ctx, reloader, control));
        audit_writer.finish().await;
    }
}

/// The connection caps of the three front ends (and the shared one of an older configuration's
/// `max_connections`). Raises the soft `RLIMIT_NOFILE` to the hard limit first, and warns when
/// the caps of the front ends that listen could still need more descriptors than that.
struct FrontEndCaps {
    policy: ConnectionCaps,
    milter: ConnectionCaps,
    auth_policy: ConnectionCaps,
    /// The `/metrics` listeners: a few scrapers, never counted with the front ends.
    metrics: ConnectionCaps,
}

/// Connections the `/metrics` listeners serve at once (Prometheus keeps one per scraper).
const METRICS_MAX_CONNECTIONS: usize = 16;

/// What the `/metrics` route asks at each scrape: sessions and their limits, spool depth and
/// policy version (as `submitgate status` reads them), and the open connections per front end.
fn observe(
    handles: Arc<control::Handles>,
    caps: &FrontEndCaps,
    config: &Config,
    stats: Arc<Stats>,
) -> crate::metrics::Observe {
    let listening = |listeners: &[Endpoint], name: &'static str, caps: &ConnectionCaps| {
        (!listeners.is_empty()).then(|| (name, caps.own().clone()))
    };
    let fronts: Vec<(&'static str, Arc<ConnectionCap>)> = [
        listening(&config.policy_listeners, "policy", &caps.policy),
        listening(&config.milter_listeners, "milter", &caps.milter),
        listening(
            &config.auth_policy_listeners,
            "auth_policy",
            &caps.auth_policy,
        ),
        listening(&config.metrics_listeners, "metrics", &caps.metrics),
    ]
    .into_iter()
    .flatten()
    .collect();
    Arc::new(move || {
        let (handles, fronts, stats) = (handles.clone(), fronts.clone(), stats.clone());
        Box::pin(async move {
            let status = control::status(&handles).await;
            let sessions = status.sessions.iter().map(|s| u64::from(s.sessions)).sum();
            let at_limit = status
                .sessions
                .iter()
                .filter(|s| s.limit.is_some_and(|l| s.sessions >= l))
                .count() as u64;
            // The spool as `status` counted it (one directory read per scrape).
            let count = |v: &serde_json::Value, key: &str| v.get(key)?.as_u64();
            let spool = status.spool.as_ref().and_then(|v| {
                Some(crate::metrics::SpoolDepth {
                    pending: count(v, "pending")?,
                    failed: count(v, "failed")?,
                })
            });
            crate::metrics::Observed {
                sessions_in_use: sessions,
                mailboxes_at_limit: at_limit,
                spool,
                policy_version: Some(status.policy.version),
                last_reload_ok: status.last_reload.as_ref().map(|r| r.ok),
                connections: fronts
                    .iter()
                    .map(|(name, cap)| crate::metrics::Connections {
                        front_end: name,
                        open: cap.in_use() as u64,
                        refused: cap.refused(),
                    })
                    .collect(),
                unauthenticated: stats
                    .unauthenticated
                    .load(std::sync::atomic::Ordering::Relaxed),
            }
        })
    })
}

fn connection_caps(config: &Config) -> FrontEndCaps {
    let limits = config.connection_limits;
    let shared = limits.shared.map(|n| {
        tracing::warn!(
            "max_connections ({n}) caps all front ends together, so one front end can still take \
             every connection: set policy_max_connections, milter_max_connections and \
             auth_policy_max_connections instead"
        );
        ConnectionCap::new("all front ends", "max_connections", n)
    });
    let used = |listeners: &[Endpoint], n: usize| {
        if listeners.is_empty() {
            0
        } else {
            n as u64
        }
    };
    let needed = cap::fds_needed(
        used(&config.policy_listeners, limits.policy),
        used(&config.milter_listeners, limits.milter),
        used(&config.auth_policy_listeners, limits.auth_policy),
        limits.shared.map(|n| n as u64),
    );
    let nofile = cap::raise_nofile_limit();
    tracing::info!(
        soft = nofile.soft,
        hard = nofile.hard,
        needed,
        "file descriptor limit (RLIMIT_NOFILE)"
    );
    if let Some(warning) = cap::nofile_warning(needed, nofile) {
        tracing::warn!("{warning}");
    }
    let caps = |name, key, n| ConnectionCaps::new(ConnectionCap::new(name, key, n), shared.clone());
    FrontEndCaps {
        policy: caps("policy", "policy_max_connections", limits.policy),
        milter: caps("milter", "milter_max_connections", limits.milter),
        auth_policy: caps(
            "auth policy",
            "auth_policy_max_connections",
            limits.auth_policy,
        ),
        metrics: ConnectionCaps::new(
            ConnectionCap::new("metrics", "the metrics listener", METRICS_MAX_CONNECTIONS),
            None,
        ),
    }
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
