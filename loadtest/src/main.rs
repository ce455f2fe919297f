//! `loadtest`: the Mattermost simulator, the fake model API, the chat client and benchmarks.

use clap::{Parser, Subcommand};

/// ccfleet's load generator and test doubles.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about)]
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
    /// Run a complete local fleet (the simulator and fake model when nothing real is configured).
    Fleet(loadtest::fleet_cmd::FleetArgs),
    /// Talk to the fleet as a Mattermost user and watch the replies stream in.
    Chat(loadtest::chat::ChatArgs),
    /// Measure what the fleet costs (ingest, overhead, latency); prints one JSON line.
    Bench(loadtest::bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = args.config.load_or_exit("loadtest");
    match args.command {
        Command::CheckConfig => {
            println!("{config:#?}");
            Ok(())
        }
        Command::Mmsim(args) => loadtest::mmsim::cli_main(args, config),
        Command::MmsimBench(args) => loadtest::mmsim::bench::cli_main(args),
        Command::FakeModel(args) => loadtest::fake_model::cli_main(args, config),
        Command::Fleet(args) => loadtest::fleet_cmd::cli_main(args, config),
        Command::Chat(args) => loadtest::chat::cli_main(args),
        Command::Bench(args) => loadtest::bench::cli_main(args, config),
    }
}
