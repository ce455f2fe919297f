//! `loadtest doubles`: the test doubles a local fleet's configuration leaves out, for
//! `deploy/local/fleet` (which runs the product's own binaries).
//!
//! With no Mattermost server configured (`mattermost.url`) it starts the Mattermost
//! simulator, seeds it as a first-time admin would (team `ccfleet`, channel `~claude`, bot
//! `@claude` with an access token, demo user `@alice`) and registers the gateway's outgoing
//! webhook and slash command; with no model API (`model.base_url`, `model.api_key`) it
//! starts the fake model. It then writes a shell file with the settings that point the
//! fleet at them, says plainly what the fleet uses, and serves until SIGINT/SIGTERM (it
//! exits at once when it started nothing).
//!
//! The file also carries the local machine's defaults (`--defaults`: the local services,
//! the runtime, …) for each key the configuration does not name, so a configuration file
//! that names its own PostgreSQL is obeyed even though environment variables outrank files.
//!
//! Invariant: a key the configuration names (file, `CCFLEET__…` environment, `--set`) is
//! never written to the file, except the Mattermost and model settings of a double this
//! command started because the configuration left them empty.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use common::cli::ConfigArgs;
use common::config::{Config, ENV_PREFIX, RuntimeKind, Sources};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::fake_model::FakeModel;
use crate::mmsim::client::{BOOTSTRAP_PASSWORD, Bootstrap, bootstrap};
use crate::mmsim::{Options as SimOptions, Sim, SimHandle};

/// The key the fake model accepts; it checks none.
const FAKE_API_KEY: &str = "sk-ant-test-fake";
const FAKE_MODEL_NAME: &str = "claude-fake-1";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("the configuration with the local defaults is invalid")]
    Config(#[source] common::config::Error),
    #[error("could not bind {what} on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the simulator failed")]
    Sim(#[from] crate::mmsim::Error),
    #[error("seeding the simulator failed")]
    Seed(#[from] crate::mmsim::client::Error),
    #[error("could not find the Docker bridge for the fake model")]
    Docker(#[source] crate::fleet::Error),
    #[error("could not write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Flags of `loadtest doubles`; the configuration comes from loadtest's own `--config` and
/// `--set`, which must be the ones the fleet's processes get.
#[derive(Debug, clap::Args)]
pub struct DoublesArgs {
    /// Write the fleet's settings here, as shell assignments (replaced atomically, mode 600).
    #[arg(long, value_name = "FILE")]
    pub env_out: PathBuf,
    /// TOML file of local defaults, each used only where the configuration names no value.
    #[arg(long, value_name = "FILE")]
    pub defaults: Option<PathBuf>,
    /// Where the simulator listens, when it is needed.
    #[arg(long, default_value = "127.0.0.1:8065")]
    pub sim_listen: SocketAddr,
    /// Where the fake model listens, when it is needed (default: a free port on loopback, or
    /// on the Docker bridge for the docker runtime, so containers reach it).
    #[arg(long)]
    pub model_listen: Option<SocketAddr>,
}

/// Which doubles a configuration needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub simulator: bool,
    pub fake_model: bool,
}

impl Plan {
    pub fn for_config(config: &Config) -> Plan {
        Plan {
            simulator: config.mattermost.url.is_empty(),
            fake_model: config.model.base_url.is_empty() && config.model.pool().is_empty(),
        }
    }
}

/// Where a configuration's values come from, to tell which keys it names.
pub struct Named<'a> {
    pub file: &'a toml::Table,
    pub env: &'a HashMap<String, String>,
    pub overrides: &'a [(String, String)],
}

impl Named<'_> {
    /// Whether the file, the environment or an override sets `key` (`section.key`).
    pub fn names(&self, key: &str) -> bool {
        let in_file = {
            let mut parts = key.split('.');
            let first = parts.next().and_then(|p| self.file.get(p));
            parts
                .try_fold(first, |value, part| {
                    Some(value.and_then(|v| v.as_table()).and_then(|t| t.get(part)))
                })
                .flatten()
                .is_some()
        };
        let var = env_var(key);
        in_file
            || self.env.keys().any(|k| k.eq_ignore_ascii_case(&var))
            || self.overrides.iter().any(|(k, _)| k == key)
    }
}

/// The environment variable for `section.key`: `CCFLEET__SECTION__KEY`.
pub fn env_var(key: &str) -> String {
    let mut var = ENV_PREFIX.to_owned();
    for part in key.split('.') {
        var.push_str("__");
        var.push_str(&part.to_ascii_uppercase());
    }
    var
}

/// Every value of a TOML table as (`section.key`, value as the environment spells it; lists
/// comma-separated). Nested tables are flattened with dots.
pub fn leaves(table: &toml::Table) -> Vec<(String, String)> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) {
        for (name, value) in table {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            match value {
                toml::Value::Table(inner) => walk(&key, inner, out),
                toml::Value::String(s) => out.push((key, s.clone())),
                toml::Value::Array(items) => {
                    let items: Vec<String> = items.iter().map(scalar).collect();
                    out.push((key, items.join(",")));
                }
                other => out.push((key, scalar(other))),
            }
        }
    }
    fn scalar(value: &toml::Value) -> String {
        match value {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
    let mut out = Vec::new();
    walk("", table, &mut out);
    out
}

/// `value` as one POSIX shell word.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The URL a gateway listening on `listen` is reached at from this machine.
pub fn local_url(listen: &str) -> String {
    match listen.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => {
            format!("http://127.0.0.1:{}", addr.port())
        }
        _ => format!("http://{listen}"),
    }
}

