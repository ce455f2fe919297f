//! Publishing a session's reply operations: one strictly increasing `seq` per session,
//! continued across workers (read back from the replies stream when a worker takes a
//! thread over), each publish deduplicated by `Nats-Msg-Id` = `reply:<session>:<seq>`.

use async_nats::jetstream;
use proto::names::{MSG_ID_HEADER, Names};
use proto::v1::{Op, ReplyOp};
use proto::{ChannelId, LocalRef, Message, SessionId, ThreadId, UserId};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not encode reply operation")]
    Encode(#[source] proto::Error),
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
        matches!(self, Error::Publish { .. })
    }
}

/// Writes one session's reply operations.
pub struct Replies {
    js: jetstream::Context,
    subject: String,
    thread: ThreadId,
    channel: ChannelId,
    session: SessionId,
    next_seq: u64,
}

impl Replies {
    /// Continues the session's sequence after the last operation on the thread's subject.
    pub async fn resume(
        js: jetstream::Context,
        replies: &jetstream::stream::Stream,
        names: &Names,
        thread: ThreadId,
        channel: ChannelId,
        session: SessionId,
    ) -> Self {
        let subject = names.reply_subject(&thread);
        let last = match replies.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => ReplyOp::decode(&message.payload)
                .ok()
                .filter(|op| op.session == session)
                .map(|op| op.seq)
                .unwrap_or(0),
            Err(_) => 0,
        };
        Self {
            js,
            subject,
            thread,
            channel,
            session,
            next_seq: last + 1,
        }
    }

    pub fn session(&self) -> &SessionId {
        &self.session
    }

    /// The local reference the next create will get.
    fn next_ref(&self) -> LocalRef {
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
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            MSG_ID_HEADER,
            format!("reply:{}:{seq}", self.session).as_str(),
        );
        common::telemetry::inject(&mut headers);
        let err = |source| Error::Publish {
            session: self.session.clone(),
            seq,
            source,
        };
        self.js
            .publish_with_headers(self.subject.clone(), headers, payload.into())
            .await
            .map_err(err)?
            .await
            .map_err(err)?;
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
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(MSG_ID_HEADER, format!("reply:{session}:1").as_str());
    common::telemetry::inject(&mut headers);
    let err = |source| Error::Publish {
        session: session.clone(),
        seq: 1,
        source,
    };
    js.publish_with_headers(names.notice_subject(thread), headers, payload.into())
        .await
        .map_err(err)?
        .await
        .map_err(err)?;
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
