//! The policy editor behind `submitgate org set` and `submitgate mailbox set` (the
//! `Set-TransportConfig` / `Set-CASMailbox` analogues). It changes one value in a policy file
//! by splicing text at the positions the YAML tree gives, so comments, key order, blank lines
//! and formatting of everything else stay byte-identical. Before anything is written, the whole
//! policy set is loaded again with the new text and compared with the old one: exactly the
//! intended change, and nothing else, or the file is left untouched. Writes hold a lock on the
//! policy directory and replace the file atomically (temp file, fsync, rename, directory fsync).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::authentication::OrgAuth;
use super::files::{is_policy_file, read_policy_file};
use super::load::{load_files, LoadOptions, MAX_SESSION_LIMIT};
use super::{normalize_login, MailboxSettings, Organization, PolicyErrors, PolicySnapshot};
use crate::fsutil::{self, FsError, TempFile};
use crate::yaml::{self, Node};

mod splice;
use splice::{find_address, remove_entry, set_key, set_mailbox_key};

/// Name of the lock file in the policy directory (hidden, so the loader skips it).
pub const LOCK_FILE: &str = ".submitgate.lock";

/// A value to set: a concrete value, or `inherit` (Exchange's `$null`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting<T> {
    Value(T),
    Inherit,
}

/// The authentication settings `mailbox set` changes; `None` leaves one as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MailboxAuthChange {
    pub allow_basic_auth_smtp: Option<Setting<bool>>,
    pub allow_legacy_tls_clients: Option<Setting<bool>>,
    pub require_tls: Option<Setting<bool>>,
}

impl MailboxAuthChange {
    fn is_empty(&self) -> bool {
        *self == MailboxAuthChange::default()
    }
}

/// What `org set` / `mailbox set` asks for; `None` leaves a setting as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Organization {
        name: String,
        smtp_client_authentication_disabled: Option<bool>,
        max_concurrent_sessions_per_mailbox: Option<u32>,
        /// Authentication policy values to write (`Some`: set the key to it).
        auth: OrgAuth,
    },
    Mailbox {
        address: String,
        smtp_client_authentication_disabled: Option<Setting<bool>>,
        max_concurrent_sessions_per_mailbox: Option<Setting<u32>>,
        auth: MailboxAuthChange,
    },
}

