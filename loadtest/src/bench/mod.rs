//! `loadtest bench SCENARIO`: what the fleet costs, in numbers.
//!
//! Every scenario runs the fleet in-process against the local services
//! (`deploy/local/services up`) in its own slice of them — a NATS prefix, a PostgreSQL
//! database and an object-store prefix, exactly as a test gets ([`TestEnv`]) — so runs
//! never interfere. Progress goes to stderr; the figures end as exactly one JSON line on
//! stdout. `--report DIR` also writes `DIR/index.html` with latency histograms.
//!
//! * [`ingest`]: one gateway, no workers: webhook requests → JetStream-acknowledged events.
//! * [`overhead`]: the `sim` runtime, scripted users at a target rate: the fleet's own cost.
//! * [`latency`]: the real CLI with the fake model: new thread, follow-up, failover.
//! * [`startup`]: the real CLI in docker: a new thread's first model request with the warm
//!   pool off and on, against the bare CLI started directly.
//! * [`scale`]: a worker's memory per idle session, and latency with many active ones.
//! * [`egress`]: a model request through the worker's egress gateway against direct.
//! * [`repo`]: clone and push time of a 10,000-file repository (real git server).
//!
//! Benchmarks are not pass/fail tests: nothing here asserts on speed.

pub mod egress;
pub mod ingest;
pub mod latency;
pub mod overhead;
pub mod repo;
pub mod report;
pub mod scale;
pub mod startup;
pub mod stats;

use std::path::PathBuf;
use std::time::Duration;

use common::config::Config;
use common::testsupport::TestEnv;
use proto::names::Names;
use serde_json::Value;

pub use report::Report;

/// Flags of `loadtest bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Also write `DIR/index.html` with latency histograms and the run's parameters.
    #[arg(long, value_name = "DIR", global = true)]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Scenario {
    /// One gateway, no workers: outgoing-webhook requests until JetStream acknowledged them.
    Ingest(ingest::Args),
    /// The sim runtime driven by scripted users at a target rate: the fleet's own overhead.
    Overhead(overhead::Args),
    /// The real CLI with the fake model: new thread, follow-up and failover latency.
    Latency(latency::Args),
    /// The real CLI in docker: a new thread's first model request, warm pool off and on,
    /// against the bare CLI started directly.
    Startup(startup::Args),
    /// A worker's memory per idle session, and latency with many active sessions.
    Scale(scale::Args),
    /// A model request through the worker's egress gateway against direct to the model.
    Egress(egress::Args),
    /// Clone and push time of a large repository (10,000 files by default) through the
    /// worker's repository code against a real git server.
    Repo(repo::Args),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not bind a loopback port for {what}")]
    Bind {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the Mattermost simulator failed")]
    Sim(#[source] crate::mmsim::Error),
    #[error("talking to the Mattermost simulator failed: {what}")]
    Client {
        what: &'static str,
        #[source]
        source: crate::mmsim::client::Error,
    },
    #[error("the local fleet did not start")]
    Fleet(#[source] crate::fleet::Error),
    #[error("the gateway did not start")]
    Gateway(#[source] gateway::Error),
    #[error("NATS failed: {what}")]
    Nats {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("HTTP client failed")]
    Http(#[source] reqwest::Error),
    #[error("timed out after {within:?} waiting for {what}")]
    Timeout { what: String, within: Duration },
    #[error(
        "the Claude Code CLI was not found (set CCFLEET_CLAUDE_BIN, or install claude-agent-sdk)"
    )]
    NoClaude,
    #[error("invalid arguments: {0}")]
    Args(String),
}

impl Error {
    fn client(what: &'static str) -> impl FnOnce(crate::mmsim::client::Error) -> Error {
        move |source| Error::Client { what, source }
    }

    fn nats<E: std::error::Error + Send + Sync + 'static>(
        what: &'static str,
    ) -> impl FnOnce(E) -> Error {
        move |source| Error::Nats {
            what,
            source: Box::new(source),
        }
    }
}

/// A finished run: the JSON figures and what the report shows.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// A JSON object; printed as the run's one stdout line.
    pub figures: Value,
    pub report: Report,
}

/// Runs one scenario in the current runtime.
pub async fn run(args: &BenchArgs) -> Result<Outcome, Error> {
    match &args.scenario {
        Scenario::Ingest(a) => ingest::run(a).await,
        Scenario::Overhead(a) => overhead::run(a).await,
        Scenario::Latency(a) => latency::run(a).await,
        Scenario::Startup(a) => startup::run(a).await,
        Scenario::Scale(a) => scale::run(a).await,
        Scenario::Egress(a) => egress::run(a).await,
        Scenario::Repo(a) => repo::run(a).await,
    }
}

/// `loadtest bench`: runs the scenario, writes the report, prints the JSON line.
pub fn cli_main(args: BenchArgs, mut config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        // The fleet's own logs would drown the progress lines: warnings only (RUST_LOG wins).
        config.telemetry.log_level = "warn".into();
        let _telemetry = common::telemetry::init(&config.telemetry, "ccfleet-bench")?;
        let outcome = run(&args).await?;
        if let Some(dir) = &args.report {
            let path = outcome.report.write(dir)?;
            progress("report", format_args!("wrote {}", path.display()));
        }
        println!("{}", serde_json::to_string(&outcome.figures)?);
        Ok(())
    })
}

/// One progress line on stderr.
pub(crate) fn progress(scenario: &str, line: std::fmt::Arguments<'_>) {
    eprintln!("[bench {scenario}] {line}");
}

/// Stops `fleet`, saying so if it takes longer than `within` (the figures stand either way).
pub(crate) async fn stop_fleet(fleet: crate::fleet::LocalFleet, scenario: &str, within: Duration) {
    if tokio::time::timeout(within, fleet.stop()).await.is_err() {
        progress(
            scenario,
            format_args!("the fleet did not stop within {} s", within.as_secs()),
        );
    }
}

/// This run's slice of the local services. [`BenchEnv::finish`] removes its streams and
/// buckets; dropping it drops its database.
pub(crate) struct BenchEnv {
    env: TestEnv,
}

impl BenchEnv {
    pub(crate) async fn new() -> Self {
        Self {
            env: TestEnv::new().await,
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.env.prefix
    }

    /// The services' configuration, with production-sized pools (tests use small ones).
    pub(crate) fn config(&self) -> Config {
        let mut config = self.env.config.clone();
        config.postgres.pool_size = 16;
        config
    }

    pub(crate) async fn nats(&self) -> async_nats::Client {
        self.env.nats().await
    }

    pub(crate) fn sessions_dir(&self) -> PathBuf {
        std::env::temp_dir().join(format!("ccfleet-bench-{}", self.env.prefix))
    }

    /// Deletes this run's streams, buckets and session directories (best effort).
    pub(crate) async fn finish(self) {
        let names = Names::new(self.env.prefix.clone());
        let js = async_nats::jetstream::new(self.nats().await);
        for stream in [
            names.events_stream(),
            names.replies_stream(),
            names.dead_stream(),
            names.queue_stream(),
        ] {
            let _ = js.delete_stream(&stream).await;
        }
        for bucket in [
            names.posts_bucket(),
            names.leases_bucket(),
            names.workers_bucket(),
        ] {
            let _ = js.delete_key_value(&bucket).await;
        }
        let dir = self.sessions_dir();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    }
}

pub(crate) fn secs(d: Duration) -> f64 {
    stats::round2(d.as_secs_f64())
}
