//! Sent Items copies: the milter captures each authenticated submission into the durable
//! [`spool`], and delivery workers (a later module) store it into the sender's Sent Items
//! folder. This module makes no policy decisions: what to copy, and where, arrives decided.

pub mod spool;
