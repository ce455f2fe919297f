//! A faithful stand-in for the Mattermost server: REST v4, the WebSocket, and the calls the
//! server makes to integrations (outgoing webhooks, slash commands, actions, dialogs), with
//! the server's limits (rate limiting, 16,383-rune posts) and injectable faults.
//!
//! Behaviour follows `shared/reference/mattermost-integration.md` and the official OpenAPI
//! spec; every `/api/v4` exchange can be checked against that spec ([`contract`]).
//!
//! Invariants:
//! * Tests and scripted users reach the simulator only through HTTP and the WebSocket
//!   ([`client`]); simulator-only controls live under `/sim/` ([`operator`]).
//! * State sits in memory behind one `RwLock`, never held across an await; WebSocket fan-out
//!   has its own lock, and sockets write from their own tasks.
//! * Every background task (sockets, outgoing webhooks) is tracked and ends on shutdown.
//!
//! Known gaps are listed in `loadtest/src/mmsim/README.md`.

mod api;
pub mod bench;
pub mod client;
pub mod contract;
mod error;
mod integrations;
pub mod limits;
pub mod model;
pub mod operator;
mod server;
mod store;
mod ws;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::Error;
pub use limits::{Fault500, Faults, RateLimit};

use server::{Clock, Shared};
use store::Store;

/// Where the official spec sits in the shared docs, relative to this crate.
pub const DEFAULT_SPEC_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/reference/mattermost-openapi-v4.yaml"
);

/// The spec to check against: `MMSIM_OPENAPI_SPEC` if set, else [`DEFAULT_SPEC_PATH`].
pub fn spec_path() -> PathBuf {
    std::env::var_os("MMSIM_OPENAPI_SPEC")
        .map_or_else(|| PathBuf::from(DEFAULT_SPEC_PATH), PathBuf::from)
}

/// How the simulator behaves. `Options::default()` is a server with the real defaults:
/// no rate limit, no latency, no faults, no persistence, no contract checking.
#[derive(Debug, Clone)]
pub struct Options {
    /// `ServiceSettings.SiteURL`; defaults to `http://<listener address>`.
    pub site_url: Option<String>,
    /// Initial faults and limits (also settable at runtime over `/sim/faults`).
    pub faults: Faults,
    /// Load state from this file at start (if it exists) and write it at shutdown.
    pub state_file: Option<PathBuf>,
    /// Check every `/api/v4` exchange against the OpenAPI spec at this path.
    pub contract_spec: Option<PathBuf>,
    /// `OutgoingIntegrationRequestsTimeout`; also the lifetime of trigger ids.
    pub integration_timeout: Duration,
    /// `TeamSettings.EnableOpenServer`: anyone may sign up (otherwise only admins create users
    /// after the first).
    pub open_server: bool,
    /// Server ping frame interval.
    pub ws_ping_interval: Duration,
    /// Close a socket that sent nothing (not even a pong) for this long.
    pub ws_pong_wait: Duration,
    /// Close an unauthenticated socket after this long.
    pub ws_auth_timeout: Duration,
    /// How long a dropped connection can be resumed.
    pub ws_reconnect_window: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            site_url: None,
            faults: Faults::default(),
            state_file: None,
            contract_spec: None,
            integration_timeout: Duration::from_secs(30),
            open_server: false,
            ws_ping_interval: Duration::from_secs(60),
            ws_pong_wait: Duration::from_secs(100),
            ws_auth_timeout: Duration::from_secs(5),
            ws_reconnect_window: Duration::from_secs(300),
        }
    }
}

/// The simulator component.
pub struct Sim;

/// A running simulator: its address, and its termination.
pub struct SimHandle {
    base_url: String,
    addr: SocketAddr,
    task: JoinHandle<Result<(), Error>>,
}

impl SimHandle {
    /// `http://host:port`, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the simulator stopped (after its shutdown token fired) and saved its state.
    pub async fn wait(self) -> Result<(), Error> {
        self.task.await.unwrap_or(Err(Error::Panicked))
    }
}

