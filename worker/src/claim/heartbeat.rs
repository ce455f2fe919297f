//! Heartbeats: this worker's free slots in the `workers` bucket, read by dispatchers to
//! decide queue notices.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::ctx::Ctx;

/// Publishes this worker's free slots; dispatchers read them to decide queue notices.
pub(crate) async fn beat(ctx: &Ctx) {
    let (free, owned) = {
        let claimer = ctx.claimer.lock().expect("claimer lock");
        (claimer.free(), claimer.owned().count())
    };
    let beat = proto::kv::Heartbeat {
        free: free as u64,
        owned: owned as u64,
        max: ctx.config.worker.max_sessions as u64,
    };
    if let Err(err) = ctx
        .fabric
        .workers
        .put(ctx.id.as_str(), beat.encode().into())
        .await
    {
        tracing::warn!(error = %err, "heartbeat failed");
    }
}

pub(crate) async fn heartbeat_loop(ctx: Arc<Ctx>, stop: CancellationToken) {
    let every = (ctx.lease_ttl / 3).max(Duration::from_millis(200));
    loop {
        beat(&ctx).await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
            () = ctx.slot_freed.notified() => {}
        }
    }
}

/// Free slots across live workers, from their heartbeats.
pub(crate) async fn fleet_free_slots(ctx: &Ctx) -> u64 {
    let mut free = 0;
    let Ok(mut keys) = ctx.fabric.workers.keys().await else {
        return 0;
    };
    while let Some(Ok(key)) = keys.next().await {
        if let Ok(Some(value)) = ctx.fabric.workers.get(&key).await
            && let Some(beat) = proto::kv::Heartbeat::decode(&value)
        {
            free += beat.free;
        }
    }
    free
}
