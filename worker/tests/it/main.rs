//! worker's integration tests.

mod agent;
mod layout;
mod runtime;
