//! The organization and mailbox policy: YAML files in `policies/` (one organization each),
//! compiled into an immutable [`PolicySnapshot`], and the pure [`evaluate`] that turns a login
//! into a [`Decision`] (`effective_disabled = mailbox ?? organization`). No protocol knowledge
//! and no I/O beyond reading the policy files.

pub mod authentication;
mod compile;
mod evaluate;
mod files;
pub mod limits;
mod load;
mod mailboxes;
pub mod overrides;
mod table;

use table::OrgTable;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

pub use evaluate::{evaluate, Allowed, Decision, Submission};
pub mod editor;
pub mod reload;
pub use authentication::{AuthOverrides, AuthRules, AuthView, OrgAuth, RuleMode};
pub use files::{is_policy_file, version_of_dir};
pub use limits::{LimitOverrides, Limits, SpamAction};
pub use load::{
    load_dir, load_files, reload_dir, valid_address, valid_domain, LoadOptions, Reload,
};
pub use overrides::Overrides;

/// Default number of concurrent sessions per mailbox (Exchange Online's value).
pub const DEFAULT_MAX_SESSIONS: u32 = 3;
/// Default Sent Items folder name.
pub const DEFAULT_SENT_FOLDER: &str = "Sent Items";
/// The `domains` entry that makes an organization the fallback for every other domain.
pub const WILDCARD_DOMAIN: &str = "*";

/// One problem found while loading the policies, with its place.
pub type PolicyError = crate::yaml::LocatedError;

/// Every problem found in one load, in file order (the crate's one error-list type).
pub use crate::yaml::Errors as PolicyErrors;

/// Where the Sent Items copy goes, as the policy says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SentItems {
    pub enabled: bool,
    pub folder: String,
}

impl Default for SentItems {
    fn default() -> Self {
        SentItems {
            enabled: true,
            folder: DEFAULT_SENT_FOLDER.to_string(),
        }
    }
}

/// An organization (tenant): `Set-TransportConfig`'s scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    pub name: String,
    /// Lower-case domains; may include [`WILDCARD_DOMAIN`].
    pub domains: Vec<String>,
    pub smtp_client_authentication_disabled: bool,
    pub max_concurrent_sessions_per_mailbox: u32,
    pub sent_items: SentItems,
    /// Sending limits and outbound spam thresholds (`sending_limits:`, `outbound_spam:`).
    pub limits: Limits,
    /// Authentication policy: Basic authentication, legacy TLS, TLS required, and their modes.
    pub auth: OrgAuth,
    /// The file it was loaded from.
    pub file: PathBuf,
}

/// A mailbox's own settings (`Set-CASMailbox`); `None` inherits from the organization.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailboxSettings {
    pub smtp_client_authentication_disabled: Option<bool>,
    pub max_concurrent_sessions_per_mailbox: Option<u32>,
    pub sent_items_enabled: Option<bool>,
    pub sent_items_folder: Option<String>,
    /// The rarely set settings (sending limits, …), kept in the table's side table.
    /// The rarely set settings (authentication policy, …), kept in a side table.
    pub overrides: Overrides,
}

/// The compiled policy: what every decision reads. Immutable; a reload builds a new one and
/// swaps it in, so a session never sees a mix of two versions. The mailboxes live in one table
/// per organization (per file), shared with the snapshot before when the file did not change:
/// a lookup goes domain → organization → that organization's table.
#[derive(Debug, Clone)]
pub struct PolicySnapshot {
    orgs: Vec<Organization>,
    /// One per organization, in the same order as `orgs`.
    tables: Vec<Arc<OrgTable>>,
    by_domain: HashMap<String, usize>,
    wildcard: Option<usize>,
    mailbox_count: usize,
    default_domain: Option<String>,
    /// Short hash of the files' names and contents: equal policies have equal versions.
    pub version: String,
    pub loaded_at: SystemTime,
    /// The files this snapshot was built from.
    pub files: Vec<PathBuf>,
}

