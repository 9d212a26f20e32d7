//! The policy delegation wire format (Postfix's SMTPD_POLICY_README): a request is
//! `name=value` lines ended by an empty line; the reply is `action=...` and an empty line.
//! Sizes are bounded; attributes we do not use are skipped without being decoded; a malformed
//! request is a [`CodecError`] and ends that connection.

use bytes::{BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Largest request accepted (Postfix's own requests are about 700 bytes).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Most attributes accepted in one request (Postfix 3.7 sends 28).
pub const MAX_ATTRIBUTES: usize = 512;

/// Why a request was refused; the connection is then closed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("request larger than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    #[error("more than {MAX_ATTRIBUTES} attributes in one request")]
    TooManyAttributes,
    #[error("line {0} has no '='")]
    MissingEquals(usize),
    #[error("attribute {0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    #[error("empty request (a blank line with no attributes)")]
    Empty,
    #[error("connection closed in the middle of a request")]
    Truncated,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The attributes submitgate uses; everything else Postfix sends is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `smtpd_access_policy` for every request from smtpd.
    pub request: String,
    /// `RCPT`, `DATA`, `END-OF-MESSAGE`, `MAIL`, ...
    pub protocol_state: String,
    pub client_address: String,
    pub client_port: String,
    pub server_address: String,
    pub server_port: String,
    /// Changes with each mail transaction of a session.
    pub instance: String,
    pub queue_id: String,
    pub sender: String,
    pub recipient: String,
    pub recipient_count: Option<u32>,
    pub size: Option<u64>,
    pub sasl_method: String,
    pub sasl_username: String,
    pub encryption_protocol: String,
}

impl Request {
    /// Whether this is the last request of a transaction (smtpd_end_of_data_restrictions).
    pub fn is_end_of_message(&self) -> bool {
        self.protocol_state.eq_ignore_ascii_case("END-OF-MESSAGE")
    }
}

/// A reply: the text after `action=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response(pub String);

impl Response {
    /// `action=DUNNO`: no opinion, Postfix goes on with its restrictions.
    pub fn dunno() -> Self {
        Response("DUNNO".to_string())
    }
}

/// Decoder/encoder for one policy connection.
#[derive(Debug, Default)]
pub struct PolicyCodec {
    /// How far the buffer has been searched for the end of the request.
    scanned: usize,
    /// Complete lines seen so far in the current request.
    lines: usize,
}

impl PolicyCodec {
    pub fn new() -> Self {
        PolicyCodec::default()
    }
}

/// `v` as text, into `out` (whose allocation is reused).
fn text_into(name: &'static str, v: &[u8], out: &mut String) -> Result<(), CodecError> {
    let v = std::str::from_utf8(v).map_err(|_| CodecError::InvalidUtf8(name))?;
    out.clear();
    out.push_str(v);
    Ok(())
}

fn number<T: std::str::FromStr>(name: &'static str, v: &[u8]) -> Result<Option<T>, CodecError> {
    let v = std::str::from_utf8(v).map_err(|_| CodecError::InvalidUtf8(name))?;
    Ok(v.parse().ok())
}

/// Parses one complete request (without its terminating empty line).
pub fn parse_request(block: &[u8]) -> Result<Request, CodecError> {
    let mut req = Request::default();
    parse_request_into(block, &mut req)?;
    Ok(req)
}

/// Parses one complete request into `req`, reusing its strings' allocations (a connection
/// parses every request into the same [`Request`]): every attribute is reset first, so nothing
/// of the request before remains.
pub fn parse_request_into(block: &[u8], req: &mut Request) -> Result<(), CodecError> {
    for field in [
        &mut req.request,
        &mut req.protocol_state,
        &mut req.client_address,
        &mut req.client_port,
        &mut req.server_address,
        &mut req.server_port,
        &mut req.instance,
        &mut req.queue_id,
        &mut req.sender,
        &mut req.recipient,
        &mut req.sasl_method,
        &mut req.sasl_username,
        &mut req.encryption_protocol,
    ] {
        field.clear();
    }
    req.recipient_count = None;
    req.size = None;
    let mut count = 0;
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', block).chain(std::iter::once(block.len()));
    for (i, end) in ends.enumerate() {
        let line = &block[start..end];
        start = end + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        count += 1;
        if count > MAX_ATTRIBUTES {
            return Err(CodecError::TooManyAttributes);
        }
        let eq = memchr::memchr(b'=', line).ok_or(CodecError::MissingEquals(i + 1))?;
        let (name, value) = (&line[..eq], &line[eq + 1..]);
        let slot: (&'static str, &mut String) = match name {
            b"request" => ("request", &mut req.request),
            b"protocol_state" => ("protocol_state", &mut req.protocol_state),
            b"client_address" => ("client_address", &mut req.client_address),
            b"client_port" => ("client_port", &mut req.client_port),
            b"server_address" => ("server_address", &mut req.server_address),
            b"server_port" => ("server_port", &mut req.server_port),
            b"instance" => ("instance", &mut req.instance),
            b"queue_id" => ("queue_id", &mut req.queue_id),
            b"sender" => ("sender", &mut req.sender),
            b"recipient" => ("recipient", &mut req.recipient),
            b"sasl_method" => ("sasl_method", &mut req.sasl_method),
            b"sasl_username" => ("sasl_username", &mut req.sasl_username),
            b"encryption_protocol" => ("encryption_protocol", &mut req.encryption_protocol),
            b"recipient_count" => {
                req.recipient_count = number("recipient_count", value)?;
                continue;
            }
            b"size" => {
                req.size = number("size", value)?;
                continue;
            }
            _ => continue,
        };
        text_into(slot.0, value, slot.1)?;
    }
    if count == 0 {
        return Err(CodecError::Empty);
    }
    Ok(())
}

impl PolicyCodec {
    /// Like [`Decoder::decode`], but parses the request into `req` (reusing its allocations);
    /// `Ok(true)` when a whole request was decoded.
    pub fn decode_into(
        &mut self,
        buf: &mut BytesMut,
        req: &mut Request,
    ) -> Result<bool, CodecError> {
        let Some((block_end, consumed)) = self.find_end(buf)? else {
            return Ok(false);
        };
        let block = buf.split_to(consumed);
        parse_request_into(&block[..block_end], req)?;
        Ok(true)
    }

    /// Finds the empty line that ends the request at the start of `buf`: the request's length
    /// and the bytes to consume with its empty line; `None` while incomplete.
    fn find_end(&mut self, buf: &BytesMut) -> Result<Option<(usize, usize)>, CodecError> {
        // Check, then parse: find the empty line ("\n\n", or "\n\r\n" from hand-written
        // clients) that ends the request, resuming where the last call stopped and counting
        // lines on the way so that an endless request is refused early.
        let mut i = self.scanned;
        let mut found = None;
        loop {
            let Some(off) = memchr::memchr(b'\n', &buf[i..]) else {
                // No newline in the rest: the next call resumes after it, so that a long line
                // arriving in small pieces is scanned once, not once per piece.
                i = buf.len();
                break;
            };
            let nl = i + off;
            let rest = &buf[nl + 1..];
            if rest.is_empty() || rest == b"\r" {
                // Cannot tell yet whether this newline ends the request.
                i = nl;
                break;
            }
            if rest.starts_with(b"\n") {
                found = Some((nl + 1, nl + 2));
                break;
            }
            if rest.starts_with(b"\r\n") {
                found = Some((nl + 1, nl + 3));
                break;
            }
            self.lines += 1;
            if self.lines > MAX_ATTRIBUTES {
                return Err(CodecError::TooManyAttributes);
            }
            i = nl + 1;
        }
        let Some((block_end, consumed)) = found else {
            // A buffer ending in "\n\r" may still be a request that ends at that newline, one
            // byte before the buffer's end: the same verdict whatever the segmentation.
            let pending = usize::from(buf.ends_with(b"\n\r"));
            if buf.len() - pending > MAX_REQUEST_BYTES {
                return Err(CodecError::TooLarge);
            }
            self.scanned = i.max(self.scanned);
            return Ok(None);
        };
        if block_end > MAX_REQUEST_BYTES {
            return Err(CodecError::TooLarge);
        }
        self.scanned = 0;
        self.lines = 0;
        Ok(Some((block_end, consumed)))
    }
}

impl Decoder for PolicyCodec {
    type Item = Request;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, CodecError> {
        let mut req = Request::default();
        Ok(self.decode_into(buf, &mut req)?.then_some(req))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, CodecError> {
        match self.decode(buf)? {
            Some(r) => Ok(Some(r)),
            None if buf.iter().all(|b| b.is_ascii_whitespace()) => Ok(None),
            None => Err(CodecError::Truncated),
        }
    }
}

impl Encoder<Response> for PolicyCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Response, dst: &mut BytesMut) -> Result<(), CodecError> {
        // A reply text never carries a line break: it would end the reply early.
        let action = item.0.as_bytes();
        dst.reserve(action.len() + 9);
        dst.put_slice(b"action=");
        if memchr::memchr2(b'\r', b'\n', action).is_some() {
            dst.extend(action.iter().map(|&b| match b {
                b'\r' | b'\n' => b' ',
                b => b,
            }));
        } else {
            dst.put_slice(action);
        }
        dst.put_slice(b"\n\n");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../tests/fixtures/postfix-3.7/policy-requests.txt");

    fn decode_all(bytes: &[u8]) -> Result<Vec<Request>, CodecError> {
        let mut codec = PolicyCodec::new();
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(r) = codec.decode(&mut buf)? {
            out.push(r);
        }
        if let Some(r) = codec.decode_eof(&mut buf)? {
            out.push(r);
        }
        Ok(out)
    }

    /// Found by tests/fuzz.rs: without a newline in the new bytes the scan restarted at the
    /// line's beginning on every call, so a 64 KiB line sent in 1-byte pieces cost ~2·10⁹
    /// comparisons.
    #[test]
    fn a_long_line_in_small_pieces_is_scanned_once() {
        let mut codec = PolicyCodec::new();
        let mut buf = BytesMut::from(&b"request=smtpd_access_policy\nsasl_username="[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        for _ in 0..1000 {
            buf.extend_from_slice(b"x");
            assert!(codec.decode(&mut buf).unwrap().is_none());
            assert_eq!(
                codec.scanned,
                buf.len(),
                "the next call resumes after what was searched"
            );
        }
        buf.extend_from_slice(b"\r");
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"\n\n");
        let r = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(r.sasl_username, "x".repeat(1000));
        assert!(buf.is_empty());
    }

    /// Found by tests/fuzz.rs: a CRLF request of exactly the maximum size was refused as
    /// too large when its final "\r\n" arrived in two pieces, and accepted otherwise.
    #[test]
    fn a_request_of_the_maximum_size_is_accepted_however_it_arrives() {
        let line_len = MAX_REQUEST_BYTES - "\r\n".len();
        let mut text = format!("sasl_username={}", "x".repeat(line_len - 14)).into_bytes();
        text.extend_from_slice(b"\r\n\r\n");
        for split in [text.len() - 1, text.len() - 2, text.len()] {
            let mut codec = PolicyCodec::new();
            let mut buf = BytesMut::from(&text[..split]);
            let mut got = codec.decode(&mut buf).unwrap();
            if got.is_none() {
                buf.extend_from_slice(&text[split..]);
                got = codec.decode(&mut buf).unwrap();
            }
            assert_eq!(
                got.unwrap().sasl_username.len(),
                line_len - 14,
                "split at {split}"
            );
        }
    }

    #[test]
    fn decodes_every_fixture_request() {
        let reqs = decode_all(FIXTURE.as_bytes()).unwrap();
        assert_eq!(reqs.len(), 9);
        assert!(reqs.iter().all(|r| r.request == "smtpd_access_policy"));
        assert_eq!(reqs[0].sasl_username, "");
        assert_eq!(reqs[0].client_port, "49056");
        assert_eq!(reqs[2].sasl_username, "alice@contoso.com");
        assert_eq!(reqs[2].sasl_method, "PLAIN");
        assert_eq!(reqs[2].protocol_state, "RCPT");
        assert_eq!(reqs[2].server_port, "10587");
        assert_eq!(reqs[4].recipient_count, Some(2));
        assert_eq!(reqs[5].queue_id, "B54E9B6736");
        assert!(reqs[5].is_end_of_message());
        assert_eq!(reqs[5].size, Some(26));
        assert_ne!(reqs[5].instance, reqs[6].instance);
        assert_eq!(reqs[5].client_port, reqs[6].client_port);
    }

    #[test]
    fn decodes_when_fed_byte_by_byte() {
        let mut codec = PolicyCodec::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in FIXTURE.as_bytes() {
            buf.put_u8(*b);
            while let Some(r) = codec.decode(&mut buf).unwrap() {
                out.push(r);
            }
        }
        assert_eq!(out, decode_all(FIXTURE.as_bytes()).unwrap());
    }

    #[test]
    fn crlf_requests_are_accepted() {
        let reqs = decode_all(b"request=smtpd_access_policy\r\nsasl_username=a@b\r\n\r\n").unwrap();
        assert_eq!(reqs[0].sasl_username, "a@b");
    }

    #[test]
    fn unknown_attributes_are_ignored_even_when_binary() {
        let reqs =
            decode_all(b"request=smtpd_access_policy\nccert_subject=\xff\xfe\nfuture_attr=x=y\n\n")
                .unwrap();
        assert_eq!(reqs.len(), 1);
    }

    #[test]
    fn malformed_requests() {
        assert!(matches!(
            decode_all(b"request=smtpd_access_policy\nno equals here\n\n"),
            Err(CodecError::MissingEquals(2))
        ));
        assert!(matches!(
            decode_all(b"sasl_username=\xff\n\n"),
            Err(CodecError::InvalidUtf8("sasl_username"))
        ));
        assert!(matches!(decode_all(b"\n\n"), Err(CodecError::Empty)));
        assert!(matches!(
            decode_all(b"request=smtpd_access_policy\nsize=1"),
            Err(CodecError::Truncated)
        ));
        let many: String = (0..600).map(|i| format!("a{i}=b\n")).collect::<String>() + "\n";
        assert!(matches!(
            decode_all(many.as_bytes()),
            Err(CodecError::TooManyAttributes)
        ));
        // Noticed before the request ends, even when it arrives in pieces.
        let mut codec = PolicyCodec::new();
        let mut buf = BytesMut::new();
        let mut outcome = Ok(None);
        for i in 0..600 {
            buf.extend_from_slice(format!("a{i}=b\n").as_bytes());
            outcome = codec.decode(&mut buf);
            if outcome.is_err() {
                break;
            }
        }
        assert!(matches!(outcome, Err(CodecError::TooManyAttributes)));
        // Exactly the limit is fine.
        let most: String = (0..MAX_ATTRIBUTES)
            .map(|i| format!("a{i}=b\n"))
            .collect::<String>()
            + "\n";
        assert_eq!(decode_all(most.as_bytes()).unwrap().len(), 1);
        let big = format!("x={}\n\n", "y".repeat(MAX_REQUEST_BYTES));
        assert!(matches!(
            decode_all(big.as_bytes()),
            Err(CodecError::TooLarge)
        ));
        // Without the end marker, the size limit still triggers.
        let mut codec = PolicyCodec::new();
        let mut buf = BytesMut::from(&b"x="[..]);
        buf.extend_from_slice(&vec![b'y'; MAX_REQUEST_BYTES + 10]);
        assert!(matches!(codec.decode(&mut buf), Err(CodecError::TooLarge)));
    }

    #[test]
    fn encodes_action_lines() {
        let mut codec = PolicyCodec::new();
        let mut buf = BytesMut::new();
        codec.encode(Response::dunno(), &mut buf).unwrap();
        codec
            .encode(Response("450 4.3.2 a\r\nb".into()), &mut buf)
            .unwrap();
        assert_eq!(&buf[..], b"action=DUNNO\n\naction=450 4.3.2 a  b\n\n");
    }
}
