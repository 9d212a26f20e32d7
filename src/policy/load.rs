//! Loading policy files: every file parsed into a positioned tree, every key checked, and the
//! organizations compiled into one [`PolicySnapshot`]. All problems of all files are collected
//! and returned together, each with file, line and column.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{
    MailboxEntry, MailboxSettings, Organization, PolicyError, PolicyErrors, PolicySnapshot,
    SentItems, DEFAULT_MAX_SESSIONS, WILDCARD_DOMAIN,
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
    let mut files = Vec::with_capacity(paths.len());
    let mut errors = Vec::new();
    for path in paths {
        match read_policy_file(dir, &path) {
            Ok(text) => files.push((path, text)),
            Err((kind, message)) => errors.push(PolicyError {
                file: path,
                line: 0,
                column: 0,
                kind,
                message,
            }),
        }
    }
    match load_files(&files, opts) {
        Ok(snap) if errors.is_empty() => Ok(snap),
        Ok(_) => Err(PolicyErrors(errors)),
        Err(PolicyErrors(more)) => {
            errors.extend(more);
            Err(PolicyErrors(errors))
        }
    }
}

/// Whether `path` is named like a policy file: `*.yaml`/`*.yml`, not hidden (editors' swap and
/// temp files start with a dot). Whether it may be read is [`read_policy_file`]'s business: a
/// name that matches but is not a regular file is an error, not silently skipped.
pub fn is_policy_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Reads the policy file `path` of the directory `dir`, refusing what must not be read: a
/// symbolic link that leads out of the directory (a link to `/etc/shadow` must not end up
/// quoted in error messages), anything but a regular file (a fifo would block the loader),
/// more than [`MAX_FILE_BYTES`], text that is not UTF-8. The file is opened without following
/// a link and checked on the open descriptor, so it cannot be swapped between check and read.
pub(super) fn read_policy_file(dir: &Path, path: &Path) -> Result<String, (ErrorKind, String)> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read;
    let unreadable =
        |e: &dyn std::fmt::Display| (ErrorKind::Unreadable, format!("cannot read: {e}"));
    let md = std::fs::symlink_metadata(path).map_err(|e| unreadable(&e))?;
    let real = if md.file_type().is_symlink() {
        let outside = || {
            (
                ErrorKind::OutsideDirectory,
                "is a symbolic link that leads out of the policy directory (or nowhere); refused"
                    .to_string(),
            )
        };
        let real = std::fs::canonicalize(path).map_err(|_| outside())?;
        let real_dir = std::fs::canonicalize(dir).map_err(|e| unreadable(&e))?;
        if !real.starts_with(&real_dir) {
            return Err(outside());
        }
        real
    } else {
        path.to_path_buf()
    };
    // NONBLOCK: opening a fifo must not wait for a writer; NOFOLLOW: no link swapped in.
    let fd = rustix::fs::open(
        &real,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| unreadable(&e))?;
    let mut file = std::fs::File::from(fd);
    let md = file.metadata().map_err(|e| unreadable(&e))?;
    if !md.is_file() {
        let what = if md.is_dir() {
            "a directory"
        } else {
            "a special file"
        };
        return Err((
            ErrorKind::NotRegularFile,
            format!("is {what}, not a regular file; refused"),
        ));
    }
    if md.len() > MAX_FILE_BYTES {
        return Err((
            ErrorKind::TooLarge,
            format!("file is {} bytes; the limit is {MAX_FILE_BYTES}", md.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(md.len()).unwrap_or(0));
    (&mut file)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| unreadable(&e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err((
            ErrorKind::TooLarge,
            format!("file grew past the limit of {MAX_FILE_BYTES} bytes while being read"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        (
            ErrorKind::NotUtf8,
            format!(
                "not valid UTF-8 (byte offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Compiles already-read files (name, text). Used by [`load_dir`], by the policy editor to
/// check a change before it is written, and by tests.
pub fn load_files(
    files: &[(PathBuf, String)],
    opts: &LoadOptions,
) -> Result<PolicySnapshot, PolicyErrors> {
    let mut errors = Vec::new();
    let mut raw_orgs = Vec::new();
    for (path, text) in files {
        let mut ctx = FileCtx {
            file: path,
            errors: &mut errors,
        };
        match yaml::parse(text) {
            Ok(doc) => {
                if let Some(org) = ctx.organization(&doc) {
                    raw_orgs.push(org);
                }
            }
            Err(e) => ctx.error(e.pos, ErrorKind::Syntax, e.message),
        }
    }
    let snap = compile(raw_orgs, files, opts, &mut errors);
    if errors.is_empty() {
        Ok(snap)
    } else {
        // Report in reading order: file by file, top to bottom.
        let file_index = |p: &Path| files.iter().position(|(f, _)| f == p);
        errors.sort_by_key(|e| (file_index(&e.file), e.line, e.column));
        Err(PolicyErrors(errors))
    }
}

/// An organization as read from one file, before the cross-file checks.
struct RawOrg {
    file: PathBuf,
    name: String,
    name_pos: Pos,
    domains: Vec<(String, Pos)>,
    disabled: bool,
    max_sessions: u32,
    sent_items: SentItems,
    mailboxes: Vec<(String, Pos, MailboxSettings)>,
}

struct FileCtx<'a> {
    file: &'a Path,
    errors: &'a mut Vec<PolicyError>,
}

const ORG_KEYS: &[&str] = &[
    "organization",
    "domains",
    "smtp_client_authentication_disabled",
    "max_concurrent_sessions_per_mailbox",
    "sent_items",
    "mailboxes",
];
const MAILBOX_KEYS: &[&str] = &[
    "smtp_client_authentication_disabled",
    "max_concurrent_sessions_per_mailbox",
    "sent_items",
];
const SENT_ITEMS_KEYS: &[&str] = &["enabled", "folder"];

impl FileCtx<'_> {
    fn error(&mut self, pos: Pos, kind: ErrorKind, message: impl Into<String>) {
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
    fn entries<'n>(
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

    fn organization(&mut self, doc: &Node) -> Option<RawOrg> {
        let entries = self.entries(doc, "an organization file", ORG_KEYS)?;
        let mut org = RawOrg {
            file: self.file.to_path_buf(),
            name: String::new(),
            name_pos: doc.start,
            domains: Vec::new(),
            disabled: false,
            max_sessions: DEFAULT_MAX_SESSIONS,
            sent_items: SentItems::default(),
            mailboxes: Vec::new(),
        };
        let mut has_name = false;
        let mut has_domains = false;
        let mut mailboxes = None;
        for (key, v) in entries {
            match key {
                "organization" => {
                    org.name_pos = v.start;
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
                    self.domains(v, &mut org.domains);
                }
                "smtp_client_authentication_disabled" => {
                    org.disabled = self.opt_bool(v, key).unwrap_or(None).unwrap_or(false)
                }
                "max_concurrent_sessions_per_mailbox" => {
                    org.max_sessions = self
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
                _ => mailboxes = Some(v),
            }
        }
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
            self.mailboxes(m, &mut org.mailboxes);
        }
        Some(org)
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

    fn mailboxes(&mut self, node: &Node, out: &mut Vec<(String, Pos, MailboxSettings)>) {
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
            let Some(Scalar::Str(raw)) = k.scalar() else {
                self.error(
                    k.start,
                    ErrorKind::WrongType,
                    format!("mailbox key must be an address, found {}", k.describe()),
                );
                continue;
            };
            let address = raw.trim().to_ascii_lowercase();
            if !valid_address(&address) {
                self.error(
                    k.start,
                    ErrorKind::InvalidValue,
                    format!("{} is not a mailbox address (local@domain)", quote(raw)),
                );
                continue;
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
                        _ => {
                            let (enabled, folder) = self.sent_items(val);
                            settings.sent_items_enabled = enabled;
                            settings.sent_items_folder = folder;
                        }
                    }
                }
            }
            out.push((address, k.start, settings));
        }
    }
}

/// Cross-file checks and the compiled snapshot.
fn compile(
    raw: Vec<RawOrg>,
    files: &[(PathBuf, String)],
    opts: &LoadOptions,
    errors: &mut Vec<PolicyError>,
) -> PolicySnapshot {
    let err =
        |errors: &mut Vec<PolicyError>, file: &Path, pos: Pos, kind: ErrorKind, message: String| {
            errors.push(PolicyError {
                file: file.to_path_buf(),
                line: pos.line,
                column: pos.column,
                kind,
                message,
            })
        };
    let where_ = |file: &Path, pos: Pos| format!("{}:{}", file.display(), pos.line);

    let mut orgs: Vec<Organization> = Vec::with_capacity(raw.len());
    let mut by_domain: HashMap<String, usize> = HashMap::new();
    let mut domain_pos: HashMap<String, (PathBuf, Pos)> = HashMap::new();
    let mut names: HashMap<String, (PathBuf, Pos)> = HashMap::new();
    let mut wildcard: Option<(usize, PathBuf, Pos)> = None;
    let total_mailboxes = raw.iter().map(|o| o.mailboxes.len()).sum();
    let mut mailboxes: HashMap<String, MailboxEntry> = HashMap::with_capacity(total_mailboxes);
    let mut mailbox_pos: HashMap<String, (PathBuf, Pos)> = HashMap::new();

    for r in &raw {
        let idx = orgs.len();
        if !r.name.is_empty() {
            let key = r.name.to_ascii_lowercase();
            if let Some((f, p)) = names.get(&key) {
                err(
                    errors,
                    &r.file,
                    r.name_pos,
                    ErrorKind::DuplicateOrganization,
                    format!(
                        "organization {:?} is already defined at {}",
                        r.name,
                        where_(f, *p)
                    ),
                );
            } else {
                names.insert(key, (r.file.clone(), r.name_pos));
            }
        }
        for (d, pos) in &r.domains {
            if d == WILDCARD_DOMAIN {
                match &wildcard {
                    Some((_, f, p)) => err(
                        errors,
                        &r.file,
                        *pos,
                        ErrorKind::SecondFallback,
                        format!(
                            "a second fallback organization (\"*\"); the first is at {}",
                            where_(f, *p)
                        ),
                    ),
                    None => wildcard = Some((idx, r.file.clone(), *pos)),
                }
                continue;
            }
            if let Some((f, p)) = domain_pos.get(d) {
                err(
                    errors,
                    &r.file,
                    *pos,
                    ErrorKind::DuplicateDomain,
                    format!(
                        "domain {d:?} already belongs to the organization at {}",
                        where_(f, *p)
                    ),
                );
                continue;
            }
            domain_pos.insert(d.clone(), (r.file.clone(), *pos));
            by_domain.insert(d.clone(), idx);
        }
        orgs.push(Organization {
            name: r.name.clone(),
            domains: r.domains.iter().map(|(d, _)| d.clone()).collect(),
            smtp_client_authentication_disabled: r.disabled,
            max_concurrent_sessions_per_mailbox: r.max_sessions,
            sent_items: r.sent_items.clone(),
            file: r.file.clone(),
        });
    }

    // Mailboxes after all domains are known, so "outside its organization" can name the owner.
    for (idx, r) in raw.iter().enumerate() {
        let is_wildcard = wildcard.as_ref().is_some_and(|(w, _, _)| *w == idx);
        for (address, pos, settings) in &r.mailboxes {
            if let Some((f, p)) = mailbox_pos.get(address) {
                err(
                    errors,
                    &r.file,
                    *pos,
                    ErrorKind::DuplicateMailbox,
                    format!("mailbox {address} is already listed at {}", where_(f, *p)),
                );
                continue;
            }
            let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            match by_domain.get(domain) {
                Some(owner) if *owner == idx => {}
                Some(owner) => {
                    err(errors, &r.file, *pos, ErrorKind::OutsideDomains, format!(
                        "mailbox {address} is outside organization {:?}'s domains: {domain} belongs to organization {:?} ({})",
                        r.name, orgs[*owner].name, orgs[*owner].file.display()
                    ));
                    continue;
                }
                None if is_wildcard => {}
                None => {
                    err(
                        errors,
                        &r.file,
                        *pos,
                        ErrorKind::OutsideDomains,
                        format!(
                            "mailbox {address} is outside organization {:?}'s domains ({})",
                            r.name,
                            r.domains
                                .iter()
                                .map(|(d, _)| d.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                    continue;
                }
            }
            mailbox_pos.insert(address.clone(), (r.file.clone(), *pos));
            mailboxes.insert(
                address.clone(),
                MailboxEntry {
                    org: idx,
                    settings: settings.clone(),
                },
            );
        }
    }

    PolicySnapshot {
        orgs,
        by_domain,
        wildcard: wildcard.map(|(i, _, _)| i),
        mailboxes,
        default_domain: opts.default_domain.as_ref().map(|d| d.to_ascii_lowercase()),
        version: version_of(files),
        loaded_at: SystemTime::now(),
        files: files.iter().map(|(p, _)| p.clone()).collect(),
    }
}

/// FNV-1a over file names and contents: a version string that is stable across runs.
fn version_of(files: &[(PathBuf, String)]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (p, text) in files {
        eat(p
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or_default());
        eat(&[0]);
        eat(text.as_bytes());
        eat(&[0]);
    }
    format!("{h:016x}")
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
