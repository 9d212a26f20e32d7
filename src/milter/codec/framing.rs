//! The length-prefixed frame: a 4-byte big-endian length (command byte + data), the command
//! byte, the data. "Check, then parse": [`take_frame`] cuts one whole frame out of the buffer
//! (incomplete is `Ok(None)`) and enforces the size cap; [`write_frame`] writes one; [`Fields`]
//! reads a frame's data field by field. [`MilterCodec`] and [`MtaCodec`] are the two
//! `tokio_util::codec` sides built on them.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::commands::{is_command, Command};
use super::constants::{DEFAULT_MAX_FRAME, MILTER_LEN_BYTES};
use super::replies::{is_modelled_reply, Reply};
use super::CodecError;

/// Sequential reader over a frame's data; every field check names the command on failure.
pub(super) struct Fields {
    pub(super) command: u8,
    pub(super) rest: Bytes,
}

impl Fields {
    pub(super) fn malformed(&self, reason: &'static str) -> CodecError {
        CodecError::Malformed {
            command: self.command,
            reason,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// A NUL-terminated string, without its NUL.
    pub(super) fn string(&mut self, missing: &'static str) -> Result<Bytes, CodecError> {
        match self.rest.iter().position(|&b| b == 0) {
            Some(end) => {
                let s = self.rest.split_to(end);
                self.rest.advance(1);
                Ok(s)
            }
            None => Err(self.malformed(missing)),
        }
    }

    pub(super) fn u8(&mut self, missing: &'static str) -> Result<u8, CodecError> {
        if self.rest.is_empty() {
            return Err(self.malformed(missing));
        }
        Ok(self.rest.get_u8())
    }

    pub(super) fn u16(&mut self, missing: &'static str) -> Result<u16, CodecError> {
        if self.rest.len() < 2 {
            return Err(self.malformed(missing));
        }
        Ok(self.rest.get_u16())
    }

    pub(super) fn u32(&mut self, missing: &'static str) -> Result<u32, CodecError> {
        if self.rest.len() < 4 {
            return Err(self.malformed(missing));
        }
        Ok(self.rest.get_u32())
    }

    /// The three words of an option negotiation (version, actions, protocol), in either
    /// direction; what may follow them (macro lists) is left in the fields.
    pub(super) fn optneg(&mut self) -> Result<(u32, u32, u32), CodecError> {
        const SHORT: &str = "shorter than 12 bytes";
        Ok((self.u32(SHORT)?, self.u32(SHORT)?, self.u32(SHORT)?))
    }

    /// One or more NUL-terminated strings filling the rest of the data.
    pub(super) fn strings(&mut self, none: &'static str) -> Result<Vec<Bytes>, CodecError> {
        if self.is_empty() {
            return Err(self.malformed(none));
        }
        let mut out = Vec::new();
        while !self.is_empty() {
            out.push(self.string("argument without terminating NUL")?);
        }
        Ok(out)
    }

    pub(super) fn finish(self) -> Result<(), CodecError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("unexpected data after the last field"))
        }
    }
}

pub(super) fn put_string(dst: &mut BytesMut, command: u8, s: &[u8]) -> Result<(), CodecError> {
    if s.contains(&0) {
        return Err(CodecError::Malformed {
            command,
            reason: "NUL inside a string field",
        });
    }
    dst.put_slice(s);
    dst.put_u8(0);
    Ok(())
}

/// Writes length placeholder + `code`, lets `body` write the data, then fills in the length.
pub(super) fn write_frame(
    dst: &mut BytesMut,
    code: u8,
    body: impl FnOnce(&mut BytesMut) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    let start = dst.len();
    dst.put_u32(0);
    dst.put_u8(code);
    if let Err(e) = body(dst) {
        dst.truncate(start);
        return Err(e);
    }
    let len = dst.len() - start - MILTER_LEN_BYTES;
    let Ok(wire_len) = u32::try_from(len) else {
        dst.truncate(start);
        return Err(CodecError::FrameTooLarge {
            len,
            max: u32::MAX as usize,
        });
    };
    dst[start..start + MILTER_LEN_BYTES].copy_from_slice(&wire_len.to_be_bytes());
    Ok(())
}

