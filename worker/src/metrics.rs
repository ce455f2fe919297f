//! Prometheus metrics of the worker, served at `/metrics` on `worker.metrics_listen`, with
//! `/healthz` (the process answers) and `/readyz` (every background loop is up).
//!
//! [`Metrics`] registers what the parts count ([`crate::stats::Stats`]) with the runtime's
//! (the warm pool's) metrics and, at each scrape, sets the gauges read from the claiming
//! core and the queue. The names are a contract with the dashboards and alert rules under
//! `deploy/observability`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::ctx::{Ctx, Health};

type Labels = Vec<(&'static str, String)>;

/// The gauges set at each scrape.
#[derive(Debug, Default)]
struct Gauges {
    sessions: Family<Labels, Gauge>,
    slots: Gauge,
    slots_free: Gauge,
    threads_waiting: Gauge,
}

pub struct Metrics {
    registry: Registry,
    gauges: Gauges,
    ctx: Arc<Ctx>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// How long a scrape waits for the queue's count before it reports the last one.
const QUEUE_READ: Duration = Duration::from_secs(1);

impl Metrics {
    /// The worker's registry: its [`Stats`], the gauges set at each scrape and the
    /// runtime's (the warm pool's) metrics.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        let mut registry = Registry::with_prefix("ccfleet_worker");
        ctx.stats.register(&mut registry);
        let gauges = Gauges::default();
        registry.register(
            "sessions",
            "Sessions this worker owns: active (in a turn) or idle",
            gauges.sessions.clone(),
        );
        registry.register(
            "slots",
            "Sessions this worker can hold",
            gauges.slots.clone(),
        );
        registry.register(
            "slots_free",
            "Sessions this worker can take now (0 while draining)",
            gauges.slots_free.clone(),
        );
        registry.register(
            "threads_waiting",
            "Threads queued for a worker fleet-wide, as this worker sees the queue",
            gauges.threads_waiting.clone(),
        );
        ctx.runtime.register_metrics(&mut registry);
        let metrics = Self {
            registry,
            gauges,
            ctx,
        };
        metrics.refresh_local();
        metrics
    }

    /// The worker's stats (what its parts count).
    pub fn stats(&self) -> &crate::stats::Stats {
        &self.ctx.stats
    }

    /// Sets the gauges read from the claiming core.
    fn refresh_local(&self) {
        let (owned, free) = {
            let claimer = self.ctx.claimer.lock().expect("claimer lock");
            let free = if claimer.is_draining() {
                0
            } else {
                claimer.free()
            };
            (claimer.owned().count() as i64, free as i64)
        };
        let active = self.ctx.stats.active.get().clamp(0, owned);
        let set = |state: &'static str, n: i64| {
            self.gauges
                .sessions
                .get_or_create(&vec![("state", state.into())])
                .set(n)
        };
        set("active", active);
        set("idle", owned - active);
        self.gauges
            .slots
            .set(self.ctx.config.worker.max_sessions as i64);
        self.gauges.slots_free.set(free);
    }

    /// Sets every gauge: the claiming core's, and the queue's count from NATS (kept from
    /// the last scrape when NATS does not answer in time).
    pub async fn refresh(&self) {
        self.refresh_local();
        if let Ok(waiting) =
            tokio::time::timeout(QUEUE_READ, crate::claim::queue::queued_threads(&self.ctx)).await
            && let Some(waiting) = waiting
        {
            self.gauges
                .threads_waiting
                .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        }
    }

    /// The OpenMetrics text exposition (gauges as last refreshed).
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Serves `GET /metrics`, `/healthz` and `/readyz` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .with_state(metrics)
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                let down = health.down();
                if down.is_empty() {
                    (StatusCode::OK, "ready".to_owned())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("down: {}", down.join(", ")),
                    )
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn render(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    metrics.refresh().await;
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}
