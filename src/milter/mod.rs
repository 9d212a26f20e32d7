//! The milter front end: Postfix's `smtpd_milters` protocol (Sendmail milter, version 6).
//!
//! - [`codec`]: frames on the wire ↔ typed [`codec::Command`]s (what Postfix sends) and
//!   [`codec::Reply`]s (what we answer); no I/O, no policy.

pub mod codec;
