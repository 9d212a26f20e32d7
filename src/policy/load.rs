//! Loading policy files: one file at a time read, hashed and, unless the snapshot in force
//! already holds its compiled table ([`reload_dir`]), parsed with its `mailboxes` mapping
//! streamed entry by entry into the file's compact table (so only one file's text and one
//! mailbox's nodes exist at any moment); then the cross-file checks and one [`PolicySnapshot`].
//! All problems of all files are collected and returned together, each with file, line and
//! column.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::authentication::{OrgAuth, RuleMode};
use super::compile::compile;
use super::files::{digest, is_policy_file, read_policy_file, Digest, Version};
use super::limits::{LimitOverrides, Limits};
use super::mailboxes::{Mailboxes, TooLarge};
use super::table::OrgTable;
use super::{
    MailboxSettings, Organization, PolicyError, PolicyErrors, PolicySnapshot, SentItems,
    DEFAULT_MAX_SESSIONS, WILDCARD_DOMAIN,
};
use crate::yaml::{self, quote, ErrorKind, Node, NodeKind, Pos, Scalar};

/// Largest policy file accepted (100 000 mailboxes take about 6 MiB).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Largest per-mailbox session limit accepted.
pub const MAX_SESSION_LIMIT: i64 = 100_000;

/// Settings from the daemon configuration that shape how logins are read.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Appended to logins without `@`.
    pub default_domain: Option<String>,
}

/// Loads every `*.yaml` / `*.yml` file of `dir` (hidden files and editor backups skipped).
pub fn load_dir(dir: &Path, opts: &LoadOptions) -> Result<PolicySnapshot, PolicyErrors> {
    let mut loader = Loader::default();
    read_dir_into(dir, &mut loader)?;
    loader.finish(opts)
}

/// What [`reload_dir`] found.
#[derive(Debug)]
pub enum Reload {
    /// Every file has the name and the text it had in the snapshot given: nothing was built.
    Unchanged,
    /// The new snapshot. It shares the compiled tables of the files that did not change with
    /// the snapshot given.
    Changed(Box<PolicySnapshot>),
}

/// Loads `dir` again after `previous` was loaded from it (with the same `opts`): every file is
/// read and hashed, but only the files whose name or text changed are parsed and compiled; the
/// others keep `previous`'s tables. The checks across files run on the whole set, as in
/// [`load_dir`], and the result is what [`load_dir`] would give.
pub fn reload_dir(
    dir: &Path,
    opts: &LoadOptions,
    previous: &PolicySnapshot,
) -> Result<Reload, PolicyErrors> {
    let mut loader = Loader {
        previous: previous
            .tables
            .iter()
            .map(|t| (t.org.file.as_path(), t))
            .collect(),
        ..Loader::default()
    };
    read_dir_into(dir, &mut loader)?;
    if loader.built == 0 && loader.unreadable.is_empty() && loader.files == previous.files {
        return Ok(Reload::Unchanged);
    }
    loader.finish(opts).map(|s| Reload::Changed(Box::new(s)))
}

