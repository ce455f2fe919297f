//! Checkpoints carry a real workspace to the next worker — symlinks (absolute, or leaving
//! the tree, as `python -m venv` makes), hard links, empty directories, modes — and a
//! checkpoint that cannot be restored gives way to the one before, with a notice in the
//! thread, never a silent fresh start.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::config::RuntimeKind;
use common::testsupport::TestEnv;
use loadtest::fleet::LocalFleet;
use loadtest::mmsim::model::Post;
use object_store::PutPayload;
use object_store::path::Path as ObjectPath;

use super::support::{
    answers, bot_posts, eventually, fleet, is_answer, samples, wait_for_post, worker_metrics,
};

const TURN: Duration = Duration::from_secs(120);

/// Posts `text` (a reply when `root` is given) and waits for its answer, allowing every
/// permission request it makes on the way (bash asks in `default` mode). Returns the
/// thread's root id and the answer.
pub(super) async fn turn(fleet: &LocalFleet, root: Option<&str>, text: &str) -> (String, Post) {
    let before = match root {
        Some(root) => answers(fleet, root).await.len(),
        None => 0,
    };
    let post = fleet
        .demo()
        .post(fleet.channel_id(), text, root)
        .await
        .unwrap();
    let root = root.map(str::to_owned).unwrap_or(post.id);
    let clicked = Arc::new(Mutex::new(HashSet::new()));
    let answer = eventually(TURN, "the answer, allowing what it asks", || {
        let (root, clicked) = (root.clone(), clicked.clone());
        async move {
            let posts = bot_posts(fleet, &root).await;
            let done: Vec<&Post> = posts.iter().filter(|p| is_answer(p)).collect();
            if done.len() > before {
                return done.last().map(|p| (*p).clone());
            }
            for prompt in posts
                .iter()
                .filter(|p| !p.actions().is_empty() && p.message.contains("Permission needed"))
            {
                if clicked.lock().unwrap().insert(prompt.id.clone()) {
                    fleet.demo().click(&prompt.id, "allow").await.unwrap();
                }
            }
            None
        }
    })
    .await;
    (root, answer)
}

/// Waits until the thread's checkpoint of `turn` is recorded (the answer is posted just
/// before it is taken).
pub(super) async fn checkpointed(env: &TestEnv, root: &str, turn: i32) -> String {
    let pool = env.pool();
    eventually(TURN, "the turn's checkpoint", || async {
        let client = pool.get().await.unwrap();
        client
            .query_opt(
                "SELECT object_key FROM checkpoints WHERE thread_id = $1 AND turn = $2",
                &[&root, &turn],
            )
            .await
            .unwrap()
            .map(|row| row.get::<_, String>(0))
    })
    .await
}

/// A second worker joins and the first dies: the thread's next message is handled by the
/// second, which restores the last checkpoint.
pub(super) async fn take_over(fleet: &mut LocalFleet) {
    fleet.add_worker().await.unwrap();
    fleet.workers.remove(0).kill();
}

