//! The milter wire format: frames ↔ typed [`Command`]s (MTA → filter) and [`Reply`]s
//! (filter → MTA), as `tokio_util::codec` codecs. No I/O and no policy here.
//!
//! A frame is a 4-byte big-endian length (counting the command byte and the data), one command
//! byte, then the data. The decoder first checks that a whole frame has arrived ("incomplete" is
//! `Ok(None)`, never an error), then parses it; every malformed input is a [`CodecError`], on
//! which the caller closes that one connection. Parsed fields are [`Bytes`] slices of the frame
//! (no copies). Names of constants follow libmilter's `mfdef.h` / `mfapi.h`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Default cap on a frame's length field (command byte + data): 1 MiB. Postfix sends body
/// chunks of at most 64 KiB and whole headers (bounded by `header_size_limit`, 100 KiB by
/// default), so this leaves ample room while bounding memory per connection.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Milter protocol version spoken by Postfix ≥ 2.6 and libmilter (8.14+).
pub const SMFI_PROT_VERSION: u32 = 6;
/// Size of the length prefix (and of every 32-bit word) on the wire.
pub const MILTER_LEN_BYTES: usize = 4;
/// Size of the OPTNEG payload: version, actions, protocol (three 32-bit words).
pub const MILTER_OPTLEN: usize = MILTER_LEN_BYTES * 3;
/// Largest body chunk an MTA sends without the `SMFIP_MDS_*` extensions.
pub const MILTER_CHUNK_SIZE: usize = 65535;

// Commands (MTA → filter).
/// Abort the current message (message state only; the connection stays).
pub const SMFIC_ABORT: u8 = b'A';
/// A body chunk.
pub const SMFIC_BODY: u8 = b'B';
/// Connection information.
pub const SMFIC_CONNECT: u8 = b'C';
/// Macro definitions for the command that follows.
pub const SMFIC_MACRO: u8 = b'D';
/// End of message (may carry a final body chunk).
pub const SMFIC_BODYEOB: u8 = b'E';
/// HELO/EHLO.
pub const SMFIC_HELO: u8 = b'H';
/// QUIT, and a new connection follows on the same socket.
pub const SMFIC_QUIT_NC: u8 = b'K';
/// One header.
pub const SMFIC_HEADER: u8 = b'L';
/// MAIL FROM.
pub const SMFIC_MAIL: u8 = b'M';
/// End of headers.
pub const SMFIC_EOH: u8 = b'N';
/// Option negotiation.
pub const SMFIC_OPTNEG: u8 = b'O';
/// QUIT: the connection ends.
pub const SMFIC_QUIT: u8 = b'Q';
/// RCPT TO.
pub const SMFIC_RCPT: u8 = b'R';
/// DATA.
pub const SMFIC_DATA: u8 = b'T';
/// An SMTP command the MTA did not recognize.
pub const SMFIC_UNKNOWN: u8 = b'U';

// Replies (filter → MTA).
/// Add recipient.
pub const SMFIR_ADDRCPT: u8 = b'+';
/// Remove recipient.
pub const SMFIR_DELRCPT: u8 = b'-';
/// Add recipient with ESMTP arguments.
pub const SMFIR_ADDRCPT_PAR: u8 = b'2';
/// 421: shut down (MTA-internal).
pub const SMFIR_SHUTDOWN: u8 = b'4';
/// Accept (the message, or at connect/HELO the whole connection).
pub const SMFIR_ACCEPT: u8 = b'a';
/// Replace body (chunk).
pub const SMFIR_REPLBODY: u8 = b'b';
/// Continue.
pub const SMFIR_CONTINUE: u8 = b'c';
/// Accept and discard the message.
pub const SMFIR_DISCARD: u8 = b'd';
/// Change the envelope sender.
pub const SMFIR_CHGFROM: u8 = b'e';
/// Cause a connection failure.
pub const SMFIR_CONN_FAIL: u8 = b'f';
/// Add a header.
pub const SMFIR_ADDHEADER: u8 = b'h';
/// Insert a header.
pub const SMFIR_INSHEADER: u8 = b'i';
/// Set the list of macros the filter wants per stage.
pub const SMFIR_SETSYMLIST: u8 = b'l';
/// Change a header.
pub const SMFIR_CHGHEADER: u8 = b'm';
/// Still working: resets the MTA's timeout.
pub const SMFIR_PROGRESS: u8 = b'p';
/// Quarantine the message.
pub const SMFIR_QUARANTINE: u8 = b'q';
/// Reject with the MTA's default 5xx text.
pub const SMFIR_REJECT: u8 = b'r';
/// Skip further events of this kind (body chunks).
pub const SMFIR_SKIP: u8 = b's';
/// Tempfail with the MTA's default 4xx text.
pub const SMFIR_TEMPFAIL: u8 = b't';
/// Reply with an explicit SMTP code and text.
pub const SMFIR_REPLYCODE: u8 = b'y';

// Address families in CONNECT.
/// Unknown family: CONNECT carries no port and no address.
pub const SMFIA_UNKNOWN: u8 = b'U';
/// Unix-domain (local) socket.
pub const SMFIA_UNIX: u8 = b'L';
/// IPv4.
pub const SMFIA_INET: u8 = b'4';
/// IPv6.
pub const SMFIA_INET6: u8 = b'6';

