//! A mailbox's per-rule settings that few mailboxes set. They ride in the mailbox table's
//! side table of distinct rare combinations (`mailboxes::Rare`): an entry holds one `u32` index
//! there (none for most mailboxes), so a million mailboxes without such settings cost nothing
//! more than that index, whatever the number of rules. Each rule that gives mailboxes settings
//! of their own adds its field to [`Overrides`].

use super::authentication::AuthOverrides;
use super::limits::LimitOverrides;

/// Settings of a mailbox that few mailboxes set; `Default` inherits everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Overrides {
    /// Sending limits and outbound spam thresholds of its own (`sending_limits:`,
    /// `outbound_spam:` under the mailbox).
    pub limits: LimitOverrides,
    /// Authentication policy of its own (`allow_basic_auth_smtp`, `allow_legacy_tls_clients`,
    /// `require_tls` under the mailbox).
    pub auth: AuthOverrides,
}

impl Overrides {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty() && self.auth.is_empty()
    }
}