/// Reads the policy files of `dir` in name order into `loader`, one at a time (each file's text
/// is dropped before the next is read). An unreadable file is an error of the load; the others
/// are still checked, so that every problem is reported at once.
fn read_dir_into(dir: &Path, loader: &mut Loader<'_>) -> Result<(), PolicyErrors> {
    let whole = |message: String| {
        PolicyErrors(vec![PolicyError {
            file: dir.to_path_buf(),
            line: 0,
            column: 0,
            kind: ErrorKind::Unreadable,
            message,
        }])
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| whole(format!("cannot read directory: {e}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| whole(format!("cannot read directory: {e}")))?;
        let path = entry.path();
        if is_policy_file(&path) {
            paths.push(path);
        }
    }
    paths.sort();
    for path in paths {
        match read_policy_file(dir, &path) {
            Ok(text) => loader.add(path, &text),
            Err((kind, message)) => loader.unreadable.push(PolicyError {
                file: path,
                line: 0,
                column: 0,
                kind,
                message,
            }),
        }
    }
    Ok(())
}

/// Compiles already-read files (name, text). Used by [`load_dir`], by the policy editor to
/// check a change before it is written, and by tests.
pub fn load_files(
    files: &[(PathBuf, String)],
    opts: &LoadOptions,
) -> Result<PolicySnapshot, PolicyErrors> {
    let mut loader = Loader::default();
    for (path, text) in files {
        loader.add(path.clone(), text);
    }
    loader.finish(opts)
}

/// A load in progress: the files read so far and their compiled tables.
#[derive(Default)]
struct Loader<'p> {
    /// Files that could not be read: reported first, before the errors of their contents.
    unreadable: Vec<PolicyError>,
    errors: Vec<PolicyError>,
    tables: Vec<Arc<OrgTable>>,
    files: Vec<PathBuf>,
    version: Version,
    /// The tables of the snapshot in force, by file, for a reload to reuse.
    previous: HashMap<&'p Path, &'p Arc<OrgTable>>,
    /// How many files were parsed and compiled (not reused).
    built: usize,
}

impl Loader<'_> {
    /// Adds one file: its table from the snapshot in force when its text is the same, else a
    /// table compiled from `text`.
    fn add(&mut self, path: PathBuf, text: &str) {
        let digest = digest(text);
        self.version.add(&path, digest);
        match self.previous.get(path.as_path()) {
            Some(table) if table.digest == digest => self.tables.push(Arc::clone(table)),
            _ => {
                self.built += 1;
                if let Some(table) = compile_file(&path, text, digest, &mut self.errors) {
                    self.tables.push(Arc::new(table));
                }
            }
        }
        self.files.push(path);
    }

    fn finish(self, opts: &LoadOptions) -> Result<PolicySnapshot, PolicyErrors> {
        let Loader {
            mut unreadable,
            mut errors,
            tables,
            files,
            version,
            ..
        } = self;
        let snap = compile(tables, files, version, opts, &mut errors);
        if errors.is_empty() && unreadable.is_empty() {
            return Ok(snap);
        }
        // Report in reading order: file by file, top to bottom.
        let order: HashMap<&Path, usize> = snap
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_path(), i))
            .collect();
        errors.sort_by_key(|e| (order.get(e.file.as_path()).copied(), e.line, e.column));
        unreadable.extend(errors);
        Err(PolicyErrors(unreadable))
    }
}

/// Checks one file on its own and compiles its table; its problems go to `errors`. `None` when
/// the file is not YAML or not a mapping (it then defines no organization).
fn compile_file(
    path: &Path,
    text: &str,
    digest: Digest,
    errors: &mut Vec<PolicyError>,
) -> Option<OrgTable> {
    let first_error = errors.len();
    // A mailbox in block style takes at least one line, and its address is never longer than
    // the text: room for as many entries as lines and the text's length in addresses.
    let lines = text.bytes().filter(|b| *b == b'\n').count() + 1;
    let mut ctx = FileCtx {
        file: path,
        errors,
        mailboxes: Mailboxes::with_capacity(lines, text.len()),
        full: false,
    };
    // The mailboxes are checked and stored as the parser reads them; the rest of the file
    // (a few keys) becomes a tree.
    let parsed = yaml::parse_streaming(text, "mailboxes", &mut |key, value| {
        ctx.mailbox(&key, &value)
    });
    match parsed {
        Ok(doc) => {
            let (org, name_pos, domain_pos) = ctx.organization(&doc)?;
            Some(OrgTable::new(
                org,
                name_pos,
                domain_pos,
                ctx.mailboxes,
                digest,
            ))
        }
        Err(e) => {
            // A file that is not YAML reports that alone, not what was read before the error.
            ctx.errors.truncate(first_error);
            ctx.error(e.pos, ErrorKind::Syntax, e.message);
            None
        }
    }
}

pub(super) struct FileCtx<'a> {
    file: &'a Path,
    errors: &'a mut Vec<PolicyError>,
    /// The file's mailboxes, checked and stored as they are read.
    mailboxes: Mailboxes,
    /// The table cannot take more mailboxes: the rest of the file's are skipped.
    full: bool,
}

const ORG_KEYS: &[&str] = &[
    "organization",
    "domains",
    "smtp_client_authentication_disabled",
    "max_concurrent_sessions_per_mailbox",
    "sent_items",
    "sending_limits",
    "outbound_spam",
    "mailboxes",
    "allow_basic_auth_smtp",
    "basic_auth_mode",
    "allow_legacy_tls_clients",
    "require_tls",
    "tls_mode",
];
const MAILBOX_KEYS: &[&str] = &[
    "smtp_client_authentication_disabled",
    "max_concurrent_sessions_per_mailbox",
    "sent_items",
    "sending_limits",
    "outbound_spam",
    "allow_basic_auth_smtp",
    "allow_legacy_tls_clients",
    "require_tls",
];
const SENT_ITEMS_KEYS: &[&str] = &["enabled", "folder"];

