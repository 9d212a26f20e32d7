//! Property-driven fuzzing of every parser that reads peer or file input: the milter codec,
//! the policy delegation codec, the Dovecot auth policy request, the YAML reader with the
//! policy loader, and the daemon configuration.
//!
//! Each target builds *valid* input from a structured generator (frames, requests, documents
//! that the parser must accept and decode exactly), then damages it — bits flipped, bytes
//! inserted, spans deleted or duplicated, the text cut short, milter length fields set to 0,
//! to the cap ± 1 or to `u32::MAX` — and feeds it in random chunk sizes. Every case asserts no
//! panic, the exact result for undamaged input, and for damaged input a typed error that is
//! bounded (no quoted payload) and consistent with the protocol (the same outcome whatever the
//! chunking, buffers never past the frame or request cap, positions inside the file).
//!
//! `cargo test --test fuzz` runs 500 cases per target with a fixed seed. The `--ignored`
//! versions run 100 000 cases each (`SUBMITGATE_FUZZ_CASES` to change; at most
//! `SUBMITGATE_FUZZ_SECONDS` per target when set) from a random seed that a failure names
//! (`SUBMITGATE_FUZZ_SEED` replays it):
//!
//! ```sh
//! cargo test --release --test fuzz -- --ignored --test-threads 2
//! ```
//!
//! cargo-afl and honggfuzz-rs were not used: both need an instrumented rebuild of the whole
//! dependency tree (and AFL++'s LLVM plug-ins or honggfuzz's C build), too heavy for the
//! 2-core CI machine; proptest runs on stable with the normal test harness.

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use tokio_util::codec::Decoder;

use submitgate::auth_policy::{Command as AuthCommand, PolicyRequest, RequestError};
use submitgate::milter::codec::{
    CodecError as MilterError, Command, MilterCodec, MtaCodec, DEFAULT_MAX_FRAME, MILTER_LEN_BYTES,
    SMFIA_INET, SMFIA_INET6, SMFIA_UNIX, SMFIA_UNKNOWN,
};
use submitgate::postfix_policy::codec::{
    CodecError as PolicyError, PolicyCodec, Request, MAX_ATTRIBUTES, MAX_REQUEST_BYTES,
};

/// Cases per target in the normal test run.
const QUICK_CASES: u32 = 500;
/// Cases per target in the `--ignored` fuzz run.
const FUZZ_CASES: u32 = 100_000;
/// Longest error text accepted: errors name what and where, they never quote a payload.
const MAX_ERROR_TEXT: usize = 200;

// ---------------------------------------------------------------------------------------------
// The runner and the damage every target shares.

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok())
}

/// Cases per proptest runner; a long run is a series of batches so that it can stop on time.
const BATCH: u32 = 1000;

/// Runs `test` on `cases` values of `strategy`. With `fixed_seed` (the quick tests) always the
/// same cases; otherwise from a random seed, `SUBMITGATE_FUZZ_CASES` cases, and at most
/// `SUBMITGATE_FUZZ_SECONDS` seconds when set (CI's bound: the batch running then finishes).
/// A failure names the seed that replays it: `SUBMITGATE_FUZZ_SEED=N`.
fn run<S>(
    name: &str,
    cases: u32,
    fixed_seed: Option<u64>,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let seed = env_number("SUBMITGATE_FUZZ_SEED")
        .or(fixed_seed)
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let (cases, budget) = match fixed_seed {
        Some(_) => (cases, None),
        None => (
            env_number("SUBMITGATE_FUZZ_CASES").unwrap_or(cases),
            env_number::<u64>("SUBMITGATE_FUZZ_SECONDS").map(std::time::Duration::from_secs),
        ),
    };
    let started = std::time::Instant::now();
    let mut done: u32 = 0;
    let mut batch: u64 = 0;
    while done < cases && budget.map_or(true, |b| started.elapsed() < b) {
        let n = (cases - done).min(BATCH);
        let batch_seed = seed.wrapping_add(batch);
        let mut runner = TestRunner::new(Config {
            cases: n,
            rng_seed: RngSeed::Fixed(batch_seed),
            failure_persistence: None,
            max_shrink_iters: 4096,
            ..Config::default()
        });
        if let Err(e) = runner.run(&strategy, &test) {
            panic!(
                "fuzz {name}: {e}\nreplay: SUBMITGATE_FUZZ_SEED={batch_seed} \
                 SUBMITGATE_FUZZ_CASES={n} (after {done} passing cases)"
            );
        }
        done += n;
        batch += 1;
    }
    // Past the harness's capture, so that a fuzz run shows how much it did.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "fuzz {name}: {done} cases passed in {:.1} s (SUBMITGATE_FUZZ_SEED={seed})",
        started.elapsed().as_secs_f64()
    );
}

/// One way of damaging a byte string; positions are fractions of its length.
#[derive(Debug, Clone)]
enum Damage {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Duplicate(Index, usize),
    CutAt(Index),
}

