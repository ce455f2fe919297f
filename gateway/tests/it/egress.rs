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

/// Window 16: a create that reached Mattermost, whose answer the leader never saw, is not
/// posted twice by the next leader even when it comes back after Mattermost's 30 s
/// `pending_post_id` cache forgot it. Default lease TTL and ack wait, a real interruption
/// (the answer is lost in a proxy, the leader is killed).
#[tokio::test]
async fn a_create_whose_answer_was_lost_is_not_posted_twice_after_a_slow_failover() {
    let env = TestEnv::new().await;
    let sim = SimEnv::start().await;
    let sim_addr: std::net::SocketAddr = sim
        .sim
        .base_url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let proxy = loadtest::faults::Proxy::start(sim_addr).await.unwrap();
    let mut config = gateway_config(&env, &sim);
    config.mattermost.url = format!("http://{}", proxy.addr());
    let defaults = common::config::Config::load(&common::config::Sources::default()).unwrap();
    config.worker.lease_ttl_s = defaults.worker.lease_ttl_s;
    let worker = FakeWorker::new(&env, &sim.boot.channel.id).await;
    let root = sim
        .boot
        .demo
        .post(&sim.boot.channel.id, "@claude go", None)
        .await
        .unwrap();
    let no_ws = |replica| gateway::Options {
        websocket: false,
        ..options(replica)
    };
    let leader = RunningGateway::start(config.clone(), no_ws("leader")).await;
    eventually(Duration::from_secs(5), "leadership", || async {
        (leader.metric("ccfleet_gateway_egress_leader").await == 1.0).then_some(())
    })
    .await;
    let standby = RunningGateway::start(config.clone(), no_ws("standby")).await;

    // The create reaches Mattermost; its answer never comes back.
    proxy.mute();
    worker
        .publish(
            &root.id,
            "w16",
            1,
            Op::CreatePost {
                local: local("w16", 1),
                message: "the answer".into(),
                props_json: None,
            },
        )
        .await;
    eventually(
        Duration::from_secs(10),
        "the create in Mattermost",
        || async {
            let thread = sim.boot.demo.thread(&root.id).await.ok()?;
            (thread.posts.len() == 2).then_some(())
        },
    )
    .await;
    let created = Instant::now();
    leader.kill();
    // Mattermost stays out of reach until its pending_post_id cache forgot the create, as
    // when the failover (lease TTL + ack wait) meets an outage.
    proxy.cut();
    tokio::time::sleep_until((created + Duration::from_secs(31)).into()).await;
    proxy.restore();

    // The standby took over and finished the operation: nothing pending on the consumer.
    let client = env.nats().await;
    let js = async_nats::jetstream::new(client);
    eventually(
        Duration::from_secs(90),
        "the operation acknowledged",
        || async {
            let stream = js.get_stream(worker.names.replies_stream()).await.ok()?;
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
                .get_consumer(&worker.names.egress_consumer())
                .await
                .ok()?;
            let info = consumer.info().await.ok()?;
            (info.num_ack_pending == 0
                && info.num_pending == 0
                && info.delivered.stream_sequence >= 1)
                .then_some(())
        },
    )
    .await;
    // The standby leads (under load its lease may lapse and be taken again meanwhile).
    eventually(Duration::from_secs(30), "the standby to lead", || async {
        (standby.metric("ccfleet_gateway_egress_leader").await == 1.0).then_some(())
    })
    .await;
    let thread = sim.boot.demo.thread(&root.id).await.unwrap();
    let replies: Vec<&str> = thread
        .posts
        .values()
        .filter(|p| p.id != root.id)
        .map(|p| p.message.as_str())
        .collect();
    assert_eq!(replies, ["the answer"], "exactly one post for the create");
    sim.assert_contract().await;
}

/// Window 10: egress failing for real (its consumer deleted under it) turns `/readyz` red,
/// naming it, until it runs again; then replies flow again.
#[tokio::test]
async fn a_failed_egress_turns_readyz_red_restarts_and_applies_replies_again() {
    let env = TestEnv::new().await;
    let sim = SimEnv::start().await;
    let config = gateway_config(&env, &sim);
    let worker = FakeWorker::new(&env, &sim.boot.channel.id).await;
    let root = sim
        .boot
        .demo
        .post(&sim.boot.channel.id, "@claude go", None)
        .await
        .unwrap();
    let gw = RunningGateway::start(
        config,
        gateway::Options {
            websocket: false,
            ..options("a")
        },
    )
    .await;
    let readyz = || async {
        let response = reqwest::get(format!("{}/readyz", gw.url)).await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    };
    let replies = || async {
        let thread = sim.boot.demo.thread(&root.id).await.ok()?;
        let mut texts: Vec<String> = thread
            .posts
            .values()
            .filter(|p| p.id != root.id)
            .map(|p| p.message.clone())
            .collect();
        texts.sort();
        Some(texts)
    };
    let create = |seq: u32, text: &str| Op::CreatePost {
        local: local("h1", seq),
        message: text.to_owned(),
        props_json: None,
    };
    worker.publish(&root.id, "h1", 1, create(1, "before")).await;
    eventually(Duration::from_secs(20), "the first reply", || async {
        (replies().await? == ["before"]).then_some(())
    })
    .await;
    assert_eq!(readyz().await.unwrap().0, 200);

    let js = async_nats::jetstream::new(env.nats().await);
    js.get_stream(worker.names.replies_stream())
        .await
        .unwrap()
        .delete_consumer(&worker.names.egress_consumer())
        .await
        .unwrap();
    let (status, body) = eventually(Duration::from_secs(10), "readyz red", || async {
        readyz().await.filter(|(status, _)| *status != 200)
    })
    .await;
    assert_eq!((status, body.as_str()), (503, "down: egress"));
    eventually(Duration::from_secs(30), "readyz green again", || async {
        (readyz().await?.0 == 200).then_some(())
    })
    .await;
    worker.publish(&root.id, "h1", 2, create(2, "after")).await;
    eventually(
        Duration::from_secs(20),
        "the reply after the restart",
        || async { (replies().await? == ["after", "before"]).then_some(()) },
    )
    .await;
}
