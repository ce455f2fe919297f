use std::collections::BTreeSet;
use std::time::Duration;

use common::config::RuntimeKind;
use common::testsupport::TestEnv;

use super::support::{
    answers, assert_contract, bot_posts, eventually, fleet, is_answer, link, wait_for_post,
};

const TURN: Duration = Duration::from_secs(90);

#[tokio::test]
async fn a_mention_streams_a_reply_that_ends_with_a_link_to_the_generated_page() {
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 1, 4, RuntimeKind::Process, "acceptEdits").await;
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[write:index.html]] make a page",
            None,
        )
        .await
        .unwrap();
    let block = wait_for_post(&fleet, &root.id, TURN, "the artifact block", |p| {
        p.message.contains("Files from this turn")
    })
    .await;
    let url = link(&block.message, "open page").expect("an HTML file gets a page link");
    let page = reqwest::get(&url).await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(html.to_lowercase().contains("<html"), "{html}");

    let posts = bot_posts(&fleet, &root.id).await;
    assert!(
        posts[0].message.contains("Claude Code session"),
        "the header comes first: {}",
        posts[0].message
    );
    let answer = posts
        .iter()
        .find(|p| is_answer(p))
        .expect("an answer with a footer");
    assert!(
        answer.message.contains("**Write**"),
        "the tool line is shown: {}",
        answer.message
    );
    let browse = link(&block.message, "Browse all files").unwrap();
    assert_eq!(reqwest::get(&browse).await.unwrap().status(), 200);
    assert_contract(&fleet).await;
    fleet.stop().await;
}

#[tokio::test]
async fn twenty_threads_on_two_workers_are_each_answered_once_in_order() {
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 2, 10, RuntimeKind::Process, "default").await;
    let mut roots = Vec::new();
    for i in 0..20 {
        let text = format!("@claude first question {i}");
        roots.push(
            fleet
                .demo()
                .post(fleet.channel_id(), &text, None)
                .await
                .unwrap(),
        );
    }
    let mut seconds = Vec::new();
    for (i, root) in roots.iter().enumerate() {
        let text = format!("second question {i}");
        seconds.push(
            fleet
                .demo()
                .post(fleet.channel_id(), &text, Some(&root.id))
                .await
                .unwrap(),
        );
    }
    for (i, root) in roots.iter().enumerate() {
        let done = eventually(
            Duration::from_secs(240),
            "two answers in every thread",
            || async {
                let answers = answers(&fleet, &root.id).await;
                (answers.len() >= 2).then_some(answers)
            },
        )
        .await;
        assert_eq!(
            done.len(),
            2,
            "thread {i} answered exactly twice: {done:#?}"
        );
    }
    // In order: turn 1 answered the first message, turn 2 the second.
    let pool = env.pool();
    let client = pool.get().await.unwrap();
    for (root, second) in roots.iter().zip(&seconds) {
        let rows = client
            .query(
                "SELECT turn, event_id FROM turns WHERE thread_id = $1 ORDER BY turn",
                &[&root.id],
            )
            .await
            .unwrap();
        let order: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(order, vec![(1, root.id.clone()), (2, second.id.clone())]);
    }
    // Both workers took part.
    let rows = client
        .query("SELECT DISTINCT worker FROM turns", &[])
        .await
        .unwrap();
    let workers: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        workers.len(),
        2,
        "threads spread over both workers: {workers:?}"
    );
    let turns: i64 = client
        .query_one("SELECT count(*) FROM turns", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(turns, 40);
    assert_contract(&fleet).await;
    fleet.stop().await;
}

