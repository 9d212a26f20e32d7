//! The mailboxes of a [`super::PolicySnapshot`], stored compactly: every address in one string
//! arena, a fixed 28-byte entry per mailbox (organization index, line, settings, the Sent Items
//! folder as an index into a list of distinct folders, rarely set settings as an index into
//! [`Overrides`]) and a hash index of entry numbers. A million mailboxes take about 60 MB
//! instead of several hundred, and a reload frees a handful of large blocks instead of millions
//! of small ones.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::num::NonZeroU32;

use super::overrides::{Overrides, NO_OVERRIDES};
use super::MailboxSettings;

/// No Sent Items folder of its own (inherits).
const NO_FOLDER: u32 = u32::MAX;

/// One mailbox with settings of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    start: u32,
    len: u16,
    disabled: Option<bool>,
    sent_items_enabled: Option<bool>,
    /// Index of its organization in the snapshot (which names the file).
    pub org: u32,
    /// Line of its key in the organization's file.
    pub line: u32,
    limit: Option<NonZeroU32>,
    folder: u32,
    /// Index into the table's [`Overrides`], or [`NO_OVERRIDES`].
    overrides: u32,
}

impl Entry {
    pub fn max_concurrent_sessions_per_mailbox(&self) -> Option<u32> {
        self.limit.map(NonZeroU32::get)
    }
}

/// Why a mailbox could not be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TooLarge {
    /// The addresses of all files together exceed 4 GiB.
    Arena,
    /// More than 4 Gi mailboxes or distinct folders.
    Count,
}

/// The table of mailboxes, built during a load and read-only afterwards.
#[derive(Clone, Default)]
pub(super) struct Mailboxes {
    names: String,
    entries: Vec<Entry>,
    index: hashbrown::HashTable<u32>,
    hasher: std::collections::hash_map::RandomState,
    folders: Vec<Box<str>>,
    /// The few mailboxes' rarely set settings (see [`super::overrides`]).
    overrides: Vec<Overrides>,
    /// Distinct folders while loading; emptied by [`Mailboxes::finish`].
    folder_ids: HashMap<Box<str>, u32>,
}

impl fmt::Debug for Mailboxes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailboxes")
            .field("entries", &self.entries.len())
            .field("indexed", &self.index.len())
            .field("arena_bytes", &self.names.len())
            .finish()
    }
}

impl Mailboxes {
    /// Appends a mailbox (not yet findable: see [`Mailboxes::index`]); returns its number.
    /// `address` is a validated address (at most 318 bytes).
    pub fn push(
        &mut self,
        address: &str,
        org: u32,
        line: u32,
        settings: &MailboxSettings,
    ) -> Result<u32, TooLarge> {
        let start = u32::try_from(self.names.len()).map_err(|_| TooLarge::Arena)?;
        let len = u16::try_from(address.len()).map_err(|_| TooLarge::Arena)?;
        start.checked_add(u32::from(len)).ok_or(TooLarge::Arena)?;
        let number = u32::try_from(self.entries.len()).map_err(|_| TooLarge::Count)?;
        let folder = match &settings.sent_items_folder {
            None => NO_FOLDER,
            Some(f) => match self.folder_ids.get(f.as_str()) {
                Some(id) => *id,
                None => {
                    let id = u32::try_from(self.folders.len())
                        .ok()
                        .filter(|id| *id != NO_FOLDER)
                        .ok_or(TooLarge::Count)?;
                    self.folders.push(f.as_str().into());
                    self.folder_ids.insert(f.as_str().into(), id);
                    id
                }
            },
        };
        let overrides = if settings.overrides.is_empty() {
            NO_OVERRIDES
        } else {
            let id = u32::try_from(self.overrides.len())
                .ok()
                .filter(|id| *id != NO_OVERRIDES)
                .ok_or(TooLarge::Count)?;
            self.overrides.push(settings.overrides);
            id
        };
        self.names.push_str(address);
        self.entries.push(Entry {
            start,
            len,
            disabled: settings.smtp_client_authentication_disabled,
            sent_items_enabled: settings.sent_items_enabled,
            org,
            line,
            limit: settings
                .max_concurrent_sessions_per_mailbox
                .and_then(NonZeroU32::new),
            folder,
            overrides,
        });
        Ok(number)
    }

