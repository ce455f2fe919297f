//! The egress gateway: session containers' only way out. One listener per worker, on the
//! session network, that is both
//! - the CLI's `ANTHROPIC_BASE_URL`: a model request (origin-form, `POST /v1/messages`)
//!   carries the session's token as its API key; the gateway checks it, replaces it with
//!   the real credential and forwards to `model.base_url`, the response streamed back
//!   unchanged (SSE included);
//! - the container's `HTTP_PROXY`/`HTTPS_PROXY` (token as the proxy password): plain
//!   proxy requests (absolute-form) and `CONNECT` tunnels to allowed hosts are forwarded;
//!   any other host gets a 403 whose body names it.
//!
//! Invariants: the real model credential never leaves the worker except on the request to
//! `model.base_url`; a request without a current session token is never forwarded; no
//! redirect is followed on a session's behalf (it could lead to a host not allowed).
//! Decisions are [`policy`]'s (sans-IO); this module is the I/O around them.

pub mod budget;
mod notice;
pub mod policy;

pub use notice::Notice;

/// What the thread said about a session held at a budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// A top-up was recorded: held requests look at the budgets again.
    Continue,
    /// Held requests are refused, so the turn ends; `by` said so.
    Stop { by: String },
}
pub use policy::Scope;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use base64::Engine;
use common::config::{EgressConfig, HostPattern, ModelConfig, Secret};
use futures::TryStreamExt;
use proto::ids::SessionId;
use std::collections::HashMap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use policy::{Decision, Policy, Refusal, Sessions, Target};

