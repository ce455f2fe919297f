//! The product's own entry point: `deploy/local/fleet` runs one `ccfleet-gateway` and two
//! `ccfleet-worker` OS processes from one configuration, starts the simulator and the fake
//! model only for what that configuration leaves empty, says which it uses, answers a
//! mention with a link, and stops every process it started on SIGINT.
//!
//! A "real" Mattermost server or model API is one this test starts itself, which the
//! script must then use instead of its own doubles.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::testsupport::TestEnv;
use loadtest::fake_model::FakeModel;
use loadtest::mmsim::client::{BOOTSTRAP_PASSWORD, Client, SimControl, User, bootstrap};
use loadtest::mmsim::{Options as SimOptions, Sim, SimHandle};
use tokio_util::sync::CancellationToken;

use super::support::{eventually, link};

const START: Duration = Duration::from_secs(120);
const TURN: Duration = Duration::from_secs(90);
const STOP: Duration = Duration::from_secs(90);

/// A free port on loopback (bound once and released, so the script can take it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `target/<profile>/`, where the workspace's binaries sit beside this test's.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_owned();
    for bin in ["loadtest", "ccfleet-gateway", "ccfleet-worker"] {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: build the workspace binaries (cargo build --bins)",
            dir.join(bin).display()
        );
    }
    dir
}

fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/fleet")
}

