use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

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
