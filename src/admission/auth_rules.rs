//! The authentication rules (issue 16, Exchange's authentication policies for SMTP AUTH),
//! applied to what a front end saw of the session: first TLS — a session without TLS when the
//! mailbox's `require_tls` is on ([`Reason::TlsRequired`]), then TLS 1.0/1.1 when
//! `allow_legacy_tls_clients` is off ([`Reason::LegacyTls`]) — then the mechanism: Basic
//! authentication when `allow_basic_auth_smtp` is off ([`Reason::BasicAuthDisabled`]). Which
//! mechanisms are Basic and which protocols legacy is [`crate::auth_protocol`]'s to say.
//!
//! Each rule is enforced or only reported, as the organization's `tls_mode` / `basic_auth_mode`
//! say: a [`Finding`] carries its [`RuleMode`], and the admission step refuses on the first
//! enforced one, or lets the submission through and audits `would_refuse` for the others. Pure:
//! no I/O, no allocation, a handful of comparisons per decision.

use crate::auth_protocol::{AuthProtocol, TlsSeen};
use crate::policy::{AuthRules, RuleMode};
use crate::reason::Reason;

/// What the front end saw of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen<'a> {
    pub tls: TlsSeen<'a>,
    /// The SASL mechanism (`PLAIN`, `XOAUTH2`), when the front end was told.
    pub mechanism: Option<&'a str>,
}

/// A rule the session breaks, and whether that refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub reason: Reason,
    pub mode: RuleMode,
}

/// Every rule the session breaks: at most one TLS finding and one Basic authentication finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Findings {
    tls: Option<Finding>,
    basic: Option<Finding>,
}

impl Findings {
    /// No rule broken.
    pub const NONE: Findings = Findings {
        tls: None,
        basic: None,
    };

    /// The reason to refuse for: the first enforced finding (TLS before the mechanism, as a
    /// TLS handshake comes before AUTH).
    pub fn refusal(&self) -> Option<Reason> {
        self.all()
            .find(|f| f.mode == RuleMode::Enforce)
            .map(|f| f.reason)
    }

    /// The findings in `report_only` mode: what the submission would be refused for.
    pub fn would_refuse(&self) -> impl Iterator<Item = Reason> + '_ {
        self.all()
            .filter(|f| f.mode == RuleMode::ReportOnly)
            .map(|f| f.reason)
    }

    fn all(&self) -> impl Iterator<Item = Finding> + '_ {
        self.tls.iter().chain(self.basic.iter()).copied()
    }
}

/// The rules `rules` applied to what was `seen`.
pub fn check(rules: &AuthRules, seen: &Seen<'_>) -> Findings {
    let tls_reason = match seen.tls {
        TlsSeen::None if rules.require_tls => Some(Reason::TlsRequired),
        tls if !rules.allow_legacy_tls_clients && tls.is_legacy() => Some(Reason::LegacyTls),
        _ => None,
    };
    let basic = !rules.allow_basic_auth_smtp
        && matches!(
            AuthProtocol::of_mechanism(seen.mechanism),
            AuthProtocol::Basic | AuthProtocol::Unknown
        );
    Findings {
        tls: tls_reason.map(|reason| Finding {
            reason,
            mode: rules.tls_mode,
        }),
        basic: basic.then_some(Finding {
            reason: Reason::BasicAuthDisabled,
            mode: rules.basic_auth_mode,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(tls: Option<&'a str>, mechanism: Option<&'a str>) -> Seen<'a> {
        Seen {
            tls: TlsSeen::of_protocol(tls),
            mechanism,
        }
    }

    #[test]
    fn defaults_refuse_only_legacy_tls() {
        let rules = AuthRules::default();
        assert_eq!(
            check(&rules, &seen(Some("TLSv1.3"), Some("PLAIN"))),
            Findings::NONE
        );
        assert_eq!(check(&rules, &seen(None, Some("LOGIN"))), Findings::NONE);
        assert_eq!(check(&rules, &seen(None, None)), Findings::NONE);
        let f = check(&rules, &seen(Some("TLSv1.1"), Some("XOAUTH2")));
        assert_eq!(f.refusal(), Some(Reason::LegacyTls));
        assert_eq!(f.would_refuse().count(), 0);
        let allowed = AuthRules {
            allow_legacy_tls_clients: true,
            ..rules
        };
        assert_eq!(
            check(&allowed, &seen(Some("TLSv1"), Some("PLAIN"))),
            Findings::NONE
        );
    }

    #[test]
    fn basic_authentication_off_lets_oauth_and_other_through() {
        let rules = AuthRules {
            allow_basic_auth_smtp: false,
            ..AuthRules::default()
        };
        for m in ["PLAIN", "login", "CRAM-MD5", "SCRAM-SHA-256", "WHATEVER"] {
            let f = check(&rules, &seen(Some("TLSv1.3"), Some(m)));
            assert_eq!(f.refusal(), Some(Reason::BasicAuthDisabled), "{m}");
        }
        // No mechanism: nothing shows it is not Basic.
        assert_eq!(
            check(&rules, &seen(Some("TLSv1.3"), None)).refusal(),
            Some(Reason::BasicAuthDisabled)
        );
        for m in ["XOAUTH2", "OAUTHBEARER", "EXTERNAL", "GSSAPI"] {
            assert_eq!(
                check(&rules, &seen(Some("TLSv1.2"), Some(m))),
                Findings::NONE,
                "{m}"
            );
        }
    }

    #[test]
    fn tls_required_and_tls_first() {
        let rules = AuthRules {
            require_tls: true,
            allow_basic_auth_smtp: false,
            ..AuthRules::default()
        };
        let f = check(&rules, &seen(None, Some("PLAIN")));
        assert_eq!(f.refusal(), Some(Reason::TlsRequired));
        let f = check(&rules, &seen(Some("TLSv1.1"), Some("PLAIN")));
        assert_eq!(f.refusal(), Some(Reason::LegacyTls));
        assert_eq!(
            check(&rules, &seen(Some("TLSv1.2"), Some("XOAUTH2"))),
            Findings::NONE
        );
        // Dovecot says "secured" without a version: no TLS finding either way.
        let at_auth = Seen {
            tls: TlsSeen::Secured,
            mechanism: Some("XOAUTH2"),
        };
        assert_eq!(check(&rules, &at_auth), Findings::NONE);
        let unknown = Seen {
            tls: TlsSeen::Unknown,
            mechanism: Some("XOAUTH2"),
        };
        assert_eq!(check(&rules, &unknown), Findings::NONE);
    }

    #[test]
    fn report_only_rules_do_not_refuse() {
        let rules = AuthRules {
            allow_basic_auth_smtp: false,
            basic_auth_mode: RuleMode::ReportOnly,
            require_tls: true,
            tls_mode: RuleMode::ReportOnly,
            ..AuthRules::default()
        };
        let f = check(&rules, &seen(None, Some("PLAIN")));
        assert_eq!(f.refusal(), None);
        assert_eq!(
            f.would_refuse().collect::<Vec<_>>(),
            [Reason::TlsRequired, Reason::BasicAuthDisabled]
        );
        // An enforced rule still refuses; the reported one is not what the client is told.
        let mixed = AuthRules {
            basic_auth_mode: RuleMode::Enforce,
            ..rules
        };
        let f = check(&mixed, &seen(None, Some("LOGIN")));
        assert_eq!(f.refusal(), Some(Reason::BasicAuthDisabled));
        assert_eq!(f.would_refuse().collect::<Vec<_>>(), [Reason::TlsRequired]);
    }
}
