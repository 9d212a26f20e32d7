//! The records a segment file is made of (see docs/architecture.md, "Records"): a 48-byte
//! [`Header`] — magic, CRC-32, kind, the entry's id or the offset of the entry a record is
//! about, two lengths — then `data` and `json` bytes. An entry record carries the message and
//! its metadata, a state record a delivery state, a done record nothing. Here: encoding,
//! [`Header::read`] with its bounds checks, [`verify`] of the checksum, [`Message`] (the message
//! of an entry, read at its offset), and the RFC 3339 serde helpers for the times in metadata
//! and delivery state.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{blocking, corrupt, io_err, EntryId, SpoolError};

/// Size of the header that starts every record.
pub const HEADER_LEN: u64 = 48;
/// First 8 bytes of every record; the digit is the format version.
pub const RECORD_MAGIC: [u8; 8] = *b"SGSPOOL2";
/// Largest metadata or state JSON a reader accepts (guards against a corrupt length).
pub const MAX_META_BYTES: u64 = 16 * 1024 * 1024;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A committed message: `data` is the message, `json` its [`EntryMeta`](super::EntryMeta).
    Entry = 1,
    /// The entry at `target` has this [`DeliveryState`](super::DeliveryState) (`json`); the
    /// last one in the file counts.
    State = 2,
    /// The entry at `target` has left the queue (stored, or copied to `failed/`).
    Done = 3,
}

/// A record's header, as written and as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) kind: Kind,
    /// Entry records: the entry's id.
    pub(super) id: Option<EntryId>,
    /// State and done records: the offset of their entry record in the same file.
    pub(super) target: u64,
    pub(super) data_len: u64,
    pub(super) json_len: u64,
}

impl Header {
    /// The header of an entry record.
    pub(super) fn entry(id: EntryId, data_len: u64, json_len: u64) -> Header {
        Header {
            kind: Kind::Entry,
            id: Some(id),
            target: 0,
            data_len,
            json_len,
        }
    }

    /// The whole record's length.
    pub(super) fn record_len(&self) -> u64 {
        HEADER_LEN + self.data_len + self.json_len
    }

    /// Bytes 12..48 of the header: everything but the magic and the checksum. The checksum
    /// covers them after the body, so that a writer can hash the body as it streams and fill
    /// the lengths in at the end.
    pub(super) fn fields(&self) -> [u8; 36] {
        let mut f = [0u8; 36];
        f[0] = self.kind as u8;
        let (a, b, c) = match self.id {
            Some(id) => (id.micros, id.seq, id.pid),
            None => (self.target, 0, 0),
        };
        f[4..12].copy_from_slice(&a.to_be_bytes());
        f[12..20].copy_from_slice(&b.to_be_bytes());
        f[20..24].copy_from_slice(&c.to_be_bytes());
        // Bounded by MAX_META_BYTES where it is built and where it is read.
        f[24..28].copy_from_slice(&(self.json_len as u32).to_be_bytes());
        f[28..36].copy_from_slice(&self.data_len.to_be_bytes());
        f
    }

    /// The 48 header bytes, given the checksum of the body (see [`Checksum`]).
    pub(super) fn encode(&self, body: Checksum) -> [u8; HEADER_LEN as usize] {
        let fields = self.fields();
        let mut crc = body.0;
        crc.update(&fields);
        let mut h = [0u8; HEADER_LEN as usize];
        h[..8].copy_from_slice(&RECORD_MAGIC);
        h[8..12].copy_from_slice(&crc.finalize().to_be_bytes());
        h[12..].copy_from_slice(&fields);
        h
    }