#[tokio::test]
async fn with_capacity_two_three_of_five_new_threads_are_told_they_are_queued_and_all_are_answered()
{
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 1, 2, RuntimeKind::Process, "default").await;
    // Idle sessions give their slot to queued threads.
    let mut roots = Vec::new();
    for i in 0..5 {
        roots.push(
            fleet
                .demo()
                .post(
                    fleet.channel_id(),
                    &format!("@claude [[slow:2000]] thread {i}"),
                    None,
                )
                .await
                .unwrap(),
        );
    }
    for root in &roots {
        eventually(
            Duration::from_secs(180),
            "an answer in every thread",
            || async { (!answers(&fleet, &root.id).await.is_empty()).then_some(()) },
        )
        .await;
    }
    let mut queued = 0;
    for root in &roots {
        if bot_posts(&fleet, &root.id)
            .await
            .iter()
            .any(|p| p.message.contains("in the queue"))
        {
            queued += 1;
        }
    }
    assert_eq!(
        queued, 3,
        "three threads waited for a slot and were told so"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_killed_worker_s_threads_resume_on_another_worker_idle_and_mid_turn() {
    let env = TestEnv::new().await;
    let mut fleet = fleet(&env, 1, 4, RuntimeKind::Process, "default").await;
    // Idle: a session finishes its turn on worker 1, then worker 1 dies.
    let idle = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude remember the word PELICAN",
            None,
        )
        .await
        .unwrap();
    wait_for_post(&fleet, &idle.id, TURN, "the first answer", is_answer).await;
    fleet.add_worker().await.unwrap();
    let first = fleet.workers.remove(0);
    first.kill();
    fleet
        .demo()
        .post(fleet.channel_id(), "what was the word?", Some(&idle.id))
        .await
        .unwrap();
    let answers_idle = eventually(
        Duration::from_secs(120),
        "the follow-up answered after the failover",
        || async {
            let answers = answers(&fleet, &idle.id).await;
            (answers.len() >= 2).then_some(answers)
        },
    )
    .await;
    assert_eq!(answers_idle.len(), 2, "answered once");
    let posts = bot_posts(&fleet, &idle.id).await;
    assert!(
        posts
            .iter()
            .any(|p| p.message.contains("stopped unexpectedly")),
        "a takeover notice"
    );
    // The model saw the earlier conversation (resumed from the checkpoint).
    let last = fleet.model.message_requests().last().cloned().unwrap();
    assert!(
        last.transcript().contains("PELICAN"),
        "{}",
        last.transcript()
    );

    // Mid-turn: the owner dies while the answer streams.
    fleet.add_worker().await.unwrap();
    let slow = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[slow:6000]] [[long:600]] tell a long story",
            None,
        )
        .await
        .unwrap();
    wait_for_post(
        &fleet,
        &slow.id,
        TURN,
        "the answer starting to stream",
        |p| p.message.len() > 40 && !p.message.contains("Claude Code session"),
    )
    .await;
    let owner = {
        let pool = env.pool();
        let client = pool.get().await.unwrap();
        let row = client
            .query_one(
                "SELECT owner FROM sessions WHERE thread_id = $1",
                &[&slow.id],
            )
            .await
            .unwrap();
        row.get::<_, Option<String>>(0).expect("owned")
    };
    let index = fleet
        .workers
        .iter()
        .position(|w| w.id == owner)
        .expect("the owner is one of ours");
    fleet.workers.remove(index).kill();
    if fleet.workers.is_empty() {
        fleet.add_worker().await.unwrap();
    }
    let done = eventually(
        Duration::from_secs(120),
        "the cut turn to be answered",
        || async {
            let answers = answers(&fleet, &slow.id).await;
            (!answers.is_empty()).then_some(answers)
        },
    )
    .await;
    assert_eq!(done.len(), 1, "answered once: {done:#?}");
    assert!(
        done[0]
            .message
            .chars()
            .filter(|c| c.is_alphanumeric())
            .count()
            >= 400,
        "the whole answer: {}",
        done[0].message
    );
    assert!(
        bot_posts(&fleet, &slow.id)
            .await
            .iter()
            .any(|p| p.message.contains("running it again")),
        "the thread is told the cut turn is retried"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn files_attached_to_the_post_are_copied_into_the_workspace() {
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 1, 2, RuntimeKind::Process, "default").await;
    let file = fleet
        .demo()
        .upload_file(
            fleet.channel_id(),
            "notes.txt",
            b"remember the pelican\n".to_vec(),
        )
        .await
        .unwrap();
    let root = fleet
        .demo()
        .create_post(&loadtest::mmsim::client::NewPost {
            channel_id: fleet.channel_id().to_owned(),
            message: "@claude summarise the attached notes".into(),
            file_ids: vec![file.id.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    wait_for_post(&fleet, &root.id, TURN, "the answer", is_answer).await;
    // The model was told, and the file is in the session's workspace.
    let asked = fleet
        .model
        .message_requests()
        .last()
        .cloned()
        .unwrap()
        .transcript();
    assert!(asked.contains("notes.txt"), "{asked}");
    let pool = env.pool();
    let client = pool.get().await.unwrap();
    let session: String = client
        .query_one(
            "SELECT session_id FROM sessions WHERE thread_id = $1",
            &[&root.id],
        )
        .await
        .unwrap()
        .get(0);
    let path = fleet
        .config
        .worker
        .sessions_dir
        .join(&session)
        .join("workspace/notes.txt");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "remember the pelican\n"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_draining_worker_finishes_the_running_turn_and_releases_the_thread() {
    let env = TestEnv::new().await;
    let mut fleet = fleet(&env, 1, 2, RuntimeKind::Process, "default").await;
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[slow:3000]] [[long:300]] take your time",
            None,
        )
        .await
        .unwrap();
    wait_for_post(&fleet, &root.id, TURN, "the answer streaming", |p| {
        p.message.len() > 40 && !p.message.contains("Claude Code session")
    })
    .await;
    // SIGTERM: the worker stops claiming, finishes the turn, releases, exits.
    let started = std::time::Instant::now();
    fleet.workers.remove(0).stop().await;
    let drained_in = started.elapsed();
    assert!(
        drained_in < Duration::from_secs(10),
        "drained within the grace period: {drained_in:?}"
    );
    let done = answers(&fleet, &root.id).await;
    assert_eq!(
        done.len(),
        1,
        "the running turn finished before the worker left"
    );
    let pool = env.pool();
    let client = pool.get().await.unwrap();
    let owner: Option<String> = client
        .query_one(
            "SELECT owner FROM sessions WHERE thread_id = $1",
            &[&root.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, None, "the thread was released");
    // Another worker continues the thread from its checkpoint.
    fleet.add_worker().await.unwrap();
    fleet
        .demo()
        .post(fleet.channel_id(), "and then?", Some(&root.id))
        .await
        .unwrap();
    eventually(TURN, "the follow-up on the new worker", || async {
        (answers(&fleet, &root.id).await.len() == 2).then_some(())
    })
    .await;
    fleet.stop().await;
}

/// The `ccfleet-worker` binary next to this test binary (`target/<profile>/`).
fn worker_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("ccfleet-worker");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace binaries (cargo build)",
        bin.display()
    );
    bin
}

#[tokio::test]
async fn a_worker_process_killed_with_sigkill_loses_nothing() {
    let env = TestEnv::new().await;
    // The gateway and the simulator in-process, no in-process worker yet.
    let mut fleet = fleet(&env, 0, 2, RuntimeKind::Process, "default").await;
    let dir = tempfile_dir(&env.prefix);
    let mut config = fleet.config.clone();
    config.worker.id = format!("os-worker-{}", env.prefix);
    let config_path = dir.join("worker.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let mut child = std::process::Command::new(worker_binary())
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start ccfleet-worker");

    let root = fleet
        .demo()
        .post(fleet.channel_id(), "@claude remember the word HERON", None)
        .await
        .unwrap();
    wait_for_post(&fleet, &root.id, TURN, "the first answer", is_answer).await;
    // SIGKILL: no drain, no release.
    let _ = std::process::Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status();
    let _ = child.wait();

    fleet.add_worker().await.unwrap();
    fleet
        .demo()
        .post(fleet.channel_id(), "which word?", Some(&root.id))
        .await
        .unwrap();
    let done = eventually(
        Duration::from_secs(120),
        "the follow-up after the SIGKILL",
        || async {
            let answers = answers(&fleet, &root.id).await;
            (answers.len() >= 2).then_some(answers)
        },
    )
    .await;
    assert_eq!(done.len(), 2, "each message answered once");
    assert!(
        bot_posts(&fleet, &root.id)
            .await
            .iter()
            .any(|p| p.message.contains("stopped unexpectedly")),
        "a takeover notice"
    );
    let last = fleet.model.message_requests().last().cloned().unwrap();
    assert!(
        last.transcript().contains("HERON"),
        "the model saw the earlier conversation"
    );
    fleet.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ccfleet-os-worker-{prefix}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn a_thread_that_went_idle_holds_no_consumer_and_its_next_message_picks_up_after_it() {
    let env = TestEnv::new().await;
    let fleet = super::support::fleet_with(&env, 1, 4, RuntimeKind::Process, "default", |config| {
        config.worker.idle_timeout_s = 2
    })
    .await;
    let root = fleet
        .demo()
        .post(fleet.channel_id(), "@claude remember the word HERON", None)
        .await
        .unwrap();
    wait_for_post(&fleet, &root.id, TURN, "the first answer", is_answer).await;
    wait_for_post(&fleet, &root.id, TURN, "the idle notice", |p| {
        p.message.contains("put to sleep")
    })
    .await;

    // Released: the thread's consumer is gone, and where it stopped is recorded.
    let names = proto::names::Names::new(env.prefix.clone());
    let thread = proto::ThreadId::new(root.id.clone());
    let js = async_nats::jetstream::new(env.nats().await);
    let events = js.get_stream(names.events_stream()).await.unwrap();
    let consumer = names.thread_consumer(&thread);
    eventually(Duration::from_secs(20), "the consumer retired", || async {
        events
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&consumer)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let pg = env.pool().get().await.unwrap();
    let row = pg
        .query_one(
            "SELECT after_seq FROM thread_cursors WHERE thread_id = $1",
            &[&root.id],
        )
        .await
        .expect("a cursor for the thread");
    let after: i64 = row.get(0);
    assert!(after > 0, "the cursor points past the first event: {after}");

    // The next message wakes the session: answered once, with the conversation.
    let before = fleet.model.message_requests().len();
    fleet
        .demo()
        .post(fleet.channel_id(), "what was the word?", Some(&root.id))
        .await
        .unwrap();
    let answered = eventually(TURN, "the follow-up answered", || async {
        let answers = answers(&fleet, &root.id).await;
        (answers.len() >= 2).then_some(answers)
    })
    .await;
    assert_eq!(answered.len(), 2, "answered once");
    // Only the new message reached the model (the first one was not read again).
    let requests = fleet.model.message_requests();
    let last = requests.last().cloned().unwrap();
    assert!(last.transcript().contains("HERON"), "{}", last.transcript());
    assert!(requests.len() > before);
    assert_eq!(
        last.transcript().matches("remember the word HERON").count(),
        1,
        "the first message was not run again: {}",
        last.transcript()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(answers(&fleet, &root.id).await.len(), 2, "nothing doubled");
    assert_contract(&fleet).await;
    fleet.stop().await;
}

#[tokio::test]
async fn a_thread_whose_events_cannot_be_read_is_told_so_and_answered_once_they_can() {
    let env = TestEnv::new().await;
    let fleet = super::support::fleet_with(&env, 1, 4, RuntimeKind::Process, "default", |config| {
        config.nats.max_consumers = 100
    })
    .await;
    // Fill the events stream's consumer limit (the fleet's dispatch consumer is one).
    let names = proto::names::Names::new(env.prefix.clone());
    let js = async_nats::jetstream::new(env.nats().await);
    let events = js.get_stream(names.events_stream()).await.unwrap();
    let mut filler = Vec::new();
    for n in 0.. {
        let name = format!("filler-{n}");
        let created = events
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some(name.clone()),
                ..Default::default()
            })
            .await;
        if created.is_err() {
            break;
        }
        filler.push(name);
    }
    assert!(filler.len() >= 90, "{} fillers", filler.len());

    let root = fleet
        .demo()
        .post(fleet.channel_id(), "@claude say hello", None)
        .await
        .unwrap();
    wait_for_post(&fleet, &root.id, TURN, "the could-not-read notice", |p| {
        p.message.contains("could not pick up this thread")
    })
    .await;
    assert!(answers(&fleet, &root.id).await.is_empty());

    // Room again: the retry reads the message and answers it, once.
    for name in &filler {
        events.delete_consumer(name).await.unwrap();
    }
    wait_for_post(&fleet, &root.id, TURN, "the answer", is_answer).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(answers(&fleet, &root.id).await.len(), 1, "answered once");
    let notices = bot_posts(&fleet, &root.id)
        .await
        .into_iter()
        .filter(|p| p.message.contains("could not pick up this thread"))
        .count();
    assert_eq!(notices, 1, "one notice for the message");
    assert_contract(&fleet).await;
    fleet.stop().await;
}
