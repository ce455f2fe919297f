//! Integrations: outgoing webhooks, slash commands and `response_url`, buttons, dialogs.

use std::time::Duration;

use loadtest::mmsim::client::{EventKind, NewPost, bootstrap};
use loadtest::mmsim::model::{Command, OutgoingWebhook};
use serde_json::{Value, json};

use super::{Harness, Integration, Reply, WAIT, eventually};

#[tokio::test]
async fn outgoing_webhooks_json_and_form() {
    let h = Harness::start().await;
    let boot = bootstrap(&h.base).await.expect("bootstrap");
    let mut gw = Integration::start().await;
    let json_hook = boot
        .admin
        .create_outgoing_webhook(&OutgoingWebhook {
            team_id: boot.team.id.clone(),
            display_name: "ccfleet".into(),
            trigger_words: vec!["@claude".into()],
            callback_urls: vec![gw.url("/json")],
            content_type: "application/json".into(),
            ..OutgoingWebhook::default()
        })
        .await
        .expect("register json hook");
    assert_eq!(json_hook.token.len(), 26);
    let form_hook = boot
        .admin
        .create_outgoing_webhook(&OutgoingWebhook {
            team_id: boot.team.id.clone(),
            channel_id: boot.channel.id.clone(),
            display_name: "form".into(),
            trigger_words: vec!["!form".into()],
            trigger_when: 1,
            callback_urls: vec![gw.url("/form")],
            ..OutgoingWebhook::default()
        })
        .await
        .expect("register form hook");
    let err = boot
        .demo
        .create_outgoing_webhook(&OutgoingWebhook {
            team_id: boot.team.id.clone(),
            trigger_words: vec!["x".into()],
            callback_urls: vec![gw.url("/x")],
            ..OutgoingWebhook::default()
        })
        .await
        .expect_err("regular users cannot register hooks");
    assert_eq!(err.status(), Some(403));

    gw.reply(
        "/json",
        Reply::json(json!({"text": "on it", "response_type": "comment"})),
    );
    let file = boot
        .demo
        .upload_file(&boot.channel.id, "a.txt", b"a".to_vec())
        .await
        .expect("upload");
    let mut ws = boot.demo.websocket().await.expect("ws");
    let post = boot
        .demo
        .create_post(&NewPost {
            channel_id: boot.channel.id.clone(),
            message: "@claude fix the build".into(),
            file_ids: vec![file.id.clone()],
            ..NewPost::default()
        })
        .await
        .expect("post");
    let got = gw.next().await;
    assert_eq!(got.path, "/json");
    assert_eq!(
        got.header("content-type").as_deref(),
        Some("application/json")
    );
    let body = got.json();
    assert_eq!(body["token"], json_hook.token.as_str());
    assert_eq!(body["trigger_word"], "@claude");
    assert_eq!(
        body["timestamp"], post.create_at,
        "JSON timestamps are milliseconds"
    );
    assert_eq!(body["file_ids"], file.id.as_str());
    assert_eq!(body["user_name"], "alice");
    assert_eq!(body["team_domain"], "ccfleet");
    let reply = ws
        .wait_for(WAIT, |e| e.post().is_some_and(|p| p.root_id == post.id))
        .await
        .expect("comment reply in the thread")
        .post()
        .expect("post");
    assert_eq!(reply.message, "on it");
    assert_eq!(reply.props["from_webhook"], "true");
    assert_eq!(reply.user_id, boot.admin.id, "posted as the hook's creator");

    boot.demo
        .post(&boot.channel.id, "!formal request", None)
        .await
        .expect("starts-with trigger");
    let got = gw.next().await;
    assert_eq!(got.path, "/form");
    assert_eq!(got.form_value("token"), Some(form_hook.token.clone()));
    assert_eq!(got.form_value("trigger_word").as_deref(), Some("!form"));
    let ts: i64 = got
        .form_value("timestamp")
        .expect("timestamp")
        .parse()
        .expect("number");
    assert!(ts < 10_000_000_000, "form timestamps are seconds");

    // Replies to replies fail like the server's, and hooks never fire in private channels.
    gw.reply(
        "/json",
        Reply::json(json!({"text": "nested", "response_type": "comment"})),
    );
    boot.demo
        .post(&boot.channel.id, "@claude again", Some(&post.id))
        .await
        .expect("reply");
    gw.next().await;
    let failed = eventually(|| async {
        let log = h.ctl.integrations().await.expect("log");
        log.into_iter()
            .find(|e| e["error"] == "api.post.create_post.root_id.app_error")
    })
    .await;
    assert_eq!(failed["kind"], "outgoing_webhook");
    let secret = boot
        .admin
        .create_channel(&boot.team.id, "secret", "Secret", true)
        .await
        .expect("private");
    boot.admin
        .post(&secret.id, "@claude psst", None)
        .await
        .expect("private post");
    gw.assert_quiet(Duration::from_millis(300)).await;
    h.finish().await;
}

