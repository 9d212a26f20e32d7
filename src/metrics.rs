//! Prometheus metrics: the process-wide registry, the recording calls the other modules make,
//! and the `GET /metrics` route (Prometheus text format 0.0.4, served by [`crate::http_server`]
//! on the `metrics:` listeners).
//!
//! Two kinds of values:
//! - **Recorded** as things happen, by one-line calls from the modules that see them
//!   ([`decision`], [`DecisionTimer`], [`delivery`], [`policy_reload`], [`limiter_error`],
//!   [`alert`], [`would_refuse`]): counters and histograms in one process-wide [`Metrics`], so that a leaf
//!   (limiter, spool worker, policy reload) records without a handle passed down and without
//!   importing the configuration. The hot path (one decision) costs a few relaxed atomic adds:
//!   the counter of each (front end, decision, reason) is resolved once and kept in a slot, and
//!   the duration histogram is a fixed array of atomic buckets, never a lock.
//! - **Observed** at scrape time ([`Observed`]: sessions in use, mailboxes at their limit, spool
//!   depth, policy version, open connections), asked from the daemon's handles by the closure
//!   the daemon passes to [`service`], plus the process's own figures read from `/proc/self`.
//!
//! No label ever holds a mailbox, an organization or an address: cardinality is fixed by the
//! code (front ends × decisions × reasons, stores × results, alert kinds × results), whatever
//! the number of mailboxes. Counters are per process: several daemons started in one process
//! (tests) add into the same counters.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use http::{Method, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::audit::{FrontEnd, Outcome};
use crate::http_server::{HttpRequest, HttpResponse, Service};
use crate::reason::Reason;

/// The `Content-Type` of the answer: Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the decision duration buckets, in seconds: a decision takes tens of
/// microseconds in memory, up to the Redis timeout (50 ms by default) with Redis.
pub const DECISION_BUCKETS: [f64; 13] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Upper bounds of the Sent Items delivery lag buckets (spool commit → stored), in seconds:
/// well under a second normally, hours while a store is down (`max_age` is days).
pub const DELIVERY_LAG_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
];

/// The three front ends, in label order.
const FRONT_ENDS: [FrontEnd; 3] = [FrontEnd::Policy, FrontEnd::Milter, FrontEnd::AuthPolicy];
/// Decision slots per front end: allow, then reject and defer for every reason.
const DECISION_SLOTS: usize = 1 + 2 * Reason::ALL.len();

/// The `front_end` label of a front end (its audit name).
pub fn front_end_label(f: FrontEnd) -> &'static str {
    match f {
        FrontEnd::Policy => "policy",
        FrontEnd::Milter => "milter",
        FrontEnd::AuthPolicy => "auth_policy",
    }
}

fn front_end_index(f: FrontEnd) -> usize {
    match f {
        FrontEnd::Policy => 0,
        FrontEnd::Milter => 1,
        FrontEnd::AuthPolicy => 2,
    }
}

/// A histogram whose recording is lock-free: fixed bucket bounds (as integer nanoseconds, so
/// that an observation is integer compares and two relaxed atomic adds), counts per bucket,
/// the sum in nanoseconds. prometheus-client's own histogram takes a mutex per observation.
/// Clones share the counts.
#[derive(Debug, Clone)]
pub struct AtomicHistogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds_ns: Vec<u64>,
    bounds: Vec<f64>,
    /// One count per bound, plus the `+Inf` bucket; not cumulative.
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

