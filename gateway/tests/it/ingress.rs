use std::time::Duration;

use common::testsupport::TestEnv;
use proto::{ChatEvent, Message};
use serde_json::json;

use crate::harness::{
    RunningGateway, SimEnv, eventually, gateway_config, options, stream_messages,
};

#[tokio::test]
async fn with_two_replicas_listening_one_mention_reaches_jetstream_once() {
    let env = TestEnv::new().await;
    let sim = SimEnv::start().await;
    let config = gateway_config(&env, &sim);
    let a = RunningGateway::start(config.clone(), options("a")).await;
    let b = RunningGateway::start(config.clone(), options("b")).await;
    // Both replicas must be connected before the post.
    eventually(
        Duration::from_secs(10),
        "both gateways on the WebSocket",
        || async {
            let stats = sim.control.stats().await.ok()?;
            (stats.websocket_connections >= 2).then_some(())
        },
    )
    .await;

    let post = sim
        .boot
        .demo
        .post(
            &sim.boot.channel.id,
            "@claude [[write:hello.txt]] please",
            None,
        )
        .await
        .unwrap();

    let nats = env.nats().await;
    let names = proto::names::Names::new(env.prefix.clone());
    // Both replicas published (one as a duplicate).
    eventually(
        Duration::from_secs(10),
        "both replicas to publish",
        || async {
            let published = a
                .metric("ccfleet_gateway_publish_latency_seconds_count")
                .await
                + b.metric("ccfleet_gateway_publish_latency_seconds_count")
                    .await;
            (published >= 2.0).then_some(())
        },
    )
    .await;
    assert_eq!(
        stream_messages(&nats, &names.events_stream()).await,
        1,
        "exactly one event in the stream"
    );

    let js = async_nats::jetstream::new(nats.clone());
    let message = js
        .get_stream(names.events_stream())
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    let event = ChatEvent::decode(&message.payload).unwrap();
    assert_eq!(event.event_id, post.id);
    assert_eq!(event.thread.as_str(), post.id);
    assert_eq!(event.user.username, "alice");
    match event.body {
        proto::v1::EventBody::Message(m) => {
            assert!(m.mentions_bot);
            assert_eq!(m.text, "@claude [[write:hello.txt]] please");
        }
        other => panic!("unexpected {other:?}"),
    }
    // A reply in that thread now reaches the stream too (the bot is in the thread).
    sim.boot
        .demo
        .post(&sim.boot.channel.id, "and a follow-up", Some(&post.id))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the follow-up", || async {
        (stream_messages(&nats, &names.events_stream()).await == 2).then_some(())
    })
    .await;
    // A post that neither mentions the bot nor is in its threads does not.
    sim.boot
        .demo
        .post(&sim.boot.channel.id, "just chatting", None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stream_messages(&nats, &names.events_stream()).await, 2);
    // A reaction on the session's root reaches the stream once, with who reacted.
    sim.boot.demo.react(&post.id, "x").await.unwrap();
    eventually(Duration::from_secs(10), "the reaction", || async {
        (stream_messages(&nats, &names.events_stream()).await == 3).then_some(())
    })
    .await;
    let stream = js.get_stream(names.events_stream()).await.unwrap();
    let reaction = ChatEvent::decode(&stream.get_raw_message(3).await.unwrap().payload).unwrap();
    assert_eq!(reaction.user.username, "alice");
    assert!(
        matches!(reaction.body, proto::v1::EventBody::Reaction(ref r) if r.emoji == "x" && r.added)
    );
    sim.assert_contract().await;
}

