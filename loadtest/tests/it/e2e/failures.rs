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

/// Makes every new key in this fleet's leases bucket fail to be written (the stream is
/// full, and refuses new messages) while `full`, keeping the keys it has.
async fn leases_full(env: &TestEnv, full: bool) {
    let js = async_nats::jetstream::new(env.nats().await);
    let names = proto::names::Names::new(env.prefix.clone());
    let kv = js.get_key_value(names.leases_bucket()).await.unwrap();
    let mut stream = js
        .get_stream(format!("KV_{}", names.leases_bucket()))
        .await
        .unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    if full {
        kv.put("placeholder", "x".into()).await.unwrap();
        config.max_messages = i64::try_from(stream.info().await.unwrap().state.messages).unwrap();
    } else {
        config.max_messages = -1;
    }
    js.update_stream(&config).await.unwrap();
}

#[tokio::test]
async fn a_new_thread_whose_lease_cannot_be_written_is_claimed_once_it_can() {
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 1, 4, RuntimeKind::Process, "acceptEdits").await;
    // A first thread makes sure the fleet is up (egress leader elected, worker claiming).
    let first = fleet
        .demo()
        .post(fleet.channel_id(), "@claude say hello", None)
        .await
        .unwrap();
    wait_for_post(&fleet, &first.id, TURN, "the first answer", is_answer).await;

    leases_full(&env, true).await;
    let root = fleet
        .demo()
        .post(fleet.channel_id(), "@claude say hello again", None)
        .await
        .unwrap();
    // Several claim attempts, all failing to write the lease.
    tokio::time::sleep(Duration::from_secs(4)).await;
    leases_full(&env, false).await;

    // The failed write was not taken for "someone else holds it": the thread is claimed.
    wait_for_post(&fleet, &root.id, TURN, "an answer", is_answer).await;
    fleet.stop().await;
}

#[tokio::test]
async fn a_message_holding_what_the_database_refuses_is_answered() {
    // PostgreSQL's text refuses NUL; a message holding one could never be recorded, and
    // was tried again for a minute before the thread heard anything.
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 1, 4, RuntimeKind::Process, "acceptEdits").await;
    let root = fleet
        .demo()
        .post(fleet.channel_id(), "@claude say hello\u{0} there", None)
        .await
        .unwrap();
    wait_for_post(
        &fleet,
        &root.id,
        Duration::from_secs(30),
        "an answer",
        is_answer,
    )
    .await;
    let posts = super::support::bot_posts(&fleet, &root.id).await;
    assert!(
        !posts.iter().any(|p| p.message.contains("could not handle")),
        "no failure notice"
    );
    let client = env.pool().get().await.unwrap();
    let row = client
        .query_one(
            "SELECT body FROM inbound_messages WHERE event_id = $1",
            &[&root.id],
        )
        .await
        .unwrap();
    let body: String = row.get(0);
    assert_eq!(body, "@claude say hello\u{FFFD} there", "stored, made safe");
    fleet.stop().await;
}

#[tokio::test]
async fn a_reply_the_dispatcher_cannot_route_ends_with_a_notice_instead_of_spinning() {
    let env = TestEnv::new().await;
    let mut fleet = fleet(&env, 1, 4, RuntimeKind::Process, "acceptEdits").await;
    let root = fleet
        .demo()
        .post(fleet.channel_id(), "@claude say hello", None)
        .await
        .unwrap();
    wait_for_post(&fleet, &root.id, TURN, "the first answer", is_answer).await;
    // The session is given up: the next reply goes through the dispatcher, which must
    // read the session record to know the thread has one.
    fleet.workers.remove(0).stop().await;
    fleet.add_worker().await.unwrap();
    let client = env.pool().get().await.unwrap();
    client
        .batch_execute("ALTER TABLE sessions RENAME TO sessions_away")
        .await
        .unwrap();
    fleet
        .demo()
        .post(fleet.channel_id(), "and once more, please", Some(&root.id))
        .await
        .unwrap();
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
    assert!(notice.message.contains("database"), "{}", notice.message);
    client
        .batch_execute("ALTER TABLE sessions_away RENAME TO sessions")
        .await
        .unwrap();
    fleet.stop().await;
}