/// Where an effective value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Mailbox,
    Organization,
    /// No organization claims the domain: submissions are refused.
    UnknownOrganization,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Mailbox => "mailbox",
            Source::Organization => "organization",
            Source::UnknownOrganization => "unknown_organization",
        })
    }
}

/// Everything `submitgate mailbox get` shows for one address (the `Get-CASMailbox` analogue).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MailboxView {
    pub address: String,
    pub organization: Option<String>,
    /// Whether the mailbox has an entry of its own in the policy file.
    pub listed: bool,
    /// The mailbox's own value: `Some(true|false)` or `None` (`$null`, inherits).
    pub mailbox_smtp_client_authentication_disabled: Option<bool>,
    pub organization_smtp_client_authentication_disabled: Option<bool>,
    pub effective_smtp_client_authentication_disabled: bool,
    pub source: Source,
    pub mailbox_max_concurrent_sessions: Option<u32>,
    pub effective_max_concurrent_sessions: Option<u32>,
    pub sent_items: Option<SentItems>,
    /// The mailbox's own sending limits and outbound spam thresholds (absent inherit).
    pub mailbox_limits: LimitOverrides,
    /// The effective ones (none for an unknown organization).
    pub effective_limits: Option<Limits>,
    /// The mailbox's own authentication settings (absent inherit).
    pub mailbox_authentication: AuthOverrides,
    /// The effective authentication settings with their sources (none for an unknown
    /// organization).
    pub authentication: Option<AuthView>,
}

impl PolicySnapshot {
    /// An empty policy: every login is an unknown organization.
    pub fn empty() -> Self {
        PolicySnapshot {
            orgs: Vec::new(),
            tables: Vec::new(),
            by_domain: HashMap::new(),
            wildcard: None,
            mailbox_count: 0,
            default_domain: None,
            version: "empty".to_string(),
            loaded_at: SystemTime::now(),
            files: Vec::new(),
        }
    }

    /// All organizations, in file order.
    pub fn organizations(&self) -> &[Organization] {
        &self.orgs
    }

    /// The organization with this name (case-insensitive).
    pub fn organization(&self, name: &str) -> Option<&Organization> {
        self.orgs.iter().find(|o| o.name.eq_ignore_ascii_case(name))
    }

    /// Number of mailboxes with settings of their own.
    pub fn mailbox_count(&self) -> usize {
        self.mailbox_count
    }

    /// Bytes the mailbox tables hold: what a policy of many mailboxes costs in memory.
    pub fn mailbox_heap_bytes(&self) -> usize {
        self.tables.iter().map(|t| t.mailboxes.heap_bytes()).sum()
    }

    /// Turns a login into the normalized mailbox address: trimmed, lower-case, and completed
    /// with the default domain when it has no `@`.
    pub fn normalize(&self, login: &str) -> String {
        normalize_login(login, self.default_domain.as_deref())
    }

    /// The organization a normalized address belongs to: its domain's, else the `"*"` one.
    fn org_index_for(&self, address: &str) -> Option<usize> {
        let domain = table::domain_of(address);
        self.by_domain.get(domain).copied().or(self.wildcard)
    }

    /// The own settings of a normalized address, looked up in the table of organization
    /// `org` (the only one that can list it: a mailbox lies inside its organization's domains).
    fn own_settings(&self, org: usize, address: &str) -> Option<MailboxSettings> {
        let table = self.tables.get(org)?;
        table
            .mailboxes
            .get(address)
            .map(|e| table.mailboxes.settings(e))
    }

