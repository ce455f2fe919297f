//! `ccfleet-ctl`: see `gateway::ctl`.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = match gateway::ctl::Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            let _ = err.print();
            return std::process::ExitCode::from(if err.use_stderr() {
                gateway::ctl::exit::USAGE
            } else {
                gateway::ctl::exit::OK
            });
        }
    };
    let outcome = gateway::ctl::run(args).await;
    print!("{}", outcome.stdout);
    if !outcome.stderr.is_empty() {
        eprintln!("ccfleet-ctl: {}", outcome.stderr);
    }
    std::process::ExitCode::from(outcome.code)
}
