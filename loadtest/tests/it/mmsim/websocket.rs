//! The WebSocket: auth, hello, envelopes, visibility, mentions, ping, resume.

use std::time::Duration;

use loadtest::mmsim::client::{EventKind, bootstrap};

use super::{Harness, WAIT};

#[tokio::test]
async fn challenge_auth_hello_envelope_and_ping() {
    let h = Harness::start().await;
    let boot = bootstrap(&h.base).await.expect("bootstrap");
    let mut ws = boot.demo.websocket_challenge().await.expect("connect");
    let hello = ws.next_event().await.expect("hello");
    assert_eq!(hello.kind(), EventKind::Hello);
    assert_eq!(hello.seq, 0);
    assert_eq!(hello.broadcast.user_id, boot.demo.id);
    assert_eq!(hello.connection_id().map(str::len), Some(26));
    let post = boot
        .bot
        .post(&boot.channel.id, "hi @alice and all", None)
        .await
        .expect("post");
    let ev = ws
        .wait_for(WAIT, |e| e.kind() == EventKind::Posted)
        .await
        .expect("posted");
    assert_eq!(ev.seq, 1);
    assert!(ev.data["post"].is_string(), "data.post is a JSON string");
    assert_eq!(ev.post().expect("post decodes").id, post.id);
    assert_eq!(ev.mentions(), vec![boot.demo.id.clone()]);
    assert_eq!(ev.data["sender_name"], "@claude");
    assert_eq!(ev.data["channel_type"], "O");
    assert_eq!(ev.broadcast.channel_id, boot.channel.id);
    let replies = ws.take_replies();
    assert_eq!(
        replies.first().map(|r| r["status"].clone()),
        Some("OK".into()),
        "challenge answered OK"
    );
    let pong = ws.ping(WAIT).await.expect("pong");
    assert_eq!(pong["data"]["text"], "pong");
    h.finish().await;
}

#[tokio::test]
async fn events_reach_only_users_who_may_see_them() {
    let h = Harness::start().await;
    let boot = bootstrap(&h.base).await.expect("bootstrap");
    let secret = boot
        .admin
        .create_channel(&boot.team.id, "secret", "Secret", true)
        .await
        .expect("private");
    boot.admin
        .add_channel_member(&secret.id, &boot.bot.id)
        .await
        .expect("bot joins");
    let mut demo_ws = boot.demo.websocket().await.expect("demo ws");
    let mut bot_ws = boot.bot.websocket().await.expect("bot ws");
    let hidden = boot
        .admin
        .post(&secret.id, "for the bot only", None)
        .await
        .expect("private post");
    let visible = boot
        .admin
        .post(&boot.channel.id, "hello @claude", None)
        .await
        .expect("public post");
    let ev = bot_ws
        .wait_for(WAIT, |e| e.post().is_some_and(|p| p.id == hidden.id))
        .await
        .expect("bot sees private");
    assert!(ev.mentions().is_empty(), "not mentioned in that one");
    let ev = bot_ws
        .wait_for(WAIT, |e| e.post().is_some_and(|p| p.id == visible.id))
        .await
        .expect("bot sees public");
    assert_eq!(ev.mentions(), vec![boot.bot.id.clone()]);
    let ev = demo_ws
        .wait_for(WAIT, |e| e.kind() == EventKind::Posted)
        .await
        .expect("demo sees public");
    assert_eq!(
        ev.post().map(|p| p.id),
        Some(visible.id.clone()),
        "private post skipped"
    );
    assert!(
        ev.mentions().is_empty(),
        "mentions only for the mentioned receiver"
    );

    let r = boot
        .demo
        .react(&visible.id, "white_check_mark")
        .await
        .expect("react");
    let ev = bot_ws
        .wait_for(WAIT, |e| e.kind() == EventKind::ReactionAdded)
        .await
        .expect("reaction_added");
    assert!(ev.data["reaction"].is_string());
    assert_eq!(
        ev.reaction().expect("reaction decodes").emoji_name,
        r.emoji_name
    );
    boot.demo
        .unreact(&visible.id, "white_check_mark")
        .await
        .expect("unreact");
    bot_ws
        .wait_for(WAIT, |e| e.kind() == EventKind::ReactionRemoved)
        .await
        .expect("reaction_removed");
    boot.admin
        .patch(&visible.id, "edited")
        .await
        .expect("patch");
    let ev = bot_ws
        .wait_for(WAIT, |e| e.kind() == EventKind::PostEdited)
        .await
        .expect("post_edited");
    assert_eq!(ev.post().map(|p| p.message), Some("edited".into()));
    boot.admin.delete_post(&visible.id).await.expect("delete");
    bot_ws
        .wait_for(WAIT, |e| e.kind() == EventKind::PostDeleted)
        .await
        .expect("post_deleted");

    let dm = boot.demo.direct_channel(&boot.bot.id).await.expect("dm");
    boot.demo.post(&dm.id, "psst", None).await.expect("dm post");
    let ev = bot_ws
        .wait_for(WAIT, |e| {
            e.data.get("channel_type").is_some_and(|t| t == "D")
        })
        .await
        .expect("dm event");
    assert_eq!(
        ev.mentions(),
        vec![boot.bot.id.clone()],
        "a DM mentions the other member"
    );
    h.finish().await;
}