/// The shell file: `export` lines for the fleet's settings, plain assignments for the
/// script's own variables (which must not reach the fleet's environment).
pub fn env_file(settings: &[(String, String)], script: &[(&str, String)]) -> String {
    let mut out = String::from("# Written by `loadtest doubles` for deploy/local/fleet.\n");
    for (key, value) in settings {
        out.push_str(&format!("export {}={}\n", env_var(key), shell_quote(value)));
    }
    for (name, value) in script {
        out.push_str(&format!("{name}={}\n", shell_quote(value)));
    }
    out
}

/// The configuration, where it came from, and the local defaults it does not name.
struct Resolved {
    config: Config,
    defaults: Vec<(String, String)>,
    file: toml::Table,
    env: HashMap<String, String>,
    overrides: Vec<(String, String)>,
}

impl Resolved {
    fn names(&self, key: &str) -> bool {
        Named {
            file: &self.file,
            env: &self.env,
            overrides: &self.overrides,
        }
        .names(key)
    }
}

fn read_toml(path: &Path) -> Result<toml::Table, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| Error::Parse {
        path: path.to_owned(),
        source,
    })
}

fn resolve(args: &ConfigArgs, defaults: Option<&Path>) -> Result<Resolved, Error> {
    let file = match &args.config {
        Some(path) => read_toml(path)?,
        None => toml::Table::new(),
    };
    let local = match defaults {
        Some(path) => read_toml(path)?,
        None => toml::Table::new(),
    };
    let env: HashMap<String, String> = std::env::vars().collect();
    let overrides = args.overrides.clone();
    let named = Named {
        file: &file,
        env: &env,
        overrides: &overrides,
    };
    let defaults: Vec<(String, String)> = leaves(&local)
        .into_iter()
        .filter(|(key, _)| !named.names(key))
        .collect();
    // The defaults go first: overrides apply in order, and a named key never is one.
    let mut all = defaults.clone();
    all.extend(overrides.iter().cloned());
    let config = Config::load(&Sources {
        file: args.config.clone(),
        env: env.clone(),
        overrides: all,
    })
    .map_err(Error::Config)?;
    Ok(Resolved {
        config,
        defaults,
        file,
        env,
        overrides,
    })
}

/// Runs the subcommand: start what is needed, write the file, serve until a signal.
pub fn cli_main(args: DoublesArgs, config_args: &ConfigArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(args, config_args))
}

struct Started {
    sim: Option<(SimHandle, Bootstrap)>,
    model: Option<FakeModel>,
}

