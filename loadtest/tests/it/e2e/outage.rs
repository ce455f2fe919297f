//! Mattermost failing under the fleet: replies written while it does not answer wait, in
//! order, and arrive once it is back, without a storm of requests meanwhile; what it
//! refuses for good is kept as a dead letter and the thread is told once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::config::RuntimeKind;
use common::testsupport::TestEnv;
use loadtest::fleet::LocalFleet;
use loadtest::mmsim::model::Post;
use loadtest::mmsim::{Fault500, Faults};
use proto::names::Names;

use super::support::{
    answers, assert_contract, bot_posts, eventually, fleet, is_answer, wait_for_post,
};

const TURN: Duration = Duration::from_secs(90);
/// Longer than the ≈ 12 s after which egress used to give an operation up, and than the
/// replies consumer's 10 s ack wait.
const OUTAGE: Duration = Duration::from_secs(28);
/// The bot's failed requests an outage of [`OUTAGE`] may cost: `mattermost.breaker_failures`
/// (5) before the circuit opens, plus one probe per cool-down — cool-downs double from
/// 0.5 s and jitter shortens them by at most half, so even the shortest run (0.25 s, 0.5 s,
/// 1 s, 2 s, 4 s, 8 s, 15 s) fits at most 7 probes in 28 s — plus a few requests already
/// on their way when it opened. Retrying per operation and thread, as before, costs more
/// with every thread and every operation waiting.
const MAX_REQUESTS_IN_OUTAGE: u64 = 20;

fn dead_letter_note(post: &Post) -> bool {
    post.message
        .contains("could not be delivered to Mattermost")
}

fn idle_header(post: &Post) -> bool {
    post.message.contains("Claude Code session") && post.message.contains(":zzz: idle")
}