/// The process tree under `root` (excluding it): pid → command name.
fn descendants(root: u32) -> BTreeMap<u32, String> {
    let out = Command::new("ps")
        .args(["-e", "-o", "pid=,ppid=,comm="])
        .output()
        .expect("ps runs");
    let rows: Vec<(u32, u32, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let pid = fields.next()?.parse().ok()?;
            let ppid = fields.next()?.parse().ok()?;
            Some((pid, ppid, fields.collect::<Vec<_>>().join(" ")))
        })
        .collect();
    let mut found = BTreeMap::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, ppid, comm) in &rows {
            if *ppid == parent && found.insert(*pid, comm.clone()).is_none() {
                frontier.push(*pid);
            }
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

/// `deploy/local/fleet`, running, with its standard output collected.
struct Script {
    child: Child,
    output: Arc<Mutex<String>>,
    state: PathBuf,
}

impl Script {
    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Script {
    /// A failing test still leaves no fleet behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.child.id(), "TERM");
            let deadline = std::time::Instant::now() + STOP;
            while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// The Mattermost server and model API the configuration names, if any.
#[derive(Default)]
struct Configured {
    mattermost: Option<(String, String)>,
    model: Option<(String, String)>,
}

/// Starts the script with `configured` in its configuration file; the test's slice of the
/// services comes through the services file, the way the local services do.
fn start_script(
    env: &TestEnv,
    configured: &Configured,
    sim_port: u16,
    gateway_port: u16,
) -> Script {
    let state = std::env::temp_dir().join(format!("ccfleet-entry-{}", env.prefix));
    std::fs::create_dir_all(&state).unwrap();
    let config = &env.config;
    let services = [
        ("NATS_URL", config.nats.url.clone()),
        ("POSTGRES_URL", config.postgres.url.expose().to_owned()),
        ("S3_ENDPOINT", config.object_store.endpoint.clone()),
        ("S3_REGION", config.object_store.region.clone()),
        ("S3_BUCKET", config.object_store.bucket.clone()),
        (
            "S3_ACCESS_KEY_ID",
            config.object_store.access_key_id.clone(),
        ),
        (
            "S3_SECRET_ACCESS_KEY",
            config.object_store.secret_access_key.expose().to_owned(),
        ),
    ];
    let services_env = state.join("services.env");
    std::fs::write(
        &services_env,
        services
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\"\n"))
            .collect::<String>(),
    )
    .unwrap();
    let mut file = toml::Table::new();
    if let Some((url, token)) = &configured.mattermost {
        let mut section = toml::Table::new();
        section.insert("url".into(), url.clone().into());
        section.insert("bot_token".into(), token.clone().into());
        file.insert("mattermost".into(), section.into());
    }
    if let Some((base_url, api_key)) = &configured.model {
        let mut section = toml::Table::new();
        section.insert("base_url".into(), base_url.clone().into());
        section.insert("api_key".into(), api_key.clone().into());
        file.insert("model".into(), section.into());
    }
    let config_path = state.join("ccfleet.toml");
    std::fs::write(&config_path, toml::to_string(&file).unwrap()).unwrap();

    let mut child = Command::new("bash")
        .arg(script_path())
        .arg("--config")
        .arg(&config_path)
        .args([
            "--set",
            &format!("nats.prefix={}", env.prefix),
            "--set",
            &format!("object_store.prefix=test/{}", env.prefix),
            "--set",
            &format!("gateway.listen=127.0.0.1:{gateway_port}"),
            "--set",
            "worker.runtime=process",
            "--set",
            "worker.shutdown_grace_s=10",
            "--set",
            "gateway.coalesce_interval_ms=200",
            "--set",
            "telemetry.log_level=warn",
        ])
        .env("CCFLEET_STATE_DIR", &state)
        .env("CCFLEET_SERVICES_ENV", &services_env)
        .env("CCFLEET_BIN_DIR", bin_dir())
        .env("CCFLEET_SIM_LISTEN", format!("127.0.0.1:{sim_port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("deploy/local/fleet starts");
    let output = Arc::new(Mutex::new(String::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = output.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    Script {
        child,
        output,
        state,
    }
}

/// A Mattermost server this test runs, which the script must use as it is.
async fn real_mattermost(shutdown: &CancellationToken) -> (SimHandle, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = Sim::start(listener, SimOptions::default(), shutdown.child_token())
        .await
        .unwrap();
    let boot = bootstrap(sim.base_url()).await.unwrap();
    (sim, boot.bot_token)
}

/// Waits until the gateway listens on the server's WebSocket; returns the demo user.
async fn demo_when_connected(mattermost: &str) -> User {
    let control = SimControl::new(mattermost);
    eventually(START, "the gateway on the Mattermost WebSocket", || async {
        let stats = control.stats().await.ok()?;
        (stats.websocket_connections >= 1).then_some(())
    })
    .await;
    Client::new(mattermost)
        .login("alice", BOOTSTRAP_PASSWORD)
        .await
        .unwrap()
}

/// Mentions the bot and waits for the page it makes; returns the page's link.
async fn mention_answered_with_a_link(demo: &User) -> String {
    let team = demo.team_by_name("ccfleet").await.unwrap();
    let channel = demo.channel_by_name(&team.id, "claude").await.unwrap();
    let bot = demo.user_by_username("claude").await.unwrap();
    let root = demo
        .post(
            &channel.id,
            "@claude [[write:index.html]] make a page",
            None,
        )
        .await
        .unwrap();
    let block = eventually(TURN, "the answer's file links", || async {
        let thread = demo.thread(&root.id).await.ok()?;
        thread
            .posts
            .into_values()
            .find(|p| p.user_id == bot.id && p.message.contains("Files from this turn"))
    })
    .await;
    let url = link(&block.message, "open page").expect("an HTML file gets a page link");
    let page = reqwest::get(&url).await.unwrap();
    assert_eq!(page.status(), 200, "{url}");
    assert!(page.text().await.unwrap().to_lowercase().contains("<html"));
    url
}

/// The processes under the script, by name; checks the fleet is the product's processes.
fn assert_fleet_processes(script: &Script, doubles: bool) -> BTreeSet<u32> {
    let tree = descendants(script.pid());
    let count = |name: &str| tree.values().filter(|comm| *comm == name).count();
    assert_eq!(count("ccfleet-gateway"), 1, "one gateway process: {tree:?}");
    assert_eq!(count("ccfleet-worker"), 2, "two worker processes: {tree:?}");
    assert_eq!(
        count("loadtest"),
        usize::from(doubles),
        "the doubles run only when needed: {tree:?}"
    );
    tree.into_keys().collect()
}

/// SIGINT to the script: it exits, and every process it started (and theirs) is gone.
async fn interrupt_and_check_all_stopped(mut script: Script, mut started: BTreeSet<u32>) {
    started.extend(descendants(script.pid()).into_keys());
    signal(script.pid(), "INT");
    let status = eventually(STOP, "the script to stop after SIGINT", || {
        let status = script.child.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert_eq!(status.code(), Some(130), "{}", script.output());
    // The script waited for its children; their own children (session CLIs) may take a
    // moment longer to be reaped.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = started.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running after the script stopped: {left:?}; it said:\n{}",
            script.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_empty_configuration_gets_the_simulator_and_the_fake_model() {
    let env = TestEnv::new().await;
    let (sim_port, gateway_port) = (free_port(), free_port());
    let script = start_script(&env, &Configured::default(), sim_port, gateway_port);
    let mattermost = format!("http://127.0.0.1:{sim_port}");
    let demo = demo_when_connected(&mattermost).await;
    let url = mention_answered_with_a_link(&demo).await;
    assert!(
        url.starts_with(&format!("http://127.0.0.1:{gateway_port}/")),
        "links lead to the local gateway: {url}"
    );
    let started = assert_fleet_processes(&script, true);
    let said = script.output();
    assert!(
        said.contains(&format!("Mattermost: the SIMULATOR at {mattermost}")),
        "{said}"
    );
    assert!(said.contains("Model API: the FAKE MODEL at"), "{said}");
    assert!(said.contains("demo user `@alice`"), "{said}");
    interrupt_and_check_all_stopped(script, started).await;
}

#[tokio::test]
async fn a_configured_mattermost_server_is_used_instead_of_the_simulator() {
    let env = TestEnv::new().await;
    let shutdown = CancellationToken::new();
    let (server, bot_token) = real_mattermost(&shutdown).await;
    let (sim_port, gateway_port) = (free_port(), free_port());
    let configured = Configured {
        mattermost: Some((server.base_url().to_owned(), bot_token)),
        model: None,
    };
    let script = start_script(&env, &configured, sim_port, gateway_port);
    let demo = demo_when_connected(server.base_url()).await;
    mention_answered_with_a_link(&demo).await;
    let started = assert_fleet_processes(&script, true);
    let said = script.output();
    assert!(
        said.contains(&format!(
            "Mattermost: the server at {} (mattermost.url)",
            server.base_url()
        )),
        "{said}"
    );
    assert!(!said.contains("SIMULATOR"), "{said}");
    assert!(said.contains("Model API: the FAKE MODEL at"), "{said}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", sim_port)).is_err(),
        "no simulator listens"
    );
    interrupt_and_check_all_stopped(script, started).await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_configured_model_api_is_used_instead_of_the_fake_model() {
    let env = TestEnv::new().await;
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let model = FakeModel::start(listener, shutdown.child_token()).unwrap();
    let (sim_port, gateway_port) = (free_port(), free_port());
    let configured = Configured {
        mattermost: None,
        model: Some((model.base_url(), "sk-ant-configured".into())),
    };
    let script = start_script(&env, &configured, sim_port, gateway_port);
    let demo = demo_when_connected(&format!("http://127.0.0.1:{sim_port}")).await;
    mention_answered_with_a_link(&demo).await;
    assert!(
        !model.requests().is_empty(),
        "the configured model API was asked"
    );
    let started = assert_fleet_processes(&script, true);
    let said = script.output();
    assert!(said.contains("Mattermost: the SIMULATOR at"), "{said}");
    assert!(
        said.contains(&format!("Model API: {} (model.base_url)", model.base_url())),
        "{said}"
    );
    assert!(!said.contains("FAKE MODEL"), "{said}");
    interrupt_and_check_all_stopped(script, started).await;
    shutdown.cancel();
}

#[tokio::test]
async fn with_mattermost_and_a_model_api_configured_only_the_product_runs() {
    let env = TestEnv::new().await;
    let shutdown = CancellationToken::new();
    let (server, bot_token) = real_mattermost(&shutdown).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let model = FakeModel::start(listener, shutdown.child_token()).unwrap();
    let (sim_port, gateway_port) = (free_port(), free_port());
    let configured = Configured {
        mattermost: Some((server.base_url().to_owned(), bot_token)),
        model: Some((model.base_url(), "sk-ant-configured".into())),
    };
    let script = start_script(&env, &configured, sim_port, gateway_port);
    let demo = demo_when_connected(server.base_url()).await;
    mention_answered_with_a_link(&demo).await;
    assert!(!model.requests().is_empty());
    let started = assert_fleet_processes(&script, false);
    let said = script.output();
    assert!(!said.contains("SIMULATOR"), "{said}");
    assert!(!said.contains("FAKE MODEL"), "{said}");
    interrupt_and_check_all_stopped(script, started).await;
    shutdown.cancel();
}
