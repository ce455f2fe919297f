//! The compose deployment end to end (issue 15): images built offline, `deploy/compose`
//! brought up with the simulator and the fake model, a mention answered with a working
//! file link, workers scaled to three with a new thread claimed by the new one, a stopped
//! worker's thread resumed elsewhere, everything torn down.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use loadtest::compose::{ComposeFleet, build_images, wait_for};
use loadtest::mmsim::client::{Bootstrap, User, bootstrap};
use loadtest::mmsim::model::Post;

fn hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn docker_gid() -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/var/run/docker.sock")
        .expect("the Docker socket")
        .gid()
        .to_string()
}

/// The bot's posts in a thread, oldest first.
async fn bot_posts(user: &User, boot: &Bootstrap, root: &str) -> Vec<Post> {
    let Ok(thread) = user.thread(root).await else {
        return Vec::new();
    };
    let mut posts: Vec<Post> = thread
        .posts
        .into_values()
        .filter(|p| p.user_id == boot.bot.id)
        .collect();
    posts.sort_by_key(|p| (p.create_at, p.id.clone()));
    posts
}

fn is_answer(post: &Post) -> bool {
    post.message.contains(":stopwatch:")
}

/// The worker the thread's header names (`| Worker | `id` |`).
fn header_worker(posts: &[Post]) -> Option<String> {
    posts.iter().find_map(|p| {
        let start = p.message.find("| Worker | `")? + "| Worker | `".len();
        let end = p.message[start..].find('`')?;
        Some(p.message[start..start + end].to_owned())
    })
}

fn link(text: &str, label: &str) -> Option<String> {
    let marker = format!("[{label}](");
    let start = text.find(&marker)? + marker.len();
    let end = text[start..].find(')')?;
    Some(text[start..start + end].to_owned())
}

struct Thread {
    root: String,
}

struct Harness {
    fleet: ComposeFleet,
    boot: Bootstrap,
}

impl Harness {
    async fn mention(&self, text: &str) -> Thread {
        let post = self
            .boot
            .demo
            .post(&self.boot.channel.id, &format!("@claude {text}"), None)
            .await
            .unwrap();
        Thread { root: post.id }
    }

    async fn reply(&self, thread: &Thread, text: &str) {
        self.boot
            .demo
            .post(&self.boot.channel.id, text, Some(&thread.root))
            .await
            .unwrap();
    }

    /// Waits until the thread has `n` answers; returns its bot posts.
    async fn answers(&self, thread: &Thread, n: usize, what: &str) -> Vec<Post> {
        let found = wait_for(Duration::from_secs(180), || async {
            let posts = bot_posts(&self.boot.demo, &self.boot, &thread.root).await;
            (posts.iter().filter(|p| is_answer(p)).count() >= n).then_some(posts)
        })
        .await;
        match found {
            Some(posts) => posts,
            None => panic!(
                "{what}: no answer within 180 s; thread: {:#?}\nlogs:\n{}",
                bot_posts(&self.boot.demo, &self.boot, &thread.root).await,
                self.fleet.logs(60).await
            ),
        }
    }

    /// The worker whose id the thread's header names now.
    async fn worker_of(&self, thread: &Thread, what: &str) -> String {
        header_worker(&bot_posts(&self.boot.demo, &self.boot, &thread.root).await)
            .unwrap_or_else(|| panic!("{what}: the thread's header names no worker"))
    }
}

/// A worker's id starts with its container's hostname: the container id's first 12
/// characters (`<hostname>-<n>`, worker::fleet::worker_id).
fn container_of(worker: &str, containers: &[String]) -> Option<String> {
    let host = worker.rsplit_once('-').map_or(worker, |(h, _)| h);
    containers.iter().find(|c| c.starts_with(host)).cloned()
}

