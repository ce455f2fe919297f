//! A thread's event whose handling fails: retried while the failure lasts, answered
//! visibly when it does not end, never dropped — in the worker and in the gateway.

use std::time::Duration;

use common::config::RuntimeKind;
use common::testsupport::TestEnv;
use loadtest::fleet::LocalFleet;
use loadtest::mmsim::model::Post;

use super::support::{answers, eventually, fleet, is_answer, wait_for_post};

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

/// Turns direct reads of this fleet's posts bucket (the bot's thread membership and post
/// references) off or on, keeping its entries: while off, every read fails.
async fn posts_reads(env: &TestEnv, on: bool) {
    let js = async_nats::jetstream::new(env.nats().await);
    let name = format!(
        "KV_{}",
        proto::names::Names::new(env.prefix.clone()).posts_bucket()
    );
    let mut stream = js.get_stream(&name).await.unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    config.allow_direct = on;
    js.update_stream(&config).await.unwrap();
}

#[tokio::test]
async fn a_reply_while_the_gateway_cannot_read_thread_membership_is_forwarded_once_it_can() {
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 1, 4, RuntimeKind::Process, "acceptEdits").await;
    let root = fleet
        .demo()
        .post(fleet.channel_id(), "@claude say hello", None)
        .await
        .unwrap();
    wait_for_post(&fleet, &root.id, TURN, "the first answer", is_answer).await;
    // Let the header's last edit of the turn be applied first.
    tokio::time::sleep(Duration::from_secs(2)).await;

    posts_reads(&env, false).await;
    fleet
        .demo()
        .post(fleet.channel_id(), "and once more, please", Some(&root.id))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    posts_reads(&env, true).await;

    // The reply in the session's thread was held, not taken for a stranger's message.
    eventually(TURN, "an answer to the reply", || async {
        (answers(&fleet, &root.id).await.len() >= 2).then_some(())
    })
    .await;
    let requests = fleet.model.message_requests();
    assert!(
        requests
            .iter()
            .any(|r| r.transcript().contains("and once more, please")),
        "the model saw the reply"
    );
    fleet.stop().await;
}
