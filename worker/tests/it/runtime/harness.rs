//! Test harness: the fake model in-process, a runtime pointed at it, helpers to follow a
//! session's events with deadlines.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::config::Secret;
use loadtest::fake_model::{FakeModel, RecordedRequest};
use proto::ids::SessionId;
use tokio_util::sync::CancellationToken;
use worker::agent::{Agent, AgentOptions, Event, PermissionAnswer, PermissionRequest, TurnResult};
use worker::runtime::{
    DockerOptions, DockerRuntime, ModelEnv, ProcessOptions, ProcessRuntime, Runtime, SessionSpec,
    SimRuntime,
};

/// Which runtime a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Process,
    Docker,
    Sim,
}

pub struct Harness {
    pub fake: FakeModel,
    pub runtime: Runtime,
    pub kind: Kind,
    /// The docker runtime's worker id: [`Drop`] removes what a failed test left.
    docker_worker: Option<String>,
    /// The docker runtime's options, for [`Harness::docker_sibling`].
    pub docker_options: Option<DockerOptions>,
    /// Session directories of the process and sim runtimes.
    _dir: tempfile::TempDir,
    _cancel: tokio_util::sync::DropGuard,
}

/// The Claude Code CLI for the process runtime: `$CCFLEET_CLAUDE_BIN`, `claude` on
/// `PATH`, or the one bundled in the `claude-agent-sdk` wheel.
pub fn claude_bin() -> String {
    if let Ok(bin) = std::env::var("CCFLEET_CLAUDE_BIN") {
        return bin;
    }
    if let Ok(out) = std::process::Command::new("sh")
        .args(["-c", "command -v claude"])
        .output()
        && out.status.success()
    {
        return String::from_utf8_lossy(&out.stdout).trim().to_owned();
    }
    let script = "import os, claude_agent_sdk; print(os.path.join(os.path.dirname(claude_agent_sdk.__file__), '_bundled', 'claude'))";
    if let Ok(out) = std::process::Command::new("python3")
        .args(["-c", script])
        .output()
        && out.status.success()
    {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if PathBuf::from(&path).exists() {
            return path;
        }
    }
    panic!(
        "the Claude Code CLI was not found: set CCFLEET_CLAUDE_BIN, put `claude` on PATH, or \
         `pip install claude-agent-sdk` (deploy/runner/build does this too)"
    );
}

/// The host address containers on the default bridge reach (its gateway).
async fn bridge_gateway(docker: &bollard::Docker) -> IpAddr {
    let network = docker
        .inspect_network(
            "bridge",
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .expect("inspecting the Docker bridge network");
    network
        .ipam
        .and_then(|ipam| ipam.config)
        .and_then(|configs| configs.into_iter().find_map(|c| c.gateway))
        .and_then(|gw| gw.parse().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::new(172, 17, 0, 1)))
}

fn model_env(fake: &FakeModel) -> ModelEnv {
    ModelEnv {
        base_url: fake.base_url(),
        api_key: Secret::new("sk-ant-test-fake"),
        model: String::new(),
        max_retries: 0,
    }
}

async fn start_fake(addr: SocketAddr, cancel: &CancellationToken) -> FakeModel {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("binding the fake model on {addr}: {e}"));
    FakeModel::start(listener, cancel.clone()).unwrap()
}

impl Harness {
    pub async fn new(kind: Kind) -> Self {
        match kind {
            Kind::Process => Self::process().await,
            Kind::Docker => Self::docker(None).await,
            Kind::Sim => Self::sim().await,
        }
    }

    pub async fn process() -> Self {
        let cancel = CancellationToken::new();
        let fake = start_fake("127.0.0.1:0".parse().unwrap(), &cancel).await;
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::Process(ProcessRuntime::new(ProcessOptions {
            claude_bin: claude_bin(),
            sessions_dir: dir.path().to_path_buf(),
            model: model_env(&fake),
            agent: AgentOptions::default(),
        }));
        Self {
            fake,
            runtime,
            kind: Kind::Process,
            docker_worker: None,
            docker_options: None,
            _dir: dir,
            _cancel: cancel.drop_guard(),
        }
    }

    pub async fn sim() -> Self {
        let cancel = CancellationToken::new();
        let fake = start_fake("127.0.0.1:0".parse().unwrap(), &cancel).await;
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::Sim(SimRuntime::new(dir.path().to_path_buf()));
        Self {
            fake,
            runtime,
            kind: Kind::Sim,
            docker_worker: None,
            docker_options: None,
            _dir: dir,
            _cancel: cancel.drop_guard(),
        }
    }

    /// The docker runtime on the `bridge` network (or `network`), the fake model on the
    /// bridge's gateway address. Fails, never skips, when Docker or the image is missing.
    pub async fn docker(network: Option<&str>) -> Self {
        Self::docker_with_pool(network, 0).await
    }

