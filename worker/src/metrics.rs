//! Prometheus metrics of the worker, served at `/metrics` on `worker.metrics_listen`, with
//! `/healthz` (the process answers) and `/readyz` (every background loop is up).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::ctx::Health;
use crate::runtime::Runtime;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// The worker's registry, with the runtime's metrics (the warm pool's) in it.
    pub fn new(runtime: &Runtime) -> Self {
        let mut registry = Registry::with_prefix("ccfleet_worker");
        runtime.register_metrics(&mut registry);
        Self { registry }
    }

    /// The OpenMetrics text exposition.
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
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}
