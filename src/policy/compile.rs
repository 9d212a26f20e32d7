//! The cross-file checks of a load (organization names, domains, the one fallback, each
//! mailbox inside its organization's domains and listed once) and the compiled snapshot.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::files::Version;
use super::load::{LoadOptions, RawOrg};
use super::mailboxes::Mailboxes;
use super::{Organization, PolicyError, PolicySnapshot, WILDCARD_DOMAIN};
use crate::yaml::{ErrorKind, Pos};

/// Cross-file checks and the compiled snapshot.
pub(super) fn compile(
    raw: Vec<RawOrg>,
    mut mailboxes: Mailboxes,
    columns: &[u32],
    files: Vec<PathBuf>,
    version: Version,
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
            auth: r.auth,
            file: r.file.clone(),
        });
    }

    // Mailboxes after all domains are known, so "outside its organization" can name the owner.
    for (idx, r) in raw.iter().enumerate() {
        let is_wildcard = wildcard.as_ref().is_some_and(|(w, _, _)| *w == idx);
        for number in r.mailboxes.clone() {
            let Some(entry) = mailboxes.entry(number).copied() else {
                continue;
            };
            let address = mailboxes.address(number);
            let pos = Pos {
                line: entry.line as usize,
                column: columns.get(number as usize).copied().unwrap_or(0) as usize,
                index: 0,
            };
            if let Some(first) = mailboxes.find(address).and_then(|n| mailboxes.entry(n)) {
                let file = orgs.get(first.org as usize).map(|o| o.file.as_path());
                err(
                    errors,
                    &r.file,
                    pos,
                    ErrorKind::DuplicateMailbox,
                    format!(
                        "mailbox {address} is already listed at {}:{}",
                        file.unwrap_or(Path::new("?")).display(),
                        first.line
                    ),
                );
                continue;
            }
            let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            match by_domain.get(domain) {
                Some(owner) if *owner == idx => {}
                Some(owner) => {
                    err(errors, &r.file, pos, ErrorKind::OutsideDomains, format!(
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
                        pos,
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
            mailboxes.index(number);
        }
    }
    mailboxes.finish();

    PolicySnapshot {
        orgs,
        by_domain,
        wildcard: wildcard.map(|(i, _, _)| i),
        mailboxes,
        default_domain: opts.default_domain.as_ref().map(|d| d.to_ascii_lowercase()),
        version: version.finish(),
        loaded_at: SystemTime::now(),
        files,
    }
}
