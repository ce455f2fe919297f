//! Dispatch: every worker reads the shared `dispatch` consumer and routes each event —
//! left to the owner of a leased thread, queued when it starts or resumes a session, or kept
//! as context — and tells the author their queue position when threads wait.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use proto::v1::EventBody;
use proto::{ChatEvent, Message};
use tokio_util::sync::CancellationToken;

use super::Error;
use super::heartbeat::fleet_free_slots;
use super::queue::{enqueue, shared_consumer};
use super::state::{Route, queue_notice, route};
use crate::ctx::Ctx;
use crate::{render, replies};

/// Whether an event may start (or resume) a session.
pub(crate) fn starts_session(event: &ChatEvent) -> bool {
    match &event.body {
        EventBody::Message(m) => m.mentions_bot || m.channel_type == proto::v1::ChannelType::Direct,
        // Commands that only look at or stop a session never start one; the others (invite,
        // kick, permissions) reach the thread's actor, which answers without a session.
        EventBody::SlashCommand(c) => match c.text.split_whitespace().next() {
            None => false,
            Some(word) => !proto::commands::verb(word).is_some_and(|v| {
                matches!(
                    v.action,
                    proto::commands::Action::Help
                        | proto::commands::Action::Status
                        | proto::commands::Action::Stop
                )
            }),
        },
        _ => false,
    }
}

/// How often the dispatcher tries an event before it gives up on it with a notice in its
/// thread (the same bound as a thread's own events).
const MAX_DISPATCH: i64 = crate::session::MAX_DELIVER;

/// How long a message of a newer wire version waits before it is offered again: an
/// upgraded worker will take it (rolling upgrade).
const NEWER_VERSION_DELAY: Duration = Duration::from_secs(5);

/// Reads the dispatch consumer until `stop`. When its message stream ends or cannot be
/// opened, it is opened again with backoff: dispatching never stops silently.
pub(crate) async fn dispatch_loop(ctx: Arc<Ctx>, stop: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let Some(consumer) =
            shared_consumer(&ctx.fabric.events, ctx.names.dispatch_consumer(), &stop).await
        else {
            return;
        };
        match consumer.messages().await {
            Ok(messages) => {
                ctx.health.set_down("dispatch", false);
                if dispatch_messages(&ctx, messages, &stop).await {
                    failures = 0;
                }
            }
            Err(err) => {
                tracing::error!(error = %common::error_chain(&err), "dispatch stream could not be opened");
            }
        }
        if stop.is_cancelled() {
            return;
        }
        ctx.health.set_down("dispatch", true);
        failures += 1;
        let wait = crate::session::backoff(i64::from(failures.min(8)));
        tracing::warn!(?wait, "dispatch stream ended; opening it again");
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Dispatches messages until the stream ends (returns whether any was read) or `stop`.
async fn dispatch_messages(
    ctx: &Ctx,
    mut messages: pull::Stream,
    stop: &CancellationToken,
) -> bool {
    let mut read_any = false;
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return read_any,
            next = messages.next() => match next {
                Some(Ok(message)) => message,
                Some(Err(err)) => {
                    tracing::warn!(error = %common::error_chain(&err), "dispatch hiccup");
                    continue;
                }
                None => return read_any,
            },
        };
        read_any = true;
        let delivered = message.info().map_or(1, |info| info.delivered);
        let event = match ChatEvent::decode(&message.payload) {
            Ok(event) => event,
            Err(proto::Error::UnsupportedVersion { version, .. }) if version > proto::CURRENT => {
                tracing::warn!(
                    version,
                    "chat event of a newer wire version; leaving it for an upgraded worker"
                );
                let _ = message
                    .ack_with(jetstream::AckKind::Nak(Some(NEWER_VERSION_DELAY)))
                    .await;
                continue;
            }
            Err(err) => {
                tracing::error!(error = %common::error_chain(&err), "undecodable chat event dropped");
                let _ = message.ack_with(jetstream::AckKind::Term).await;
                continue;
            }
        };
        // The thread names the queue subject, the thread consumer and the lease key: a
        // thread id that is not one (never written by a gateway) goes no further.
        if let Err(err) = event.thread.check() {
            tracing::error!(error = %err, "chat event with an unusable thread id dropped");
            let _ = message.ack_with(jetstream::AckKind::Term).await;
            continue;
        }
        let span = common::telemetry::process_span(
            &ctx.names.events_destination(),
            &message.subject,
            common::telemetry::message_id(message.headers.as_ref()),
            &ctx.names.dispatch_consumer(),
        );
        span.record("thread_id", tracing::field::display(&event.thread));
        common::telemetry::follow(&span, message.headers.as_ref());
        let result = tracing::Instrument::instrument(dispatch_one(ctx, &event), span).await;
        match result {
            Ok(()) => {
                let _ = message.ack().await;
            }
            Err(err) if delivered < MAX_DISPATCH => {
                tracing::warn!(error = %common::error_chain(&err), delivered, "dispatch failed; will retry");
                let _ = message
                    .ack_with(jetstream::AckKind::Nak(Some(crate::session::backoff(
                        delivered,
                    ))))
                    .await;
            }
            Err(err) => {
                let reason = common::error_chain(&err);
                tracing::error!(error = %reason, delivered, "dispatch failed; telling the thread");
                let told = replies::notice(
                    &ctx.fabric.js,
                    &ctx.names,
                    &event.thread,
                    &event.channel,
                    &format!("failed-{}", event.event_id),
                    render::event_failed(&reason, true),
                )
                .await;
                let ack = if told.is_ok() {
                    jetstream::AckKind::Term
                } else {
                    jetstream::AckKind::Nak(Some(crate::session::backoff(delivered)))
                };
                let _ = message.ack_with(ack).await;
            }
        }
    }
}

