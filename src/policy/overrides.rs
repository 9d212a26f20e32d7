//! A mailbox's rarely set settings, kept beside the compact mailbox table: an entry holds one
//! `u32` index into a `Vec<Overrides>` ([`NO_OVERRIDES`] when it has none), so that a million
//! mailboxes without such settings cost 4 bytes each, not the size of every rule's options.
//! Each rule that gives mailboxes settings of their own adds its field to [`Overrides`].

use super::limits::LimitOverrides;

/// The index of an entry without overrides.
pub const NO_OVERRIDES: u32 = u32::MAX;

/// Settings of a mailbox that few mailboxes set; `Default` inherits everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Overrides {
    /// Sending limits and outbound spam thresholds of its own (`sending_limits:`,
    /// `outbound_spam:` under the mailbox).
    pub limits: LimitOverrides,
}

impl Overrides {
    /// Whether nothing is overridden (the entry then stores [`NO_OVERRIDES`]).
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }
}