#[tokio::test]
async fn links_empty_directories_and_modes_survive_a_takeover() {
    let env = TestEnv::new().await;
    let mut fleet = fleet(&env, 1, 4, RuntimeKind::Process, "default").await;
    let (root, made) = turn(
        &fleet,
        None,
        "@claude [[bash:mkdir -p empty/inner && ln -s /usr/bin venvlink && ln -s /etc/hostname abslink && ln -s ../../outside up && echo data > orig && ln orig hard && echo x > run.sh && chmod 750 run.sh && echo made]] set up",
    )
    .await;
    assert!(made.message.contains("Done: made"), "{}", made.message);
    checkpointed(&env, &root, 1).await;
    take_over(&mut fleet).await;

    let (_, seen) = turn(
        &fleet,
        Some(&root),
        "[[bash:echo links $(readlink venvlink) $(readlink abslink) $(readlink up) nlink $(stat -c %h orig) $(test orig -ef hard && echo same) mode $(stat -c %a run.sh) $(test -d empty/inner && echo emptydir)]] look",
    )
    .await;
    assert!(
        seen.message
            .contains("links /usr/bin /etc/hostname ../../outside nlink 2 same mode 750 emptydir"),
        "the workspace came back as it was: {}",
        seen.message
    );
    let taken = samples(&worker_metrics(&fleet, 0).await);
    assert_eq!(
        taken.get(r#"ccfleet_worker_claims_total{kind="takeover"}"#),
        Some(&1.0),
        "the new worker counts a takeover: {taken:#?}"
    );
    assert!(
        !bot_posts(&fleet, &root)
            .await
            .iter()
            .any(|p| p.message.contains("could not")),
        "no failure on the way"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_corrupt_checkpoint_gives_way_to_the_one_before_with_a_notice() {
    let env = TestEnv::new().await;
    let mut fleet = fleet(&env, 1, 4, RuntimeKind::Process, "default").await;
    let (root, _) = turn(&fleet, None, "@claude [[bash:echo one > one.txt]] first").await;
    turn(&fleet, Some(&root), "[[bash:echo two > two.txt]] second").await;
    checkpointed(&env, &root, 1).await;
    let key = checkpointed(&env, &root, 2).await;
    env.store()
        .objects()
        .put(
            &ObjectPath::from(key.as_str()),
            PutPayload::from_static(b"this is not a checkpoint"),
        )
        .await
        .unwrap();
    take_over(&mut fleet).await;

    let (_, listing) = turn(
        &fleet,
        Some(&root),
        "[[bash:echo files $(ls)]] what is there",
    )
    .await;
    assert!(
        listing.message.contains("files one.txt") && !listing.message.contains("two.txt"),
        "the workspace of turn 1: {}",
        listing.message
    );
    let notice = wait_for_post(&fleet, &root, TURN, "the lost-checkpoint notice", |p| {
        p.message.contains("could not be restored")
    })
    .await;
    assert!(
        notice
            .message
            .contains("The checkpoint of turn 2 could not be restored (the archive cannot be read")
            && notice
                .message
                .contains("continued from the checkpoint of turn 1"),
        "{}",
        notice.message
    );
    // The conversation continued from turn 1 as well.
    let last = fleet.model.message_requests().last().cloned().unwrap();
    let transcript = last.transcript();
    assert!(
        transcript.contains("echo one") && !transcript.contains("echo two"),
        "{transcript}"
    );
    let client = env.pool().get().await.unwrap();
    let marked: Option<String> = client
        .query_one(
            "SELECT unrestorable FROM checkpoints WHERE thread_id = $1 AND turn = 2",
            &[&root],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        marked.is_some(),
        "turn 2 is marked, so it is not tried again"
    );

    // The session goes on: its next checkpoint is restorable and no notice repeats.
    turn(&fleet, Some(&root), "[[bash:echo three > three.txt]] third").await;
    checkpointed(&env, &root, 4).await;
    take_over(&mut fleet).await;
    let (_, listing) = turn(&fleet, Some(&root), "[[bash:echo files $(ls)]] and now").await;
    assert!(
        listing.message.contains("files one.txt three.txt"),
        "{}",
        listing.message
    );
    let notices = bot_posts(&fleet, &root)
        .await
        .into_iter()
        .filter(|p| p.message.contains("could not be restored"))
        .count();
    assert_eq!(notices, 1, "told once");
    fleet.stop().await;
}

#[tokio::test]
async fn with_no_checkpoint_left_the_session_starts_over_and_says_so() {
    let env = TestEnv::new().await;
    let mut fleet = fleet(&env, 1, 4, RuntimeKind::Process, "default").await;
    let (root, _) = turn(&fleet, None, "@claude [[bash:echo one > one.txt]] first").await;
    let key = checkpointed(&env, &root, 1).await;
    env.store()
        .objects()
        .delete(&ObjectPath::from(key.as_str()))
        .await
        .unwrap();
    take_over(&mut fleet).await;

    let (_, listing) = turn(
        &fleet,
        Some(&root),
        "[[bash:echo files $(ls -A) end]] again",
    )
    .await;
    assert!(
        listing.message.contains("files end"),
        "an empty workspace: {}",
        listing.message
    );
    let notice = wait_for_post(&fleet, &root, TURN, "the lost-checkpoint notice", |p| {
        p.message.contains("could not be restored")
    })
    .await;
    assert!(
        notice.message.contains(
            "The checkpoint of turn 1 could not be restored (its file is missing from the object store)"
        ) && notice.message.contains("starts over"),
        "{}",
        notice.message
    );
    fleet.stop().await;
}
