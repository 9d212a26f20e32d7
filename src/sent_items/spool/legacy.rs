//! The layout of earlier versions — one `<id>.msg` file per entry (message, metadata JSON,
//! then a 24-byte footer: message length, metadata length, `SGSPOOL1`) with an optional
//! `<id>.state` beside it — converted at open, so that an upgrade loses no queued copy. Each
//! old entry becomes a segment of its own (its entry record, then its state if it had one:
//! temp file, fdatasync, rename, directory fsync), and only then are the old files removed;
//! a crash in between leaves both, and the next open finds the id converted already and only
//! removes the old files. An old entry that is not whole is left in place with a warning.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::format::{small_record, Checksum, Header, Kind, HEADER_LEN, MAX_META_BYTES};
use super::{
    corrupt, io_err, list_names, remove_if_present, scan, Area, DeliveryState, EntryId, EntryMeta,
    Inner, SpoolError, FILE_MODE, SEGMENT_EXT,
};
use crate::fsutil::TempFile;

const MSG_EXT: &str = ".msg";
const STATE_EXT: &str = ".state";
const FOOTER_LEN: u64 = 24;
const FOOTER_MAGIC: [u8; 8] = *b"SGSPOOL1";

/// True for a file name of the earlier layout.
pub(super) fn is_legacy_name(name: &str) -> bool {
    name.ends_with(MSG_EXT) || name.ends_with(STATE_EXT)
}

/// Converts every old entry in `queue/` and `failed/`; removes old state files whose entry
/// is gone (as the earlier versions did at open). Owner only, at open.
pub(super) fn convert(inner: &Inner) -> Result<(), SpoolError> {
    let mut converted = 0usize;
    for area in [Area::Queue, Area::Failed] {
        let dir = match area {
            Area::Queue => &inner.queue,
            Area::Failed => &inner.failed,
        };
        let names = list_names(&dir.path)?;
        if !names.iter().any(|n| is_legacy_name(n)) {
            continue;
        }
        // Ids already converted by a run that crashed before removing the old files.
        let done: Vec<EntryId> = match area {
            Area::Queue => converted_ids(inner)?,
            Area::Failed => inner.failed_ids()?,
        };
        for name in &names {
            let Some(id) = name
                .strip_suffix(MSG_EXT)
                .and_then(|stem| stem.parse::<EntryId>().ok())
            else {
                continue;
            };
            let msg = dir.path.join(name);
            let state = dir.path.join(format!("{id}{STATE_EXT}"));
            if !done.contains(&id) {
                match convert_one(inner, area, &id, &msg, &state) {
                    Ok(()) => converted += 1,
                    Err(e) if e.is_corrupt() => {
                        tracing::warn!(path = %msg.display(), error = %e, "old spool entry is damaged; not converted, never delivered");
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            remove_if_present(&msg)?;
            remove_if_present(&state)?;
        }
        for name in list_names(&dir.path)? {
            if let Some(stem) = name.strip_suffix(STATE_EXT) {
                if !dir.path.join(format!("{stem}{MSG_EXT}")).exists() {
                    remove_if_present(&dir.path.join(&name))?;
                }
            }
        }
        dir.sync()?;
    }
    if converted > 0 {
        tracing::info!(spool = %inner.root.display(), converted, "converted spool entries of the earlier one-file-per-entry layout");
    }
    Ok(())
}

/// Entry ids in the queue's segments (before the index exists).
fn converted_ids(inner: &Inner) -> Result<Vec<EntryId>, SpoolError> {
    let mut ids = Vec::new();
    for segment in inner.segment_ids()? {
        let path = inner.segment_path(&segment);
        let file = File::open(&path).map_err(io_err("open", &path))?;
        let scanned = scan(&file, false).map_err(io_err("read", &path))?;
        ids.extend(scanned.live().map(|e| e.id));
    }
    Ok(ids)
}

fn convert_one(
    inner: &Inner,
    area: Area,
    id: &EntryId,
    msg: &Path,
    state: &Path,
) -> Result<(), SpoolError> {
    let file = File::open(msg).map_err(io_err("open", msg))?;
    let (msg_len, meta_len) = footer(&file, msg)?;
    // Bounded by MAX_META_BYTES in `footer`.
    let mut json = vec![0u8; meta_len as usize];
    file.read_exact_at(&mut json, msg_len)
        .map_err(io_err("read metadata of", msg))?;
    let meta: EntryMeta =
        serde_json::from_slice(&json).map_err(|e| corrupt(msg, format!("metadata: {e}")))?;
    if meta.size != msg_len {
        return Err(corrupt(
            msg,
            format!("metadata size {} but {msg_len} message bytes", meta.size),
        ));
    }
    let state = match std::fs::read(state) {
        Ok(bytes) => match serde_json::from_slice::<DeliveryState>(&bytes) {
            Ok(s) => Some(s),
            Err(e) => {
                // As the earlier versions read it: "maybe stored", so no duplicate follows.
                tracing::warn!(path = %state.display(), error = %e, "unreadable old delivery state; the entry is converted as \"outcome unknown\"");
                Some(DeliveryState {
                    outcome_unknown: true,
                    ..DeliveryState::default()
                })
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("read", state)(e)),
    };

    let mut temp = TempFile::new(inner.temp_path(), FILE_MODE);
    temp.write_all(&[0u8; HEADER_LEN as usize])?;
    let mut crc = Checksum::default();
    let mut reader = (&file).take(msg_len);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).map_err(io_err("read", msg))?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
        temp.write_all(&buf[..n])?;
    }
    crc.update(&json);
    temp.write_all(&json)?;
    let header = Header::entry(*id, msg_len, meta_len);
    let encoded = header.encode(crc);
    temp.with_file("write", |f| f.write_all_at(&encoded, 0))?;
    if let Some(state) = state {
        let json = serde_json::to_vec(&state).map_err(|e| SpoolError::Encode {
            path: msg.to_path_buf(),
            reason: e.to_string(),
        })?;
        temp.write_all(&small_record(Kind::State, 0, &json))?;
    }
    temp.sync_data()?;
    let dest = match area {
        Area::Queue => inner.segment_path(&inner.next_id()),
        Area::Failed => inner.failed.path.join(format!("{id}{SEGMENT_EXT}")),
    };
    temp.rename_to(&dest, "convert into")?;
    match area {
        Area::Queue => inner.queue.sync(),
        Area::Failed => inner.failed.sync(),
    }
}

/// The old footer's lengths, checked against the file's size.
fn footer(file: &File, path: &Path) -> Result<(u64, u64), SpoolError> {
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
    if footer[16..] != FOOTER_MAGIC {
        return Err(corrupt(path, "no footer magic (truncated or not an entry)"));
    }
    let mut word = [0u8; 8];
    word.copy_from_slice(&footer[..8]);
    let msg_len = u64::from_be_bytes(word);
    word.copy_from_slice(&footer[8..16]);
    let meta_len = u64::from_be_bytes(word);
    let total = msg_len
        .checked_add(meta_len)
        .and_then(|n| n.checked_add(FOOTER_LEN));
    if total != Some(len) || meta_len > MAX_META_BYTES {
        return Err(corrupt(
            path,
            format!("footer says {msg_len} + {meta_len} + {FOOTER_LEN} bytes, file has {len}"),
        ));
    }
    Ok((msg_len, meta_len))
}
