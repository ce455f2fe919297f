//! Publishing chat events to JetStream: dedupe id, trace context, ack before returning.

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream;
use proto::names::{self, MSG_ID_HEADER, Names};
use proto::{ChatEvent, Message, PostId, ThreadId};
use tracing::Instrument as _;

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not encode the event")]
    Encode(#[source] proto::Error),
    #[error("JetStream did not accept the event for thread {thread}")]
    Publish {
        thread: ThreadId,
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
    #[error("the bot's thread membership could not be read")]
    Membership(#[source] async_nats::jetstream::kv::EntryError),
    #[error("the bot's thread membership of {thread} could not be recorded")]
    Join {
        thread: ThreadId,
        #[source]
        source: async_nats::jetstream::kv::PutError,
    },
}

#[derive(Clone)]
pub struct Publisher {
    pub js: jetstream::Context,
    pub posts: jetstream::kv::Store,
    pub names: Names,
    pub metrics: Arc<Metrics>,
    /// Where files attached to posts are staged for the workers, who never call
    /// Mattermost: `uploads/<thread>/<file id>/<name>`.
    pub files: Option<(crate::mattermost::Client, common::store::Store)>,
}

/// What happened to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    New,
    /// Another replica (or an earlier attempt) already published this Mattermost event.
    Duplicate,
}

impl Publisher {
    /// Publishes `event` and waits for JetStream's acknowledgement.
    pub async fn publish(
        &self,
        event: &ChatEvent,
        source: &'static str,
    ) -> Result<Published, Error> {
        let payload = event.encode().map_err(Error::Encode)?;
        let subject = self.names.event_subject(&event.thread);
        let span = common::telemetry::publish_span(
            &self.names.events_destination(),
            &subject,
            event.event_id.as_str(),
        );
        span.record("thread_id", tracing::field::display(&event.thread));
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(MSG_ID_HEADER, event.event_id.as_str());
        common::telemetry::inject_span(&span, &mut headers);
        let started = Instant::now();
        let err = |source| Error::Publish {
            thread: event.thread.clone(),
            source,
        };
        let ack = async {
            self.js
                .publish_with_headers(subject, headers, payload.into())
                .await
                .map_err(err)?
                .await
                .map_err(err)
        }
        .instrument(span)
        .await?;
        self.metrics
            .publish_latency
            .observe(started.elapsed().as_secs_f64());
        if ack.duplicate {
            return Ok(Published::Duplicate);
        }
        self.metrics.event_in(source);
        Ok(Published::New)
    }

    /// Copies files attached to a post into the object store before its event is
    /// published, so the worker finds them. A file that cannot be copied is logged and
    /// left out (the message still goes through).
    pub async fn stage_files(&self, thread: &ThreadId, file_ids: &[proto::FileId]) {
        let Some((mattermost, store)) = &self.files else {
            return;
        };
        for file_id in file_ids {
            let fetched = async {
                let name = mattermost.file_name(file_id.as_str()).await?;
                let bytes = mattermost.file(file_id.as_str()).await?;
                Ok::<_, crate::mattermost::Error>((name, bytes))
            }
            .await;
            let (name, bytes) = match fetched {
                Ok(file) => file,
                Err(err) => {
                    tracing::warn!(error = %err, %file_id, "attached file could not be fetched");
                    continue;
                }
            };
            // Only the last path component, and nothing that could climb out.
            let name: String = name
                .rsplit(['/', '\\'])
                .next()
                .unwrap_or("file")
                .chars()
                .filter(|c| !c.is_control())
                .collect();
            let name = if name.is_empty() || name.starts_with('.') {
                format!("file-{file_id}")
            } else {
                name
            };
            let key = object_store::path::Path::from(format!("uploads/{thread}/{file_id}/{name}"));
            if let Err(err) = store
                .objects()
                .put(&key, object_store::PutPayload::from(bytes))
                .await
            {
                tracing::warn!(error = %err, %file_id, "attached file could not be staged");
            }
        }
    }

    /// Remembers that the bot takes part in `thread`, so later replies in it are forwarded.
    pub async fn join_thread(&self, thread: &ThreadId) -> Result<(), Error> {
        self.posts
            .put(names::joined_thread_key(thread), "1".into())
            .await
            .map(|_| ())
            .map_err(|source| Error::Join {
                thread: thread.clone(),
                source,
            })
    }

    /// Whether the bot takes part in `thread`. A read error is an error, never "no": the
    /// caller retries rather than dropping a reply in a session's thread.
    pub async fn in_thread(&self, thread: &ThreadId) -> Result<bool, Error> {
        self.posts
            .get(names::joined_thread_key(thread))
            .await
            .map(|entry| entry.is_some())
            .map_err(Error::Membership)
    }

    /// The thread a post of the bot's belongs to, if the bot wrote it.
    pub async fn thread_of_post(&self, post_id: &PostId) -> Result<Option<ThreadId>, Error> {
        let entry = self
            .posts
            .get(names::post_thread_key(post_id))
            .await
            .map_err(Error::Membership)?;
        Ok(entry.and_then(|bytes| {
            std::str::from_utf8(&bytes)
                .ok()
                .and_then(|t| ThreadId::parse(t).ok())
        }))
    }
}
