//! worker's integration tests.

mod agent;
mod runtime;
