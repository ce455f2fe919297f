//! REST v4: users, teams, channels, bots, tokens, posts, reactions, files.

use loadtest::mmsim::client::{BOOTSTRAP_PASSWORD, Client, NewPost, User, bootstrap};
use loadtest::mmsim::model::POST_MESSAGE_MAX_RUNES;
use reqwest::Method;
use serde_json::json;

use super::Harness;

#[tokio::test]
async fn first_user_is_admin_and_login_returns_token() {
    let h = Harness::start().await;
    let anon = Client::new(&h.base);
    let first = anon
        .sign_up("root", "root@example.com", "pw-12345")
        .await
        .expect("sign up");
    assert!(first.is_system_admin());
    assert_eq!(first.id.len(), 26);
    let err = anon
        .sign_up("eve", "eve@example.com", "pw-12345")
        .await
        .expect_err("closed server");
    assert_eq!(err.status(), Some(403));
    let err = anon.login("root", "wrong").await.expect_err("bad password");
    assert_eq!(err.status(), Some(401));
    let admin = anon.login("root", "pw-12345").await.expect("login");
    assert_eq!(admin.me().await.expect("me").id, first.id);
    let bob = admin
        .create_user("bob", "bob@example.com", "pw-12345")
        .await
        .expect("create");
    assert!(!bob.is_system_admin());
    assert_eq!(
        admin.user_by_username("bob").await.expect("by name").id,
        bob.id
    );
    assert_eq!(admin.user(&bob.id).await.expect("by id").username, "bob");
    let err = admin
        .user("nosuchuser0000000000000000")
        .await
        .expect_err("unknown");
    assert_eq!(err.status(), Some(404));
    let err = admin
        .create_user("bob", "bob2@example.com", "pw")
        .await
        .expect_err("taken");
    assert_eq!(
        err.error_id(),
        Some("app.user.save.username_exists.app_error")
    );
    let stranger = User::new(&h.base, "not-a-token", "", "");
    let err = stranger.me().await.expect_err("no session");
    assert_eq!(err.status(), Some(401));
    assert_eq!(
        err.error_id(),
        Some("api.context.session_expired.app_error")
    );
    h.finish().await;
}

#[tokio::test]
async fn bootstrap_builds_team_channel_bot_and_token() {
    let h = Harness::start().await;
    let boot = bootstrap(&h.base).await.expect("bootstrap");
    let me = boot.bot.me().await.expect("bot token works");
    assert!(me.is_bot);
    assert_eq!(
        User::from_token(&h.base, &boot.bot_token)
            .await
            .expect("from token")
            .id,
        boot.bot.id
    );
    let ch = boot
        .demo
        .channel(&boot.channel.id)
        .await
        .expect("member reads channel");
    assert_eq!(ch.channel_type, "O");
    let town = boot
        .demo
        .channel_by_name(&boot.team.id, "town-square")
        .await
        .expect("default channel");
    assert_eq!(town.team_id, boot.team.id);
    // Bots cannot log in with a password.
    let err = Client::new(&h.base)
        .login("claude", BOOTSTRAP_PASSWORD)
        .await
        .expect_err("bot login");
    assert_eq!(err.status(), Some(401));
    h.finish().await;
}

#[tokio::test]
async fn private_channels_are_forbidden_to_non_members() {
    let h = Harness::start().await;
    let boot = bootstrap(&h.base).await.expect("bootstrap");
    let secret = boot
        .admin
        .create_channel(&boot.team.id, "secret", "Secret", true)
        .await
        .expect("private");
    assert_eq!(secret.channel_type, "P");
    let err = boot
        .demo
        .post(&secret.id, "let me in", None)
        .await
        .expect_err("not a member");
    assert_eq!(err.status(), Some(403));
    assert_eq!(err.error_id(), Some("api.context.permissions.app_error"));
    let err = boot
        .demo
        .channel(&secret.id)
        .await
        .expect_err("cannot read");
    assert_eq!(err.status(), Some(403));
    let err = boot
        .demo
        .channel_posts(&secret.id, 0, 10)
        .await
        .expect_err("cannot list");
    assert_eq!(err.status(), Some(403));
    boot.admin
        .add_channel_member(&secret.id, &boot.demo.id)
        .await
        .expect("add");
    boot.demo
        .post(&secret.id, "thanks", None)
        .await
        .expect("member posts");
    let dm = boot
        .demo
        .direct_channel(&boot.bot.id)
        .await
        .expect("direct channel");
    assert_eq!(dm.channel_type, "D");
    assert_eq!(
        boot.bot
            .direct_channel(&boot.demo.id)
            .await
            .expect("same dm")
            .id,
        dm.id
    );
    let err = boot
        .admin
        .channel("nosuchchannel0000000000000")
        .await
        .expect_err("unknown");
    assert_eq!(err.status(), Some(404));
    h.finish().await;
}

