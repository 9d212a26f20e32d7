//! Segment files read back ([`scan`]) and the owner's in-memory [`Index`] of the queue built
//! from them: which entries are pending, where each one's record and latest delivery state
//! are, and how many pending entries each segment still holds (a segment whose last entry is
//! done is removed).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;

use super::format::{verify, BadRecord, Header, Kind, HEADER_LEN};
use super::EntryId;

/// The name of a segment file, `<id>.seg`: an id from the same generator as entry ids, so
/// that names are unique, sort by creation time and never collide with each other.
pub(super) type SegmentId = EntryId;

/// An entry record found by a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ScannedEntry {
    pub(super) id: EntryId,
    pub(super) offset: u64,
    pub(super) data_len: u64,
    pub(super) json_len: u64,
    /// The JSON of the last state record about it: (offset, length).
    pub(super) state: Option<(u64, u64)>,
    /// A done record about it follows.
    pub(super) done: bool,
}

/// What a segment file holds, read front to back.
#[derive(Debug)]
pub(super) struct Scan {
    /// Entry records in file order, done ones included.
    pub(super) entries: Vec<ScannedEntry>,
    /// End of the last whole record: where the next record goes.
    pub(super) valid_len: u64,
    /// The file's length when scanned.
    pub(super) file_len: u64,
    /// Why the scan stopped before `file_len`, if it did.
    pub(super) stopped: Option<BadRecord>,
}

impl Scan {
    /// Entries not yet done.
    pub(super) fn live(&self) -> impl Iterator<Item = &ScannedEntry> {
        self.entries.iter().filter(|e| !e.done)
    }
}

/// Reads every record of `file`. With `check_sums`, each record's checksum is verified too
/// (the owner does, at open: only a record that reached the disk whole counts); without, only
/// the headers are checked (`spool list` beside a running daemon, which may be appending).
/// The scan stops at the first record that is not whole; state and done records about an
/// entry that is not in the file (or already done) are skipped. Zeros where the next header
/// would be are the end of what was written (a segment is preallocated with zeros); with
/// `check_sums` everything after them must be zeros too, or the scan stops there as at a
/// damaged record (a hole a power loss left before records that were never answered, which
/// must not come back once new records fill the hole).
pub(super) fn scan(file: &File, check_sums: bool) -> Result<Scan, std::io::Error> {
    let file_len = file.metadata()?.len();
    let mut entries: Vec<ScannedEntry> = Vec::new();
    let mut at: HashMap<u64, usize> = HashMap::new();
    let mut offset = 0;
    let mut stopped = None;
    while offset < file_len {
        let (header, crc) = match Header::read(file, offset, file_len) {
            Ok(read) => read,
            Err(BadRecord::Unwritten) => {
                if check_sums && !zeros_to_end(file, offset, file_len)? {
                    stopped = Some(BadRecord::Damaged(format!(
                        "zeros at offset {offset}, then written bytes"
                    )));
                }
                break;
            }
            Err(bad) => {
                stopped = Some(bad);
                break;
            }
        };
        if check_sums {
            if let Err(bad) = verify(file, offset, &header, crc) {
                stopped = Some(bad);
                break;
            }
        }
        match (header.kind, header.id) {
            (Kind::Entry, Some(id)) => {
                at.insert(offset, entries.len());
                entries.push(ScannedEntry {
                    id,
                    offset,
                    data_len: header.data_len,
                    json_len: header.json_len,
                    state: None,
                    done: false,
                });
            }
            (Kind::State, _) => {
                if let Some(e) = at.get(&header.target).and_then(|&i| entries.get_mut(i)) {
                    if !e.done {
                        e.state = Some((offset + HEADER_LEN, header.json_len));
                    }
                }
            }
            (Kind::Done, _) => {
                if let Some(e) = at.get(&header.target).and_then(|&i| entries.get_mut(i)) {
                    e.done = true;
                }
            }
            (Kind::Entry, None) => {}
        }
        offset += header.record_len();
    }
    Ok(Scan {
        entries,
        valid_len: offset,
        file_len,
        stopped,
    })
}

/// Whether `file` holds only zeros from `offset` to `end`.
fn zeros_to_end(file: &File, mut offset: u64, end: u64) -> Result<bool, std::io::Error> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 64 * 1024];
    while offset < end {
        let want = usize::try_from(end - offset).map_or(buf.len(), |n| n.min(buf.len()));
        let n = file.read_at(&mut buf[..want], offset)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        offset += n as u64;
    }
    Ok(true)
}

/// Where a pending entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub(super) segment: SegmentId,
    pub(super) offset: u64,
    pub(super) data_len: u64,
    pub(super) json_len: u64,
    /// The JSON of its latest delivery state: (offset, length).
    pub(super) state: Option<(u64, u64)>,
    /// Read back from a segment (at open, or put back by `submitgate spool retry`), not
    /// committed by this process: a crash may have come between its delivery and its done
    /// mark (see [`super::Loaded::recovered`]).
    pub(super) recovered: bool,
}

/// One segment of the queue, as the index knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct SegmentInfo {
    /// End of its last record: where the next record goes.
    pub(super) len: u64,
    /// Pending entries in it.
    pub(super) live: usize,
    /// A failed append could not be undone: nothing more is appended to it.
    pub(super) broken: bool,
}

/// The queue as the owner knows it: pending entries and the segments holding them. A segment
/// is in `segments` from the moment its name is chosen (before the file is created or renamed
/// into `queue/`), so that nobody adopts it from a directory listing meanwhile.
#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) entries: BTreeMap<EntryId, Slot>,
    pub(super) segments: BTreeMap<SegmentId, SegmentInfo>,
}

impl Index {
    /// Adds the pending entries of a scanned segment; returns how many there were. An id
    /// already pending elsewhere (which a crash cannot produce) keeps its first place.
    pub(super) fn add(&mut self, segment: SegmentId, scan: &Scan) -> usize {
        let mut live = 0;
        for e in scan.live() {
            live += 1;
            if self.entries.contains_key(&e.id) {
                tracing::warn!(entry = %e.id, segment = %segment, "entry pending twice in the spool; the copy in the older segment is delivered");
                continue;
            }
            self.entries.insert(
                e.id,
                Slot {
                    segment,
                    offset: e.offset,
                    data_len: e.data_len,
                    json_len: e.json_len,
                    state: e.state,
                    recovered: true,
                },
            );
        }
        self.segments.insert(
            segment,
            SegmentInfo {
                len: scan.valid_len,
                live,
                broken: false,
            },
        );
        live
    }
}
