use std::io;
use std::time::SystemTime;

use super::event::{classify, Contribution, EventLine, Tls};
use super::input::read_line_bounded;
use super::*;
use crate::reason::Reason;

fn at(s: &str) -> SystemTime {
    humantime::parse_rfc3339(s).unwrap()
}

#[test]
fn timestamps() {
    let t = at("2026-11-27T14:33:33.286Z");
    assert_eq!(parse_timestamp("2026-11-27T14:33:33.286Z"), Some(t));
    assert_eq!(parse_timestamp("2026-11-27T15:33:33.286+01:00"), Some(t));
    assert_eq!(parse_timestamp("2026-11-27T09:03:33.286-05:30"), Some(t));
    assert_eq!(parse_timestamp("2026-11-27 14:33:33.286z"), Some(t));
    assert_eq!(
        parse_timestamp("2026-11-27T14:33:33Z"),
        Some(at("2026-11-27T14:33:33Z"))
    );
    for bad in [
        "",
        "2026-11-27",
        "2026-11-27T14:33:33",
        "2026-11-27T14:33:33.286",
        "2026-13-27T14:33:33Z",
        "2026-11-27T14:33:33+24:00",
        "2026-11-27T14:33:33+0100",
        "2026-11-27T14:33:33.28éZ",
        "yesterday at noon please",
    ] {
        assert_eq!(parse_timestamp(bad), None, "{bad}");
    }
}

#[test]
fn range_bounds() {
    let now = at("2026-11-27T12:00:00Z");
    let r = TimeRange::parse(Some("2026-11-01"), Some("2026-11-30"), now).unwrap();
    assert_eq!(r.since, Some(at("2026-11-01T00:00:00Z")));
    // A date as the end covers that whole day.
    assert_eq!(r.until, Some(at("2026-12-01T00:00:00Z")));
    assert!(r.contains(at("2026-11-30T23:59:59.999Z")));
    assert!(!r.contains(at("2026-12-01T00:00:00Z")));
    assert!(r.contains(at("2026-11-01T00:00:00Z")));
    assert!(!r.contains(at("2026-10-31T23:59:59.999Z")));

    let r = TimeRange::parse(Some("7d"), Some("24h"), now).unwrap();
    assert_eq!(r.since, Some(at("2026-11-20T12:00:00Z")));
    assert_eq!(r.until, Some(at("2026-11-26T12:00:00Z")));
    let r = TimeRange::parse(Some("2026-11-27T10:00:00+01:00"), None, now).unwrap();
    assert_eq!(r.since, Some(at("2026-11-27T09:00:00Z")));
    assert_eq!(r.until, None);

    assert!(matches!(
        TimeRange::parse(Some("2026-11-27"), Some("2026-11-26"), now),
        Err(ReportError::EmptyRange { .. })
    ));
    let e = TimeRange::parse(None, Some("last tuesday"), now).unwrap_err();
    assert!(e.to_string().contains("--until \"last tuesday\""), "{e}");
    assert!(TimeRange::parse(Some("2026-02-30"), None, now).is_err());
}

#[test]
fn tls_protocols() {
    assert_eq!(Tls::of(Some("TLSv1")), Tls::V1_0);
    assert_eq!(Tls::of(Some("TLSv1.0")), Tls::V1_0);
    assert_eq!(Tls::of(Some("TLSv1.1")), Tls::V1_1);
    assert_eq!(Tls::of(Some("TLSv1.2")), Tls::V1_2);
    assert_eq!(Tls::of(Some("TLSv1.3")), Tls::V1_3);
    assert_eq!(Tls::of(Some("SSLv3")), Tls::NoneOrUnknown);
    assert_eq!(Tls::of(Some("")), Tls::NoneOrUnknown);
    assert_eq!(Tls::of(None), Tls::NoneOrUnknown);
}

