//! The mailboxes of one organization (one policy file), stored compactly: every address in one
//! string arena, a fixed 24-byte entry per mailbox (its place in the file and the settings most
//! mailboxes set) and a hash index of entry numbers. Settings few mailboxes set live in a side
//! table of distinct combinations ([`Rare`]) that an entry points into, so the common entry stays
//! small as settings are added. A million mailboxes take about 60 MB instead of several hundred,
//! and a table is a handful of large blocks instead of millions of small ones.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::num::NonZeroU32;

use super::overrides::Overrides;
use super::MailboxSettings;

/// XXH3 with a random seed per table: several times faster than SipHash on addresses, which
/// counts when a large table grows and rehashes. Only the operator's files insert into a table;
/// logins only look up, so flooding one hash chain is not a peer's to try.
#[derive(Clone)]
struct Hasher(u64);

impl Default for Hasher {
    fn default() -> Self {
        Hasher(std::collections::hash_map::RandomState::new().hash_one(0u64))
    }
}

impl Hasher {
    fn hash_one(&self, address: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(address.as_bytes(), self.0)
    }
}

/// The entry uses no [`Rare`] settings.
const NO_RARE: u32 = u32::MAX;

/// One mailbox with settings of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    start: u32,
    len: u16,
    /// Column of its key in the file (saturated at 65 535), for errors found across files.
    column: u16,
    /// Line of its key in the organization's file.
    pub line: u32,
    limit: Option<NonZeroU32>,
    /// Index into [`Mailboxes::rare`], or [`NO_RARE`].
    rare: u32,
    disabled: Option<bool>,
    sent_items_enabled: Option<bool>,
}

impl Entry {
    pub fn max_concurrent_sessions_per_mailbox(&self) -> Option<u32> {
        self.limit.map(NonZeroU32::get)
    }

    /// Column of the mailbox's key (saturated at 65 535).
    pub fn column(&self) -> usize {
        usize::from(self.column)
    }
}

/// The settings that few mailboxes set, as one distinct combination: entries with the same
/// combination share one record. New per-mailbox settings that most mailboxes leave alone
/// belong here rather than in [`Entry`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct Rare {
    sent_items_folder: Option<Box<str>>,
    /// Sending limits and the other rules' rarely set overrides ([`super::overrides`]).
    /// The per-rule overrides (authentication policy, …: [`Overrides`]).
    overrides: Overrides,
}

impl Rare {
    fn of(settings: &MailboxSettings) -> Rare {
        Rare {
            sent_items_folder: settings.sent_items_folder.as_deref().map(Box::from),
            overrides: settings.overrides,
        }
    }

    fn is_empty(&self) -> bool {
        *self == Rare::default()
    }
}

/// Why a mailbox could not be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TooLarge {
    /// The addresses of one file together exceed 4 GiB.
    Arena,
    /// More than 4 Gi mailboxes or distinct combinations of rare settings.
    Count,
}

/// The mailbox table of one organization, built while its file is read and read-only
/// afterwards (shared between snapshots while the file does not change).
#[derive(Clone, Default)]
pub(super) struct Mailboxes {
    names: String,
    entries: Vec<Entry>,
    index: hashbrown::HashTable<u32>,
    hasher: Hasher,
    rare: Vec<Rare>,
    /// Distinct rare combinations while loading; emptied by [`Mailboxes::finish`].
    rare_ids: HashMap<Rare, u32>,
}

impl fmt::Debug for Mailboxes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailboxes")
            .field("entries", &self.entries.len())
            .field("arena_bytes", &self.names.len())
            .field("rare", &self.rare.len())
            .finish()
    }
}

impl Mailboxes {
    /// An empty table with room for about `mailboxes` entries and `bytes` of addresses, so that
    /// a large file's table does not grow by doubling (each doubling holds the old and the new
    /// block at once). Room that is never written costs address space, not memory.
    pub fn with_capacity(mailboxes: usize, bytes: usize) -> Mailboxes {
        let hasher = Hasher::default();
        Mailboxes {
            names: String::with_capacity(bytes),
            entries: Vec::with_capacity(mailboxes),
            index: hashbrown::HashTable::with_capacity(mailboxes),
            hasher,
            ..Mailboxes::default()
        }
    }

    /// Adds a mailbox and makes it findable, unless one with this address is already there:
    /// then returns that one's entry as `Ok(Err(first))`. `address` is a validated address
    /// (at most 318 bytes).
    pub fn insert(
        &mut self,
        address: &str,
        line: u32,
        column: u32,
        settings: &MailboxSettings,
    ) -> Result<Result<(), Entry>, TooLarge> {
        let hash = self.hasher.hash_one(address);
        if let Some(first) = self.find_hashed(hash, address) {
            return Ok(Err(first));
        }
        let start = u32::try_from(self.names.len()).map_err(|_| TooLarge::Arena)?;
        let len = u16::try_from(address.len()).map_err(|_| TooLarge::Arena)?;
        start.checked_add(u32::from(len)).ok_or(TooLarge::Arena)?;
        let number = u32::try_from(self.entries.len()).map_err(|_| TooLarge::Count)?;
        let rare = Rare::of(settings);
        let rare = if rare.is_empty() {
            NO_RARE
        } else if let Some(id) = self.rare_ids.get(&rare) {
            *id
        } else {
            let id = u32::try_from(self.rare.len())
                .ok()
                .filter(|id| *id != NO_RARE)
                .ok_or(TooLarge::Count)?;
            self.rare.push(rare.clone());
            self.rare_ids.insert(rare, id);
            id
        };
        self.names.push_str(address);
        self.entries.push(Entry {
            start,
            len,
            column: u16::try_from(column).unwrap_or(u16::MAX),
            line,
            limit: settings
                .max_concurrent_sessions_per_mailbox
                .and_then(NonZeroU32::new),
            rare,
            disabled: settings.smtp_client_authentication_disabled,
            sent_items_enabled: settings.sent_items_enabled,
        });
        let Mailboxes {
            index,
            hasher,
            names,
            entries,
            ..
        } = self;
        index.insert_unique(hash, number, |n| {
            hasher.hash_one(address_in(names, entries, *n))
        });
        Ok(Ok(()))
    }

