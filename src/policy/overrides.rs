//! A mailbox's rarely set settings, kept beside the compact mailbox table: an entry holds one
//! `u32` index into a `Vec<Overrides>` ([`NO_OVERRIDES`] when it has none), so that a million
//! mailboxes without such settings cost 4 bytes each, not the size of every rule's options.
//! Each rule that gives mailboxes settings of their own adds its field to [`Overrides`].

use super::authentication::AuthOverrides;

/// The index of an entry without overrides.
pub const NO_OVERRIDES: u32 = u32::MAX;

/// Settings of a mailbox that few mailboxes set; `Default` inherits everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Overrides {
    /// Authentication policy of its own (`allow_basic_auth_smtp`, `allow_legacy_tls_clients`,
    /// `require_tls` under the mailbox).
    pub auth: AuthOverrides,
}

impl Overrides {
    /// Whether nothing is overridden (the entry then stores [`NO_OVERRIDES`]).
    pub fn is_empty(&self) -> bool {
        self.auth.is_empty()
    }
}