/// The largest request body forwarded (model requests carry images and long
/// conversations; bodies are read whole before forwarding).
const MAX_MODEL_REQUEST: usize = 64 * 1024 * 1024;
/// The model API when `model.base_url` is empty.
const ANTHROPIC_API: &str = "https://api.anthropic.com";
/// Notices queued for one session's actor before more are dropped.
const NOTICES: usize = 64;
/// Added to OAuth-authenticated model requests, as the CLI does for its own OAuth logins.
const OAUTH_BETA: &str = "oauth-2025-04-20";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the egress gateway cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the egress gateway's HTTP client could not be built")]
    Client(#[source] reqwest::Error),
    #[error("the egress gateway failed while serving")]
    Serve(#[source] std::io::Error),
}

/// The model credential the gateway adds to model requests. `Debug` hides it.
#[derive(Debug, Clone)]
pub enum Credential {
    /// Sent as `x-api-key`.
    ApiKey(Secret),
    /// A subscription account's OAuth token (`sk-ant-oat…`), sent as `Authorization:
    /// Bearer`.
    OAuth(Secret),
}

impl Credential {
    pub fn from_config(model: &ModelConfig) -> Self {
        if model.api_key.expose().starts_with("sk-ant-oat") {
            Credential::OAuth(model.api_key.clone())
        } else {
            Credential::ApiKey(model.api_key.clone())
        }
    }
}

/// What the gateway forwards to and allows.
#[derive(Debug, Clone)]
pub struct EgressOptions {
    /// `model.base_url`; empty: Anthropic's API.
    pub model_base_url: String,
    pub credential: Credential,
    /// `egress.allowed_hosts`, parsed.
    pub allowed_hosts: Vec<HostPattern>,
    /// `egress.channel_allowed_hosts`, parsed: channel id → hosts its sessions may reach.
    pub channel_hosts: HashMap<String, Vec<HostPattern>>,
}

impl EgressOptions {
    pub fn from_config(egress: &EgressConfig, model: &ModelConfig) -> Self {
        Self {
            model_base_url: model.base_url.clone(),
            credential: Credential::from_config(model),
            allowed_hosts: egress
                .allowed_hosts
                .iter()
                .filter_map(|p| HostPattern::parse(p))
                .collect(),
            channel_hosts: egress
                .channel_allowed_hosts
                .iter()
                .map(|(channel, hosts)| {
                    let hosts = hosts.iter().filter_map(|p| HostPattern::parse(p)).collect();
                    (channel.clone(), hosts)
                })
                .collect(),
        }
    }
}

/// A cheap handle on the gateway: issue and revoke session tokens, build a container's
/// environment; [`Egress::run`] serves.
#[derive(Debug, Clone)]
pub struct Egress {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sessions: Mutex<Sessions>,
    policy: Policy,
    channel_hosts: HashMap<String, Vec<HostPattern>>,
    /// Where each session's notices go (its actor, through the runtime's session).
    notices: Mutex<HashMap<SessionId, mpsc::Sender<Notice>>>,
    /// Sessions whose model requests wait at a budget, until the thread answers.
    holds: Mutex<HashMap<SessionId, tokio::sync::watch::Sender<Option<Release>>>>,
    credential: Credential,
    upstream: String,
    client: reqwest::Client,
    /// `host:port` containers reach the gateway at.
    advertise: String,
    listener: Mutex<Option<TcpListener>>,
}

impl Egress {
    /// Binds `listen`; containers will be told to reach it at `advertise` (`None`: the
    /// bound address).
    pub async fn bind(
        listen: SocketAddr,
        advertise: Option<String>,
        options: EgressOptions,
    ) -> Result<Self, Error> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| Error::Bind {
                addr: listen.to_string(),
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| Error::Bind {
            addr: listen.to_string(),
            source,
        })?;
        let advertise = advertise.unwrap_or_else(|| bound.to_string());
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()
            .map_err(Error::Client)?;
        let upstream = if options.model_base_url.is_empty() {
            ANTHROPIC_API.to_owned()
        } else {
            options.model_base_url.trim_end_matches('/').to_owned()
        };
        tracing::info!(addr = %bound, advertise = %advertise, "egress gateway listening");
        Ok(Self {
            inner: Arc::new(Inner {
                sessions: Mutex::default(),
                policy: Policy::new(options.allowed_hosts),
                channel_hosts: options.channel_hosts,
                notices: Mutex::default(),
                holds: Mutex::default(),
                credential: options.credential,
                upstream,
                client,
                advertise,
                listener: Mutex::new(Some(listener)),
            }),
        })
    }

    /// `host:port` containers reach the gateway at.
    pub fn advertise(&self) -> &str {
        &self.inner.advertise
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.inner.sessions.lock().expect("egress sessions lock")
    }

    /// A new token for `session` (its earlier ones stop working).
    pub fn issue(&self, session: &SessionId) -> String {
        let mut random = [0u8; 32];
        random[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        random[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        self.sessions().issue(session, &random)
    }

    /// The session's container is gone: its tokens stop working, its grants and its
    /// notices' receiver are dropped.
    pub fn revoke(&self, session: &SessionId) {
        self.sessions().forget(session);
        self.notice_senders().remove(session);
        self.release(
            session,
            Release::Stop {
                by: "ccfleet".into(),
            },
        );
    }

    /// The thread answered about a session held at a budget: its held requests go on
    /// (and look at the budgets again) or are refused.
    pub fn release(&self, session: &SessionId, release: Release) {
        let hold = self
            .inner
            .holds
            .lock()
            .expect("egress holds lock")
            .remove(session);
        if let Some(hold) = hold {
            hold.send_replace(Some(release));
        }
    }

    /// Waits until the thread answers about `session`, held at a budget.
    #[expect(
        dead_code,
        reason = "the budget gate comes with the meter (merge of h-pool)"
    )]
    async fn held(&self, session: &SessionId) -> Release {
        let mut answer = self
            .inner
            .holds
            .lock()
            .expect("egress holds lock")
            .entry(session.clone())
            .or_insert_with(|| tokio::sync::watch::channel(None).0)
            .subscribe();
        match answer.wait_for(Option::is_some).await {
            Ok(release) => release.clone().unwrap_or(Release::Continue),
            // Not reached: the sender is dropped only after it sent.
            Err(_) => Release::Stop {
                by: "ccfleet".into(),
            },
        }
    }

    /// A warm container's token now names the session that took it.
    pub fn rename(&self, from: &SessionId, to: &SessionId) {
        self.sessions().rename(from, to);
        self.notice_senders().remove(from);
    }

    fn notice_senders(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<SessionId, mpsc::Sender<Notice>>> {
        self.inner.notices.lock().expect("egress notices lock")
    }

    /// Where the gateway's notices about `session` go from now on (an earlier receiver
    /// gets no more).
    pub fn subscribe(&self, session: &SessionId) -> mpsc::Receiver<Notice> {
        let (tx, rx) = mpsc::channel(NOTICES);
        self.notice_senders().insert(session.clone(), tx);
        rx
    }

    /// Tells the session's actor, if it listens. A full queue drops the notice: the
    /// actor is far behind, and every notice is about a request that will be made again.
    pub fn notify(&self, session: &SessionId, notice: Notice) {
        let sender = self.notice_senders().get(session).cloned();
        if let Some(sender) = sender
            && let Err(err) = sender.try_send(notice)
        {
            tracing::debug!(session_id = %session, error = %err, "an egress notice was dropped");
        }
    }

    /// The session belongs to `channel`: its hosts (configuration) are open to it.
    pub fn set_channel(&self, session: &SessionId, channel: &str) {
        let hosts = self
            .inner
            .channel_hosts
            .get(channel)
            .cloned()
            .unwrap_or_default();
        self.sessions().set_channel(session, hosts);
    }

    /// The thread allowed `host` for the session (once, or for the session).
    pub fn grant(&self, session: &SessionId, host: &str, scope: Scope) {
        self.sessions().grant(session, host, scope);
    }

    /// The environment that sends a container's model requests and all its HTTP(S)
    /// traffic through the gateway, identified by `token`.
    pub fn container_env(&self, token: &str) -> Vec<(String, String)> {
        let at = &self.inner.advertise;
        let host = at.rsplit_once(':').map_or(at.as_str(), |(h, _)| h);
        let proxy = format!("http://session:{token}@{at}");
        let mut env = vec![
            ("ANTHROPIC_BASE_URL".to_owned(), format!("http://{at}")),
            ("ANTHROPIC_API_KEY".to_owned(), token.to_owned()),
        ];
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            env.push((name.to_owned(), proxy.clone()));
        }
        // The gateway itself is reached directly (as the model API); everything else
        // goes through it.
        for name in ["NO_PROXY", "no_proxy"] {
            env.push((name.to_owned(), host.to_owned()));
        }
        env
    }

    /// Serves until `shutdown`; open tunnels are closed then.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), Error> {
        let Some(listener) = self.inner.listener.lock().expect("listener lock").take() else {
            return Ok(());
        };
        let tunnels = TaskTracker::new();
        let this = self.clone();
        let (tracker, stop) = (tunnels.clone(), shutdown.clone());
        let service = tower::service_fn(move |req: Request<Body>| {
            let (this, tracker, stop) = (this.clone(), tracker.clone(), stop.clone());
            async move { Ok::<_, Infallible>(this.handle(req, &tracker, &stop).await) }
        });
        // Without NODELAY, small writes (SSE events, request heads) wait for delayed ACKs:
        // ~40 ms per model request.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let served = axum::serve(
            listener,
            axum::ServiceExt::<Request<Body>>::into_make_service(service),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
        tunnels.close();
        tunnels.wait().await;
        served.map_err(Error::Serve)
    }

    async fn handle(
        &self,
        req: Request<Body>,
        tunnels: &TaskTracker,
        stop: &CancellationToken,
    ) -> Response<Body> {
        if req.method() == Method::CONNECT {
            return self.connect(req, tunnels, stop);
        }
        match req.uri().authority().map(|a| a.to_string()) {
            // Absolute-form: a proxy request, unless it names the gateway itself (a client
            // that proxies its model requests too).
            Some(authority) if authority != self.inner.advertise => self.proxy(req).await,
            _ => self.model(req).await,
        }
    }

    fn decide(&self, token: Option<&str>, target: &Target) -> Decision {
        let decision = {
            let mut sessions = self.sessions();
            self.inner.policy.decide(&mut sessions, token, target)
        };
        if let (Decision::Refuse(Refusal::NotAllowed { host, port }), Some(session)) = (
            &decision,
            token.and_then(|t| self.sessions().session(t).cloned()),
        ) {
            self.notify(
                &session,
                Notice::HostRefused {
                    host: host.clone(),
                    port: *port,
                },
            );
        }
        decision
    }

    async fn model(&self, req: Request<Body>) -> Response<Body> {
        let token = api_key(req.headers()).or_else(|| proxy_token(req.headers()));
        let session = match self.decide(token.as_deref(), &Target::Model) {
            Decision::Forward { session } => session,
            Decision::Refuse(_) => {
                return model_error(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "ccfleet egress gateway: unknown session token",
                );
            }
        };
        let (parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let body = match axum::body::to_bytes(body, MAX_MODEL_REQUEST).await {
            Ok(body) => body,
            Err(_) => {
                return model_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_too_large",
                    "ccfleet egress gateway: the request body is too large or was cut",
                );
            }
        };
        let mut headers = forwardable(&parts.headers);
        headers.remove("x-api-key");
        headers.remove(axum::http::header::AUTHORIZATION);
        match &self.inner.credential {
            Credential::ApiKey(key) => {
                if let Ok(value) = HeaderValue::from_str(key.expose()) {
                    headers.insert("x-api-key", sensitive(value));
                }
            }
            Credential::OAuth(token) => {
                if let Ok(value) = HeaderValue::from_str(&format!("Bearer {}", token.expose())) {
                    headers.insert(axum::http::header::AUTHORIZATION, sensitive(value));
                }
                let beta = match headers.get("anthropic-beta").and_then(|v| v.to_str().ok()) {
                    Some(b) if b.split(',').any(|x| x.trim() == OAUTH_BETA) => b.to_owned(),
                    Some(b) => format!("{b},{OAUTH_BETA}"),
                    None => OAUTH_BETA.to_owned(),
                };
                if let Ok(value) = HeaderValue::from_str(&beta) {
                    headers.insert("anthropic-beta", value);
                }
            }
        }
        let url = format!("{}{path}", self.inner.upstream);
        let sent = self
            .inner
            .client
            .request(parts.method, &url)
            .headers(headers)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) => streamed(response),
            Err(err) => {
                tracing::warn!(session_id = %session, error = &err as &dyn std::error::Error, "the model API did not answer");
                model_error(
                    StatusCode::BAD_GATEWAY,
                    "api_error",
                    "ccfleet egress gateway: the model API did not answer",
                )
            }
        }
    }

    async fn proxy(&self, req: Request<Body>) -> Response<Body> {
        let uri = req.uri().clone();
        let Some(host) = uri.host() else {
            return refusal(StatusCode::BAD_REQUEST, "ccfleet egress gateway: no host\n");
        };
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        let target = Target::Host {
            host: host.to_owned(),
            port,
        };
        let token = proxy_token(req.headers());
        let session = match self.decide(token.as_deref(), &target) {
            Decision::Forward { session } => session,
            Decision::Refuse(refused) => return refused_response(&refused, false),
        };
        let (parts, body) = req.into_parts();
        // Read whole (plain HTTP through a proxy is rare and small: HTTPS tunnels), so a
        // request without a body goes out without one.
        let Ok(body) = axum::body::to_bytes(body, MAX_MODEL_REQUEST).await else {
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                "ccfleet egress gateway: the request body is too large or was cut\n",
            );
        };
        let mut outgoing = self
            .inner
            .client
            .request(parts.method, uri.to_string())
            .headers(forwardable(&parts.headers));
        if !body.is_empty() {
            outgoing = outgoing.body(body);
        }
        let sent = outgoing.send().await;
        match sent {
            Ok(response) => streamed(response),
            Err(err) => {
                tracing::info!(session_id = %session, host, error = &err as &dyn std::error::Error, "an allowed host did not answer");
                refusal(
                    StatusCode::BAD_GATEWAY,
                    &format!("ccfleet egress gateway: {host}:{port} did not answer\n"),
                )
            }
        }
    }

    fn connect(
        &self,
        mut req: Request<Body>,
        tunnels: &TaskTracker,
        stop: &CancellationToken,
    ) -> Response<Body> {
        let Some(authority) = req.uri().authority().cloned() else {
            return refusal(
                StatusCode::BAD_REQUEST,
                "ccfleet egress gateway: CONNECT needs host:port\n",
            );
        };
        let target = Target::Host {
            host: authority.host().to_owned(),
            port: authority.port_u16().unwrap_or(443),
        };
        let token = proxy_token(req.headers());
        let session = match self.decide(token.as_deref(), &target) {
            Decision::Forward { session } => session,
            Decision::Refuse(refused) => return refused_response(&refused, true),
        };
        let Target::Host { host, port } = target else {
            unreachable!("a CONNECT target is a host");
        };
        let upgrade = hyper::upgrade::on(&mut req);
        let stop = stop.clone();
        // Awaited by `run` through the tracker; the handle is not needed.
        drop(tunnels.spawn(async move {
            let tunnel = async {
                let upstream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                upstream.set_nodelay(true)?;
                let client = upgrade.await.map_err(std::io::Error::other)?;
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut upstream = upstream;
                tokio::io::copy_bidirectional(&mut client, &mut upstream).await
            };
            tokio::select! {
                () = stop.cancelled() => {}
                done = tunnel => if let Err(err) = done {
                    tracing::debug!(session_id = %session, host = %host, port, error = %err, "a tunnel ended with an error");
                }
            }
        }));
        Response::new(Body::empty())
    }
}

