//! What outlives the events retention: a session thread keeps working after its events
//! and replies have expired from JetStream, for as long as its session record exists.

use std::time::Duration;

use common::config::RuntimeKind;
use common::testsupport::TestEnv;

use super::support::{answers, bot_posts, eventually, fleet_with, is_answer, wait_for_post};

const TURN: Duration = Duration::from_secs(90);

/// Messages in the named stream of this test's fleet.
async fn messages(env: &TestEnv, stream: String) -> u64 {
    let js = async_nats::jetstream::new(env.nats().await);
    let mut stream = js.get_stream(stream).await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test]
async fn a_thread_whose_events_and_replies_expired_still_answers_and_updates_its_header() {
    let env = TestEnv::new().await;
    let names = proto::names::Names::new(env.prefix.clone());
    let mut fleet = fleet_with(&env, 1, 4, RuntimeKind::Process, "acceptEdits", |c| {
        c.nats.events_max_age_s = 4;
        c.nats.duplicate_window_s = 1;
    })
    .await;
    let root = fleet
        .demo()
        .post(fleet.channel_id(), "@claude say hello", None)
        .await
        .unwrap();
    wait_for_post(&fleet, &root.id, TURN, "the first answer", is_answer).await;
    // Let the header's last edit be applied, then give the session up: the next message is
    // taken by a new worker that knows the thread only from its records.
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.workers.remove(0).stop().await;
    fleet.add_worker().await.unwrap();

    // Everything JetStream kept of the thread expires.
    eventually(
        Duration::from_secs(30),
        "the events and replies to expire",
        || async {
            let left = messages(&env, names.events_stream()).await
                + messages(&env, names.replies_stream()).await;
            (left == 0).then_some(())
        },
    )
    .await;

    fleet
        .demo()
        .post(fleet.channel_id(), "and once more, please", Some(&root.id))
        .await
        .unwrap();
    eventually(TURN, "an answer to the reply", || async {
        (answers(&fleet, &root.id).await.len() >= 2).then_some(())
    })
    .await;
    // The header (created before the expiry) is still edited, now naming the new worker,
    // and nothing was dead-lettered.
    let worker = fleet.workers[0].id.clone();
    eventually(
        Duration::from_secs(30),
        "the header to name the new worker",
        || async {
            bot_posts(&fleet, &root.id)
                .await
                .iter()
                .any(|p| p.message.contains("Claude Code session") && p.message.contains(&worker))
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        messages(&env, names.dead_stream()).await,
        0,
        "no dead letters"
    );
    let posts = bot_posts(&fleet, &root.id).await;
    assert!(
        !posts
            .iter()
            .any(|p| p.message.contains("could not be delivered")),
        "no dead-letter note"
    );
    let requests = fleet.model.message_requests();
    assert!(
        requests
            .iter()
            .any(|r| r.transcript().contains("and once more, please")),
        "the model saw the reply"
    );
    fleet.stop().await;
}
