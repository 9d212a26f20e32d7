//! `sent_items:`: the spool directory, the store (Maildir or IMAP, see [`super::imap`]) and
//! the delivery workers, built into [`SentItemsConfig`] with the store's and the workers' own
//! settings types.

use std::path::PathBuf;
use std::time::Duration;

use super::check::{Checker, DURATION_EXAMPLES};
use super::raw::{RawRetry, RawSentItems, RawStore};
use super::SentItemsConfig;
use crate::sent_items::store::{self, DEFAULT_MAILDIR_ROOT};
use crate::sent_items::worker::{RetrySettings, Settings};

/// Checks the section; a spool in `./spool`, a Maildir store and no delivery when absent.
pub(super) fn check(ck: &mut Checker, raw: Option<&RawSentItems>) -> SentItemsConfig {
    let spool = raw
        .and_then(|s| s.spool.clone())
        .unwrap_or_else(|| PathBuf::from("./spool"));
    let store = match raw.and_then(|s| s.store.as_ref()) {
        None => store::Settings::default(),
        Some(st) => store_settings(ck, st),
    };
    let defaults = Settings::default();
    let workers = ck.number_at(
        &["sent_items", "workers"],
        raw.and_then(|s| s.workers),
        (1, 256),
        defaults.workers,
    );
    let max_age = ck.duration_at(
        &["sent_items", "max_age"],
        raw.and_then(|s| s.max_age.as_deref()),
        defaults.max_age,
        Duration::from_secs(60),
        DURATION_EXAMPLES,
    );
    let scan_interval = ck.duration_at(
        &["sent_items", "scan_interval"],
        raw.and_then(|s| s.scan_interval.as_deref()),
        defaults.scan_interval,
        Duration::from_millis(100),
        DURATION_EXAMPLES,
    );
    let retry = match raw.and_then(|s| s.retry.as_ref()) {
        None => RetrySettings::default(),
        Some(r) => retry(ck, r),
    };
    SentItemsConfig {
        spool,
        store,
        deliver: raw.is_some_and(|s| s.store.is_some()),
        worker: Settings {
            workers,
            max_age,
            retry,
            scan_interval,
            ..defaults
        },
    }
}

/// `sent_items.retry`: the backoff range and the refused-login limit.
fn retry(ck: &mut Checker, r: &RawRetry) -> RetrySettings {
    let defaults = RetrySettings::default();
    let initial = ck.duration_at(
        &["sent_items", "retry", "initial"],
        r.initial.as_deref(),
        defaults.initial,
        Duration::from_millis(10),
        DURATION_EXAMPLES,
    );
    let max = ck.duration_at(
        &["sent_items", "retry", "max"],
        r.max.as_deref(),
        defaults.max,
        Duration::from_millis(10),
        DURATION_EXAMPLES,
    );
    if max < initial {
        ck.err(
            &["sent_items", "retry", "max"],
            format!(
                "{} is shorter than retry.initial ({})",
                humantime::format_duration(max),
                humantime::format_duration(initial)
            ),
        );
    }
    let auth_failure_attempts = ck.number_at(
        &["sent_items", "retry", "auth_failure_attempts"],
        r.auth_failure_attempts,
        (1, 1000),
        defaults.auth_failure_attempts,
    );
    RetrySettings {
        initial,
        max,
        auth_failure_attempts,
    }
}

/// `sent_items.store`: the backend and only its own keys.
fn store_settings(ck: &mut Checker, st: &RawStore) -> store::Settings {
    match st.backend.as_str() {
        "maildir" => {
            let root = st
                .root
                .clone()
                .unwrap_or_else(|| DEFAULT_MAILDIR_ROOT.to_string());
            if let Err(e) = check_maildir_root(&root) {
                ck.err(&["sent_items", "store", "root"], e);
            }
            for key in st.imap_keys() {
                ck.err(
                    &["sent_items", "store", key],
                    "applies to the imap backend only",
                );
            }
            store::Settings::Maildir { root }
        }
        "imap" => {
            if st.root.is_some() {
                ck.err(
                    &["sent_items", "store", "root"],
                    "applies to the maildir backend only",
                );
            }
            store::Settings::Imap(super::imap::check(ck, st))
        }
        other => {
            ck.err(
                &["sent_items", "store", "backend"],
                format!("unknown backend {other:?}; expected maildir or imap"),
            );
            store::Settings::default()
        }
    }
}

/// A Maildir root template may only use the known placeholders, and must use one that tells
/// mailboxes apart (otherwise every mailbox would share one Sent Items folder).
fn check_maildir_root(root: &str) -> Result<(), String> {
    let mut rest = root;
    let mut distinguishes = false;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return Err(format!("{root:?}: unclosed '{{'"));
        };
        match &rest[open + 1..open + close] {
            "local" | "mailbox" => distinguishes = true,
            "domain" => {}
            other => {
                return Err(format!(
                    "{root:?}: unknown placeholder {{{other}}}; use {{domain}}, {{local}} or {{mailbox}}"
                ))
            }
        }
        rest = &rest[open + close + 1..];
    }
    if !distinguishes {
        return Err(format!(
            "{root:?}: must contain {{local}} or {{mailbox}} so that each mailbox has its own folder"
        ));
    }
    Ok(())
}