/// Bytes that mean something to one of the formats (separators, terminators, quotes,
/// invalid UTF-8) are inserted more often than others.
fn special_bytes() -> impl Strategy<Value = Vec<u8>> {
    let interesting = prop::sample::select(vec![
        b"\0".to_vec(),
        b"\n".to_vec(),
        b"\r\n".to_vec(),
        b"\n\n".to_vec(),
        b"=".to_vec(),
        b":".to_vec(),
        b": ".to_vec(),
        b"- ".to_vec(),
        b"[".to_vec(),
        b"{".to_vec(),
        b"}".to_vec(),
        b"\"".to_vec(),
        b"'".to_vec(),
        b"&a ".to_vec(),
        b"*a".to_vec(),
        b"!!str ".to_vec(),
        b"#".to_vec(),
        b"\t".to_vec(),
        b"  ".to_vec(),
        b"\xff".to_vec(),
        b"\xc3".to_vec(),
        b"\xe2\x80\xae".to_vec(),
        b"\\u0000".to_vec(),
        b"\x1b[31m".to_vec(),
        b"---\n".to_vec(),
        b"%YAML 1.2\n".to_vec(),
    ]);
    prop_oneof![
        3 => interesting,
        1 => prop::collection::vec(any::<u8>(), 1..8),
    ]
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Damage::FlipBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Damage::SetByte(i, b)),
        3 => (any::<Index>(), special_bytes()).prop_map(|(i, b)| Damage::Insert(i, b)),
        2 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Damage::Delete(i, n)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Damage::Duplicate(i, n)),
        1 => any::<Index>().prop_map(Damage::CutAt),
    ]
}

fn apply(mut bytes: Vec<u8>, damages: &[Damage]) -> Vec<u8> {
    for d in damages {
        let len = bytes.len();
        let at = |i: &Index| if len == 0 { 0 } else { i.index(len + 1) };
        match d {
            Damage::FlipBit(i, bit) if len > 0 => bytes[i.index(len)] ^= 1 << bit,
            Damage::SetByte(i, b) if len > 0 => bytes[i.index(len)] = *b,
            Damage::Insert(i, b) => {
                let p = at(i);
                bytes.splice(p..p, b.iter().copied());
            }
            Damage::Delete(i, n) => {
                let p = at(i).min(len);
                bytes.drain(p..(p + n).min(len));
            }
            Damage::Duplicate(i, n) => {
                let p = at(i).min(len);
                let span = bytes[p..(p + n).min(len)].to_vec();
                bytes.splice(p..p, span);
            }
            Damage::CutAt(i) => bytes.truncate(at(i)),
            _ => {}
        }
    }
    bytes
}

/// Chunk sizes to feed a decoder with (cycled): single bytes, small pieces, everything.
fn chunking() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        1 => Just(vec![usize::MAX]),
        1 => Just(vec![1]),
        2 => prop::collection::vec(1usize..300, 1..8),
    ]
}

fn chunks<'a>(bytes: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = bytes;
    let mut n = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = sizes[n % sizes.len()].clamp(1, rest.len());
        n += 1;
        let (head, tail) = rest.split_at(size);
        rest = tail;
        Some(head)
    })
}

fn bounded(text: &str, what: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        text.len() <= MAX_ERROR_TEXT,
        "{what} error text of {} bytes: {text:?}",
        text.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Milter codec.

fn field() -> impl Strategy<Value = bytes::Bytes> {
    prop_oneof![
        3 => prop::collection::vec(1u8..=255, 0..24),
        1 => prop::sample::select(vec![
            b"{auth_authen}".to_vec(),
            b"alice@contoso.com".to_vec(),
            b"<alice@contoso.com>".to_vec(),
            b"i".to_vec(),
            b"SIZE=100".to_vec(),
        ]),
    ]
    .prop_map(bytes::Bytes::from)
}

fn payload() -> impl Strategy<Value = bytes::Bytes> {
    prop::collection::vec(any::<u8>(), 0..300).prop_map(bytes::Bytes::from)
}

fn milter_command() -> impl Strategy<Value = Command> {
    let family = prop::sample::select(vec![SMFIA_INET, SMFIA_INET6, SMFIA_UNIX, b'Z']);
    prop_oneof![
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(version, actions, protocol)| {
            Command::OptNeg {
                version,
                actions,
                protocol,
            }
        }),
        (any::<u8>(), prop::collection::vec((field(), field()), 0..5))
            .prop_map(|(stage, macros)| Command::Macro { stage, macros }),
        (field(), family, any::<u16>(), field()).prop_map(|(hostname, family, port, address)| {
            Command::Connect {
                hostname,
                family,
                port: Some(port),
                address,
            }
        }),
        field().prop_map(|hostname| Command::Connect {
            hostname,
            family: SMFIA_UNKNOWN,
            port: None,
            address: bytes::Bytes::new(),
        }),
        field().prop_map(Command::Helo),
        prop::collection::vec(field(), 1..4).prop_map(|args| Command::Mail { args }),
        prop::collection::vec(field(), 1..4).prop_map(|args| Command::Rcpt { args }),
        Just(Command::Data),
        (field(), field()).prop_map(|(name, value)| Command::Header { name, value }),
        Just(Command::EndOfHeaders),
        payload().prop_map(Command::Body),
        payload().prop_map(Command::EndOfMessage),
        Just(Command::Abort),
        Just(Command::Quit),
        Just(Command::QuitNewConnection),
        field().prop_map(Command::Unknown),
    ]
}

