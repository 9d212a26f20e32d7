//! The entry file on disk — message bytes, metadata JSON, then a 24-byte footer (message
//! length, metadata length, magic) — written by [`encode_trailer`], read back and checked by
//! [`Layout`] (see docs/architecture.md, "Entry file"); [`Message`], the message of a checked
//! entry; and the RFC 3339 serde helpers for the times in metadata and delivery state.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{blocking, corrupt, io_err, EntryMeta, SpoolError};

/// Size of the footer that ends every entry file.
pub const FOOTER_LEN: u64 = 24;
/// Last 8 bytes of every entry file; the digit is the format version.
pub const FOOTER_MAGIC: [u8; 8] = *b"SGSPOOL1";
/// Largest metadata trailer a reader accepts (guards against a corrupt length).
pub const MAX_META_BYTES: u64 = 16 * 1024 * 1024;

/// Appends what follows the message bytes in an entry file: `meta` as JSON, then the footer
/// for a message of `msg_len` bytes.
pub(super) fn encode_trailer(
    meta: &EntryMeta,
    msg_len: u64,
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    let json = serde_json::to_vec(meta)?;
    out.extend_from_slice(&json);
    out.extend_from_slice(&footer(msg_len, json.len() as u64));
    Ok(())
}

/// Positions inside an entry file, read from and checked against its footer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub(super) msg_len: u64,
    pub(super) meta_len: u64,
}

impl Layout {
    pub(super) fn read(file: &File, path: &Path) -> Result<Layout, SpoolError> {
        let len = file.metadata().map_err(io_err("stat", path))?.len();
        if len < FOOTER_LEN {
            return Err(corrupt(
                path,
                format!("{len} bytes, shorter than the footer"),
            ));
        }
        let mut footer = [0u8; FOOTER_LEN as usize];
        file.read_exact_at(&mut footer, len - FOOTER_LEN)
            .map_err(io_err("read footer of", path))?;
        let (lengths, magic) = footer.split_at(16);
        if magic != FOOTER_MAGIC {
            return Err(corrupt(path, "no footer magic (truncated or not an entry)"));
        }
        let (msg_len, meta_len) = lengths.split_at(8);
        let layout = Layout {
            msg_len: be_u64(msg_len),
            meta_len: be_u64(meta_len),
        };
        let total = layout
            .msg_len
            .checked_add(layout.meta_len)
            .and_then(|n| n.checked_add(FOOTER_LEN));
        if total != Some(len) {
            return Err(corrupt(
                path,
                format!(
                    "footer says {} + {} + {FOOTER_LEN} bytes, file has {len}",
                    layout.msg_len, layout.meta_len
                ),
            ));
        }
        if layout.meta_len > MAX_META_BYTES {
            return Err(corrupt(
                path,
                format!("{} bytes of metadata", layout.meta_len),
            ));
        }
        Ok(layout)
    }

    pub(super) fn meta(&self, file: &File, path: &Path) -> Result<EntryMeta, SpoolError> {
        // Bounded by MAX_META_BYTES above.
        let mut json = vec![0u8; self.meta_len as usize];
        file.read_exact_at(&mut json, self.msg_len)
            .map_err(io_err("read metadata of", path))?;
        let meta: EntryMeta =
            serde_json::from_slice(&json).map_err(|e| corrupt(path, format!("metadata: {e}")))?;
        if meta.size != self.msg_len {
            return Err(corrupt(
                path,
                format!(
                    "metadata size {} but {} message bytes",
                    meta.size, self.msg_len
                ),
            ));
        }
        Ok(meta)
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(bytes);
    u64::from_be_bytes(word)
}

fn footer(msg_len: u64, meta_len: u64) -> [u8; FOOTER_LEN as usize] {
    let mut footer = [0u8; FOOTER_LEN as usize];
    footer[..8].copy_from_slice(&msg_len.to_be_bytes());
    footer[8..16].copy_from_slice(&meta_len.to_be_bytes());
    footer[16..].copy_from_slice(&FOOTER_MAGIC);
    footer
}

/// The message bytes of an entry, opened and checked; read it with the method that suits.
#[derive(Debug)]
pub struct Message {
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) len: u64,
}

impl Message {
    /// Message size in bytes (the metadata trailer excluded).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entry file this message is read from.
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
                return Err(corrupt(&path, "shorter than its footer says"));
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