// Protocol flags (OPTNEG `protocol` word): events the MTA should not send (`SMFIP_NO*`),
// events the filter will not answer (`SMFIP_NR_*`), and extensions.
/// Don't send CONNECT.
pub const SMFIP_NOCONNECT: u32 = 0x0000_0001;
/// Don't send HELO.
pub const SMFIP_NOHELO: u32 = 0x0000_0002;
/// Don't send MAIL.
pub const SMFIP_NOMAIL: u32 = 0x0000_0004;
/// Don't send RCPT.
pub const SMFIP_NORCPT: u32 = 0x0000_0008;
/// Don't send the body.
pub const SMFIP_NOBODY: u32 = 0x0000_0010;
/// Don't send headers.
pub const SMFIP_NOHDRS: u32 = 0x0000_0020;
/// Don't send end-of-headers.
pub const SMFIP_NOEOH: u32 = 0x0000_0040;
/// No reply to headers.
pub const SMFIP_NR_HDR: u32 = 0x0000_0080;
/// Older name of [`SMFIP_NR_HDR`].
pub const SMFIP_NOHREPL: u32 = SMFIP_NR_HDR;
/// Don't send unknown commands.
pub const SMFIP_NOUNKNOWN: u32 = 0x0000_0100;
/// Don't send DATA.
pub const SMFIP_NODATA: u32 = 0x0000_0200;
/// The MTA understands [`SMFIR_SKIP`].
pub const SMFIP_SKIP: u32 = 0x0000_0400;
/// Also send rejected recipients.
pub const SMFIP_RCPT_REJ: u32 = 0x0000_0800;
/// No reply to CONNECT.
pub const SMFIP_NR_CONN: u32 = 0x0000_1000;
/// No reply to HELO.
pub const SMFIP_NR_HELO: u32 = 0x0000_2000;
/// No reply to MAIL.
pub const SMFIP_NR_MAIL: u32 = 0x0000_4000;
/// No reply to RCPT.
pub const SMFIP_NR_RCPT: u32 = 0x0000_8000;
/// No reply to DATA.
pub const SMFIP_NR_DATA: u32 = 0x0001_0000;
/// No reply to unknown commands.
pub const SMFIP_NR_UNKN: u32 = 0x0002_0000;
/// No reply to end-of-headers.
pub const SMFIP_NR_EOH: u32 = 0x0004_0000;
/// No reply to body chunks.
pub const SMFIP_NR_BODY: u32 = 0x0008_0000;
/// Header values keep their leading space.
pub const SMFIP_HDR_LEADSPC: u32 = 0x0010_0000;
/// Data size up to 256 KiB.
pub const SMFIP_MDS_256K: u32 = 0x1000_0000;
/// Data size up to 1 MiB.
pub const SMFIP_MDS_1M: u32 = 0x2000_0000;
/// Every protocol bit of version 6 (what Postfix 3.7 offers: `0x1fffff`).
pub const SMFI_CURR_PROT: u32 = 0x001F_FFFF;

// Action flags (OPTNEG `actions` word): modifications the filter may request.
/// No modifications.
pub const SMFIF_NONE: u32 = 0x0000_0000;
/// Add headers.
pub const SMFIF_ADDHDRS: u32 = 0x0000_0001;
/// Replace the body.
pub const SMFIF_CHGBODY: u32 = 0x0000_0002;
/// Older name of [`SMFIF_CHGBODY`].
pub const SMFIF_MODBODY: u32 = SMFIF_CHGBODY;
/// Add recipients.
pub const SMFIF_ADDRCPT: u32 = 0x0000_0004;
/// Delete recipients.
pub const SMFIF_DELRCPT: u32 = 0x0000_0008;
/// Change or delete headers.
pub const SMFIF_CHGHDRS: u32 = 0x0000_0010;
/// Quarantine.
pub const SMFIF_QUARANTINE: u32 = 0x0000_0020;
/// Change the envelope sender.
pub const SMFIF_CHGFROM: u32 = 0x0000_0040;
/// Add recipients with ESMTP arguments.
pub const SMFIF_ADDRCPT_PAR: u32 = 0x0000_0080;
/// Set the list of macros wanted per stage.
pub const SMFIF_SETSYMLIST: u32 = 0x0000_0100;
/// Every action of version 6 (what Postfix 3.7 offers: `0x1ff`).
pub const SMFI_CURR_ACTS: u32 = 0x0000_01FF;

// Macro stages (`mfapi.h`). These numbers appear only where a filter asks for macro lists
// (SMFIR_SETSYMLIST, the OPTNEG reply); a MACRO packet names its stage by command letter
// (`SMFIC_*`), see [`Command::Macro`].
/// Macros sent with CONNECT.
pub const SMFIM_CONNECT: u32 = 0;
/// Macros sent with HELO.
pub const SMFIM_HELO: u32 = 1;
/// Macros sent with MAIL.
pub const SMFIM_ENVFROM: u32 = 2;
/// Macros sent with RCPT.
pub const SMFIM_ENVRCPT: u32 = 3;
/// Macros sent with DATA.
pub const SMFIM_DATA: u32 = 4;
/// Macros sent with end-of-message.
pub const SMFIM_EOM: u32 = 5;
/// Macros sent with end-of-headers.
pub const SMFIM_EOH: u32 = 6;

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

