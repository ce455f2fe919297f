//! The HTTP shell: shared state, the router, and the front middleware that every Mattermost
//! request passes (latency, rate limit, injected faults, contract check, counters).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::contract::Checker;
use super::error::ApiError;
use super::limits::{Decision, Limits};
use super::store::Store;
use super::ws::Hub;
use super::{Options, api, integrations, operator, ws};

/// The version the simulator announces (`X-Version-Id`, `hello.server_version`).
pub(crate) const SERVER_VERSION: &str = "10.11.0.sim.0.false";
/// Largest accepted request body: `FileSettings.MaxFileSize` (100 MiB) plus multipart framing.
pub(crate) const MAX_FILE_SIZE: usize = 100 * 1024 * 1024;

pub(crate) struct Shared {
    pub options: Options,
    pub site_url: String,
    pub store: RwLock<Store>,
    pub hub: Hub,
    pub clock: Clock,
    pub limits: Limits,
    pub contract: Option<Checker>,
    pub http: reqwest::Client,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    pub integration_log: Mutex<Vec<serde_json::Value>>,
}

impl Shared {
    pub fn read(&self) -> RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Records what an integration call did, for tests (`GET /sim/integrations`).
    pub fn log_integration(&self, entry: serde_json::Value) {
        lock(&self.integration_log).push(entry);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Wall-clock milliseconds plus an offset tests move forward (`POST /sim/clock/advance`), so
/// expiries (trigger ids, response URLs, dedupe windows) are testable without waiting.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        wall + self.offset_ms.load(Ordering::Relaxed)
    }

    pub fn advance(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

/// The authenticated caller of a REST request.
#[derive(Debug, Clone)]
pub(crate) struct Auth {
    pub user_id: String,
}

/// The session token of a request: `Authorization: Bearer|Token`, the `MMAUTHTOKEN` cookie, or
/// the `access_token` query parameter, in the server's order (`ParseAuthTokenFromRequest`).
pub(crate) fn token_from(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        for prefix in ["bearer ", "token "] {
            if value.len() > prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix) {
                return Some(value[prefix.len()..].trim().to_owned());
            }
        }
    }
    for cookie in headers.get_all(header::COOKIE) {
        if let Ok(text) = cookie.to_str() {
            for part in text.split(';') {
                if let Some(v) = part.trim().strip_prefix("MMAUTHTOKEN=") {
                    return Some(v.to_owned());
                }
            }
        }
    }
    query.and_then(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v)
    })
}

impl FromRequestParts<Arc<Shared>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, sh: &Arc<Shared>) -> Result<Self, ApiError> {
        let token =
            token_from(&parts.headers, parts.uri.query()).ok_or_else(ApiError::unauthorized)?;
        let store = sh.read();
        let session = store
            .sessions
            .get(&token)
            .ok_or_else(ApiError::unauthorized)?;
        match store.users.get(&session.user_id) {
            Some(u) if u.user.delete_at == 0 => Ok(Auth {
                user_id: session.user_id.clone(),
            }),
            _ => Err(ApiError::unauthorized()),
        }
    }
}

pub(crate) fn router(sh: Arc<Shared>) -> Router {
    let v4 = Router::new()
        .route("/api/v4/users", post(api::create_user))
        .route("/api/v4/users/login", post(api::login))
        .route("/api/v4/users/logout", post(api::logout))
        .route("/api/v4/users/ids", post(api::users_by_ids))
        .route("/api/v4/users/usernames", post(api::users_by_usernames))
        .route("/api/v4/users/{user_id}/patch", put(api::patch_user))
        .route("/api/v4/users/{user_id}", get(api::get_user))
        .route(
            "/api/v4/users/username/{username}",
            get(api::get_user_by_username),
        )
        .route("/api/v4/users/{user_id}/tokens", post(api::create_token))
        .route("/api/v4/users/{user_id}/teams", get(api::user_teams))
        .route("/api/v4/users/{user_id}/channels", get(api::user_channels))
        .route(
            "/api/v4/users/{user_id}/posts/{post_id}/reactions/{emoji_name}",
            delete(api::delete_reaction),
        )
        .route("/api/v4/teams", post(api::create_team))
        .route("/api/v4/teams/{team_id}", get(api::get_team))
        .route("/api/v4/teams/name/{team_name}", get(api::get_team_by_name))
        .route(
            "/api/v4/teams/{team_id}/members",
            post(api::add_team_member),
        )
        .route(
            "/api/v4/teams/{team_id}/channels/name/{channel_name}",
            get(api::get_channel_by_name),
        )
        .route("/api/v4/channels", post(api::create_channel))
        .route("/api/v4/channels/direct", post(api::create_direct_channel))
        .route("/api/v4/channels/{channel_id}", get(api::get_channel))
        .route(
            "/api/v4/channels/{channel_id}/members",
            post(api::add_channel_member),
        )
        .route(
            "/api/v4/channels/{channel_id}/posts",
            get(api::channel_posts),
        )
        .route("/api/v4/bots", post(api::create_bot))
        .route("/api/v4/posts", post(api::create_post))
        .route("/api/v4/posts/ephemeral", post(api::create_ephemeral_post))
        .route(
            "/api/v4/posts/{post_id}",
            get(api::get_post)
                .put(api::update_post)
                .delete(api::delete_post),
        )
        .route("/api/v4/posts/{post_id}/patch", put(api::patch_post))
        .route("/api/v4/posts/{post_id}/thread", get(api::get_thread))
        .route(
            "/api/v4/posts/{post_id}/reactions",
            get(api::post_reactions),
        )
        .route(
            "/api/v4/posts/{post_id}/actions/{action_id}",
            post(integrations::do_post_action),
        )
        .route("/api/v4/reactions", post(api::create_reaction))
        .route("/api/v4/files", post(api::upload_file))
        .route("/api/v4/files/{file_id}", get(api::get_file))
        .route("/api/v4/files/{file_id}/info", get(api::get_file_info))
        .route("/api/v4/hooks/outgoing", post(api::create_outgoing_hook))
        .route("/api/v4/commands", post(api::create_command))
        .route(
            "/api/v4/commands/execute",
            post(integrations::execute_command),
        )
        .route(
            "/api/v4/actions/dialogs/open",
            post(integrations::open_dialog),
        )
        .route(
            "/api/v4/actions/dialogs/submit",
            post(integrations::submit_dialog),
        )
        .route("/api/v4/websocket", get(ws::upgrade))
        .route("/api/v4/websocket/", get(ws::upgrade))
        .route(
            "/hooks/commands/{hook_id}",
            post(integrations::command_webhook),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(sh.clone(), front))
        .layer(DefaultBodyLimit::max(MAX_FILE_SIZE + 1024 * 1024));
    Router::new()
        .merge(operator::router())
        .merge(v4)
        .with_state(sh)
}