/// A new value for one frame's length field.
#[derive(Debug, Clone)]
enum LengthField {
    Keep,
    Zero,
    Max,
    CapPlusOne,
    Cap,
    Off(i8),
    Any(u32),
}

#[derive(Debug, Clone)]
struct MilterCase {
    max_frame: usize,
    commands: Vec<Command>,
    lengths: Vec<(Index, LengthField)>,
    damages: Vec<Damage>,
    chunking: Vec<usize>,
}

fn milter_case() -> impl Strategy<Value = MilterCase> {
    let length = prop_oneof![
        4 => Just(LengthField::Keep),
        1 => Just(LengthField::Zero),
        1 => Just(LengthField::Max),
        1 => Just(LengthField::CapPlusOne),
        1 => Just(LengthField::Cap),
        2 => (-3i8..=3).prop_map(LengthField::Off),
        1 => any::<u32>().prop_map(LengthField::Any),
    ];
    (
        prop::sample::select(vec![64usize, 4096, DEFAULT_MAX_FRAME]),
        prop::collection::vec(milter_command(), 1..12),
        prop::collection::vec((any::<Index>(), length), 0..3),
        prop::collection::vec(damage(), 0..4),
        chunking(),
    )
        .prop_map(
            |(max_frame, commands, lengths, damages, chunking)| MilterCase {
                max_frame,
                commands,
                lengths,
                damages,
                chunking,
            },
        )
}

/// What a decoder made of a whole stream: the items, then the error that stopped it, if any.
type Outcome<T> = (Vec<T>, Option<String>);

fn milter_decode(
    case: &MilterCase,
    bytes: &[u8],
    sizes: &[usize],
) -> Result<Outcome<Command>, TestCaseError> {
    let mut codec = MilterCodec::new(case.max_frame);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks(bytes, sizes) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(c)) => out.push(c),
                Ok(None) => {
                    // Only a partial frame waits, never more than the cap allows.
                    prop_assert!(
                        buf.len() < MILTER_LEN_BYTES + case.max_frame,
                        "{} bytes buffered with a cap of {}",
                        buf.len(),
                        case.max_frame
                    );
                    break;
                }
                Err(e) => return milter_error(case, &e, &buf).map(|m| (out, Some(m))),
            }
        }
    }
    let left = buf.len();
    match codec.decode_eof(&mut buf) {
        Ok(Some(c)) => {
            out.push(c);
            Ok((out, None))
        }
        Ok(None) => {
            prop_assert_eq!(left, 0);
            Ok((out, None))
        }
        Err(e) => {
            if let MilterError::Truncated { buffered } = e {
                prop_assert_eq!(buffered, left);
            }
            milter_error(case, &e, &buf).map(|m| (out, Some(m)))
        }
    }
}

fn milter_error(
    case: &MilterCase,
    e: &MilterError,
    buf: &BytesMut,
) -> Result<String, TestCaseError> {
    match e {
        MilterError::FrameTooLarge { len, max } => {
            prop_assert_eq!(*max, case.max_frame);
            prop_assert!(*len > *max);
        }
        MilterError::ZeroLength => prop_assert_eq!(&buf[..4], &[0u8; 4][..]),
        MilterError::Io(_) | MilterError::UnknownReply(_) | MilterError::InvalidReply { .. } => {
            prop_assert!(false, "the decoder produced {e:?}")
        }
        _ => {}
    }
    let text = e.to_string();
    bounded(&text, "milter")?;
    Ok(text)
}

fn milter_target(case: MilterCase) -> Result<(), TestCaseError> {
    // Valid frames, each encoded alone so that its length field can be changed.
    let mut frames = Vec::new();
    for c in &case.commands {
        let mut f = BytesMut::new();
        c.encode(&mut f)
            .map_err(|e| TestCaseError::fail(format!("encode {c:?}: {e}")))?;
        frames.push(f.to_vec());
    }
    let whole: Vec<u8> = frames.concat();
    let fits = frames
        .iter()
        .all(|f| f.len() - MILTER_LEN_BYTES <= case.max_frame);
    if fits {
        // Undamaged: exactly the commands, whatever the chunking.
        let (got, err) = milter_decode(&case, &whole, &case.chunking)?;
        prop_assert_eq!(err, None);
        prop_assert_eq!(&got, &case.commands);
    } else {
        let (_, err) = milter_decode(&case, &whole, &case.chunking)?;
        prop_assert!(err.is_some_and(|e| e.contains("exceeds the limit")));
    }

    for (which, new) in &case.lengths {
        let f = &mut frames[which.index(case.commands.len())];
        let real = f.len() - MILTER_LEN_BYTES;
        let value: u32 = match new {
            LengthField::Keep => continue,
            LengthField::Zero => 0,
            LengthField::Max => u32::MAX,
            LengthField::CapPlusOne => case.max_frame as u32 + 1,
            LengthField::Cap => case.max_frame as u32,
            LengthField::Off(d) => (real as i64 + *d as i64).clamp(0, u32::MAX as i64) as u32,
            LengthField::Any(v) => *v,
        };
        f[..MILTER_LEN_BYTES].copy_from_slice(&value.to_be_bytes());
    }
    let damaged = apply(frames.concat(), &case.damages);
    let one_shot = milter_decode(&case, &damaged, &[usize::MAX])?;
    let chunked = milter_decode(&case, &damaged, &case.chunking)?;
    prop_assert_eq!(
        &one_shot,
        &chunked,
        "the outcome depends on how the bytes arrive"
    );
    Ok(())
}