    /// Reads and checks the header of the record at `offset` in a file of `file_len` bytes:
    /// magic, kind, reserved bytes, a JSON length within [`MAX_META_BYTES`], and a record
    /// that ends within the file. Returns the header and its stored checksum; an error says
    /// what is wrong (the caller decides whether that is a torn tail or damage).
    pub(super) fn read(
        file: &File,
        offset: u64,
        file_len: u64,
    ) -> Result<(Header, u32), BadRecord> {
        let room = file_len.saturating_sub(offset);
        if room < HEADER_LEN {
            return Err(BadRecord::Short(format!(
                "{room} bytes left at offset {offset}, less than a header"
            )));
        }
        let mut h = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut h, offset)
            .map_err(|e| BadRecord::Io("read record header of", e))?;
        if h.iter().all(|b| *b == 0) {
            return Err(BadRecord::Unwritten);
        }
        if h[..8] != RECORD_MAGIC {
            return Err(BadRecord::Damaged(format!(
                "no record magic at offset {offset}"
            )));
        }
        let crc = be_u32(&h[8..12]);
        let kind = match h[12] {
            1 => Kind::Entry,
            2 => Kind::State,
            3 => Kind::Done,
            k => {
                return Err(BadRecord::Damaged(format!(
                    "unknown record kind {k} at offset {offset}"
                )))
            }
        };
        if h[13..16] != [0, 0, 0] {
            return Err(BadRecord::Damaged(format!(
                "reserved header bytes set at offset {offset}"
            )));
        }
        let (a, b, c) = (be_u64(&h[16..24]), be_u64(&h[24..32]), be_u32(&h[32..36]));
        let json_len = u64::from(be_u32(&h[36..40]));
        let data_len = be_u64(&h[40..48]);
        let header = Header {
            kind,
            id: (kind == Kind::Entry).then_some(EntryId {
                micros: a,
                seq: b,
                pid: c,
            }),
            target: if kind == Kind::Entry { 0 } else { a },
            data_len,
            json_len,
        };
        let shape_ok = match kind {
            Kind::Entry => true,
            Kind::State => data_len == 0 && b == 0 && c == 0,
            Kind::Done => data_len == 0 && json_len == 0 && b == 0 && c == 0,
        };
        if !shape_ok || json_len > MAX_META_BYTES {
            return Err(BadRecord::Damaged(format!(
                "impossible lengths in the {kind:?} record at offset {offset}"
            )));
        }
        let fits = data_len
            .checked_add(json_len)
            .and_then(|n| n.checked_add(HEADER_LEN))
            .is_some_and(|n| n <= room);
        if !fits {
            return Err(BadRecord::Short(format!(
                "the record at offset {offset} says {} + {data_len} + {json_len} bytes, {room} are left",
                HEADER_LEN
            )));
        }
        Ok((header, crc))
    }
}

/// Why a record could not be read.
#[derive(Debug)]
pub(super) enum BadRecord {
    /// Zeros where a header would be: the preallocated, not yet written part of a segment
    /// (see `commit::SEGMENT_BYTES`), or a hole a power loss left.
    Unwritten,
    /// The file ends inside the record.
    Short(String),
    /// The bytes are not a record (magic, kind, lengths or checksum wrong).
    Damaged(String),
    /// Reading failed.
    Io(&'static str, io::Error),
}

impl BadRecord {
    /// As a spool error about `path`.
    pub(super) fn into_error(self, path: &Path) -> SpoolError {
        match self {
            BadRecord::Unwritten => corrupt(path, "zeros where a record should be"),
            BadRecord::Short(why) | BadRecord::Damaged(why) => corrupt(path, why),
            BadRecord::Io(op, e) => io_err(op, path)(e),
        }
    }