/// A packet the MTA sends, decoded. String fields exclude their terminating NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `O`: option negotiation, what the MTA offers (Postfix 3.7: 6, `0x1ff`, `0x1fffff`).
    /// Bytes after the three words are ignored, as libmilter does.
    OptNeg {
        /// Protocol version ([`SMFI_PROT_VERSION`]).
        version: u32,
        /// Actions the filter may request (`SMFIF_*`).
        actions: u32,
        /// Protocol steps the MTA can leave out (`SMFIP_*`).
        protocol: u32,
    },
    /// `D`: macros for the command that follows. Empty packets (stage byte only, or nothing at
    /// all) are legal; Postfix sends `D` `H` with no macros before HELO.
    Macro {
        /// The command letter these macros belong to (`SMFIC_*`, e.g. `b'M'`), as sent; any
        /// byte is accepted; 0 when the packet had no stage byte.
        stage: u8,
        /// `(name, value)` pairs in wire order; names as sent (`{auth_authen}`, `i`).
        macros: Vec<(Bytes, Bytes)>,
    },
    /// `C`: the SMTP client connected.
    Connect {
        /// The client's host name (Postfix: verified name or `unknown`).
        hostname: Bytes,
        /// Address family: [`SMFIA_INET`], [`SMFIA_INET6`], [`SMFIA_UNIX`],
        /// [`SMFIA_UNKNOWN`] (or whatever byte the MTA sent).
        family: u8,
        /// Client port; `None` for [`SMFIA_UNKNOWN`], which carries neither port nor address.
        port: Option<u16>,
        /// Client address as text (`127.0.0.1`, `2001:db8::1`, a socket path); empty for
        /// [`SMFIA_UNKNOWN`].
        address: Bytes,
    },
    /// `H`: the HELO/EHLO argument.
    Helo(Bytes),
    /// `M`: MAIL FROM: the sender (with angle brackets, e.g. `<alice@contoso.com>`), then
    /// ESMTP arguments (`size=51`). Never empty.
    Mail {
        /// Sender first, then ESMTP arguments.
        args: Vec<Bytes>,
    },
    /// `R`: RCPT TO: the recipient (with angle brackets), then ESMTP arguments. Never empty.
    Rcpt {
        /// Recipient first, then ESMTP arguments.
        args: Vec<Bytes>,
    },
    /// `T`: DATA.
    Data,
    /// `L`: one header. A folded value keeps its folds as `\n` followed by the whitespace
    /// (`folded\n header test`); values may exceed 64 KiB.
    Header {
        /// Header name without the colon.
        name: Bytes,
        /// Header value (leading space removed unless [`SMFIP_HDR_LEADSPC`] was negotiated).
        value: Bytes,
    },
    /// `N`: end of headers.
    EndOfHeaders,
    /// `B`: a body chunk, CRLF line ends, as received (no dot-stuffing).
    Body(Bytes),
    /// `E`: end of message. The data is a final body chunk (empty from Postfix); keep it.
    EndOfMessage(Bytes),
    /// `A`: abort the current message (not the connection).
    Abort,
    /// `Q`: the connection ends.
    Quit,
    /// `K`: this connection ends and a new one starts on the same socket.
    QuitNewConnection,
    /// `U`: an SMTP command the MTA did not recognize, as text.
    Unknown(Bytes),
}

/// Sequential reader over a frame's data; every field check names the command on failure.
struct Fields {
    command: u8,
    rest: Bytes,
}

impl Fields {
    fn malformed(&self, reason: &'static str) -> CodecError {
        CodecError::Malformed {
            command: self.command,
            reason,
        }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// A NUL-terminated string, without its NUL.
    fn string(&mut self, missing: &'static str) -> Result<Bytes, CodecError> {
        match self.rest.iter().position(|&b| b == 0) {
            Some(end) => {
                let s = self.rest.split_to(end);
                self.rest.advance(1);
                Ok(s)
            }
            None => Err(self.malformed(missing)),
        }
    }

    fn u8(&mut self, missing: &'static str) -> Result<u8, CodecError> {
        if self.rest.is_empty() {
            return Err(self.malformed(missing));
        }
        Ok(self.rest.get_u8())
    }

    fn u16(&mut self, missing: &'static str) -> Result<u16, CodecError> {
        if self.rest.len() < 2 {
            return Err(self.malformed(missing));
        }
        Ok(self.rest.get_u16())
    }

    fn u32(&mut self, missing: &'static str) -> Result<u32, CodecError> {
        if self.rest.len() < 4 {
            return Err(self.malformed(missing));
        }
        Ok(self.rest.get_u32())
    }

    /// One or more NUL-terminated strings filling the rest of the data.
    fn strings(&mut self, none: &'static str) -> Result<Vec<Bytes>, CodecError> {
        if self.is_empty() {
            return Err(self.malformed(none));
        }
        let mut out = Vec::new();
        while !self.is_empty() {
            out.push(self.string("argument without terminating NUL")?);
        }
        Ok(out)
    }

    fn finish(self) -> Result<(), CodecError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("unexpected data after the last field"))
        }
    }
}

impl Command {
    /// The command byte (`SMFIC_*`).
    pub fn code(&self) -> u8 {
        match self {
            Command::OptNeg { .. } => SMFIC_OPTNEG,
            Command::Macro { .. } => SMFIC_MACRO,
            Command::Connect { .. } => SMFIC_CONNECT,
            Command::Helo(_) => SMFIC_HELO,
            Command::Mail { .. } => SMFIC_MAIL,
            Command::Rcpt { .. } => SMFIC_RCPT,
            Command::Data => SMFIC_DATA,
            Command::Header { .. } => SMFIC_HEADER,
            Command::EndOfHeaders => SMFIC_EOH,
            Command::Body(_) => SMFIC_BODY,
            Command::EndOfMessage(_) => SMFIC_BODYEOB,
            Command::Abort => SMFIC_ABORT,
            Command::Quit => SMFIC_QUIT,
            Command::QuitNewConnection => SMFIC_QUIT_NC,
            Command::Unknown(_) => SMFIC_UNKNOWN,
        }
    }

    /// Whether the MTA waits for a reply to this command, given the negotiated protocol flags
    /// (the `SMFIP_NR_*` bits of our OPTNEG reply). MACRO, ABORT and the QUITs never get one.
    pub fn expects_reply(&self, protocol: u32) -> bool {
        let no_reply = match self {
            Command::Macro { .. } | Command::Abort | Command::Quit | Command::QuitNewConnection => {
                return false
            }
            Command::OptNeg { .. } | Command::EndOfMessage(_) => return true,
            Command::Connect { .. } => SMFIP_NR_CONN,
            Command::Helo(_) => SMFIP_NR_HELO,
            Command::Mail { .. } => SMFIP_NR_MAIL,
            Command::Rcpt { .. } => SMFIP_NR_RCPT,
            Command::Data => SMFIP_NR_DATA,
            Command::Header { .. } => SMFIP_NR_HDR,
            Command::EndOfHeaders => SMFIP_NR_EOH,
            Command::Body(_) => SMFIP_NR_BODY,
            Command::Unknown(_) => SMFIP_NR_UNKN,
        };
        protocol & no_reply == 0
    }