#[test]
fn milter_codec() {
    run(
        "milter codec",
        QUICK_CASES,
        Some(1),
        milter_case(),
        milter_target,
    );
}

#[test]
#[ignore = "fuzz run: cargo test --release --test fuzz -- --ignored"]
fn fuzz_milter_codec() {
    run(
        "milter codec",
        FUZZ_CASES,
        None,
        milter_case(),
        milter_target,
    );
}

/// The MTA side decodes replies (tests, load generator): arbitrary frames never panic it.
fn milter_reply_target((bytes, sizes): (Vec<u8>, Vec<usize>)) -> Result<(), TestCaseError> {
    let mut codec = MtaCodec::new(4096);
    let mut buf = BytesMut::new();
    for chunk in chunks(&bytes, &sizes) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return bounded(&e.to_string(), "milter reply"),
            }
        }
    }
    if let Err(e) = codec.decode_eof(&mut buf) {
        bounded(&e.to_string(), "milter reply")?;
    }
    Ok(())
}

fn milter_reply_case() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    let frame = (
        0u32..64,
        prop::sample::select(b"acrtypsOx".to_vec()),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(len, code, data)| {
            let mut f = len.to_be_bytes().to_vec();
            f.push(code);
            f.extend(data);
            f
        });
    (
        prop::collection::vec(frame, 1..6).prop_map(|f| f.concat()),
        chunking(),
    )
}

#[test]
fn milter_reply_codec() {
    run(
        "milter replies",
        QUICK_CASES,
        Some(2),
        milter_reply_case(),
        milter_reply_target,
    );
}

#[test]
#[ignore = "fuzz run: cargo test --release --test fuzz -- --ignored"]
fn fuzz_milter_reply_codec() {
    run(
        "milter replies",
        FUZZ_CASES,
        None,
        milter_reply_case(),
        milter_reply_target,
    );
}

// ---------------------------------------------------------------------------------------------
// Policy delegation codec.

const POLICY_NAMES: &[&str] = &[
    "request",
    "protocol_state",
    "client_address",
    "client_port",
    "server_address",
    "server_port",
    "instance",
    "queue_id",
    "sender",
    "recipient",
    "recipient_count",
    "size",
    "sasl_method",
    "sasl_username",
    "encryption_protocol",
    "helo_name",
    "ccert_subject",
    "policy_context",
];

fn policy_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[ -~]{0,30}",
        2 => prop::sample::select(vec![
            "smtpd_access_policy".to_string(),
            "RCPT".to_string(),
            "END-OF-MESSAGE".to_string(),
            "alice@contoso.com".to_string(),
            "0".to_string(),
            "18446744073709551616".to_string(),
            "-1".to_string(),
            "a=b=c".to_string(),
        ]),
        1 => "\\PC{0,12}",
        1 => (1usize..3000).prop_map(|n| "v".repeat(n)),
    ]
    .prop_map(|v: String| v.replace(['\n', '\r'], " "))
}

fn policy_attribute() -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![
        4 => prop::sample::select(POLICY_NAMES.to_vec()).prop_map(str::to_string),
        1 => "[a-z_]{0,12}",
    ];
    (name, policy_value())
}

#[derive(Debug, Clone)]
struct PolicyCase {
    requests: Vec<Vec<(String, String)>>,
    crlf: bool,
    damages: Vec<Damage>,
    chunking: Vec<usize>,
}

fn policy_case() -> impl Strategy<Value = PolicyCase> {
    let request = prop_oneof![
        8 => prop::collection::vec(policy_attribute(), 1..40),
        1 => prop::collection::vec(("[a-z]{1,3}", "[0-9]{0,3}"), 505..520),
        1 => "[a-z_]{1,12}".prop_map(|n| vec![(n, "x".repeat(MAX_REQUEST_BYTES + 10))]),
    ];
    (
        prop::collection::vec(request, 1..5),
        any::<bool>(),
        prop::collection::vec(damage(), 0..4),
        chunking(),
    )
        .prop_map(|(requests, crlf, damages, chunking)| PolicyCase {
            requests,
            crlf,
            damages,
            chunking,
        })
}

