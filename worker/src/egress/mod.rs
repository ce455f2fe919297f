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
//! Model requests go out on a credential of the pool ([`pool`] decides which, and how
//! long a request waits while all are rate-limited); their usage is read from the
//! response as it streams past ([`usage`]) and recorded ([`meter`]).
//!
//! Invariants: the real model credential never leaves the worker except on the request to
//! `model.base_url`; a request without a current session token is never forwarded; no
//! redirect is followed on a session's behalf (it could lead to a host not allowed); a
//! response is never held back to be metered (its bytes are looked at as they pass).
//! Decisions are [`policy`]'s and [`pool`]'s (sans-IO); this module is the I/O around them.

pub mod budget;
pub mod meter;
mod notice;
pub mod policy;
pub mod pool;
pub mod usage;

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
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use base64::Engine;
use common::config::{EgressConfig, HostPattern, ModelConfig, ModelPrice, Secret};
use futures::{Stream, TryStreamExt};
use proto::ids::SessionId;
use std::collections::HashMap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use meter::{Meter, Row};
use policy::{Decision, Policy, Refusal, Sessions, Target};
use pool::{Limits, Outcome, Pick};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use usage::Scanner;

/// The largest request body forwarded (model requests carry images and long
/// conversations; bodies are read whole before forwarding).
const MAX_MODEL_REQUEST: usize = 64 * 1024 * 1024;
/// The model API when `model.base_url` is empty.
const ANTHROPIC_API: &str = "https://api.anthropic.com";
/// Notices queued for one session's actor before more are dropped.
const NOTICES: usize = 64;
/// How many of the pool's notices [`Egress::cooling_notices`] keeps.
const TOLD_KEPT: usize = 64;
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
    /// An OAuth token (`sk-ant-oat…`) or else an API key.
    pub fn from_secret(secret: &Secret) -> Self {
        if secret.expose().starts_with("sk-ant-oat") {
            Credential::OAuth(secret.clone())
        } else {
            Credential::ApiKey(secret.clone())
        }
    }
}

/// One credential of the pool, with what logs and the usage record call it.
#[derive(Debug, Clone)]
pub struct PoolCredential {
    pub label: String,
    pub credential: Credential,
    pub limits: Limits,
}

impl PoolCredential {
    /// No limits of its own.
    pub fn new(label: impl Into<String>, credential: Credential) -> Self {
        Self {
            label: label.into(),
            credential,
            limits: Limits {
                max_concurrency: 0,
                requests_per_minute: 0,
            },
        }
    }
}

/// The configured pool; without any credential, one empty key (the model API refuses it
/// in its own words; a fake model may not check).
fn pool_or_empty_key(model: &ModelConfig) -> Vec<common::config::ModelCredential> {
    let pool = model.pool();
    if !pool.is_empty() {
        return pool;
    }
    vec![common::config::ModelCredential {
        secret: Secret::default(),
        label: "default".to_owned(),
        max_concurrency: 0,
        requests_per_minute: 0,
    }]
}

/// What the gateway forwards to and allows.
#[derive(Debug, Clone)]
pub struct EgressOptions {
    /// `model.base_url`; empty: Anthropic's API.
    pub model_base_url: String,
    /// `model.credentials` (or `model.api_key`), in order.
    pub credentials: Vec<PoolCredential>,
    /// `model.max_wait_s`: how long in total a model request may wait for a credential.
    pub max_wait: Duration,
    /// `model.prices`.
    pub prices: Vec<ModelPrice>,
    /// `egress.allowed_hosts`, parsed.
    pub allowed_hosts: Vec<HostPattern>,
    /// `egress.channel_allowed_hosts`, parsed: channel id → hosts its sessions may reach.
    pub channel_hosts: HashMap<String, Vec<HostPattern>>,
    /// Where model usage is recorded (`model_usage`); `None`: only logged.
    pub usage_db: Option<deadpool_postgres::Pool>,
    /// `budgets.*`: spending caps in dollars, 0 = none (read against `usage_db`).
    pub budgets: budget::Amounts,
}

