//! The internal date and the APPEND literal forms.

use std::time::{Duration, UNIX_EPOCH};

use imap_next::imap_types::core::LiteralMode;
use imap_next::imap_types::extensions::binary::LiteralOrLiteral8;

use super::connection::{internal_date, literal};
use super::tasks::PlainAuthzidTask;

#[test]
fn internal_date_drops_subseconds() {
    let at = UNIX_EPOCH + Duration::new(1_718_022_896, 987_654_321);
    let date = internal_date(at).unwrap();
    assert_eq!(date.as_ref().timestamp(), 1_718_022_896);
    assert_eq!(date.as_ref().timestamp_subsec_nanos(), 0);
}

#[test]
fn literals_fall_back_to_literal8_for_nul() {
    assert!(matches!(
        literal(b"a\r\nb", false, true).unwrap(),
        LiteralOrLiteral8::Literal(l) if l.mode() == LiteralMode::NonSync
    ));
    assert!(matches!(
        literal(b"a\0b", true, false).unwrap(),
        LiteralOrLiteral8::Literal8(_)
    ));
    assert!(literal(b"a\0b", false, false).is_err());
}

#[test]
fn plain_with_authzid_orders_identities() {
    let task = PlainAuthzidTask::new("alice@contoso.com", "submitgate", "s3cret", true);
    assert_eq!(
        task.line.as_deref(),
        Some(&b"alice@contoso.com\0submitgate\0s3cret"[..])
    );
}