/// What `parse_request` must make of one request's attributes (the last occurrence wins).
fn expected_request(attrs: &[(String, String)]) -> Request {
    let mut r = Request::default();
    for (name, value) in attrs {
        let v = value.clone();
        match name.as_str() {
            "request" => r.request = v,
            "protocol_state" => r.protocol_state = v,
            "client_address" => r.client_address = v,
            "client_port" => r.client_port = v,
            "server_address" => r.server_address = v,
            "server_port" => r.server_port = v,
            "instance" => r.instance = v,
            "queue_id" => r.queue_id = v,
            "sender" => r.sender = v,
            "recipient" => r.recipient = v,
            "recipient_count" => r.recipient_count = v.parse().ok(),
            "size" => r.size = v.parse().ok(),
            "sasl_method" => r.sasl_method = v,
            "sasl_username" => r.sasl_username = v,
            "encryption_protocol" => r.encryption_protocol = v,
            _ => {}
        }
    }
    r
}

fn policy_decode(bytes: &[u8], sizes: &[usize]) -> Result<Outcome<Request>, TestCaseError> {
    let mut codec = PolicyCodec::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let error = |e: PolicyError| -> Result<String, TestCaseError> {
        prop_assert!(!matches!(e, PolicyError::Io(_)), "decoder produced {e:?}");
        let text = e.to_string();
        bounded(&text, "policy")?;
        Ok(text)
    };
    for chunk in chunks(bytes, sizes) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {
                    // (+1: a request may still end at a newline followed by a lone CR.)
                    prop_assert!(
                        buf.len() <= MAX_REQUEST_BYTES + 1,
                        "{} bytes buffered for one request",
                        buf.len()
                    );
                    break;
                }
                Err(e) => return Ok((out, Some(error(e)?))),
            }
        }
    }
    match codec.decode_eof(&mut buf) {
        Ok(Some(r)) => out.push(r),
        Ok(None) => {}
        Err(e) => return Ok((out, Some(error(e)?))),
    }
    Ok((out, None))
}

fn policy_target(case: PolicyCase) -> Result<(), TestCaseError> {
    let eol = if case.crlf { "\r\n" } else { "\n" };
    let mut text = String::new();
    let mut expected = Vec::new();
    let mut expected_error = None;
    for attrs in &case.requests {
        let start = text.len();
        for (name, value) in attrs {
            text.push_str(&format!("{name}={value}{eol}"));
        }
        let block = text.len() - start;
        text.push_str(eol);
        if expected_error.is_none() {
            if block > MAX_REQUEST_BYTES {
                expected_error = Some(PolicyError::TooLarge.to_string());
            } else if attrs.len() > MAX_ATTRIBUTES {
                expected_error = Some(PolicyError::TooManyAttributes.to_string());
            } else {
                expected.push(expected_request(attrs));
            }
        }
    }
    // Byte-by-byte feeding of the 64 KiB requests would cost most of the run; pieces of at
    // least 64 bytes still split them anywhere (the unit tests beside the codec feed one
    // such request byte by byte).
    let sizes: Vec<usize> = if text.len() > 8192 {
        case.chunking.iter().map(|s| (*s).max(64)).collect()
    } else {
        case.chunking.clone()
    };
    let (got, err) = policy_decode(text.as_bytes(), &sizes)?;
    prop_assert_eq!(err, expected_error);
    prop_assert_eq!(got, expected);

    let damaged = apply(text.into_bytes(), &case.damages);
    let (one_items, one_err) = policy_decode(&damaged, &[usize::MAX])?;
    let (chunk_items, chunk_err) = policy_decode(&damaged, &sizes)?;
    prop_assert_eq!(
        &one_items,
        &chunk_items,
        "the requests depend on how the bytes arrive"
    );
    // Which of the two size limits fires first may depend on how much had arrived.
    let size_limits = [
        PolicyError::TooLarge.to_string(),
        PolicyError::TooManyAttributes.to_string(),
    ];
    match (&one_err, &chunk_err) {
        (Some(a), Some(b)) if size_limits.contains(a) && size_limits.contains(b) => {}
        _ => prop_assert_eq!(&one_err, &chunk_err),
    }
    Ok(())
}

#[test]
fn policy_codec() {
    run(
        "policy codec",
        QUICK_CASES,
        Some(3),
        policy_case(),
        policy_target,
    );
}

#[test]
#[ignore = "fuzz run: cargo test --release --test fuzz -- --ignored"]
fn fuzz_policy_codec() {
    run(
        "policy codec",
        FUZZ_CASES,
        None,
        policy_case(),
        policy_target,
    );
}

