//! The thread as people use it: permission requests, questions and plans answered by
//! buttons and reactions, who may answer, outsiders and invitations, access lists, modes,
//! and a request that stays pending across a worker crash.

use std::time::Duration;

use common::config::RuntimeKind;
use common::testsupport::TestEnv;
use loadtest::fleet::LocalFleet;
use loadtest::mmsim::client::EventKind;
use loadtest::mmsim::model::Post;

use super::support::{
    answers, bot_posts, eventually, fleet, fleet_with, has_buttons, is_answer, member,
    wait_for_post,
};

const TURN: Duration = Duration::from_secs(90);

fn action_ids(post: &Post) -> Vec<String> {
    post.actions()
        .iter()
        .filter_map(|a| a.get("id").and_then(|v| v.as_str()).map(str::to_owned))
        .collect()
}

/// The first open request (a post with buttons) whose text contains `marker`.
async fn request(fleet: &LocalFleet, root: &str, marker: &str) -> Post {
    wait_for_post(fleet, root, TURN, marker, |p| {
        has_buttons(p) && p.message.contains(marker)
    })
    .await
}

/// Waits until post `id` shows `text` and has no buttons left.
async fn settled(fleet: &LocalFleet, id: &str, text: &str) -> Post {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let post = fleet.demo().get_post(id).await.unwrap();
        if !has_buttons(&post) && post.message.contains(text) {
            return post;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {text:?} without buttons: {post:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn approval_rows(
    env: &TestEnv,
    thread: &str,
) -> Vec<(String, String, Option<String>, Option<String>, bool)> {
    let client = env.pool().get().await.unwrap();
    client
        .query(
            "SELECT kind, status, decided_by_name, decided_via, delivered_at IS NOT NULL
             FROM approvals WHERE thread_id = $1 ORDER BY created_at",
            &[&thread],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

async fn answer_attempts(env: &TestEnv, thread: &str) -> Vec<(String, String, String)> {
    let client = env.pool().get().await.unwrap();
    client
        .query(
            "SELECT username, action, outcome FROM approval_answers WHERE thread_id = $1 ORDER BY id",
            &[&thread],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn a_tool_request_is_allowed_by_button_and_an_outsider_s_click_changes_nothing() {
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 1, 4, RuntimeKind::Process, "default").await;
    let bob = member(&fleet, "bob").await;
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[bash:echo allowed > out.txt]] run it",
            None,
        )
        .await
        .unwrap();
    let prompt = request(&fleet, &root.id, "Permission needed").await;
    assert_eq!(action_ids(&prompt), ["allow", "allowalways", "deny"]);
    assert!(
        prompt.message.contains("echo allowed"),
        "{}",
        prompt.message
    );

    // Bob is neither the owner nor an approver: told so, privately; nothing changes.
    let mut bob_events = bob.websocket().await.unwrap();
    bob.click(&prompt.id, "allow").await.unwrap();
    let note = bob_events
        .wait_for(Duration::from_secs(30), |e| {
            e.kind() == EventKind::EphemeralMessage
        })
        .await
        .expect("an ephemeral note to bob");
    let note = note.post().unwrap().message;
    assert!(note.contains("Only @alice"), "{note}");
    let still = fleet.demo().get_post(&prompt.id).await.unwrap();
    assert!(has_buttons(&still), "the request still waits");
    assert!(answers(&fleet, &root.id).await.is_empty());
    assert_eq!(approval_rows(&env, &root.id).await[0].1, "pending");

    fleet.demo().click(&prompt.id, "allow").await.unwrap();
    let done = wait_for_post(&fleet, &root.id, TURN, "the answer", is_answer).await;
    assert!(done.message.contains("Done"), "{}", done.message);
    settled(&fleet, &prompt.id, "**Allowed** by @alice").await;
    let rows = approval_rows(&env, &root.id).await;
    assert_eq!(
        rows,
        vec![(
            "tool".to_owned(),
            "allowed".to_owned(),
            Some("alice".to_owned()),
            Some("button".to_owned()),
            true
        )]
    );
    assert_eq!(
        answer_attempts(&env, &root.id).await,
        vec![
            ("bob".to_owned(), "allow".to_owned(), "refused".to_owned()),
            (
                "alice".to_owned(),
                "allow".to_owned(),
                "accepted".to_owned()
            ),
        ]
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_reaction_denies_and_the_model_is_told() {
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 1, 4, RuntimeKind::Process, "default").await;
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[bash:touch forbidden.txt]] try it",
            None,
        )
        .await
        .unwrap();
    let prompt = request(&fleet, &root.id, "Permission needed").await;
    fleet.demo().react(&prompt.id, "-1").await.unwrap();
    let done = wait_for_post(&fleet, &root.id, TURN, "the answer", is_answer).await;
    assert!(done.message.contains("refused"), "{}", done.message);
    settled(&fleet, &prompt.id, "**Denied** by @alice").await;
    let last = fleet.model.message_requests().last().cloned().unwrap();
    assert!(
        last.transcript().contains("@alice denied this in the chat"),
        "{}",
        last.transcript()
    );
    let rows = approval_rows(&env, &root.id).await;
    assert_eq!(rows[0].1, "denied");
    assert_eq!(rows[0].3.as_deref(), Some("reaction"));
    fleet.stop().await;
}

#[tokio::test]
async fn a_question_is_answered_by_button() {
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 1, 4, RuntimeKind::Process, "default").await;
    let root = fleet
        .demo()
        .post(fleet.channel_id(), "@claude [[ask]] pick a color", None)
        .await
        .unwrap();
    let prompt = request(&fleet, &root.id, "Claude asks").await;
    assert_eq!(action_ids(&prompt), ["opt1", "opt2"]);
    assert!(
        prompt.message.contains(":one: **Red**"),
        "{}",
        prompt.message
    );
    fleet.demo().click(&prompt.id, "opt2").await.unwrap();
    wait_for_post(&fleet, &root.id, TURN, "the answer", is_answer).await;
    settled(&fleet, &prompt.id, "answered **Blue**").await;
    let transcript = fleet
        .model
        .message_requests()
        .last()
        .cloned()
        .unwrap()
        .transcript();
    assert!(transcript.contains("Blue"), "{transcript}");
    fleet.stop().await;
}

#[tokio::test]
async fn an_approved_plan_is_implemented() {
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 1, 4, RuntimeKind::Process, "plan").await;
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[plan]] [[write:hello.txt]] plan, then write hello.txt",
            None,
        )
        .await
        .unwrap();
    let plan = request(&fleet, &root.id, "Plan for approval").await;
    assert_eq!(action_ids(&plan), ["approve", "changes"]);
    fleet.demo().click(&plan.id, "approve").await.unwrap();
    settled(&fleet, &plan.id, "**Plan approved** by @alice").await;
    // Out of plan mode, writing the file asks like any edit.
    let write = request(&fleet, &root.id, "Permission needed").await;
    assert!(write.message.contains("hello.txt"), "{}", write.message);
    fleet.demo().click(&write.id, "allow").await.unwrap();
    wait_for_post(&fleet, &root.id, TURN, "the files of the turn", |p| {
        p.message.contains("Files from this turn") && p.message.contains("hello.txt")
    })
    .await;
    fleet.stop().await;
}

