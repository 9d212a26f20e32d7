//! The Dovecot auth policy endpoint: refusing a disabled mailbox at the AUTH command itself.
//! Dovecot POSTs `?command=allow` (JSON in, `{"status","msg"}` out) and `?command=report`
//! (audited as `auth_succeeded` / `auth_failed` / `auth_refused_by_policy`). Decisions come from
//! the admission step's lease-free entry point ([`admission::check_login`]); nothing is counted
//! and no state outlives a request. Arrows: this front end → [`crate::admission`] → policy /
//! audit, through [`crate::context`]; never `daemon`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{Method, StatusCode};
use serde_json::{json, Map, Value};

use crate::admission::{self, LoginCheck, LoginFacts};
use crate::audit::{AuditEvent, EventKind, FrontEnd};
use crate::context::Context;
use crate::http_server::{self as web, HttpRequest, HttpResponse, Service};
use crate::reason::Reason;

/// The header Dovecot sends the shared secret in (`auth_policy_server_api_header`).
pub const API_KEY_HEADER: &str = "x-api-key";

/// Why the API key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    #[error("auth_policy_api_key_file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("auth_policy_api_key_file {path}: the key must be one line of printable ASCII without spaces")]
    Invalid { path: PathBuf },
}

/// The shared secret Dovecot must send. Its `Debug` never shows it.
#[derive(Clone)]
pub struct ApiKey(Vec<u8>);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl ApiKey {
    /// Reads the key: the file's content without surrounding whitespace (a trailing newline is
    /// usual); it must be printable ASCII without spaces, since it travels in a header.
    pub fn read(path: &Path) -> Result<ApiKey, ApiKeyError> {
        let text = std::fs::read(path).map_err(|source| ApiKeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        ApiKey::new(text.trim_ascii()).ok_or_else(|| ApiKeyError::Invalid {
            path: path.to_path_buf(),
        })
    }

    /// A key from its bytes; `None` unless 1 to 1024 printable ASCII characters without spaces.
    pub fn new(key: &[u8]) -> Option<ApiKey> {
        let ok =
            !key.is_empty() && key.len() <= 1024 && key.iter().all(|b| (0x21..0x7f).contains(b));
        ok.then(|| ApiKey(key.to_vec()))
    }

    /// Compares in time independent of where the first difference is.
    fn matches(&self, presented: &[u8]) -> bool {
        // Dovecot copies everything after the `:` of auth_policy_server_api_header, so the
        // value may come with a leading space.
        let presented = presented.trim_ascii();
        if presented.len() != self.0.len() {
            return false;
        }
        presented
            .iter()
            .zip(&self.0)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Settings of the auth policy front end.
#[derive(Debug, Clone)]
pub struct Settings {
    /// When set, requests must carry it in `X-API-Key`.
    pub api_key: Option<ApiKey>,
    /// The Dovecot protocols whose logins are checked and audited (lower-case).
    pub protocols: Vec<String>,
}

/// What Dovecot asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// May this login go ahead? (before and/or after the password check)
    Allow,
    /// How a login ended (no answer expected beyond HTTP 200).
    Report,
}

/// Why a request cannot be answered (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no command in the query string (expected ?command=allow or ?command=report)")]
    MissingCommand,
    #[error("unknown command {0:?} (expected allow or report)")]
    UnknownCommand(String),
    #[error("body is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("body is not a JSON object")]
    NotObject,
}

impl Command {
    /// The command from the query string.
    pub fn from_query(value: Option<&str>) -> Result<Command, RequestError> {
        match value {
            None => Err(RequestError::MissingCommand),
            Some("allow") => Ok(Command::Allow),
            Some("report") => Ok(Command::Report),
            Some(other) => Err(RequestError::UnknownCommand(
                other.chars().take(40).collect(),
            )),
        }
    }
}

/// The fields of a Dovecot auth policy request that submitgate uses. Dovecot builds the body
/// from `auth_policy_request_attributes` (every value a string), then adds `tls` and, for
/// reports, `success` and `policy_reject` (booleans). Unknown fields are ignored, and values of
/// an unexpected type are read as well as they can be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRequest {
    /// `login` (`%{requested_username}`), as the client gave it.
    pub login: Option<String>,
    /// `remote` (`%{rip}`).
    pub remote: Option<String>,
    /// `protocol` (`%s`): `smtp` for Postfix's SASL, `imap`, `pop3`, `submission`…
    pub protocol: Option<String>,
    /// `mechanism` or `mech` (`%{mech}`), when the operator adds it to the attributes.
    pub mechanism: Option<String>,
    /// `session_id` (`%{session}`).
    pub session_id: Option<String>,
    /// `tls`: Dovecot's own flag, true only when its client says `secured=tls`. Postfix says
    /// plain `secured` over TLS, so for Postfix's logins this is always `false`.
    pub tls: Option<bool>,
    /// `secured` (`%{secured}`, when the operator adds it to the attributes): `"secured"` when
    /// the client (Postfix) says the login came over TLS, empty otherwise. What the TLS rules
    /// read at AUTH; without it they are left to the MAIL-stage front ends.
    pub secured: Option<bool>,
    /// `success` (report only).
    pub success: Option<bool>,
    /// `policy_reject` (report only): the login was refused by the policy server.
    pub policy_reject: Option<bool>,
}