// ---------------------------------------------------------------------------------------------
// Dovecot auth policy request.

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::String),
        prop::sample::select(vec![
            " ",
            "",
            "TRUE",
            "yes",
            "0",
            "SMTP",
            " alice@contoso.com "
        ])
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-z]{0,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
struct AuthCase {
    fields: Vec<(String, serde_json::Value)>,
    /// Nesting depth of a `[[[…]]]` prefix (0: none): deep input must be refused, not recursed.
    nesting: usize,
    query: String,
    damages: Vec<Damage>,
}

fn auth_case() -> impl Strategy<Value = AuthCase> {
    let key = prop_oneof![
        4 => prop::sample::select(vec![
            "login", "remote", "protocol", "mechanism", "mech", "session_id", "tls", "success",
            "policy_reject", "device_id", "pwhash",
        ])
        .prop_map(str::to_string),
        1 => "\\PC{0,8}",
    ];
    (
        prop::collection::vec((key, json_value()), 0..10),
        prop_oneof![4 => Just(0usize), 1 => 100usize..20_000],
        prop_oneof![
            Just("allow".to_string()),
            Just("report".to_string()),
            "\\PC{0,80}"
        ],
        prop::collection::vec(damage(), 0..4),
    )
        .prop_map(|(fields, nesting, query, damages)| AuthCase {
            fields,
            nesting,
            query,
            damages,
        })
}

/// `string_field`'s rule: a non-empty trimmed string, or a number or boolean as text.
fn expected_text(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `login_field`'s rule: the login as sent (admission refuses blank or control-character logins,
/// so nothing is trimmed away here), or a number or boolean as text; an empty string is none.
fn expected_login(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) if s.is_empty() => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => expected_text(Some(other)),
    }
}

fn auth_target(case: AuthCase) -> Result<(), TestCaseError> {
    match AuthCommand::from_query(Some(&case.query)) {
        Ok(AuthCommand::Allow) => prop_assert_eq!(case.query.as_str(), "allow"),
        Ok(AuthCommand::Report) => prop_assert_eq!(case.query.as_str(), "report"),
        Err(RequestError::UnknownCommand(shown)) => {
            prop_assert!(shown.chars().count() <= 40, "quoted {shown:?}")
        }
        Err(e) => prop_assert!(false, "{e:?}"),
    }

    let object: serde_json::Map<String, serde_json::Value> = case.fields.iter().cloned().collect();
    let body = serde_json::to_vec(&object).map_err(|e| TestCaseError::fail(e.to_string()))?;
    // Expectations from the body as serde_json reads it back (a float may come back rounded).
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let r = PolicyRequest::parse(&body)
        .map_err(|e| TestCaseError::fail(format!("valid JSON object refused: {e}")))?;
    prop_assert_eq!(r.login, expected_login(object.get("login")));
    prop_assert_eq!(r.remote, expected_text(object.get("remote")));
    prop_assert_eq!(
        r.protocol,
        expected_text(object.get("protocol")).map(|p| p.to_ascii_lowercase())
    );
    let mechanism = expected_text(object.get("mechanism")).or(expected_text(object.get("mech")));
    prop_assert_eq!(r.mechanism, mechanism);

    let mut input = Vec::new();
    input.extend(vec![b'['; case.nesting]);
    input.extend(&body);
    input.extend(vec![b']'; case.nesting]);
    let damaged = apply(input, &case.damages);
    match PolicyRequest::parse(&damaged) {
        Ok(_) => prop_assert!(case.nesting == 0 || !case.damages.is_empty()),
        Err(e @ (RequestError::NotJson(_) | RequestError::NotObject)) => {
            bounded(&e.to_string(), "auth policy")?
        }
        Err(e) => prop_assert!(false, "parse produced {e:?}"),
    }
    Ok(())
}

#[test]
fn auth_policy_request() {
    run(
        "auth policy request",
        QUICK_CASES,
        Some(4),
        auth_case(),
        auth_target,
    );
}

#[test]
#[ignore = "fuzz run: cargo test --release --test fuzz -- --ignored"]
fn fuzz_auth_policy_request() {
    run(
        "auth policy request",
        FUZZ_CASES,
        None,
        auth_case(),
        auth_target,
    );
}

// ---------------------------------------------------------------------------------------------
// YAML reader and the policy loader.

/// A mailbox entry: local part, its switch, its limit, its `sent_items.enabled`.
type MailboxCase = (String, Option<bool>, Option<u32>, Option<bool>);

#[derive(Debug, Clone)]
struct PolicyFileCase {
    organization: String,
    domains: Vec<String>,
    disabled: Option<bool>,
    limit: Option<u32>,
    mailboxes: Vec<MailboxCase>,
    flow: bool,
    /// A hostile prefix: deep nesting, an alias bomb, a second document…
    prefix: Option<String>,
    damages: Vec<Damage>,
}