#[tokio::test]
async fn outsiders_wait_for_the_owner_until_invited_and_kicked_ones_wait_again() {
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 1, 4, RuntimeKind::Process, "default").await;
    let bob = member(&fleet, "bob").await;
    let root = fleet
        .demo()
        .post(fleet.channel_id(), "@claude hello", None)
        .await
        .unwrap();
    wait_for_post(&fleet, &root.id, TURN, "the first answer", is_answer).await;

    // A message from bob asks alice first; declined, it never runs.
    bob.post(fleet.channel_id(), "first from bob", Some(&root.id))
        .await
        .unwrap();
    let held = request(&fleet, &root.id, "@bob is not in this session").await;
    assert_eq!(action_ids(&held), ["guestonce", "guestinvite", "guestdeny"]);
    // Bob cannot let himself in.
    bob.click(&held.id, "guestinvite").await.unwrap();
    fleet.demo().click(&held.id, "guestdeny").await.unwrap();
    settled(&fleet, &held.id, "declined by @alice").await;

    // Invited (a thread message), bob's messages run.
    fleet
        .demo()
        .post(fleet.channel_id(), "/invite @bob", Some(&root.id))
        .await
        .unwrap();
    wait_for_post(&fleet, &root.id, TURN, "the header listing bob", |p| {
        p.message.contains("Claude Code session") && p.message.contains("@bob")
    })
    .await;
    bob.post(fleet.channel_id(), "second from bob", Some(&root.id))
        .await
        .unwrap();
    eventually(TURN, "bob's message answered", || async {
        (answers(&fleet, &root.id).await.len() == 2).then_some(())
    })
    .await;

    // Kicked (the slash command), bob waits for alice again; allowed once, it runs.
    fleet
        .demo()
        .execute_command(fleet.channel_id(), "/claude kick @bob", Some(&root.id))
        .await
        .unwrap();
    wait_for_post(&fleet, &root.id, TURN, "the kick note", |p| {
        p.message.contains("removed @bob")
    })
    .await;
    bob.post(fleet.channel_id(), "third from bob", Some(&root.id))
        .await
        .unwrap();
    let held = eventually(TURN, "bob's third message held", || async {
        bot_posts(&fleet, &root.id)
            .await
            .into_iter()
            .find(|p| has_buttons(p) && p.message.contains("third from bob"))
    })
    .await;
    fleet.demo().click(&held.id, "guestonce").await.unwrap();
    eventually(TURN, "bob's third message answered", || async {
        (answers(&fleet, &root.id).await.len() == 3).then_some(())
    })
    .await;
    let transcript = fleet
        .model
        .message_requests()
        .last()
        .cloned()
        .unwrap()
        .transcript();
    assert!(transcript.contains("third from bob"), "{transcript}");
    assert!(!transcript.contains("first from bob"), "{transcript}");
    let attempts = answer_attempts(&env, &root.id).await;
    assert!(
        attempts.contains(&(
            "bob".to_owned(),
            "guest_invite".to_owned(),
            "refused".to_owned()
        )),
        "{attempts:?}"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn users_outside_the_allowed_list_are_refused_and_the_per_user_cap_holds() {
    let env = TestEnv::new().await;
    let fleet = fleet_with(&env, 1, 4, RuntimeKind::Process, "default", |config| {
        config.worker.allowed_users = vec!["alice".into()];
        config.worker.max_sessions_per_user = 1;
    })
    .await;
    let mallory = member(&fleet, "mallory").await;
    let refused = mallory
        .post(fleet.channel_id(), "@claude hello", None)
        .await
        .unwrap();
    wait_for_post(&fleet, &refused.id, TURN, "a polite refusal", |p| {
        p.message.contains("Sorry @mallory")
    })
    .await;

    let first = fleet
        .demo()
        .post(fleet.channel_id(), "@claude one", None)
        .await
        .unwrap();
    wait_for_post(&fleet, &first.id, TURN, "the first answer", is_answer).await;
    let second = fleet
        .demo()
        .post(fleet.channel_id(), "@claude two", None)
        .await
        .unwrap();
    wait_for_post(&fleet, &second.id, TURN, "the cap message", |p| {
        p.message.contains("1 live Claude session")
    })
    .await;

    let client = env.pool().get().await.unwrap();
    for thread in [&refused.id, &second.id] {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM sessions WHERE thread_id = $1",
                &[thread],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "no session for a refused thread");
    }
    fleet.stop().await;
}