impl PolicyRequest {
    /// Parses a request body. Invalid UTF-8 is replaced rather than refused, so that an odd
    /// byte in a login cannot turn a refusal into Dovecot's "policy server failed" path.
    pub fn parse(body: &[u8]) -> Result<PolicyRequest, RequestError> {
        let value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) if e.is_syntax() || e.is_eof() => match std::str::from_utf8(body) {
                Ok(_) => return Err(RequestError::NotJson(e)),
                Err(_) => serde_json::from_str(&String::from_utf8_lossy(body))
                    .map_err(RequestError::NotJson)?,
            },
            Err(e) => return Err(RequestError::NotJson(e)),
        };
        let Value::Object(obj) = value else {
            return Err(RequestError::NotObject);
        };
        Ok(PolicyRequest {
            login: login_field(&obj),
            remote: string_field(&obj, &["remote"]),
            protocol: string_field(&obj, &["protocol"]).map(|p| p.to_ascii_lowercase()),
            mechanism: string_field(&obj, &["mechanism", "mech"]),
            session_id: string_field(&obj, &["session_id"]),
            tls: bool_field(&obj, "tls"),
            secured: secured_field(&obj),
            success: bool_field(&obj, "success"),
            policy_reject: bool_field(&obj, "policy_reject"),
        })
    }
}

/// The first of `keys` present as a non-empty string (numbers and booleans are taken as text).
fn string_field(obj: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| match obj.get(*k)? {
        Value::String(s) => {
            let s = s.trim();
            (!s.is_empty()).then(|| s.to_string())
        }
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    })
}

/// `login` exactly as sent (absent or `""` = no login): white space or a control character
/// around it is for the admission step to refuse, not for this parser to trim away.
fn login_field(obj: &Map<String, Value>) -> Option<String> {
    match obj.get("login")? {
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        _ => string_field(obj, &["login"]),
    }
}

/// `secured` as Dovecot expands `%{secured}`: `"secured"` (or any word but `no`/`false`/`0`)
/// when the login is secured, `""` when not; absent = not asked for.
fn secured_field(obj: &Map<String, Value>) -> Option<bool> {
    match obj.get("secured")? {
        Value::String(s) => {
            let s = s.trim();
            Some(
                !(s.is_empty()
                    || ["no", "false", "0"]
                        .iter()
                        .any(|n| s.eq_ignore_ascii_case(n))),
            )
        }
        _ => bool_field(obj, "secured"),
    }
}

