//! The thread's consumer over its lifetime: opened for the lease holder, retired when
//! the thread goes idle (its position recorded), and the thread released or re-queued.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use proto::{ChatEvent, Message};

use super::*;
use crate::render::{self, Header, Status};

/// What became of a thread's consumer when the thread was released.
pub(super) enum Retired {
    /// Deleted, after recording that the events up to this stream sequence were read.
    After(u64),
    /// Kept for the next owner: it holds this many unread or unacknowledged events.
    Kept(u64),
    /// Absent or unreachable: counted again once the lease is gone.
    Unknown,
}

/// How long a thread whose events could not be read waits before it is queued again.
const RETRY_UNREADABLE: Duration = Duration::from_secs(5);

impl State {
    /// Opens this thread's event consumer (read only by the lease holder, so by us).
    pub(super) async fn open_events(&self) -> Result<pull::Stream, Error> {
        let names = &self.ctx.names;
        let consumer_name = names.thread_consumer(&self.thread);
        let config = |deliver_policy| pull::Config {
            durable_name: Some(consumer_name.clone()),
            filter_subject: names.event_subject(&self.thread),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 256,
            inactive_threshold: Duration::from_secs(7 * 24 * 3600),
            deliver_policy,
            ..Default::default()
        };
        let events = &self.ctx.fabric.events;
        let mut consumer = match events.get_consumer(&consumer_name).await {
            Ok(consumer) => Ok(consumer),
            Err(_) => {
                // No consumer: the thread's first owner, or it went idle and its consumer
                // was retired. Read on after where that one stopped; without a record, from
                // the start (events handled before are skipped by their inbound record).
                let deliver = match self.ctx.records.events_after(self.thread.as_str()).await {
                    Ok(Some(after)) => jetstream::consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: after + 1,
                    },
                    _ => jetstream::consumer::DeliverPolicy::All,
                };
                events
                    .get_or_create_consumer(&consumer_name, config(deliver))
                    .await
            }
        };
        // Deliveries still pending from a previous owner (it died mid-turn) would only come
        // back after the ack wait. We hold the lease, so nobody else reads this consumer:
        // recreate it from the ack floor, and they come at once (handled ones are skipped
        // by the inbound record).
        if let Ok(existing) = consumer.as_mut()
            && let Ok(info) = existing.info().await
            && info.num_ack_pending > 0
        {
            let start = info.ack_floor.stream_sequence + 1;
            tracing::info!(
                pending = info.num_ack_pending,
                start,
                "taking over in-flight events"
            );
            let _ = events.delete_consumer(&consumer_name).await;
            consumer = events
                .create_consumer(config(
                    jetstream::consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: start,
                    },
                ))
                .await;
        }
        let consumer = match consumer {
            Ok(consumer) => consumer,
            Err(err) => return Err(Error::consumer(err)),
        };
        consumer.messages().await.map_err(Error::consumer)
    }

    /// Deletes the thread's consumer if it holds nothing unread or unacknowledged, after
    /// recording where it stopped: idle threads hold no consumer (nats-server bounds them
    /// per stream, and each costs the server).
    pub(super) async fn retire_consumer(&self) -> Retired {
        let name = self.ctx.names.thread_consumer(&self.thread);
        let events = &self.ctx.fabric.events;
        let Ok(mut consumer) = events.get_consumer::<pull::Config>(&name).await else {
            return Retired::Unknown;
        };
        let Ok(info) = consumer.info().await else {
            return Retired::Unknown;
        };
        let pending = info.num_pending + info.num_ack_pending as u64;
        if pending > 0 {
            return Retired::Kept(pending); // the next owner reads on from it
        }
        let after = info.delivered.stream_sequence;
        if self
            .ctx
            .records
            .set_events_after(self.thread.as_str(), after)
            .await
            .is_err()
        {
            return Retired::Unknown;
        }
        match events.delete_consumer(&name).await {
            Ok(_) => Retired::After(after),
            Err(err) => {
                tracing::warn!(error = %err, "could not delete the thread's consumer");
                Retired::Unknown
            }
        }
    }

    /// The thread's newest event in the stream.
    pub(super) async fn last_event(&self) -> Option<jetstream::message::StreamMessage> {
        let subject = self.ctx.names.event_subject(&self.thread);
        self.ctx
            .fabric
            .events
            .get_last_raw_message_by_subject(&subject)
            .await
            .ok()
    }

    /// The thread's events could not be read: say so in the thread (once per event, by its
    /// `Nats-Msg-Id`) and queue the thread again after [`RETRY_UNREADABLE`], if an event is
    /// still to be read.
    pub(super) async fn retry_unreadable(&self, reason: &str) {
        tracing::error!(
            reason,
            "the thread's events could not be read; retrying later"
        );
        let Some(last) = self.last_event().await else {
            return;
        };
        let read_up_to = self
            .ctx
            .records
            .events_after(self.thread.as_str())
            .await
            .ok()
            .flatten()
            .unwrap_or(0);
        if last.sequence <= read_up_to {
            return;
        }
        if let Ok(event) = ChatEvent::decode(&last.payload) {
            let _ = crate::replies::notice(
                &self.ctx.fabric.js,
                &self.ctx.names,
                &self.thread,
                &event.channel,
                &format!("unreadable-{}", event.event_id),
                render::unreadable(RETRY_UNREADABLE.as_secs()),
            )
            .await;
        }
        let (ctx, thread) = (self.ctx.clone(), self.thread.clone());
        tokio::spawn(async move {
            tokio::time::sleep(RETRY_UNREADABLE).await;
            let dedupe = format!("retry:{thread}:{}", common::now_ms());
            if let Err(err) = crate::claim::queue::enqueue(&ctx, &thread, &dedupe).await {
                tracing::error!(%thread, error = %err, "could not re-queue the thread");
            }
        });
    }

    /// Releases the thread: checkpointed session stopped, record updated, lease deleted.
    pub(super) async fn release(&mut self, exit: &ActorExit) {
        self.save_before_release().await;
        if let Some(mut live) = self.live.take() {
            if let Some(session) = live.session.take()
                && let Err(err) = session.stop().await
            {
                tracing::warn!(error = %err, "session did not stop cleanly");
            }
            let status = match exit {
                ActorExit::Idle => Status::Idle,
                _ => Status::Stopped,
            };
            live.status = status;
            let text = render::header(&Header {
                started_by: &live.row.started_by_name,
                participants: &live.participants,
                permission_mode: &live.row.permission_mode,
                worker: self.ctx.id.as_str(),
                status,
                repo: live
                    .repo
                    .as_ref()
                    .map(|r| (r.repo.as_str(), r.branch.as_str())),
            });
            let header = live.header.clone();
            let _ = live.replies.update(&header, text, None, false).await;
            let _ = self
                .ctx
                .records
                .set_owner(self.thread.as_str(), None, "idle")
                .await;
        }
        // Still under the lease, so nobody else reads the consumer.
        let retired = self.retire_consumer().await;
        let _ = self.ctx.fabric.leases.delete(self.thread.as_str()).await;
        // Events that arrived but were not handled (a drain, an eviction racing a new
        // message, one that came while the lease was still ours) must not be stranded:
        // queue the thread for whichever worker is free.
        if let ActorExit::Failed(reason) = exit {
            self.retry_unreadable(reason).await;
            return;
        }
        let pending = match retired {
            Retired::After(after) => self
                .last_event()
                .await
                .is_some_and(|last| last.sequence > after)
                .into(),
            Retired::Kept(pending) => pending,
            Retired::Unknown => crate::claim::queue::pending_events(&self.ctx, &self.thread).await,
        };
        if pending > 0 {
            let dedupe = format!("requeue:{}:{}", self.thread, common::now_ms());
            match crate::claim::queue::enqueue(&self.ctx, &self.thread, &dedupe).await {
                Ok(_) => {
                    tracing::info!(pending, "released with unhandled events; thread re-queued")
                }
                Err(err) => tracing::error!(error = %err, "could not re-queue the thread"),
            }
        }
    }
}
