//! Putting a thread on the queue, counting what a thread has not handled, and the
//! consumers every worker shares.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use proto::ThreadId;
use proto::names::MSG_ID_HEADER;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::ctx::Ctx;

/// Puts `thread` on the queue for a worker with a free slot; `dedupe` is its
/// `Nats-Msg-Id`, so concurrent dispatchers queue it once.
pub(crate) async fn enqueue(
    ctx: &Ctx,
    thread: &ThreadId,
    dedupe: &str,
) -> Result<jetstream::publish::PublishAck, async_nats::jetstream::context::PublishError> {
    let subject = ctx.names.queue_subject(thread);
    let span = common::telemetry::publish_span(&ctx.names.queue_destination(), &subject, dedupe);
    span.record("thread_id", tracing::field::display(thread));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(MSG_ID_HEADER, dedupe);
    common::telemetry::inject_span(&span, &mut headers);
    async {
        ctx.fabric
            .js
            .publish_with_headers(subject, headers, bytes::Bytes::new())
            .await?
            .await
    }
    .instrument(span)
    .await
}

/// Queued threads no worker has taken yet: the claim consumer's undelivered messages. A
/// thread being claimed (delivered, not yet acknowledged) is not waiting, nor is one a
/// worker with a free slot is about to pull (its pull request takes it at once), so this
/// counts only threads for which the whole fleet is full. 0 when unknown.
pub(crate) async fn threads_waiting(ctx: &Ctx) -> u64 {
    queued_threads(ctx).await.unwrap_or(0)
}

/// [`threads_waiting`], `None` when NATS does not tell.
pub(crate) async fn queued_threads(ctx: &Ctx) -> Option<u64> {
    let mut consumer: jetstream::consumer::Consumer<pull::Config> = ctx
        .fabric
        .queue
        .get_consumer(&ctx.names.claim_consumer())
        .await
        .ok()?;
    consumer.info().await.ok().map(|i| i.num_pending)
}

/// Events of `thread` not handled yet: undelivered, or delivered and unacknowledged.
pub(crate) async fn pending_events(ctx: &Ctx, thread: &ThreadId) -> u64 {
    let consumer: Result<jetstream::consumer::Consumer<pull::Config>, _> = ctx
        .fabric
        .events
        .get_consumer(&ctx.names.thread_consumer(thread))
        .await;
    match consumer {
        Ok(mut consumer) => consumer
            .info()
            .await
            .map(|i| i.num_pending + i.num_ack_pending as u64)
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// Opens (creating if absent) a consumer shared by all workers, retrying until `stop`.
pub(crate) async fn shared_consumer(
    stream: &jetstream::stream::Stream,
    name: String,
    stop: &CancellationToken,
) -> Option<jetstream::consumer::Consumer<pull::Config>> {
    loop {
        let config = common::nats::shared_pull_config(name.clone());
        match stream.get_or_create_consumer(&name, config).await {
            Ok(consumer) => return Some(consumer),
            Err(err) => {
                tracing::warn!(error = %err, consumer = %name, "consumer unavailable; retrying");
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}
