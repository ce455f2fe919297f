//! worker's integration tests.

mod agent;
mod egress;
mod layout;
mod repo;
mod runtime;
mod start;