async fn run(args: DoublesArgs, config_args: &ConfigArgs) -> anyhow::Result<()> {
    let resolved = resolve(config_args, args.defaults.as_deref())?;
    let config = &resolved.config;
    let _telemetry = common::telemetry::init(&config.telemetry, "loadtest-doubles")?;
    let plan = Plan::for_config(config);
    let shutdown = CancellationToken::new();
    let mut settings = resolved.defaults.clone();
    let public_url = if resolved.names("gateway.public_url") {
        config.gateway.public_url.clone()
    } else {
        let url = local_url(&config.gateway.listen);
        settings.push(("gateway.public_url".into(), url.clone()));
        url
    };
    if config.worker.runtime == RuntimeKind::Process
        && config.worker.claude_bin == "claude"
        && !resolved.names("worker.claude_bin")
        && let Some(bin) = crate::fleet::find_claude_bin()
    {
        settings.push(("worker.claude_bin".into(), bin));
    }

    let started = Started {
        sim: if plan.simulator {
            Some(start_sim(&args, &public_url, &shutdown, &mut settings).await?)
        } else {
            None
        },
        model: if plan.fake_model {
            Some(start_model(&args, config.worker.runtime, &shutdown, &mut settings).await?)
        } else {
            None
        },
    };
    let worker_id = if config.worker.id.is_empty() {
        "local-worker".to_owned()
    } else {
        config.worker.id.clone()
    };
    let runtime = match config.worker.runtime {
        RuntimeKind::Docker => "docker",
        RuntimeKind::Process => "process",
        RuntimeKind::Sim => "sim",
    };
    let doubles: Vec<&str> = [
        started.sim.as_ref().map(|_| "simulator"),
        started.model.as_ref().map(|_| "fake-model"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let text = env_file(
        &settings,
        &[
            ("CCFLEET_LOCAL_DOUBLES", doubles.join(" ")),
            ("CCFLEET_LOCAL_RUNTIME", runtime.to_owned()),
            ("CCFLEET_LOCAL_WORKER_ID", worker_id),
            ("CCFLEET_LOCAL_GATEWAY", public_url.clone()),
        ],
    );
    write_private(&args.env_out, &text)?;
    report(config, &started, &public_url);

    if started.sim.is_none() && started.model.is_none() {
        return Ok(());
    }
    wait_for_signal().await?;
    shutdown.cancel();
    if let Some((sim, _)) = started.sim {
        sim.wait().await?;
    }
    if let Some(model) = started.model {
        model.shutdown().await;
    }
    Ok(())
}

async fn start_sim(
    args: &DoublesArgs,
    gateway_url: &str,
    shutdown: &CancellationToken,
    settings: &mut Vec<(String, String)>,
) -> Result<(SimHandle, Bootstrap), Error> {
    let listener = TcpListener::bind(args.sim_listen)
        .await
        .map_err(|source| Error::Bind {
            what: "the Mattermost simulator",
            addr: args.sim_listen,
            source,
        })?;
    let sim = Sim::start(listener, SimOptions::default(), shutdown.child_token()).await?;
    let boot = bootstrap(sim.base_url()).await?;
    // Register the integrations as an admin does; mentions arrive over the WebSocket.
    let (hook, command) = boot.register_integrations(gateway_url).await?;
    settings.extend([
        ("mattermost.url".into(), sim.base_url().to_owned()),
        ("mattermost.bot_token".into(), boot.bot_token.clone()),
        ("mattermost.webhook_token".into(), hook.token),
        ("mattermost.slash_token".into(), command.token),
    ]);
    Ok((sim, boot))
}

async fn start_model(
    args: &DoublesArgs,
    runtime: RuntimeKind,
    shutdown: &CancellationToken,
    settings: &mut Vec<(String, String)>,
) -> Result<FakeModel, Error> {
    let addr = match args.model_listen {
        Some(addr) => addr,
        None if runtime == RuntimeKind::Docker => SocketAddr::new(
            crate::fleet::docker_host_ip()
                .await
                .map_err(Error::Docker)?,
            0,
        ),
        None => SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 0),
    };
    let bind_error = |source| Error::Bind {
        what: "the fake model",
        addr,
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let model = FakeModel::start(listener, shutdown.child_token()).map_err(bind_error)?;
    settings.extend([
        ("model.base_url".into(), model.base_url()),
        ("model.api_key".into(), FAKE_API_KEY.into()),
        ("model.model".into(), FAKE_MODEL_NAME.into()),
    ]);
    Ok(model)
}

/// Writes `text` to `path` readable only by its owner (it holds tokens), atomically.
fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}

/// Says plainly what the fleet talks to.
fn report(config: &Config, started: &Started, gateway_url: &str) {
    println!();
    match &started.sim {
        Some((sim, boot)) => {
            println!(
                "Mattermost: the SIMULATOR at {} (no mattermost.url in the configuration),",
                sim.base_url()
            );
            println!(
                "  seeded with team `{}`, channel `~{}`, bot `@{}` and demo user `@{}` (password `{}`).",
                boot.team.name,
                boot.channel.name,
                boot.bot.username,
                boot.demo.username,
                BOOTSTRAP_PASSWORD
            );
        }
        None => println!(
            "Mattermost: the server at {} (mattermost.url).",
            config.mattermost.url
        ),
    }
    match &started.model {
        Some(model) => {
            println!(
                "Model API: the FAKE MODEL at {} (no model.base_url or model.api_key in the configuration),",
                model.base_url()
            );
            println!(
                "  which answers from prompt markers such as [[write:index.html]] or [[bash:ls]]."
            );
        }
        None if config.model.base_url.is_empty() => {
            println!("Model API: Anthropic's API (model.api_key; no model.base_url).")
        }
        None => println!("Model API: {} (model.base_url).", config.model.base_url),
    }
    println!("Gateway: {gateway_url}");
    if let Some((sim, _)) = &started.sim {
        let loadtest = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "loadtest".into());
        println!("Talk to it as the demo user:");
        println!(
            "  {loadtest} chat --mattermost {} \"[[write:index.html]] make a page\"",
            sim.base_url()
        );
    }
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn config(overrides: &[(&str, &str)]) -> Config {
        Config::load(&Sources {
            file: None,
            env: HashMap::new(),
            overrides: overrides
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        })
        .unwrap()
    }

    #[test]
    fn each_double_is_started_only_for_what_the_configuration_leaves_empty() {
        let cases = [
            (vec![], (true, true)),
            (
                vec![("mattermost.url", "https://mm.example.com")],
                (false, true),
            ),
            (vec![("model.api_key", "sk-real")], (true, false)),
            (vec![("model.base_url", "http://proxy:8123")], (true, false)),
            (
                vec![
                    ("mattermost.url", "https://mm.example.com"),
                    ("model.api_key", "sk-real"),
                ],
                (false, false),
            ),
        ];
        for (overrides, (simulator, fake_model)) in cases {
            assert_eq!(
                Plan::for_config(&config(&overrides)),
                Plan {
                    simulator,
                    fake_model
                },
                "{overrides:?}"
            );
        }
    }

    #[test]
    fn a_key_is_named_by_the_file_the_environment_or_an_override() {
        let file: toml::Table = toml::from_str("[nats]\nurl = \"nats://a:1\"\n").unwrap();
        let env = HashMap::from([("CCFLEET__POSTGRES__URL".to_owned(), "x".to_owned())]);
        let overrides = vec![("worker.runtime".to_owned(), "process".to_owned())];
        let named = Named {
            file: &file,
            env: &env,
            overrides: &overrides,
        };
        assert!(named.names("nats.url"));
        assert!(named.names("postgres.url"));
        assert!(named.names("worker.runtime"));
        assert!(!named.names("nats.prefix"));
        assert!(!named.names("object_store.endpoint"));
        assert!(!named.names("nats.url.deeper"));
    }

    #[test]
    fn leaves_flatten_sections_and_spell_values_as_the_environment_does() {
        let table: toml::Table = toml::from_str(
            "[worker]\nruntime = \"process\"\nmax_sessions = 4\napprovers = [\"a\", \"b\"]\n",
        )
        .unwrap();
        let mut got = leaves(&table);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("worker.approvers".to_owned(), "a,b".to_owned()),
                ("worker.max_sessions".to_owned(), "4".to_owned()),
                ("worker.runtime".to_owned(), "process".to_owned()),
            ]
        );
    }

    #[test]
    fn the_gateway_is_reached_on_loopback_when_it_listens_everywhere() {
        assert_eq!(local_url("0.0.0.0:8080"), "http://127.0.0.1:8080");
        assert_eq!(local_url("127.0.0.1:9000"), "http://127.0.0.1:9000");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever a value holds (quotes, `$`, newlines), the shell reads back exactly it.
        #[test]
        fn a_quoted_value_reads_back_unchanged(value in "[^\u{0}]{0,40}") {
            let text = env_file(&[("model.api_key".to_owned(), value.clone())], &[]);
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{text}\nprintf %s \"$CCFLEET__MODEL__API_KEY\""))
                .output()
                .unwrap();
            prop_assert!(out.status.success());
            prop_assert_eq!(String::from_utf8(out.stdout).unwrap(), value);
        }
    }
}
