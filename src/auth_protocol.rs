//! What kind of authentication and TLS a submission used, as Exchange's authentication
//! policies see them: a SASL mechanism is **Basic** (the client proves it knows the account's
//! password), **OAuth** (a bearer token) or **other** (no password: Kerberos, a client
//! certificate); a TLS protocol is **legacy** (TLS 1.0/1.1, SSL) or current. The admission
//! step's authentication rules and the report both read these names here, so that "Basic" means
//! the same thing everywhere. A leaf: it imports nothing from the crate.
//!
//! Basic = `PLAIN`, `LOGIN`, `CRAM-MD5`, `DIGEST-MD5`, `SCRAM-*` (with or without `-PLUS`),
//! `NTLM`, `GSS-SPNEGO` (it may fall back to NTLM), `RPA`, `APOP`, **and every mechanism name
//! this list does not know**: a rule that retires Basic authentication fails closed on a name
//! it cannot place. The challenge-response ones (CRAM, DIGEST, SCRAM) never send the password
//! itself, but they still prove knowledge of a long-lived password (or a hash equivalent to it),
//! which is what retiring Basic authentication is about; Exchange draws the same line.
//! OAuth = `XOAUTH2`, `OAUTHBEARER`. Other = `EXTERNAL`, `GSSAPI`, `GS2-*`, `ANONYMOUS`, `OTP`,
//! `SKEY`: not refused by `allow_basic_auth_smtp: false`, counted as neither in the report.

use std::fmt;

use serde::Serialize;

/// The kind of SASL mechanism a submission authenticated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthProtocol {
    /// A password (or its equivalent) proves the identity: what `allow_basic_auth_smtp: false`
    /// refuses. Unrecognised mechanism names are Basic too.
    Basic,
    /// A bearer token: `XOAUTH2`, `OAUTHBEARER`.
    #[serde(rename = "oauth")]
    OAuth,
    /// Neither a password nor OAuth: Kerberos, a TLS client certificate, one-time passwords.
    Other,
    /// The front end was not told the mechanism (the milter without `{auth_type}`, Dovecot
    /// without `mechanism=%{mech}` in its request attributes). With Basic authentication
    /// disabled such a submission is refused: nothing shows it is not Basic.
    Unknown,
}

/// Mechanisms that are OAuth.
const OAUTH: &[&str] = &["XOAUTH2", "OAUTHBEARER"];
/// Mechanisms that use neither a password nor OAuth (exact names; `GS2-` is a prefix).
const OTHER: &[&str] = &["EXTERNAL", "GSSAPI", "ANONYMOUS", "OTP", "SKEY"];

impl AuthProtocol {
    /// The kind of the SASL mechanism `mechanism` (any case, surrounding white space ignored);
    /// `None` or an empty name is [`AuthProtocol::Unknown`].
    pub fn of_mechanism(mechanism: Option<&str>) -> AuthProtocol {
        let Some(m) = mechanism.map(str::trim).filter(|m| !m.is_empty()) else {
            return AuthProtocol::Unknown;
        };
        // Postfix and Dovecot send the IANA names in upper case: compare without allocating.
        let is = |names: &[&str]| names.iter().any(|n| n.eq_ignore_ascii_case(m));
        if is(OAUTH) {
            AuthProtocol::OAuth
        } else if is(OTHER) || starts_with_ignore_case(m, "GS2-") {
            AuthProtocol::Other
        } else {
            AuthProtocol::Basic
        }
    }

    /// The name used in audit logs, the report and the documentation.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthProtocol::Basic => "basic",
            AuthProtocol::OAuth => "oauth",
            AuthProtocol::Other => "other",
            AuthProtocol::Unknown => "unknown",
        }
    }
}