impl FileCtx<'_> {
    pub(super) fn error(&mut self, pos: Pos, kind: ErrorKind, message: impl Into<String>) {
        self.errors.push(PolicyError {
            file: self.file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            kind,
            message: message.into(),
        });
    }

    /// The entries of a mapping node, reporting unknown and duplicate keys. Returns the
    /// recognised entries (first occurrence of each key).
    pub(super) fn entries<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        known: &[&str],
    ) -> Option<Vec<(&'n str, &'n Node)>> {
        let Some(map) = node.as_map() else {
            self.error(
                node.start,
                ErrorKind::WrongType,
                format!("{what} must be a mapping, found {}", node.describe()),
            );
            return None;
        };
        let mut seen: Vec<(&str, Pos)> = Vec::new();
        let mut out = Vec::new();
        for (k, v) in map {
            let Some(key) = k.text() else {
                self.error(
                    k.start,
                    ErrorKind::WrongType,
                    format!("keys in {what} must be plain names"),
                );
                continue;
            };
            if !known.contains(&key) {
                let hint = suggest(key, known)
                    .map(|s| format!(" (did you mean {s:?}?)"))
                    .unwrap_or_default();
                self.error(
                    k.start,
                    ErrorKind::UnknownKey,
                    format!(
                        "unknown key {} in {what}{hint}; allowed: {}",
                        quote(key),
                        known.join(", ")
                    ),
                );
                continue;
            }
            if let Some((_, first)) = seen.iter().find(|(s, _)| *s == key) {
                self.error(
                    k.start,
                    ErrorKind::DuplicateKey,
                    format!(
                        "duplicate key {key:?} in {what} (first at line {})",
                        first.line
                    ),
                );
                continue;
            }
            seen.push((key, k.start));
            out.push((key, v));
        }
        Some(out)
    }

    fn opt_bool(&mut self, node: &Node, key: &str) -> Result<Option<bool>, ()> {
        match node.scalar() {
            Some(Scalar::Null) => Ok(None),
            Some(Scalar::Bool(b)) => Ok(Some(b)),
            _ => {
                self.error(
                    node.start,
                    ErrorKind::WrongType,
                    format!(
                        "{key} must be true, false or null, found {}",
                        node.describe()
                    ),
                );
                Err(())
            }
        }
    }

    fn opt_limit(&mut self, node: &Node, key: &str) -> Result<Option<u32>, ()> {
        match node.scalar() {
            Some(Scalar::Null) => Ok(None),
            Some(Scalar::Int(i)) if (1..=MAX_SESSION_LIMIT).contains(&i) => Ok(Some(i as u32)),
            other => {
                let kind = match other {
                    Some(Scalar::Int(_)) => ErrorKind::InvalidValue,
                    _ => ErrorKind::WrongType,
                };
                self.error(
                    node.start,
                    kind,
                    format!(
                        "{key} must be a whole number from 1 to {MAX_SESSION_LIMIT} (or null), found {}",
                        node.describe()
                    ),
                );
                Err(())
            }
        }
    }

    /// `enforce` or `report_only` (null: the default, enforce).
    fn opt_mode(&mut self, node: &Node, key: &str) -> Option<RuleMode> {
        match node.scalar() {
            Some(Scalar::Null) => None,
            Some(Scalar::Str(s)) if RuleMode::parse(s).is_some() => RuleMode::parse(s),
            other => {
                let kind = match other {
                    Some(Scalar::Str(_)) => ErrorKind::InvalidValue,
                    _ => ErrorKind::WrongType,
                };
                self.error(
                    node.start,
                    kind,
                    format!(
                        "{key} must be enforce or report_only (or null), found {}",
                        node.describe()
                    ),
                );
                None
            }
        }
    }

    fn string(&mut self, node: &Node, key: &str) -> Option<String> {
        match node.scalar() {
            Some(Scalar::Str(s)) => Some(s.to_string()),
            _ => {
                self.error(
                    node.start,
                    ErrorKind::WrongType,
                    format!("{key} must be a string, found {}", node.describe()),
                );
                None
            }
        }
    }

    fn folder(&mut self, node: &Node) -> Result<Option<String>, ()> {
        if node.scalar() == Some(Scalar::Null) {
            return Ok(None);
        }
        let f = self.string(node, "sent_items.folder").ok_or(())?;
        if f.trim().is_empty() || f.len() > 255 || f.chars().any(|c| c.is_control()) {
            self.error(
                node.start,
                ErrorKind::InvalidValue,
                format!(
                    "sent_items.folder must be 1 to 255 printable characters, found {}",
                    quote(&f)
                ),
            );
            return Err(());
        }
        Ok(Some(f))
    }

    /// `sent_items: {enabled, folder}` → (enabled, folder), each optional.
    fn sent_items(&mut self, node: &Node) -> (Option<bool>, Option<String>) {
        if node.scalar() == Some(Scalar::Null) {
            return (None, None);
        }
        let mut out = (None, None);
        for (key, v) in self
            .entries(node, "sent_items", SENT_ITEMS_KEYS)
            .unwrap_or_default()
        {
            match key {
                "enabled" => out.0 = self.opt_bool(v, "sent_items.enabled").unwrap_or(None),
                _ => out.1 = self.folder(v).unwrap_or(None),
            }
        }
        out
    }

    /// The organization's own keys; `None` when the document is not a mapping.
    fn organization(&mut self, doc: &Node) -> Option<(Organization, Pos, Vec<Pos>)> {
        let entries = self.entries(doc, "an organization file", ORG_KEYS)?;
        let mut org = Organization {
            name: String::new(),
            domains: Vec::new(),
            smtp_client_authentication_disabled: false,
            max_concurrent_sessions_per_mailbox: DEFAULT_MAX_SESSIONS,
            sent_items: SentItems::default(),
            limits: Limits::default(),
            auth: OrgAuth::default(),
            file: self.file.to_path_buf(),
        };
        let mut limits = LimitOverrides::default();
        let mut name_pos = doc.start;
        let mut domains = Vec::new();
        let mut has_name = false;
        let mut has_domains = false;
        let mut mailboxes = None;
        for (key, v) in entries {
            match key {
                "organization" => {
                    name_pos = v.start;
                    if let Some(name) = self.string(v, "organization") {
                        if valid_org_name(&name) {
                            org.name = name;
                            has_name = true;
                        } else {
                            self.error(
                                v.start,
                                ErrorKind::InvalidValue,
                                format!("organization name {} must be 1 to 64 letters, digits, '.', '-' or '_'", quote(&name)),
                            );
                        }
                    }
                }
                "domains" => {
                    has_domains = true;
                    self.domains(v, &mut domains);
                }
                "smtp_client_authentication_disabled" => {
                    org.smtp_client_authentication_disabled =
                        self.opt_bool(v, key).unwrap_or(None).unwrap_or(false)
                }
                "max_concurrent_sessions_per_mailbox" => {
                    org.max_concurrent_sessions_per_mailbox = self
                        .opt_limit(v, key)
                        .unwrap_or(None)
                        .unwrap_or(DEFAULT_MAX_SESSIONS)
                }
                "sent_items" => {
                    let (enabled, folder) = self.sent_items(v);
                    org.sent_items.enabled = enabled.unwrap_or(true);
                    if let Some(f) = folder {
                        org.sent_items.folder = f;
                    }
                }
                "sending_limits" | "outbound_spam" => self.limit_section(key, v, &mut limits),
                "allow_basic_auth_smtp" => {
                    org.auth.allow_basic_auth_smtp = self.opt_bool(v, key).unwrap_or(None)
                }
                "basic_auth_mode" => org.auth.basic_auth_mode = self.opt_mode(v, key),
                "allow_legacy_tls_clients" => {
                    org.auth.allow_legacy_tls_clients = self.opt_bool(v, key).unwrap_or(None)
                }
                "require_tls" => org.auth.require_tls = self.opt_bool(v, key).unwrap_or(None),
                "tls_mode" => org.auth.tls_mode = self.opt_mode(v, key),
                _ => mailboxes = Some(v),
            }
        }
        // Keys left out (or null) keep Exchange's defaults.
        org.limits = limits.apply(&org.limits);
        if !has_name {
            self.error(
                doc.start,
                ErrorKind::MissingKey,
                "missing key \"organization\" (the organization's name)",
            );
        }
        if !has_domains {
            self.error(
                doc.start,
                ErrorKind::MissingKey,
                "missing key \"domains\" (a list of domains, or [\"*\"] for the fallback organization)",
            );
        }
        if let Some(m) = mailboxes {
            // Empty when the parser streamed them (a mapping); checked here otherwise.
            self.mailboxes(m);
        }
        let (names, positions) = domains.into_iter().unzip();
        org.domains = names;
        Some((org, name_pos, positions))
    }

    fn domains(&mut self, node: &Node, out: &mut Vec<(String, Pos)>) {
        let NodeKind::Seq(items) = &node.kind else {
            self.error(
                node.start,
                ErrorKind::WrongType,
                format!(
                    "domains must be a list of domains, found {}",
                    node.describe()
                ),
            );
            return;
        };
        if items.is_empty() {
            self.error(
                node.start,
                ErrorKind::InvalidValue,
                "domains must list at least one domain",
            );
        }
        for item in items {
            let Some(d) = self.string(item, "each entry of domains") else {
                continue;
            };
            let d = d.trim().to_ascii_lowercase();
            if d != WILDCARD_DOMAIN && !valid_domain(&d) {
                self.error(
                    item.start,
                    ErrorKind::InvalidValue,
                    format!(
                        "{} is not a domain name (ASCII; use the xn-- form for IDNs)",
                        quote(&d)
                    ),
                );
                continue;
            }
            if let Some((_, first)) = out.iter().find(|(x, _)| *x == d) {
                self.error(
                    item.start,
                    ErrorKind::DuplicateDomain,
                    format!(
                        "domain {d:?} is listed twice (first at line {})",
                        first.line
                    ),
                );
                continue;
            }
            out.push((d, item.start));
        }
    }

    /// Checks a `mailboxes` value that the parser did not stream (anything but a mapping, or
    /// a mapping that was not the first `mailboxes` key).
    fn mailboxes(&mut self, node: &Node) {
        if node.scalar() == Some(Scalar::Null) {
            return;
        }
        let Some(map) = node.as_map() else {
            self.error(
                node.start,
                ErrorKind::WrongType,
                format!(
                    "mailboxes must be a mapping of address to settings, found {}",
                    node.describe()
                ),
            );
            return;
        };
        for (k, v) in map {
            self.mailbox(k, v);
        }
    }

    /// Checks one `address: settings` entry of `mailboxes` and stores it in the table.
    fn mailbox(&mut self, k: &Node, v: &Node) {
        if self.full {
            return;
        }
        let Some(Scalar::Str(raw)) = k.scalar() else {
            self.error(
                k.start,
                ErrorKind::WrongType,
                format!("mailbox key must be an address, found {}", k.describe()),
            );
            return;
        };
        let address = raw.trim().to_ascii_lowercase();
        if !valid_address(&address) {
            self.error(
                k.start,
                ErrorKind::InvalidValue,
                format!("{} is not a mailbox address (local@domain)", quote(raw)),
            );
            return;
        }
        let mut settings = MailboxSettings::default();
        if v.scalar() != Some(Scalar::Null) {
            let what = format!("mailbox {address}");
            for (key, val) in self.entries(v, &what, MAILBOX_KEYS).unwrap_or_default() {
                match key {
                    "smtp_client_authentication_disabled" => {
                        settings.smtp_client_authentication_disabled =
                            self.opt_bool(val, key).unwrap_or(None)
                    }
                    "max_concurrent_sessions_per_mailbox" => {
                        settings.max_concurrent_sessions_per_mailbox =
                            self.opt_limit(val, key).unwrap_or(None)
                    }
                    "sending_limits" | "outbound_spam" => {
                        self.limit_section(key, val, &mut settings.overrides.limits)
                    }
                    "allow_basic_auth_smtp" => {
                        settings.overrides.auth.allow_basic_auth_smtp =
                            self.opt_bool(val, key).unwrap_or(None)
                    }
                    "allow_legacy_tls_clients" => {
                        settings.overrides.auth.allow_legacy_tls_clients =
                            self.opt_bool(val, key).unwrap_or(None)
                    }
                    "require_tls" => {
                        settings.overrides.auth.require_tls =
                            self.opt_bool(val, key).unwrap_or(None)
                    }
                    _ => {
                        let (enabled, folder) = self.sent_items(val);
                        settings.sent_items_enabled = enabled;
                        settings.sent_items_folder = folder;
                    }
                }
            }
        }
        let line = u32::try_from(k.start.line).unwrap_or(u32::MAX);
        let column = u32::try_from(k.start.column).unwrap_or(u32::MAX);
        match self.mailboxes.insert(&address, line, column, &settings) {
            Ok(Ok(())) => {}
            Ok(Err(first)) => self.error(
                k.start,
                ErrorKind::DuplicateMailbox,
                format!(
                    "mailbox {address} is already listed at {}:{}",
                    self.file.display(),
                    first.line
                ),
            ),
            Err(TooLarge::Arena | TooLarge::Count) => {
                self.error(
                    k.start,
                    ErrorKind::TooLarge,
                    "this file holds more mailboxes than submitgate can load",
                );
                self.full = true;
            }
        }
    }
}

fn valid_org_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// A lower-case ASCII domain: dot-separated labels of letters, digits and hyphens.
pub fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// `local@domain` with a sane local part (no spaces or control characters).
pub fn valid_address(a: &str) -> bool {
    match a.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && local.len() <= 64
                && !local.chars().any(|c| c.is_whitespace() || c.is_control())
                && valid_domain(domain)
        }
        None => false,
    }
}

/// The known key closest to a misspelt one, when it is close enough to be a likely typo.
fn suggest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 5))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