    fn find_hashed(&self, hash: u64, address: &str) -> Option<Entry> {
        self.index
            .find(hash, |n| {
                address_in(&self.names, &self.entries, *n) == address
            })
            .and_then(|n| self.entries.get(*n as usize))
            .copied()
    }

    /// The mailbox with this address.
    pub fn get(&self, address: &str) -> Option<&Entry> {
        let hash = self.hasher.hash_one(address);
        self.index
            .find(hash, |n| {
                address_in(&self.names, &self.entries, *n) == address
            })
            .and_then(|n| self.entries.get(*n as usize))
    }

    /// Number of mailboxes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every mailbox, in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> + '_ {
        self.entries.iter().map(|e| (name_in(&self.names, e), e))
    }

    /// The settings of `entry` in their public form.
    pub fn settings(&self, entry: &Entry) -> MailboxSettings {
        let rare = self.rare.get(entry.rare as usize);
        MailboxSettings {
            smtp_client_authentication_disabled: entry.disabled,
            max_concurrent_sessions_per_mailbox: entry.max_concurrent_sessions_per_mailbox(),
            sent_items_enabled: entry.sent_items_enabled,
            sent_items_folder: rare
                .and_then(|r| r.sent_items_folder.as_deref())
                .map(str::to_string),
            overrides: rare.map(|r| r.overrides).unwrap_or_default(),
        }
    }

    /// Bytes of memory the table holds (capacities, not lengths), for tests and benchmarks.
    pub fn heap_bytes(&self) -> usize {
        self.names.capacity()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.index.capacity() * (std::mem::size_of::<u32>() + 1)
            + self.rare.capacity() * std::mem::size_of::<Rare>()
            + self
                .rare
                .iter()
                .map(|r| r.sent_items_folder.as_ref().map_or(0, |f| f.len()))
                .sum::<usize>()
    }

    /// Ends the load: drops what only loading needed and gives back spare capacity.
    pub fn finish(&mut self) {
        self.rare_ids = HashMap::new();
        self.rare.shrink_to_fit();
        self.names.shrink_to_fit();
        self.entries.shrink_to_fit();
        let Mailboxes {
            index,
            hasher,
            names,
            entries,
            ..
        } = self;
        index.shrink_to_fit(|n| hasher.hash_one(address_in(names, entries, *n)));
    }
}

/// The address of `entry` in the arena (free functions, so that the index can rehash while the
/// table is borrowed field by field).
fn name_in<'a>(names: &'a str, entry: &Entry) -> &'a str {
    let start = entry.start as usize;
    names
        .get(start..start + usize::from(entry.len))
        .unwrap_or("")
}

/// The address of mailbox `number`, or `""` for a number that is not in the table.
fn address_in<'a>(names: &'a str, entries: &[Entry], number: u32) -> &'a str {
    entries
        .get(number as usize)
        .map_or("", |e| name_in(names, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_small_and_found_by_address() {
        assert!(std::mem::size_of::<Entry>() <= 24);
        let mut m = Mailboxes::default();
        let own = MailboxSettings {
            smtp_client_authentication_disabled: Some(true),
            max_concurrent_sessions_per_mailbox: Some(7),
            sent_items_enabled: Some(false),
            sent_items_folder: Some("Gesendet".into()),
            overrides: Overrides {
                limits: super::super::limits::LimitOverrides {
                    messages_per_minute: Some(3),
                    ..Default::default()
                },
                auth: super::super::authentication::AuthOverrides {
                    allow_basic_auth_smtp: Some(false),
                    ..Default::default()
                },
            },
        };
        // Overrides alone also take a (shared) rare record.
        let only_auth = MailboxSettings {
            overrides: own.overrides,
            ..MailboxSettings::default()
        };
        for i in 0..1000u32 {
            let settings = if i % 2 == 0 {
                own.clone()
            } else {
                MailboxSettings::default()
            };
            let added = m.insert(&format!("user{i}@a.com"), i + 1, 3, &settings);
            assert_eq!(added, Ok(Ok(())));
        }
        // A second entry for an address gives back the first.
        let again = m.insert("user10@a.com", 2000, 5, &MailboxSettings::default());
        assert!(matches!(again, Ok(Err(e)) if e.line == 11));
        m.insert("auth@a.com", 3000, 3, &only_auth)
            .unwrap()
            .unwrap();
        m.insert("auth2@a.com", 3001, 3, &only_auth)
            .unwrap()
            .unwrap();
        m.finish();
        assert_eq!(m.len(), 1002);
        assert_eq!(m.rare.len(), 2, "rare settings are shared");
        assert_eq!(m.settings(m.get("auth2@a.com").unwrap()), only_auth);
        let e = m.get("user10@a.com").unwrap();
        assert_eq!((e.line, e.column()), (11, 3));
        assert_eq!(m.settings(e), own);
        let e = m.get("user11@a.com").unwrap();
        assert_eq!(m.settings(e), MailboxSettings::default());
        assert!(m.get("user1000@a.com").is_none());
        let order: Vec<&str> = m.iter().take(2).map(|(a, _)| a).collect();
        assert_eq!(order, ["user0@a.com", "user1@a.com"]);
    }
}
