//! Exchange Online's sending limits and outbound spam thresholds as policy keys: the
//! organization's values ([`Limits`], Exchange's defaults when absent), a mailbox's own values
//! ([`LimitOverrides`], absent inherits), and the checks of the `sending_limits:` and
//! `outbound_spam:` mappings with file:line:col. Pure data: counting and enforcing them is the
//! limiter's and the admission step's job.
//!
//! ```yaml
//! sending_limits:            # Exchange defaults when absent; 0 = no limit of this kind
//!   messages_per_minute: 30
//!   recipients_per_day: 10000
//!   recipients_per_message: 500
//! outbound_spam:             # 0 = no limit of this kind
//!   recipient_limit_external_per_hour: 0
//!   recipient_limit_internal_per_hour: 0
//!   recipient_limit_per_day: 0
//!   action_when_threshold_reached: block_user_for_today   # | block_user | alert
//! ```

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::load::FileCtx;
use crate::yaml::{ErrorKind, Node, Scalar};

/// Exchange Online: messages per minute a mailbox may submit.
pub const DEFAULT_MESSAGES_PER_MINUTE: u32 = 30;
/// Exchange Online: recipients per day (24 h sliding window) a mailbox may address.
pub const DEFAULT_RECIPIENTS_PER_DAY: u32 = 10_000;
/// Exchange Online: recipients of one message.
pub const DEFAULT_RECIPIENTS_PER_MESSAGE: u32 = 500;
/// The largest value any of these keys takes.
pub const MAX_LIMIT: i64 = 100_000_000;

/// What happens when a mailbox reaches an outbound spam threshold (Exchange's
/// `ActionWhenThresholdReached`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpamAction {
    /// Refuse the mailbox's submissions until the next midnight UTC (Exchange's default).
    BlockUserForToday,
    /// Refuse them until an administrator releases the mailbox.
    BlockUser,
    /// Let mail through and raise an alert only.
    Alert,
}

impl SpamAction {
    /// The policy-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SpamAction::BlockUserForToday => "block_user_for_today",
            SpamAction::BlockUser => "block_user",
            SpamAction::Alert => "alert",
        }
    }

    /// Whether reaching a threshold blocks the mailbox.
    pub fn blocks(self) -> bool {
        !matches!(self, SpamAction::Alert)
    }
}

impl fmt::Display for SpamAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SpamAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "block_user_for_today" => Ok(SpamAction::BlockUserForToday),
            "block_user" => Ok(SpamAction::BlockUser),
            "alert" => Ok(SpamAction::Alert),
            other => Err(format!(
                "{other:?}: expected block_user_for_today, block_user or alert"
            )),
        }
    }
}

/// The effective limits of a mailbox (or an organization's defaults). `0` means no limit of
/// that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub messages_per_minute: u32,
    pub recipients_per_day: u32,
    pub recipients_per_message: u32,
    pub recipient_limit_external_per_hour: u32,
    pub recipient_limit_internal_per_hour: u32,
    pub recipient_limit_per_day: u32,
    pub action_when_threshold_reached: SpamAction,
}

impl Default for Limits {
    /// Exchange Online's sending limits; no outbound spam thresholds (its policy's `0`).
    fn default() -> Self {
        Limits {
            messages_per_minute: DEFAULT_MESSAGES_PER_MINUTE,
            recipients_per_day: DEFAULT_RECIPIENTS_PER_DAY,
            recipients_per_message: DEFAULT_RECIPIENTS_PER_MESSAGE,
            recipient_limit_external_per_hour: 0,
            recipient_limit_internal_per_hour: 0,
            recipient_limit_per_day: 0,
            action_when_threshold_reached: SpamAction::BlockUserForToday,
        }
    }
}

impl Limits {
    /// No limit of any kind (every value 0): nothing needs counting.
    pub fn is_unlimited(&self) -> bool {
        self.messages_per_minute == 0 && !self.counts_recipients()
    }

    /// Whether any limit counts recipients over time (so accepted messages must be recorded).
    pub fn counts_recipients(&self) -> bool {
        self.recipients_per_day != 0
            || self.recipient_limit_external_per_hour != 0
            || self.recipient_limit_internal_per_hour != 0
            || self.recipient_limit_per_day != 0
    }
}

/// A mailbox's own limits: `None` inherits the organization's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct LimitOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_per_minute: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients_per_day: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients_per_message: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient_limit_external_per_hour: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient_limit_internal_per_hour: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient_limit_per_day: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_when_threshold_reached: Option<SpamAction>,
}

impl LimitOverrides {
    /// Whether every value inherits.
    pub fn is_empty(&self) -> bool {
        *self == LimitOverrides::default()
    }

    /// The effective limits: each value of the mailbox's own, else the organization's.
    pub fn apply(&self, org: &Limits) -> Limits {
        Limits {
            messages_per_minute: self.messages_per_minute.unwrap_or(org.messages_per_minute),
            recipients_per_day: self.recipients_per_day.unwrap_or(org.recipients_per_day),
            recipients_per_message: self
                .recipients_per_message
                .unwrap_or(org.recipients_per_message),
            recipient_limit_external_per_hour: self
                .recipient_limit_external_per_hour
                .unwrap_or(org.recipient_limit_external_per_hour),
            recipient_limit_internal_per_hour: self
                .recipient_limit_internal_per_hour
                .unwrap_or(org.recipient_limit_internal_per_hour),
            recipient_limit_per_day: self
                .recipient_limit_per_day
                .unwrap_or(org.recipient_limit_per_day),
            action_when_threshold_reached: self
                .action_when_threshold_reached
                .unwrap_or(org.action_when_threshold_reached),
        }
    }
}

