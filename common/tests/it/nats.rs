use std::time::Duration;

use async_nats::jetstream;
use common::nats::{Topology, ensure_fabric};
use common::testsupport::TestEnv;
use futures::StreamExt;
use proto::names::MSG_ID_HEADER;
use proto::{ChatEvent, Message, ThreadId};

fn topology(env: &TestEnv) -> Topology {
    Topology::from_config(&env.config.nats, Duration::from_secs(5))
}

#[tokio::test]
async fn jetstream_publish_is_acknowledged_and_deduplicated() {
    let env = TestEnv::new().await;
    let client = env.nats().await;
    let fabric = ensure_fabric(&client, &topology(&env)).await.unwrap();
    // A second call opens what the first created.
    ensure_fabric(&client, &topology(&env)).await.unwrap();

    let names = topology(&env).names;
    let subject = names.event_subject(&ThreadId::from("thread1"));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(MSG_ID_HEADER, "post-1");
    let first = fabric
        .js
        .publish_with_headers(subject.clone(), headers.clone(), "one".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!first.duplicate);
    let second = fabric
        .js
        .publish_with_headers(subject.clone(), headers, "one again".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        second.duplicate,
        "same Nats-Msg-Id within the window is a duplicate"
    );
    assert_eq!(first.sequence, second.sequence);

    let mut events = fabric.events.clone();
    assert_eq!(events.info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn kv_compare_and_set_lets_exactly_one_writer_win() {
    let env = TestEnv::new().await;
    let client = env.nats().await;
    let fabric = ensure_fabric(&client, &topology(&env)).await.unwrap();
    let leases = fabric.leases;

    let revision = leases.create("thread-a", "worker-1".into()).await.unwrap();
    assert!(
        leases.create("thread-a", "worker-2".into()).await.is_err(),
        "create is create-if-absent"
    );

    let renewed = leases
        .update("thread-a", "worker-1".into(), revision)
        .await
        .unwrap();
    let stale = leases.update("thread-a", "worker-2".into(), revision).await;
    assert!(stale.is_err(), "an update with a stale revision must fail");
    let entry = leases.entry("thread-a").await.unwrap().unwrap();
    assert_eq!(entry.revision, renewed);
    assert_eq!(&entry.value[..], b"worker-1");
}

#[tokio::test]
async fn a_chat_event_travels_through_jetstream_with_its_trace_context() {
    let env = TestEnv::new().await;
    let client = env.nats().await;
    let fabric = ensure_fabric(&client, &topology(&env)).await.unwrap();
    let names = topology(&env).names;

    let event = ChatEvent {
        event_id: "post-9".into(),
        thread: ThreadId::from("thread9"),
        channel: "chan".into(),
        user: proto::v1::User {
            id: "user".into(),
            username: "alice".into(),
        },
        received_at_ms: common::now_ms(),
        body: proto::v1::EventBody::Reaction(proto::v1::Reaction {
            post_id: "post-9".into(),
            emoji: "+1".into(),
            added: true,
            create_at_ms: 1,
        }),
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        proto::trace::TRACEPARENT,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    fabric
        .js
        .publish_with_headers(
            names.event_subject(&event.thread),
            headers,
            event.encode().unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let consumer = fabric
        .events
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("it".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.fetch().max_messages(1).messages().await.unwrap();
    let message = messages.next().await.unwrap().unwrap();
    assert_eq!(ChatEvent::decode(&message.payload).unwrap(), event);
    let cx = common::telemetry::extract(message.headers.as_ref());
    use opentelemetry::trace::TraceContextExt;
    assert_eq!(
        cx.span().span_context().trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    message.ack().await.unwrap();
}

#[tokio::test]
async fn the_events_stream_allows_the_configured_consumers_and_an_older_limit_is_raised() {
    let env = TestEnv::new().await;
    let client = env.nats().await;
    let mut topology = topology(&env);
    topology.max_consumers = 1200;
    let fabric = ensure_fabric(&client, &topology).await.unwrap();
    let mut events = fabric.events.clone();
    assert_eq!(events.info().await.unwrap().config.max_consumers, 1200);

    // More consumers than nats-server's own default of 1000 per stream.
    for n in 0..1010 {
        fabric
            .events
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some(format!("c{n}")),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|err| panic!("consumer {n}: {err}"));
    }

    // A stream made with a lower limit is raised by the next start.
    topology.max_consumers = 5000;
    let fabric = ensure_fabric(&client, &topology).await.unwrap();
    let mut events = fabric.events.clone();
    assert_eq!(events.info().await.unwrap().config.max_consumers, 5000);
}

/// An autoscaler reads the claim consumer's lag before any worker has started: the fabric
/// creates the consumer, and its lag (num_pending + num_ack_pending, as KEDA's
/// nats-jetstream scaler computes it) counts what waits in the queue.
#[tokio::test]
async fn the_claim_consumer_exists_before_any_worker_and_counts_the_queue() {
    let env = TestEnv::new().await;
    let client = env.nats().await;
    let fabric = ensure_fabric(&client, &topology(&env)).await.unwrap();
    let names = topology(&env).names;
    for n in 0..3 {
        let subject = names.queue_subject(&ThreadId::from(format!("thread{n}").as_str()));
        fabric
            .js
            .publish(subject, "waiting".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let consumer = fabric
        .queue
        .get_consumer::<jetstream::consumer::pull::Config>(&names.claim_consumer())
        .await
        .expect("ensure_fabric creates the claim consumer");
    // The server counts a consumer's pending messages just after it stores them (CI saw
    // 0 right after the publish acks): what an autoscaler polls settles at once.
    let lag = common::testsupport::eventually(
        std::time::Duration::from_secs(5),
        "the claim consumer counts the queue",
        || {
            let mut consumer = consumer.clone();
            async move {
                let info = consumer.info().await.ok()?;
                let lag = info.num_pending + info.num_ack_pending as u64;
                (lag == 3).then_some(lag)
            }
        },
    )
    .await;
    assert_eq!(lag, 3);
    // A worker opening it with its own (shared) configuration gets the same consumer.
    let reopened = fabric
        .queue
        .get_or_create_consumer(
            &names.claim_consumer(),
            common::nats::shared_pull_config(names.claim_consumer()),
        )
        .await;
    assert!(reopened.is_ok(), "{:?}", reopened.err());
    // And a second start of the fabric keeps it.
    ensure_fabric(&client, &topology(&env)).await.unwrap();
}

/// `nats.url` may list a cluster's nodes, comma-separated (deploy/compose/env.example's
/// cluster profile): each is a server to try, not one malformed URL. Found by the chaos
/// run, whose fleet could not start with the documented setting.
#[tokio::test]
async fn a_comma_separated_url_lists_the_servers_to_try() {
    let env = TestEnv::new().await;
    let mut config = env.config.nats.clone();
    let real = config.url.clone();
    // A node that is down first: the client goes on to the next.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("nats://{}", down.local_addr().unwrap());
    drop(down);
    config.url = format!("{dead}, {real}");
    let client = common::nats::connect(&config, "cluster-list")
        .await
        .expect("connects through the list");
    client.flush().await.unwrap();
    assert_eq!(
        client.connection_state(),
        async_nats::connection::State::Connected
    );
}