fn policy_file_case() -> impl Strategy<Value = PolicyFileCase> {
    let mailbox = (
        "[a-z][a-z0-9]{0,8}",
        prop::option::of(any::<bool>()),
        prop::option::of(1u32..1000),
        prop::option::of(any::<bool>()),
    );
    let prefix = prop_oneof![
        6 => Just(None),
        1 => (1usize..5000).prop_map(|n| Some(format!("{}{}\n", "[".repeat(n), "]".repeat(n)))),
        1 => (1usize..5000).prop_map(|n| Some(format!("{}a\n", "- ".repeat(n)))),
        1 => Just(Some(
            "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n\
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c]\n"
                .to_string()
        )),
        1 => Just(Some("---\na: 1\n---\n".to_string())),
        1 => Just(Some("? [complex, key]\n: value\n".to_string())),
    ];
    (
        "[a-z][a-z0-9_-]{0,10}",
        prop::collection::btree_set("[a-z]{1,8}\\.(com|net|org)", 1..4)
            .prop_map(|d| d.into_iter().collect::<Vec<_>>()),
        prop::option::of(any::<bool>()),
        prop::option::of(1u32..100_000),
        prop::collection::vec(mailbox, 0..12),
        any::<bool>(),
        prefix,
        prop::collection::vec(damage(), 0..4),
    )
        .prop_map(
            |(organization, domains, disabled, limit, mailboxes, flow, prefix, damages)| {
                PolicyFileCase {
                    organization,
                    domains,
                    disabled,
                    limit,
                    mailboxes,
                    flow,
                    prefix,
                    damages,
                }
            },
        )
}

impl PolicyFileCase {
    /// The valid file, and how many distinct mailboxes it defines.
    fn text(&self) -> (String, usize) {
        let mut t = format!(
            "# generated\norganization: \"{}\"\ndomains: [{}]\n",
            self.organization,
            self.domains.join(", ")
        );
        if let Some(d) = self.disabled {
            t.push_str(&format!("smtp_client_authentication_disabled: {d}\n"));
        }
        if let Some(l) = self.limit {
            t.push_str(&format!("max_concurrent_sessions_per_mailbox: {l}\n"));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut body = String::new();
        for (local, disabled, limit, sent) in &self.mailboxes {
            let address = format!("{local}@{}", self.domains[0]);
            if !seen.insert(address.clone()) {
                continue;
            }
            let mut keys = Vec::new();
            if let Some(d) = disabled {
                keys.push(format!("smtp_client_authentication_disabled: {d}"));
            }
            if let Some(l) = limit {
                keys.push(format!("max_concurrent_sessions_per_mailbox: {l}"));
            }
            if let Some(s) = sent {
                keys.push(format!("sent_items: {{ enabled: {s} }}"));
            }
            if self.flow || keys.is_empty() {
                body.push_str(&format!("  {address}: {{ {} }}\n", keys.join(", ")));
            } else {
                body.push_str(&format!("  {address}:\n"));
                for k in keys {
                    body.push_str(&format!("    {k}\n"));
                }
            }
        }
        if !seen.is_empty() {
            t.push_str("mailboxes:\n");
            t.push_str(&body);
        }
        (t, seen.len())
    }
}

/// The lines of a text as YAML counts them: `\n`, `\r\n` and a lone `\r` each end one.
fn yaml_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').flat_map(|l| l.split('\r'))
}

/// Every error of a load names the file, a position inside the text (or 0: the whole file)
/// and a non-empty message.
fn check_located(
    errors: &[submitgate::yaml::LocatedError],
    file: &Path,
    text: &str,
) -> Result<(), TestCaseError> {
    prop_assert!(!errors.is_empty(), "an error list without errors");
    let lines = yaml_lines(text).count();
    let widest = yaml_lines(text)
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0);
    for e in errors {
        prop_assert_eq!(&e.file, file);
        prop_assert!(
            e.line <= lines + 1,
            "line {} of a {lines}-line text: {e}",
            e.line
        );
        prop_assert!(
            e.column <= widest + 2,
            "column {} (widest line {widest}): {e}",
            e.column
        );
        prop_assert!(!e.message.is_empty());
    }
    Ok(())
}

fn yaml_policy_target(case: PolicyFileCase) -> Result<(), TestCaseError> {
    let file = PathBuf::from("/fuzz/policies/org.yaml");
    let opts = submitgate::policy::LoadOptions::default();
    let (text, mailboxes) = case.text();
    submitgate::yaml::parse(&text)
        .map_err(|e| TestCaseError::fail(format!("valid YAML refused: {e:?}\n{text}")))?;
    match submitgate::policy::load_files(&[(file.clone(), text.clone())], &opts) {
        Ok(snapshot) => {
            prop_assert_eq!(snapshot.mailbox_count(), mailboxes);
            prop_assert!(snapshot.organization(&case.organization).is_some());
        }
        Err(e) => prop_assert!(false, "valid policy refused: {e}\n{text}"),
    }

    let mut input = case.prefix.clone().unwrap_or_default().into_bytes();
    input.extend(text.as_bytes());
    let damaged = String::from_utf8_lossy(&apply(input, &case.damages)).into_owned();
    match submitgate::yaml::parse(&damaged) {
        Ok(_) => {}
        Err(e) => {
            let lines = yaml_lines(&damaged).count();
            prop_assert!(e.pos.line >= 1 && e.pos.line <= lines + 1, "{e:?}");
            prop_assert!(!e.message.is_empty());
        }
    }
    if let Err(e) = submitgate::policy::load_files(&[(file.clone(), damaged.clone())], &opts) {
        check_located(&e.0, &file, &damaged)?;
    }
    Ok(())
}

