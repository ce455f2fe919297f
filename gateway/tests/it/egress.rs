use std::time::{Duration, Instant};

use common::testsupport::TestEnv;
use proto::names::{MSG_ID_HEADER, Names};
use proto::v1::{Op, ReplyOp};
use proto::{ChannelId, LocalRef, Message, SessionId, ThreadId};

use crate::harness::{RunningGateway, SimEnv, eventually, gateway_config, options};

/// Publishes reply operations the way a worker does.
struct FakeWorker {
    js: async_nats::jetstream::Context,
    names: Names,
    channel: ChannelId,
}

impl FakeWorker {
    async fn new(env: &TestEnv, channel: &str) -> Self {
        let client = env.nats().await;
        let topology =
            common::nats::Topology::from_config(&env.config.nats, Duration::from_secs(2));
        common::nats::ensure_fabric(&client, &topology)
            .await
            .unwrap();
        Self {
            js: async_nats::jetstream::new(client),
            names: topology.names,
            channel: ChannelId::new(channel),
        }
    }

    async fn publish(&self, thread: &str, session: &str, seq: u64, op: Op) {
        let reply = ReplyOp {
            thread: ThreadId::new(thread),
            channel: self.channel.clone(),
            session: SessionId::new(session),
            seq,
            created_at_ms: common::now_ms(),
            op,
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(MSG_ID_HEADER, format!("reply:{session}:{seq}").as_str());
        self.js
            .publish_with_headers(
                self.names.reply_subject(&reply.thread),
                headers,
                reply.encode().unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

impl FakeWorker {
    /// Posts `reply 1` … `reply n` into every thread, round-robin, as fast as possible.
    async fn burst(&self, roots: &[loadtest::mmsim::model::Post], session_prefix: &str, n: u32) {
        for n in 1..=n {
            for (t, root) in roots.iter().enumerate() {
                let session = format!("{session_prefix}{t}");
                let op = Op::CreatePost {
                    local: local(&session, n),
                    message: format!("reply {n}"),
                    props_json: None,
                };
                self.publish(&root.id, &session, u64::from(n), op).await;
            }
        }
    }
}

/// Waits until every thread holds exactly `reply 1` … `reply n`, in that order: nothing
/// lost, nothing doubled, no error note.
async fn assert_replies_in_order(
    sim: &SimEnv,
    roots: &[loadtest::mmsim::model::Post],
    n: u32,
    within: Duration,
) {
    for root in roots {
        let posts = eventually(within, "all replies of a thread", || async {
            let thread = sim.boot.demo.thread(&root.id).await.ok()?;
            let mut posts: Vec<_> = thread
                .posts
                .values()
                .filter(|p| p.id != root.id)
                .cloned()
                .collect();
            posts.sort_by_key(|p| p.create_at);
            (posts.len() >= n as usize).then_some(posts)
        })
        .await;
        let texts: Vec<String> = posts.iter().map(|p| p.message.clone()).collect();
        let expected: Vec<String> = (1..=n).map(|n| format!("reply {n}")).collect();
        assert_eq!(
            texts, expected,
            "thread {}: in order, nothing lost, doubled or added",
            root.id
        );
    }
}

fn local(session: &str, seq: u32) -> LocalRef {
    LocalRef {
        session: SessionId::new(session),
        seq,
    }
}

#[tokio::test]
async fn five_hundred_streamed_updates_become_few_patches_with_the_exact_final_text() {
    let env = TestEnv::new().await;
    let sim = SimEnv::start().await;
    let config = gateway_config(&env, &sim);
    let interval = Duration::from_millis(config.gateway.coalesce_interval_ms);
    let _gw = RunningGateway::start(config, options("a")).await;
    let root = sim
        .boot
        .demo
        .post(&sim.boot.channel.id, "@claude go", None)
        .await
        .unwrap();
    let worker = FakeWorker::new(&env, &sim.boot.channel.id).await;

    let started = Instant::now();
    worker
        .publish(
            &root.id,
            "s1",
            1,
            Op::CreatePost {
                local: local("s1", 1),
                message: "…".into(),
                props_json: None,
            },
        )
        .await;
    let mut text = String::new();
    for i in 0..500u64 {
        text.push_str(&format!("word{i} "));
        worker
            .publish(
                &root.id,
                "s1",
                i + 2,
                Op::UpdatePost {
                    local: local("s1", 1),
                    message: text.clone(),
                    props_json: None,
                    streaming: true,
                },
            )
            .await;
        if i % 25 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let duration = started.elapsed();
    // The post shows exactly the last text.
    let reply = eventually(Duration::from_secs(20), "the final text", || async {
        let thread = sim.boot.demo.thread(&root.id).await.ok()?;
        let reply = thread.posts.values().find(|p| p.id != root.id)?.clone();
        (reply.message == text).then_some(reply)
    })
    .await;
    let applied = started.elapsed();
    let stats = sim.control.stats().await.unwrap();
    let patches = stats.count("PUT", "/api/v4/posts/{post_id}/patch");
    let bound = (applied.as_millis() / interval.as_millis()) as u64 + 2;
    println!(
        "500 updates published in {duration:?}, applied in {applied:?}: {patches} PATCH calls (bound {bound})"
    );
    assert!(patches <= bound, "{patches} PATCH calls exceed {bound}");
    assert!(patches >= 1);
    assert_eq!(reply.root_id, root.id);
    sim.assert_contract().await;
}

#[tokio::test]
async fn a_burst_under_the_servers_rate_limit_completes_in_order_with_no_visible_429() {
    let env = TestEnv::new().await;
    let sim = SimEnv::start().await;
    let mut config = gateway_config(&env, &sim);
    config.mattermost.requests_per_second = 10;
    let worker = FakeWorker::new(&env, &sim.boot.channel.id).await;
    let mut roots = Vec::new();
    for i in 0..20 {
        roots.push(
            sim.boot
                .demo
                .post(&sim.boot.channel.id, &format!("@claude thread {i}"), None)
                .await
                .unwrap(),
        );
    }
    sim.control
        .set_faults(&loadtest::mmsim::Faults {
            // Keyed by token, so the test's own reads do not eat the bot's budget.
            rate_limit: Some(loadtest::mmsim::RateLimit {
                per_sec: 10,
                max_burst: 20,
                vary_by_user: true,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let _gw = RunningGateway::start(
        config,
        gateway::Options {
            websocket: false,
            ..options("a")
        },
    )
    .await;
    // 300 operations: 15 posts in each of 20 threads, published as fast as possible.
    worker.burst(&roots, "s", 15).await;
    assert_replies_in_order(&sim, &roots, 15, Duration::from_secs(90)).await;
    let stats = sim.control.stats().await.unwrap();
    println!(
        "429s answered by the simulator (retried, never shown): {}",
        stats.with_status(429)
    );
}

#[tokio::test]
async fn killing_the_egress_leader_mid_burst_loses_nothing() {
    let env = TestEnv::new().await;
    let sim = SimEnv::start().await;
    let mut config = gateway_config(&env, &sim);
    config.mattermost.requests_per_second = 40;
    let worker = FakeWorker::new(&env, &sim.boot.channel.id).await;
    let mut roots = Vec::new();
    for i in 0..5 {
        roots.push(
            sim.boot
                .demo
                .post(&sim.boot.channel.id, &format!("@claude thread {i}"), None)
                .await
                .unwrap(),
        );
    }
    let leader = RunningGateway::start(
        config.clone(),
        gateway::Options {
            websocket: false,
            ..options("leader")
        },
    )
    .await;
    eventually(Duration::from_secs(5), "leadership", || async {
        (leader.metric("ccfleet_gateway_egress_leader").await == 1.0).then_some(())
    })
    .await;
    let standby = RunningGateway::start(
        config.clone(),
        gateway::Options {
            websocket: false,
            ..options("standby")
        },
    )
    .await;
    worker.burst(&roots, "k", 20).await;
    // Let the leader apply part of the burst, then kill it.
    eventually(
        Duration::from_secs(20),
        "part of the burst applied",
        || async {
            let stats = sim.control.stats().await.ok()?;
            (stats.count("POST", "/api/v4/posts") >= 5 + 20).then_some(())
        },
    )
    .await;
    leader.kill();
    assert_replies_in_order(&sim, &roots, 20, Duration::from_secs(60)).await;
    assert_eq!(standby.metric("ccfleet_gateway_egress_leader").await, 1.0);
}
