//! A thread's event whose handling fails: retried while the failure lasts, answered
//! visibly when it does not end, never dropped.

use std::time::Duration;

use common::config::RuntimeKind;
use common::testsupport::TestEnv;
use loadtest::fleet::LocalFleet;
use loadtest::mmsim::model::Post;

use super::support::{fleet, is_answer, wait_for_post};

const TURN: Duration = Duration::from_secs(90);

async fn permission_prompt(fleet: &LocalFleet, root: &str) -> Post {
    wait_for_post(fleet, root, TURN, "a permission request", |p| {
        !p.actions().is_empty() && p.message.contains("Permission needed")
    })
    .await
}

/// A fleet whose new thread waits for permission to run a command: (fleet, root, prompt).
async fn waiting_for_permission(env: &TestEnv) -> (LocalFleet, Post, Post) {
    let fleet = fleet(env, 1, 4, RuntimeKind::Process, "default").await;
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[bash:echo ok > out.txt]] run it",
            None,
        )
        .await
        .unwrap();
    let prompt = permission_prompt(&fleet, &root.id).await;
    (fleet, root, prompt)
}

/// Makes every read and write of the approvals table fail (in this test's database only)
/// until [`restore_approvals`].
async fn break_approvals(env: &TestEnv) {
    let client = env.pool().get().await.unwrap();
    client
        .batch_execute("ALTER TABLE approvals RENAME TO approvals_away")
        .await
        .unwrap();
}

async fn restore_approvals(env: &TestEnv) {
    let client = env.pool().get().await.unwrap();
    client
        .batch_execute("ALTER TABLE approvals_away RENAME TO approvals")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_click_while_the_database_fails_is_applied_once_it_is_back() {
    let env = TestEnv::new().await;
    let (fleet, root, prompt) = waiting_for_permission(&env).await;

    break_approvals(&env).await;
    fleet.demo().click(&prompt.id, "allow").await.unwrap();
    // Long enough for a few deliveries of the click, all failing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = fleet.demo().get_post(&prompt.id).await.unwrap();
    assert!(!still.actions().is_empty(), "nothing was decided yet");
    restore_approvals(&env).await;

    // The click was kept, not taken as handled: it takes effect once the record is back.
    let done = wait_for_post(&fleet, &root.id, TURN, "the answer", is_answer).await;
    assert!(done.message.contains("Done"), "{}", done.message);
    let prompt = fleet.demo().get_post(&prompt.id).await.unwrap();
    assert!(
        prompt.message.contains("**Allowed** by @alice"),
        "{}",
        prompt.message
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_click_that_keeps_failing_ends_with_a_notice_and_the_request_stays_answerable() {
    let env = TestEnv::new().await;
    let (fleet, root, prompt) = waiting_for_permission(&env).await;

    break_approvals(&env).await;
    fleet.demo().click(&prompt.id, "allow").await.unwrap();
    // Every delivery fails (backoff 0.5 s doubling to 30 s, MAX_DELIVER deliveries): the
    // last one tells the thread.
    let notice = wait_for_post(
        &fleet,
        &root.id,
        Duration::from_secs(150),
        "a failure notice",
        |p| {
            p.message
                .contains("could not handle this after several tries")
        },
    )
    .await;
    assert!(
        notice
            .message
            .contains("record could not be read or written"),
        "{}",
        notice.message
    );
    restore_approvals(&env).await;

    // The request itself was not decided by the failure: a new click answers it.
    let still = fleet.demo().get_post(&prompt.id).await.unwrap();
    assert!(!still.actions().is_empty(), "the request still waits");
    fleet.demo().click(&prompt.id, "allow").await.unwrap();
    let done = wait_for_post(&fleet, &root.id, TURN, "the answer", is_answer).await;
    assert!(done.message.contains("Done"), "{}", done.message);
    let notices = super::support::bot_posts(&fleet, &root.id)
        .await
        .into_iter()
        .filter(|p| p.message.contains("after several tries"))
        .count();
    assert_eq!(notices, 1, "one notice for the failed click");
    fleet.stop().await;
}
