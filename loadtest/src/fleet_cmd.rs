//! `loadtest fleet`: the local main job. Starts a gateway and N workers against the
//! services in the configuration. When no Mattermost server is configured it starts the
//! simulator (seeded with a team, a channel, a bot and a demo user) and, when no model API
//! is configured, the fake model — and says so plainly.

use std::time::Duration;

use common::config::{Config, RuntimeKind};
use tokio_util::sync::CancellationToken;

use crate::fleet::{FleetOptions, LocalFleet, find_claude_bin};

#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    /// Workers to start.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Where the simulator listens, when it is used.
    #[arg(long, default_value = "127.0.0.1:8065")]
    pub sim_listen: String,
}

pub fn cli_main(args: FleetArgs, config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let _telemetry = common::telemetry::init(&config.telemetry, "ccfleet-local")?;
        let shutdown = CancellationToken::new();
        common::signals::cancel_on_signal(shutdown.clone());
        if config.mattermost.url.is_empty() {
            simulated(args, config, shutdown).await
        } else {
            real(args, config, shutdown).await
        }
    })
}

async fn simulated(
    args: FleetArgs,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let options = FleetOptions {
        workers: args.workers,
        runtime: config.worker.runtime,
        max_sessions: config.worker.max_sessions,
        contract: false,
        sessions_dir: config.worker.sessions_dir.clone(),
        gateway_listen: config.gateway.listen.clone(),
        sim_listen: args.sim_listen.clone(),
    };
    let fake_model = config.model.base_url.is_empty() && config.model.api_key.is_empty();
    let fleet = LocalFleet::start(config, options).await?;
    let sim = fleet.sim.base_url().to_owned();
    println!();
    println!("ccfleet is running locally.");
    println!(
        "  No Mattermost server is configured (mattermost.url), so this is the Mattermost SIMULATOR at {sim},"
    );
    println!(
        "  seeded with team `{}`, channel `~{}`, bot `@{}` and demo user `@{}` (password `{}`).",
        fleet.boot.team.name,
        fleet.boot.channel.name,
        fleet.boot.bot.username,
        fleet.boot.demo.username,
        crate::mmsim::client::BOOTSTRAP_PASSWORD
    );
    if fake_model {
        println!(
            "  No model API is configured (model.base_url / model.api_key), so Claude Code talks to the FAKE MODEL at {},",
            fleet.model.base_url()
        );
        println!(
            "  which answers from prompt markers such as [[write:index.html]] or [[bash:ls]]."
        );
    }
    println!(
        "  Gateway: {} · workers: {} · runtime: {:?}",
        fleet.gateway_url,
        fleet.workers.len(),
        fleet.config.worker.runtime
    );
    println!();
    println!("Talk to it as the demo user:");
    println!(
        "  target/debug/loadtest chat --mattermost {sim} \"[[write:index.html]] make a page\""
    );
    println!("Stop with Ctrl-C.");
    shutdown.cancelled().await;
    println!("stopping…");
    tokio::time::timeout(Duration::from_secs(60), fleet.stop())
        .await
        .ok();
    Ok(())
}

async fn real(
    args: FleetArgs,
    mut config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if config.worker.runtime == RuntimeKind::Process
        && config.worker.claude_bin == "claude"
        && let Some(bin) = find_claude_bin()
    {
        config.worker.claude_bin = bin;
    }
    let listener = tokio::net::TcpListener::bind(&config.gateway.listen).await?;
    let gateway = gateway::Gateway::build(config.clone(), gateway::Options::default()).await?;
    let mut tasks = tokio::task::JoinSet::new();
    let token = shutdown.clone();
    tasks.spawn(async move {
        gateway
            .run(listener, token)
            .await
            .map_err(anyhow::Error::from)
    });
    for n in 1..=args.workers {
        let mut config = config.clone();
        if config.worker.id.is_empty() {
            config.worker.id = format!("local-worker-{n}");
        } else {
            config.worker.id = format!("{}-{n}", config.worker.id);
        }
        let worker = worker::Worker::build(config).await?;
        let token = shutdown.clone();
        tasks.spawn(async move { worker.run(token).await.map_err(anyhow::Error::from) });
    }
    println!(
        "ccfleet is running against Mattermost at {} with {} workers; gateway on {}.",
        config.mattermost.url, args.workers, config.gateway.listen
    );
    println!("Stop with Ctrl-C.");
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}
