//! A dead worker's agent does not go on working: a worker killed mid-turn leaves its CLI
//! (a container, or a process group) running; the thread's next owner stops it before it
//! runs the cut turn again, so the turn's side effects happen once.

use std::time::{Duration, Instant};

use common::config::RuntimeKind;
use common::testsupport::TestEnv;
use loadtest::fleet::LocalFleet;

use super::support::{answers, bot_posts, eventually, fleet_with, session_id};

const TURN: Duration = Duration::from_secs(120);
/// How long the turn's command sleeps before its side effect.
const SLEEP_S: u64 = 10;

/// Waits until `check` gives a value, allowing every permission request
/// posted in the thread on the way (Bash asks in `default` mode).
pub(super) async fn allowing<T>(
    fleet: &LocalFleet,
    root: &str,
    within: Duration,
    what: &str,
    check: impl AsyncFn() -> Option<T>,
) -> T {
    eventually(within, what, || async {
        for prompt in bot_posts(fleet, root)
            .await
            .iter()
            .filter(|p| !p.actions().is_empty() && p.message.contains("Permission needed"))
        {
            // A retried turn's request reuses the post of the cut one's: click again while
            // it waits (a late click is only told so).
            let _ = fleet.demo().click(&prompt.id, "allow").await;
        }
        check().await
    })
    .await
}

/// Where a file of the session's workspace can be read.
enum Workspace {
    Dir(std::path::PathBuf),
    Container(String),
}

impl Workspace {
    /// The file's lines; `None` when it does not exist (or the container is gone).
    fn lines(&self, file: &str) -> Option<Vec<String>> {
        let text = match self {
            Workspace::Dir(dir) => std::fs::read_to_string(dir.join(file)).ok()?,
            Workspace::Container(name) => {
                let out = std::process::Command::new("docker")
                    .args(["exec", name, "cat", &format!("/session/workspace/{file}")])
                    .output()
                    .expect("docker exec");
                if !out.status.success() {
                    return None;
                }
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        };
        Some(text.lines().map(str::to_owned).collect())
    }
}

fn container_id(name: &str) -> Option<String> {
    let out = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{.Id}}", name])
        .output()
        .expect("docker inspect");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Worker 1 runs a turn whose command marks its start, sleeps, then appends a line to
/// `side-effects.txt`; worker 1 is killed (its task aborted: nothing is released or
/// stopped) while the command sleeps; worker 2 takes the thread over and runs the turn
/// again. Once the old command's time has passed, the file holds exactly one line.
async fn killed_mid_turn_side_effect_happens_once(runtime: RuntimeKind) {
    let env = TestEnv::new().await;
    let mut fleet = fleet_with(&env, 1, 2, runtime, "default", |config| {
        // Both runs of the session use its own volume (a warm container brings its own).
        config.worker.warm_pool = 0;
    })
    .await;
    let command =
        format!("echo started >> started.txt; sleep {SLEEP_S}; echo x >> side-effects.txt");
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            &format!("@claude [[bash:{command}]] run it"),
            None,
        )
        .await
        .unwrap();
    let session = session_id(&env, &root.id).await;
    let workspace = match runtime {
        RuntimeKind::Docker => Workspace::Container(format!("ccfleet-{session}")),
        _ => Workspace::Dir(
            fleet
                .config
                .worker
                .sessions_dir
                .join(&session)
                .join("workspace"),
        ),
    };
    allowing(
        &fleet,
        &root.id,
        TURN,
        "the command to start on worker 1",
        || async { workspace.lines("started.txt").filter(|l| l.len() == 1) },
    )
    .await;
    let old_container = match runtime {
        RuntimeKind::Docker => container_id(&format!("ccfleet-{session}")),
        _ => None,
    };
    fleet.add_worker().await.unwrap();
    let killed = Instant::now();
    fleet.workers.remove(0).kill();

    // Worker 2 runs the cut turn again (the command starts a second time).
    allowing(
        &fleet,
        &root.id,
        TURN,
        "the cut turn to start again on worker 2",
        || async { workspace.lines("started.txt").filter(|l| l.len() == 2) },
    )
    .await;
    if let Some(old) = &old_container {
        // The new owner runs its own container; the old one was gone before it started.
        assert_ne!(
            container_id(&format!("ccfleet-{session}")).as_deref(),
            Some(old.as_str()),
            "the new owner runs in a new container"
        );
        assert_eq!(container_id(old), None, "the old container is gone");
    }
    let done = allowing(
        &fleet,
        &root.id,
        TURN,
        "the retried turn's answer",
        || async {
            let done = answers(&fleet, &root.id).await;
            (!done.is_empty()).then_some(done)
        },
    )
    .await;
    assert_eq!(done.len(), 1, "answered once: {done:#?}");
    // The old command, had it survived, would have written by now (a deadline, not a
    // poll: the test is that nothing more happens).
    let old_deadline = killed + Duration::from_secs(SLEEP_S + 3);
    tokio::time::sleep_until(old_deadline.into()).await;
    assert_eq!(
        workspace.lines("side-effects.txt"),
        Some(vec!["x".to_owned()]),
        "the side effect happened once"
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_process_cli_of_a_killed_worker_is_stopped_before_the_new_owner_runs_its_turn() {
    killed_mid_turn_side_effect_happens_once(RuntimeKind::Process).await;
}

/// A worker frozen past its lease (SIGSTOP) wakes to find its thread's consumer gone — the
/// successor recreated it — before its own lease keeper noticed that the lease moved on.
/// It must not release the thread: the lease, the record and the consumer are the
/// successor's. (Found by `loadtest chaos`: the woken worker deleted its successor's
/// lease and consumer, and removed its container.) Frozen here by taking the lease and
/// deleting the consumer under a running turn, as the successor does.
#[tokio::test]
async fn a_worker_that_lost_its_thread_while_frozen_does_not_release_it() {
    let env = TestEnv::new().await;
    let fleet = fleet_with(&env, 1, 2, RuntimeKind::Process, "default", |config| {
        // Renewals every 30 s: the consumer's end is seen well before the next one.
        config.worker.lease_ttl_s = 90;
    })
    .await;
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[slow:20000]] [[long:400]] take your time",
            None,
        )
        .await
        .unwrap();
    session_id(&env, &root.id).await;
    super::support::wait_for_post(&fleet, &root.id, TURN, "the answer streaming", |p| {
        p.message.len() > 40 && !p.message.contains("Claude Code session")
    })
    .await;
    let nats = async_nats::connect(fleet.config.nats.url.as_str())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(nats);
    let names = proto::names::Names::new(fleet.config.nats.prefix.clone());
    let leases = js.get_key_value(names.leases_bucket()).await.unwrap();
    leases.put(&root.id, "successor".into()).await.unwrap();
    let events = js.get_stream(names.events_stream()).await.unwrap();
    events
        .delete_consumer(&names.thread_consumer(&proto::ThreadId::from(root.id.as_str())))
        .await
        .unwrap();
    // Whatever the worker does on waking, within a few seconds (a deadline, not a poll:
    // the test is that nothing happens to the successor's lease).
    tokio::time::sleep(Duration::from_secs(20)).await;
    let holder = leases.get(&root.id).await.unwrap();
    assert_eq!(
        holder.as_deref(),
        Some(&b"successor"[..]),
        "the successor's lease was touched"
    );
    fleet.stop().await;
}