impl Sim {
    /// Starts serving on `listener` until `shutdown` fires.
    pub async fn start(
        listener: TcpListener,
        options: Options,
        shutdown: CancellationToken,
    ) -> Result<SimHandle, Error> {
        let addr = listener.local_addr().map_err(Error::LocalAddr)?;
        let base_url = format!("http://{addr}");
        let store = match &options.state_file {
            Some(path) if path.exists() => load_state(path)?,
            _ => Store::default(),
        };
        let contract = match options.contract_spec.clone() {
            Some(path) => {
                let p = path.clone();
                let spec = tokio::task::spawn_blocking(move || contract::Spec::load(&p))
                    .await
                    .map_err(|_| Error::Panicked)?
                    .map_err(Error::Contract)?;
                Some(contract::Checker::new(spec, path))
            }
            None => None,
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(Error::HttpClient)?;
        let shared = Arc::new(Shared {
            site_url: options
                .site_url
                .clone()
                .unwrap_or_else(|| base_url.clone())
                .trim_end_matches('/')
                .to_owned(),
            store: RwLock::new(store),
            hub: ws::Hub::new(options.ws_reconnect_window),
            clock: Clock::default(),
            limits: limits::Limits::new(options.faults.clone()),
            contract,
            http,
            tasks: TaskTracker::new(),
            shutdown: shutdown.clone(),
            integration_log: Mutex::new(Vec::new()),
            options,
        });
        let app =
            server::router(shared.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
                .map_err(Error::Serve);
            shared.tasks.close();
            shared.tasks.wait().await;
            let saved = save_state(&shared);
            served.and(saved)
        });
        Ok(SimHandle {
            base_url,
            addr,
            task,
        })
    }
}

fn load_state(path: &Path) -> Result<Store, Error> {
    let text = std::fs::read(path).map_err(|source| Error::ReadState {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| Error::ParseState {
        path: path.to_owned(),
        source,
    })
}

/// Writes the state file (if any) atomically: a temporary file renamed over the old one.
fn save_state(sh: &Shared) -> Result<(), Error> {
    let Some(path) = &sh.options.state_file else {
        return Ok(());
    };
    let bytes = serde_json::to_vec(&*sh.read()).map_err(Error::EncodeState)?;
    let tmp = path.with_extension("tmp");
    let write = |p: &Path| std::fs::write(p, &bytes);
    write(&tmp)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| Error::WriteState {
            path: path.clone(),
            source,
        })
}

/// Flags of `loadtest mmsim`.
#[derive(Debug, clap::Args)]
pub struct CliArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8065")]
    pub listen: SocketAddr,
    /// Restore state from this file at start and save it at shutdown.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// SiteURL announced in `response_url`s (default: http://<listen address>).
    #[arg(long)]
    pub site_url: Option<String>,
    /// Enable rate limiting with this many requests per second per client address.
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Burst allowed above the rate (the server's default is 100).
    #[arg(long, default_value_t = 100)]
    pub rate_limit_burst: u32,
    /// Latency added to every Mattermost request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Check every exchange against this OpenAPI spec (see GET /sim/contract).
    #[arg(long, value_name = "FILE")]
    pub contract_spec: Option<PathBuf>,
    /// Let anyone create users (TeamSettings.EnableOpenServer).
    #[arg(long)]
    pub open_server: bool,
}

/// Runs the subcommand until SIGINT/SIGTERM.
pub fn cli_main(args: CliArgs, config: common::config::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let _telemetry = common::telemetry::init(&config.telemetry, "mmsim")?;
        let options = Options {
            site_url: args.site_url,
            faults: Faults {
                rate_limit: args.rate_limit.map(|per_sec| RateLimit {
                    per_sec,
                    max_burst: args.rate_limit_burst,
                    vary_by_user: false,
                }),
                error_500: None,
                latency_ms: args.latency_ms,
            },
            state_file: args.state,
            contract_spec: args.contract_spec,
            open_server: args.open_server,
            ..Options::default()
        };
        let listener = TcpListener::bind(args.listen).await?;
        let shutdown = CancellationToken::new();
        let sim = Sim::start(listener, options, shutdown.clone()).await?;
        tracing::info!(url = sim.base_url(), "Mattermost simulator listening");
        println!("mmsim listening on {}", sim.base_url());
        wait_for_signal().await?;
        shutdown.cancel();
        sim.wait().await?;
        Ok(())
    })
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