fn contribution(json: &str) -> Contribution {
    classify(&serde_json::from_str::<EventLine<'_>>(json).unwrap())
}

#[test]
fn counting_rules() {
    let ts = r#""ts":"2026-11-27T09:00:00.000Z","mailbox":"a@x""#;
    let c = |rest: &str| contribution(&format!("{{{ts},{rest}}}"));
    assert_eq!(
        c(r#""event":"submission_completed","front_end":"policy""#),
        Contribution::Message
    );
    assert_eq!(
        c(r#""event":"submission_completed","front_end":"milter""#),
        Contribution::Message
    );
    // Decided before any message exists: a milter session's allow is not a message.
    assert_eq!(
        c(r#""event":"submission_decision","front_end":"milter","decision":"allow""#),
        Contribution::Nothing
    );
    // The same messages again, summed per session.
    assert_eq!(
        c(r#""event":"session_closed","front_end":"milter","messages":2"#),
        Contribution::Nothing
    );
    assert_eq!(
        c(r#""event":"submission_decision","decision":"reject","reason":"org_disabled""#),
        Contribution::Refusal(Some(Reason::OrgDisabled))
    );
    assert_eq!(
        c(r#""event":"submission_decision","decision":"defer","reason":"concurrency_limit""#),
        Contribution::Refusal(Some(Reason::ConcurrencyLimit))
    );
    assert_eq!(
        c(r#""event":"submission_decision","decision":"defer","reason":"limiter_unavailable""#),
        Contribution::Refusal(Some(Reason::LimiterUnavailable))
    );
    assert_eq!(
        c(r#""event":"submission_decision","decision":"reject","reason":"solar_flare""#),
        Contribution::Refusal(None)
    );
    assert_eq!(c(r#""event":"auth_failed""#), Contribution::AuthFailure);
    assert_eq!(
        c(r#""event":"auth_refused_by_policy""#),
        Contribution::AuthRefused(None)
    );
    assert_eq!(
        c(r#""event":"auth_refused_by_policy","reason":"basic_auth_disabled""#),
        Contribution::AuthRefused(Some(Reason::BasicAuthDisabled))
    );
    assert_eq!(
        c(r#""event":"would_refuse","front_end":"milter","reason":"legacy_tls""#),
        Contribution::WouldRefuse {
            reason: Some(Reason::LegacyTls),
            at_auth: false
        }
    );
    assert_eq!(
        c(r#""event":"would_refuse","front_end":"auth_policy","reason":"basic_auth_disabled""#),
        Contribution::WouldRefuse {
            reason: Some(Reason::BasicAuthDisabled),
            at_auth: true
        }
    );
    for ignored in [
        "auth_succeeded",
        "session_opened",
        "sent_copy_stored",
        "limiter_unavailable",
        "something_new",
    ] {
        assert_eq!(c(&format!(r#""event":"{ignored}""#)), Contribution::Nothing);
    }
}

#[test]
fn lines_are_bounded() {
    let input = b"short\r\nthis one is too long\nlast without newline";
    let mut r = io::BufReader::with_capacity(4, &input[..]);
    let mut buf = Vec::new();
    assert_eq!(read_line_bounded(&mut r, &mut buf, 10).unwrap(), Some(true));
    assert_eq!(buf, b"short");
    assert_eq!(
        read_line_bounded(&mut r, &mut buf, 10).unwrap(),
        Some(false)
    );
    assert_eq!(buf, b"this one i");
    assert_eq!(
        read_line_bounded(&mut r, &mut buf, 100).unwrap(),
        Some(true)
    );
    assert_eq!(buf, b"last without newline");
    assert_eq!(read_line_bounded(&mut r, &mut buf, 100).unwrap(), None);
}

#[test]
fn shares_round_to_a_tenth() {
    let tls = TlsCounts {
        v1_0: 1,
        v1_1: 0,
        v1_2: 0,
        v1_3: 2,
        none_or_unknown: 5,
    };
    assert_eq!(tls.known(), 3);
    assert_eq!(tls.shares(), Some([33.3, 0.0, 0.0, 66.7]));
    assert_eq!(TlsCounts::default().shares(), None);
}

#[test]
fn builder_merges_case_and_keeps_first_skipped_line() {
    let log = concat!(
        r#"{"ts":"2026-11-27T09:00:00.000Z","event":"submission_completed","mailbox":"Ann@X.example","tls":"TLSv1.2","sasl_method":"plain"}"#,
        "\n\n",
        "{broken\n",
        r#"{"ts":"2026-11-27T09:00:01.000Z","event":"submission_completed","mailbox":"ann@x.example"}"#,
        "\n[1,2]\n",
    );
    let mut b = ReportBuilder::new(TimeRange::default());
    b.add_reader("mem", &mut log.as_bytes()).unwrap();
    let r = b.finish();
    assert_eq!(r.rows.len(), 1);
    assert_eq!(r.rows[0].sender, "ann@x.example");
    assert_eq!(r.rows[0].domain(), "x.example");
    let t = &r.rows[0].tally;
    assert_eq!(t.messages_sent, 2);
    assert_eq!(t.tls.v1_2, 1);
    assert_eq!(t.tls.none_or_unknown, 1);
    assert_eq!(
        t.auth_mechanisms,
        vec![("PLAIN".to_string(), 1), ("unknown".to_string(), 1)]
    );
    assert_eq!(r.totals, *t);
    assert_eq!(r.skipped.lines, 2);
    assert_eq!(r.skipped.first, Some(("mem".to_string(), 3)));
    assert_eq!(r.first_event, Some(at("2026-11-27T09:00:00Z")));
    assert_eq!(r.last_event, Some(at("2026-11-27T09:00:01Z")));
}

#[test]
fn reasons_without_a_column_count_as_other() {
    let log = concat!(
        r#"{"ts":"2026-11-27T09:00:00.000Z","event":"submission_decision","mailbox":"a@x","decision":"reject","reason":"org_disabled"}"#,
        "\n",
        r#"{"ts":"2026-11-27T09:00:01.000Z","event":"submission_decision","mailbox":"a@x","decision":"defer","reason":"spool_unavailable"}"#,
        "\n",
        r#"{"ts":"2026-11-27T09:00:02.000Z","event":"submission_decision","mailbox":"a@x","decision":"reject","reason":"solar_flare"}"#,
        "\n",
        r#"{"ts":"2026-11-27T09:00:03.000Z","event":"submission_decision","mailbox":"a@x","decision":"reject"}"#,
        "\n",
        // Not a string: a malformed line, as before the reason was typed.
        r#"{"ts":"2026-11-27T09:00:04.000Z","event":"submission_decision","mailbox":"a@x","decision":"reject","reason":5}"#,
        "\n",
    );
    let mut b = ReportBuilder::new(TimeRange::default());
    b.add_reader("mem", &mut log.as_bytes()).unwrap();
    let r = b.finish();
    let refusals = r.totals.refusals;
    assert_eq!(refusals.org_disabled, 1);
    assert_eq!(refusals.other, 3);
    assert_eq!(refusals.total(), 4);
    assert_eq!(r.skipped.lines, 1);
    assert_eq!(r.skipped.first, Some(("mem".to_string(), 5)));
}

#[test]
fn times_are_written_as_the_audit_log_does() {
    assert_eq!(
        range::rfc3339(at("2026-11-27T14:33:33.286Z")),
        "2026-11-27T14:33:33.286Z"
    );
    assert_eq!(
        range::rfc3339(at("2026-11-27T14:33:33Z")),
        "2026-11-27T14:33:33.000Z"
    );
    let now = at("2026-11-27T12:00:00.5Z");
    let e = TimeRange::parse(Some("1h"), Some("2h"), now).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--since (2026-11-27T11:00:00.500000000Z) is not before --until (2026-11-27T10:00:00.500000000Z)"
    );
    let e = TimeRange::parse(Some("2026-11-27"), Some("2026-11-26"), now).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--since (2026-11-27T00:00:00Z) is not before --until (2026-11-27T00:00:00Z)"
    );
    // Before the Unix epoch is not a time the audit log writes.
    assert_eq!(parse_timestamp("1969-12-31T23:59:59Z"), None);
    assert!(TimeRange::parse(Some("1969-12-31"), None, now).is_err());
}

#[test]
fn invalid_logins_have_their_own_column() {
    let log = concat!(
        r#"{"ts":"2026-11-27T09:00:00.000Z","event":"submission_decision","mailbox":"bob\\n@contoso.com","decision":"reject","reason":"invalid_login"}"#,
        "\n",
        r#"{"ts":"2026-11-27T09:00:01.000Z","event":"submission_decision","mailbox":"a@x","decision":"reject","reason":"org_disabled"}"#,
        "\n",
    );
    let mut b = ReportBuilder::new(TimeRange::default());
    b.add_reader("mem", &mut log.as_bytes()).unwrap();
    let r = b.finish();
    assert_eq!(r.totals.refusals.invalid_login, 1);
    assert_eq!(r.totals.refusals.other, 0);
    assert_eq!(r.totals.refusals.total(), 2);
    let mut table = Vec::new();
    table::write_table(&r, &mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    let header = table.lines().nth(2).unwrap();
    assert!(header.contains("Invalid login"), "{table}");
    // The sender is shown as the audit log has it (already escaped).
    assert!(table.contains("bob\\n@contoso.com"), "{table}");
}

#[test]
fn authentication_protocol_and_the_authentication_rules() {
    let ts = |n: u32| format!("2026-11-27T09:00:{n:02}.000Z");
    let lines = [
        // alice: two messages with Basic, one with OAuth; one refused at MAIL for Basic.
        format!(
            r#"{{"ts":"{}","event":"submission_completed","mailbox":"alice@contoso.com","front_end":"milter","tls":"TLSv1.3","sasl_method":"PLAIN"}}"#,
            ts(0)
        ),
        format!(
            r#"{{"ts":"{}","event":"submission_completed","mailbox":"alice@contoso.com","front_end":"milter","tls":"TLSv1.3","sasl_method":"LOGIN"}}"#,
            ts(1)
        ),
        format!(
            r#"{{"ts":"{}","event":"submission_completed","mailbox":"alice@contoso.com","front_end":"milter","tls":"TLSv1.3","sasl_method":"XOAUTH2"}}"#,
            ts(2)
        ),
        format!(
            r#"{{"ts":"{}","event":"submission_decision","mailbox":"alice@contoso.com","decision":"reject","reason":"basic_auth_disabled"}}"#,
            ts(3)
        ),
        // bob: refused at AUTH for Basic, at MAIL for legacy TLS (a 421: audited as defer).
        format!(
            r#"{{"ts":"{}","event":"auth_refused_by_policy","mailbox":"bob@contoso.com","front_end":"auth_policy","reason":"basic_auth_disabled"}}"#,
            ts(4)
        ),
        format!(
            r#"{{"ts":"{}","event":"submission_decision","mailbox":"bob@contoso.com","decision":"defer","reason":"legacy_tls"}}"#,
            ts(5)
        ),
        format!(
            r#"{{"ts":"{}","event":"submission_decision","mailbox":"bob@contoso.com","decision":"reject","reason":"tls_required"}}"#,
            ts(6)
        ),
        // dave (report_only): two messages that would be refused, one login at AUTH.
        format!(
            r#"{{"ts":"{}","event":"would_refuse","mailbox":"dave@fabrikam.com","front_end":"policy","reason":"basic_auth_disabled"}}"#,
            ts(7)
        ),
        format!(
            r#"{{"ts":"{}","event":"would_refuse","mailbox":"dave@fabrikam.com","front_end":"milter","reason":"legacy_tls"}}"#,
            ts(8)
        ),
        format!(
            r#"{{"ts":"{}","event":"would_refuse","mailbox":"dave@fabrikam.com","front_end":"auth_policy","reason":"basic_auth_disabled"}}"#,
            ts(9)
        ),
        format!(
            r#"{{"ts":"{}","event":"submission_completed","mailbox":"dave@fabrikam.com","front_end":"policy","sasl_method":"PLAIN"}}"#,
            ts(10)
        ),
    ];
    let log = lines.join("\n");
    let mut b = ReportBuilder::new(TimeRange::default());
    b.add_reader("mem", &mut log.as_bytes()).unwrap();
    let r = b.finish();
    let row = |s: &str| &r.rows.iter().find(|r| r.sender == s).unwrap().tally;
    let alice = row("alice@contoso.com");
    assert_eq!(
        alice.auth_protocol,
        AuthProtocolCounts {
            basic: 2,
            oauth: 1,
            other: 0,
            unknown: 0
        }
    );
    assert_eq!(alice.auth_protocol.shares(), Some([66.7, 33.3]));
    assert_eq!(alice.refusals.basic_auth_disabled, 1);
    let bob = row("bob@contoso.com");
    assert_eq!(bob.auth_refused, 1);
    assert_eq!(bob.auth_refusals.basic_auth_disabled, 1);
    assert_eq!(bob.refusals.legacy_tls, 1);
    assert_eq!(bob.refusals.tls_required, 1);
    assert_eq!(bob.auth_protocol.shares(), None);
    let dave = row("dave@fabrikam.com");
    assert_eq!(dave.would_refuse.basic_auth_disabled, 1);
    assert_eq!(dave.would_refuse.legacy_tls, 1);
    assert_eq!(dave.would_refuse.total(), 2);
    assert_eq!(dave.would_refuse_at_auth.basic_auth_disabled, 1);
    assert_eq!(r.totals.would_refuse.total(), 2);
    assert_eq!(r.totals.refusals.total(), 3);

    let mut table = Vec::new();
    table::write_table(&r, &mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    for header in [
        "Basic %",
        "OAuth %",
        "Basic auth disabled",
        "Legacy TLS",
        "TLS required",
        "Would be refused",
        "Would be refused at AUTH",
    ] {
        assert!(
            table.lines().nth(2).unwrap().contains(header),
            "{header}: {table}"
        );
    }
    assert!(
        table.contains(
            "Would be refused (report_only rules), submissions: 2 from 1 sender(s) \
             (basic_auth_disabled 1, legacy_tls 1)"
        ),
        "{table}"
    );
    assert!(
        table.contains("logins at AUTH: 1 from 1 sender(s) (basic_auth_disabled 1)"),
        "{table}"
    );
    let alice_line = table.lines().find(|l| l.starts_with("alice@")).unwrap();
    assert!(
        alice_line.contains("66.7") && alice_line.contains("33.3"),
        "{table}"
    );
    let mut json = Vec::new();
    write_json(&r, &mut json).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let alice = &json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["sender"] == "alice@contoso.com")
        .unwrap();
    assert_eq!(alice["auth_protocol"]["basic"], 2);
    assert_eq!(alice["auth_protocol_share_percent"]["oauth"], 33.3);
    assert_eq!(json["totals"]["would_refuse"]["basic_auth_disabled"], 1);
    assert_eq!(
        json["totals"]["would_refuse_at_auth"]["basic_auth_disabled"],
        1
    );
    assert_eq!(json["totals"]["auth_refusals"]["basic_auth_disabled"], 1);
    assert_eq!(json["totals"]["refusals"]["legacy_tls"], 1);

    let mut csv = Vec::new();
    write_csv(&r, &mut csv).unwrap();
    let csv = String::from_utf8(csv).unwrap();
    assert!(
        csv.lines().next().unwrap().contains(
            "Invalid login,Basic %,OAuth %,Basic auth disabled,Legacy TLS,TLS required,\
             Would be refused,Would be refused at AUTH,Message rate limit,"
        ),
        "{csv}"
    );
    // Refused at AUTH and at MAIL for the same reason: one column.
    let mut rd = csv::Reader::from_reader(csv.as_bytes());
    let header = rd.headers().unwrap().clone();
    let at = |h: &str| header.iter().position(|x| x == h).unwrap();
    let bob = rd
        .records()
        .map(Result::unwrap)
        .find(|r| &r[0] == "bob@contoso.com")
        .unwrap();
    assert_eq!(&bob[at("Basic auth disabled")], "1");
    assert_eq!(&bob[at("Legacy TLS")], "1");
    assert_eq!(&bob[at("TLS required")], "1");
    assert_eq!(&bob[at("Basic %")], "");
}