impl AtomicHistogram {
    /// A histogram with these upper bounds (seconds, ascending).
    pub fn new(bounds: &[f64]) -> AtomicHistogram {
        AtomicHistogram(Arc::new(HistogramInner {
            bounds_ns: bounds.iter().map(|b| (b * 1e9) as u64).collect(),
            bounds: bounds.to_vec(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }))
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let h = &*self.0;
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = h
            .bounds_ns
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(h.bounds_ns.len());
        h.counts[i].fetch_add(1, Ordering::Relaxed);
        h.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &*self.0;
        // The encoder wants each bucket's own count (it writes them cumulated) and the last
        // bound `+Inf`.
        let mut total = 0;
        let mut buckets = Vec::with_capacity(h.counts.len());
        for (i, c) in h.counts.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            total += n;
            buckets.push((h.bounds.get(i).copied().unwrap_or(f64::INFINITY), n));
        }
        let sum = h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, total, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

type Labels2 = [(&'static str, &'static str); 2];
type Labels3 = [(&'static str, &'static str); 3];

/// The process-wide metrics (see the module documentation). Reach it through [`global`].
pub struct Metrics {
    registry: Registry,
    decisions: Family<Labels3, Counter>,
    decision_slots: [[OnceLock<Counter>; DECISION_SLOTS]; 3],
    decision_duration: [AtomicHistogram; 3],
    deliveries: Family<Labels2, Counter>,
    delivery_lag: AtomicHistogram,
    reloads: Family<[(&'static str, &'static str); 1], Counter>,
    limiter_errors: Family<[(&'static str, &'static str); 1], Counter>,
    alerts: Family<Labels2, Counter>,
    would_refuse: Family<Labels2, Counter>,
    /// What the scrape in progress observed (one scrape at a time: its lock is held from
    /// setting to encoding).
    observed: Arc<Mutex<Observed>>,
    /// One scrape at a time: held from setting `observed` to the end of the encoding.
    scrape: Mutex<()>,
}

/// The values of the last scrape's [`Observed`], encoded by [`ObservedCollector`].
#[derive(Debug, Default)]
struct ObservedCollector(Arc<Mutex<Observed>>);

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let sg = registry.sub_registry_with_prefix("submitgate");
        let decisions = Family::<Labels3, Counter>::default();
        sg.register(
            "decisions",
            "Submission decisions by front end, decision (allow, reject, defer) and reason \
             (none for allow); the auth_policy front end's are the checks at AUTH",
            decisions.clone(),
        );
        let histogram = || AtomicHistogram::new(&DECISION_BUCKETS);
        let decision_duration = [histogram(), histogram(), histogram()];
        sg.register_collector(Box::new(DurationCollector(decision_duration.clone())));
        let deliveries = Family::<Labels2, Counter>::default();
        sg.register(
            "sent_items_deliveries",
            "Sent Items delivery attempts by store and result (stored, retry, blocked: a \
             configuration problem holds the copy, failed: given up and moved to failed/)",
            deliveries.clone(),
        );
        let delivery_lag = AtomicHistogram::new(&DELIVERY_LAG_BUCKETS);
        sg.register(
            "sent_items_delivery_lag_seconds",
            "Time from the spool commit of a Sent Items copy to its storing",
            delivery_lag.clone(),
        );
        let reloads = Family::<[(&'static str, &'static str); 1], Counter>::default();
        sg.register(
            "policy_reloads",
            "Policy reloads by result (ok, failed: the old policy stays in force)",
            reloads.clone(),
        );
        let limiter_errors = Family::<[(&'static str, &'static str); 1], Counter>::default();
        sg.register(
            "limiter_errors",
            "Limiter backend calls that failed or timed out, by backend",
            limiter_errors.clone(),
        );
        let would_refuse = Family::<Labels2, Counter>::default();
        sg.register(
            "would_refuse",
            "Submissions (auth_policy: logins at AUTH) that an authentication rule in \
             report_only mode would have refused, let through, by front end and reason",
            would_refuse.clone(),
        );
        let alerts = Family::<Labels2, Counter>::default();
        sg.register(
            "alerts",
            "Alert events by kind and result (sent, failed, dropped: queue full, \
             rate_limited)",
            alerts.clone(),
        );
        let observed = Arc::new(Mutex::new(Observed::default()));
        sg.register_collector(Box::new(ObservedCollector(observed.clone())));
        let metrics = Metrics {
            registry,
            decisions,
            decision_slots: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            decision_duration,
            deliveries,
            delivery_lag,
            reloads,
            limiter_errors,
            alerts,
            would_refuse,
            observed,
            scrape: Mutex::new(()),
        };
        // The allow series exist from the start, so that rate() has a first sample.
        for f in FRONT_ENDS {
            let _ = metrics.decision_counter(f, Outcome::Allow, None);
        }
        metrics
    }

