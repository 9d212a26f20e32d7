//! Where a Sent Items copy ends up: the [`SentItemsStore`] interface and its two backends,
//! [`maildir`] (files written straight into the mailbox's Maildir++ folder) and [`imap`]
//! (`APPEND` over IMAP, logged in on the mailbox's behalf). [`Store`] opens the one its
//! [`Settings`] name. A store only stores; retries and bookkeeping belong to the workers.

pub mod imap;
pub mod maildir;
pub mod problems;

use std::future::Future;
use std::sync::Arc;

use crate::sent_items::spool::{EntryId, EntryMeta, Message};

/// One copy to store.
#[derive(Debug)]
pub struct SentCopy<'a> {
    /// The spool entry (idempotent stores derive their file name from it).
    pub id: EntryId,
    /// Mailbox, folder, Message-ID, submission time, …
    pub meta: &'a EntryMeta,
    /// The message bytes, exactly as captured.
    pub message: Message,
    /// An earlier attempt may have stored this copy: look for it before storing again.
    pub maybe_stored: bool,
}

/// What a successful delivery reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    /// `(UIDVALIDITY, UID)` from the server's `APPENDUID` (IMAP with UIDPLUS), or of the copy
    /// found by the search.
    pub appenduid: Option<(u32, u32)>,
    /// The copy was already there (an earlier attempt stored it); nothing new was written.
    pub already_stored: bool,
}

/// How a failed delivery should be treated (README, "Sent Items copies", has the table of
/// which error is which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Connection refused or lost, timeout, `BYE`, a `NO` that may clear, a full disk: try
    /// again later, with backoff, until `max_age`.
    Transient,
    /// The server refused this mailbox's login (`AUTHORIZATIONFAILED`: unknown mailbox, the
    /// master user may not log in as it): retried a few times, in case an operator is fixing
    /// it, then given up.
    Auth,
    /// This copy can never be stored (a mailbox name that cannot be a path or a login, a name
    /// too long for the file system, a message the server cannot take): given up at once.
    Permanent,
    /// Something the operator must fix, in front of every copy of a store or of a mailbox (a
    /// certificate refused, the master login refused, an unwritable Maildir root): the copy
    /// stays queued and the attempt does not count, the cause is logged once and shown by
    /// `submitgate status` until a delivery succeeds again.
    Configuration,
}

/// Which deliveries a configuration problem stands in the way of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemScope {
    /// Every delivery through the store (TLS, master login, secret file): any successful
    /// delivery shows it fixed.
    Store,
    /// The deliveries of the mailboxes that met it (a Maildir directory, a folder's rights): a
    /// successful delivery to one of them shows it fixed.
    Mailboxes,
}

/// A failed delivery: its kind, what happened (naming the server or path), and whether the
/// copy may nevertheless be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    /// How the workers treat it.
    pub kind: FailureKind,
    /// What happened, naming the server or path (never a secret).
    pub message: String,
    /// After this attempt the copy may be in the store (e.g. the connection was lost after the
    /// `APPEND` went out); the next attempt must look for it first.
    pub outcome_unknown: bool,
    /// For [`FailureKind::Configuration`]: the problem in words shared by every copy it stops
    /// (no queue id or per-message detail), so that it is logged and listed once.
    pub cause: Option<String>,
    /// For [`FailureKind::Configuration`]: what a success must touch to show it fixed.
    pub scope: ProblemScope,
}

impl StoreError {
    fn of(kind: FailureKind, message: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            message: message.into(),
            outcome_unknown: false,
            cause: None,
            scope: ProblemScope::Store,
        }
    }

    /// A transient failure after which the copy is known not to be stored.
    pub fn transient(message: impl Into<String>) -> StoreError {
        StoreError::of(FailureKind::Transient, message)
    }

    /// A permanent failure.
    pub fn permanent(message: impl Into<String>) -> StoreError {
        StoreError::of(FailureKind::Permanent, message)
    }

    /// A refused login of one mailbox.
    pub fn auth(message: impl Into<String>) -> StoreError {
        StoreError::of(FailureKind::Auth, message)
    }

    /// A configuration problem in front of every delivery through the store; `message` is
    /// also its cause, so it must not name the copy.
    pub fn configuration(message: impl Into<String>) -> StoreError {
        let message = message.into();
        StoreError {
            cause: Some(message.clone()),
            ..StoreError::of(FailureKind::Configuration, message)
        }
    }

    /// A configuration problem in front of the deliveries of some mailboxes: `cause` is the
    /// part shared by all of them (a directory), `message` this attempt's error.
    pub fn configuration_for_mailboxes(
        cause: impl Into<String>,
        message: impl Into<String>,
    ) -> StoreError {
        StoreError {
            cause: Some(cause.into()),
            scope: ProblemScope::Mailboxes,
            ..StoreError::of(FailureKind::Configuration, message)
        }
    }

    /// The text that identifies the problem across copies (the message when none was given).
    pub fn cause(&self) -> &str {
        self.cause.as_deref().unwrap_or(&self.message)
    }

    /// Marks the outcome as unknown (or keeps it known) for the next attempt.
    pub fn maybe_stored(mut self, maybe: bool) -> StoreError {
        self.outcome_unknown = maybe;
        self
    }
}