/// A boolean, also from `"true"`/`"yes"`/`"1"` and numbers.
fn bool_field(obj: &Map<String, Value>, key: &str) -> Option<bool> {
    match obj.get(key)? {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|f| f != 0.0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Some(true),
            "false" | "no" | "0" | "" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// The answer to `command=allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `{"status":0}`.
    Allow,
    /// `{"status":-1,"msg":TEXT}`: Dovecot fails the login and Postfix sends
    /// `535 5.7.8 Error: authentication failed: TEXT`.
    Refuse {
        msg: String,
        reason: Reason,
        mailbox: String,
    },
}

impl Answer {
    /// The JSON body Dovecot reads.
    pub fn to_json(&self) -> Value {
        match self {
            Answer::Allow => json!({"status": 0}),
            Answer::Refuse { msg, .. } => json!({"status": -1, "msg": msg}),
        }
    }
}

/// The endpoint: the daemon's shared context and the front end's settings.
#[derive(Clone)]
pub struct AuthPolicy {
    ctx: Context,
    settings: Arc<Settings>,
}

impl AuthPolicy {
    /// An endpoint over the daemon's context.
    pub fn new(ctx: Context, settings: Settings) -> Self {
        AuthPolicy {
            ctx,
            settings: Arc::new(settings),
        }
    }

    /// The HTTP service: `POST` on any path, since Dovecot posts to whatever URL
    /// `auth_policy_server_url` names.
    pub fn service(self) -> Service {
        Service::new(Method::POST, move |req| {
            let this = self.clone();
            async move { this.handle(req).await }
        })
    }

    /// Answers one HTTP request.
    pub async fn handle(&self, req: HttpRequest) -> HttpResponse {
        if let Some(key) = &self.settings.api_key {
            let presented = req.headers.get(API_KEY_HEADER);
            if !presented.is_some_and(|v| key.matches(v.as_bytes())) {
                let why = if presented.is_some() {
                    "wrong X-API-Key"
                } else {
                    "missing X-API-Key"
                };
                tracing::warn!(peer = req.peer, "auth policy request refused: {why}");
                let mut ev = AuditEvent::new(EventKind::AuthPolicyUnauthorized);
                ev.front_end = Some(FrontEnd::AuthPolicy);
                ev.client_address = req.peer_ip().or_else(|| Some(req.peer.clone()));
                ev.message = Some(why.to_string());
                self.ctx.audit.record(ev).await;
                return web::text(StatusCode::UNAUTHORIZED, why);
            }
        }
        let parsed = Command::from_query(req.query_param("command"))
            .and_then(|c| PolicyRequest::parse(&req.body).map(|r| (c, r)));
        let (command, request) = match parsed {
            Ok(x) => x,
            Err(e) => {
                tracing::info!(peer = req.peer, "bad auth policy request: {e}");
                return web::text(StatusCode::BAD_REQUEST, &e.to_string());
            }
        };
        match command {
            Command::Allow => web::json(StatusCode::OK, &self.allow(&request).to_json()),
            Command::Report => {
                self.report(&request).await;
                web::json(StatusCode::OK, &Answer::Allow.to_json())
            }
        }
    }

    /// Whether the request's protocol is one this endpoint checks.
    fn checks(&self, r: &PolicyRequest) -> bool {
        r.protocol
            .as_deref()
            .is_some_and(|p| self.settings.protocols.iter().any(|c| c == p))
    }

    /// The decision for `command=allow`: a refusal only for a configured protocol and a login
    /// the policy disables; everything else (other protocols, no login) is allowed.
    pub fn allow(&self, r: &PolicyRequest) -> Answer {
        if !self.checks(r) {
            self.ctx
                .stats
                .auth_policy_other_protocol
                .fetch_add(1, Ordering::Relaxed);
            return Answer::Allow;
        }
        let Some(facts) = login_facts(r) else {
            return Answer::Allow;
        };
        match admission::check_login(&self.ctx, &self.ctx.policy.load(), &facts) {
            LoginCheck::Allowed { .. } => Answer::Allow,
            LoginCheck::Refused {
                reason,
                text,
                mailbox,
                ..
            } => Answer::Refuse {
                msg: text,
                reason,
                mailbox,
            },
        }
    }

    /// Audits a report of a configured protocol. A refusal is evaluated again for its reason
    /// and text (the policy may have been reloaded between the two requests; then the current
    /// policy's view is recorded).
    async fn report(&self, r: &PolicyRequest) {
        if !self.checks(r) {
            self.ctx
                .stats
                .auth_policy_other_protocol
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(success) = r.success else {
            tracing::debug!("auth policy report without `success`; not audited");
            return;
        };
        let kind = if success {
            EventKind::AuthSucceeded
        } else if r.policy_reject == Some(true) {
            EventKind::AuthRefusedByPolicy
        } else {
            EventKind::AuthFailed
        };
        let mut ev = AuditEvent::new(kind);
        ev.front_end = Some(FrontEnd::AuthPolicy);
        ev.client_address = r.remote.clone();
        ev.sasl_method = r.mechanism.clone();
        ev.protocol = r.protocol.clone();
        ev.secured = r.secured.or(r.tls);
        ev.session_id = r.session_id.clone();
        if let Some(facts) = login_facts(r) {
            match admission::describe_login(&self.ctx, &self.ctx.policy.load(), &facts) {
                LoginCheck::Allowed { allowed, findings } => {
                    // A login that an authentication rule in report_only mode would have
                    // refused at AUTH: audited once, when Dovecot reports it went through.
                    if success {
                        for reason in findings.would_refuse() {
                            crate::metrics::would_refuse(FrontEnd::AuthPolicy, reason);
                            let mut would = ev.clone();
                            would.event = EventKind::WouldRefuse;
                            would.mailbox = Some(allowed.mailbox.clone());
                            would.organization = Some(allowed.organization.clone());
                            would.reason = Some(reason);
                            would.reply = Some(self.ctx.replies.auth_text_for(reason).to_string());
                            self.ctx.audit.record(would).await;
                        }
                    }
                    ev.mailbox = Some(allowed.mailbox);
                    ev.organization = Some(allowed.organization);
                }
                LoginCheck::Refused {
                    reason,
                    text,
                    mailbox,
                    organization,
                } => {
                    ev.mailbox = Some(mailbox);
                    ev.organization = organization;
                    if kind == EventKind::AuthRefusedByPolicy {
                        ev.reason = Some(reason);
                        ev.reply = Some(text);
                    }
                }
            }
        }
        self.ctx.audit.record(ev).await;
    }
}

/// What the admission step needs from a request; `None` without a login.
fn login_facts(r: &PolicyRequest) -> Option<LoginFacts<'_>> {
    Some(LoginFacts {
        login: r.login.as_deref()?,
        remote: r.remote.as_deref(),
        protocol: r.protocol.as_deref(),
        sasl_mechanism: r.mechanism.as_deref(),
        secured: r.secured,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exactly what Dovecot 2.3.19 sent for a Postfix SASL login (REAL-PEERS.md).
    const ALLOW: &str = r#"{"device_id":"","login":"alice@contoso.com","protocol":"smtp","pwhash":"08fd","remote":"127.0.0.1","session_id":"","tls":false}"#;

    #[test]
    fn parses_dovecot_bodies() {
        let r = PolicyRequest::parse(ALLOW.as_bytes()).unwrap();
        assert_eq!(r.login.as_deref(), Some("alice@contoso.com"));
        assert_eq!(r.protocol.as_deref(), Some("smtp"));
        assert_eq!(r.remote.as_deref(), Some("127.0.0.1"));
        assert_eq!(r.session_id, None);
        assert_eq!(r.tls, Some(false));
        assert_eq!(r.secured, None);
        assert_eq!(r.success, None);
        // With `mechanism=%{mech} secured=%{secured}` added to the attributes (Postfix over
        // TLS: Dovecot's own `tls` stays false).
        let more = ALLOW.replace(
            r#""tls":false"#,
            r#""mechanism":"XOAUTH2","secured":"secured","tls":false"#,
        );
        let r = PolicyRequest::parse(more.as_bytes()).unwrap();
        assert_eq!(r.mechanism.as_deref(), Some("XOAUTH2"));
        assert_eq!((r.secured, r.tls), (Some(true), Some(false)));
        let plain = ALLOW.replace(r#""tls":false"#, r#""secured":"","tls":false"#);
        assert_eq!(
            PolicyRequest::parse(plain.as_bytes()).unwrap().secured,
            Some(false)
        );

        let report = ALLOW.replace("}", r#","success":false,"policy_reject":true}"#);
        let r = PolicyRequest::parse(report.as_bytes()).unwrap();
        assert_eq!((r.success, r.policy_reject), (Some(false), Some(true)));
    }

    #[test]
    fn liberal_about_types_and_unknown_fields() {
        let r = PolicyRequest::parse(
            br#"{"login":42,"protocol":"SMTP","tls":"yes","success":1,"mech":"PLAIN","fields":{"x":[1]},"extra":null}"#,
        )
        .unwrap();
        assert_eq!(r.login.as_deref(), Some("42"));
        assert_eq!(r.protocol.as_deref(), Some("smtp"));
        assert_eq!(r.tls, Some(true));
        assert_eq!(r.success, Some(true));
        assert_eq!(r.mechanism.as_deref(), Some("PLAIN"));
        // Invalid UTF-8 inside a string is replaced, not refused.
        let r = PolicyRequest::parse(b"{\"login\":\"al\xffce@contoso.com\"}").unwrap();
        assert_eq!(r.login.as_deref(), Some("al\u{fffd}ce@contoso.com"));
    }

    #[test]
    fn the_login_is_kept_as_sent_for_the_admission_check() {
        let r = PolicyRequest::parse(br#"{"login":"  ","protocol":"smtp"}"#).unwrap();
        assert_eq!(r.login.as_deref(), Some("  "));
        let r = PolicyRequest::parse(br#"{"login":"\talice@contoso.com\n"}"#).unwrap();
        assert_eq!(r.login.as_deref(), Some("\talice@contoso.com\n"));
        // An empty login is no login.
        let r = PolicyRequest::parse(br#"{"login":""}"#).unwrap();
        assert_eq!(r.login, None);
    }

    #[test]
    fn malformed_bodies() {
        assert!(matches!(
            PolicyRequest::parse(b"{\"login\":"),
            Err(RequestError::NotJson(_))
        ));
        assert!(matches!(
            PolicyRequest::parse(b"[1,2]"),
            Err(RequestError::NotObject)
        ));
        assert!(matches!(
            PolicyRequest::parse(b""),
            Err(RequestError::NotJson(_))
        ));
    }

    #[test]
    fn commands() {
        assert_eq!(Command::from_query(Some("allow")).unwrap(), Command::Allow);
        assert_eq!(
            Command::from_query(Some("report")).unwrap(),
            Command::Report
        );
        assert!(matches!(
            Command::from_query(Some("delete")),
            Err(RequestError::UnknownCommand(_))
        ));
        assert!(matches!(
            Command::from_query(None),
            Err(RequestError::MissingCommand)
        ));
    }

    #[test]
    fn api_key() {
        let key = ApiKey::new(b"s3cret").unwrap();
        assert!(key.matches(b"s3cret"));
        assert!(key.matches(b" s3cret"));
        assert!(!key.matches(b"s3cre"));
        assert!(!key.matches(b"s3creT"));
        assert!(!key.matches(b""));
        assert!(ApiKey::new(b"two words").is_none());
        assert!(ApiKey::new(b"").is_none());
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
    }

    #[test]
    fn answers_as_dovecot_reads_them() {
        assert_eq!(Answer::Allow.to_json().to_string(), r#"{"status":0}"#);
        let refuse = Answer::Refuse {
            msg: "nope".into(),
            reason: Reason::MailboxDisabled,
            mailbox: "a@b".into(),
        };
        assert_eq!(
            refuse.to_json().to_string(),
            r#"{"msg":"nope","status":-1}"#
        );
    }
}
