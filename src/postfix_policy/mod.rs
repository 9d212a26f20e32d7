//! The Postfix policy delegation front end (`check_policy_service`): [`codec`] turns the
//! `name=value` protocol into typed requests and replies, [`server`] runs the listeners and one
//! task per Postfix connection, applying the policy and the in-flight-submission leases.

pub mod codec;
pub mod server;
