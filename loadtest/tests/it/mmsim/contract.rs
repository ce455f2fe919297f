//! The contract test: representative scenarios over every endpoint the simulator implements,
//! each exchange checked against the official OpenAPI spec (non-strict).

use std::time::Duration;

use loadtest::mmsim::client::{EventKind, NewPost, bootstrap};
use loadtest::mmsim::model::{Command, OutgoingWebhook};
use reqwest::Method;
use serde_json::json;

use super::{Harness, Integration, Reply, WAIT, spec_available};

/// Every Mattermost route the simulator serves (method, route template).
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v4/users"),
    ("POST", "/api/v4/users/login"),
    ("POST", "/api/v4/users/logout"),
    ("POST", "/api/v4/users/ids"),
    ("POST", "/api/v4/users/usernames"),
    ("GET", "/api/v4/users/{user_id}"),
    ("PUT", "/api/v4/users/{user_id}/patch"),
    ("GET", "/api/v4/users/username/{username}"),
    ("POST", "/api/v4/users/{user_id}/tokens"),
    ("GET", "/api/v4/users/{user_id}/teams"),
    (
        "DELETE",
        "/api/v4/users/{user_id}/posts/{post_id}/reactions/{emoji_name}",
    ),
    ("POST", "/api/v4/teams"),
    ("GET", "/api/v4/teams/{team_id}"),
    ("GET", "/api/v4/teams/name/{team_name}"),
    ("POST", "/api/v4/teams/{team_id}/members"),
    (
        "GET",
        "/api/v4/teams/{team_id}/channels/name/{channel_name}",
    ),
    ("POST", "/api/v4/channels"),
    ("POST", "/api/v4/channels/direct"),
    ("GET", "/api/v4/channels/{channel_id}"),
    ("POST", "/api/v4/channels/{channel_id}/members"),
    ("GET", "/api/v4/channels/{channel_id}/posts"),
    ("POST", "/api/v4/bots"),
    ("POST", "/api/v4/posts"),
    ("POST", "/api/v4/posts/ephemeral"),
    ("GET", "/api/v4/posts/{post_id}"),
    ("PUT", "/api/v4/posts/{post_id}"),
    ("DELETE", "/api/v4/posts/{post_id}"),
    ("PUT", "/api/v4/posts/{post_id}/patch"),
    ("GET", "/api/v4/posts/{post_id}/thread"),
    ("GET", "/api/v4/posts/{post_id}/reactions"),
    ("POST", "/api/v4/posts/{post_id}/actions/{action_id}"),
    ("POST", "/api/v4/reactions"),
    ("POST", "/api/v4/files"),
    ("GET", "/api/v4/files/{file_id}"),
    ("GET", "/api/v4/files/{file_id}/info"),
    ("POST", "/api/v4/hooks/outgoing"),
    ("POST", "/api/v4/commands"),
    ("POST", "/api/v4/commands/execute"),
    ("POST", "/api/v4/actions/dialogs/open"),
    ("POST", "/api/v4/actions/dialogs/submit"),
    ("GET", "/api/v4/websocket"),
];