#[tokio::test]
async fn resume_replays_missed_events_without_a_new_hello() {
    let h = Harness::start().await;
    let boot = bootstrap(&h.base).await.expect("bootstrap");
    let mut ws = boot.bot.websocket().await.expect("connect");
    let hello = ws.next_event().await.expect("hello");
    let conn = hello.connection_id().expect("connection id").to_owned();
    let first = boot
        .demo
        .post(&boot.channel.id, "one", None)
        .await
        .expect("post");
    let ev = ws
        .wait_for(WAIT, |e| e.kind() == EventKind::Posted)
        .await
        .expect("first");
    assert_eq!(ev.post().map(|p| p.id), Some(first.id));
    let next = ws.next_seq();
    ws.close().await;
    let mut missed = Vec::new();
    for i in 0..3 {
        missed.push(
            boot.demo
                .post(&boot.channel.id, &format!("missed {i}"), None)
                .await
                .expect("post")
                .id,
        );
    }
    let mut resumed = resume(&h.base, &boot.bot_token, &conn, next).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let ev = raw_event(&mut resumed).await;
        assert_ne!(
            ev.kind(),
            EventKind::Hello,
            "a resumed connection gets no hello"
        );
        assert_eq!(ev.seq, next + i64::try_from(got.len()).expect("small"));
        got.push(ev.post().expect("post").id);
    }
    assert_eq!(got, missed);
    h.finish().await;
}

async fn raw_event(socket: &mut Raw) -> loadtest::mmsim::client::Event {
    use futures::StreamExt;
    loop {
        let msg = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("message");
        if let Ok(text) = msg.to_text()
            && !text.is_empty()
        {
            return serde_json::from_str(text).expect("event");
        }
    }
}

type Raw =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn resume(base: &str, token: &str, conn: &str, seq: i64) -> Raw {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!(
        "{}/api/v4/websocket?connection_id={conn}&sequence_number={seq}",
        base.replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    tokio_tungstenite::connect_async(req)
        .await
        .expect("resume")
        .0
}

#[tokio::test]
async fn client_reconnect_resumes_and_a_lost_gap_resets() {
    let h = Harness::start().await;
    let boot = bootstrap(&h.base).await.expect("bootstrap");
    let mut ws = boot.bot.websocket().await.expect("connect");
    let conn = ws
        .next_event()
        .await
        .expect("hello")
        .connection_id()
        .expect("id")
        .to_owned();
    let p = boot
        .demo
        .post(&boot.channel.id, "before", None)
        .await
        .expect("post");
    ws.wait_for(WAIT, |e| e.post().is_some_and(|x| x.id == p.id))
        .await
        .expect("seen");
    ws.reconnect().await.expect("reconnect");
    let p2 = boot
        .demo
        .post(&boot.channel.id, "after", None)
        .await
        .expect("post");
    let ev = ws
        .wait_for(WAIT, |e| e.kind() != EventKind::Hello)
        .await
        .expect("event");
    assert_eq!(
        ev.post().map(|x| x.id),
        Some(p2.id),
        "nothing replayed twice, nothing lost"
    );
    assert_eq!(ws.connection_id(), conn);

    // More than the 128-event dead queue goes by while disconnected: the server resets.
    let next = ws.next_seq();
    ws.close().await;
    for i in 0..130 {
        boot.demo
            .react(&p.id, &format!("e{i}"))
            .await
            .expect("react");
    }
    let mut stale = resume(&h.base, &boot.bot_token, &conn, next).await;
    let ev = raw_event(&mut stale).await;
    assert_eq!(
        ev.kind(),
        EventKind::Hello,
        "a lost gap resets to a new connection"
    );
    assert_eq!(ev.seq, 0);
    assert_ne!(ev.connection_id(), Some(conn.as_str()));
    let _ = tokio::time::timeout(Duration::from_secs(1), stale.close(None)).await;
    h.finish().await;
}

#[tokio::test]
async fn bad_credentials_are_refused() {
    let h = Harness::start().await;
    let boot = bootstrap(&h.base).await.expect("bootstrap");
    let bogus = loadtest::mmsim::client::User::new(&h.base, "bogus", &boot.demo.id, "alice");
    assert!(
        bogus.websocket().await.is_err(),
        "bad bearer token: 401 before the upgrade"
    );
    let mut ws = bogus
        .websocket_challenge()
        .await
        .expect("socket opens before auth");
    assert!(
        ws.next_event().await.is_err(),
        "bad challenge token closes the socket"
    );
    h.finish().await;
}
