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

use super::load::{is_policy_file, load_files, LoadOptions, MAX_SESSION_LIMIT};
use super::{normalize_login, MailboxSettings, Organization, PolicyErrors, PolicySnapshot};
use crate::fsutil::{self, FsError, TempFile};
use crate::yaml::{self, Node, NodeKind, Scalar};

/// Name of the lock file in the policy directory (hidden, so the loader skips it).
pub const LOCK_FILE: &str = ".submitgate.lock";

/// A value to set: a concrete value, or `inherit` (Exchange's `$null`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting<T> {
    Value(T),
    Inherit,
}

/// What `org set` / `mailbox set` asks for; `None` leaves a setting as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Organization {
        name: String,
        smtp_client_authentication_disabled: Option<bool>,
        max_concurrent_sessions_per_mailbox: Option<u32>,
    },
    Mailbox {
        address: String,
        smtp_client_authentication_disabled: Option<Setting<bool>>,
        max_concurrent_sessions_per_mailbox: Option<Setting<u32>>,
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
    #[error("nothing to change: give --smtp-client-authentication-disabled and/or --max-concurrent-sessions")]
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
        .map(|p| {
            let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
            Ok((p, text))
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
            ..
        }
        | Change::Mailbox {
            smtp_client_authentication_disabled: None,
            max_concurrent_sessions_per_mailbox: None,
            ..
        } => Err(EditError::NothingToChange),
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
                .mailboxes
                .iter()
                .map(|(a, e)| (a.clone(), (s.orgs[e.org].name.clone(), e.settings.clone())))
                .collect(),
        }
    }

    fn apply(&mut self, change: &Change, org_name: &str, opts: &LoadOptions) {
        match change {
            Change::Organization {
                smtp_client_authentication_disabled,
                max_concurrent_sessions_per_mailbox,
                ..
            } => {
                if let Some(o) = self.orgs.iter_mut().find(|o| o.name == org_name) {
                    if let Some(v) = smtp_client_authentication_disabled {
                        o.smtp_client_authentication_disabled = *v;
                    }
                    if let Some(n) = max_concurrent_sessions_per_mailbox {
                        o.max_concurrent_sessions_per_mailbox = *n;
                    }
                }
            }
            Change::Mailbox {
                address,
                smtp_client_authentication_disabled,
                max_concurrent_sessions_per_mailbox,
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
            ];
            for (key, value) in steps {
                if let Some(value) = value {
                    let doc = parse(&text, path)?;
                    text =
                        set_key(&text, &doc, key, &value, Some("domains")).map_err(unsupported)?;
                }
            }
        }
        Change::Mailbox {
            address,
            smtp_client_authentication_disabled,
            max_concurrent_sessions_per_mailbox,
        } => {
            let address = normalize_login(address, opts.default_domain.as_deref());
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

fn parse(text: &str, path: &Path) -> Result<Node, EditError> {
    yaml::parse(text).map_err(|e| EditError::Unsupported {
        file: path.to_path_buf(),
        reason: format!("{}: {}", e.pos, e.message),
    })
}

/// Character offsets from the parser → byte offsets in the text.
struct Offsets(Option<Vec<usize>>);

impl Offsets {
    fn new(text: &str) -> Offsets {
        if text.is_ascii() {
            Offsets(None)
        } else {
            let mut v: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
            v.push(text.len());
            Offsets(Some(v))
        }
    }

    fn byte(&self, char_index: usize) -> usize {
        match &self.0 {
            None => char_index,
            Some(v) => v.get(char_index).copied().unwrap_or_else(|| v[v.len() - 1]),
        }
    }
}

fn splice(text: &str, start: usize, end: usize, with: &str) -> String {
    let mut s = String::with_capacity(text.len() + with.len());
    s.push_str(&text[..start]);
    s.push_str(with);
    s.push_str(&text[end..]);
    s
}

fn is_flow(text: &str, off: &Offsets, node: &Node) -> bool {
    matches!(
        text[off.byte(node.start.index)..].chars().next(),
        Some('{' | '[')
    )
}

/// Where a node's content really ends (block collections end at their last child; the
/// parser puts their end at the next token).
fn content_end(text: &str, off: &Offsets, node: &Node) -> usize {
    match &node.kind {
        NodeKind::Map(entries) if !is_flow(text, off, node) => {
            entries.last().map_or(off.byte(node.start.index), |(_, v)| {
                content_end(text, off, v)
            })
        }
        NodeKind::Seq(items) if !is_flow(text, off, node) => items
            .last()
            .map_or(off.byte(node.start.index), |v| content_end(text, off, v)),
        NodeKind::Map(_) | NodeKind::Seq(_) => flow_end(text, off, node),
        NodeKind::Scalar { .. } => off.byte(node.end.index),
    }
}

/// Just past the bracket that closes the flow collection starting at `node` (the parser's end
/// marker may lie beyond it, over whitespace and comments). Scans for the matching bracket,
/// skipping quoted strings and comments.
fn flow_end(text: &str, off: &Offsets, node: &Node) -> usize {
    let start = off.byte(node.start.index);
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            b'\'' => {
                // '' is an escaped quote inside a single-quoted scalar.
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == b'\'' {
                        if bytes.get(i + 1) == Some(&b'\'') {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'#' if i > 0 && bytes[i - 1].is_ascii_whitespace() => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    off.byte(node.end.index).min(text.len())
}

fn line_start(text: &str, at: usize) -> usize {
    text[..at].rfind('\n').map_or(0, |p| p + 1)
}

/// The offset just past the newline that ends the line containing `at` (or the end of text).
fn line_end(text: &str, at: usize) -> usize {
    text[at..].find('\n').map_or(text.len(), |p| at + p + 1)
}

fn is_null(node: &Node) -> bool {
    node.scalar() == Some(Scalar::Null)
}

fn find_key(map: &Node, key: &str) -> Option<usize> {
    map.as_map()?
        .iter()
        .position(|(k, _)| k.text() == Some(key))
}

fn find_address(map: &Node, address: &str) -> Option<usize> {
    map.as_map()?.iter().position(|(k, _)| {
        k.text()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(address))
    })
}

/// Sets `key: value` in mapping `map`: replaces the value when the key exists, else inserts
/// the entry (after entry `after` when given and present, else at the end).
fn set_key(
    text: &str,
    map: &Node,
    key: &str,
    value: &str,
    after: Option<&str>,
) -> Result<String, String> {
    let off = Offsets::new(text);
    match find_key(map, key) {
        Some(i) => {
            let (_, v) = &map.as_map().ok_or("not a mapping")?[i];
            replace_scalar(text, &off, v, value)
        }
        None => insert_entry(text, &off, map, key, value, after),
    }
}

fn replace_scalar(text: &str, off: &Offsets, v: &Node, value: &str) -> Result<String, String> {
    if !matches!(v.kind, NodeKind::Scalar { .. }) {
        return Err(format!(
            "line {}: expected a single value, found {}",
            v.start.line,
            v.describe()
        ));
    }
    let (s, e) = (off.byte(v.start.index), off.byte(v.end.index));
    if s == e {
        // `key:` with nothing after it; the parser places the empty value at the colon.
        let at = if text[s..].starts_with(':') { s + 1 } else { s };
        return Ok(splice(text, at, at, &format!(" {value}")));
    }
    Ok(splice(text, s, e, value))
}

fn insert_entry(
    text: &str,
    off: &Offsets,
    map: &Node,
    key: &str,
    value: &str,
    after: Option<&str>,
) -> Result<String, String> {
    let entries = map
        .as_map()
        .ok_or_else(|| format!("line {}: not a mapping", map.start.line))?;
    if is_flow(text, off, map) {
        let open = off.byte(map.start.index);
        let close = flow_end(text, off, map);
        return Ok(match entries.last() {
            None => splice(text, open, close, &format!("{{ {key}: {value} }}")),
            Some((_, v)) => {
                let at = content_end(text, off, v);
                splice(text, at, at, &format!(", {key}: {value}"))
            }
        });
    }
    let Some((first_key, _)) = entries.first() else {
        return Err(format!("line {}: empty block mapping", map.start.line));
    };
    let indent = " ".repeat(first_key.start.column - 1);
    let anchor = after
        .and_then(|a| entries.iter().find(|(k, _)| k.text() == Some(a)))
        .or(entries.last())
        .map(|(_, v)| v)
        .ok_or("empty mapping")?;
    let at = line_end(text, content_end(text, off, anchor));
    let newline = if at > 0 && !text[..at].ends_with('\n') {
        "\n"
    } else {
        ""
    };
    Ok(splice(
        text,
        at,
        at,
        &format!("{newline}{indent}{key}: {value}\n"),
    ))
}

/// Removes entry `i` of mapping `map` (block: its lines, with the comment lines right above
/// it; flow: the entry and one separating comma).
fn remove_entry(text: &str, map: &Node, i: usize) -> Result<String, String> {
    let off = Offsets::new(text);
    let entries = map.as_map().ok_or("not a mapping")?;
    let (k, v) = entries.get(i).ok_or("no such entry")?;
    if is_flow(text, &off, map) {
        let (s, e) = (off.byte(k.start.index), content_end(text, &off, v));
        if entries.len() == 1 {
            let (open, close) = (off.byte(map.start.index), flow_end(text, &off, map));
            return Ok(splice(text, open, close, "{}"));
        }
        return Ok(if i + 1 < entries.len() {
            // Up to the start of the next entry.
            let next = off.byte(entries[i + 1].0.start.index);
            splice(text, s, next, "")
        } else {
            // From the end of the previous entry.
            let prev = content_end(text, &off, &entries[i - 1].1);
            splice(text, prev, e, "")
        });
    }
    let mut start = line_start(text, off.byte(k.start.index));
    let end = line_end(text, content_end(text, &off, v));
    if text[start..off.byte(k.start.index)].trim() != "" {
        return Err(format!(
            "line {}: the entry shares its line with another",
            k.start.line
        ));
    }
    // Comment lines directly above belong to the entry.
    while start > 0 {
        let prev = line_start(text, start - 1);
        if text[prev..start].trim_start().starts_with('#') {
            start = prev;
        } else {
            break;
        }
    }
    Ok(splice(text, start, end, ""))
}

/// Sets (or, with `None`, removes) `key` in the settings of `address`, creating the entry and
/// the `mailboxes` mapping when missing.
fn set_mailbox_key(
    text: &str,
    doc: &Node,
    address: &str,
    key: &str,
    value: Option<&str>,
) -> Result<String, String> {
    let off = Offsets::new(text);
    let Some(mailboxes) = doc.get("mailboxes") else {
        let Some(value) = value else {
            return Ok(text.to_string());
        };
        // No `mailboxes:` yet: add it at the end of the file.
        let sep = if text.is_empty() || text.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        return Ok(format!(
            "{text}{sep}mailboxes:\n  {address}: {{ {key}: {value} }}\n"
        ));
    };
    let entry = find_address(mailboxes, address);
    match (entry, value) {
        (None, None) => Ok(text.to_string()),
        (None, Some(value)) => {
            let new_value = format!("{{ {key}: {value} }}");
            if is_null(mailboxes) {
                // `mailboxes:` with nothing under it: add the first entry on the next line.
                let at = line_end(text, off.byte(mailboxes.start.index));
                let nl = if text[..at].ends_with('\n') { "" } else { "\n" };
                return Ok(splice(
                    text,
                    at,
                    at,
                    &format!("{nl}  {address}: {new_value}\n"),
                ));
            }
            if mailboxes.as_map().is_none() {
                return Err(format!(
                    "line {}: mailboxes is not a mapping",
                    mailboxes.start.line
                ));
            }
            insert_entry(text, &off, mailboxes, address, &new_value, None)
        }
        (Some(i), value) => {
            let settings = &mailboxes.as_map().ok_or("mailboxes is not a mapping")?[i].1;
            match value {
                Some(value) if is_null(settings) => {
                    replace_scalar(text, &off, settings, &format!("{{ {key}: {value} }}"))
                }
                Some(value) => set_key(text, settings, key, value, None),
                None => match find_key(settings, key) {
                    Some(j) => remove_entry(text, settings, j),
                    None => Ok(text.to_string()),
                },
            }
        }
    }
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
