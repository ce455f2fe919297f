//! The model API failing: while the CLI retries, the turn's answer post says so (which
//! error, which retry, when the next try is) and is updated in place; the final answer says
//! the turn succeeded after retries, or failed although it was retried.

use std::time::Duration;

use common::config::RuntimeKind;
use common::testsupport::TestEnv;

use super::support::{fleet_with, is_answer, wait_for_post};

const TURN: Duration = Duration::from_secs(90);

/// What the answer post shows while the CLI waits to retry a 529.
const RETRYING: &str = "The model API is overloaded (529); retry";

#[tokio::test]
async fn a_model_api_that_fails_twice_is_shown_retrying_then_answers() {
    let env = TestEnv::new().await;
    let fleet = fleet_with(&env, 1, 4, RuntimeKind::Process, "default", |config| {
        config.model.max_retries = 4;
    })
    .await;
    let root = fleet
        .demo()
        .post(fleet.channel_id(), "@claude [[flaky:529:2]] hello", None)
        .await
        .unwrap();

    // The CLI waits about 0.5 s, then 1.2 s before its retries: the post shows each wait.
    let retrying = wait_for_post(&fleet, &root.id, TURN, "the retry line", |p| {
        p.message.contains(RETRYING)
    })
    .await;
    assert!(
        retrying.message.contains(" of 4 in "),
        "{}",
        retrying.message
    );

    let answer = wait_for_post(&fleet, &root.id, TURN, "the answer", is_answer).await;
    assert_eq!(
        answer.id, retrying.id,
        "the retry line was the answer post's"
    );
    assert!(answer.message.contains("Done."), "{}", answer.message);
    assert!(!answer.message.contains(RETRYING), "{}", answer.message);
    assert!(
        answer
            .message
            .contains("(after 2 retries of the model API)"),
        "{}",
        answer.message
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_model_api_that_keeps_failing_ends_the_turn_saying_it_was_retried() {
    let env = TestEnv::new().await;
    let fleet = fleet_with(&env, 1, 4, RuntimeKind::Process, "default", |config| {
        config.model.max_retries = 2;
    })
    .await;
    let root = fleet
        .demo()
        .post(fleet.channel_id(), "@claude [[error:529]] hello", None)
        .await
        .unwrap();

    let retrying = wait_for_post(&fleet, &root.id, TURN, "the retry line", |p| {
        p.message.contains(RETRYING)
    })
    .await;
    assert!(
        retrying.message.contains(" of 2 in "),
        "{}",
        retrying.message
    );

    let answer = wait_for_post(&fleet, &root.id, TURN, "the answer", is_answer).await;
    assert_eq!(
        answer.id, retrying.id,
        "the retry line was the answer post's"
    );
    assert!(
        answer
            .message
            .contains(":warning: The model API is overloaded"),
        "{}",
        answer.message
    );
    assert!(
        answer
            .message
            .contains("It was retried 2 times before the turn gave up."),
        "{}",
        answer.message
    );
    assert!(!answer.message.contains(RETRYING), "{}", answer.message);
    fleet.stop().await;
}
