//! Keeps the gateway's background loops (the WebSocket listener, egress) running: a loop
//! that fails, panics or ends before shutdown is logged with its whole error chain, marked
//! down in [`Health`] (so `/readyz` turns red, naming it) and started again after a
//! doubling backoff (capped). It is marked up again when it runs again: by the loop itself
//! when it can tell (egress: once it leads or stands by behind another leader), else when
//! it is started again.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::health::Health;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

/// The first wait before a failed loop is started again; it doubles up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A loop that ran this long before failing starts over from [`BASE_BACKOFF`].
const STABLE: Duration = Duration::from_secs(60);

/// The wait before restart number `failures` (1, 2, …) in a row.
pub fn backoff(failures: u32) -> Duration {
    BASE_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// How a supervised loop is marked up again after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Up {
    /// When it is started again.
    OnStart,
    /// The loop marks itself up (with [`Health::set_up`]) once it runs as intended.
    ByItself,
}

/// Runs `start()` until `shutdown`, starting it again whenever it stops on its own.
pub async fn supervise<F, Fut, E>(
    name: &'static str,
    up: Up,
    health: Arc<Health>,
    shutdown: CancellationToken,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::error::Error + 'static,
{
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        if up == Up::OnStart {
            health.set_up(name);
        }
        let outcome = AssertUnwindSafe(start()).catch_unwind().await;
        if shutdown.is_cancelled() {
            return;
        }
        let reason = match outcome {
            Ok(Ok(())) => "ended unexpectedly".to_owned(),
            Ok(Err(err)) => common::error_chain(&err),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                format!("panicked: {message}")
            }
        };
        if started.elapsed() >= STABLE {
            failures = 0;
        }
        failures += 1;
        let wait = backoff(failures);
        tracing::error!(background_loop = name, error = %reason, ?wait, "background loop stopped; starting it again");
        health.set_down(name);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(7), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
