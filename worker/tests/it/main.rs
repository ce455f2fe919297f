//! worker's integration tests.

mod agent;
mod egress;
mod layout;
mod runtime;
mod start;
