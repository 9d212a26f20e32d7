//! submitgate: Exchange Online's SMTP AUTH submission controls for Postfix.
//!
//! Module map (arrows point from front ends → admission → policy/limiter/audit, from daemon and
//! the CLI → everything, never back up):
//! - [`admission`]: the one decision step every front end asks (policy, lease, audit event).
//! - [`context`]: what the front ends share (policy handle, limiter, audit, replies, stats).
//! - [`config`]: the daemon's YAML configuration, validated as a whole.
//! - [`endpoint`]: listener addresses in Postfix notation, bound and accepted.
//! - [`fsutil`]: durable file steps (temp file → fsync → rename → directory fsync), `flock`,
//!   the host name.
//! - [`yaml`]: YAML parsed into a tree that keeps line and column, for precise errors.
//! - [`policy`]: organization/mailbox policy files → [`policy::PolicySnapshot`]; pure
//!   [`policy::evaluate`]; [`policy::reload`]: the snapshot handle, reloads and the watcher.
//! - [`postfix_policy`]: the Postfix policy delegation front end (`codec` + `server`).
//! - [`milter`]: the milter front end (`codec` + `session` + `server`).
//! - [`limiter`]: per-mailbox session leases.
//! - [`sent_items`]: the durable spool of Sent Items copies.
//! - [`audit`]: typed audit events and their JSON-lines writer.
//! - [`report`]: the offline `submitgate report` tool: audit logs → the SMTP AUTH clients report.
//! - [`auth_policy`]: the Dovecot auth policy endpoint (HTTP): refusal at the AUTH command.
//! - [`http_server`]: the HTTP/1.1 server the auth policy endpoint (and later metrics) runs on.
//! - [`control`]: the control socket behind `submitgate status` and `submitgate reload`.
//! - [`daemon`]: wires the parts together and runs until shutdown.

#![forbid(unsafe_code)]

pub mod admission;
pub mod audit;
pub mod auth_policy;
pub mod config;
pub mod context;
pub mod control;
pub mod daemon;
pub mod endpoint;
pub mod fsutil;
pub mod http_server;
pub mod limiter;
pub mod milter;
pub mod policy;
pub mod postfix_policy;
pub mod reason;
pub mod reply;
pub mod report;
pub mod sent_items;
pub mod yaml;
