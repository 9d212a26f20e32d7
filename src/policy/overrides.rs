//! A mailbox's rarely set settings, which each rule that gives mailboxes settings of their own
//! extends with its field: they live in the mailbox table's side table of distinct combinations
//! (`Rare` in [`super::mailboxes`]), which an entry points into with one `u32`, so that a
//! million mailboxes without such settings cost nothing more than their fixed entry.

use super::limits::LimitOverrides;

/// Settings of a mailbox that few mailboxes set; `Default` inherits everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Overrides {
    /// Sending limits and outbound spam thresholds of its own (`sending_limits:`,
    /// `outbound_spam:` under the mailbox).
    pub limits: LimitOverrides,
}

impl Overrides {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }
}
