//! The milter wire format: frames ↔ typed [`Command`]s (MTA → filter) and [`Reply`]s
//! (filter → MTA), as `tokio_util::codec` codecs. No I/O and no policy here.
//!
//! A frame is a 4-byte big-endian length (counting the command byte and the data), one command
//! byte, then the data. The decoder first checks that a whole frame has arrived ("incomplete" is
//! `Ok(None)`, never an error), then parses it; every malformed input is a [`CodecError`], on
//! which the caller closes that one connection. Parsed fields are [`Bytes`](bytes::Bytes) slices of the frame
//! (no copies). Names of constants follow libmilter's `mfdef.h` / `mfapi.h`.
//!
//! One job per file, every public item re-exported here (callers write
//! `milter::codec::Command`):
//! - `constants`: command/reply bytes, `SMFIP_*` / `SMFIF_*` flags, [`DEFAULT_MAX_FRAME`];
//! - `commands`: [`Command`], what the MTA sends, and [`macro_value`];
//! - `replies`: [`Reply`], what we answer;
//! - `framing`: the length-prefixed frame and its size cap; [`MilterCodec`] / [`MtaCodec`].

mod commands;
mod constants;
mod framing;
mod replies;

pub use commands::{macro_value, Command};
pub use constants::*;
pub use framing::{MilterCodec, MtaCodec};
pub use replies::{Reply, SmtpReply};

/// Why a frame could not be decoded or encoded, or a reply text is unusable. On any decode
/// error the connection is out of sync and must be closed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Reading or writing the socket failed.
    #[error("milter I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The length field was 0 (a frame holds at least its command byte).
    #[error("milter frame with length 0")]
    ZeroLength,
    /// The length field exceeds the configured cap (or, when encoding, `u32::MAX`).
    #[error("milter frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The announced (or needed) length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A command byte that is not a milter command.
    #[error("unknown milter command '{}'", printable(.0))]
    UnknownCommand(u8),
    /// A reply byte this codec does not model.
    #[error("unknown or unsupported milter reply '{}'", printable(.0))]
    UnknownReply(u8),
    /// The payload does not have the shape its command requires.
    #[error("malformed milter '{}' packet: {reason}", printable(.command))]
    Malformed {
        /// The command (or reply) byte.
        command: u8,
        /// What is wrong.
        reason: &'static str,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed inside a milter frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the incomplete frame that had arrived.
        buffered: usize,
    },
    /// An SMTP reply that Postfix would refuse or mangle.
    #[error("invalid SMTP reply {text:?}: {reason}")]
    InvalidReply {
        /// The offending reply.
        text: String,
        /// What is wrong.
        reason: String,
    },
}

fn printable(byte: &u8) -> String {
    byte.escape_ascii().to_string()
}

#[cfg(test)]
mod tests;
