//! `loadtest`: ccfleet's load generator and test doubles — the Mattermost simulator, the
//! fake model API, the chat client and benchmarks. The product itself is `ccfleet-gateway`
//! and `ccfleet-worker`.

use clap::{Parser, Subcommand};

/// ccfleet's load generator and test doubles (the Mattermost simulator, the fake model API,
/// a chat client, benchmarks). The product is `ccfleet-gateway` and `ccfleet-worker`; run a
/// local fleet with `deploy/local/fleet`.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version)]
struct Args {
    #[command(flatten)]
    config: common::cli::ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the configuration and print it (secrets hidden).
    CheckConfig,
    /// Run the Mattermost simulator.
    Mmsim(loadtest::mmsim::CliArgs),
    /// Measure the post-create rate the Mattermost simulator sustains; prints one JSON line.
    MmsimBench(loadtest::mmsim::bench::BenchArgs),
    /// Run the scripted fake Anthropic Messages API.
    FakeModel(loadtest::fake_model::CliArgs),
    /// Start the doubles a local fleet's configuration leaves out (the simulator when no
    /// mattermost.url, the fake model when no model API) and write the settings that point
    /// the fleet at them; used by deploy/local/fleet.
    Doubles(loadtest::doubles::DoublesArgs),
    /// Talk to the fleet as a Mattermost user and watch the replies stream in.
    Chat(loadtest::chat::ChatArgs),
    /// Measure what the fleet costs (ingest, overhead, latency, startup, scale); prints
    /// one JSON line.
    Bench(loadtest::bench::BenchArgs),
    /// Take a fleet (its own services, simulator, gateway and worker processes) through
    /// Garage, Mattermost, NATS and PostgreSQL outages and a worker SIGKILL while users
    /// talk to it; prints one JSON line (lost, duplicated, stuck, notices).
    Faults(loadtest::faults::run::Args),
    /// Run a containerized fleet (2 gateways, 3 workers, 3 NATS nodes) through a seeded
    /// schedule of kills, pauses, partitions, outages and Mattermost storms while users
    /// talk to it; prints one JSON line (lost, duplicated, out_of_order, stuck, recovery).
    Chaos(loadtest::chaos::Args),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = args.config.load_or_exit("loadtest");
    match args.command {
        Command::CheckConfig => {
            println!("{config:#?}");
            Ok(())
        }
        Command::Mmsim(command) => loadtest::mmsim::cli_main(command, config),
        Command::MmsimBench(command) => loadtest::mmsim::bench::cli_main(command),
        Command::FakeModel(command) => loadtest::fake_model::cli_main(command, config),
        Command::Doubles(command) => loadtest::doubles::cli_main(command, &args.config),
        Command::Chat(command) => loadtest::chat::cli_main(command),
        Command::Bench(command) => loadtest::bench::cli_main(command, config),
        Command::Faults(command) => loadtest::faults::run::cli_main(command),
        Command::Chaos(command) => loadtest::chaos::cli_main(command),
    }
}
