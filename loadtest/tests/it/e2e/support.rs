//! Helpers for end-to-end tests.

use std::time::Duration;

use common::config::RuntimeKind;
use common::testsupport::TestEnv;
use loadtest::fleet::{FleetOptions, LocalFleet};
use loadtest::mmsim::client::{BOOTSTRAP_PASSWORD, Client, User};
use loadtest::mmsim::model::Post;

pub async fn fleet(
    env: &TestEnv,
    workers: usize,
    max_sessions: usize,
    runtime: RuntimeKind,
    mode: &str,
) -> LocalFleet {
    fleet_with(env, workers, max_sessions, runtime, mode, |_| {}).await
}

pub async fn fleet_with(
    env: &TestEnv,
    workers: usize,
    max_sessions: usize,
    runtime: RuntimeKind,
    mode: &str,
    tweak: impl FnOnce(&mut common::config::Config),
) -> LocalFleet {
    // RUST_LOG=info (or finer) shows the fleet's logs in failing tests' output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .with_test_writer()
        .try_init();
    let mut config = env.config.clone();
    config.worker.permission_mode = mode.to_owned();
    config.worker.lease_ttl_s = 3;
    config.worker.idle_timeout_s = 600;
    config.worker.shutdown_grace_s = 10;
    config.gateway.coalesce_interval_ms = 200;
    config.mattermost.requests_per_second = 500;
    tweak(&mut config);
    let sessions = std::env::temp_dir().join(format!("ccfleet-e2e-{}", env.prefix));
    LocalFleet::start(
        config,
        FleetOptions {
            workers,
            runtime,
            max_sessions,
            contract: true,
            sessions_dir: sessions,
            ..Default::default()
        },
    )
    .await
    .expect("the local fleet starts")
}

pub use common::testsupport::eventually;

/// The bot's posts in a thread, oldest first.
pub async fn bot_posts(fleet: &LocalFleet, root: &str) -> Vec<Post> {
    let Ok(thread) = fleet.demo().thread(root).await else {
        return Vec::new();
    };
    let bot = fleet.boot.bot.id.clone();
    let mut posts: Vec<Post> = thread
        .posts
        .into_values()
        .filter(|p| p.user_id == bot)
        .collect();
    posts.sort_by_key(|p| (p.create_at, p.id.clone()));
    posts
}

/// Waits until a bot post in the thread satisfies `pred`; returns it.
pub async fn wait_for_post(
    fleet: &LocalFleet,
    root: &str,
    within: Duration,
    what: &str,
    pred: impl Fn(&Post) -> bool,
) -> Post {
    eventually(within, what, || async {
        bot_posts(fleet, root).await.into_iter().find(|p| pred(p))
    })
    .await
}

/// A finished answer carries the per-turn footer.
pub fn is_answer(post: &Post) -> bool {
    post.message.contains(":stopwatch:")
}

pub async fn answers(fleet: &LocalFleet, root: &str) -> Vec<Post> {
    bot_posts(fleet, root)
        .await
        .into_iter()
        .filter(is_answer)
        .collect()
}

/// The first link in `text` whose label is `label`.
pub fn link(text: &str, label: &str) -> Option<String> {
    let marker = format!("[{label}](");
    let start = text.find(&marker)? + marker.len();
    let end = text[start..].find(')')?;
    Some(text[start..start + end].to_owned())
}

pub async fn assert_contract(fleet: &LocalFleet) {
    let report = fleet.control.contract().await.unwrap();
    assert!(
        report.violations.is_empty(),
        "contract violations: {:#?}",
        report.violations
    );
}

