//! Authentication policies, as Exchange Online has them for SMTP AUTH: whether Basic
//! authentication may be used (`allow_basic_auth_smtp`, Exchange's `-AllowBasicAuthSmtp`),
//! whether TLS 1.0/1.1 clients may submit (`allow_legacy_tls_clients`, Exchange's
//! `-AllowLegacyTLSClients`) and whether a session without TLS may (`require_tls`). Each is set
//! on an organization (its default) and may be overridden per mailbox; the mailbox wins, an
//! absent key inherits. The organization also chooses, per rule, whether it is enforced or only
//! reported (`basic_auth_mode`, `tls_mode`: try before you enforce). The rules themselves are
//! applied by the admission step (`admission::auth_rules`); this module only holds the settings.

use serde::Serialize;

/// `allow_basic_auth_smtp` when neither the organization nor the mailbox sets it. Exchange
/// Online's new default (from the end of 2026) is `false`; submitgate keeps Basic authentication
/// allowed until an organization turns it off, so that upgrading refuses nobody.
pub const DEFAULT_ALLOW_BASIC_AUTH_SMTP: bool = true;
/// `allow_legacy_tls_clients` when nothing sets it: `false`, like Exchange.
pub const DEFAULT_ALLOW_LEGACY_TLS_CLIENTS: bool = false;
/// `require_tls` when nothing sets it: `false` (Postfix's `smtpd_tls_auth_only` is the usual
/// place to require TLS for every login).
pub const DEFAULT_REQUIRE_TLS: bool = false;

/// Whether a rule refuses, or lets the submission through and audits `would_refuse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleMode {
    #[default]
    Enforce,
    ReportOnly,
}

impl RuleMode {
    /// The name in policy files and output.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleMode::Enforce => "enforce",
            RuleMode::ReportOnly => "report_only",
        }
    }

    /// Parses a policy file's value.
    pub fn parse(s: &str) -> Option<RuleMode> {
        match s {
            "enforce" => Some(RuleMode::Enforce),
            "report_only" => Some(RuleMode::ReportOnly),
            _ => None,
        }
    }
}

/// An organization's authentication settings as its file has them (`None`: the key is not in
/// the file, the default applies). Also what `org set` changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OrgAuth {
    pub allow_basic_auth_smtp: Option<bool>,
    pub basic_auth_mode: Option<RuleMode>,
    pub allow_legacy_tls_clients: Option<bool>,
    pub require_tls: Option<bool>,
    /// The mode of both TLS rules (legacy TLS, TLS required).
    pub tls_mode: Option<RuleMode>,
}

impl OrgAuth {
    /// The organization's rules: its values, the defaults for what it leaves out.
    pub fn rules(&self) -> AuthRules {
        AuthRules {
            allow_basic_auth_smtp: self
                .allow_basic_auth_smtp
                .unwrap_or(DEFAULT_ALLOW_BASIC_AUTH_SMTP),
            basic_auth_mode: self.basic_auth_mode.unwrap_or_default(),
            allow_legacy_tls_clients: self
                .allow_legacy_tls_clients
                .unwrap_or(DEFAULT_ALLOW_LEGACY_TLS_CLIENTS),
            require_tls: self.require_tls.unwrap_or(DEFAULT_REQUIRE_TLS),
            tls_mode: self.tls_mode.unwrap_or_default(),
        }
    }

    /// The organization's view for `org get`: each value with where it comes from.
    pub fn view(&self) -> AuthView {
        let rules = self.rules();
        let src = |set: bool| {
            if set {
                ValueSource::Organization
            } else {
                ValueSource::Default
            }
        };
        AuthView {
            allow_basic_auth_smtp: Sourced::new(
                rules.allow_basic_auth_smtp,
                src(self.allow_basic_auth_smtp.is_some()),
            ),
            basic_auth_mode: Sourced::new(
                rules.basic_auth_mode,
                src(self.basic_auth_mode.is_some()),
            ),
            allow_legacy_tls_clients: Sourced::new(
                rules.allow_legacy_tls_clients,
                src(self.allow_legacy_tls_clients.is_some()),
            ),
            require_tls: Sourced::new(rules.require_tls, src(self.require_tls.is_some())),
            tls_mode: Sourced::new(rules.tls_mode, src(self.tls_mode.is_some())),
        }
    }
}

/// A mailbox's own authentication settings (`None` inherits from the organization).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct AuthOverrides {
    pub allow_basic_auth_smtp: Option<bool>,
    pub allow_legacy_tls_clients: Option<bool>,
    pub require_tls: Option<bool>,
}

