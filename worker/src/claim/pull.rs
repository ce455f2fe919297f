//! Claiming: while it has a free slot, the worker pulls the next queued thread, takes its
//! lease (create-if-absent) and hands it to the worker loop to start its actor.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use async_nats::jetstream::kv::CreateErrorKind;
use async_nats::jetstream::{self};
use futures::StreamExt;
use proto::ThreadId;
use tokio_util::sync::CancellationToken;

use super::heartbeat::beat;
use super::queue::{shared_consumer, threads_waiting};
use super::state::{LeaseResult, OnLease, OnQueued};
use crate::ctx::Ctx;

pub(crate) struct ThreadAssignment {
    pub(crate) thread: ThreadId,
    pub(crate) revision: u64,
}

pub(crate) async fn claim_loop(
    ctx: Arc<Ctx>,
    stop: CancellationToken,
    spawn: tokio::sync::mpsc::UnboundedSender<ThreadAssignment>,
) {
    let Some(consumer) =
        shared_consumer(&ctx.fabric.queue, ctx.names.claim_consumer(), &stop).await
    else {
        return;
    };
    let mut waiting_before = false;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let wants = ctx.claimer.lock().expect("claimer lock").wants_work();
        if wants {
            waiting_before = false;
        }
        if !wants {
            // Full: if threads have been waiting for a slot anywhere in the fleet (twice in
            // a row, half a second apart: a worker with a free slot would have taken them),
            // ask an idle session of ours to make room. Counting the stream's messages
            // instead would count the thread this worker is claiming right now, and put
            // its own next idle session to sleep for nothing.
            let draining = ctx.claimer.lock().expect("claimer lock").is_draining();
            if !draining && threads_waiting(&ctx).await > 0 {
                if waiting_before {
                    ctx.evict_idle.notify_one();
                }
                waiting_before = true;
            } else {
                waiting_before = false;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = ctx.slot_freed.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        }
        let batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_millis(500))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(err) => {
                tracing::warn!(error = %err, "queue fetch failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let message = tokio::select! {
            () = stop.cancelled() => return,
            next = batch.next() => match next {
                Some(Ok(message)) => message,
                _ => continue,
            },
        };
        // The subject's last token is a thread id only if it is one (`proto::ids`).
        let Some(thread) = message
            .subject
            .rsplit('.')
            .next()
            .and_then(|t| ThreadId::parse(t).ok())
        else {
            let _ = message.ack().await;
            continue;
        };
        let span = common::telemetry::process_span(
            &ctx.names.queue_destination(),
            &message.subject,
            common::telemetry::message_id(message.headers.as_ref()),
            &ctx.names.claim_consumer(),
        );
        span.record("thread_id", tracing::field::display(&thread));
        common::telemetry::follow(&span, message.headers.as_ref());
        let claimed = async {
            let decision = ctx.claimer.lock().expect("claimer lock").on_queued(&thread);
            match decision {
                OnQueued::AlreadyOurs => {
                    let _ = message.ack().await;
                }
                OnQueued::GiveBack => {
                    let _ = message
                        .ack_with(jetstream::AckKind::Nak(Some(Duration::from_millis(200))))
                        .await;
                }
                OnQueued::TryLease => {
                    let (result, revision) = take_lease(&ctx, &thread).await;
                    let outcome = ctx
                        .claimer
                        .lock()
                        .expect("claimer lock")
                        .on_lease(&thread, result);
                    // Free slots are published before the queue item goes, so a dispatcher
                    // never sees a slot that is already taken.
                    beat(&ctx).await;
                    if outcome == OnLease::Start && revision > 0 {
                        tracing::info!(%thread, "claimed thread");
                        let waited = message.info().ok().and_then(|info| {
                            let published = info.published.unix_timestamp_nanos();
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .ok()?
                                .as_nanos() as i128;
                            u64::try_from(now - published)
                                .ok()
                                .map(Duration::from_nanos)
                        });
                        if let Some(waited) = waited {
                            ctx.stats.queue_wait.observe(waited.as_secs_f64());
                        }
                        if spawn
                            .send(ThreadAssignment {
                                thread: thread.clone(),
                                revision,
                            })
                            .is_err()
                        {
                            return false;
                        }
                    }
                    if outcome == OnLease::Retry {
                        let _ = message
                            .ack_with(jetstream::AckKind::Nak(Some(LEASE_RETRY)))
                            .await;
                    } else {
                        let _ = message.ack().await;
                    }
                }
            }
            true
        }
        .instrument(span)
        .await;
        if !claimed {
            return;
        }
    }
}

/// How long a queued thread whose lease could not be settled waits before it is tried again.
const LEASE_RETRY: Duration = Duration::from_secs(1);

/// Creates the thread's lease, or finds who holds it. Any failure to tell is
/// [`LeaseResult::Unavailable`], never a guess at an owner.
async fn take_lease(ctx: &Ctx, thread: &ThreadId) -> (LeaseResult, u64) {
    let leases = &ctx.fabric.leases;
    match leases
        .create(thread.as_str(), ctx.id.to_string().into())
        .await
    {
        Ok(revision) => (LeaseResult::Acquired, revision),
        Err(err) if err.kind() == CreateErrorKind::AlreadyExists => {
            match leases.get(thread.as_str()).await {
                Ok(Some(owner)) => (LeaseResult::HeldBy(proto::kv::lease_holder(&owner)), 0),
                // Released between our create and our read: try again.
                Ok(None) => (LeaseResult::Unavailable, 0),
                Err(err) => {
                    tracing::warn!(%thread, error = %common::error_chain(&err), "could not read a thread's lease; trying again");
                    (LeaseResult::Unavailable, 0)
                }
            }
        }
        Err(err) => {
            tracing::warn!(%thread, error = %common::error_chain(&err), "could not take a thread's lease; trying again");
            (LeaseResult::Unavailable, 0)
        }
    }
}
