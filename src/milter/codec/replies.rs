//! What we answer: the typed [`Reply`]s, their encoding, and their parsing as the MTA reads
//! them (for [`super::MtaCodec`]), with Postfix's `%` escaping of SMFIR_REPLYCODE texts.

use bytes::{BufMut, Bytes, BytesMut};

use super::constants::*;
use super::framing::{write_frame, Fields};
use super::CodecError;

/// Whether `code` is a reply byte this codec models.
pub(super) fn is_modelled_reply(code: u8) -> bool {
    matches!(
        code,
        SMFIR_CONTINUE
            | SMFIR_ACCEPT
            | SMFIR_REJECT
            | SMFIR_TEMPFAIL
            | SMFIR_SKIP
            | SMFIR_PROGRESS
            | SMFIR_REPLYCODE
            | SMFIC_OPTNEG
    )
}

/// The SMTP reply carried by [`Reply::ReplyCode`] is the configuration's
/// [`crate::reply::SmtpReply`]: one type, validated once where it is configured (a 4xx/5xx code,
/// an enhanced status code of the same class, 1–400 printable ASCII characters), so whatever the
/// operator wrote is what Postfix passes to the client verbatim.
pub use crate::reply::SmtpReply;

/// The line as sent in SMFIR_REPLYCODE, without its NUL: `%` doubled, because Sendmail treats
/// the reply as a format string and Postfix (milter8.c) turns `%%` back into `%` and drops a
/// lone `%`.
fn reply_wire(reply: &SmtpReply) -> String {
    format!(
        "{} {} {}",
        reply.code,
        reply.enhanced,
        reply.text.replace('%', "%%")
    )
}

/// A packet we send to the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `c`: go on.
    Continue,
    /// `a`: accept the message (at CONNECT/HELO: the connection) without further events.
    Accept,
    /// `r`: reject with the MTA's default text (Postfix: `550 5.7.1 Command rejected`).
    Reject,
    /// `t`: tempfail with the MTA's default text (Postfix: `451 4.7.1 Service unavailable -
    /// try again later`).
    TempFail,
    /// `y`: reject or tempfail with our own code and text, passed to the client verbatim.
    ReplyCode(SmtpReply),
    /// `p`: still working; resets the MTA's timeout. Not an answer: the real one follows.
    Progress,
    /// `s`: skip the remaining body chunks (only if the MTA offered [`SMFIP_SKIP`]).
    Skip,
    /// `O`: our side of option negotiation.
    OptNeg {
        /// Protocol version we speak (≤ the MTA's).
        version: u32,
        /// Actions we may request (a subset of the MTA's offer).
        actions: u32,
        /// Steps we don't want and replies we won't send (`SMFIP_NO*`, `SMFIP_NR_*`).
        protocol: u32,
    },
}

impl Reply {
    /// The reply byte (`SMFIR_*`, or `O` for [`Reply::OptNeg`]).
    pub fn code(&self) -> u8 {
        match self {
            Reply::Continue => SMFIR_CONTINUE,
            Reply::Accept => SMFIR_ACCEPT,
            Reply::Reject => SMFIR_REJECT,
            Reply::TempFail => SMFIR_TEMPFAIL,
            Reply::ReplyCode(_) => SMFIR_REPLYCODE,
            Reply::Progress => SMFIR_PROGRESS,
            Reply::Skip => SMFIR_SKIP,
            Reply::OptNeg { .. } => SMFIC_OPTNEG,
        }
    }

    /// Appends this reply as one frame.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        write_frame(dst, self.code(), |dst| {
            match self {
                Reply::ReplyCode(reply) => {
                    dst.put_slice(reply_wire(reply).as_bytes());
                    dst.put_u8(0);
                }
                Reply::OptNeg {
                    version,
                    actions,
                    protocol,
                } => {
                    dst.put_u32(*version);
                    dst.put_u32(*actions);
                    dst.put_u32(*protocol);
                }
                Reply::Continue
                | Reply::Accept
                | Reply::Reject
                | Reply::TempFail
                | Reply::Progress
                | Reply::Skip => {}
            }
            Ok(())
        })
    }

    /// Parses the data of one frame whose reply byte is `code`, as the MTA would (used by
    /// [`super::MtaCodec`]). A REPLYCODE is un-escaped as Postfix does and validated.
    pub fn parse(code: u8, data: Bytes) -> Result<Reply, CodecError> {
        let mut f = Fields {
            command: code,
            rest: data,
        };
        let reply = match code {
            SMFIR_CONTINUE => Reply::Continue,
            SMFIR_ACCEPT => Reply::Accept,
            SMFIR_REJECT => Reply::Reject,
            SMFIR_TEMPFAIL => Reply::TempFail,
            SMFIR_PROGRESS => Reply::Progress,
            SMFIR_SKIP => Reply::Skip,
            SMFIC_OPTNEG => {
                let (version, actions, protocol) = f.optneg()?;
                // Macro lists may follow; we do not model them.
                return Ok(Reply::OptNeg {
                    version,
                    actions,
                    protocol,
                });
            }
            SMFIR_REPLYCODE => {
                let wire = f.string("reply without terminating NUL")?;
                let line =
                    std::str::from_utf8(&wire).map_err(|_| f.malformed("reply is not UTF-8"))?;
                let line = unescape_percent(line);
                let reply = line
                    .parse()
                    .map_err(|reason| CodecError::InvalidReply { text: line, reason })?;
                Reply::ReplyCode(reply)
            }
            other => return Err(CodecError::UnknownReply(other)),
        };
        // Postfix refuses data after a reply that takes none ("followed by data bytes").
        f.finish()?;
        Ok(reply)
    }
}

/// Postfix's reading of a REPLYCODE: `%%` → `%`, a lone `%` dropped.
fn unescape_percent(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}
