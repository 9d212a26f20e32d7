//! Reading the inputs: a file or standard input, gzip recognised by its magic bytes (members
//! concatenated by `cat a.gz b.gz` are all read), lines read with a length bound so that a file
//! without newlines cannot make the report hold it whole.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

/// Lines longer than this are skipped as malformed (an audit line is well under 1 KiB), so that a
/// file without newlines cannot make the report hold it whole.
pub const MAX_LINE_BYTES: usize = 1 << 20;

const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Opens `path`, or standard input for `-`.
pub(super) fn open(path: &Path) -> io::Result<Box<dyn Read>> {
    if path == Path::new("-") {
        Ok(Box::new(io::stdin().lock()))
    } else {
        Ok(Box::new(File::open(path)?))
    }
}

/// Wraps `raw` in a gzip decoder when it starts with the gzip magic bytes (members concatenated
/// by `cat a.gz b.gz` are all read).
pub(super) fn decompressing(mut raw: Box<dyn Read>) -> io::Result<Box<dyn BufRead>> {
    let mut magic = [0u8; 2];
    let mut n = 0;
    while n < magic.len() {
        match raw.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let input = io::Cursor::new(magic[..n].to_vec()).chain(raw);
    Ok(if magic[..n] == [0x1f, 0x8b] {
        Box::new(BufReader::with_capacity(
            READ_BUFFER_BYTES,
            MultiGzDecoder::new(input),
        ))
    } else {
        Box::new(BufReader::with_capacity(READ_BUFFER_BYTES, input))
    })
}

/// Reads one line into `buf` without its line end, keeping at most `max` bytes of it (the rest
/// is read and dropped). `None` at the end of input; `Some(false)` when the line was cut.
pub(super) fn read_line_bounded(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Option<bool>> {
    buf.clear();
    let mut whole = true;
    let mut any = false;
    loop {
        let chunk = match input.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(any.then_some(whole));
        }
        any = true;
        let newline = chunk.iter().position(|&b| b == b'\n');
        let part = &chunk[..newline.unwrap_or(chunk.len())];
        let room = max.saturating_sub(buf.len());
        if part.len() > room {
            whole = false;
        }
        buf.extend_from_slice(&part[..part.len().min(room)]);
        let used = newline.map_or(chunk.len(), |i| i + 1);
        input.consume(used);
        if newline.is_some() {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Some(whole));
        }
    }
}