#[tokio::test]
async fn permissions_interactive_downgrades_an_auto_mode_and_never_upgrades() {
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 1, 4, RuntimeKind::Process, "acceptEdits").await;
    let root = fleet
        .demo()
        .post(fleet.channel_id(), "@claude [[write:a.txt]] first", None)
        .await
        .unwrap();
    wait_for_post(&fleet, &root.id, TURN, "the first answer", is_answer).await;
    let mut alice_events = fleet.demo().websocket().await.unwrap();
    fleet
        .demo()
        .execute_command(
            fleet.channel_id(),
            "/claude permissions bypassPermissions",
            Some(&root.id),
        )
        .await
        .unwrap();
    let note = alice_events
        .wait_for(Duration::from_secs(30), |e| {
            e.kind() == EventKind::EphemeralMessage
                && e.post()
                    .is_some_and(|p| p.message.contains("only be tightened"))
        })
        .await;
    assert!(note.is_ok(), "an upgrade is refused with a note");
    fleet
        .demo()
        .execute_command(
            fleet.channel_id(),
            "/claude permissions interactive",
            Some(&root.id),
        )
        .await
        .unwrap();
    wait_for_post(&fleet, &root.id, TURN, "the mode note", |p| {
        p.message.contains("from `acceptEdits` to `default`")
    })
    .await;
    fleet
        .demo()
        .post(fleet.channel_id(), "[[write:b.txt]] second", Some(&root.id))
        .await
        .unwrap();
    let prompt = request(&fleet, &root.id, "Permission needed").await;
    assert!(prompt.message.contains("b.txt"), "{}", prompt.message);
    fleet.demo().click(&prompt.id, "allow").await.unwrap();
    eventually(TURN, "the second answer", || async {
        (answers(&fleet, &root.id).await.len() == 2).then_some(())
    })
    .await;
    fleet.stop().await;
}

