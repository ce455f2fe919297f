//! Plumbing every ccfleet process shares: typed configuration, telemetry, and clients for
//! NATS JetStream, PostgreSQL and the object store.
//!
//! Invariant: no business logic lives here. This crate knows how to connect, create
//! streams, run migrations, keep leases and carry trace context; what the fleet does with
//! them lives in `gateway` and `worker`.

pub mod cli;
pub mod config;
pub mod health;
pub mod lease;
pub mod nats;
pub mod pg;
pub mod signals;
pub mod signing;
pub mod store;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod testsupport;

/// Exit code for a configuration error (`EX_CONFIG` would be 78; we follow linkerd and
/// use `EX_USAGE`, 64, as the brief asks).
pub const EXIT_CONFIG: i32 = 64;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An error and all its causes on one line, "what failed: why: why", for logs and notices
/// (a log line that shows only the outermost error hides the reason).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their source in their own message.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
