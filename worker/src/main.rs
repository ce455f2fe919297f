//! `ccfleet-worker`: parse flags, load configuration, start telemetry, run until SIGTERM.

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// ccfleet's worker: runs the Claude Code sessions of Mattermost threads.
///
/// Claims threads from NATS JetStream, runs one Claude Code CLI per session in its own
/// container (or process), streams its output back as replies, asks for approvals, and
/// keeps checkpoints and files in the object store and the record in PostgreSQL. Run
/// several: a thread whose worker stops is taken over by another. Configuration: built-in
/// defaults, then `--config FILE`, then `CCFLEET__SECTION__KEY` variables, then `--set`
/// (every key: deploy/ccfleet.example.toml).
#[derive(Debug, Parser)]
#[command(name = "ccfleet-worker", version, about)]
struct Args {
    #[command(flatten)]
    config: common::cli::ConfigArgs,
    /// Health check for containers: GET this http:// URL (e.g. the instance's `/readyz`)
    /// and exit 0 on 2xx, 1 otherwise; nothing else runs.
    #[arg(long, value_name = "URL")]
    probe: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(url) = &args.probe {
        std::process::exit(common::cli::probe(url, std::time::Duration::from_secs(3)));
    }
    let config = args.config.load_or_exit("ccfleet-worker");
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let _telemetry = common::telemetry::init(&config.telemetry, "ccfleet-worker")?;
        let shutdown = CancellationToken::new();
        common::signals::cancel_on_signal(shutdown.clone());
        let worker = worker::Worker::build(config).await?;
        worker.run(shutdown).await?;
        anyhow::Ok(())
    })
}
