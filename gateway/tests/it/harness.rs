//! Starting simulators and gateways in-process for tests.

use common::config::{Config, Secret};
use common::testsupport::TestEnv;
use gateway::{Gateway, Options};
use loadtest::mmsim::client::{Bootstrap, SimControl, bootstrap};
use loadtest::mmsim::{Options as SimOptions, Sim, SimHandle};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct SimEnv {
    pub sim: SimHandle,
    pub boot: Bootstrap,
    pub control: SimControl,
    pub shutdown: CancellationToken,
}

impl SimEnv {
    pub async fn start() -> SimEnv {
        let shutdown = CancellationToken::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options = SimOptions {
            contract_spec: Some(loadtest::mmsim::spec_path()).filter(|p| p.exists()),
            ..Default::default()
        };
        let sim = Sim::start(listener, options, shutdown.clone())
            .await
            .unwrap();
        let boot = bootstrap(sim.base_url())
            .await
            .expect("bootstrap the simulator");
        let control = SimControl::new(sim.base_url());
        SimEnv {
            sim,
            boot,
            control,
            shutdown,
        }
    }

    /// Fails the test if any exchange so far broke the official spec.
    pub async fn assert_contract(&self) {
        let report = self.control.contract().await.unwrap();
        assert!(
            report.violations.is_empty(),
            "contract violations: {:#?}",
            report.violations
        );
    }
}

impl Drop for SimEnv {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A gateway configuration pointing at the simulator.
pub fn gateway_config(env: &TestEnv, sim: &SimEnv) -> Config {
    let mut config = env.config.clone();
    config.mattermost.url = sim.sim.base_url().to_owned();
    config.mattermost.bot_token = Secret::new(sim.boot.bot_token.clone());
    config.mattermost.webhook_token = Secret::new("webhook-token-0123456789abc");
    config.mattermost.slash_token = Secret::new("slash-token-0123456789abcde");
    config.mattermost.requests_per_second = 1000;
    config.gateway.coalesce_interval_ms = 100;
    config.worker.lease_ttl_s = 2;
    config
}

pub struct RunningGateway {
    pub url: String,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

impl RunningGateway {
    pub async fn start(config: Config, options: Options) -> RunningGateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let gateway = Gateway::build(config, options)
            .await
            .expect("gateway builds");
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            gateway.run(listener, token).await.expect("gateway runs");
        });
        RunningGateway {
            url,
            shutdown,
            task,
        }
    }

    /// A crash: the task is dropped mid-flight, nothing is released.
    pub fn kill(self) {
        self.task.abort();
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn options(replica: &str) -> Options {
    Options {
        websocket: true,
        egress: true,
        replica: replica.to_owned(),
    }
}

pub use common::testsupport::eventually;

/// Messages currently in a stream.
pub async fn stream_messages(client: &async_nats::Client, stream: &str) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    match js.get_stream(stream).await {
        Ok(mut stream) => stream.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}