impl EgressOptions {
    pub fn from_config(egress: &EgressConfig, model: &ModelConfig) -> Self {
        Self {
            model_base_url: model.base_url.clone(),
            credentials: pool_or_empty_key(model)
                .iter()
                .map(|c| PoolCredential {
                    label: c.label.clone(),
                    credential: Credential::from_secret(&c.secret),
                    limits: Limits {
                        max_concurrency: c.max_concurrency,
                        requests_per_minute: c.requests_per_minute,
                    },
                })
                .collect(),
            max_wait: Duration::from_secs(model.max_wait_s),
            prices: model.prices.clone(),
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
            usage_db: None,
            budgets: budget::Amounts::default(),
        }
    }

    /// One credential labelled `default`, the built-in prices, no usage record: for tests
    /// and benchmarks.
    pub fn single(model_base_url: String, credential: Credential) -> Self {
        let prices = common::config::Config::load(&common::config::Sources::default())
            .map(|c| c.model.prices)
            .unwrap_or_default();
        Self {
            model_base_url,
            credentials: vec![PoolCredential::new("default", credential)],
            max_wait: Duration::from_secs(300),
            prices,
            allowed_hosts: Vec::new(),
            channel_hosts: HashMap::new(),
            usage_db: None,
            budgets: budget::Amounts::default(),
        }
    }
}