/// "Check, then parse": if `src` holds a whole frame, removes it and returns its code and
/// data. The length and command byte are checked as soon as they arrive, so that a bad frame
/// fails before its claimed data has been buffered; nothing is reserved ahead of arrival.
fn take_frame(
    src: &mut BytesMut,
    max_frame: usize,
    known: fn(u8) -> bool,
    unknown: fn(u8) -> CodecError,
) -> Result<Option<(u8, Bytes)>, CodecError> {
    let Some(&[a, b, c, d]) = src.get(..MILTER_LEN_BYTES) else {
        return Ok(None);
    };
    let len = usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
    if len == 0 {
        return Err(CodecError::ZeroLength);
    }
    if len > max_frame {
        return Err(CodecError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    let Some(&code) = src.get(MILTER_LEN_BYTES) else {
        return Ok(None);
    };
    if !known(code) {
        return Err(unknown(code));
    }
    if src.len() - MILTER_LEN_BYTES < len {
        return Ok(None);
    }
    src.advance(MILTER_LEN_BYTES + 1);
    let data = src.split_to(len - 1).freeze();
    Ok(Some((code, data)))
}

/// The filter's side of the wire: decodes [`Command`]s, encodes [`Reply`]s.
#[derive(Debug, Clone)]
pub struct MilterCodec {
    max_frame: usize,
}

impl MilterCodec {
    /// A codec refusing frames whose length field exceeds `max_frame` bytes.
    pub fn new(max_frame: usize) -> MilterCodec {
        MilterCodec { max_frame }
    }

    /// The frame length cap.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
}

impl Default for MilterCodec {
    fn default() -> MilterCodec {
        MilterCodec::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for MilterCodec {
    type Item = Command;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Command>, CodecError> {
        match take_frame(src, self.max_frame, is_command, CodecError::UnknownCommand)? {
            Some((code, data)) => Command::parse(code, data).map(Some),
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Command>, CodecError> {
        decode_eof(self, src)
    }
}

impl Encoder<Reply> for MilterCodec {
    type Error = CodecError;

    fn encode(&mut self, reply: Reply, dst: &mut BytesMut) -> Result<(), CodecError> {
        reply.encode(dst)
    }
}

impl Encoder<&Reply> for MilterCodec {
    type Error = CodecError;

    fn encode(&mut self, reply: &Reply, dst: &mut BytesMut) -> Result<(), CodecError> {
        reply.encode(dst)
    }
}

/// The MTA's side of the wire: encodes [`Command`]s, decodes [`Reply`]s. For tests and the load
/// generator, which play Postfix.
#[derive(Debug, Clone)]
pub struct MtaCodec {
    max_frame: usize,
}

impl MtaCodec {
    /// A codec refusing reply frames whose length field exceeds `max_frame` bytes.
    pub fn new(max_frame: usize) -> MtaCodec {
        MtaCodec { max_frame }
    }
}

impl Default for MtaCodec {
    fn default() -> MtaCodec {
        MtaCodec::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for MtaCodec {
    type Item = Reply;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, CodecError> {
        match take_frame(
            src,
            self.max_frame,
            is_modelled_reply,
            CodecError::UnknownReply,
        )? {
            Some((code, data)) => Reply::parse(code, data).map(Some),
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, CodecError> {
        decode_eof(self, src)
    }
}

impl Encoder<Command> for MtaCodec {
    type Error = CodecError;

    fn encode(&mut self, command: Command, dst: &mut BytesMut) -> Result<(), CodecError> {
        command.encode(dst)
    }
}

impl Encoder<&Command> for MtaCodec {
    type Error = CodecError;

    fn encode(&mut self, command: &Command, dst: &mut BytesMut) -> Result<(), CodecError> {
        command.encode(dst)
    }
}

/// At end of stream a partial frame is a typed error rather than tokio-util's generic one.
fn decode_eof<D>(codec: &mut D, src: &mut BytesMut) -> Result<Option<D::Item>, CodecError>
where
    D: Decoder<Error = CodecError>,
{
    match codec.decode(src)? {
        Some(item) => Ok(Some(item)),
        None if src.is_empty() => Ok(None),
        None => Err(CodecError::Truncated {
            buffered: src.len(),
        }),
    }
}