#[tokio::test]
async fn the_compose_fleet_answers_scales_and_resumes_a_stopped_workers_threads() {
    build_images(false).await.expect("the images build offline");

    let id = hex(4);
    let gateway_port = free_port();
    let public_url = format!("http://127.0.0.1:{gateway_port}");
    let env: BTreeMap<String, String> = [
        ("MATTERMOST_URL", "http://mmsim:8065".to_owned()),
        // Not known before the simulator is seeded; set below.
        ("MATTERMOST_BOT_TOKEN", "pending".to_owned()),
        ("MODEL_BASE_URL", "http://model:8123".to_owned()),
        ("MODEL_API_KEY", "sk-ant-test-fake".to_owned()),
        ("PUBLIC_URL", public_url.clone()),
        ("GATEWAY_PORT", format!("127.0.0.1:{gateway_port}")),
        ("SIGNING_KEY", hex(32)),
        ("POSTGRES_PASSWORD", hex(16)),
        ("GARAGE_RPC_SECRET", hex(32)),
        ("GARAGE_ADMIN_TOKEN", hex(32)),
        ("S3_ACCESS_KEY_ID", format!("GK{}", hex(12))),
        ("S3_SECRET_ACCESS_KEY", hex(32)),
        ("DOCKER_GID", docker_gid()),
        // One session per worker: a third thread needs a third worker.
        ("WORKER_MAX_SESSIONS", "1".to_owned()),
        ("WORKER_PERMISSION_MODE", "acceptEdits".to_owned()),
        (
            "RUNNER_IMAGE",
            std::env::var("CCFLEET_RUNNER_IMAGE")
                .unwrap_or_else(|_| "ccfleet-runner:latest".into()),
        ),
        // The name compose gives the offline override's session network: `name:` (compose
        // v2) and `<project>_sessions` (docker-compose 1.x, which ignores `name:`) agree.
        ("SESSION_NETWORK", format!("ccfleet-it-{id}_sessions")),
        ("NATS_PREFIX", format!("itc{id}")),
        ("CCFLEET_VERSION", "latest".to_owned()),
        ("LOG_FORMAT", "text".to_owned()),
        ("LOG_LEVEL", "info".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut fleet = ComposeFleet::new(&format!("ccfleet-it-{id}"), env)
        .await
        .unwrap();
    let started = Instant::now();
    let result = async {
        fleet
            .up(
                &[
                    "nats",
                    "postgres",
                    "garage",
                    "garage-init",
                    "mmsim",
                    "fake-model",
                ],
                None,
            )
            .await
            .expect("the backing services and doubles start");
        let sim = fleet.port("mmsim", 8065).await.unwrap();
        let sim_url = format!("http://{sim}");
        let boot = wait_for(Duration::from_secs(30), || async {
            bootstrap(&sim_url).await.ok()
        })
        .await
        .expect("the simulator is seeded");
        fleet.set("MATTERMOST_BOT_TOKEN", &boot.bot_token).unwrap();
        fleet
            .up(&["gateway", "worker"], Some(2))
            .await
            .expect("the gateway and two workers start");
        // Mentions posted before the gateway's WebSocket is up would not be seen: the
        // gateway is ready (`/readyz`) once it is.
        let readyz = format!("http://127.0.0.1:{gateway_port}/readyz");
        let ready = wait_for(Duration::from_secs(60), || async {
            let status = reqwest::get(&readyz).await.ok()?.status();
            status.is_success().then_some(())
        })
        .await;
        if ready.is_none() {
            return Err(loadtest::compose::Error::Unexpected(
                "the gateway is not ready within 60 s".into(),
            ));
        }
        Ok::<_, loadtest::compose::Error>(boot)
    }
    .await;
    let boot = match result {
        Ok(boot) => boot,
        Err(err) => {
            let logs = fleet.logs(80).await;
            fleet.down().await;
            panic!("{err}\n{logs}");
        }
    };
    let h = Harness { fleet, boot };
    let outcome = std::panic::AssertUnwindSafe(scenario(&h, started, &public_url));
    let outcome = futures::FutureExt::catch_unwind(outcome).await;
    if outcome.is_err() && std::env::var_os("CCFLEET_KEEP_COMPOSE").is_some() {
        eprintln!(
            "CCFLEET_KEEP_COMPOSE: project {} left running (env {:?})",
            h.fleet.project, h.fleet.env
        );
        std::mem::forget(h);
        std::panic::resume_unwind(outcome.err().unwrap());
    }
    h.fleet.down().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn scenario(h: &Harness, started: Instant, public_url: &str) {
    // A mention is answered, with a file link that works from outside.
    let a = h.mention("[[write:index.html]] make a page").await;
    let posts = h.answers(&a, 1, "the first mention").await;
    println!(
        "compose bring-up to first answer: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(posts);
    // The file links come in their own post, which may follow the answer's footer.
    let files = wait_for(Duration::from_secs(60), || async {
        bot_posts(&h.boot.demo, &h.boot, &a.root)
            .await
            .into_iter()
            .find(|p| p.message.contains("Files from this turn"))
    })
    .await
    .expect("the artifact block");
    let url = link(&files.message, "open page").expect("an open-page link");
    assert!(url.starts_with(public_url), "{url}");
    let page = reqwest::get(&url).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().to_lowercase().contains("<html"));

    // Two workers, one session each: a second thread takes the other worker.
    let b = h.mention("[[say:second]] hello").await;
    h.answers(&b, 1, "the second thread").await;
    let (wa, wb) = (
        h.worker_of(&a, "thread a").await,
        h.worker_of(&b, "thread b").await,
    );
    assert_ne!(wa, wb, "one session per worker");

    // Three workers: a third thread can only go to the new one.
    let before = h.fleet.containers("worker").await.unwrap();
    assert_eq!(before.len(), 2, "{before:?}");
    h.fleet.up(&["worker"], Some(3)).await.unwrap();
    let after = h.fleet.containers("worker").await.unwrap();
    let new: Vec<&String> = after.iter().filter(|c| !before.contains(c)).collect();
    assert_eq!(new.len(), 1, "{before:?} → {after:?}");
    // Only once it takes work: a thread queued while the fleet is full makes room by putting
    // an idle session to sleep instead.
    h.fleet
        .wait_healthy(new[0], Duration::from_secs(90))
        .await
        .unwrap();
    let c = h.mention("[[say:third]] hello").await;
    h.answers(&c, 1, "the third thread").await;
    let wc = h.worker_of(&c, "thread c").await;
    assert_eq!(
        container_of(&wc, &after).as_ref(),
        Some(new[0]),
        "the new worker ({}) claims the third thread, not {wc}",
        new[0]
    );

    // Stop thread a's worker (SIGTERM: it checkpoints and hands the session back), and
    // let compose replace it: a's follow-up is answered by the replacement.
    let stopped = container_of(&wa, &after).expect("thread a's worker container");
    h.fleet
        .docker(&["stop", "-t", "60", &stopped])
        .await
        .unwrap();
    h.fleet.docker(&["rm", &stopped]).await.unwrap();
    h.fleet.up(&["worker"], Some(3)).await.unwrap();
    let replaced = h.fleet.containers("worker").await.unwrap();
    assert!(!replaced.contains(&stopped));
    for c in &replaced {
        h.fleet
            .wait_healthy(c, Duration::from_secs(90))
            .await
            .unwrap();
    }
    h.reply(&a, "[[say:resumed]] are you there?").await;
    let posts = h.answers(&a, 2, "thread a after its worker stopped").await;
    let answers: Vec<&Post> = posts.iter().filter(|p| is_answer(p)).collect();
    assert_eq!(
        answers.len(),
        2,
        "exactly one answer per message: {answers:#?}"
    );
    assert!(answers[1].message.contains("resumed"), "{:#?}", answers[1]);
    let now = h.worker_of(&a, "thread a, resumed").await;
    assert_ne!(now, wa, "a stopped worker does not answer");
    assert!(
        container_of(&now, &replaced).is_some(),
        "{now} is one of the running workers {replaced:?}"
    );
}