impl fmt::Display for AuthProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// What a front end knows about the session's TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSeen<'a> {
    /// The session is not encrypted, as far as the front end can tell (no `{tls_version}`
    /// macro, an empty `encryption_protocol`, Dovecot's `"tls": false`).
    None,
    /// Encrypted with this protocol (`TLSv1.2`, as OpenSSL names it).
    Protocol(&'a str),
    /// Encrypted, protocol not known (Dovecot's `"tls": true`: it is not told the version).
    Secured,
    /// Not known at all (Dovecot sent no `tls` field).
    Unknown,
}

impl<'a> TlsSeen<'a> {
    /// From a protocol name as Postfix passes it: empty or absent is no TLS.
    pub fn of_protocol(protocol: Option<&'a str>) -> TlsSeen<'a> {
        match protocol.map(str::trim) {
            Some(p) if !p.is_empty() => TlsSeen::Protocol(p),
            _ => TlsSeen::None,
        }
    }

    /// From Dovecot's `tls` flag.
    pub fn of_secured(secured: Option<bool>) -> TlsSeen<'static> {
        match secured {
            Some(true) => TlsSeen::Secured,
            Some(false) => TlsSeen::None,
            None => TlsSeen::Unknown,
        }
    }

    /// Whether this is a legacy protocol: SSLv2, SSLv3, TLS 1.0 (`TLSv1`, `TLSv1.0`) or TLS 1.1.
    /// Any other protocol name counts as current (OpenSSL names nothing older).
    pub fn is_legacy(self) -> bool {
        let TlsSeen::Protocol(p) = self else {
            return false;
        };
        ["TLSv1", "TLSv1.0", "TLSv1.1", "SSLv2", "SSLv3"]
            .iter()
            .any(|l| l.eq_ignore_ascii_case(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanisms_are_placed() {
        use AuthProtocol::*;
        for (m, want) in [
            ("PLAIN", Basic),
            ("plain", Basic),
            (" LOGIN ", Basic),
            ("CRAM-MD5", Basic),
            ("DIGEST-MD5", Basic),
            ("SCRAM-SHA-256", Basic),
            ("SCRAM-SHA-1-PLUS", Basic),
            ("NTLM", Basic),
            ("GSS-SPNEGO", Basic),
            ("X-SOMETHING-NEW", Basic),
            ("XOAUTH2", OAuth),
            ("xoauth2", OAuth),
            ("OAUTHBEARER", OAuth),
            ("EXTERNAL", Other),
            ("GSSAPI", Other),
            ("GS2-KRB5", Other),
            ("ANONYMOUS", Other),
            ("OTP", Other),
        ] {
            assert_eq!(AuthProtocol::of_mechanism(Some(m)), want, "{m}");
        }
        assert_eq!(AuthProtocol::of_mechanism(None), Unknown);
        assert_eq!(AuthProtocol::of_mechanism(Some("  ")), Unknown);
        assert_eq!(AuthProtocol::of_mechanism(Some("GS2")), Basic);
        assert_eq!(
            serde_json::to_string(&OAuth).unwrap(),
            format!("\"{}\"", OAuth.as_str())
        );
    }

    #[test]
    fn legacy_tls() {
        for p in ["TLSv1", "TLSv1.0", "TLSv1.1", "tlsv1.1", "SSLv3", "SSLv2"] {
            assert!(TlsSeen::of_protocol(Some(p)).is_legacy(), "{p}");
        }
        for p in ["TLSv1.2", "TLSv1.3", "TLSv1.4"] {
            assert!(!TlsSeen::of_protocol(Some(p)).is_legacy(), "{p}");
        }
        assert_eq!(TlsSeen::of_protocol(Some("")), TlsSeen::None);
        assert_eq!(TlsSeen::of_protocol(None), TlsSeen::None);
        assert!(!TlsSeen::Secured.is_legacy());
        assert_eq!(TlsSeen::of_secured(Some(false)), TlsSeen::None);
        assert_eq!(TlsSeen::of_secured(None), TlsSeen::Unknown);
    }
}