    fn decision_counter(&self, f: FrontEnd, outcome: Outcome, reason: Option<Reason>) -> &Counter {
        let r = reason.map_or(0, |r| r as usize);
        let slot = match (outcome, reason) {
            (Outcome::Allow, _) | (_, None) => 0,
            (Outcome::Reject, Some(_)) => 1 + r,
            (Outcome::Defer, Some(_)) => 1 + Reason::ALL.len() + r,
        };
        self.decision_slots[front_end_index(f)][slot].get_or_init(|| {
            let decision = match outcome {
                Outcome::Allow => "allow",
                Outcome::Reject => "reject",
                Outcome::Defer => "defer",
            };
            let reason = match (outcome, reason) {
                (Outcome::Allow, _) | (_, None) => "none",
                (_, Some(r)) => r.as_str(),
            };
            self.decisions
                .get_or_create(&[
                    ("front_end", front_end_label(f)),
                    ("decision", decision),
                    ("reason", reason),
                ])
                .clone()
        })
    }

    /// The text exposition of every metric, with the observed values of `observed`.
    pub fn render(&self, observed: Observed) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        *self.observed.lock().unwrap_or_else(|e| e.into_inner()) = observed;
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!("metrics encoding failed: {e}");
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }
}

/// One unlabelled gauge.
fn gauge_line(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for ObservedCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let o = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        gauge_line(
            &mut encoder,
            "sessions_in_use",
            "Session leases held, all mailboxes together (across the cluster with the redis \
             limiter).",
            o.sessions_in_use,
        )?;
        gauge_line(
            &mut encoder,
            "mailboxes_at_limit",
            "Mailboxes whose sessions in use have reached their limit.",
            o.mailboxes_at_limit,
        )?;
        if let Some(spool) = o.spool {
            let mut m = encoder.encode_descriptor(
                "sent_items_spool_entries",
                "Sent Items spool entries by state (pending: queued for delivery, failed: given \
                 up, in failed/).",
                None,
                MetricType::Gauge,
            )?;
            for (state, n) in [("pending", spool.pending), ("failed", spool.failed)] {
                ConstGauge::new(n).encode(m.encode_family(&[("state", state)])?)?;
            }
        }
        if let Some(version) = &o.policy_version {
            let mut m = encoder.encode_descriptor(
                "policy_version_info",
                "The policy version in force (the value is always 1).",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(1u64).encode(m.encode_family(&[("version", version.as_str())])?)?;
        }
        // 1 before any reload: the policy in force was loaded at start without error.
        gauge_line(
            &mut encoder,
            "policy_last_reload_successful",
            "Whether the last policy reload succeeded (0: the policy in force is older than \
             the files).",
            u64::from(o.last_reload_ok.unwrap_or(true)),
        )?;
        if !o.connections.is_empty() {
            let mut m = encoder.encode_descriptor(
                "connections",
                "Connections served now, by front end.",
                None,
                MetricType::Gauge,
            )?;
            for c in &o.connections {
                ConstGauge::new(c.open).encode(m.encode_family(&[("front_end", c.front_end)])?)?;
            }
            let mut m = encoder.encode_descriptor(
                "connections_refused",
                "Connections closed at once because their front end's cap was reached.",
                None,
                MetricType::Counter,
            )?;
            for c in &o.connections {
                ConstCounter::new(c.refused)
                    .encode(m.encode_family(&[("front_end", c.front_end)])?)?;
            }
        }
        ConstCounter::new(o.unauthenticated).encode(encoder.encode_descriptor(
            "unauthenticated_requests",
            "Policy requests and milter MAIL FROMs without a login (not submissions).",
            None,
            MetricType::Counter,
        )?)
    }
}

