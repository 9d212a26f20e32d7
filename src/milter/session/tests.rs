//! Tests of the milter session: the state table, folds and addresses.

use super::*;

#[test]
fn postfix_order_is_legal() {
    // The letters of both captured Postfix sessions.
    let letters = "ODCDHDMDRDRDTDLDLDLDLDNDBDEADMDRDTDLDLDLDLDNDBDEAAQ";
    let mut state = State::Start;
    for l in letters.bytes() {
        let event = match l {
            b'O' => Event::OptNeg,
            b'D' => Event::Macro,
            b'C' => Event::Connect,
            b'H' => Event::Helo,
            b'M' => Event::Mail,
            b'R' => Event::Rcpt,
            b'T' => Event::Data,
            b'L' => Event::Header,
            b'N' => Event::EndOfHeaders,
            b'B' => Event::Body,
            b'E' => Event::EndOfMessage,
            b'A' => Event::Abort,
            b'Q' => Event::Quit,
            other => panic!("unexpected {other}"),
        };
        state = state
            .next(event)
            .unwrap_or_else(|| panic!("{event:?} refused in {state:?}"));
    }
    assert_eq!(state, State::Closed);
}

#[test]
fn out_of_order_is_refused() {
    assert!(!State::Start.has_transition(Event::Connect));
    assert!(!State::Start.has_transition(Event::Macro));
    assert!(!State::Negotiated.has_transition(Event::Mail));
    assert!(!State::Idle.has_transition(Event::Rcpt));
    assert!(!State::Mail.has_transition(Event::Data));
    assert!(!State::Body.has_transition(Event::Header));
    assert!(!State::Closed.has_transition(Event::Abort));
    assert!(!State::Closed.has_transition(Event::Quit));
    assert!(!State::Idle.has_transition(Event::OptNeg));
    // STARTTLS: ABORT, then a new HELO.
    assert_eq!(
        State::Idle
            .next(Event::Abort)
            .and_then(|s| s.next(Event::Helo)),
        Some(State::Idle)
    );
    assert_eq!(State::Rcpt.next(Event::Unknown), Some(State::Rcpt));
    assert_eq!(
        State::Body.next(Event::QuitNewConnection),
        Some(State::Negotiated)
    );
}

#[test]
fn folds_and_addresses() {
    let mut out = Vec::new();
    crlf_folds(b" folded\n header\r\n already", &mut out);
    assert_eq!(out, b" folded\r\n header\r\n already");
    assert_eq!(address(b"<alice@contoso.com>"), "alice@contoso.com");
    assert_eq!(address(b"<>"), "");
    assert_eq!(address(b"bare@x"), "bare@x");
    assert_eq!(unfold(b" <a@b>\n "), b"<a@b>");
}
