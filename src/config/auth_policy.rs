//! The Dovecot auth policy front end's settings: the API key file and the protocols whose
//! logins it checks.

use std::path::{Path, PathBuf};

use super::check::Checker;

/// `auth_policy_api_key_file`: a path, when set.
pub(super) fn api_key_file(ck: &mut Checker, value: Option<&Path>) -> Option<PathBuf> {
    match value {
        Some(p) if p.as_os_str().is_empty() => {
            ck.err(&["auth_policy_api_key_file"], "must be a file path");
            None
        }
        other => other.map(Path::to_path_buf),
    }
}

/// `auth_policy_protocols`: Dovecot protocol names, lower-cased; `[smtp]` when absent.
pub(super) fn protocols(ck: &mut Checker, value: Option<&[String]>) -> Vec<String> {
    let Some(list) = value else {
        return vec!["smtp".to_string()];
    };
    let valid = |p: &str| {
        !p.is_empty()
            && p.len() <= 32
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut out = Vec::new();
    for p in list {
        if valid(p) {
            out.push(p.to_ascii_lowercase());
        } else {
            ck.err(
                &["auth_policy_protocols"],
                format!("{p:?} is not a Dovecot protocol name (e.g. smtp, submission)"),
            );
        }
    }
    if list.is_empty() {
        ck.err(
            &["auth_policy_protocols"],
            "list at least one protocol (e.g. [smtp])",
        );
    }
    out
}
