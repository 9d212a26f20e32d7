//! What the front ends share: the policy in force, the session limiter, the audit log, the
//! reply texts and a few counters. `daemon` builds one [`Context`] and hands a clone to each
//! front end; front ends (milter, postfix_policy, auth_policy) and [`crate::admission`] import
//! this module, never `daemon`. Arrows: front ends → admission → policy / limiter / audit;
//! daemon → everything; never back up.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::audit::Audit;
use crate::limiter::Limiter;
use crate::policy::reload::PolicyHandle;
use crate::reply::Replies;

/// Counters that are not worth an audit line.
#[derive(Debug, Default)]
pub struct Stats {
    /// Policy requests and milter MAIL FROMs without a login (not submissions).
    pub unauthenticated: AtomicU64,
    /// Auth policy requests for protocols it does not check (IMAP logins and the like).
    pub auth_policy_other_protocol: AtomicU64,
}

/// What every front end shares: the current policy, the limiter, the audit log. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Context {
    pub policy: PolicyHandle,
    pub limiter: Limiter,
    pub audit: Audit,
    pub replies: Arc<Replies>,
    pub stats: Arc<Stats>,
}