/// Encodes the per-front-end decision duration histograms.
#[derive(Debug)]
struct DurationCollector([AtomicHistogram; 3]);

impl Collector for DurationCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "decision_duration_seconds",
            "Time one admission decision took (policy, lease, audit queue), by front end.",
            None,
            MetricType::Histogram,
        )?;
        for (f, h) in FRONT_ENDS.iter().zip(&self.0) {
            let labels = [("front_end", front_end_label(*f))];
            h.encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

// ---- Recording calls (one line each at the call site). ----

/// Counts one submission decision (an audited `submission_decision`, or a check at AUTH).
pub fn decision(front_end: FrontEnd, outcome: Outcome, reason: Option<Reason>) {
    global().decision_counter(front_end, outcome, reason).inc();
}

/// Counts one `would_refuse` (an authentication rule in `report_only` mode; rare, so the
/// family's lookup per call is fine).
pub fn would_refuse(front_end: FrontEnd, reason: Reason) {
    global()
        .would_refuse
        .get_or_create(&[
            ("front_end", front_end_label(front_end)),
            ("reason", reason.as_str()),
        ])
        .inc();
}

/// Times one admission decision: started by [`DecisionTimer::start`], recorded into
/// `submitgate_decision_duration_seconds{front_end}` when dropped (whatever path returns).
#[must_use = "the decision is timed until the timer is dropped"]
pub struct DecisionTimer {
    front_end: FrontEnd,
    started: Instant,
}

impl DecisionTimer {
    /// Starts timing a decision of `front_end`.
    pub fn start(front_end: FrontEnd) -> DecisionTimer {
        DecisionTimer {
            front_end,
            started: Instant::now(),
        }
    }
}

impl Drop for DecisionTimer {
    fn drop(&mut self) {
        global().decision_duration[front_end_index(self.front_end)].observe(self.started.elapsed());
    }
}

/// What one Sent Items delivery attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryResult {
    /// In the Sent Items folder.
    Stored,
    /// A transient failure: retried later.
    Retry,
    /// A configuration problem holds the copy (not counted as an attempt).
    Blocked,
    /// Given up: moved to `failed/`.
    Failed,
}

impl DeliveryResult {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryResult::Stored => "stored",
            DeliveryResult::Retry => "retry",
            DeliveryResult::Blocked => "blocked",
            DeliveryResult::Failed => "failed",
        }
    }
}

/// Counts one delivery attempt of the store named `store` (`maildir`, `imap`).
pub fn delivery(store: &'static str, result: DeliveryResult) {
    global()
        .deliveries
        .get_or_create(&[("store", store), ("result", result.as_str())])
        .inc();
}

/// Records the lag of a stored copy: from its spool commit (`committed`) to now.
pub fn delivery_lag(committed: SystemTime) {
    let lag = SystemTime::now()
        .duration_since(committed)
        .unwrap_or_default();
    global().delivery_lag.observe(lag);
}

/// Counts one policy reload (`ok` false: the old policy stays in force).
pub fn policy_reload(ok: bool) {
    let result = if ok { "ok" } else { "failed" };
    global().reloads.get_or_create(&[("result", result)]).inc();
}

/// Counts one failed (or timed-out) call of the limiter backend `backend` (`redis`).
pub fn limiter_error(backend: &'static str) {
    global()
        .limiter_errors
        .get_or_create(&[("backend", backend)])
        .inc();
}

/// Counts one alert event of `kind` by what became of it (`sent`, `failed`, `dropped`,
/// `rate_limited`).
pub fn alert(kind: &'static str, result: &'static str) {
    global()
        .alerts
        .get_or_create(&[("kind", kind), ("result", result)])
        .inc();
}

