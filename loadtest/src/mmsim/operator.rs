//! Simulator-only operator endpoints under `/sim/` — not part of Mattermost's API, never
//! rate-limited, counted or contract-checked. Tests drive faults and read counters here.
//!
//! * `GET /sim/health` — `{"status":"OK"}`.
//! * `GET /sim/stats` — request counters per method, route template and status, plus the
//!   number of live WebSocket connections; `DELETE /sim/stats` resets the counters.
//! * `GET|PUT /sim/faults` — rate limit, latency and injected 500s, for every caller or one
//!   user ([`Faults`]).
//! * `GET /sim/contract` — contract check report ([`Report`]); `DELETE` resets it.
//! * `GET /sim/integrations` — what each call to an integration did.
//! * `POST /sim/clock/advance` `{"ms":N}` — moves the simulator's clock forward.
//! * `POST /sim/state/save` — writes the state file now.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::contract::Report;
use super::limits::{Faults, RouteCount};
use super::server::{Shared, json, lock};

/// `GET /sim/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    pub requests: Vec<RouteCount>,
    pub websocket_connections: usize,
}

impl Stats {
    /// Requests to `method route`, of any status.
    pub fn count(&self, method: &str, route: &str) -> u64 {
        self.requests
            .iter()
            .filter(|r| r.method == method && r.route == route)
            .map(|r| r.count)
            .sum()
    }

    /// Requests answered with `status`, on any route.
    pub fn with_status(&self, status: u16) -> u64 {
        self.requests
            .iter()
            .filter(|r| r.status == status)
            .map(|r| r.count)
            .sum()
    }
}

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/sim/health", get(health))
        .route("/sim/stats", get(stats).delete(reset_stats))
        .route("/sim/faults", get(get_faults).put(put_faults))
        .route("/sim/contract", get(contract).delete(reset_contract))
        .route("/sim/integrations", get(integrations))
        .route("/sim/clock/advance", post(advance_clock))
        .route("/sim/state/save", post(save_state))
}

async fn health() -> Response {
    json(StatusCode::OK, &serde_json::json!({"status": "OK"}))
}

async fn stats(State(sh): State<Arc<Shared>>) -> Response {
    json(
        StatusCode::OK,
        &Stats {
            requests: sh.limits.counts(),
            websocket_connections: sh.hub.connection_count(),
        },
    )
}

async fn reset_stats(State(sh): State<Arc<Shared>>) -> StatusCode {
    sh.limits.reset_counts();
    StatusCode::NO_CONTENT
}

async fn get_faults(State(sh): State<Arc<Shared>>) -> Response {
    json(StatusCode::OK, &sh.limits.faults())
}

async fn put_faults(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) => {
            sh.limits.set_faults(f.clone());
            json(StatusCode::OK, &f)
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn contract(State(sh): State<Arc<Shared>>) -> Response {
    let report = sh
        .contract
        .as_ref()
        .map_or_else(Report::default, |c| c.report());
    json(StatusCode::OK, &report)
}

async fn reset_contract(State(sh): State<Arc<Shared>>) -> StatusCode {
    if let Some(c) = &sh.contract {
        c.reset();
    }
    StatusCode::NO_CONTENT
}

async fn integrations(State(sh): State<Arc<Shared>>) -> Response {
    let log = lock(&sh.integration_log).clone();
    json(StatusCode::OK, &log)
}

#[derive(Deserialize)]
struct Advance {
    ms: i64,
}

async fn advance_clock(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Advance>(&body) {
        Ok(a) if a.ms >= 0 => {
            sh.clock.advance(a.ms);
            json(StatusCode::OK, &serde_json::json!({"now": sh.now()}))
        }
        _ => (StatusCode::BAD_REQUEST, "expected {\"ms\": <non-negative>}").into_response(),
    }
}

async fn save_state(State(sh): State<Arc<Shared>>) -> Response {
    match super::save_state(&sh) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response(),
    }
}
