//! Claiming threads: the sans-IO decisions ([`state`]); the I/O shell lives in
//! [`crate::fleet`] (dispatch, claim and janitor loops) and [`crate::session`] (leases).

pub mod state;
