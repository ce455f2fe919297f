use proptest::prelude::*;
use proto::v1::*;
use proto::*;

fn id() -> impl Strategy<Value = String> {
    "[a-z0-9]{0,26}"
}

fn text() -> impl Strategy<Value = String> {
    any::<String>()
}

fn local() -> impl Strategy<Value = LocalRef> {
    (id(), any::<u32>()).prop_map(|(s, seq)| LocalRef {
        session: SessionId(s),
        seq,
    })
}

fn target() -> impl Strategy<Value = PostTarget> {
    prop_oneof![
        id().prop_map(|p| PostTarget::Mattermost(PostId(p))),
        local().prop_map(PostTarget::Local),
    ]
}

fn channel_type() -> impl Strategy<Value = ChannelType> {
    prop_oneof![
        Just(ChannelType::Open),
        Just(ChannelType::Private),
        Just(ChannelType::Direct),
        Just(ChannelType::Group)
    ]
}

fn source() -> impl Strategy<Value = Source> {
    prop_oneof![
        Just(Source::WebSocket),
        Just(Source::OutgoingWebhook),
        Just(Source::SlashCommand)
    ]
}

fn body() -> impl Strategy<Value = EventBody> {
    prop_oneof![
        (
            id(),
            proptest::option::of(id()),
            text(),
            proptest::collection::vec(id(), 0..4),
            any::<bool>(),
            channel_type(),
            source(),
            any::<i64>()
        )
            .prop_map(
                |(p, r, t, f, m, c, s, at)| EventBody::Message(MessagePosted {
                    post_id: PostId(p),
                    root_id: r.map(PostId),
                    text: t,
                    file_ids: f.into_iter().map(FileId).collect(),
                    mentions_bot: m,
                    channel_type: c,
                    source: s,
                    create_at_ms: at,
                })
            ),
        (
            text(),
            text(),
            id(),
            id(),
            proptest::option::of(id()),
            text()
        )
            .prop_map(|(command, text, trigger_id, team_id, root, response_url)| {
                EventBody::SlashCommand(SlashCommand {
                    command,
                    text,
                    trigger_id,
                    team_id,
                    root_id: root.map(PostId),
                    response_url,
                })
            }),
        (id(), text(), text(), proptest::option::of(id())).prop_map(|(p, a, c, t)| {
            EventBody::ButtonAction(ButtonAction {
                post_id: PostId(p),
                action: a,
                context_json: c,
                trigger_id: t,
            })
        }),
        (id(), text(), any::<bool>(), any::<i64>()).prop_map(|(p, e, added, at)| {
            EventBody::Reaction(Reaction {
                post_id: PostId(p),
                emoji: e,
                added,
                create_at_ms: at,
            })
        }),
        (text(), text(), text(), any::<bool>()).prop_map(|(c, s, j, x)| {
            EventBody::DialogSubmission(DialogSubmission {
                callback_id: c,
                state: s,
                submission_json: j,
                cancelled: x,
            })
        }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let file = (text(), text(), text(), any::<u64>()).prop_map(
        |(name, object_key, content_type, size)| FileUpload {
            name,
            object_key,
            content_type,
            size,
        },
    );
    prop_oneof![
        (local(), text(), proptest::option::of(text())).prop_map(|(local, message, props_json)| {
            Op::CreatePost {
                local,
                message,
                props_json,
            }
        }),
        (local(), text(), proptest::option::of(text()), any::<bool>()).prop_map(
            |(local, message, props_json, streaming)| Op::UpdatePost {
                local,
                message,
                props_json,
                streaming,
            }
        ),
        (target(), text()).prop_map(|(target, emoji)| Op::AddReaction { target, emoji }),
        (target(), text()).prop_map(|(target, emoji)| Op::RemoveReaction { target, emoji }),
        (id(), text()).prop_map(|(u, message)| Op::Ephemeral {
            user: UserId(u),
            message
        }),
        (local(), text(), proptest::collection::vec(file, 0..3)).prop_map(
            |(local, message, files)| Op::AttachFiles {
                local,
                message,
                files,
            }
        ),
    ]
}

proptest! {
    #[test]
    fn chat_events_round_trip(
        event_id in text(), thread in id(), channel in id(), uid in id(), username in text(),
        received_at_ms in any::<u64>(), body in body(),
    ) {
        let event = ChatEvent {
            event_id,
            thread: ThreadId(thread),
            channel: ChannelId(channel),
            user: User { id: UserId(uid), username },
            received_at_ms,
            body,
        };
        prop_assert_eq!(ChatEvent::decode(&event.encode().unwrap()).unwrap(), event);
    }

    #[test]
    fn reply_ops_round_trip(
        thread in id(), channel in id(), session in id(), seq in any::<u64>(),
        created_at_ms in any::<u64>(), op in op(),
    ) {
        let reply = ReplyOp {
            thread: ThreadId(thread),
            channel: ChannelId(channel),
            session: SessionId(session),
            seq,
            created_at_ms,
            op,
        };
        prop_assert_eq!(ReplyOp::decode(&reply.encode().unwrap()).unwrap(), reply);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = ChatEvent::decode(&bytes);
        let _ = ReplyOp::decode(&bytes);
    }
}