#[tokio::test]
async fn posts_threads_limits_and_dedupe() {
    let h = Harness::start().await;
    let boot = bootstrap(&h.base).await.expect("bootstrap");
    let ch = &boot.channel.id;
    let root = boot.demo.post(ch, "root", None).await.expect("root");
    assert!(root.create_at > 0 && root.update_at == root.create_at);
    let reply = boot
        .bot
        .post(ch, "reply", Some(&root.id))
        .await
        .expect("reply");
    assert_eq!(reply.root_id, root.id);
    let err = boot
        .demo
        .post(ch, "nested", Some(&reply.id))
        .await
        .expect_err("reply to reply");
    assert_eq!(err.status(), Some(400));
    assert_eq!(
        err.error_id(),
        Some("api.post.create_post.root_id.app_error")
    );
    let max = "é".repeat(POST_MESSAGE_MAX_RUNES);
    boot.bot
        .post(ch, &max, None)
        .await
        .expect("16383 runes fit");
    let err = boot
        .bot
        .post(ch, &format!("{max}x"), None)
        .await
        .expect_err("too long");
    assert_eq!(err.status(), Some(400));
    assert_eq!(
        err.error_id(),
        Some("model.post.is_valid.message_length.app_error")
    );
    let err = boot
        .bot
        .patch(&root.id, "x")
        .await
        .expect_err("not the author");
    assert_eq!(err.status(), Some(403));
    let err = boot
        .demo
        .patch(&root.id, &format!("{max}x"))
        .await
        .expect_err("patch too long");
    assert_eq!(err.status(), Some(400));

    let np = NewPost {
        channel_id: ch.clone(),
        message: "retry me".into(),
        pending_post_id: format!("{}:1", boot.bot.id),
        props: serde_json::from_value(json!({"ccfleet": {"kind": "answer"}})).expect("props"),
        ..NewPost::default()
    };
    let a = boot.bot.create_post(&np).await.expect("first");
    let b = boot.bot.create_post(&np).await.expect("retry");
    assert_eq!(a.id, b.id, "pending_post_id dedupes a retry");
    assert_eq!(a.props["ccfleet"]["kind"], "answer");

    let edited = boot
        .bot
        .patch_post(&a.id, &json!({"message": "edited", "props": {"k": "v"}}))
        .await
        .expect("patch");
    assert_eq!(edited.message, "edited");
    assert!(edited.edit_at > 0);
    assert_eq!(
        boot.demo.get_post(&a.id).await.expect("get").props["k"],
        "v"
    );

    let thread = boot
        .demo
        .thread(&reply.id)
        .await
        .expect("thread of a reply");
    assert_eq!(
        thread.order,
        vec![reply.id.clone(), root.id.clone()],
        "newest first, root last"
    );
    assert_eq!(thread.posts[&root.id].reply_count, 1);

    let page = boot.demo.channel_posts(ch, 0, 2).await.expect("page 0");
    assert_eq!(page.order.len(), 2);
    assert_eq!(page.order[0], a.id, "newest first");
    let (status, _) = boot
        .demo
        .raw(
            Method::GET,
            &format!("/api/v4/channels/{ch}/posts?per_page=500"),
            None,
        )
        .await
        .expect("big page");
    assert_eq!(status, 200);

    boot.demo.delete_post(&root.id).await.expect("delete");
    let err = boot
        .demo
        .get_post(&reply.id)
        .await
        .expect_err("replies go with the root");
    assert_eq!(err.status(), Some(404));
    h.finish().await;
}

#[tokio::test]
async fn reactions_and_files() {
    let h = Harness::start().await;
    let boot = bootstrap(&h.base).await.expect("bootstrap");
    let ch = &boot.channel.id;
    let post = boot.bot.post(ch, "approve?", None).await.expect("post");
    let r = boot.demo.react(&post.id, "+1").await.expect("react");
    assert_eq!(
        (r.user_id.as_str(), r.emoji_name.as_str()),
        (boot.demo.id.as_str(), "+1")
    );
    assert!(
        boot.demo
            .get_post(&post.id)
            .await
            .expect("get")
            .has_reactions
    );
    assert_eq!(boot.bot.reactions(&post.id).await.expect("list").len(), 1);
    let err = boot
        .demo
        .raw(
            Method::POST,
            "/api/v4/reactions",
            Some(&json!({"user_id": boot.bot.id, "post_id": post.id, "emoji_name": "x"})),
        )
        .await
        .expect_err("cannot react for someone else");
    assert_eq!(err.status(), Some(403));
    boot.demo.unreact(&post.id, "+1").await.expect("unreact");
    assert!(boot.bot.reactions(&post.id).await.expect("list").is_empty());

    let info = boot
        .bot
        .upload_file(ch, "report.txt", b"hello file".to_vec())
        .await
        .expect("upload");
    assert_eq!(
        (info.name.as_str(), info.extension.as_str(), info.size),
        ("report.txt", "txt", 10)
    );
    let with_file = boot
        .bot
        .create_post(&NewPost {
            channel_id: ch.clone(),
            message: "see file".into(),
            file_ids: vec![info.id.clone()],
            ..NewPost::default()
        })
        .await
        .expect("post with file");
    assert_eq!(with_file.file_ids, vec![info.id.clone()]);
    assert_eq!(with_file.metadata.files[0].id, info.id);
    assert_eq!(
        boot.demo.get_file(&info.id).await.expect("download"),
        b"hello file"
    );
    assert_eq!(
        boot.demo.file_info(&info.id).await.expect("info").post_id,
        with_file.id
    );
    let secret = boot
        .admin
        .create_channel(&boot.team.id, "vault", "Vault", true)
        .await
        .expect("private");
    let err = boot
        .demo
        .upload_file(&secret.id, "x.txt", b"x".to_vec())
        .await
        .expect_err("not a member");
    assert_eq!(err.status(), Some(403));
    h.finish().await;
}