pub(crate) async fn dispatch_one(ctx: &Ctx, event: &ChatEvent) -> Result<(), Error> {
    let lease = ctx
        .fabric
        .leases
        .get(event.thread.as_str())
        .await
        .map_err(Error::Lease)?
        .map(|v| proto::kv::lease_holder(&v));
    let starts = starts_session(event);
    let has_session = if lease.is_none() && !starts {
        ctx.records.has_session(event.thread.as_str()).await?
    } else {
        false
    };
    match route(lease.as_ref(), starts, has_session) {
        Route::Owned => Ok(()),
        Route::Ignore => {
            if let EventBody::SlashCommand(command) = &event.body {
                // `/claude status` or `stop` in a thread without a session.
                let verb = command.text.split_whitespace().next().unwrap_or("");
                replies::notice(
                    &ctx.fabric.js,
                    &ctx.names,
                    &event.thread,
                    &event.channel,
                    &event.event_id,
                    format!("There is no Claude Code session in this thread, so there is nothing to {verb}."),
                )
                .await?;
            }
            Ok(())
        }
        Route::Enqueue => {
            let ack = enqueue(ctx, &event.thread, &format!("queue:{}", event.event_id))
                .await
                .map_err(Error::Queue)?;
            if ack.duplicate {
                return Ok(());
            }
            // Waiting = queued threads not yet delivered to a claimer (a delivered one has
            // its slot reserved, and the heartbeat already counts it).
            let waiting = match ctx
                .fabric
                .queue
                .get_consumer::<pull::Config>(&ctx.names.claim_consumer())
                .await
            {
                Ok(mut consumer) => consumer.info().await.map(|i| i.num_pending).unwrap_or(1),
                Err(_) => 1,
            };
            // This worker's own free slots are part of the fleet's (and fresher than its
            // heartbeat): when they cover the queue, no need to read everyone's.
            let own = ctx.claimer.lock().expect("claimer lock").free() as u64;
            let free = if own >= waiting {
                own
            } else {
                fleet_free_slots(ctx).await
            };
            tracing::debug!(waiting, free, "thread queued");
            if let Some(position) = queue_notice(waiting, free) {
                replies::notice(
                    &ctx.fabric.js,
                    &ctx.names,
                    &event.thread,
                    &event.channel,
                    &format!("queued-{}", event.event_id),
                    render::queued(position),
                )
                .await?;
            }
            Ok(())
        }
    }
}