    /// Every mailbox with settings of its own: address, organization index, settings.
    fn all_mailboxes(&self) -> impl Iterator<Item = (&str, usize, MailboxSettings)> + '_ {
        self.tables.iter().enumerate().flat_map(|(i, t)| {
            t.mailboxes
                .iter()
                .map(move |(a, e)| (a, i, t.mailboxes.settings(e)))
        })
    }

    /// Whether a recipient domain (lower case) belongs to an organization of this policy: its
    /// recipients are internal for the outbound spam thresholds. The `"*"` fallback makes no
    /// domain internal.
    pub fn is_internal_domain(&self, domain: &str) -> bool {
        self.by_domain.contains_key(domain)
    }

    /// The `Get-CASMailbox` view of one address.
    pub fn describe(&self, login: &str) -> MailboxView {
        let address = self.normalize(login);
        let org_index = self.org_index_for(&address);
        let entry = org_index.and_then(|i| self.own_settings(i, &address));
        let org = org_index.map(|i| &self.orgs[i]);
        let own = entry
            .as_ref()
            .and_then(|e| e.smtp_client_authentication_disabled);
        let (effective, source) = match (own, org) {
            (Some(v), Some(_)) => (v, Source::Mailbox),
            (None, Some(o)) => (o.smtp_client_authentication_disabled, Source::Organization),
            (_, None) => (true, Source::UnknownOrganization),
        };
        let own_limit = entry
            .as_ref()
            .and_then(|e| e.max_concurrent_sessions_per_mailbox);
        MailboxView {
            listed: entry.is_some(),
            organization: org.map(|o| o.name.clone()),
            mailbox_smtp_client_authentication_disabled: own,
            organization_smtp_client_authentication_disabled: org
                .map(|o| o.smtp_client_authentication_disabled),
            effective_smtp_client_authentication_disabled: effective,
            source,
            mailbox_max_concurrent_sessions: own_limit,
            effective_max_concurrent_sessions: org
                .map(|o| own_limit.unwrap_or(o.max_concurrent_sessions_per_mailbox)),
            sent_items: org.map(|o| effective_sent_items(o, entry.as_ref())),
            mailbox_limits: entry
                .as_ref()
                .map(|e| e.overrides.limits)
                .unwrap_or_default(),
            effective_limits: org.map(|o| {
                entry
                    .as_ref()
                    .map(|e| e.overrides.limits)
                    .unwrap_or_default()
                    .apply(&o.limits)
            }),
            mailbox_authentication: entry.as_ref().map(|e| e.overrides.auth).unwrap_or_default(),
            authentication: org.map(|o| {
                entry
                    .as_ref()
                    .map(|e| e.overrides.auth)
                    .unwrap_or_default()
                    .view(&o.auth)
            }),
            address,
        }
    }

    /// The mailboxes with settings of their own that belong to `org`, sorted by address.
    pub fn mailboxes_of(&self, org: &str) -> Vec<(&str, MailboxSettings)> {
        let Some(table) = self
            .orgs
            .iter()
            .position(|o| o.name.eq_ignore_ascii_case(org))
            .and_then(|i| self.tables.get(i))
        else {
            return Vec::new();
        };
        let mut v: Vec<_> = table
            .mailboxes
            .iter()
            .map(|(a, e)| (a, table.mailboxes.settings(e)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }
}

fn effective_sent_items(org: &Organization, mailbox: Option<&MailboxSettings>) -> SentItems {
    SentItems {
        enabled: mailbox
            .and_then(|m| m.sent_items_enabled)
            .unwrap_or(org.sent_items.enabled),
        folder: mailbox
            .and_then(|m| m.sent_items_folder.clone())
            .unwrap_or_else(|| org.sent_items.folder.clone()),
    }
}

/// Normalizes a login or address: trimmed, ASCII lower-case, default domain appended when the
/// login has no `@`.
pub fn normalize_login(login: &str, default_domain: Option<&str>) -> String {
    let login = login.trim();
    let mut s = String::with_capacity(login.len() + default_domain.map_or(0, |d| d.len() + 1));
    s.push_str(login);
    s.make_ascii_lowercase();
    if !s.contains('@') {
        if let Some(d) = default_domain {
            s.push('@');
            s.push_str(&d.to_ascii_lowercase());
        }
    }
    s
}

#[cfg(test)]
mod tests;