/// How many messages the fake model says it was sent: one more turn, more messages.
fn messages_seen(answer: &Post) -> usize {
    let text = &answer.message;
    let start = text.find("I was sent ").expect("a fake model's answer") + "I was sent ".len();
    text[start..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a message count")
}

async fn model_saw(fleet: &LocalFleet, text: &str) {
    eventually(TURN, text, || async {
        fleet
            .model
            .message_requests()
            .iter()
            .any(|r| r.transcript().contains(text))
            .then_some(())
    })
    .await;
}

/// Messages of this fleet's egress consumer JetStream delivered more than once.
async fn redelivered(env: &TestEnv) -> usize {
    let js = async_nats::jetstream::new(env.nats().await);
    let names = Names::new(env.prefix.clone());
    let stream = js.get_stream(names.replies_stream()).await.unwrap();
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(&names.egress_consumer()).await.unwrap();
    consumer.info().await.unwrap().num_redelivered
}

async fn dead_letters(env: &TestEnv) -> u64 {
    let js = async_nats::jetstream::new(env.nats().await);
    let names = Names::new(env.prefix.clone());
    let mut stream = js.get_stream(names.dead_stream()).await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test]
async fn replies_written_while_mattermost_fails_arrive_once_and_in_order_after_it() {
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 1, 4, RuntimeKind::Process, "acceptEdits").await;
    // A thread answered before the outage: the fleet is up, and the gateway has looked up
    // alice's name (a REST call, which would fail during the outage).
    let before = fleet
        .demo()
        .post(fleet.channel_id(), "@claude say hello", None)
        .await
        .unwrap();
    wait_for_post(&fleet, &before.id, TURN, "the first answer", is_answer).await;
    wait_for_post(&fleet, &before.id, TURN, "the idle header", idle_header).await;

    // Every request the bot makes fails; people go on posting.
    fleet.control.reset_stats().await.unwrap();
    fleet
        .control
        .set_faults(&Faults {
            error_500: Some(Fault500 {
                fraction: 1.0,
                user_id: Some(fleet.boot.bot.id.clone()),
                ..Fault500::default()
            }),
            ..Faults::default()
        })
        .await
        .unwrap();
    let outage = Instant::now();
    let prompts = [
        "@claude first question",
        "second question",
        "third question",
    ];
    let root = fleet
        .demo()
        .post(fleet.channel_id(), prompts[0], None)
        .await
        .unwrap();
    // One turn after another: each follow-up once the model has seen the one before.
    for pair in prompts.windows(2) {
        model_saw(&fleet, pair[0].trim_start_matches("@claude ")).await;
        fleet
            .demo()
            .post(fleet.channel_id(), pair[1], Some(&root.id))
            .await
            .unwrap();
    }
    model_saw(&fleet, prompts[2]).await;
    tokio::time::sleep(OUTAGE.saturating_sub(outage.elapsed())).await;
    let during = fleet.control.stats().await.unwrap();
    assert!(
        bot_posts(&fleet, &root.id).await.is_empty(),
        "nothing reached the thread during the outage"
    );
    fleet.control.set_faults(&Faults::default()).await.unwrap();

    let done = eventually(TURN, "three answers", || async {
        let done = answers(&fleet, &root.id).await;
        (done.len() >= 3).then_some(done)
    })
    .await;
    // Let anything still queued (the last header edit) go out before counting.
    wait_for_post(&fleet, &root.id, TURN, "the idle header", idle_header).await;
    let done_again = answers(&fleet, &root.id).await;
    assert_eq!(done_again.len(), 3, "each answered exactly once: {done:#?}");
    let seen: Vec<usize> = done_again.iter().map(messages_seen).collect();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "answers appear in the order of the turns: {seen:?}"
    );
    let posts = bot_posts(&fleet, &root.id).await;
    let distinct: HashSet<&str> = posts.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(distinct.len(), posts.len(), "no post doubled: {posts:#?}");
    for thread in [&root.id, &before.id] {
        let notes = bot_posts(&fleet, thread).await;
        assert!(
            !notes.iter().any(dead_letter_note),
            "nothing was given up: {notes:#?}"
        );
    }
    assert_eq!(dead_letters(&env).await, 0);

    let failed = during.with_status(500);
    assert!(failed >= 1, "the bot met the outage");
    assert!(
        failed <= MAX_REQUESTS_IN_OUTAGE,
        "a circuit breaker, not a retry storm: {failed} requests in {OUTAGE:?}"
    );
    assert_eq!(
        redelivered(&env).await,
        0,
        "replies waited with this leader, not redelivered after the ack wait"
    );
    assert_contract(&fleet).await;
    fleet.stop().await;
}

#[tokio::test]
async fn edits_of_a_deleted_post_are_dead_lettered_and_the_thread_is_told_once() {
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 1, 4, RuntimeKind::Process, "acceptEdits").await;
    let root = fleet
        .demo()
        .post(fleet.channel_id(), "@claude say hello", None)
        .await
        .unwrap();
    wait_for_post(&fleet, &root.id, TURN, "the first answer", is_answer).await;
    let header = wait_for_post(&fleet, &root.id, TURN, "the idle header", idle_header).await;

    // The session header is deleted; the next turn edits it twice (working, then idle),
    // and Mattermost answers 404 to both, for good.
    fleet.boot.bot.delete_post(&header.id).await.unwrap();
    fleet
        .demo()
        .post(fleet.channel_id(), "and once more", Some(&root.id))
        .await
        .unwrap();
    eventually(TURN, "the second answer", || async {
        (answers(&fleet, &root.id).await.len() >= 2).then_some(())
    })
    .await;
    eventually(TURN, "both refused edits kept as dead letters", || async {
        (dead_letters(&env).await >= 2).then_some(())
    })
    .await;

    let notes: Vec<Post> = bot_posts(&fleet, &root.id)
        .await
        .into_iter()
        .filter(dead_letter_note)
        .collect();
    assert_eq!(notes.len(), 1, "one note for the post: {notes:#?}");
    assert!(notes[0].message.contains("404"), "{}", notes[0].message);
    assert_eq!(answers(&fleet, &root.id).await.len(), 2);
    assert_contract(&fleet).await;
    fleet.stop().await;
}