#[tokio::test]
async fn every_endpoint_conforms_to_the_spec() {
    if !spec_available() {
        return;
    }
    let h = Harness::start().await;
    let boot = bootstrap(&h.base).await.expect("bootstrap");
    let (a, d, b) = (&boot.admin, &boot.demo, &boot.bot);
    let ch = &boot.channel.id;
    let mut gw = Integration::start().await;
    let mut ws = d.websocket().await.expect("ws");

    a.me().await.expect("me");
    a.user(&d.id).await.expect("user");
    a.user_by_username("alice").await.expect("by name");
    a.raw(
        Method::POST,
        "/api/v4/users/ids",
        Some(&json!([d.id, b.id])),
    )
    .await
    .expect("ids");
    let found = a
        .users_by_usernames(&["alice", "nosuchuser"])
        .await
        .expect("by usernames");
    assert_eq!(found.len(), 1, "a name nobody has is left out");
    let renamed = a.rename_user(&d.id, "alice.two").await.expect("rename");
    assert_eq!(renamed.username, "alice.two");
    assert!(
        a.user_by_username("alice").await.is_err(),
        "the old name is free"
    );
    b.rename_user(&d.id, "taken-over")
        .await
        .expect_err("403 on someone else");
    a.rename_user(&b.id, "alice.two")
        .await
        .expect_err("400: the name is taken");
    d.rename_user(&d.id, "alice").await.expect("rename back");
    a.raw(Method::GET, "/api/v4/users/me/teams", None)
        .await
        .expect("teams of me");
    a.raw(
        Method::GET,
        &format!("/api/v4/teams/{}", boot.team.id),
        None,
    )
    .await
    .expect("team");
    a.raw(Method::GET, "/api/v4/teams/name/ccfleet", None)
        .await
        .expect("team by name");
    a.channel_by_name(&boot.team.id, "claude")
        .await
        .expect("channel by name");
    let dm = d.direct_channel(&b.id).await.expect("dm");
    a.channel(&dm.id).await.expect("admin reads dm");
    let root = d.post(ch, "hello @claude", None).await.expect("post");
    b.post(ch, "reply", Some(&root.id)).await.expect("reply");
    b.patch_post(&root.id, &json!({"message": "x"}))
        .await
        .expect_err("403 on someone else's post");
    d.patch_post(&root.id, &json!({"message": "edited", "props": {"k": "v"}}))
        .await
        .expect("patch");
    d.raw(
        Method::PUT,
        &format!("/api/v4/posts/{}", root.id),
        Some(&json!({"id": root.id, "message": "updated", "props": {"a": 1}})),
    )
    .await
    .expect("update");
    d.get_post(&root.id).await.expect("get");
    d.thread(&root.id).await.expect("thread");
    d.channel_posts(ch, 0, 60).await.expect("channel posts");
    d.react(&root.id, "+1").await.expect("react");
    d.reactions(&root.id).await.expect("reactions");
    d.unreact(&root.id, "+1").await.expect("unreact");
    b.raw(
        Method::POST,
        "/api/v4/posts/ephemeral",
        Some(&json!({"user_id": d.id, "post": {"channel_id": ch, "message": "only you"}})),
    )
    .await
    .expect("ephemeral");
    let file = b
        .upload_file(ch, "notes.md", b"# notes".to_vec())
        .await
        .expect("upload");
    b.get_file(&file.id).await.expect("download");
    b.file_info(&file.id).await.expect("info");
    b.create_post(&NewPost {
        channel_id: ch.clone(),
        message: "files".into(),
        file_ids: vec![file.id.clone()],
        ..NewPost::default()
    })
    .await
    .expect("with file");
    d.post(ch, &"x".repeat(16_384), None)
        .await
        .expect_err("too long");
    d.post(
        ch,
        "nested",
        Some(&b.post(ch, "r", Some(&root.id)).await.expect("reply").id),
    )
    .await
    .expect_err("reply to reply");
    d.get_post("nosuchpost0000000000000000")
        .await
        .expect_err("404");

    a.create_outgoing_webhook(&OutgoingWebhook {
        team_id: boot.team.id.clone(),
        channel_id: ch.clone(),
        trigger_words: vec!["!hook".into()],
        callback_urls: vec![gw.url("/hook")],
        content_type: "application/json".into(),
        display_name: "hook".into(),
        ..OutgoingWebhook::default()
    })
    .await
    .expect("hook");
    gw.reply(
        "/hook",
        Reply::json(json!({"text": "hooked", "response_type": "comment"})),
    );
    d.post(ch, "!hook me", None).await.expect("fires hook");
    gw.next().await;
    a.create_slash_command(&Command {
        team_id: boot.team.id.clone(),
        trigger: "claude".into(),
        method: "P".into(),
        url: gw.url("/slash"),
        ..Command::default()
    })
    .await
    .expect("command");
    gw.reply(
        "/slash",
        Reply::json(json!({"response_type": "in_channel", "text": "ok"})),
    );
    d.execute_command(ch, "/claude hi", Some(&root.id))
        .await
        .expect("execute");
    let trigger = gw.next().await.form_value("trigger_id").expect("trigger");
    b.open_dialog(
        &trigger,
        &gw.url("/dialog"),
        &json!({"callback_id": "c", "title": "T", "elements": []}),
    )
    .await
    .expect("open dialog");
    ws.wait_for(WAIT, |e| e.kind() == EventKind::OpenDialog)
        .await
        .expect("open_dialog event");
    d.submit_dialog(&json!({"url": gw.url("/dialog"), "channel_id": ch, "submission": {"a": "b"}, "callback_id": "c", "state": "", "cancelled": false})).await.expect("submit");
    gw.next().await;
    let props = serde_json::from_value(json!({"attachments": [{"actions": [{"id": "go", "name": "Go", "integration": {"url": gw.url("/act"), "context": {}}}]}]})).expect("props");
    let prompt = b
        .create_post(&NewPost {
            channel_id: ch.clone(),
            message: "click".into(),
            props,
            ..NewPost::default()
        })
        .await
        .expect("prompt");
    gw.reply(
        "/act",
        Reply::json(json!({"update": {"message": "clicked"}})),
    );
    d.click(&prompt.id, "go").await.expect("click");
    gw.next().await;
    d.delete_post(&root.id).await.expect("delete");
    a.raw(Method::POST, "/api/v4/users/logout", None)
        .await
        .expect("logout");

    let stats = h.ctl.stats().await.expect("stats");
    for (method, route) in ROUTES {
        assert!(
            stats.count(method, route) > 0,
            "the contract test must exercise {method} {route}"
        );
    }
    let report = h.ctl.contract().await.expect("report");
    assert!(report.enabled);
    assert!(
        report.checked >= 45,
        "only {} exchanges checked",
        report.checked
    );
    let _ = tokio::time::timeout(Duration::from_millis(1), ws.next_event()).await;
    h.finish().await;
}