async fn not_found() -> ApiError {
    ApiError::not_found(
        "api.context.404.app_error",
        "Sorry, we could not find the page.",
    )
}

/// Rate limit, latency, faults, contract and counters, in the order a real deployment
/// would apply them (the limiter wraps the whole handler).
async fn front(
    State(sh): State<Arc<Shared>>,
    matched: Option<MatchedPath>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let route = matched
        .as_ref()
        .map_or("(unmatched)", MatchedPath::as_str)
        .to_owned();
    let latency = sh.limits.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let limit_key = if sh.limits.vary_by_user() {
        token_from(req.headers(), req.uri().query()).unwrap_or_else(|| peer.ip().to_string())
    } else {
        peer.ip().to_string()
    };
    let decision = sh.limits.check_rate(&limit_key);
    let mut resp = match &decision {
        Decision::Limited(_) => limited_response(),
        _ if sh.limits.take_fault(method.as_str(), &route, || {
            let token = token_from(req.headers(), req.uri().query())?;
            sh.read().sessions.get(&token).map(|s| s.user_id.clone())
        }) =>
        {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "sim.injected_fault.app_error",
                "Injected fault.",
            )
            .with_detail("the simulator was told to fail this request")
            .into_response()
        }
        _ => match &sh.contract {
            Some(checker) if route.starts_with("/api/v4/") && route != "/api/v4/websocket" => {
                checked(checker, req, next).await
            }
            _ => next.run(req).await,
        },
    };
    let headers = resp.headers_mut();
    headers.insert("x-version-id", HeaderValue::from_static(SERVER_VERSION));
    if let Ok(v) = HeaderValue::from_str(&super::model::new_id()) {
        headers.insert("x-request-id", v);
    }
    if let Some(info) = decision.info() {
        for (name, value) in [
            ("x-ratelimit-limit", info.limit),
            ("x-ratelimit-remaining", info.remaining),
            ("x-ratelimit-reset", info.reset_s),
        ] {
            headers.insert(name, HeaderValue::from(value));
        }
        if let Decision::Limited(i) = &decision {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(i.retry_after_s));
        }
    }
    sh.limits
        .count(method.as_str(), &route, resp.status().as_u16());
    resp
}

fn limited_response() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "limit exceeded\n",
    )
        .into_response()
}

/// Buffers both bodies so the checker sees exactly what crossed the wire.
async fn checked(checker: &Checker, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(req_bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let req_ct = content_type(&parts.headers);
    let resp = next
        .run(Request::from_parts(parts, Body::from(req_bytes.clone())))
        .await;
    let (rparts, rbody) = resp.into_parts();
    let Ok(resp_bytes) = axum::body::to_bytes(rbody, usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    checker.check(&super::contract::Exchange {
        method: method.as_str(),
        path: &path,
        query: query.as_deref(),
        request_content_type: &req_ct,
        request_body: &req_bytes,
        status: rparts.status.as_u16(),
        response_content_type: &content_type(&rparts.headers),
        response_body: &resp_bytes,
    });
    Response::from_parts(rparts, Body::from(resp_bytes))
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// JSON answer with a status.
pub(crate) fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api.marshal_error",
            "Failed to encode the answer.",
        )
        .with_detail(e.to_string())
        .into_response(),
    }
}

/// Decodes a JSON body the way the server does: anything undecodable is an invalid `what`.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    body: &Bytes,
    what: &str,
) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_param(what).with_detail(e.to_string()))
}
