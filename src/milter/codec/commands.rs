//! What the MTA sends: the typed [`Command`]s, their parsing from a frame's data and their
//! encoding (for tests and the load generator, which play Postfix), and macro look-up.

use bytes::{BufMut, Bytes, BytesMut};

use super::constants::*;
use super::framing::{put_string, write_frame, Fields};
use super::CodecError;

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
                let (version, actions, protocol) = f.optneg()?;
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

/// Whether `code` is a milter command byte (`SMFIC_*`).
pub(super) fn is_command(code: u8) -> bool {
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