/// The token a model request presents: `x-api-key`, or `Authorization: Bearer`.
fn api_key(headers: &HeaderMap) -> Option<String> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.to_owned());
    }
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

/// The token a proxy request presents: the password of `Proxy-Authorization: Basic`.
fn proxy_token(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::PROXY_AUTHORIZATION)?
        .to_str()
        .ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_owned())
}

/// Hop-by-hop headers and the ones the client sets are not forwarded.
fn forwardable(headers: &HeaderMap) -> HeaderMap {
    const HOP: [&str; 10] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    ];
    let mut out = headers.clone();
    for name in HOP {
        out.remove(HeaderName::from_static(name));
    }
    out.remove(axum::http::header::CONTENT_LENGTH);
    out
}

fn sensitive(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

/// The upstream's answer, its body streamed as it arrives.
fn streamed(response: reqwest::Response) -> Response<Body> {
    let mut out = Response::builder().status(response.status().as_u16());
    if let Some(headers) = out.headers_mut() {
        for (name, value) in response.headers() {
            if !matches!(
                name.as_str(),
                "connection" | "keep-alive" | "transfer-encoding" | "upgrade"
            ) {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    let body = Body::from_stream(response.bytes_stream().map_err(std::io::Error::other));
    out.body(body)
        .unwrap_or_else(|_| refusal(StatusCode::BAD_GATEWAY, "bad upstream response\n"))
}

/// A plain-text answer of the gateway's own; the connection closes after it.
fn refusal(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(text.to_owned()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        HeaderValue::from_static("close"),
    );
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn refused_response(refused: &Refusal, tunnel: bool) -> Response<Body> {
    match refused {
        Refusal::UnknownSession => {
            let mut response = refusal(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                "ccfleet egress gateway: this proxy needs the session's credentials\n",
            );
            response.headers_mut().insert(
                axum::http::header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"ccfleet\""),
            );
            response
        }
        Refusal::NotAllowed { host, port } => {
            let what = if tunnel {
                "CONNECT refused"
            } else {
                "request refused"
            };
            refusal(
                StatusCode::FORBIDDEN,
                &format!(
                    "ccfleet egress gateway: {what}: {host}:{port} is not on this session's allow-list\n"
                ),
            )
        }
    }
}

/// An error in the Messages API's shape, so the CLI shows its message.
fn model_error(status: StatusCode, kind: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