// ---- Observed at scrape time. ----

/// Spool depth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolDepth {
    pub pending: u64,
    pub failed: u64,
}

/// One front end's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    /// `policy`, `milter`, `auth_policy`, `metrics`.
    pub front_end: &'static str,
    /// Served now.
    pub open: u64,
    /// Closed at once over the cap, since start.
    pub refused: u64,
}

/// What the daemon reports at each scrape (asked from its handles, never recorded on the hot
/// path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Session leases held, all mailboxes together.
    pub sessions_in_use: u64,
    /// Mailboxes with as many sessions as their limit.
    pub mailboxes_at_limit: u64,
    /// The spool, when the daemon has one.
    pub spool: Option<SpoolDepth>,
    /// The policy version in force.
    pub policy_version: Option<String>,
    /// Whether the last reload succeeded (`None` before the first reload).
    pub last_reload_ok: Option<bool>,
    /// Connections per listening front end.
    pub connections: Vec<Connections>,
    /// Requests without a login, since start.
    pub unauthenticated: u64,
}

/// How the route asks the daemon for the [`Observed`] values.
pub type Observe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Observed> + Send>> + Send + Sync>;

/// The HTTP service of a `metrics:` listener: `GET /metrics` answers the exposition; any
/// other path is 404, any other method 405.
pub fn service(observe: Observe) -> Service {
    Service::new(Method::GET, move |req: HttpRequest| {
        let observe = observe.clone();
        async move { respond(&req, observe).await }
    })
}

async fn respond(req: &HttpRequest, observe: Observe) -> HttpResponse {
    if req.path != "/metrics" {
        return crate::http_server::text(StatusCode::NOT_FOUND, "not found: try /metrics");
    }
    let observed = observe().await;
    let body = global().render(observed);
    crate::http_server::with_content_type(StatusCode::OK, CONTENT_TYPE, body.into_bytes())
}

// ---- The process, from /proc/self. ----

/// The standard `process_*` metrics, read from `/proc/self` at each scrape.
#[derive(Debug)]
struct ProcessCollector;

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: f64,
    pub threads: u64,
    pub open_fds: u64,
    pub max_fds: u64,
}

/// Reads this process's figures; `None` where `/proc` is not mounted.
pub fn process_stats() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let mut s = parse_stat(&stat)?;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| boot_time(&t));
    if let Some(boot) = boot {
        s.start_time_seconds += boot;
    } else {
        s.start_time_seconds = 0.0;
    }
    s.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    s.max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    Some(s)
}

/// The fields of `/proc/self/stat` (see proc(5)); the start time is since boot.
fn parse_stat(stat: &str) -> Option<ProcessStats> {
    // The command name (field 2) is in parentheses and may hold spaces: fields after the
    // last ')' start at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as u64;
    Some(ProcessStats {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        threads: field(20)?,
        start_time_seconds: field(22)? as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)?.saturating_mul(page),
        open_fds: 0,
        max_fds: 0,
    })
}