#[tokio::test]
async fn slash_commands_and_response_url() {
    let h = Harness::start().await;
    let boot = bootstrap(&h.base).await.expect("bootstrap");
    let mut gw = Integration::start().await;
    let cmd = boot
        .admin
        .create_slash_command(&Command {
            team_id: boot.team.id.clone(),
            trigger: "claude".into(),
            method: "P".into(),
            url: gw.url("/slash"),
            ..Command::default()
        })
        .await
        .expect("register");
    gw.reply(
        "/slash",
        Reply::json(json!({"response_type": "ephemeral", "text": "Queued."})),
    );
    let root = boot
        .demo
        .post(&boot.channel.id, "thread root", None)
        .await
        .expect("root");
    let mut ws = boot.demo.websocket().await.expect("ws");
    let resp = boot
        .demo
        .execute_command(&boot.channel.id, "/claude do things", Some(&root.id))
        .await
        .expect("execute");
    assert_eq!(resp.text, "Queued.");
    let got = gw.next().await;
    assert_eq!(
        got.header("authorization"),
        Some(format!("Token {}", cmd.token))
    );
    assert_eq!(
        got.header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(got.form_value("command").as_deref(), Some("/claude"));
    assert_eq!(got.form_value("text").as_deref(), Some("do things"));
    assert_eq!(got.form_value("root_id"), Some(root.id.clone()));
    assert_eq!(got.form_value("user_name").as_deref(), Some("alice"));
    assert!(got.form_value("trigger_id").is_some_and(|t| !t.is_empty()));
    let response_url = got.form_value("response_url").expect("response_url");
    assert!(response_url.starts_with(&format!("{}/hooks/commands/", h.base)));
    let eph = ws
        .wait_for(WAIT, |e| e.kind() == EventKind::EphemeralMessage)
        .await
        .expect("ephemeral");
    assert_eq!(eph.post().map(|p| p.message), Some("Queued.".into()));

    let http = reqwest::Client::new();
    let r = http
        .post(&response_url)
        .json(&json!({"response_type": "in_channel", "text": "Done."}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), "ok");
    let done = ws
        .wait_for(WAIT, |e| e.kind() == EventKind::Posted)
        .await
        .expect("posted")
        .post()
        .expect("post");
    assert_eq!(
        (done.message.as_str(), done.root_id.as_str()),
        ("Done.", root.id.as_str())
    );
    assert_eq!(
        done.user_id, boot.demo.id,
        "replies go to the original user"
    );
    for _ in 0..4 {
        let r = http
            .post(&response_url)
            .header("content-type", "text/plain")
            .body("more")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
    }
    let r = http
        .post(&response_url)
        .body("sixth")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400, "at most 5 uses");

    // A fresh response_url expires after 30 minutes.
    gw.reply(
        "/slash",
        Reply {
            status: 200,
            content_type: "text/plain",
            body: "plain text reply".into(),
        },
    );
    let resp = boot
        .demo
        .execute_command(&boot.channel.id, "/claude", None)
        .await
        .expect("execute");
    assert_eq!(resp.text, "plain text reply");
    let url = gw.next().await.form_value("response_url").expect("url");
    h.ctl
        .advance_clock(Duration::from_secs(31 * 60))
        .await
        .expect("advance");
    let r = http.post(&url).body("late").send().await.expect("send");
    assert_eq!(r.status(), 400);

    let err = boot
        .demo
        .execute_command(&boot.channel.id, "/nope", None)
        .await
        .expect_err("unknown");
    assert_eq!(err.status(), Some(404));
    gw.reply(
        "/slash",
        Reply {
            status: 503,
            content_type: "text/plain",
            body: "down".into(),
        },
    );
    let err = boot
        .demo
        .execute_command(&boot.channel.id, "/claude", None)
        .await
        .expect_err("integration down");
    assert_eq!(
        err.error_id(),
        Some("api.command.execute_command.failed_resp.app_error")
    );
    h.finish().await;
}

fn buttons(url: &str) -> serde_json::Map<String, Value> {
    serde_json::from_value(json!({
        "attachments": [{
            "text": "Allow Bash: ls?",
            "actions": [
                {"id": "allow", "name": "Allow", "type": "button", "integration": {"url": url, "context": {"req": "r1", "secret": "s"}}},
                {"id": "deny", "name": "Deny", "type": "button", "integration": {"url": url, "context": {"req": "r1"}}}
            ]
        }]
    }))
    .expect("props")
}