#[tokio::test]
async fn a_pending_request_survives_a_worker_crash_and_is_answered_after_it() {
    let env = TestEnv::new().await;
    let mut fleet = fleet(&env, 1, 4, RuntimeKind::Process, "default").await;
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[bash:echo survived > crash.txt]] run it",
            None,
        )
        .await
        .unwrap();
    let prompt = request(&fleet, &root.id, "Permission needed").await;
    // The owner dies while the request waits; another worker takes the thread over.
    fleet.add_worker().await.unwrap();
    let first = fleet.workers.remove(0);
    first.kill();
    // The resumed CLI asks again; the same post is re-bound, not a second one posted.
    let reasked = wait_for_post(&fleet, &root.id, TURN, "the re-asked request", |p| {
        p.id == prompt.id && p.message.contains("Asked again") && has_buttons(p)
    })
    .await;
    assert_eq!(action_ids(&reasked), ["allow", "allowalways", "deny"]);
    fleet.demo().click(&prompt.id, "allow").await.unwrap();
    let done = wait_for_post(&fleet, &root.id, TURN, "the answer", is_answer).await;
    assert!(done.message.contains("Done"), "{}", done.message);
    assert_eq!(answers(&fleet, &root.id).await.len(), 1, "answered once");
    let requests = bot_posts(&fleet, &root.id)
        .await
        .into_iter()
        .filter(|p| p.message.contains("Permission needed"))
        .count();
    assert_eq!(requests, 1, "one request post for one request");
    let rows = approval_rows(&env, &root.id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].1, "allowed");
    assert!(rows[0].4, "delivered to the resumed CLI");
    fleet.stop().await;
}

#[tokio::test]
async fn an_unanswered_request_is_denied_with_a_note_when_its_time_is_up() {
    let env = TestEnv::new().await;
    let fleet = fleet_with(&env, 1, 4, RuntimeKind::Process, "default", |config| {
        config.worker.approval_timeout_s = 2;
    })
    .await;
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[bash:echo late > late.txt]] run it",
            None,
        )
        .await
        .unwrap();
    let prompt = request(&fleet, &root.id, "Permission needed").await;
    settled(&fleet, &prompt.id, "Denied automatically").await;
    let done = wait_for_post(&fleet, &root.id, TURN, "the answer", is_answer).await;
    assert!(done.message.contains("refused"), "{}", done.message);
    let rows = approval_rows(&env, &root.id).await;
    assert_eq!(rows[0].1, "timed_out");
    assert_eq!(rows[0].3.as_deref(), Some("timeout"));
    fleet.stop().await;
}