/// A new user who is a member of the fleet's team and channel, logged in.
pub async fn member(fleet: &LocalFleet, name: &str) -> User {
    let admin = &fleet.boot.admin;
    let user = admin
        .create_user(name, &format!("{name}@example.com"), BOOTSTRAP_PASSWORD)
        .await
        .unwrap();
    admin
        .add_team_member(&fleet.boot.team.id, &user.id)
        .await
        .unwrap();
    admin
        .add_channel_member(fleet.channel_id(), &user.id)
        .await
        .unwrap();
    Client::new(fleet.sim.base_url())
        .login(name, BOOTSTRAP_PASSWORD)
        .await
        .unwrap()
}

/// `GET /metrics` of the fleet's `n`th worker, served on a loopback port.
pub async fn worker_metrics(fleet: &LocalFleet, n: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(worker::metrics::serve(
        listener,
        fleet.workers[n].metrics.clone(),
        std::sync::Arc::default(),
        stop.clone(),
    ));
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    stop.cancel();
    server.await.unwrap().unwrap();
    text
}

/// The samples of a Prometheus text exposition: `name{labels}` → value.
pub fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Reacts `emoji` to a bot post once the gateway knows the post's thread (egress records
/// it just after creating the post: a person is never that fast; a test is).
pub async fn react_when_known(fleet: &LocalFleet, post: &Post, emoji: &str) {
    let nats = async_nats::connect(fleet.config.nats.url.as_str())
        .await
        .unwrap();
    let posts = async_nats::jetstream::new(nats)
        .get_key_value(proto::names::Names::new(fleet.config.nats.prefix.clone()).posts_bucket())
        .await
        .unwrap();
    let key = proto::names::post_thread_key(&proto::PostId::from(post.id.as_str()));
    eventually(
        Duration::from_secs(30),
        "the post's thread recorded",
        || async { posts.get(key.as_str()).await.ok().flatten() },
    )
    .await;
    fleet.demo().react(&post.id, emoji).await.unwrap();
}

/// A test whose tool this machine lacks (`reason`) skips, except under `CI=true`, where
/// it must run: `what` it must check is then the failure.
pub fn skip_unless_ci(what: &str, reason: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI must {what}: {reason}"
    );
    eprintln!("skipped: {reason}");
}

/// What a [`Probe`] answers.
pub const REPLY: &str = "hello-from-probe";

/// A listener of the test's own: answers every connection with a small HTTP 200 and
/// keeps what it received.
pub struct Probe {
    pub addr: std::net::SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    pub async fn start(ip: std::net::IpAddr) -> Self {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let n = tokio::time::timeout(
                        Duration::from_secs(5),
                        tokio::io::AsyncReadExt::read(&mut stream, &mut buf),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(0);
                    log.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    let body = format!(
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{REPLY}",
                        REPLY.len()
                    );
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, body.as_bytes()).await;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                });
            }
        });
        Self { addr, seen, task }
    }

    /// What each connection sent, whole.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether the post shows buttons.
pub fn has_buttons(post: &Post) -> bool {
    !post.actions().is_empty()
}

/// The thread's session id, once its record exists.
pub async fn session_id(env: &TestEnv, root: &str) -> String {
    let pool = env.pool();
    eventually(Duration::from_secs(120), "the session's record", || async {
        let client = pool.get().await.unwrap();
        client
            .query_opt(
                "SELECT session_id FROM sessions WHERE thread_id = $1",
                &[&root],
            )
            .await
            .unwrap()
            .map(|row| row.get::<_, String>(0))
    })
    .await
}

/// `user` clicks `action` on `post` but may not answer it: told so privately, naming the
/// session's owner.
pub async fn refused_privately(user: &User, post: &str, action: &str, owner: &str) {
    let mut events = user.websocket().await.unwrap();
    user.click(post, action).await.unwrap();
    let note = events
        .wait_for(Duration::from_secs(30), |e| {
            e.kind() == loadtest::mmsim::client::EventKind::EphemeralMessage
        })
        .await
        .expect("an ephemeral note");
    assert!(
        note.post()
            .unwrap()
            .message
            .contains(&format!("Only @{owner}")),
        "{:?}",
        note.post()
    );
}