#[test]
fn yaml_and_policy_loader() {
    run(
        "yaml + policy loader",
        QUICK_CASES,
        Some(5),
        policy_file_case(),
        yaml_policy_target,
    );
}

#[test]
#[ignore = "fuzz run: cargo test --release --test fuzz -- --ignored"]
fn fuzz_yaml_and_policy_loader() {
    run(
        "yaml + policy loader",
        FUZZ_CASES,
        None,
        policy_file_case(),
        yaml_policy_target,
    );
}

// ---------------------------------------------------------------------------------------------
// The daemon configuration.

/// A configuration key with a value that is valid (`true`) or may not be (`false`).
fn config_line() -> impl Strategy<Value = (String, bool)> {
    let valid = prop::sample::select(vec![
        "milter_timeout: 360s",
        "milter_max_frame: 1048576",
        "watch_policies: false",
        "default_domain: contoso.com",
        "lease_idle_timeout: 5m",
        "unix_socket_mode: \"0660\"",
        "max_connections: 100",
        "limiter: { backend: memory }",
        "audit: { path: \"-\" }",
        "replies: { concurrency_limit: \"452 4.3.2 busy\" }",
        "control: \"unix:/run/submitgate/control.sock\"",
        "auth_policy: [\"inet:127.0.0.1:10042\"]",
        "sent_items: { spool: /var/spool/submitgate }",
    ])
    .prop_map(|l| (l.to_string(), true));
    let questionable = prop_oneof![
        prop::sample::select(vec![
            "milter_timeout: -1s",
            "milter_timeout: forever",
            "milter_max_frame: 1",
            "milter_max_frame: 99999999999999999999999",
            "max_connections: 0",
            "unix_socket_mode: \"9999\"",
            "limiter: { backend: redis, url: \"redis://\\u0000\" }",
            "limiter: { backend: redis, url: \"\", timeout: 0s }",
            "replies: { tempfail: \"999 9.9.9 no\" }",
            "replies: { tenant_disabled: \"550 4.7.1 class mismatch\" }",
            "milter: [\"tcp:nowhere\"]",
            "policy: [\"inet:127.0.0.1:99999\"]",
            "policy: [\"unix:\"]",
            "sent_items: { store: { backend: imap, address: \"\" } }",
            "sent_items: { store: { backend: maildir, root: \"{nothing}\" } }",
            "unknown_key: 1",
            "audit: { queue: 0 }",
        ])
        .prop_map(str::to_string),
        ("[a-z_]{1,20}", "\\PC{0,20}").prop_map(|(k, v)| format!("{k}: {v:?}")),
    ]
    .prop_map(|l| (l, false));
    prop_oneof![3 => valid, 1 => questionable]
}

#[derive(Debug, Clone)]
struct ConfigCase {
    lines: Vec<(String, bool)>,
    damages: Vec<Damage>,
}

fn config_case() -> impl Strategy<Value = ConfigCase> {
    (
        prop::collection::vec(config_line(), 0..8),
        prop::collection::vec(damage(), 0..4),
    )
        .prop_map(|(lines, damages)| ConfigCase { lines, damages })
}

fn config_target(case: ConfigCase) -> Result<(), TestCaseError> {
    let file = PathBuf::from("/fuzz/submitgate.yaml");
    let mut text = String::from("policy: [\"inet:127.0.0.1:10040\"]\n");
    let mut seen = std::collections::BTreeSet::from(["policy".to_string()]);
    let mut all_valid = true;
    for (line, valid) in &case.lines {
        let key = line.split(':').next().unwrap_or_default().to_string();
        if !seen.insert(key) {
            continue; // a repeated key is a different question
        }
        all_valid &= valid;
        text.push_str(line);
        text.push('\n');
    }
    let parsed = submitgate::config::Config::parse(&file, &text);
    match (&parsed, all_valid) {
        (Ok(c), _) => prop_assert!(!c.policy_listeners.is_empty()),
        (Err(e), true) => prop_assert!(false, "valid configuration refused: {e}\n{text}"),
        (Err(e), false) => check_located(&e.0, &file, &text)?,
    }
    let damaged = String::from_utf8_lossy(&apply(text.into_bytes(), &case.damages)).into_owned();
    if let Err(e) = submitgate::config::Config::parse(&file, &damaged) {
        check_located(&e.0, &file, &damaged)?;
    }
    Ok(())
}

#[test]
fn config_loader() {
    run(
        "config loader",
        QUICK_CASES,
        Some(6),
        config_case(),
        config_target,
    );
}

#[test]
#[ignore = "fuzz run: cargo test --release --test fuzz -- --ignored"]
fn fuzz_config_loader() {
    run(
        "config loader",
        FUZZ_CASES,
        None,
        config_case(),
        config_target,
    );
}