    /// Parses the data of one frame whose command byte is `code`. Commands that carry no data
    /// (DATA, EOH, ABORT, QUIT, QUIT_NC) ignore any, as libmilter does.
    pub fn parse(code: u8, data: Bytes) -> Result<Command, CodecError> {
        let mut f = Fields {
            command: code,
            rest: data,
        };
        let command = match code {
            SMFIC_OPTNEG => {
                let version = f.u32("shorter than 12 bytes")?;
                let actions = f.u32("shorter than 12 bytes")?;
                let protocol = f.u32("shorter than 12 bytes")?;
                return Ok(Command::OptNeg {
                    version,
                    actions,
                    protocol,
                });
            }
            SMFIC_MACRO => {
                let stage = if f.is_empty() {
                    0
                } else {
                    f.u8("missing stage")?
                };
                let mut macros = Vec::new();
                while !f.is_empty() {
                    let name = f.string("macro name without terminating NUL")?;
                    let value = f.string("macro without a NUL-terminated value")?;
                    macros.push((name, value));
                }
                Command::Macro { stage, macros }
            }
            SMFIC_CONNECT => {
                let hostname = f.string("host name without terminating NUL")?;
                let family = f.u8("missing address family")?;
                if family == SMFIA_UNKNOWN {
                    // libmilter ignores anything after the unknown family.
                    return Ok(Command::Connect {
                        hostname,
                        family,
                        port: None,
                        address: Bytes::new(),
                    });
                }
                let port = f.u16("missing port")?;
                let address = f.string("address without terminating NUL")?;
                Command::Connect {
                    hostname,
                    family,
                    port: Some(port),
                    address,
                }
            }
            SMFIC_HELO => Command::Helo(f.string("HELO name without terminating NUL")?),
            SMFIC_MAIL => Command::Mail {
                args: f.strings("no sender")?,
            },
            SMFIC_RCPT => Command::Rcpt {
                args: f.strings("no recipient")?,
            },
            SMFIC_HEADER => {
                let name = f.string("header name without terminating NUL")?;
                let value = f.string("header value without terminating NUL")?;
                Command::Header { name, value }
            }
            SMFIC_BODY => return Ok(Command::Body(f.rest)),
            SMFIC_BODYEOB => return Ok(Command::EndOfMessage(f.rest)),
            SMFIC_UNKNOWN => Command::Unknown(f.string("command without terminating NUL")?),
            SMFIC_DATA => return Ok(Command::Data),
            SMFIC_EOH => return Ok(Command::EndOfHeaders),
            SMFIC_ABORT => return Ok(Command::Abort),
            SMFIC_QUIT => return Ok(Command::Quit),
            SMFIC_QUIT_NC => return Ok(Command::QuitNewConnection),
            other => return Err(CodecError::UnknownCommand(other)),
        };
        f.finish()?;
        Ok(command)
    }

    /// Appends this command as one frame, as an MTA would send it (for tests and the load
    /// generator). String fields must not contain NUL; a `Connect` with a known family and
    /// `port: None` is sent with port 0. On error `dst` is left as it was.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), CodecError> {
        let code = self.code();
        write_frame(dst, code, |dst| {
            match self {
                Command::OptNeg {
                    version,
                    actions,
                    protocol,
                } => {
                    dst.put_u32(*version);
                    dst.put_u32(*actions);
                    dst.put_u32(*protocol);
                }
                Command::Macro { stage, macros } => {
                    dst.put_u8(*stage);
                    for (name, value) in macros {
                        put_string(dst, code, name)?;
                        put_string(dst, code, value)?;
                    }
                }
                Command::Connect {
                    hostname,
                    family,
                    port,
                    address,
                } => {
                    put_string(dst, code, hostname)?;
                    dst.put_u8(*family);
                    if *family != SMFIA_UNKNOWN {
                        dst.put_u16(port.unwrap_or(0));
                        put_string(dst, code, address)?;
                    }
                }
                Command::Helo(name) => put_string(dst, code, name)?,
                Command::Mail { args } | Command::Rcpt { args } => {
                    if args.is_empty() {
                        return Err(CodecError::Malformed {
                            command: code,
                            reason: "no address",
                        });
                    }
                    for arg in args {
                        put_string(dst, code, arg)?;
                    }
                }
                Command::Header { name, value } => {
                    put_string(dst, code, name)?;
                    put_string(dst, code, value)?;
                }
                Command::Body(chunk) | Command::EndOfMessage(chunk) => dst.put_slice(chunk),
                Command::Unknown(text) => put_string(dst, code, text)?,
                Command::Data
                | Command::EndOfHeaders
                | Command::Abort
                | Command::Quit
                | Command::QuitNewConnection => {}
            }
            Ok(())
        })
    }
}