    /// What is wrong, for log lines.
    pub(super) fn describe(&self) -> String {
        match self {
            BadRecord::Unwritten => "zeros where a record should be".to_string(),
            BadRecord::Short(why) | BadRecord::Damaged(why) => why.clone(),
            BadRecord::Io(op, e) => format!("cannot {op}: {e}"),
        }
    }
}

/// The running CRC-32 of a record's body (`data`, then `json`).
#[derive(Debug, Clone, Default)]
pub(super) struct Checksum(crc32fast::Hasher);

impl Checksum {
    pub(super) fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Reads the body of the record at `offset` and compares its checksum with the one in the
/// header: a record whose bytes did not all reach the disk (a crash before its fdatasync
/// finished) fails here even where the file's length says it is whole.
pub(super) fn verify(
    file: &File,
    offset: u64,
    header: &Header,
    stored: u32,
) -> Result<(), BadRecord> {
    let mut crc = Checksum::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = offset + HEADER_LEN;
    let end = offset + header.record_len();
    while pos < end {
        let n = usize::try_from((end - pos).min(buf.len() as u64)).unwrap_or(buf.len());
        file.read_exact_at(&mut buf[..n], pos)
            .map_err(|e| BadRecord::Io("read record of", e))?;
        crc.update(&buf[..n]);
        pos += n as u64;
    }
    let mut all = crc.0;
    all.update(&header.fields());
    if all.finalize() != stored {
        return Err(BadRecord::Damaged(format!(
            "checksum mismatch in the record at offset {offset}"
        )));
    }
    Ok(())
}

/// A whole state or done record about the entry at `target`, ready to append.
pub(super) fn small_record(kind: Kind, target: u64, json: &[u8]) -> Vec<u8> {
    let header = Header {
        kind,
        id: None,
        target,
        data_len: 0,
        json_len: json.len() as u64,
    };
    let mut body = Checksum::default();
    body.update(json);
    let mut record = Vec::with_capacity(HEADER_LEN as usize + json.len());
    record.extend_from_slice(&header.encode(body));
    record.extend_from_slice(json);
    record
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(bytes);
    u64::from_be_bytes(word)
}

fn be_u32(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(bytes);
    u32::from_be_bytes(word)
}

/// The message bytes of an entry, opened, checked and positioned at the message's first
/// byte; read it with the method that suits.
#[derive(Debug)]
pub struct Message {
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) len: u64,
}

impl Message {
    /// Opens the message of `len` bytes at `offset` in `file` (blocking: one `lseek`).
    pub(super) fn at(
        path: PathBuf,
        mut file: File,
        offset: u64,
        len: u64,
    ) -> Result<Message, SpoolError> {
        file.seek(SeekFrom::Start(offset))
            .map_err(io_err("seek in", &path))?;
        Ok(Message { path, file, len })
    }

    /// Message size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The segment file this message is read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Streams the message from async code.
    pub fn into_async_read(self) -> tokio::io::Take<tokio::fs::File> {
        use tokio::io::AsyncReadExt;
        tokio::fs::File::from_std(self.file).take(self.len)
    }

    /// Streams the message with blocking reads (for use on a blocking thread).
    pub fn into_read(self) -> io::Take<File> {
        self.file.take(self.len)
    }

    /// Reads the whole message into memory (as an IMAP literal needs it).
    pub async fn read_to_vec(self) -> Result<Vec<u8>, SpoolError> {
        blocking(move || {
            let Message { path, file, len } = self;
            let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            file.take(len)
                .read_to_end(&mut bytes)
                .map_err(io_err("read", &path))?;
            if bytes.len() as u64 != len {
                return Err(corrupt(&path, "shorter than its record header says"));
            }
            Ok(bytes)
        })
        .await?
    }
}

/// `SystemTime` as RFC 3339 UTC with nanoseconds, so that it round-trips exactly.
pub(super) mod rfc3339 {
    use std::time::{SystemTime, UNIX_EPOCH};

    use serde::{de::Error as _, ser::Error as _, Deserialize, Deserializer, Serializer};

    /// First second humantime cannot format (year 10000).
    const END: u64 = 253_402_300_800;

    pub fn format(t: SystemTime) -> Result<String, String> {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) if d.as_secs() < END => Ok(humantime::format_rfc3339_nanos(t).to_string()),
            _ => Err(format!("time {t:?} is outside 1970..9999")),
        }
    }

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t).map_err(S::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text).map_err(D::Error::custom)
    }

    pub mod option {
        use std::time::SystemTime;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(text) => humantime::parse_rfc3339(&text)
                    .map(Some)
                    .map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }
}
