//! submitgate: Exchange Online's SMTP AUTH submission controls for Postfix.
//!
//! The rule (docs/architecture.md has the module map and the why; `tests/architecture.rs`
//! checks it): arrows point from the front ends → [`admission`] → policy/limiter/audit, from
//! [`daemon`], [`config`] and the CLI → everything, never back up. Leaf modules never read the
//! configuration: each owns its settings type and `config` builds it.
//!
//! - Front ends (protocol in, protocol out): [`milter`] (`smtpd_milters`), [`postfix_policy`]
//!   (`check_policy_service`), [`auth_policy`] (Dovecot's auth policy, refusal at AUTH), and
//!   [`control`] (`submitgate status` / `reload`).
//! - [`admission`]: the one decision step every front end asks (policy, lease, audit event).
//! - [`context`]: what the front ends share (policy handle, limiter, audit, replies, stats).
//! - [`policy`]: organization/mailbox policy files → [`policy::PolicySnapshot`]; pure
//!   [`policy::evaluate`]; [`policy::reload`]: the snapshot handle, reloads and the watcher.
//! - [`limiter`]: per-mailbox session leases (memory or Redis).
//! - [`audit`]: typed audit events and their JSON-lines writer.
//! - [`metrics`]: Prometheus counters, histograms and the `/metrics` route; [`alerts`]: alert
//!   events to a webhook or a command, rate-limited, audited, never blocking a decision.
//! - [`sent_items`]: the durable spool of Sent Items copies, its workers and stores.
//! - [`reason`]: the one `Reason` enum; [`reply`]: SMTP replies and their defaults.
//! - [`auth_protocol`]: which SASL mechanisms are Basic or OAuth, which TLS protocols legacy.
//! - [`text`]: control characters, escaped log text and bounded table cells.
//! - [`logging`]: the operational log (stderr, journal, syslog or a file; text or JSON).
//! - [`report`]: the offline `submitgate report` tool: audit logs → the SMTP AUTH clients report.
//! - [`endpoint`], [`http_server`], [`fsutil`], [`yaml`]: listeners in Postfix notation, the
//!   HTTP server under the auth policy endpoint, durable file steps, YAML with positions.
//! - [`config`]: `submitgate.yaml`, checked as a whole; [`daemon`]: wires the parts together.

#![forbid(unsafe_code)]

pub mod admission;
pub mod alerts;
pub mod audit;
pub mod auth_policy;
pub mod auth_protocol;
pub mod config;
pub mod context;
pub mod control;
pub mod daemon;
pub mod endpoint;
pub mod fsutil;
pub mod http_server;
pub mod limiter;
pub mod logging;
pub mod metrics;
pub mod milter;
pub mod policy;
pub mod postfix_policy;
pub mod reason;
pub mod reply;
pub mod report;
pub mod sent_items;
pub mod text;
pub mod yaml;
