//! `sent_items.store` with `backend: imap`: the server address, TLS, the login on a mailbox's
//! behalf and the timeouts, built into the store's own [`Settings`].

use std::path::PathBuf;
use std::time::Duration;

use tokio_rustls::rustls::pki_types::ServerName;

use super::check::{Checker, DURATION_EXAMPLES};
use super::raw::RawStore;
use crate::sent_items::store::imap::{LoginMode, Settings, TlsMode};

/// The key path of an imap store key.
fn key(k: &str) -> [&str; 3] {
    ["sent_items", "store", k]
}

/// Validates the imap store settings, reporting every problem.
pub(super) fn check(ck: &mut Checker, st: &RawStore) -> Settings {
    let (host, port) = match st.address.as_deref() {
        None => {
            ck.err(
                &["sent_items", "store"],
                "the imap backend needs `address` (e.g. \"127.0.0.1:143\")",
            );
            ("127.0.0.1".to_string(), 143)
        }
        Some(a) => parse_host_port(a).unwrap_or_else(|e| {
            ck.err(&key("address"), e);
            ("127.0.0.1".to_string(), 143)
        }),
    };
    let tls = match st.tls.as_deref() {
        None | Some("starttls") => TlsMode::Starttls,
        Some("none") => TlsMode::None,
        Some("implicit") => TlsMode::Implicit,
        Some(other) => {
            ck.err(
                &key("tls"),
                format!("unknown TLS mode {other:?}; expected none, starttls or implicit"),
            );
            TlsMode::Starttls
        }
    };
    let tls_server_name = match st.tls_server_name.as_deref() {
        None => host.clone(),
        Some(n) => {
            if ServerName::try_from(n).is_err() {
                ck.err(
                    &key("tls_server_name"),
                    format!("{n:?} is not a DNS name or IP address"),
                );
            }
            n.to_string()
        }
    };
    if tls != TlsMode::None
        && st.tls_server_name.is_none()
        && ServerName::try_from(host.as_str()).is_err()
    {
        ck.err(
            &key("address"),
            format!("{host:?} cannot be checked against a certificate; set tls_server_name"),
        );
    }
    if tls == TlsMode::None {
        for (k, set) in [
            ("ca_file", st.ca_file.is_some()),
            ("tls_verify", st.tls_verify.is_some()),
            ("tls_server_name", st.tls_server_name.is_some()),
        ] {
            if set {
                ck.err(&key(k), "has no effect with tls: none");
            }
        }
    }
    let login = match st.login.as_deref() {
        None | Some("master_user") => LoginMode::MasterUser,
        Some("sasl_authzid") => LoginMode::SaslAuthzid,
        Some(other) => {
            ck.err(
                &key("login"),
                format!("unknown login mode {other:?}; expected master_user or sasl_authzid"),
            );
            LoginMode::MasterUser
        }
    };
    let master_user = match st.master_user.as_deref() {
        Some(u) if !u.is_empty() && !u.chars().any(|c| c.is_control()) => u.to_string(),
        Some(u) => {
            ck.err(&key("master_user"), format!("{u:?} is not a user name"));
            String::new()
        }
        None => {
            ck.err(
                &["sent_items", "store"],
                "the imap backend needs `master_user`",
            );
            String::new()
        }
    };
    let master_password_file = match &st.master_password_file {
        Some(p) if !p.as_os_str().is_empty() => p.clone(),
        _ => {
            ck.err(
                &["sent_items", "store"],
                "the imap backend needs `master_password_file` (a file holding the secret)",
            );
            PathBuf::new()
        }
    };
    let master_separator = match st.master_separator.as_deref() {
        None => "*".to_string(),
        Some(s) if !s.is_empty() && !s.chars().any(|c| c.is_control() || c == '"') => s.to_string(),
        Some(s) => {
            ck.err(
                &key("master_separator"),
                format!("{s:?} is not a usable separator"),
            );
            "*".to_string()
        }
    };
    if login == LoginMode::SaslAuthzid && st.master_separator.is_some() {
        ck.err(
            &key("master_separator"),
            "applies to login: master_user only",
        );
    }
    let idle_timeout = ck.duration_at(
        &key("idle_timeout"),
        st.idle_timeout.as_deref(),
        Duration::from_secs(30),
        Duration::ZERO,
        DURATION_EXAMPLES,
    );
    let max_idle_connections = ck.number_at(
        &key("max_idle_connections"),
        st.max_idle_connections,
        (0, 10_000),
        crate::sent_items::store::imap::DEFAULT_MAX_IDLE,
    );
    let timeout = ck.duration_at(
        &key("timeout"),
        st.timeout.as_deref(),
        Duration::from_secs(60),
        Duration::from_millis(100),
        DURATION_EXAMPLES,
    );
    Settings {
        host,
        port,
        tls,
        tls_server_name,
        ca_file: st.ca_file.clone(),
        tls_verify: st.tls_verify.unwrap_or(true),
        login,
        master_user,
        master_password_file,
        master_separator,
        idle_timeout,
        max_idle_connections,
        timeout,
    }
}

/// `HOST:PORT`, `[V6]:PORT`; the host without brackets.
pub(super) fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let bad =
        || format!("{s:?} is not HOST:PORT (e.g. 127.0.0.1:143, [::1]:993, imap.example.com:993)");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return Err(bad()),
    };
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}
