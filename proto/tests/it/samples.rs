//! One sample of every v1 message shape. The golden files are these, encoded.

use proto::v1::*;
use proto::*;

fn user() -> User {
    User {
        id: UserId::from("u1xqk7a9ctgw8rbe6ymz3sq5nh"),
        username: "alice".into(),
    }
}

fn local(seq: u32) -> LocalRef {
    LocalRef {
        session: SessionId::from("0193c4d2-7a5e-7c41-9b1e-3f0a6d2e8c11"),
        seq,
    }
}

fn event(event_id: &str, body: EventBody) -> ChatEvent {
    ChatEvent {
        event_id: event_id.into(),
        thread: ThreadId::from("r00tpost0000000000000000aa"),
        channel: ChannelId::from("chan0000000000000000000000"),
        user: user(),
        received_at_ms: 1_795_000_000_123,
        body,
    }
}

fn reply(seq: u64, op: Op) -> ReplyOp {
    ReplyOp {
        thread: ThreadId::from("r00tpost0000000000000000aa"),
        channel: ChannelId::from("chan0000000000000000000000"),
        session: SessionId::from("0193c4d2-7a5e-7c41-9b1e-3f0a6d2e8c11"),
        seq,
        created_at_ms: 1_795_000_000_456,
        op,
    }
}

pub fn chat_events() -> Vec<(&'static str, ChatEvent)> {
    vec![
        (
            "event_message",
            event(
                "post0000000000000000000001",
                EventBody::Message(MessagePosted {
                    post_id: PostId::from("post0000000000000000000001"),
                    root_id: Some(PostId::from("r00tpost0000000000000000aa")),
                    text: "@claude [[write:index.html]] make a page ✨".into(),
                    file_ids: vec![FileId::from("file0000000000000000000001")],
                    mentions_bot: true,
                    channel_type: ChannelType::Open,
                    source: Source::WebSocket,
                    create_at_ms: 1_795_000_000_000,
                }),
            ),
        ),
        (
            "event_slash_command",
            event(
                "trig0000000000000000000001",
                EventBody::SlashCommand(SlashCommand {
                    command: "/claude".into(),
                    text: "status".into(),
                    trigger_id: "trig0000000000000000000001".into(),
                    team_id: "team0000000000000000000001".into(),
                    root_id: None,
                    response_url: "http://127.0.0.1:8065/hooks/commands/abc".into(),
                }),
            ),
        ),
        (
            "event_button_action",
            event(
                "action:post0000000000000000000002:allow:u1",
                EventBody::ButtonAction(ButtonAction {
                    post_id: PostId::from("post0000000000000000000002"),
                    action: "allow".into(),
                    context_json: r#"{"request":"req_1"}"#.into(),
                    trigger_id: Some("trig0000000000000000000002".into()),
                }),
            ),
        ),
        (
            "event_reaction",
            event(
                "reaction:post0000000000000000000002:+1:add",
                EventBody::Reaction(Reaction {
                    post_id: PostId::from("post0000000000000000000002"),
                    emoji: "+1".into(),
                    added: true,
                    create_at_ms: 1_795_000_000_010,
                }),
            ),
        ),
        (
            "event_dialog_submission",
            event(
                "dialog:cb1:1795000000123",
                EventBody::DialogSubmission(DialogSubmission {
                    callback_id: "cb1".into(),
                    state: "s".into(),
                    submission_json: r#"{"answer":"Red"}"#.into(),
                    cancelled: false,
                }),
            ),
        ),
    ]
}

pub fn reply_ops() -> Vec<(&'static str, ReplyOp)> {
    let target = PostTarget::Local(local(1));
    vec![
        (
            "reply_create_post",
            reply(
                1,
                Op::CreatePost {
                    local: local(1),
                    message: "Working on it…".into(),
                    props_json: Some(r#"{"attachments":[]}"#.into()),
                },
            ),
        ),
        (
            "reply_update_post",
            reply(
                2,
                Op::UpdatePost {
                    local: local(1),
                    message: "Working on it… done".into(),
                    props_json: None,
                    streaming: true,
                },
            ),
        ),
        (
            "reply_add_reaction",
            reply(
                3,
                Op::AddReaction {
                    target: PostTarget::Mattermost(PostId::from("post0000000000000000000001")),
                    emoji: "eyes".into(),
                },
            ),
        ),
        (
            "reply_remove_reaction",
            reply(
                4,
                Op::RemoveReaction {
                    target,
                    emoji: "eyes".into(),
                },
            ),
        ),
        (
            "reply_ephemeral",
            reply(
                5,
                Op::Ephemeral {
                    user: UserId::from("u1xqk7a9ctgw8rbe6ymz3sq5nh"),
                    message: "Only the session owner can approve.".into(),
                },
            ),
        ),
        (
            "reply_attach_files",
            reply(
                6,
                Op::AttachFiles {
                    local: local(2),
                    message: "Files".into(),
                    files: vec![FileUpload {
                        name: "index.html".into(),
                        object_key: "threads/r00t/turn-1/index.html".into(),
                        content_type: "text/html; charset=utf-8".into(),
                        size: 321,
                    }],
                },
            ),
        ),
    ]
}
