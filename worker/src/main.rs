//! `ccfleet-worker`: parse flags, load configuration, start telemetry, run until SIGTERM.

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// ccfleet worker: runs Claude Code sessions for Mattermost threads.
#[derive(Debug, Parser)]
#[command(name = "ccfleet-worker", version, about)]
struct Args {
    #[command(flatten)]
    config: common::cli::ConfigArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