#[tokio::test]
async fn button_clicks_reach_the_integration_and_apply_its_answer() {
    let h = Harness::start().await;
    let boot = bootstrap(&h.base).await.expect("bootstrap");
    let mut gw = Integration::start().await;
    let prompt = boot
        .bot
        .create_post(&NewPost {
            channel_id: boot.channel.id.clone(),
            message: "Permission needed".into(),
            props: buttons(&gw.url("/action")),
            ..NewPost::default()
        })
        .await
        .expect("prompt");
    let seen = boot.demo.get_post(&prompt.id).await.expect("get");
    let action = &seen.props["attachments"][0]["actions"][0];
    assert_eq!(action["id"], "allow");
    assert!(
        action.get("integration").is_none(),
        "integration is stripped for clients"
    );

    gw.reply(
        "/action",
        Reply::json(json!({
            "update": {"message": "Allowed by @alice", "props": {"attachments": []}},
            "ephemeral_text": "You allowed it."
        })),
    );
    let mut ws = boot.demo.websocket().await.expect("ws");
    let ok = boot.demo.click(&prompt.id, "allow").await.expect("click");
    assert_eq!(ok.status, "OK");
    let got = gw.next().await;
    let body = got.json();
    assert_eq!(body["context"], json!({"req": "r1", "secret": "s"}));
    assert_eq!(
        (body["user_id"].as_str(), body["post_id"].as_str()),
        (Some(boot.demo.id.as_str()), Some(prompt.id.as_str()))
    );
    assert_eq!(body["type"], "button");
    assert!(body["trigger_id"].as_str().is_some_and(|t| !t.is_empty()));
    let edited = ws
        .wait_for(WAIT, |e| e.kind() == EventKind::PostEdited)
        .await
        .expect("post_edited")
        .post()
        .expect("post");
    assert_eq!(edited.message, "Allowed by @alice");
    assert_eq!(edited.user_id, boot.bot.id);
    let eph = ws
        .wait_for(WAIT, |e| e.kind() == EventKind::EphemeralMessage)
        .await
        .expect("ephemeral");
    assert_eq!(
        eph.post().map(|p| p.message),
        Some("You allowed it.".into())
    );

    let err = boot
        .demo
        .click(&prompt.id, "nosuch")
        .await
        .expect_err("unknown action");
    assert_eq!(err.status(), Some(404));
    let second = boot
        .bot
        .create_post(&NewPost {
            channel_id: boot.channel.id.clone(),
            message: "again".into(),
            props: buttons(&gw.url("/broken")),
            ..NewPost::default()
        })
        .await
        .expect("prompt");
    gw.reply(
        "/broken",
        Reply {
            status: 500,
            content_type: "text/plain",
            body: "boom".into(),
        },
    );
    let err = boot
        .demo
        .click(&second.id, "deny")
        .await
        .expect_err("integration failed");
    assert_eq!(err.status(), Some(502));
    gw.next().await;
    h.finish().await;
}

#[tokio::test]
async fn dialogs_open_over_the_websocket_and_submit_to_the_integration() {
    let h = Harness::start().await;
    let boot = bootstrap(&h.base).await.expect("bootstrap");
    let mut gw = Integration::start().await;
    boot.admin
        .create_slash_command(&Command {
            team_id: boot.team.id.clone(),
            trigger: "ask".into(),
            method: "P".into(),
            url: gw.url("/slash"),
            ..Command::default()
        })
        .await
        .expect("register");
    gw.reply("/slash", Reply::empty());
    let mut ws = boot.demo.websocket().await.expect("ws");
    let _ = boot
        .demo
        .execute_command(&boot.channel.id, "/ask", None)
        .await;
    let trigger_id = gw
        .next()
        .await
        .form_value("trigger_id")
        .expect("trigger id");
    let dialog = json!({"callback_id": "cb", "title": "Question", "elements": [{"display_name": "Answer", "name": "answer", "type": "text"}], "state": "st"});
    boot.bot
        .open_dialog(&trigger_id, &gw.url("/dialog"), &dialog)
        .await
        .expect("open");
    let ev = ws
        .wait_for(WAIT, |e| e.kind() == EventKind::OpenDialog)
        .await
        .expect("open_dialog");
    assert!(ev.data["dialog"].is_string());
    assert_eq!(ev.dialog().expect("dialog")["dialog"]["callback_id"], "cb");
    assert_eq!(ev.broadcast.user_id, boot.demo.id);

    gw.reply(
        "/dialog",
        Reply::json(json!({"errors": {"answer": "too short"}})),
    );
    let answer = boot
        .demo
        .submit_dialog(&json!({"url": gw.url("/dialog"), "channel_id": boot.channel.id, "callback_id": "cb", "state": "st", "submission": {"answer": "x"}, "cancelled": false}))
        .await
        .expect("submit");
    assert_eq!(answer["errors"]["answer"], "too short");
    let body = gw.next().await.json();
    assert_eq!(body["type"], "dialog_submission");
    assert_eq!(body["submission"]["answer"], "x");
    assert_eq!(body["team_id"], boot.team.id.as_str());
    assert_eq!(body["user_id"], boot.demo.id.as_str());

    h.ctl
        .advance_clock(Duration::from_secs(31))
        .await
        .expect("advance");
    let err = boot
        .bot
        .open_dialog(&trigger_id, &gw.url("/dialog"), &dialog)
        .await
        .expect_err("expired trigger");
    assert_eq!(err.status(), Some(400));
    h.finish().await;
}
