//! `ccfleet-gateway`: parse flags, load configuration, start telemetry, serve.

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// ccfleet's gateway: Claude Code sessions in Mattermost threads, Mattermost side.
///
/// Receives Mattermost events (WebSocket, outgoing webhook, `/claude` slash command,
/// buttons) and hands them to the workers through NATS JetStream; posts the workers'
/// replies within Mattermost's rate budget; serves signed links to the files sessions
/// made, and `/healthz`, `/readyz`, `/metrics`. Stateless: run as many as you like.
/// Configuration: built-in defaults, then `--config FILE`, then `CCFLEET__SECTION__KEY`
/// variables, then `--set` (every key: deploy/ccfleet.example.toml).
#[derive(Debug, Parser)]
#[command(name = "ccfleet-gateway", version, about)]
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
    let config = args.config.load_or_exit("ccfleet-gateway");
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let _telemetry = common::telemetry::init(&config.telemetry, "ccfleet-gateway")?;
        let listener = tokio::net::TcpListener::bind(&config.gateway.listen).await?;
        tracing::info!(listen = %listener.local_addr()?, "gateway listening");
        let shutdown = CancellationToken::new();
        common::signals::cancel_on_signal(shutdown.clone());
        let gateway = gateway::Gateway::build(config, gateway::Options::default()).await?;
        gateway.run(listener, shutdown).await?;
        anyhow::Ok(())
    })
}