/// Why a change was refused. The files are untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("the policy files have errors; fix them first:\n{0}")]
    Invalid(PolicyErrors),
    #[error("no organization {name:?} (known: {known})")]
    UnknownOrganization { name: String, known: String },
    #[error("{0:?} is not a mailbox address (local@domain)")]
    InvalidAddress(String),
    #[error("{address} is outside every organization's domains")]
    OutsideEveryOrganization { address: String },
    #[error("max concurrent sessions must be from 1 to {MAX_SESSION_LIMIT}, not {0}")]
    InvalidLimit(u32),
    #[error("nothing to change: give --smtp-client-authentication-disabled, --max-concurrent-sessions, --allow-basic-auth-smtp, --allow-legacy-tls-clients, --require-tls (or, for an organization, --basic-auth-mode, --tls-mode)")]
    NothingToChange,
    #[error("{file}: cannot edit this file safely: {reason}")]
    Unsupported { file: PathBuf, reason: String },
    #[error("{file}: the edited file would not be exactly the intended change ({detail}); nothing was written")]
    Verification { file: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The result of a successful `set`.
#[derive(Debug)]
pub struct Applied {
    /// The file that holds the setting.
    pub file: PathBuf,
    /// False when the setting already had the requested value (nothing written).
    pub changed: bool,
    /// The policy as it is now.
    pub snapshot: PolicySnapshot,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EditError + '_ {
    move |source| EditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Applies `change` to the policy files in `dir`: locks the directory, reads every file,
/// computes the new text, verifies it, and replaces the file atomically.
pub fn apply(dir: &Path, opts: &LoadOptions, change: &Change) -> Result<Applied, EditError> {
    let _lock = DirLock::acquire(dir)?;
    let files = read_files(dir)?;
    let (index, new_text) = plan(&files, opts, change)?;
    let Some(new_text) = new_text else {
        let snapshot = load_files(&files, opts).map_err(EditError::Invalid)?;
        return Ok(Applied {
            file: files[index].0.clone(),
            changed: false,
            snapshot,
        });
    };
    let path = files[index].0.clone();
    let mut updated = files;
    updated[index].1 = new_text;
    let snapshot = load_files(&updated, opts).map_err(EditError::Invalid)?;
    write_atomically(&path, &updated[index].1)?;
    Ok(Applied {
        file: path,
        changed: true,
        snapshot,
    })
}

/// Reads every policy file of `dir`, sorted by name (as the loader does).
fn read_files(dir: &Path) -> Result<Vec<(PathBuf, String)>, EditError> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if is_policy_file(&path) {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| match read_policy_file(dir, &p) {
            Ok(text) => Ok((p, text)),
            Err((kind, message)) => {
                Err(EditError::Invalid(PolicyErrors(vec![super::PolicyError {
                    file: p,
                    line: 0,
                    column: 0,
                    kind,
                    message,
                }])))
            }
        })
        .collect()
}

/// Computes the edit without touching any file: the index of the file to change and its new
/// text (`None` when the setting already has the requested value). The result is verified
/// against the intended change.
pub fn plan(
    files: &[(PathBuf, String)],
    opts: &LoadOptions,
    change: &Change,
) -> Result<(usize, Option<String>), EditError> {
    let before = load_files(files, opts).map_err(EditError::Invalid)?;
    validate(change)?;
    let org = target_organization(&before, opts, change)?;
    let index = files
        .iter()
        .position(|(p, _)| *p == org.file)
        .ok_or_else(|| EditError::Unsupported {
            file: org.file.clone(),
            reason: "the organization's file is not among the policy files".into(),
        })?;
    let (path, text) = &files[index];
    let mut expected = Model::of(&before);
    expected.apply(change, &org.name, opts);
    if expected == Model::of(&before) {
        return Ok((index, None));
    }
    let new_text = edit_text(path, text, change, &expected, opts)?;
    let mut updated = files.to_vec();
    updated[index].1 = new_text.clone();
    let after = load_files(&updated, opts).map_err(|e| EditError::Verification {
        file: path.clone(),
        detail: e.to_string(),
    })?;
    let got = Model::of(&after);
    if got != expected {
        return Err(EditError::Verification {
            file: path.clone(),
            detail: expected.difference(&got),
        });
    }
    Ok((index, Some(new_text)))
}

fn validate(change: &Change) -> Result<(), EditError> {
    let limit_ok = |n: u32| (1..=MAX_SESSION_LIMIT as u32).contains(&n);
    match change {
        Change::Organization {
            smtp_client_authentication_disabled: None,
            max_concurrent_sessions_per_mailbox: None,
            auth,
            ..
        } if *auth == OrgAuth::default() => Err(EditError::NothingToChange),
        Change::Mailbox {
            smtp_client_authentication_disabled: None,
            max_concurrent_sessions_per_mailbox: None,
            auth,
            ..
        } if auth.is_empty() => Err(EditError::NothingToChange),
        Change::Organization {
            max_concurrent_sessions_per_mailbox: Some(n),
            ..
        }
        | Change::Mailbox {
            max_concurrent_sessions_per_mailbox: Some(Setting::Value(n)),
            ..
        } if !limit_ok(*n) => Err(EditError::InvalidLimit(*n)),
        _ => Ok(()),
    }
}

fn target_organization(
    snap: &PolicySnapshot,
    opts: &LoadOptions,
    change: &Change,
) -> Result<Organization, EditError> {
    match change {
        Change::Organization { name, .. } => {
            snap.organization(name)
                .cloned()
                .ok_or_else(|| EditError::UnknownOrganization {
                    name: name.clone(),
                    known: snap
                        .organizations()
                        .iter()
                        .map(|o| o.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
        }
        Change::Mailbox { address, .. } => {
            let address = normalize_login(address, opts.default_domain.as_deref());
            if !super::valid_address(&address) {
                return Err(EditError::InvalidAddress(address));
            }
            snap.org_index_for(&address)
                .map(|i| snap.orgs[i].clone())
                .ok_or(EditError::OutsideEveryOrganization { address })
        }
    }
}

/// The meaning of a policy set, for comparing before and after an edit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Model {
    orgs: Vec<Organization>,
    mailboxes: BTreeMap<String, (String, MailboxSettings)>,
}

impl Model {
    fn of(s: &PolicySnapshot) -> Model {
        Model {
            orgs: s.orgs.clone(),
            mailboxes: s
                .all_mailboxes()
                .map(|(a, org, settings)| {
                    let org = s.orgs.get(org).map(|o| o.name.clone());
                    (a.to_string(), (org.unwrap_or_default(), settings))
                })
                .collect(),
        }
    }

    fn apply(&mut self, change: &Change, org_name: &str, opts: &LoadOptions) {
        match change {
            Change::Organization {
                smtp_client_authentication_disabled,
                max_concurrent_sessions_per_mailbox,
                auth,
                ..
            } => {
                if let Some(o) = self.orgs.iter_mut().find(|o| o.name == org_name) {
                    if let Some(v) = smtp_client_authentication_disabled {
                        o.smtp_client_authentication_disabled = *v;
                    }
                    if let Some(n) = max_concurrent_sessions_per_mailbox {
                        o.max_concurrent_sessions_per_mailbox = *n;
                    }
                    let a = &mut o.auth;
                    a.allow_basic_auth_smtp =
                        auth.allow_basic_auth_smtp.or(a.allow_basic_auth_smtp);
                    a.basic_auth_mode = auth.basic_auth_mode.or(a.basic_auth_mode);
                    a.allow_legacy_tls_clients =
                        auth.allow_legacy_tls_clients.or(a.allow_legacy_tls_clients);
                    a.require_tls = auth.require_tls.or(a.require_tls);
                    a.tls_mode = auth.tls_mode.or(a.tls_mode);
                }
            }
            Change::Mailbox {
                address,
                smtp_client_authentication_disabled,
                max_concurrent_sessions_per_mailbox,
                auth,
            } => {
                let address = normalize_login(address, opts.default_domain.as_deref());
                let before = self.mailboxes.get(&address).map(|(_, s)| s.clone());
                let mut settings = before.clone().unwrap_or_default();
                if let Some(s) = smtp_client_authentication_disabled {
                    settings.smtp_client_authentication_disabled = match s {
                        Setting::Value(v) => Some(*v),
                        Setting::Inherit => None,
                    };
                }
                if let Some(s) = max_concurrent_sessions_per_mailbox {
                    settings.max_concurrent_sessions_per_mailbox = match s {
                        Setting::Value(v) => Some(*v),
                        Setting::Inherit => None,
                    };
                }
                let own = &mut settings.overrides.auth;
                for (change, slot) in [
                    (auth.allow_basic_auth_smtp, &mut own.allow_basic_auth_smtp),
                    (
                        auth.allow_legacy_tls_clients,
                        &mut own.allow_legacy_tls_clients,
                    ),
                    (auth.require_tls, &mut own.require_tls),
                ] {
                    if let Some(s) = change {
                        *slot = match s {
                            Setting::Value(v) => Some(v),
                            Setting::Inherit => None,
                        };
                    }
                }
                // An entry that overrides nothing any more is removed — but only by a change;
                // an existing `{}` entry that this command does not alter stays.
                if settings == before.clone().unwrap_or_default() {
                    return;
                }
                if settings == MailboxSettings::default() {
                    self.mailboxes.remove(&address);
                } else {
                    self.mailboxes
                        .insert(address, (org_name.to_string(), settings));
                }
            }
        }
    }

    /// A short description of how `other` differs, for the refusal message.
    fn difference(&self, other: &Model) -> String {
        if self.orgs != other.orgs {
            return "organization settings differ".into();
        }
        let mut diffs = Vec::new();
        for (a, v) in &self.mailboxes {
            match other.mailboxes.get(a) {
                None => diffs.push(format!("{a} would be missing")),
                Some(w) if w != v => diffs.push(format!("{a} would be {:?}, not {:?}", w.1, v.1)),
                _ => {}
            }
        }
        for a in other.mailboxes.keys() {
            if !self.mailboxes.contains_key(a) {
                diffs.push(format!("{a} would appear"));
            }
        }
        diffs.join("; ")
    }
}

/// Keys written by the editor.
const DISABLED: &str = "smtp_client_authentication_disabled";
const LIMIT: &str = "max_concurrent_sessions_per_mailbox";
const ALLOW_BASIC: &str = "allow_basic_auth_smtp";
const BASIC_MODE: &str = "basic_auth_mode";
const ALLOW_LEGACY_TLS: &str = "allow_legacy_tls_clients";
const REQUIRE_TLS: &str = "require_tls";
const TLS_MODE: &str = "tls_mode";

/// Applies the change to the text, one key at a time (re-parsing between steps, so every
/// splice works on fresh positions).
fn edit_text(
    path: &Path,
    text: &str,
    change: &Change,
    expected: &Model,
    opts: &LoadOptions,
) -> Result<String, EditError> {
    let unsupported = |reason: String| EditError::Unsupported {
        file: path.to_path_buf(),
        reason,
    };
    let mut text = text.to_string();
    match change {
        Change::Organization {
            smtp_client_authentication_disabled,
            max_concurrent_sessions_per_mailbox,
            auth,
            ..
        } => {
            let steps = [
                (
                    DISABLED,
                    smtp_client_authentication_disabled.map(|b| b.to_string()),
                ),
                (
                    LIMIT,
                    max_concurrent_sessions_per_mailbox.map(|n| n.to_string()),
                ),
                (
                    ALLOW_BASIC,
                    auth.allow_basic_auth_smtp.map(|b| b.to_string()),
                ),
                (
                    BASIC_MODE,
                    auth.basic_auth_mode.map(|m| m.as_str().to_string()),
                ),
                (
                    ALLOW_LEGACY_TLS,
                    auth.allow_legacy_tls_clients.map(|b| b.to_string()),
                ),
                (REQUIRE_TLS, auth.require_tls.map(|b| b.to_string())),
                (TLS_MODE, auth.tls_mode.map(|m| m.as_str().to_string())),
            ];
            for (key, value) in steps {
                if let Some(value) = value {
                    let doc = parse(&text, path)?;
                    let after = insert_after(&doc, key);
                    text = set_key(&text, &doc, key, &value, Some(after)).map_err(unsupported)?;
                }
            }
        }
        Change::Mailbox {
            address,
            smtp_client_authentication_disabled,
            max_concurrent_sessions_per_mailbox,
            auth,
        } => {
            let address = normalize_login(address, opts.default_domain.as_deref());
            let setting = |s: Option<Setting<bool>>| {
                s.map(|s| match s {
                    Setting::Value(v) => Some(v.to_string()),
                    Setting::Inherit => None,
                })
            };
            let steps = [
                (
                    DISABLED,
                    smtp_client_authentication_disabled.map(|s| match s {
                        Setting::Value(v) => Some(v.to_string()),
                        Setting::Inherit => None,
                    }),
                ),
                (
                    LIMIT,
                    max_concurrent_sessions_per_mailbox.map(|s| match s {
                        Setting::Value(v) => Some(v.to_string()),
                        Setting::Inherit => None,
                    }),
                ),
                (ALLOW_BASIC, setting(auth.allow_basic_auth_smtp)),
                (ALLOW_LEGACY_TLS, setting(auth.allow_legacy_tls_clients)),
                (REQUIRE_TLS, setting(auth.require_tls)),
            ];
            for (key, value) in steps {
                let Some(value) = value else { continue };
                let doc = parse(&text, path)?;
                text = set_mailbox_key(&text, &doc, &address, key, value.as_deref())
                    .map_err(unsupported)?;
            }
            // The entry goes when it no longer overrides anything.
            if !expected.mailboxes.contains_key(&address) {
                let doc = parse(&text, path)?;
                if let Some(mailboxes) = doc.get("mailboxes") {
                    if let Some(i) = find_address(mailboxes, &address) {
                        text = remove_entry(&text, mailboxes, i).map_err(unsupported)?;
                    }
                }
            }
        }
    }
    Ok(text)
}

/// Where a missing organization key goes: the settings keys after `domains`; an
/// authentication policy key after the last of its kind already in the file (so that several
/// set at once read in their usual order), else after `domains`.
fn insert_after(doc: &Node, key: &str) -> &'static str {
    const AUTH_ORDER: [&str; 5] = [
        ALLOW_BASIC,
        BASIC_MODE,
        ALLOW_LEGACY_TLS,
        REQUIRE_TLS,
        TLS_MODE,
    ];
    let Some(at) = AUTH_ORDER.iter().position(|k| *k == key) else {
        return "domains";
    };
    AUTH_ORDER[..at]
        .iter()
        .rev()
        .find(|k| doc.get(k).is_some())
        .copied()
        .unwrap_or("domains")
}

fn parse(text: &str, path: &Path) -> Result<Node, EditError> {
    yaml::parse(text).map_err(|e| EditError::Unsupported {
        file: path.to_path_buf(),
        reason: format!("{}: {}", e.pos, e.message),
    })
}

/// An exclusive lock on the policy directory, held for one read-modify-write.
struct DirLock(#[allow(dead_code)] File);

impl DirLock {
    fn acquire(dir: &Path) -> Result<DirLock, EditError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // Released when the file closes, with the lock.
        fsutil::lock_exclusive(&file).map_err(io_err(&path))?;
        Ok(DirLock(file))
    }
}

impl From<FsError> for EditError {
    fn from(e: FsError) -> EditError {
        EditError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// Replaces `path` with `text`: a hidden temp file in the same directory, same permissions
/// and owner, fsynced, renamed over the original, directory fsynced.
fn write_atomically(path: &Path, text: &str) -> Result<(), EditError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = fsutil::parent_of(path).join(format!(".{name}.tmp-{}", std::process::id()));
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let temp = TempFile::new(tmp, 0o666).overwriting();
    fsutil::replace_file(temp, path, fsutil::Sync::All, |temp| {
        temp.write_all(text.as_bytes())?;
        temp.with_file("set permissions of", |f| {
            use std::os::unix::fs::MetadataExt;
            f.set_permissions(std::fs::Permissions::from_mode(meta.permissions().mode()))?;
            // Keep the owner when we may (running as root); otherwise the file is ours anyway.
            let _ = std::os::unix::fs::fchown(f, Some(meta.uid()), Some(meta.gid()));
            Ok(())
        })
    })
    .map_err(EditError::from)
}

#[cfg(test)]
#[path = "editor_tests.rs"]
mod tests;
