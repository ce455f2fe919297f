//! Publishing a session's reply operations: one strictly increasing `seq` per session,
//! continued across workers (read back from the replies stream when a worker takes a
//! thread over), each publish deduplicated by `Nats-Msg-Id` = `reply:<session>:<seq>`.

use async_nats::jetstream;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use proto::names::{MSG_ID_HEADER, Names, applied_seq_key};
use proto::v1::{Op, ReplyOp};
use proto::{ChannelId, LocalRef, Message, SessionId, ThreadId, UserId};
use tracing::Instrument as _;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not encode reply operation")]
    Encode(#[source] proto::Error),
    #[error("could not read the last reply operation of thread {thread}")]
    Resume {
        thread: ThreadId,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("JetStream did not accept reply operation {seq} of session {session}")]
    Publish {
        session: SessionId,
        seq: u64,
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
}

impl Error {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Publish { .. } | Error::Resume { .. })
    }
}

/// Writes one session's reply operations.
pub struct Replies {
    js: jetstream::Context,
    subject: String,
    /// `subject` without the thread, for span names.
    destination: String,
    thread: ThreadId,
    channel: ChannelId,
    session: SessionId,
    next_seq: u64,
}

impl Replies {
    /// Continues the session's sequence after the last operation on the thread's subject,
    /// or after the last one the gateway applied when that is later (the stream's copy
    /// expires with the events retention; the gateway's record does not). A failed look-up
    /// is an error, never "nothing published yet": starting again at 1 would have every
    /// new operation taken for one already applied.
    pub async fn resume(
        fabric: &common::nats::Fabric,
        names: &Names,
        thread: ThreadId,
        channel: ChannelId,
        session: SessionId,
    ) -> Result<Self, Error> {
        let subject = names.reply_subject(&thread);
        let published = match fabric
            .replies
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) => last_seq_of(&message, &session),
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
            Err(source) => {
                return Err(Error::Resume {
                    thread,
                    source: Box::new(source),
                });
            }
        };
        let applied = match fabric.posts.get(applied_seq_key(&session)).await {
            Ok(Some(value)) => std::str::from_utf8(&value)
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .unwrap_or(0),
            Ok(None) => 0,
            Err(source) => {
                return Err(Error::Resume {
                    thread,
                    source: Box::new(source),
                });
            }
        };
        let last = published.max(applied);
        let js = fabric.js.clone();
        Ok(Self {
            js,
            subject,
            destination: names.replies_destination(),
            thread,
            channel,
            session,
            next_seq: last + 1,
        })
    }

    pub fn session(&self) -> &SessionId {
        &self.session
    }

    /// The local reference the next create will get (if nothing else is published first).
    pub fn next_ref(&self) -> LocalRef {
        LocalRef {
            session: self.session.clone(),
            seq: u32::try_from(self.next_seq).unwrap_or(u32::MAX),
        }
    }

    pub async fn publish(&mut self, op: Op) -> Result<u64, Error> {
        let seq = self.next_seq;
        let reply = ReplyOp {
            thread: self.thread.clone(),
            channel: self.channel.clone(),
            session: self.session.clone(),
            seq,
            created_at_ms: common::now_ms(),
            op,
        };
        let payload = reply.encode().map_err(Error::Encode)?;
        let message_id = format!("reply:{}:{seq}", self.session);
        let span = common::telemetry::publish_span(&self.destination, &self.subject, &message_id);
        span.record("thread_id", tracing::field::display(&self.thread));
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(MSG_ID_HEADER, message_id.as_str());
        common::telemetry::inject_span(&span, &mut headers);
        let err = |source| Error::Publish {
            session: self.session.clone(),
            seq,
            source,
        };
        async {
            self.js
                .publish_with_headers(self.subject.clone(), headers, payload.into())
                .await
                .map_err(err)?
                .await
                .map_err(err)
        }
        .instrument(span)
        .await?;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Creates a post; returns the reference to update it by.
    pub async fn create(
        &mut self,
        message: String,
        props_json: Option<String>,
    ) -> Result<LocalRef, Error> {
        let local = self.next_ref();
        self.publish(Op::CreatePost {
            local: local.clone(),
            message,
            props_json,
        })
        .await?;
        Ok(local)
    }

    pub async fn update(
        &mut self,
        local: &LocalRef,
        message: String,
        props_json: Option<String>,
        streaming: bool,
    ) -> Result<(), Error> {
        self.publish(Op::UpdatePost {
            local: local.clone(),
            message,
            props_json,
            streaming,
        })
        .await
        .map(|_| ())
    }

    pub async fn ephemeral(&mut self, user: &UserId, message: String) -> Result<(), Error> {
        self.publish(Op::Ephemeral {
            user: user.clone(),
            message,
        })
        .await
        .map(|_| ())
    }
}

/// Publishes a one-off notice about a thread (its own one-operation session).
pub async fn notice(
    js: &jetstream::Context,
    names: &Names,
    thread: &ThreadId,
    channel: &ChannelId,
    key: &str,
    message: String,
) -> Result<(), Error> {
    let session = notice_session(key);
    let op = Op::CreatePost {
        local: LocalRef {
            session: session.clone(),
            seq: 1,
        },
        message,
        props_json: None,
    };
    let reply = ReplyOp {
        thread: thread.clone(),
        channel: channel.clone(),
        session: session.clone(),
        seq: 1,
        created_at_ms: common::now_ms(),
        op,
    };
    let payload = reply.encode().map_err(Error::Encode)?;
    let message_id = format!("reply:{session}:1");
    let subject = names.notice_subject(thread);
    let span = common::telemetry::publish_span(&names.replies_destination(), &subject, &message_id);
    span.record("thread_id", tracing::field::display(thread));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(MSG_ID_HEADER, message_id.as_str());
    common::telemetry::inject_span(&span, &mut headers);
    let err = |source| Error::Publish {
        session: session.clone(),
        seq: 1,
        source,
    };
    async {
        js.publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(err)?
            .await
            .map_err(err)
    }
    .instrument(span)
    .await?;
    Ok(())
}

/// The session id of a notice: only characters valid in KV keys and subjects.
fn notice_session(key: &str) -> SessionId {
    let clean: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    SessionId::new(format!("notice-{clean}"))
}

/// The `seq` of `message` if it belongs to `session`, else 0 (a new session starts at 1).
/// Read from its `Nats-Msg-Id` (`reply:<session>:<seq>`), which every version writes, so a
/// payload of a wire version this process cannot decode still continues the sequence.
fn last_seq_of(
    message: &async_nats::jetstream::message::StreamMessage,
    session: &SessionId,
) -> u64 {
    let from_id = message
        .headers
        .get(MSG_ID_HEADER)
        .and_then(|id| parse_msg_id(id.as_str()));
    match from_id {
        Some((of, seq)) => {
            if of == session.as_str() {
                seq
            } else {
                0
            }
        }
        None => ReplyOp::decode(&message.payload)
            .ok()
            .filter(|op| &op.session == session)
            .map_or(0, |op| op.seq),
    }
}

/// `reply:<session>:<seq>` → (session, seq).
fn parse_msg_id(id: &str) -> Option<(&str, u64)> {
    let rest = id.strip_prefix("reply:")?;
    let (session, seq) = rest.rsplit_once(':')?;
    Some((session, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::parse_msg_id;

    #[test]
    fn a_reply_message_id_names_its_session_and_seq() {
        assert_eq!(parse_msg_id("reply:0193-ab:42"), Some(("0193-ab", 42)));
        assert_eq!(parse_msg_id("reply:s:x"), None);
        assert_eq!(parse_msg_id("mm:abc"), None);
    }
}