/// The keys of `sending_limits:`.
pub(super) const SENDING_LIMITS_KEYS: &[&str] = &[
    "messages_per_minute",
    "recipients_per_day",
    "recipients_per_message",
];
/// The keys of `outbound_spam:`.
pub(super) const OUTBOUND_SPAM_KEYS: &[&str] = &[
    "recipient_limit_external_per_hour",
    "recipient_limit_internal_per_hour",
    "recipient_limit_per_day",
    "action_when_threshold_reached",
];

impl FileCtx<'_> {
    /// A limit: a whole number from 0 to [`MAX_LIMIT`], or null (`None`).
    fn opt_count(&mut self, node: &Node, key: &str) -> Option<u32> {
        match node.scalar() {
            Some(Scalar::Null) => None,
            Some(Scalar::Int(i)) if (0..=MAX_LIMIT).contains(&i) => u32::try_from(i).ok(),
            other => {
                let kind = match other {
                    Some(Scalar::Int(_)) => ErrorKind::InvalidValue,
                    _ => ErrorKind::WrongType,
                };
                self.error(
                    node.start,
                    kind,
                    format!(
                        "{key} must be a whole number from 0 (no limit) to {MAX_LIMIT} (or null), found {}",
                        node.describe()
                    ),
                );
                None
            }
        }
    }

    fn opt_action(&mut self, node: &Node, key: &str) -> Option<SpamAction> {
        match node.scalar() {
            Some(Scalar::Null) => None,
            Some(Scalar::Str(s)) => match s.parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.error(
                        node.start,
                        ErrorKind::InvalidValue,
                        format!(
                            "{key} must be block_user_for_today, block_user or alert, found {}",
                            crate::yaml::quote(s)
                        ),
                    );
                    None
                }
            },
            _ => {
                self.error(
                    node.start,
                    ErrorKind::WrongType,
                    format!(
                        "{key} must be block_user_for_today, block_user or alert, found {}",
                        node.describe()
                    ),
                );
                None
            }
        }
    }

    /// `sending_limits:` or `outbound_spam:` (chosen by `key`) into `out`: each value set is
    /// `Some`, each absent or null one stays as it was.
    pub(super) fn limit_section(&mut self, key: &str, node: &Node, out: &mut LimitOverrides) {
        if node.scalar() == Some(Scalar::Null) {
            return;
        }
        let known = if key == "sending_limits" {
            SENDING_LIMITS_KEYS
        } else {
            OUTBOUND_SPAM_KEYS
        };
        for (k, v) in self.entries(node, key, known).unwrap_or_default() {
            let what = format!("{key}.{k}");
            match k {
                "messages_per_minute" => out.messages_per_minute = self.opt_count(v, &what),
                "recipients_per_day" => out.recipients_per_day = self.opt_count(v, &what),
                "recipients_per_message" => out.recipients_per_message = self.opt_count(v, &what),
                "recipient_limit_external_per_hour" => {
                    out.recipient_limit_external_per_hour = self.opt_count(v, &what)
                }
                "recipient_limit_internal_per_hour" => {
                    out.recipient_limit_internal_per_hour = self.opt_count(v, &what)
                }
                "recipient_limit_per_day" => out.recipient_limit_per_day = self.opt_count(v, &what),
                _ => out.action_when_threshold_reached = self.opt_action(v, &what),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mailbox_value_wins_and_absent_inherits() {
        let org = Limits {
            recipient_limit_external_per_hour: 500,
            ..Limits::default()
        };
        let own = LimitOverrides {
            messages_per_minute: Some(5),
            action_when_threshold_reached: Some(SpamAction::Alert),
            ..LimitOverrides::default()
        };
        let eff = own.apply(&org);
        assert_eq!(eff.messages_per_minute, 5);
        assert_eq!(eff.recipients_per_day, DEFAULT_RECIPIENTS_PER_DAY);
        assert_eq!(eff.recipient_limit_external_per_hour, 500);
        assert_eq!(eff.action_when_threshold_reached, SpamAction::Alert);
        assert!(LimitOverrides::default().is_empty());
        assert!(!own.is_empty());
        assert_eq!(LimitOverrides::default().apply(&org), org);
    }

    #[test]
    fn zero_everywhere_is_unlimited() {
        assert!(!Limits::default().is_unlimited());
        let none = Limits {
            messages_per_minute: 0,
            recipients_per_day: 0,
            recipients_per_message: 0,
            ..Limits::default()
        };
        assert!(none.is_unlimited());
        assert!(!none.counts_recipients());
    }

    #[test]
    fn actions_parse_and_print() {
        for a in [
            SpamAction::BlockUserForToday,
            SpamAction::BlockUser,
            SpamAction::Alert,
        ] {
            assert_eq!(a.as_str().parse::<SpamAction>(), Ok(a));
        }
        assert!("block".parse::<SpamAction>().is_err());
        assert!(!SpamAction::Alert.blocks());
    }
}