type Labels = Vec<(&'static str, String)>;

/// The gateway's model-request metrics, by credential label (never the secret).
#[derive(Debug, Clone, Default)]
pub struct EgressMetrics {
    /// Model requests sent, by credential and outcome: `ok` (2xx), `rate_limited` (a
    /// 429/529 with `retry-after`: the credential cooled), `error` (any other status),
    /// `unreachable` (no answer).
    pub requests: Family<Labels, Counter>,
    /// Model requests that had to wait for a credential.
    pub waits: Counter,
    /// Tokens the model reported, by credential and kind.
    pub tokens: Family<Labels, Counter>,
    /// Their cost at `model.prices`, by credential.
    pub cost: Family<Labels, Counter<f64, std::sync::atomic::AtomicU64>>,
}

impl EgressMetrics {
    /// Registers them, each credential's series created at 0.
    pub fn register(&self, registry: &mut Registry, labels: &[String]) {
        for label in labels {
            for outcome in ["ok", "rate_limited", "error", "unreachable"] {
                let _ = self.requests.get_or_create(&vec![
                    ("credential", label.clone()),
                    ("outcome", outcome.into()),
                ]);
            }
            let _ = self
                .cost
                .get_or_create(&vec![("credential", label.clone())]);
        }
        registry.register(
            "egress_model_requests",
            "Model requests the egress gateway sent, by credential and outcome",
            self.requests.clone(),
        );
        registry.register(
            "egress_model_waits",
            "Model requests that waited because every credential was rate-limited or busy",
            self.waits.clone(),
        );
        registry.register(
            "egress_model_tokens",
            "Tokens the model reported through the egress gateway, by credential and kind",
            self.tokens.clone(),
        );
        registry.register(
            "egress_model_cost_usd",
            "Cost of those tokens at model.prices, by credential",
            self.cost.clone(),
        );
    }

    fn request(&self, label: &str, outcome: &'static str) {
        self.requests
            .get_or_create(&vec![
                ("credential", label.to_owned()),
                ("outcome", outcome.into()),
            ])
            .inc();
    }

    fn usage(&self, label: &str, tokens: &usage::Tokens, cost_usd: f64) {
        for (kind, n) in [
            ("input", tokens.input),
            ("output", tokens.output),
            ("cache_read", tokens.cache_read),
            ("cache_write", tokens.cache_creation),
        ] {
            self.tokens
                .get_or_create(&vec![
                    ("credential", label.to_owned()),
                    ("kind", kind.into()),
                ])
                .inc_by(n);
        }
        if cost_usd.is_finite() && cost_usd > 0.0 {
            self.cost
                .get_or_create(&vec![("credential", label.to_owned())])
                .inc_by(cost_usd);
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
    /// Label and credential, in the pool's order.
    credentials: Vec<(String, Credential)>,
    pool: Mutex<pool::Pool>,
    /// Woken whenever a request on a credential ends (a waiting request may go out).
    released: tokio::sync::Notify,
    /// The pool's time is milliseconds since this.
    epoch: Instant,
    max_wait: Duration,
    prices: Vec<ModelPrice>,
    meter: Meter,
    /// `budgets.*` (0: none) and where spend is read for them.
    budgets: budget::Amounts,
    budget_db: Option<deadpool_postgres::Pool>,
    metrics: EgressMetrics,
    /// What the pool decided to tell sessions' threads (see [`Egress::tell_cooling`]).
    told: Mutex<std::collections::VecDeque<(SessionId, SystemTime)>>,
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
                pool: Mutex::new(pool::Pool::new(
                    options.credentials.iter().map(|c| c.limits.clone()),
                )),
                credentials: options
                    .credentials
                    .into_iter()
                    .map(|c| (c.label, c.credential))
                    .collect(),
                released: tokio::sync::Notify::new(),
                epoch: Instant::now(),
                max_wait: options.max_wait,
                prices: options.prices,
                budgets: options.budgets,
                budget_db: options.usage_db.clone(),
                meter: Meter::new(options.usage_db),
                metrics: EgressMetrics::default(),
                told: Mutex::default(),
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

    /// Registers the gateway's metrics with the worker's registry.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let labels: Vec<String> = self
            .inner
            .credentials
            .iter()
            .map(|(l, _)| l.clone())
            .collect();
        self.inner.metrics.register(registry, &labels);
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
        self.pool().forget(session);
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

    /// Where the thread's answer about `session`, held at a budget, arrives: subscribed
    /// before the thread is asked, so no answer is missed.
    fn hold(&self, session: &SessionId) -> tokio::sync::watch::Receiver<Option<Release>> {
        self.inner
            .holds
            .lock()
            .expect("egress holds lock")
            .entry(session.clone())
            .or_insert_with(|| tokio::sync::watch::channel(None).0)
            .subscribe()
    }

    /// Holds a model request of `session` while one of its budgets is used up: the thread
    /// is asked (once per hold, by the actor's core) and the request waits for its answer:
    /// continue (after a top-up: the budgets are read again) or stop (`Some`: the answer
    /// the CLI gets). Budgets that cannot be read let the request go (logged): an outage
    /// of the record does not stop every session.
    async fn budget_gate(&self, session: &SessionId) -> Option<Response<Body>> {
        let limits = self.inner.budgets;
        if budget::Budget::ALL.iter().all(|b| limits.get(*b) <= 0.0) {
            return None;
        }
        let db = self.inner.budget_db.as_ref()?;
        loop {
            let (spent, top_ups) = match meter::budget_state(db, session.as_str()).await {
                Ok(state) => state,
                Err(err) => {
                    tracing::warn!(session_id = %session, error = &err as &dyn std::error::Error, "budgets could not be read; the request goes out");
                    return None;
                }
            };
            let reached = budget::check(&limits, &spent, &top_ups)?;
            let mut answer = self.hold(session);
            tracing::info!(session_id = %session, budget = reached.budget.as_str(), spent = reached.spent, limit = reached.limit, "a budget is used up; the model request is held");
            self.notify(
                session,
                Notice::BudgetReached {
                    budget: reached.budget,
                    spent: reached.spent,
                    limit: reached.limit,
                },
            );
            let release = match answer.wait_for(Option::is_some).await {
                Ok(release) => release.clone().unwrap_or(Release::Continue),
                Err(_) => Release::Stop {
                    by: "ccfleet".into(),
                },
            };
            match release {
                Release::Continue => continue,
                Release::Stop { by } => {
                    return Some(model_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        &format!(
                            "ccfleet: a spending budget is used up and @{by} stopped this turn."
                        ),
                    ));
                }
            }
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
        let serve = axum::serve(
            listener,
            axum::ServiceExt::<Request<Body>>::into_make_service(service),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        // The usage writer runs beside the server and writes what the last responses
        // handed over once it stopped.
        let meter_stop = CancellationToken::new();
        let (served, ()) = tokio::join!(
            async {
                let served = serve.await;
                tunnels.close();
                tunnels.wait().await;
                meter_stop.cancel();
                served
            },
            self.inner.meter.run(meter_stop.clone()),
        );
        served.map_err(Error::Serve)
    }

    /// Milliseconds on the pool's clock.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, pool::Pool> {
        self.inner.pool.lock().expect("egress pool lock")
    }

    /// The one place where the pool's "tell this session's thread" leaves the gateway:
    /// every credential is cooling, the session's model requests wait until about
    /// `resume_at`. Told once per wait (the pool decides).
    fn tell_cooling(&self, session: &SessionId, resume_at: SystemTime) {
        let in_s = resume_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .as_secs();
        tracing::info!(session_id = %session, resume_in_s = in_s, "every model credential is rate-limited; the session's requests wait");
        let resume_at_ms = resume_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.notify(session, Notice::CredentialsCooling { resume_at_ms });
        let mut told = self.inner.told.lock().expect("egress told lock");
        if told.len() == TOLD_KEPT {
            told.pop_front();
        }
        told.push_back((session.clone(), resume_at));
    }

    /// The last sessions the pool has told to wait (up to 64), and until when, oldest first.
    pub fn cooling_notices(&self) -> Vec<(SessionId, SystemTime)> {
        let told = self.inner.told.lock().expect("egress told lock");
        told.iter().cloned().collect()
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
        if let Some(stopped) = self.budget_gate(&session).await {
            return stopped;
        }
        let mut headers = forwardable(&parts.headers);
        headers.remove("x-api-key");
        headers.remove(axum::http::header::AUTHORIZATION);
        let url = format!("{}{path}", self.inner.upstream);
        let deadline = self
            .now_ms()
            .saturating_add(u64::try_from(self.inner.max_wait.as_millis()).unwrap_or(u64::MAX));
        // A rate-limited answer kept to hand back as-is if no credential serves in time.
        let mut held: Option<Response<Body>> = None;
        let mut waiting = Waiting {
            egress: self,
            session: &session,
            armed: false,
        };
        loop {
            // Registered before asking, so a release between the answer and the wait wakes it.
            let released = self.inner.released.notified();
            let mut released = std::pin::pin!(released);
            released.as_mut().enable();
            let now = self.now_ms();
            let pick = self.pool().acquire(&session, now, deadline, waiting.armed);
            match pick {
                Pick::Use(index) => {
                    waiting.armed = false;
                    let lease = Lease {
                        egress: self.clone(),
                        index,
                        outcome: Outcome::Done,
                    };
                    let (label, credential) = &self.inner.credentials[index];
                    let sent = self
                        .inner
                        .client
                        .request(parts.method.clone(), &url)
                        .headers(with_credential(&headers, credential))
                        .body(body.clone())
                        .send()
                        .await;
                    let response = match sent {
                        Ok(response) => response,
                        Err(err) => {
                            self.inner.metrics.request(label, "unreachable");
                            tracing::warn!(session_id = %session, credential = %label, error = &err as &dyn std::error::Error, "the model API did not answer");
                            return model_error(
                                StatusCode::BAD_GATEWAY,
                                "api_error",
                                "ccfleet egress gateway: the model API did not answer",
                            );
                        }
                    };
                    let status = response.status().as_u16();
                    if matches!(status, 429 | 529)
                        && let Some(after) = retry_after(response.headers())
                    {
                        let until = self
                            .now_ms()
                            .saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
                        self.inner.metrics.request(label, "rate_limited");
                        tracing::info!(session_id = %session, credential = %label, status, retry_after_s = after.as_secs_f64(), "a model credential is rate-limited; it cools and the request is tried again");
                        let mut lease = lease;
                        lease.outcome = Outcome::Cooled { until };
                        drop(lease);
                        held = Some(buffered(response).await);
                        continue;
                    }
                    let outcome = if response.status().is_success() {
                        "ok"
                    } else {
                        "error"
                    };
                    self.inner.metrics.request(label, outcome);
                    self.pool().answered(&session);
                    return self.metered(response, lease, &session);
                }
                Pick::Wait { until, tell } => {
                    if !waiting.armed {
                        self.inner.metrics.waits.inc();
                    }
                    waiting.armed = true;
                    if let Some(at) = tell {
                        let resume_at =
                            SystemTime::now() + Duration::from_millis(at.saturating_sub(now));
                        self.tell_cooling(&session, resume_at);
                    }
                    let wake = until.unwrap_or(deadline).min(deadline).saturating_sub(now);
                    tokio::select! {
                        () = released => {}
                        () = tokio::time::sleep(Duration::from_millis(wake)) => {}
                    }
                }
                Pick::GiveUp => {
                    waiting.armed = false;
                    tracing::warn!(session_id = %session, "every model credential stayed rate-limited for model.max_wait_s; the CLI gets the rate limit");
                    return held.unwrap_or_else(|| {
                        let mut response = model_error(
                            StatusCode::TOO_MANY_REQUESTS,
                            "rate_limit_error",
                            "ccfleet egress gateway: every model credential is rate-limited",
                        );
                        response
                            .headers_mut()
                            .insert("retry-after", HeaderValue::from_static("30"));
                        response
                    });
                }
            }
        }
    }

    /// The upstream's answer streamed back as it arrives, its usage read on the way and
    /// recorded when it ends; `lease` is released then.
    fn metered(
        &self,
        response: reqwest::Response,
        lease: Lease,
        session: &SessionId,
    ) -> Response<Body> {
        let scanner = if response.status().is_success() {
            response
                .headers()
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(Scanner::for_content_type)
        } else {
            None
        };
        let request_id = response
            .headers()
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (head, stream) = split(response);
        let body = Metered {
            stream,
            scanner,
            lease: Some(lease),
            session: session.clone(),
            request_id,
        };
        head.body(Body::from_stream(body))
            .unwrap_or_else(|_| refusal(StatusCode::BAD_GATEWAY, "bad upstream response\n"))
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

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// The upstream's status and headers (without hop-by-hop ones), and its body as a stream.
fn split(response: reqwest::Response) -> (axum::http::response::Builder, ByteStream) {
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
    let stream = Box::pin(response.bytes_stream().map_err(std::io::Error::other));
    (out, stream)
}

/// The upstream's answer, its body streamed as it arrives.
fn streamed(response: reqwest::Response) -> Response<Body> {
    let (head, stream) = split(response);
    head.body(Body::from_stream(stream))
        .unwrap_or_else(|_| refusal(StatusCode::BAD_GATEWAY, "bad upstream response\n"))
}

/// The upstream's (small, error) answer read whole, to be handed back later or dropped.
async fn buffered(response: reqwest::Response) -> Response<Body> {
    let (head, stream) = split(response);
    let mut bytes = Vec::new();
    let mut stream = stream;
    while let Some(Ok(chunk)) = futures::StreamExt::next(&mut stream).await {
        if bytes.len() + chunk.len() > 1024 * 1024 {
            break;
        }
        bytes.extend_from_slice(&chunk);
    }
    head.body(Body::from(bytes))
        .unwrap_or_else(|_| refusal(StatusCode::BAD_GATEWAY, "bad upstream response\n"))
}

/// `headers` with `credential` added the way the model API takes it.
fn with_credential(headers: &HeaderMap, credential: &Credential) -> HeaderMap {
    let mut headers = headers.clone();
    match credential {
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
    headers
}

/// A `retry-after` in seconds (the model API's form; an HTTP date is not used by it).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    let seconds: f64 = value.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(86_400.0)))
}

/// A credential taken from the pool for one request; given back when dropped.
struct Lease {
    egress: Egress,
    index: usize,
    outcome: Outcome,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let now = self.egress.now_ms();
        self.egress.pool().release(self.index, now, self.outcome);
        self.egress.inner.released.notify_waiters();
    }
}

/// A request waiting in the pool; one that goes away (its client gave up) stops waiting.
struct Waiting<'a> {
    egress: &'a Egress,
    session: &'a SessionId,
    armed: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.egress.pool().stop_waiting(self.session);
        }
    }
}

/// A model response's body on its way to the CLI: each chunk is passed on as it comes and
/// shown to the usage scanner; at its end (or when the CLI goes away) the usage is
/// recorded and the credential given back.
struct Metered {
    stream: ByteStream,
    scanner: Option<Scanner>,
    lease: Option<Lease>,
    session: SessionId,
    request_id: Option<String>,
}

impl Metered {
    fn finish(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if let Some(usage) = self.scanner.take().and_then(Scanner::finish) {
            let inner = &lease.egress.inner;
            let cost_usd = usage::price_of(&inner.prices, &usage.model)
                .map_or(0.0, |price| usage::cost_usd(price, &usage.tokens));
            let label = &inner.credentials[lease.index].0;
            inner.metrics.usage(label, &usage.tokens, cost_usd);
            inner.meter.record(Row {
                id: uuid::Uuid::new_v4().to_string(),
                at: SystemTime::now(),
                session: self.session.clone(),
                credential: label.clone(),
                usage,
                cost_usd,
                request_id: self.request_id.take(),
            });
        }
        drop(lease);
    }
}

impl Stream for Metered {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let next = this.stream.as_mut().poll_next(cx);
        match &next {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(scanner) = &mut this.scanner {
                    scanner.feed(chunk);
                }
            }
            Poll::Ready(Some(Err(_)) | None) => this.finish(),
            Poll::Pending => {}
        }
        next
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.finish();
    }
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
