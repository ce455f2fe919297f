//! The janitor: threads recorded as owned whose lease lapsed (their worker died) are
//! re-queued when they hold unhandled events, or marked orphaned.

use std::sync::Arc;
use std::time::Duration;

use proto::ThreadId;
use tokio_util::sync::CancellationToken;

use super::Error;
use super::queue::{enqueue, pending_events};
use crate::ctx::Ctx;

pub(crate) async fn janitor_loop(ctx: Arc<Ctx>, stop: CancellationToken) {
    let every = (ctx.lease_ttl / 2).max(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(err) = janitor_pass(&ctx).await {
            tracing::warn!(error = %err, "janitor pass failed");
        }
    }
}

/// Threads recorded as owned whose lease lapsed: their owner died. Re-queue those with
/// undelivered or unacknowledged events (a turn was cut); mark the idle ones so the next
/// message resumes them with a notice.
pub(crate) async fn janitor_pass(ctx: &Ctx) -> Result<(), Error> {
    for (thread, owner) in ctx.records.owned_sessions().await? {
        let thread = ThreadId::new(thread);
        if owner == ctx.id.as_str() && ctx.claimer.lock().expect("claimer lock").owns(&thread) {
            continue;
        }
        if ctx
            .fabric
            .leases
            .get(thread.as_str())
            .await
            .map_err(Error::Lease)?
            .is_some()
        {
            continue;
        }
        if pending_events(ctx, &thread).await > 0 {
            tracing::info!(%thread, dead_owner = %owner, "re-queueing a thread whose worker died");
            enqueue(ctx, &thread, &format!("requeue:{thread}:{owner}"))
                .await
                .map_err(Error::Queue)?;
        } else {
            ctx.records
                .set_owner(thread.as_str(), None, &format!("orphaned:{owner}"))
                .await?;
        }
    }
    Ok(())
}