fn put_string(dst: &mut BytesMut, command: u8, s: &[u8]) -> Result<(), CodecError> {
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
fn write_frame(
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

fn is_command(code: u8) -> bool {
    matches!(
        code,
        SMFIC_ABORT
            | SMFIC_BODY
            | SMFIC_CONNECT
            | SMFIC_MACRO
            | SMFIC_BODYEOB
            | SMFIC_HELO
            | SMFIC_QUIT_NC
            | SMFIC_HEADER
            | SMFIC_MAIL
            | SMFIC_EOH
            | SMFIC_OPTNEG
            | SMFIC_QUIT
            | SMFIC_RCPT
            | SMFIC_DATA
            | SMFIC_UNKNOWN
    )
}

fn is_modelled_reply(code: u8) -> bool {
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
    /// [`MtaCodec`]). A REPLYCODE is un-escaped as Postfix does and validated.
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
                let version = f.u32("shorter than 12 bytes")?;
                let actions = f.u32("shorter than 12 bytes")?;
                let protocol = f.u32("shorter than 12 bytes")?;
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

/// Returns the value of macro `name` from `(name, value)` pairs as carried by
/// [`Command::Macro`]. `name` may be given with or without braces (`{auth_authen}` or
/// `auth_authen`; `i` or `{i}`) and matches the stored name in either form. When a name occurs
/// more than once the last occurrence wins, so that a caller may append later stages' macros.
pub fn macro_value<'a>(macros: &'a [(Bytes, Bytes)], name: &str) -> Option<&'a [u8]> {
    let wanted = strip_braces(name.as_bytes());
    macros
        .iter()
        .rev()
        .find(|(n, _)| strip_braces(n) == wanted)
        .map(|(_, v)| v.as_ref())
}

fn strip_braces(name: &[u8]) -> &[u8] {
    name.strip_prefix(b"{")
        .and_then(|n| n.strip_suffix(b"}"))
        .unwrap_or(name)
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

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_MESSAGE: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/postfix-3.7/milter-session-one-message.bin"
    ));
    const TWO_MESSAGES: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/postfix-3.7/milter-session-two-messages.bin"
    ));

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    /// Decodes every frame in `input` at once; fails on an error or a leftover partial frame.
    fn decode_all(input: &[u8]) -> Vec<Command> {
        let mut codec = MilterCodec::default();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(cmd) = codec.decode(&mut buf).expect("decodes") {
            out.push(cmd);
        }
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        out
    }

    /// Decodes `input` delivered one byte at a time.
    fn decode_bytewise(input: &[u8]) -> Vec<Command> {
        let mut codec = MilterCodec::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for &byte in input {
            buf.put_u8(byte);
            while let Some(cmd) = codec.decode(&mut buf).expect("decodes") {
                out.push(cmd);
            }
        }
        assert!(buf.is_empty());
        out
    }

    fn letters(commands: &[Command]) -> String {
        commands.iter().map(|c| char::from(c.code())).collect()
    }

    fn frame(code: u8, data: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u32(u32::try_from(data.len() + 1).expect("small"));
        buf.put_u8(code);
        buf.put_slice(data);
        buf
    }

    fn decode_one(buf: &[u8]) -> Result<Option<Command>, CodecError> {
        MilterCodec::default().decode(&mut BytesMut::from(buf))
    }

    fn all_commands() -> Vec<Command> {
        vec![
            Command::OptNeg {
                version: 6,
                actions: SMFI_CURR_ACTS,
                protocol: SMFI_CURR_PROT,
            },
            Command::Macro {
                stage: SMFIC_CONNECT,
                macros: vec![(b("j"), b("vm")), (b("{daemon_name}"), b("vm"))],
            },
            Command::Macro {
                stage: SMFIC_HELO,
                macros: vec![],
            },
            Command::Macro {
                stage: b'?',
                macros: vec![(b("x"), b(""))],
            },
            Command::Connect {
                hostname: b("localhost"),
                family: SMFIA_INET,
                port: Some(42772),
                address: b("127.0.0.1"),
            },
            Command::Connect {
                hostname: b("[2001:db8::1]"),
                family: SMFIA_INET6,
                port: Some(587),
                address: b("2001:db8::1"),
            },
            Command::Connect {
                hostname: b("localhost"),
                family: SMFIA_UNIX,
                port: Some(0),
                address: b("/var/run/sock"),
            },
            Command::Connect {
                hostname: b("unknown"),
                family: SMFIA_UNKNOWN,
                port: None,
                address: Bytes::new(),
            },
            Command::Helo(b("client.example")),
            Command::Mail {
                args: vec![b("<alice@contoso.com>"), b("size=51"), b("BODY=8BITMIME")],
            },
            Command::Mail {
                args: vec![b("<>")],
            },
            Command::Rcpt {
                args: vec![b("<carol@example.org>")],
            },
            Command::Data,
            Command::Header {
                name: b("Subject"),
                value: b("folded\n header test"),
            },
            Command::Header {
                name: b("X-Empty"),
                value: b(""),
            },
            Command::EndOfHeaders,
            Command::Body(b("line1\r\nline2\r\n\r\n\0binary\r\n")),
            Command::Body(Bytes::new()),
            Command::EndOfMessage(Bytes::new()),
            Command::EndOfMessage(b("last chunk\r\n")),
            Command::Abort,
            Command::Quit,
            Command::QuitNewConnection,
            Command::Unknown(b("XYZZY plugh")),
        ]
    }

    #[test]
    fn every_command_round_trips() {
        let mut wire = BytesMut::new();
        let commands = all_commands();
        for cmd in &commands {
            let mut one = BytesMut::new();
            MtaCodec::default().encode(cmd, &mut one).expect("encodes");
            assert_eq!(decode_one(&one).expect("decodes").as_ref(), Some(cmd));
            wire.extend_from_slice(&one);
        }
        assert_eq!(decode_all(&wire), commands);
        assert_eq!(decode_bytewise(&wire), commands);
    }

    #[test]
    fn every_reply_round_trips() {
        let replies = vec![
            Reply::Continue,
            Reply::Accept,
            Reply::Reject,
            Reply::TempFail,
            Reply::Progress,
            Reply::Skip,
            Reply::ReplyCode(
                "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"
                    .parse()
                    .expect("valid"),
            ),
            Reply::ReplyCode("550 5.7.1 100% sure".parse().expect("valid")),
            Reply::OptNeg {
                version: 6,
                actions: SMFIF_NONE,
                protocol: SMFIP_NOHELO | SMFIP_NR_HDR,
            },
        ];
        let mut wire = BytesMut::new();
        for reply in &replies {
            MilterCodec::default()
                .encode(reply, &mut wire)
                .expect("encodes");
        }
        let mut mta = MtaCodec::default();
        let mut decoded = Vec::new();
        while let Some(reply) = mta.decode(&mut wire).expect("decodes") {
            decoded.push(reply);
        }
        assert!(wire.is_empty());
        assert_eq!(decoded, replies);
    }

    #[test]
    fn replies_have_exact_wire_bytes() {
        let enc = |reply: Reply| {
            let mut buf = BytesMut::new();
            MilterCodec::default()
                .encode(reply, &mut buf)
                .expect("encodes");
            buf.to_vec()
        };
        assert_eq!(enc(Reply::Continue), b"\0\0\0\x01c");
        assert_eq!(enc(Reply::Accept), b"\0\0\0\x01a");
        assert_eq!(enc(Reply::Reject), b"\0\0\0\x01r");
        assert_eq!(enc(Reply::TempFail), b"\0\0\0\x01t");
        assert_eq!(enc(Reply::Progress), b"\0\0\0\x01p");
        assert_eq!(enc(Reply::Skip), b"\0\0\0\x01s");
        assert_eq!(
            enc(Reply::OptNeg {
                version: 6,
                actions: 0,
                protocol: SMFIP_NR_HDR,
            }),
            b"\0\0\0\x0dO\0\0\0\x06\0\0\0\0\0\0\0\x80"
        );
        let text = "550 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is \
                    disabled for the Tenant.";
        let mut expected = vec![0, 0, 0];
        expected.push(u8::try_from(text.len() + 2).expect("short"));
        expected.push(b'y');
        expected.extend_from_slice(text.as_bytes());
        expected.push(0);
        let reply: SmtpReply = text.parse().expect("valid");
        assert_eq!(reply.to_string(), text);
        assert_eq!(enc(Reply::ReplyCode(reply)), expected);
        // `%` is doubled on the wire, shown once to the client.
        let pct: SmtpReply = "451 4.3.0 disk 99% full".parse().expect("valid");
        assert_eq!(pct.to_string(), "451 4.3.0 disk 99% full");
        assert_eq!(
            enc(Reply::ReplyCode(pct)),
            b"\0\0\0\x1ay451 4.3.0 disk 99%% full\0"
        );
    }

    /// Validation is the configuration's (one type, one set of checks); the codec only
    /// escapes. A reply line the MTA side cannot accept is a typed error.
    #[test]
    fn reply_text_is_validated_by_the_config_type() {
        for bad in [
            "250 2.0.0 ok",
            "650 6.0.0 no",
            "550 5.7.1 caf\u{e9}",
            "550 4.7.1 class mismatch",
            "550 5.7 two parts",
            "550 5.7.1",
        ] {
            assert!(bad.parse::<SmtpReply>().is_err(), "{bad:?} was accepted");
        }
        for good in [
            "550 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.",
            "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
            "451 4.3.0 Error: queue file write error",
        ] {
            let reply: SmtpReply = good.parse().expect(good);
            assert_eq!(reply.to_string(), good);
        }
        let mut buf = frame(SMFIR_REPLYCODE, b"550 5.7.1\0");
        assert!(matches!(
            MtaCodec::default().decode(&mut buf),
            Err(CodecError::InvalidReply { .. })
        ));
    }

    #[test]
    fn mta_side_unescapes_like_postfix() {
        let mut buf = frame(SMFIR_REPLYCODE, b"550 5.7.1 50%% off, lone % gone\0");
        let reply = MtaCodec::default().decode(&mut buf).expect("decodes");
        let Some(Reply::ReplyCode(reply)) = reply else {
            panic!("not a reply code: {reply:?}");
        };
        assert_eq!(reply.to_string(), "550 5.7.1 50% off, lone  gone");
        assert!(matches!(
            MtaCodec::default().decode(&mut frame(b'h', b"X\0y\0")),
            Err(CodecError::UnknownReply(b'h'))
        ));
        assert!(matches!(
            MtaCodec::default().decode(&mut frame(b'c', b"junk")),
            Err(CodecError::Malformed { command: b'c', .. })
        ));
    }

    #[test]
    fn fixture_one_message_decodes() {
        let commands = decode_all(ONE_MESSAGE);
        assert_eq!(letters(&commands), "ODCDHDMDRDTDLDLDLDLDLDLDNDBDEAAQ");
        assert_eq!(
            commands[0],
            Command::OptNeg {
                version: 6,
                actions: SMFI_CURR_ACTS,
                protocol: SMFI_CURR_PROT,
            }
        );
        let Command::Macro { stage, macros } = &commands[1] else {
            panic!("expected connect macros");
        };
        assert_eq!(*stage, SMFIC_CONNECT);
        assert_eq!(macro_value(macros, "j"), Some(&b"vm"[..]));
        assert_eq!(
            macro_value(macros, "{daemon_addr}"),
            Some(&b"127.0.0.1"[..])
        );
        assert_eq!(macro_value(macros, "v"), Some(&b"Postfix 3.7.11"[..]));
        assert_eq!(
            macro_value(macros, "_"),
            Some(&b"localhost [127.0.0.1]"[..])
        );
        assert_eq!(
            commands[2],
            Command::Connect {
                hostname: b("localhost"),
                family: SMFIA_INET,
                port: Some(0xa714),
                address: b("127.0.0.1"),
            }
        );
        assert_eq!(
            commands[3],
            Command::Macro {
                stage: SMFIC_HELO,
                macros: vec![],
            }
        );
        assert_eq!(commands[4], Command::Helo(b("vm")));
        let Command::Macro { stage, macros } = &commands[5] else {
            panic!("expected MAIL macros");
        };
        assert_eq!(*stage, SMFIC_MAIL);
        assert_eq!(
            macro_value(macros, "{auth_authen}"),
            Some(&b"alice@contoso.com"[..])
        );
        assert_eq!(
            macro_value(macros, "auth_authen"),
            Some(&b"alice@contoso.com"[..])
        );
        assert_eq!(macro_value(macros, "auth_type"), Some(&b"PLAIN"[..]));
        assert_eq!(macro_value(macros, "i"), None);
        assert_eq!(
            commands[6],
            Command::Mail {
                args: vec![b("<alice@contoso.com>")],
            }
        );
        assert_eq!(
            commands[8],
            Command::Rcpt {
                args: vec![b("<carol@example.org>")],
            }
        );
        let Command::Macro { stage, macros } = &commands[9] else {
            panic!("expected DATA macros");
        };
        assert_eq!(*stage, SMFIC_DATA);
        assert_eq!(macro_value(macros, "i"), Some(&b"5B0E4B672E"[..]));
        assert_eq!(macro_value(macros, "{i}"), Some(&b"5B0E4B672E"[..]));
        assert_eq!(commands[10], Command::Data);
        let headers: Vec<(&[u8], &[u8])> = commands
            .iter()
            .filter_map(|c| match c {
                Command::Header { name, value } => Some((name.as_ref(), value.as_ref())),
                _ => None,
            })
            .collect();
        assert_eq!(
            headers,
            vec![
                (&b"Date"[..], &b"Fri, 27 Nov 2026 13:45:42 +0000"[..]),
                (b"To", b"carol@example.org"),
                (b"From", b"alice@contoso.com"),
                (b"Subject", b"folded\n header test"),
                (b"Message-Id", b"<20261127134542.010779@vm>"),
                (
                    b"X-Mailer",
                    b"swaks v20201014.0 jetmore.org/john/code/swaks/"
                ),
            ]
        );
        assert_eq!(commands[26], Command::Body(b("line1\r\nline2\r\n\r\n\r\n")));
        assert_eq!(commands[28], Command::EndOfMessage(Bytes::new()));
        assert_eq!(
            commands[29..],
            [Command::Abort, Command::Abort, Command::Quit]
        );
    }

    #[test]
    fn fixture_two_messages_decodes() {
        let commands = decode_all(TWO_MESSAGES);
        assert_eq!(
            letters(&commands),
            "ODCDHDMDRDRDTDLDLDLDLDNDBDEADMDRDTDLDLDLDLDNDBDEAAQ"
        );
        assert_eq!(commands[4], Command::Helo(b("client.example")));
        assert_eq!(
            commands[6],
            Command::Mail {
                args: vec![b("<alice@contoso.com>"), b("size=51")],
            }
        );
        // The queue id arrives from the second RCPT on, and changes per message.
        let queue_ids: Vec<&[u8]> = commands
            .iter()
            .filter_map(|c| match c {
                Command::Macro { macros, .. } => macro_value(macros, "i"),
                _ => None,
            })
            .collect();
        assert_eq!(queue_ids.first(), Some(&&b"D24DBB6705"[..]));
        assert_eq!(queue_ids.last(), Some(&&b"D4D44B6705"[..]));
        let mails: Vec<&Command> = commands
            .iter()
            .filter(|c| matches!(c, Command::Mail { .. }))
            .collect();
        assert_eq!(
            mails[1],
            &Command::Mail {
                args: vec![b("<alice@contoso.com>"), b("size=40")],
            }
        );
        let bodies: Vec<&Command> = commands
            .iter()
            .filter(|c| matches!(c, Command::Body(_)))
            .collect();
        assert_eq!(
            bodies,
            [
                &Command::Body(b("body one\r\n")),
                &Command::Body(b("body two\r\n.leading dot\r\n")),
            ]
        );
        assert!(commands.contains(&Command::Header {
            name: b("Message-ID"),
            value: b("<m1@client>"),
        }));
    }

    #[test]
    fn fixtures_decode_identically_at_every_split() {
        for fixture in [ONE_MESSAGE, TWO_MESSAGES] {
            let whole = decode_all(fixture);
            assert_eq!(decode_bytewise(fixture), whole);
            for split in 0..=fixture.len() {
                let mut codec = MilterCodec::default();
                let mut buf = BytesMut::from(&fixture[..split]);
                let mut out = Vec::new();
                while let Some(cmd) = codec.decode(&mut buf).expect("decodes") {
                    out.push(cmd);
                }
                buf.extend_from_slice(&fixture[split..]);
                while let Some(cmd) = codec.decode(&mut buf).expect("decodes") {
                    out.push(cmd);
                }
                assert_eq!(out, whole, "split at {split}");
            }
        }
    }

    #[test]
    fn fixtures_re_encode_byte_for_byte() {
        for fixture in [ONE_MESSAGE, TWO_MESSAGES] {
            let mut wire = BytesMut::new();
            for cmd in decode_all(fixture) {
                cmd.encode(&mut wire).expect("encodes");
            }
            assert_eq!(&wire[..], fixture);
        }
    }

    #[test]
    fn header_over_64k_decodes() {
        let value: Vec<u8> = (0..100_000)
            .map(|i| {
                if i % 78 == 77 {
                    b'\n'
                } else {
                    b'a' + (i % 26) as u8
                }
            })
            .collect();
        let mut data = b"X-Big\0".to_vec();
        data.extend_from_slice(&value);
        data.push(0);
        let cmd = decode_one(&frame(SMFIC_HEADER, &data)).expect("decodes");
        assert_eq!(
            cmd,
            Some(Command::Header {
                name: b("X-Big"),
                value: Bytes::from(value),
            })
        );
    }

    #[test]
    fn truncated_frame_waits_then_fails_at_eof() {
        let whole = frame(SMFIC_HELO, b"client.example\0");
        for cut in 0..whole.len() {
            let mut codec = MilterCodec::default();
            let mut buf = BytesMut::from(&whole[..cut]);
            assert!(codec
                .decode(&mut buf)
                .expect("incomplete is fine")
                .is_none());
            assert_eq!(buf.len(), cut, "nothing consumed");
            let eof = codec.decode_eof(&mut buf);
            if cut == 0 {
                assert!(eof.expect("clean end").is_none());
            } else {
                assert!(matches!(eof, Err(CodecError::Truncated { buffered }) if buffered == cut));
            }
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(matches!(
            decode_one(b"\0\0\0\0"),
            Err(CodecError::ZeroLength)
        ));
        // Refused from the length field alone, before any data arrives.
        assert!(matches!(
            MilterCodec::new(1024).decode(&mut BytesMut::from(&b"\0\0\x04\x01"[..])),
            Err(CodecError::FrameTooLarge {
                len: 1025,
                max: 1024
            })
        ));
        assert!(matches!(
            decode_one(b"\xff\xff\xff\xffB"),
            Err(CodecError::FrameTooLarge { .. })
        ));
        assert!(matches!(
            decode_one(b"\0\0\0\x05Zabcd"),
            Err(CodecError::UnknownCommand(b'Z'))
        ));
        // The command byte is checked before the rest of the frame arrives.
        assert!(matches!(
            decode_one(b"\0\0\x10\0c"),
            Err(CodecError::UnknownCommand(b'c'))
        ));
        // Exactly at the cap is fine.
        let mut buf = frame(SMFIC_BODY, &[b'x'; 1023]);
        assert!(MilterCodec::new(1024)
            .decode(&mut buf)
            .expect("ok")
            .is_some());

        let malformed: &[(u8, &[u8])] = &[
            (SMFIC_CONNECT, b"localhost"),
            (SMFIC_CONNECT, b"localhost\0"),
            (SMFIC_CONNECT, b"localhost\x004"),
            (SMFIC_CONNECT, b"localhost\x004\x01"),
            (SMFIC_CONNECT, b"localhost\x004\x01\x02127.0.0.1"),
            (SMFIC_CONNECT, b"localhost\x004\x01\x02127.0.0.1\0junk"),
            (SMFIC_HELO, b""),
            (SMFIC_HELO, b"vm"),
            (SMFIC_HELO, b"vm\0extra\0"),
            (SMFIC_MAIL, b""),
            (SMFIC_MAIL, b"<a@b>\0size=5"),
            (SMFIC_RCPT, b""),
            (SMFIC_RCPT, b"<a@b>"),
            (SMFIC_HEADER, b"Subject"),
            (SMFIC_HEADER, b"Subject\0no nul"),
            (SMFIC_HEADER, b"Subject\0v\0more"),
            (SMFIC_MACRO, b"Mname"),
            (SMFIC_MACRO, b"Mname\0"),
            (SMFIC_MACRO, b"Mname\0value"),
            (SMFIC_OPTNEG, b"\0\0\0\x06\0\0\x01\xff\0\x1f\xff"),
            (SMFIC_UNKNOWN, b"XYZZY"),
        ];
        for (code, data) in malformed {
            let result = decode_one(&frame(*code, data));
            assert!(
                matches!(result, Err(CodecError::Malformed { command, .. }) if command == *code),
                "{}{:?} gave {result:?}",
                char::from(*code),
                data.escape_ascii().to_string()
            );
        }
    }

    #[test]
    fn tolerated_variants() {
        // D with no stage byte at all.
        assert_eq!(
            decode_one(&frame(SMFIC_MACRO, b"")).expect("ok"),
            Some(Command::Macro {
                stage: 0,
                macros: vec![],
            })
        );
        // Data on commands that take none is ignored; OPTNEG may carry more than 12 bytes.
        assert_eq!(
            decode_one(&frame(SMFIC_QUIT, b"x")).expect("ok"),
            Some(Command::Quit)
        );
        assert!(matches!(
            decode_one(&frame(SMFIC_OPTNEG, &[0; 16])).expect("ok"),
            Some(Command::OptNeg { version: 0, .. })
        ));
        // Unknown family: nothing after it, whatever follows.
        assert_eq!(
            decode_one(&frame(SMFIC_CONNECT, b"unknown\0U")).expect("ok"),
            Some(Command::Connect {
                hostname: b("unknown"),
                family: SMFIA_UNKNOWN,
                port: None,
                address: Bytes::new(),
            })
        );
    }

    #[test]
    fn encoding_refuses_nul_in_strings() {
        let mut buf = BytesMut::from(&b"keep"[..]);
        let bad = Command::Helo(b("a\0b"));
        assert!(matches!(
            bad.encode(&mut buf),
            Err(CodecError::Malformed { command: b'H', .. })
        ));
        assert_eq!(&buf[..], b"keep");
        assert!(Command::Mail { args: vec![] }.encode(&mut buf).is_err());
        assert_eq!(&buf[..], b"keep");
    }

    #[test]
    fn macro_lookup_accepts_both_forms() {
        let macros = vec![
            (b("{auth_authen}"), b("alice@contoso.com")),
            (b("i"), b("OLD")),
            (b("{rcpt_addr}"), b("x@y")),
            (b("i"), b("NEW")),
        ];
        assert_eq!(
            macro_value(&macros, "{auth_authen}"),
            Some(&b"alice@contoso.com"[..])
        );
        assert_eq!(
            macro_value(&macros, "auth_authen"),
            Some(&b"alice@contoso.com"[..])
        );
        assert_eq!(macro_value(&macros, "i"), Some(&b"NEW"[..]));
        assert_eq!(macro_value(&macros, "{i}"), Some(&b"NEW"[..]));
        assert_eq!(macro_value(&macros, "auth_type"), None);
        assert_eq!(macro_value(&macros, "{"), None);
        assert_eq!(macro_value(&[], "i"), None);
    }

    #[test]
    fn expects_reply_follows_negotiated_flags() {
        let connect = Command::Connect {
            hostname: b("h"),
            family: SMFIA_UNKNOWN,
            port: None,
            address: Bytes::new(),
        };
        assert!(connect.expects_reply(0));
        assert!(!connect.expects_reply(SMFIP_NR_CONN));
        let header = Command::Header {
            name: b("a"),
            value: b("b"),
        };
        assert!(!header.expects_reply(SMFIP_NR_HDR));
        assert!(header.expects_reply(SMFIP_NR_CONN));
        for silent in [
            Command::Abort,
            Command::Quit,
            Command::QuitNewConnection,
            Command::Macro {
                stage: b'C',
                macros: vec![],
            },
        ] {
            assert!(!silent.expects_reply(0));
        }
        assert!(Command::EndOfMessage(Bytes::new()).expects_reply(u32::MAX));
    }

    /// Arbitrary input never panics: it decodes, waits, or fails.
    #[test]
    fn arbitrary_input_never_panics() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let codes = b"ABCDEHKLMNOQRTUcaytpsZ\0";
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let mut data: Vec<u8> = (0..len)
                .map(|_| match next() % 4 {
                    0 => 0,
                    1 => b'4',
                    _ => next() as u8,
                })
                .collect();
            let code = codes[(next() % codes.len() as u64) as usize];
            let mut buf = if next() % 8 == 0 {
                data.insert(0, code);
                BytesMut::from(&data[..])
            } else {
                frame(code, &data)
            };
            let mut milter = MilterCodec::new(64);
            while let Ok(Some(_)) = milter.decode(&mut buf) {}
            let _ = MtaCodec::new(64).decode(&mut frame(code, &data));
        }
    }
}
