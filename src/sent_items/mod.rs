//! Sent Items copies: the milter captures each authenticated submission into the durable
//! [`spool`], and the delivery [`worker`]s store it into the sender's Sent Items folder through
//! a [`store`] (Maildir or IMAP). This module makes no policy decisions: what to copy, and
//! where, arrives decided.

pub mod spool;
pub mod store;
pub mod worker;
