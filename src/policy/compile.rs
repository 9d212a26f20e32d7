//! The cross-file checks of a load (organization names, domains, the one fallback, each
//! mailbox inside its organization's domains and listed once) and the compiled snapshot.
//!
//! Each file's table was checked on its own when it was compiled (see [`super::table`]); what is
//! left depends on the other files: which organization owns a domain, and which one is the
//! fallback. A mailbox can only be wrong here if its domain is not one of its organization's
//! own, or is one the organization lost to an earlier file, so only the tables with such
//! domains are searched. A reload that keeps most tables therefore costs a few lookups per
//! file, not one per mailbox.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::files::Version;
use super::load::LoadOptions;
use super::table::{domain_of, OrgTable};
use super::{PolicyError, PolicySnapshot, WILDCARD_DOMAIN};
use crate::yaml::{ErrorKind, Pos};

fn err(errors: &mut Vec<PolicyError>, file: &Path, pos: Pos, kind: ErrorKind, message: String) {
    errors.push(PolicyError {
        file: file.to_path_buf(),
        line: pos.line,
        column: pos.column,
        kind,
        message,
    })
}

fn where_(file: &Path, pos: Pos) -> String {
    format!("{}:{}", file.display(), pos.line)
}

/// Cross-file checks and the compiled snapshot.
pub(super) fn compile(
    tables: Vec<Arc<OrgTable>>,
    files: Vec<PathBuf>,
    version: Version,
    opts: &LoadOptions,
    errors: &mut Vec<PolicyError>,
) -> PolicySnapshot {
    let mut by_domain: HashMap<String, usize> = HashMap::new();
    let mut domain_pos: HashMap<&str, (&Path, Pos)> = HashMap::new();
    let mut names: HashMap<String, (&Path, Pos)> = HashMap::new();
    let mut wildcard: Option<(usize, &Path, Pos)> = None;

    for (idx, t) in tables.iter().enumerate() {
        let file = t.org.file.as_path();
        if !t.org.name.is_empty() {
            let key = t.org.name.to_ascii_lowercase();
            if let Some((f, p)) = names.get(&key) {
                err(
                    errors,
                    file,
                    t.name_pos,
                    ErrorKind::DuplicateOrganization,
                    format!(
                        "organization {:?} is already defined at {}",
                        t.org.name,
                        where_(f, *p)
                    ),
                );
            } else {
                names.insert(key, (file, t.name_pos));
            }
        }
        for (d, pos) in t.org.domains.iter().zip(&t.domain_pos) {
            if d == WILDCARD_DOMAIN {
                match &wildcard {
                    Some((_, f, p)) => err(
                        errors,
                        file,
                        *pos,
                        ErrorKind::SecondFallback,
                        format!(
                            "a second fallback organization (\"*\"); the first is at {}",
                            where_(f, *p)
                        ),
                    ),
                    None => wildcard = Some((idx, file, *pos)),
                }
                continue;
            }
            if let Some((f, p)) = domain_pos.get(d.as_str()) {
                err(
                    errors,
                    file,
                    *pos,
                    ErrorKind::DuplicateDomain,
                    format!(
                        "domain {d:?} already belongs to the organization at {}",
                        where_(f, *p)
                    ),
                );
                continue;
            }
            domain_pos.insert(d, (file, *pos));
            by_domain.insert(d.clone(), idx);
        }
    }
    let wildcard = wildcard.map(|(i, _, _)| i);

    // Mailboxes after all domains are known, so "outside its organization" can name the owner.
    for idx in 0..tables.len() {
        check_mailboxes(idx, &tables, &by_domain, wildcard, errors);
    }

    let orgs = tables.iter().map(|t| t.org.clone()).collect();
    let mailbox_count = tables.iter().map(|t| t.mailboxes.len()).sum();
    PolicySnapshot {
        orgs,
        tables,
        by_domain,
        wildcard,
        mailbox_count,
        default_domain: opts.default_domain.as_ref().map(|d| d.to_ascii_lowercase()),
        version: version.finish(),
        loaded_at: SystemTime::now(),
        files,
    }
}

/// The errors of table `idx`'s mailboxes that depend on the other files: a mailbox whose domain
/// another organization owns (named, or "already listed" when that organization lists the
/// address too), or that lies outside every domain of an organization that is not the
/// fallback.
fn check_mailboxes(
    idx: usize,
    tables: &[Arc<OrgTable>],
    by_domain: &HashMap<String, usize>,
    wildcard: Option<usize>,
    errors: &mut Vec<PolicyError>,
) {
    let t = &tables[idx];
    // The domains whose mailboxes are wrong in this table: its own domains that an earlier
    // file owns, and the domains outside its own unless it is the fallback and nobody owns them.
    let mut wrong: HashSet<&str> = t
        .org
        .domains
        .iter()
        .map(String::as_str)
        .filter(|d| by_domain.get(*d).is_some_and(|owner| *owner != idx))
        .collect();
    for d in &t.foreign {
        if wildcard != Some(idx) || by_domain.contains_key(&**d) {
            wrong.insert(d);
        }
    }
    if wrong.is_empty() {
        return;
    }
    let file = t.org.file.as_path();
    for (address, entry) in t.mailboxes.iter() {
        let domain = domain_of(address);
        if !wrong.contains(domain) {
            continue;
        }
        let pos = Pos {
            line: entry.line as usize,
            column: entry.column(),
            index: 0,
        };
        // Where the address rightly belongs; when that file comes first and lists it, this
        // entry is the second listing.
        let rightful = by_domain.get(domain).copied().or(wildcard);
        if let Some(first) = rightful
            .filter(|o| *o < idx)
            .and_then(|o| Some((&tables[o], tables[o].mailboxes.get(address)?)))
        {
            err(
                errors,
                file,
                pos,
                ErrorKind::DuplicateMailbox,
                format!(
                    "mailbox {address} is already listed at {}:{}",
                    first.0.org.file.display(),
                    first.1.line
                ),
            );
            continue;
        }
        match by_domain.get(domain) {
            Some(owner) => {
                let owner = &tables[*owner].org;
                err(errors, file, pos, ErrorKind::OutsideDomains, format!(
                    "mailbox {address} is outside organization {:?}'s domains: {domain} belongs to organization {:?} ({})",
                    t.org.name, owner.name, owner.file.display()
                ));
            }
            None => err(
                errors,
                file,
                pos,
                ErrorKind::OutsideDomains,
                format!(
                    "mailbox {address} is outside organization {:?}'s domains ({})",
                    t.org.name,
                    t.org.domains.join(", ")
                ),
            ),
        }
    }
}