/// `btime` of `/proc/stat`: the boot time, seconds since the epoch.
fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|v| v as f64)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = process_stats() else {
            return Ok(());
        };
        let counter = ConstCounter::new(s.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            MetricType::Counter,
        )?)?;
        let gauges: [(&str, &str, f64); 6] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                s.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                s.virtual_bytes as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                s.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                s.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                s.max_fds as f64,
            ),
            ("process_threads", "Number of OS threads.", s.threads as f64),
        ];
        for (name, help, value) in gauges {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_in_declaration_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r}");
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let h = AtomicHistogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(2));
        assert_eq!(h.count(), 4);
        let mut registry = Registry::default();
        registry.register("x_seconds", "x", h.clone());
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("x_seconds_bucket{le=\"0.001\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.01\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_seconds_count 4\n"), "{out}");
        assert!(out.contains("x_seconds_sum 2.0065\n"), "{out}");
    }

    #[test]
    fn stat_line_with_spaces_in_the_name() {
        let line = "4242 (tokio rt (x)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 7 0 1000 \
                    123456789 2048 18446744073709551615";
        let s = parse_stat(line).unwrap();
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        assert_eq!(s.cpu_seconds, 300.0 / ticks);
        assert_eq!(s.threads, 7);
        assert_eq!(s.start_time_seconds, 1000.0 / ticks);
        assert_eq!(s.virtual_bytes, 123_456_789);
        assert_eq!(s.resident_bytes, 2048 * rustix::param::page_size() as u64);
        assert_eq!(boot_time("cpu 1 2\nbtime 1700000000\n"), Some(1.7e9));
    }

    #[test]
    fn this_process_is_read() {
        let s = process_stats().expect("/proc/self");
        assert!(s.resident_bytes > 1 << 20, "{s:?}");
        assert!(s.open_fds >= 3, "{s:?}");
        assert!(s.threads >= 1, "{s:?}");
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(s.start_time_seconds > now - 3600.0 && s.start_time_seconds <= now + 1.0);
    }

    #[test]
    fn render_has_every_family_and_the_observed_values() {
        decision(
            FrontEnd::Policy,
            Outcome::Reject,
            Some(Reason::MailboxDisabled),
        );
        drop(DecisionTimer::start(FrontEnd::Milter));
        delivery("maildir", DeliveryResult::Stored);
        delivery_lag(SystemTime::now() - Duration::from_millis(300));
        policy_reload(false);
        limiter_error("redis");
        alert("policy_reload_failed", "sent");
        let text = global().render(Observed {
            sessions_in_use: 7,
            mailboxes_at_limit: 2,
            spool: Some(SpoolDepth {
                pending: 3,
                failed: 1,
            }),
            policy_version: Some("abc123".into()),
            last_reload_ok: Some(false),
            connections: vec![Connections {
                front_end: "policy",
                open: 4,
                refused: 9,
            }],
            unauthenticated: 5,
        });
        for want in [
            "submitgate_decisions_total{front_end=\"policy\",decision=\"allow\",reason=\"none\"}",
            "submitgate_decisions_total{front_end=\"policy\",decision=\"reject\",reason=\"mailbox_disabled\"}",
            "submitgate_decision_duration_seconds_bucket{front_end=\"milter\",le=\"5e-05\"}",
            "submitgate_decision_duration_seconds_count{front_end=\"auth_policy\"}",
            "submitgate_sent_items_deliveries_total{store=\"maildir\",result=\"stored\"}",
            "submitgate_sent_items_delivery_lag_seconds_bucket{le=\"0.5\"}",
            "submitgate_policy_reloads_total{result=\"failed\"}",
            "submitgate_limiter_errors_total{backend=\"redis\"}",
            "submitgate_alerts_total{kind=\"policy_reload_failed\",result=\"sent\"}",
            "submitgate_sessions_in_use 7\n",
            "submitgate_mailboxes_at_limit 2\n",
            "submitgate_sent_items_spool_entries{state=\"pending\"} 3\n",
            "submitgate_sent_items_spool_entries{state=\"failed\"} 1\n",
            "submitgate_policy_version_info{version=\"abc123\"} 1\n",
            "submitgate_policy_last_reload_successful 0\n",
            "submitgate_connections{front_end=\"policy\"} 4\n",
            "submitgate_connections_refused_total{front_end=\"policy\"} 9\n",
            "submitgate_unauthenticated_requests_total 5\n",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
            "# TYPE submitgate_decision_duration_seconds histogram\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        // A later scrape without a spool drops the spool series.
        let text = global().render(Observed::default());
        assert!(
            !text.contains("submitgate_sent_items_spool_entries{"),
            "{text}"
        );
    }
}
