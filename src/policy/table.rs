//! One policy file compiled on its own: its organization, the positions the cross-file checks
//! quote, and its mailbox table. Nothing in it depends on another file, so a table is immutable
//! and shared (an `Arc`) by every snapshot built while its file keeps the same name and text: a
//! reload parses and builds only the files that changed, and the old and the new snapshot hold
//! one copy of everything else.

use std::collections::{BTreeSet, HashSet};

use super::files::Digest;
use super::mailboxes::Mailboxes;
use super::Organization;
use crate::yaml::Pos;

/// A compiled policy file (see the module documentation).
#[derive(Debug)]
pub(super) struct OrgTable {
    /// The organization as the snapshot shows it (`file` is the policy file's path).
    pub org: Organization,
    /// Where the organization's name is (or the document, when it has none).
    pub name_pos: Pos,
    /// Where each of `org.domains` is listed.
    pub domain_pos: Vec<Pos>,
    pub mailboxes: Mailboxes,
    /// The distinct domains of mailboxes outside `org.domains`, sorted: allowed only for the
    /// fallback organization, and only for domains no other organization claims.
    pub foreign: Vec<Box<str>>,
    /// The file's text, as [`super::files::digest`] gives it: equal digest and path, same table.
    pub digest: Digest,
}

impl OrgTable {
    /// Finishes a table once its whole file has been read: finds the mailboxes outside the
    /// organization's own domains and gives back the table's spare capacity.
    pub fn new(
        org: Organization,
        name_pos: Pos,
        domain_pos: Vec<Pos>,
        mut mailboxes: Mailboxes,
        digest: Digest,
    ) -> OrgTable {
        mailboxes.finish();
        let own: HashSet<&str> = org.domains.iter().map(String::as_str).collect();
        let mut foreign = BTreeSet::new();
        for (address, _) in mailboxes.iter() {
            let domain = domain_of(address);
            if !own.contains(domain) && !foreign.contains(domain) {
                foreign.insert(Box::<str>::from(domain));
            }
        }
        drop(own);
        OrgTable {
            org,
            name_pos,
            domain_pos,
            mailboxes,
            foreign: foreign.into_iter().collect(),
            digest,
        }
    }
}

/// The domain of a normalized address (`""` when it has no `@`).
pub(super) fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}