/// A place that takes Sent Items copies.
pub trait SentItemsStore: Send + Sync + 'static {
    /// Short name for logs and audit (`maildir`, `imap`).
    fn name(&self) -> &'static str;

    /// True when storing the same entry twice leaves a single copy, so that the workers need
    /// not record an attempt before making it.
    fn idempotent(&self) -> bool;

    /// True when a delivery is file work that blocks its thread (Maildir) rather than network
    /// I/O: the workers then run the attempts on threads of their own that may block, and
    /// the spool reads and the copy take no hand-off to tokio's blocking pool and back.
    fn blocking_io(&self) -> bool {
        false
    }

    /// Stores one copy, marked seen, into `copy.meta.folder` of `copy.meta.mailbox`.
    fn deliver(
        &self,
        copy: SentCopy<'_>,
    ) -> impl Future<Output = Result<Stored, StoreError>> + Send;

    /// Releases what the store keeps between deliveries (idle IMAP connections that have
    /// outlived their idle time; everything when `all`).
    fn release_idle(&self, all: bool) -> impl Future<Output = ()> + Send;
}

/// The store's checked settings (built by the configuration's `sent_items.store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settings {
    /// Maildir++ under a root template with `{domain}`, `{local}`, `{mailbox}`.
    Maildir {
        /// The template, checked to contain `{local}` or `{mailbox}`.
        root: String,
    },
    /// IMAP APPEND into the mailbox, logged in on its behalf.
    Imap(imap::Settings),
}

/// The Maildir root used when none is configured.
pub const DEFAULT_MAILDIR_ROOT: &str = "./mail/{domain}/{local}/Maildir";

impl Default for Settings {
    fn default() -> Self {
        Settings::Maildir {
            root: DEFAULT_MAILDIR_ROOT.to_string(),
        }
    }
}

/// The configured backend.
#[derive(Debug, Clone)]
pub enum Store {
    /// `backend: maildir`.
    Maildir(Arc<maildir::MaildirStore>),
    /// `backend: imap`.
    Imap(Arc<imap::ImapStore>),
}

impl Store {
    /// Builds the configured store. Reads the IMAP CA file and master secret once, so that a
    /// mistake shows at start-up rather than at the first delivery.
    pub fn from_settings(settings: &Settings) -> Result<Store, StoreError> {
        Ok(match settings {
            Settings::Maildir { root } => {
                Store::Maildir(Arc::new(maildir::MaildirStore::new(root.clone())))
            }
            Settings::Imap(imap) => Store::Imap(Arc::new(imap::ImapStore::new(imap.clone())?)),
        })
    }
}

impl SentItemsStore for Store {
    fn name(&self) -> &'static str {
        match self {
            Store::Maildir(s) => s.name(),
            Store::Imap(s) => s.name(),
        }
    }

    fn idempotent(&self) -> bool {
        match self {
            Store::Maildir(s) => s.idempotent(),
            Store::Imap(s) => s.idempotent(),
        }
    }

    fn blocking_io(&self) -> bool {
        match self {
            Store::Maildir(s) => s.blocking_io(),
            Store::Imap(s) => s.blocking_io(),
        }
    }

    async fn deliver(&self, copy: SentCopy<'_>) -> Result<Stored, StoreError> {
        match self {
            Store::Maildir(s) => s.deliver(copy).await,
            Store::Imap(s) => s.deliver(copy).await,
        }
    }

    async fn release_idle(&self, all: bool) {
        match self {
            Store::Maildir(s) => s.release_idle(all).await,
            Store::Imap(s) => s.release_idle(all).await,
        }
    }
}

/// Splits a mailbox address into local part and domain (the domain is empty without `@`).
pub fn split_mailbox(mailbox: &str) -> (&str, &str) {
    mailbox.rsplit_once('@').unwrap_or((mailbox, ""))
}

/// A folder name in IMAP's modified UTF-7 (RFC 3501 5.1.3), as servers without `UTF8=ACCEPT`
/// expect it: printable ASCII stays (`&` becomes `&-`), anything else is written as
/// `&<modified base64 of UTF-16BE>-`.
pub fn modified_utf7(name: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";
    fn flush(out: &mut String, units: &mut Vec<u16>) {
        if units.is_empty() {
            return;
        }
        let bytes: Vec<u8> = units.iter().flat_map(|u| u.to_be_bytes()).collect();
        out.push('&');
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            let sextets = chunk.len() + 1;
            for i in 0..sextets {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out.push('-');
        units.clear();
    }
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut out, &mut pending);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut out, &mut pending);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_in_modified_utf7() {
        assert_eq!(modified_utf7("Sent Items"), "Sent Items");
        assert_eq!(modified_utf7("R&D"), "R&-D");
        // RFC 3501's own example.
        assert_eq!(
            modified_utf7("~peter/mail/台北/日本語"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        assert_eq!(
            modified_utf7("Éléments envoyés"),
            "&AMk-l&AOk-ments envoy&AOk-s"
        );
        assert_eq!(modified_utf7("Gesendete Objekte"), "Gesendete Objekte");
        assert_eq!(modified_utf7("😀"), "&2D3eAA-");
    }
}