impl AuthOverrides {
    /// Whether the mailbox sets none of them.
    pub fn is_empty(&self) -> bool {
        *self == AuthOverrides::default()
    }

    /// The rules for the mailbox: its own values over its organization's rules, key by key.
    pub fn apply(&self, org: &AuthRules) -> AuthRules {
        AuthRules {
            allow_basic_auth_smtp: self
                .allow_basic_auth_smtp
                .unwrap_or(org.allow_basic_auth_smtp),
            allow_legacy_tls_clients: self
                .allow_legacy_tls_clients
                .unwrap_or(org.allow_legacy_tls_clients),
            require_tls: self.require_tls.unwrap_or(org.require_tls),
            ..*org
        }
    }

    /// The mailbox's view for `mailbox get`: each effective value with where it comes from.
    pub fn view(&self, org: &OrgAuth) -> AuthView {
        let mut view = org.view();
        let own = |value: Option<bool>, inherited: Sourced<bool>| {
            value.map_or(inherited, |v| Sourced::new(v, ValueSource::Mailbox))
        };
        view.allow_basic_auth_smtp = own(self.allow_basic_auth_smtp, view.allow_basic_auth_smtp);
        view.allow_legacy_tls_clients =
            own(self.allow_legacy_tls_clients, view.allow_legacy_tls_clients);
        view.require_tls = own(self.require_tls, view.require_tls);
        view
    }
}

/// The authentication rules in force for one mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthRules {
    pub allow_basic_auth_smtp: bool,
    pub basic_auth_mode: RuleMode,
    pub allow_legacy_tls_clients: bool,
    pub require_tls: bool,
    pub tls_mode: RuleMode,
}

impl Default for AuthRules {
    fn default() -> Self {
        OrgAuth::default().rules()
    }
}

/// Where an effective value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueSource {
    /// The mailbox's own entry.
    Mailbox,
    /// The organization's file.
    Organization,
    /// Neither sets it: submitgate's default.
    Default,
}

impl ValueSource {
    /// The name shown by `org get` / `mailbox get`.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueSource::Mailbox => "mailbox",
            ValueSource::Organization => "organization",
            ValueSource::Default => "default",
        }
    }
}

/// A value and where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sourced<T> {
    pub value: T,
    pub source: ValueSource,
}

impl<T> Sourced<T> {
    fn new(value: T, source: ValueSource) -> Self {
        Sourced { value, source }
    }
}

/// The authentication settings as `org get` and `mailbox get` show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AuthView {
    pub allow_basic_auth_smtp: Sourced<bool>,
    pub basic_auth_mode: Sourced<RuleMode>,
    pub allow_legacy_tls_clients: Sourced<bool>,
    pub require_tls: Sourced<bool>,
    pub tls_mode: Sourced<RuleMode>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_over_organization_over_default() {
        let org = OrgAuth {
            allow_basic_auth_smtp: Some(false),
            basic_auth_mode: Some(RuleMode::ReportOnly),
            ..OrgAuth::default()
        };
        let rules = org.rules();
        assert!(!rules.allow_basic_auth_smtp);
        assert_eq!(rules.basic_auth_mode, RuleMode::ReportOnly);
        assert_eq!(
            rules.allow_legacy_tls_clients,
            DEFAULT_ALLOW_LEGACY_TLS_CLIENTS
        );
        assert_eq!(rules.tls_mode, RuleMode::Enforce);

        let own = AuthOverrides {
            allow_basic_auth_smtp: Some(true),
            require_tls: Some(true),
            ..AuthOverrides::default()
        };
        let mine = own.apply(&rules);
        assert!(mine.allow_basic_auth_smtp && mine.require_tls);
        assert_eq!(
            mine.basic_auth_mode,
            RuleMode::ReportOnly,
            "modes stay the organization's"
        );
        assert!(AuthOverrides::default().is_empty() && !own.is_empty());

        let view = own.view(&org);
        assert_eq!(view.allow_basic_auth_smtp.source, ValueSource::Mailbox);
        assert_eq!(view.basic_auth_mode.source, ValueSource::Organization);
        assert_eq!(view.allow_legacy_tls_clients.source, ValueSource::Default);
        assert_eq!(view.require_tls, Sourced::new(true, ValueSource::Mailbox));
        assert_eq!(
            serde_json::to_value(view.basic_auth_mode).unwrap(),
            serde_json::json!({"value": "report_only", "source": "organization"})
        );
    }

    #[test]
    fn modes_parse() {
        for m in [RuleMode::Enforce, RuleMode::ReportOnly] {
            assert_eq!(RuleMode::parse(m.as_str()), Some(m));
        }
        assert_eq!(RuleMode::parse("Enforce"), None);
    }
}
