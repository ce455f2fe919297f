//! The flags every ccfleet binary shares, and loading the configuration from them.

use std::path::PathBuf;

use crate::config::{Config, Sources};

/// `--config FILE` and `--set section.key=value`, flattened into each binary's parser.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file (see deploy/ccfleet.example.toml).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one key, e.g. `--set worker.max_sessions=8`. Wins over the file and the
    /// environment (`CCFLEET__WORKER__MAX_SESSIONS`).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    pub overrides: Vec<(String, String)>,
}

fn parse_override(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    Ok((key.trim().to_owned(), value.to_owned()))
}

impl ConfigArgs {
    /// Loads the configuration, or prints what is wrong and exits with status 64.
    pub fn load_or_exit(&self, program: &str) -> Config {
        match Config::load(&Sources::from_process(
            self.config.clone(),
            self.overrides.clone(),
        )) {
            Ok(config) => config,
            Err(err) => {
                let mut message = format!("{program}: {err}");
                let mut source = std::error::Error::source(&err);
                while let Some(inner) = source {
                    message.push_str(&format!(": {inner}"));
                    source = inner.source();
                }
                eprintln!("{message}");
                std::process::exit(crate::EXIT_CONFIG);
            }
        }
    }
}