    /// [`Harness::docker`] with a warm pool of `warm_pool` containers (not yet filling:
    /// run [`worker::runtime::DockerRuntime::run_pool`]).
    pub async fn docker_with_pool(network: Option<&str>, warm_pool: usize) -> Self {
        let docker = bollard::Docker::connect_with_local_defaults()
            .expect("Docker client")
            .negotiate_version()
            .await
            .expect("the Docker daemon must run for docker runtime tests");
        let gateway = bridge_gateway(&docker).await;
        let cancel = CancellationToken::new();
        let fake = start_fake(SocketAddr::new(gateway, 0), &cancel).await;
        let dir = tempfile::tempdir().unwrap();
        let worker_id = format!("it-{}", uuid::Uuid::new_v4().simple());
        let options = DockerOptions {
            image: std::env::var("CCFLEET_RUNNER_IMAGE")
                .unwrap_or_else(|_| "ccfleet-runner:latest".into()),
            network: network.unwrap_or("bridge").to_owned(),
            memory_mb: 1024,
            cpus: 1.0,
            pids_limit: 256,
            worker_id: worker_id.clone(),
            fleet: format!("it-fleet-{}", uuid::Uuid::new_v4().simple()),
            model: model_env(&fake),
            agent: AgentOptions::default(),
            tmp_size_mb: 256,
            warm_pool,
            pool_permission_mode: worker::agent::PermissionMode::Default,
            egress_listen: String::new(),
            egress_advertise: String::new(),
            egress: worker::egress::EgressOptions::single(
                fake.base_url(),
                worker::egress::Credential::ApiKey(Secret::new("sk-ant-test-fake")),
            ),
        };
        let runtime = match DockerRuntime::connect(options.clone()).await {
            Ok(rt) => Runtime::Docker(rt),
            Err(err) => panic!("{err} (run deploy/runner/build)"),
        };
        // Model requests go through the runtime's egress gateway, served until the
        // harness is dropped.
        let serving = runtime.clone();
        let stop = cancel.clone();
        tokio::spawn(async move { serving.run_egress(stop).await });
        Self {
            fake,
            runtime,
            kind: Kind::Docker,
            docker_worker: Some(worker_id),
            docker_options: Some(options),
            _dir: dir,
            _cancel: cancel.drop_guard(),
        }
    }

    /// The docker runtime of another worker (`worker_id`) of the same fleet, on the same
    /// daemon. Whatever it leaves is the test's to remove.
    pub async fn docker_sibling(&self, worker_id: &str) -> Runtime {
        let mut options = self.docker_options.clone().expect("a docker harness");
        options.worker_id = worker_id.to_owned();
        Runtime::Docker(DockerRuntime::connect(options).await.unwrap())
    }

    pub fn spec(&self) -> SessionSpec {
        SessionSpec::new(unique_session())
    }

    /// The last request the model received.
    pub fn last_request(&self) -> RecordedRequest {
        self.fake
            .message_requests()
            .pop()
            .expect("the model received a request")
    }
}

impl Drop for Harness {
    /// A test that panicked leaves its containers and volumes: remove them by label
    /// (synchronously, with the docker CLI, as `Drop` cannot await).
    fn drop(&mut self) {
        let Some(worker) = &self.docker_worker else {
            return;
        };
        let filter = format!("label=ccfleet.worker={worker}");
        let list = |args: &[&str]| -> Vec<String> {
            std::process::Command::new("docker")
                .args(args)
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let containers = list(&["ps", "-aq", "--filter", &filter]);
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(containers.iter().map(String::as_str));
            list(&args);
        }
        let volumes = list(&["volume", "ls", "-q", "--filter", &filter]);
        if !volumes.is_empty() {
            let mut args = vec!["volume", "rm", "-f"];
            args.extend(volumes.iter().map(String::as_str));
            list(&args);
        }
    }
}

pub fn unique_session() -> SessionId {
    SessionId::new(format!(
        "it-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ))
}

/// Takes events until `stop` says so; panics with everything seen at the deadline.
pub async fn until(
    agent: &mut Agent,
    within: Duration,
    mut stop: impl FnMut(&Event) -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match agent.next_event_timeout(left).await {
            Some(event) => {
                let done = stop(&event);
                seen.push(event);
                if done {
                    return seen;
                }
            }
            None => {
                panic!("no matching event within {within:?} (or the CLI exited); seen: {seen:#?}")
            }
        }
    }
}

/// Events up to the next permission request.
pub async fn next_permission(agent: &mut Agent) -> PermissionRequest {
    let events = until(agent, Duration::from_secs(60), |e| {
        matches!(e, Event::PermissionRequest(_) | Event::TurnResult(_))
    })
    .await;
    match events.last() {
        Some(Event::PermissionRequest(request)) => request.clone(),
        _ => panic!("the turn ended without a permission request: {events:#?}"),
    }
}

/// Events up to the turn's result.
pub async fn turn_result(agent: &mut Agent) -> (Vec<Event>, TurnResult) {
    let events = until(agent, Duration::from_secs(60), |e| {
        matches!(e, Event::TurnResult(_))
    })
    .await;
    let Some(Event::TurnResult(result)) = events.last().cloned() else {
        unreachable!()
    };
    (events, result)
}

pub fn allow() -> PermissionAnswer {
    PermissionAnswer::Allow {
        updated_input: None,
    }
}
