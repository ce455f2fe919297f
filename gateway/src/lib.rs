//! The gateway: the only part of ccfleet that talks to Mattermost.
//!
//! Ingress turns Mattermost events (WebSocket, outgoing webhooks, the `/claude` slash
//! command, button actions, dialog submissions) into `proto` chat events on JetStream;
//! egress applies workers' reply operations to Mattermost's REST API within its limits;
//! artifact links are served from the object store; the admin API (`/admin/v1`, see
//! [`admin`]) shows the fleet to operators and forwards their commands to workers; the
//! configured approvers and allowed users are pinned to Mattermost user ids for workers
//! ([`directory`]), since workers never call Mattermost.
//!
//! Invariants: the gateway holds no session state — any replica may die at any time; what
//! must outlive a request lives in JetStream and its KV buckets. It acknowledges Mattermost
//! only after JetStream acknowledged. It never touches Docker or the agent, and decides
//! nothing about sessions: it reads workers' records and forwards operators' commands.

pub mod admin;
pub mod artifacts;
pub mod ctl;
pub mod directory;
pub mod egress;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod ingress;
pub mod mattermost;
pub mod metrics;
pub mod publish;
pub mod supervise;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use common::config::Config;
use common::nats::{Fabric, Topology};
use common::signing::Signer;
use proto::names::Names;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mattermost.url is not set: the gateway needs a Mattermost server")]
    NoMattermost,
    #[error("gateway.signing_key is not set: links and buttons cannot be signed")]
    NoSigningKey,
    #[error("NATS is unavailable")]
    Nats(#[from] common::nats::Error),
    #[error("object store is unavailable")]
    Store(#[from] common::store::Error),
    #[error("could not identify the bot account with Mattermost")]
    Bot(#[source] mattermost::Error),
    #[error("invalid Mattermost URL")]
    Ws(#[from] ingress::ws::Error),
    #[error("HTTP server failed")]
    Serve(#[source] std::io::Error),
    #[error("egress failed")]
    Egress(#[from] egress::Error),
    #[error("PostgreSQL is unavailable (the admin API reads the record)")]
    Pg(#[from] common::pg::Error),
}

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub publisher: publish::Publisher,
    pub signer: Signer,
    pub store: common::store::Store,
    pub mattermost: mattermost::Client,
    pub bot: Arc<mattermost::User>,
    pub metrics: Arc<metrics::Metrics>,
    pub nats: async_nats::Client,
    pub names: Names,
    /// Background loops that are down now (`/readyz`).
    pub health: Arc<common::health::Health>,
    pub admin: admin::Admin,
}

/// Which parts of the gateway run (all, in production).
#[derive(Debug, Clone)]
pub struct Options {
    /// Listen to the Mattermost WebSocket.
    pub websocket: bool,
    /// Take part in egress leadership.
    pub egress: bool,
    /// A name for this replica (egress lease holder, logs).
    pub replica: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            websocket: true,
            egress: true,
            replica: format!("gateway-{}-{}", hostname(), std::process::id()),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

pub struct Gateway {
    state: AppState,
    fabric: Fabric,
    options: Options,
}

impl Gateway {
    /// Connects to NATS, creates the fabric, identifies the bot.
    pub async fn build(config: Config, options: Options) -> Result<Self, Error> {
        if config.mattermost.url.is_empty() {
            return Err(Error::NoMattermost);
        }
        if config.gateway.signing_key.is_empty() {
            return Err(Error::NoSigningKey);
        }
        let nats = common::nats::connect(&config.nats, &options.replica).await?;
        let topology =
            Topology::from_config(&config.nats, Duration::from_secs(config.worker.lease_ttl_s));
        let fabric = common::nats::ensure_fabric(&nats, &topology).await?;
        let store = common::store::Store::from_config(&config.object_store)?;
        let mattermost =
            mattermost::Client::new(&config.mattermost.url, config.mattermost.bot_token.expose());
        let bot = identify(&mattermost).await?;
        tracing::info!(bot = %bot.username, "identified the bot account");
        let metrics = Arc::new(metrics::Metrics::default());
        let names = topology.names.clone();
        let publisher = publish::Publisher {
            js: fabric.js.clone(),
            posts: fabric.posts.clone(),
            names: names.clone(),
            metrics: metrics.clone(),
            files: Some((mattermost.clone(), store.clone())),
        };
        // The record is read only by the admin API: without admin tokens no pool is made,
        // so a gateway without them needs no database.
        let record = if config.gateway.admin_tokens.is_empty() {
            None
        } else {
            Some(admin::record::Record {
                pool: common::pg::pool(&config.postgres)?,
            })
        };
        let admin = admin::Admin {
            tokens: Arc::new(config.gateway.admin_tokens.clone()),
            record,
            leases: fabric.leases.clone(),
            workers: fabric.workers.clone(),
        };
        let state = AppState {
            admin,
            signer: Signer::new(config.gateway.signing_key.expose().as_bytes()),
            config: Arc::new(config),
            publisher,
            store,
            mattermost,
            bot: Arc::new(bot),
            metrics,
            nats,
            names,
            health: Arc::default(),
        };
        Ok(Self {
            state,
            fabric,
            options,
        })
    }

    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// Serves HTTP on `listener`, listens to the WebSocket and runs egress until
    /// `shutdown`; then finishes in-flight requests within the grace period.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let state = self.state.clone();
        let mut tasks = tokio::task::JoinSet::new();
        // The directory workers authorize by: refreshed once before any event is taken
        // (bounded, so Mattermost being slow delays nothing for long), then periodically.
        let directory = directory::Directory::from_config(
            &state.config,
            self.fabric.directory.clone(),
            state.mattermost.clone(),
        );
        if !directory.entries.is_empty() {
            match tokio::time::timeout(Duration::from_secs(10), directory.refresh_once()).await {
                Ok(Ok(refreshed)) => refreshed.notes.iter().for_each(directory::log),
                Ok(Err(err)) => tracing::warn!(
                    error = %common::error_chain(&err),
                    "could not resolve the configured users at start; retrying in the background"
                ),
                Err(_) => tracing::warn!(
                    "resolving the configured users took over 10 s; retrying in the background"
                ),
            }
        }
        tasks.spawn(directory.run(shutdown.clone()));
        if self.options.websocket {
            // Checked once here, so a bad URL fails the start instead of a restart loop.
            drop(ws_listener(&state)?);
            let (ws_state, token) = (state.clone(), shutdown.clone());
            // Down until the first connection stands.
            state.health.set_down(WEBSOCKET_LOOP);
            tasks.spawn(supervise::supervise(
                WEBSOCKET_LOOP,
                supervise::Up::ByItself,
                state.health.clone(),
                shutdown.clone(),
                move || {
                    let listener = ws_listener(&ws_state).map(|mut l| {
                        l.ready = Some((ws_state.health.clone(), WEBSOCKET_LOOP));
                        l
                    });
                    let token = token.clone();
                    async move {
                        listener?.run(token).await;
                        Ok::<_, ingress::ws::Error>(())
                    }
                },
            ));
        }
        if self.options.egress {
            let rate = state.config.mattermost.requests_per_second;
            let egress = egress::Egress {
                js: self.fabric.js.clone(),
                replies: self.fabric.replies.clone(),
                leases: self.fabric.leases.clone(),
                posts: self.fabric.posts.clone(),
                names: state.names.clone(),
                mattermost: state.mattermost.clone(),
                bot_user_id: state.bot.id.clone(),
                store: Some(state.store.clone()),
                budget: Arc::new(egress::budget::Budget::new(rate, rate)),
                circuit: Arc::new(egress::breaker::Circuit::new(
                    egress::breaker::Settings {
                        failures: state.config.mattermost.breaker_failures,
                        base_cooldown: egress::breaker::BASE_COOLDOWN,
                        max_cooldown: Duration::from_secs(
                            state.config.mattermost.breaker_max_cooldown_s,
                        ),
                    },
                    state.metrics.clone(),
                )),
                interval: Duration::from_millis(state.config.gateway.coalesce_interval_ms),
                lease_ttl: Duration::from_secs(state.config.worker.lease_ttl_s),
                replica: self.options.replica.clone(),
                metrics: state.metrics.clone(),
                health: state.health.clone(),
            };
            let token = shutdown.clone();
            tasks.spawn(supervise::supervise(
                egress::LOOP_NAME,
                supervise::Up::ByItself,
                state.health.clone(),
                shutdown.clone(),
                move || egress.clone().run(token.clone()),
            ));
        }
        let grace = Duration::from_secs(state.config.gateway.shutdown_grace_s);
        let app = router(state);
        let token = shutdown.clone();
        let server = axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await });
        let served = async { server.await.map_err(Error::Serve) };
        let result = served.await;
        // The server stopped (shutdown): give the rest the grace period.
        shutdown.cancel();
        // Supervised loops handle their own failures; they end only on shutdown.
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        match drained {
            Ok(()) => result,
            Err(_) => {
                tracing::warn!("grace period over; stopping remaining tasks");
                tasks.abort_all();
                result
            }
        }
    }
}

/// The WebSocket listener's name in `/readyz`.
const WEBSOCKET_LOOP: &str = "websocket";

fn ws_listener(state: &AppState) -> Result<ingress::ws::Listener, ingress::ws::Error> {
    ingress::ws::Listener::new(
        state.mattermost.clone(),
        state.config.mattermost.bot_token.expose(),
        &state.bot.id,
        &state.bot.username,
        state.publisher.clone(),
    )
}

async fn identify(client: &mattermost::Client) -> Result<mattermost::User, Error> {
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 0;
    loop {
        match client.me().await {
            Ok(user) => return Ok(user),
            Err(err) if err.is_retryable() && attempts < 20 => {
                attempts += 1;
                tracing::warn!(error = %err, "Mattermost not reachable yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(err) => return Err(Error::Bot(err)),
        }
    }
}

pub fn router(state: AppState) -> Router {
    let limit = state.config.gateway.max_body_bytes;
    Router::new()
        .route("/hooks/outgoing", post(ingress::http::outgoing_webhook))
        .route("/hooks/slash", post(ingress::http::slash_command))
        .route("/hooks/action", post(ingress::http::action))
        .route("/hooks/dialog", post(ingress::http::dialog))
        .route("/a/{token}", get(artifacts::get_root))
        .route("/a/{token}/", get(artifacts::get_root))
        .route("/a/{token}/{*path}", get(artifacts::get_file))
        .route("/z/{token}", get(artifacts::get_zip))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .nest("/admin/v1", admin::router())
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(25),
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let down = state.health.down();
    if !down.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("down: {}", down.join(", ")),
        );
    }
    if state.nats.connection_state() != async_nats::connection::State::Connected {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "NATS disconnected".to_owned(),
        );
    }
    let js = async_nats::jetstream::new(state.nats.clone());
    for stream in [state.names.events_stream(), state.names.replies_stream()] {
        if js.get_stream(&stream).await.is_err() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "JetStream streams missing".to_owned(),
            );
        }
    }
    (StatusCode::OK, "ready".to_owned())
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
