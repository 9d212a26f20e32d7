//! The milter protocol's numbers, named as in libmilter's `mfdef.h` / `mfapi.h`: command and
//! reply bytes, address families, `SMFIP_*` protocol and `SMFIF_*` action flags, macro stages,
//! and our default frame cap.

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
