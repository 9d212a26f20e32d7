//! The milter front end: Postfix's `smtpd_milters` protocol (Sendmail milter, version 6).
//! One milter connection is one SMTP session, so it counts sessions exactly, answers with our
//! reply texts verbatim, and, seeing the message, captures the Sent Items copy.
//!
//! - [`codec`]: frames on the wire ↔ typed [`codec::Command`]s (what Postfix sends) and
//!   [`codec::Reply`]s (what we answer); no I/O, no policy.
//! - [`session`]: the state table, negotiation, the decision at MAIL and the capture.
//! - [`server`]: accept loops and one task per connection (timeouts, frame cap, lease release).

pub mod codec;
pub mod server;
pub mod session;