/// The pins the fleet's gateway keeps in its directory bucket (`proto::kv::Directory`).
async fn pins(env: &TestEnv) -> Option<proto::kv::Directory> {
    let client = async_nats::connect(&env.config.nats.url).await.ok()?;
    let bucket = proto::names::Names::new(env.prefix.as_str()).directory_bucket();
    let kv = async_nats::jetstream::new(client)
        .get_key_value(bucket)
        .await
        .ok()?;
    let value = kv.get(proto::names::DIRECTORY_KEY).await.ok()??;
    proto::kv::Directory::decode(&value)
}

/// Approvers are known by user id, not by name: carol, an approver, is renamed `carol2`
/// and someone else takes the name `carol`; the newcomer's click is refused, carol2's
/// allows the request.
#[tokio::test]
async fn a_renamed_approver_keeps_her_rights_and_whoever_takes_her_old_name_gets_none() {
    let env = TestEnv::new().await;
    let fleet = fleet_with(&env, 1, 4, RuntimeKind::Process, "default", |config| {
        config.worker.approvers = vec!["@carol".into()];
        config.gateway.directory_refresh_s = 1;
    })
    .await;
    let carol = member(&fleet, "carol").await;
    eventually(
        Duration::from_secs(30),
        "carol pinned to her id",
        || async {
            let pins = pins(&env).await?;
            (pins.user_of("carol")?.as_str() == carol.id).then_some(())
        },
    )
    .await;

    // carol becomes carol2; the name `carol` is taken by a newcomer.
    let admin = &fleet.boot.admin;
    admin.rename_user(&carol.id, "carol2").await.unwrap();
    let newcomer = admin
        .create_user(
            "carol",
            "newcomer@example.com",
            loadtest::mmsim::client::BOOTSTRAP_PASSWORD,
        )
        .await
        .unwrap();
    assert_ne!(newcomer.id, carol.id);
    admin
        .add_team_member(&fleet.boot.team.id, &newcomer.id)
        .await
        .unwrap();
    admin
        .add_channel_member(fleet.channel_id(), &newcomer.id)
        .await
        .unwrap();
    let newcomer = loadtest::mmsim::client::Client::new(fleet.sim.base_url())
        .login("carol", loadtest::mmsim::client::BOOTSTRAP_PASSWORD)
        .await
        .unwrap();
    // A refresh after both: the pin followed carol to her new name and stayed hers.
    eventually(Duration::from_secs(30), "the rename seen", || async {
        let pins = pins(&env).await?;
        let pin = pins.pins.get("carol")?;
        (pin.username == "carol2").then_some(pin.id.as_str() == carol.id)
    })
    .await
    .then_some(())
    .expect("the pin stays carol's");

    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[bash:echo approved > out.txt]] run it",
            None,
        )
        .await
        .unwrap();
    let prompt = request(&fleet, &root.id, "Permission needed").await;

    let mut newcomer_events = newcomer.websocket().await.unwrap();
    newcomer.click(&prompt.id, "allow").await.unwrap();
    let note = newcomer_events
        .wait_for(Duration::from_secs(30), |e| {
            e.kind() == EventKind::EphemeralMessage
        })
        .await
        .expect("an ephemeral note to the newcomer");
    let note = note.post().unwrap().message;
    assert!(note.contains("Only @alice"), "{note}");
    assert!(has_buttons(
        &fleet.demo().get_post(&prompt.id).await.unwrap()
    ));
    assert_eq!(approval_rows(&env, &root.id).await[0].1, "pending");

    carol.click(&prompt.id, "allow").await.unwrap();
    let done = wait_for_post(&fleet, &root.id, TURN, "the answer", is_answer).await;
    assert!(done.message.contains("Done"), "{}", done.message);
    settled(&fleet, &prompt.id, "**Allowed** by @carol2").await;
    assert_eq!(
        answer_attempts(&env, &root.id).await,
        vec![
            ("carol".to_owned(), "allow".to_owned(), "refused".to_owned()),
            (
                "carol2".to_owned(),
                "allow".to_owned(),
                "accepted".to_owned()
            ),
        ]
    );
    fleet.stop().await;
}