#[tokio::test]
async fn a_forged_webhook_token_and_a_forged_action_context_are_rejected_with_nothing_published() {
    let env = TestEnv::new().await;
    let sim = SimEnv::start().await;
    let config = gateway_config(&env, &sim);
    let gw = RunningGateway::start(
        config.clone(),
        gateway::Options {
            websocket: false,
            ..options("a")
        },
    )
    .await;
    let http = reqwest::Client::new();

    let forged = http
        .post(format!("{}/hooks/outgoing", gw.url))
        .json(&json!({"token": "not-the-token-0000000000000", "post_id": "p1", "channel_id": "c1", "user_id": "u1", "text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);

    let forged_form = http
        .post(format!("{}/hooks/outgoing", gw.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("token=wrong&post_id=p1&channel_id=c1&user_id=u1&text=hi")
        .send()
        .await
        .unwrap();
    assert_eq!(forged_form.status(), 401);

    let forged_action = http
        .post(format!("{}/hooks/action", gw.url))
        .json(&json!({"user_id": "u1", "channel_id": "c1", "post_id": "p1", "context": {"token": "eyJ0IjoieCJ9.AAAA"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged_action.status(), 403);

    // A context signed with another key, and a stale one signed with the right key.
    let other = common::signing::Signer::new(b"another key");
    let claims = common::signing::ActionClaims {
        thread: "t1".into(),
        channel: "c1".into(),
        action: "allow".into(),
        data: "{}".into(),
        expires_at_s: common::now_ms() / 1000 + 60,
    };
    let stale = common::signing::Signer::new(config.gateway.signing_key.expose().as_bytes()).sign(
        &common::signing::ActionClaims {
            expires_at_s: 1,
            ..claims.clone()
        },
    );
    for token in [other.sign(&claims), stale] {
        let response = http
            .post(format!("{}/hooks/action", gw.url))
            .json(&json!({"user_id": "u1", "channel_id": "c1", "post_id": "p1", "context": {"token": token}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403);
    }
    let slash = http
        .post(format!("{}/hooks/slash", gw.url))
        .header("Authorization", "Token wrong")
        .form(&[
            ("text", "do things"),
            ("user_id", "u1"),
            ("channel_id", "c1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(slash.status(), 401);

    let nats = env.nats().await;
    let names = proto::names::Names::new(env.prefix.clone());
    assert_eq!(
        stream_messages(&nats, &names.events_stream()).await,
        0,
        "nothing published"
    );

    let signer = common::signing::Signer::new(config.gateway.signing_key.expose().as_bytes());
    // Ids that would change a subject or key (a token separator, wildcards, whitespace) are
    // refused before anything is published, even in a correctly signed click.
    for (thread, post, user) in [
        ("t1.evil", "p1", "u1"),
        ("t1", "p1.>", "u1"),
        ("t1", "p1", "u*"),
        ("t1", "p1", "u 1"),
        ("t1", "", "u1"),
    ] {
        let token = signer.sign(&common::signing::ActionClaims {
            thread: thread.into(),
            ..claims.clone()
        });
        let response = http
            .post(format!("{}/hooks/action", gw.url))
            .json(&json!({"user_id": user, "channel_id": "c1", "post_id": post, "trigger_id": "tr0", "context": {"token": token}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{thread} {post} {user}");
        let body = response.text().await.unwrap();
        assert!(body.contains("Id"), "the refusal names the id: {body}");
    }
    // A link token is no button context, whatever it carries.
    let link = signer.sign(&common::signing::LinkClaims {
        thread: "t1".into(),
        prefix: String::new(),
        expires_at_s: common::now_ms() / 1000 + 60,
    });
    let as_button = http
        .post(format!("{}/hooks/action", gw.url))
        .json(&json!({"user_id": "u1", "channel_id": "c1", "post_id": "p1", "context": {"token": link}}))
        .send()
        .await
        .unwrap();
    assert_eq!(as_button.status(), 403);
    assert_eq!(
        stream_messages(&nats, &names.events_stream()).await,
        0,
        "nothing published"
    );

    // The genuine article is accepted, and acknowledged only after JetStream had it.
    let ok = http
        .post(format!("{}/hooks/action", gw.url))
        .json(&json!({"user_id": "u1", "channel_id": "c1", "post_id": "p1", "trigger_id": "tr1", "context": {"token": signer.sign(&claims)}}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(stream_messages(&nats, &names.events_stream()).await, 1);
}

/// A gateway whose outgoing webhook (trigger `claude:`) and `/claude` command are
/// registered in the simulator the way an admin does it, through the API; with the
/// WebSocket listener too when `websocket`.
async fn with_integrations(
    env: &TestEnv,
    sim: &SimEnv,
    websocket: bool,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let listener_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gateway_url = format!("http://127.0.0.1:{listener_port}");
    let hook = sim
        .boot
        .admin
        .create_outgoing_webhook(&loadtest::mmsim::model::OutgoingWebhook {
            team_id: sim.boot.team.id.clone(),
            channel_id: sim.boot.channel.id.clone(),
            display_name: "claude".into(),
            trigger_words: vec!["claude:".into()],
            trigger_when: 1,
            callback_urls: vec![format!("{gateway_url}/hooks/outgoing")],
            content_type: "application/json".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let command = sim
        .boot
        .admin
        .create_slash_command(&loadtest::mmsim::model::Command {
            team_id: sim.boot.team.id.clone(),
            trigger: "claude".into(),
            method: "P".into(),
            url: format!("{gateway_url}/hooks/slash"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut config = gateway_config(env, sim);
    config.mattermost.webhook_token = common::config::Secret::new(hook.token.clone());
    config.mattermost.slash_token = common::config::Secret::new(command.token.clone());
    config.gateway.listen = format!("127.0.0.1:{listener_port}");
    let listener = tokio::net::TcpListener::bind(&config.gateway.listen)
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let gateway = gateway::Gateway::build(
        config,
        gateway::Options {
            websocket,
            ..options("a")
        },
    )
    .await
    .unwrap();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { gateway.run(listener, token).await.unwrap() });
    if websocket {
        eventually(
            Duration::from_secs(10),
            "the gateway on the WebSocket",
            || async {
                let stats = sim.control.stats().await.ok()?;
                (stats.websocket_connections >= 1).then_some(())
            },
        )
        .await;
    }
    (shutdown, task)
}

/// The events in the stream, in order.
async fn events(env: &TestEnv) -> Vec<ChatEvent> {
    let js = async_nats::jetstream::new(env.nats().await);
    let names = proto::names::Names::new(env.prefix.clone());
    let stream = js.get_stream(names.events_stream()).await.unwrap();
    let mut out = Vec::new();
    let mut seq = 1;
    while let Ok(message) = stream.get_raw_message(seq).await {
        out.push(ChatEvent::decode(&message.payload).unwrap());
        seq += 1;
    }
    out
}

#[tokio::test]
async fn a_webhook_reply_in_a_thread_and_its_websocket_copy_name_the_same_thread() {
    for websocket in [false, true] {
        let env = TestEnv::new().await;
        let sim = SimEnv::start().await;
        let (shutdown, task) = with_integrations(&env, &sim, websocket).await;
        let root = sim
            .boot
            .demo
            .post(&sim.boot.channel.id, "@claude start here", None)
            .await
            .unwrap();
        let reply = sim
            .boot
            .demo
            .post(&sim.boot.channel.id, "claude: and go on", Some(&root.id))
            .await
            .unwrap();
        eventually(Duration::from_secs(10), "the reply's event", || async {
            events(&env)
                .await
                .into_iter()
                .find(|e| e.event_id == reply.id)
        })
        .await;
        // Both copies (when there are two) had their chance to be published.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let all = events(&env).await;
        let copies: Vec<&ChatEvent> = all.iter().filter(|e| e.event_id == reply.id).collect();
        assert_eq!(
            copies.len(),
            1,
            "one event for one post (websocket: {websocket})"
        );
        assert_eq!(copies[0].thread.as_str(), root.id, "websocket: {websocket}");
        match &copies[0].body {
            proto::v1::EventBody::Message(m) => {
                assert_eq!(
                    m.root_id.as_ref().map(|r| r.as_str()),
                    Some(root.id.as_str())
                );
            }
            other => panic!("not a message: {other:?}"),
        }
        shutdown.cancel();
        task.await.unwrap();
        sim.assert_contract().await;
    }
}

#[tokio::test]
async fn outgoing_webhooks_and_slash_commands_dispatched_by_the_simulator_are_published() {
    let env = TestEnv::new().await;
    let sim = SimEnv::start().await;
    let (shutdown, task) = with_integrations(&env, &sim, false).await;

    sim.boot
        .demo
        .post(&sim.boot.channel.id, "claude: summarise the repo", None)
        .await
        .unwrap();
    let nats = env.nats().await;
    let names = proto::names::Names::new(env.prefix.clone());
    eventually(Duration::from_secs(10), "the webhook event", || async {
        (stream_messages(&nats, &names.events_stream()).await == 1).then_some(())
    })
    .await;

    let response = sim
        .boot
        .demo
        .execute_command(&sim.boot.channel.id, "/claude help", None)
        .await
        .unwrap();
    assert!(response.text.contains("Mention the bot"), "{response:?}");
    assert_eq!(response.text, proto::commands::help());
    assert_eq!(
        stream_messages(&nats, &names.events_stream()).await,
        1,
        "help is answered, not published"
    );
    // Every session verb needs the session's thread; outside one it is not a prompt.
    for command in [
        "/claude status",
        "/claude invite @bob",
        "/claude mode interactive",
    ] {
        let response = sim
            .boot
            .demo
            .execute_command(&sim.boot.channel.id, command, None)
            .await
            .unwrap();
        assert!(
            response.text.contains("works inside a session's thread"),
            "{command}: {response:?}"
        );
    }
    assert_eq!(stream_messages(&nats, &names.events_stream()).await, 1);
    sim.boot
        .demo
        .execute_command(
            &sim.boot.channel.id,
            "/claude [[write:a.txt]] write a file",
            None,
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the slash-command event",
        || async { (stream_messages(&nats, &names.events_stream()).await == 2).then_some(()) },
    )
    .await;
    shutdown.cancel();
    task.await.unwrap();
    sim.assert_contract().await;
}

#[tokio::test]
async fn a_websocket_that_cannot_resume_catches_up_on_posts_made_meanwhile() {
    let env = TestEnv::new().await;
    let sim = SimEnv::start().await;
    // The gateway reaches Mattermost through a proxy this test cuts.
    let proxy = loadtest::faults::Proxy::start(sim.sim.addr())
        .await
        .unwrap();
    let mut config = gateway_config(&env, &sim);
    config.mattermost.url = format!("http://{}", proxy.addr());
    let mut only_websocket = options("a");
    only_websocket.egress = false;
    let gateway = RunningGateway::start(config, only_websocket).await;
    let connected = |n: usize| {
        let control = sim.control.clone();
        move || {
            let control = control.clone();
            async move {
                let stats = control.stats().await.ok()?;
                (stats.websocket_connections == n).then_some(())
            }
        }
    };
    eventually(
        Duration::from_secs(10),
        "the gateway on the WebSocket",
        connected(1),
    )
    .await;
    let channel = &sim.boot.channel.id;
    let root = sim
        .boot
        .demo
        .post(channel, "@claude start here", None)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the root's event", || async {
        events(&env)
            .await
            .into_iter()
            .find(|e| e.event_id == root.id)
    })
    .await;

    proxy.cut();
    eventually(
        Duration::from_secs(10),
        "the WebSocket to drop",
        connected(0),
    )
    .await;
    // More events than the server keeps for a resume (its dead queue holds 128).
    for i in 0..140 {
        sim.boot
            .demo
            .post(channel, &format!("just chatting {i}"), None)
            .await
            .unwrap();
    }
    let mention = sim
        .boot
        .demo
        .post(channel, "hey @claude, a new question", None)
        .await
        .unwrap();
    let reply = sim
        .boot
        .demo
        .post(channel, "and a follow-up", Some(&root.id))
        .await
        .unwrap();
    proxy.restore();

    let found = eventually(
        Duration::from_secs(40),
        "the posts made while disconnected",
        || async {
            let all = events(&env).await;
            let mention = all.iter().find(|e| e.event_id == mention.id).cloned()?;
            let reply = all.iter().find(|e| e.event_id == reply.id).cloned()?;
            Some((mention, reply))
        },
    )
    .await;
    let (mention_event, reply_event) = found;
    assert_eq!(mention_event.thread.as_str(), mention.id);
    assert_eq!(mention_event.user.username, "alice");
    match &mention_event.body {
        proto::v1::EventBody::Message(m) => {
            assert!(m.mentions_bot);
            assert_eq!(m.text, "hey @claude, a new question");
        }
        other => panic!("not a message: {other:?}"),
    }
    assert_eq!(reply_event.thread.as_str(), root.id);
    match &reply_event.body {
        proto::v1::EventBody::Message(m) => {
            assert_eq!(
                m.root_id.as_ref().map(|r| r.as_str()),
                Some(root.id.as_str())
            );
        }
        other => panic!("not a message: {other:?}"),
    }
    // The chatter is not for the bot, and nothing came twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = events(&env).await;
    let ids: Vec<&str> = all.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(
        ids,
        [root.id.as_str(), mention.id.as_str(), reply.id.as_str()]
    );
    assert!(
        gateway
            .metric("ccfleet_gateway_events_in_total{source=\"websocket_catch_up\"}")
            .await
            >= 2.0
    );
    proxy.stop().await;
    sim.assert_contract().await;
}