/// The turns whose checkpoints are recorded for `thread`, in order.
async fn checkpointed_turns(env: &TestEnv, thread: &str) -> Vec<i32> {
    let client = env.pool().get().await.unwrap();
    client
        .query(
            "SELECT turn FROM checkpoints WHERE thread_id = $1 ORDER BY turn",
            &[&thread],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn a_turn_whose_checkpoint_cannot_be_stored_is_told_and_saved_before_its_session_is_let_go() {
    let env = TestEnv::new().await;
    // This fleet reaches the object store through a proxy the test can cut.
    let upstream = env
        .config
        .object_store
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = loadtest::faults::Proxy::start(upstream).await.unwrap();
    let endpoint = format!("http://{}", proxy.addr());
    let mut fleet =
        super::support::fleet_with(&env, 1, 4, RuntimeKind::Process, "acceptEdits", |c| {
            c.object_store.endpoint = endpoint;
        })
        .await;
    let root = fleet
        .demo()
        .post(fleet.channel_id(), "@claude [[write:a.txt]] write a", None)
        .await
        .unwrap();
    wait_for_post(&fleet, &root.id, TURN, "the first answer", is_answer).await;
    eventually(TURN, "turn 1's checkpoint", || async {
        (checkpointed_turns(&env, &root.id).await == [1]).then_some(())
    })
    .await;

    proxy.cut();
    fleet
        .demo()
        .post(
            fleet.channel_id(),
            "[[write:b.txt]] and write b",
            Some(&root.id),
        )
        .await
        .unwrap();
    let notice = wait_for_post(
        &fleet,
        &root.id,
        Duration::from_secs(150),
        "a not-saved notice",
        |p| p.message.contains("could not be saved"),
    )
    .await;
    assert!(
        notice.message.contains("turn 2") && notice.message.contains("turn 1"),
        "says what a takeover would lose: {}",
        notice.message
    );
    assert_eq!(
        answers(&fleet, &root.id).await.len(),
        2,
        "the answer is shown"
    );
    assert_eq!(checkpointed_turns(&env, &root.id).await, [1]);

    // The store is back; the worker is told to stop: before it lets the session go, the
    // unsaved turn is stored, so the next owner continues from it.
    proxy.restore();
    fleet.workers.remove(0).stop().await;
    assert_eq!(checkpointed_turns(&env, &root.id).await, [1, 2]);
    fleet.stop().await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_prompt_is_shown_only_once_recorded_and_a_click_on_one_without_a_record_is_answered() {
    let env = TestEnv::new().await;
    let (fleet, _root, prompt) = waiting_for_permission(&env).await;
    // By the time the prompt can be seen, its record names it.
    let client = env.pool().get().await.unwrap();
    let rows = client
        .query("SELECT approval_id, post_ref FROM approvals", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one stored request");

    // Its record is lost (say, restored from an older backup): a click is not met with
    // silence.
    client.batch_execute("DELETE FROM approvals").await.unwrap();
    let mut events = fleet.demo().websocket().await.unwrap();
    fleet.demo().click(&prompt.id, "allow").await.unwrap();
    let note = events
        .wait_for(Duration::from_secs(30), |e| {
            e.kind() == loadtest::mmsim::client::EventKind::EphemeralMessage
        })
        .await
        .expect("an ephemeral note to the clicker");
    let note = note.post().unwrap().message;
    assert!(note.contains("not known any more"), "{note}");
    fleet.stop().await;
}

#[tokio::test]
async fn an_admitted_outsider_message_survives_its_worker_dying_before_it_ran() {
    let env = TestEnv::new().await;
    let mut fleet = fleet(&env, 1, 4, RuntimeKind::Process, "acceptEdits").await;
    let bob = super::support::member(&fleet, "bob").await;
    let root = fleet
        .demo()
        .post(fleet.channel_id(), "@claude say hello", None)
        .await
        .unwrap();
    wait_for_post(&fleet, &root.id, TURN, "the first answer", is_answer).await;
    // Alice's next turn takes a while: bob's message, once let in, waits behind it.
    fleet
        .demo()
        .post(
            fleet.channel_id(),
            "[[slow:20000]] take your time",
            Some(&root.id),
        )
        .await
        .unwrap();
    bob.post(fleet.channel_id(), "hello from bob", Some(&root.id))
        .await
        .unwrap();
    let held = eventually(TURN, "bob's message held", || async {
        super::support::bot_posts(&fleet, &root.id)
            .await
            .into_iter()
            .find(|p| !p.actions().is_empty() && p.message.contains("hello from bob"))
    })
    .await;
    fleet.demo().click(&held.id, "guestonce").await.unwrap();
    let client = env.pool().get().await.unwrap();
    eventually(TURN, "the decision stored", || async {
        let row = client
            .query_opt(
                "SELECT 1 FROM approvals WHERE kind = 'guest' AND status = 'allowed'",
                &[],
            )
            .await
            .unwrap();
        row.map(|_| ())
    })
    .await;
    assert!(
        !fleet
            .model
            .message_requests()
            .iter()
            .any(|r| r.transcript().contains("hello from bob")),
        "bob's message has not run yet"
    );
    // The worker dies mid-turn; another takes the thread over.
    fleet.add_worker().await.unwrap();
    fleet.workers.remove(0).kill();

    eventually(Duration::from_secs(150), "bob's message run", || async {
        fleet
            .model
            .message_requests()
            .iter()
            .any(|r| r.transcript().contains("hello from bob"))
            .then_some(())
    })
    .await;
    fleet.stop().await;
}

#[tokio::test]
async fn a_turn_over_its_time_is_stopped_with_a_note_and_the_session_goes_on() {
    let env = TestEnv::new().await;
    let fleet = super::support::fleet_with(&env, 1, 4, RuntimeKind::Process, "acceptEdits", |c| {
        c.worker.turn_timeout_s = 5;
    })
    .await;
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[slow:60000]] take your time",
            None,
        )
        .await
        .unwrap();
    let stopped = wait_for_post(&fleet, &root.id, TURN, "the stopped answer", |p| {
        p.message.contains("ran longer than 5 s")
    })
    .await;
    assert!(stopped.message.contains("Stopped"), "{}", stopped.message);
    // The slot and the session are still there: the next message is answered.
    fleet
        .demo()
        .post(fleet.channel_id(), "and now quickly", Some(&root.id))
        .await
        .unwrap();
    eventually(TURN, "an answer to the next message", || async {
        (answers(&fleet, &root.id).await.len() >= 2).then_some(())
    })
    .await;
    fleet.stop().await;
}

#[tokio::test]
async fn an_event_of_a_newer_wire_version_is_left_for_an_upgraded_worker_not_dropped() {
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 1, 4, RuntimeKind::Process, "acceptEdits").await;
    let names = proto::names::Names::new(env.prefix.clone());
    let js = async_nats::jetstream::new(env.nats().await);
    // What an upgraded gateway would write: an envelope of the next version (postcard
    // writes the version first, as one byte while it is below 128).
    let thread = proto::ThreadId::new("fromthefuture");
    let event = proto::ChatEvent {
        event_id: "future1".into(),
        thread: thread.clone(),
        channel: fleet.channel_id().into(),
        user: proto::v1::User {
            id: "u1".into(),
            username: "alice".into(),
        },
        received_at_ms: 0,
        body: proto::v1::EventBody::Message(proto::v1::MessagePosted {
            post_id: "future1".into(),
            root_id: None,
            text: "@claude hello from the future".into(),
            file_ids: Vec::new(),
            mentions_bot: true,
            channel_type: proto::v1::ChannelType::Open,
            source: proto::v1::Source::WebSocket,
            create_at_ms: 0,
        }),
    };
    let mut bytes = proto::Message::encode(&event).unwrap();
    bytes[0] = u8::try_from(proto::CURRENT + 1).unwrap();
    assert!(matches!(
        <proto::ChatEvent as proto::Message>::decode(&bytes),
        Err(proto::Error::UnsupportedVersion { .. })
    ));
    js.publish(names.event_subject(&thread), bytes.into())
        .await
        .unwrap()
        .await
        .unwrap();
    // Offered again and again (NAK with a delay), never terminated.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let mut consumer = js
        .get_stream(names.events_stream())
        .await
        .unwrap()
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&names.dispatch_consumer())
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(
        info.num_ack_pending + info.num_pending as usize,
        1,
        "{info:?}"
    );
    assert!(info.delivered.stream_sequence >= 1);
    fleet.stop().await;
}