    /// The address of mailbox `number`.
    pub fn address(&self, number: u32) -> &str {
        address_in(&self.names, &self.entries, number)
    }

    /// Mailbox `number`.
    pub fn entry(&self, number: u32) -> Option<&Entry> {
        self.entries.get(number as usize)
    }

    fn name_of(&self, e: &Entry) -> &str {
        name_in(&self.names, e)
    }

    /// The number of the findable mailbox with this address.
    pub fn find(&self, address: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(address);
        self.index
            .find(hash, |n| self.address(*n) == address)
            .copied()
    }

    /// Makes mailbox `number` findable by its address (the caller checked [`Mailboxes::find`]).
    pub fn index(&mut self, number: u32) {
        let hash = self.hasher.hash_one(self.address(number));
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
    }

    /// The findable mailbox with this address.
    pub fn get(&self, address: &str) -> Option<&Entry> {
        self.find(address).and_then(|n| self.entry(n))
    }

    /// Number of findable mailboxes.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Every findable mailbox, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> + '_ {
        self.index.iter().filter_map(|n| {
            let e = self.entry(*n)?;
            Some((self.name_of(e), e))
        })
    }

    /// The settings of `entry` in their public form.
    pub fn settings(&self, entry: &Entry) -> MailboxSettings {
        MailboxSettings {
            smtp_client_authentication_disabled: entry.disabled,
            max_concurrent_sessions_per_mailbox: entry.max_concurrent_sessions_per_mailbox(),
            sent_items_enabled: entry.sent_items_enabled,
            sent_items_folder: self
                .folders
                .get(entry.folder as usize)
                .map(|f| f.to_string()),
            overrides: self.overrides_of(entry),
        }
    }

    /// The rarely set settings of `entry` (all inherited when it has none).
    pub fn overrides_of(&self, entry: &Entry) -> Overrides {
        self.overrides
            .get(entry.overrides as usize)
            .copied()
            .unwrap_or_default()
    }

    /// Bytes of memory the table holds (capacities, not lengths), for tests and benchmarks.
    pub fn heap_bytes(&self) -> usize {
        self.names.capacity()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.index.capacity() * (std::mem::size_of::<u32>() + 1)
            + self.folders.iter().map(|f| f.len() + 16).sum::<usize>()
            + self.overrides.capacity() * std::mem::size_of::<Overrides>()
    }

    /// Ends the load: drops what only loading needed and gives back spare capacity.
    pub fn finish(&mut self) {
        self.folder_ids = HashMap::new();
        self.names.shrink_to_fit();
        self.entries.shrink_to_fit();
        self.overrides.shrink_to_fit();
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
        assert!(std::mem::size_of::<Entry>() <= 28);
        let mut m = Mailboxes::default();
        let own = MailboxSettings {
            smtp_client_authentication_disabled: Some(true),
            max_concurrent_sessions_per_mailbox: Some(7),
            sent_items_enabled: Some(false),
            sent_items_folder: Some("Gesendet".into()),
            overrides: Overrides {
                auth: super::super::authentication::AuthOverrides {
                    allow_basic_auth_smtp: Some(false),
                    ..Default::default()
                },
            },
        };
        for i in 0..1000u32 {
            let settings = if i % 2 == 0 {
                own.clone()
            } else {
                MailboxSettings::default()
            };
            let n = m.push(&format!("user{i}@a.com"), i % 3, i + 1, &settings);
            let n = n.unwrap();
            assert_eq!(m.find(&format!("user{i}@a.com")), None);
            m.index(n);
        }
        m.finish();
        assert_eq!(m.len(), 1000);
        assert_eq!(m.folders.len(), 1, "folders are interned");
        assert_eq!(
            m.overrides.len(),
            500,
            "only mailboxes with overrides take a slot"
        );
        let e = m.get("user10@a.com").unwrap();
        assert_eq!((e.org, e.line), (1, 11));
        assert_eq!(m.settings(e), own);
        let e = m.get("user11@a.com").unwrap();
        assert_eq!(m.settings(e), MailboxSettings::default());
        assert!(m.get("user1000@a.com").is_none());
        assert_eq!(m.iter().count(), 1000);
    }
}
