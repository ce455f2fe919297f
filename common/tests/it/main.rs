//! common's integration tests. The `services` modules use the real local services
//! (`deploy/local/services up`).

mod config;
mod lease;
mod nats;
mod pg;
mod store;
mod telemetry;
mod tokens;
