//! Configuration: built-in defaults → TOML file → `CCFLEET__SECTION__KEY` environment →
//! command-line overrides, deserialized into [`Config`] and validated before anything
//! starts. Every key is documented in `deploy/ccfleet.example.toml`; a test keeps the two
//! in step. Tests build a [`Config`] from [`Sources`] with an explicit environment map and
//! never touch the process environment.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The built-in defaults, as TOML. Every key the service reads has a default here.
pub const DEFAULTS: &str = include_str!("defaults.toml");

/// The prefix of environment variables: `CCFLEET__NATS__URL` sets `nats.url`.
pub const ENV_PREFIX: &str = "CCFLEET";

/// `model.credentials` from the environment: a JSON list of credential tables.
pub const CREDENTIALS_ENV: &str = "CCFLEET__MODEL__CREDENTIALS";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration could not be read")]
    Load(#[source] ::config::ConfigError),
    #[error("invalid configuration: `{key}` {reason}")]
    Invalid { key: String, reason: String },
}

impl Error {
    fn invalid(key: &str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A string that is never printed: `Debug` and `Display` show `***`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub nats: NatsConfig,
    pub postgres: PostgresConfig,
    pub object_store: ObjectStoreConfig,
    pub telemetry: TelemetryConfig,
    pub mattermost: MattermostConfig,
    pub gateway: GatewayConfig,
    pub worker: WorkerConfig,
    pub model: ModelConfig,
    pub egress: EgressConfig,
    /// The team's repositories sessions can start from and push back to.
    #[serde(default)]
    pub repositories: Vec<RepositoryConfig>,
    #[serde(default)]
    pub budgets: BudgetsConfig,
}

/// Spending caps, in US dollars of model usage (as the egress gateway meters it); 0: none.
/// When one is reached, the session's model requests are held and its thread asks the
/// owner (or an approver) to continue with a top-up of the same amount, or to stop.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetsConfig {
    /// Per session (the whole life of a thread's session).
    pub session_usd: f64,
    /// Per user (the session's owner) per UTC day.
    pub user_daily_usd: f64,
    /// Per channel per UTC day.
    pub channel_daily_usd: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Comma-separated server URLs.
    pub url: String,
    /// Prefix of every subject, stream and bucket (see `proto::names`).
    pub prefix: String,
    pub connect_timeout_ms: u64,
    /// JetStream replicas of the streams and buckets the fleet creates.
    pub replicas: usize,
    /// How long inbound events and reply operations are kept in their streams (and so how
    /// long egress keeps a reply waiting while Mattermost does not answer).
    pub events_max_age_s: u64,
    /// The window in which a repeated `Nats-Msg-Id` is dropped.
    pub duplicate_window_s: u64,
    /// The most consumers the events stream may have: one per live session across the
    /// fleet, plus a few. Set explicitly because nats-server (2.15+) otherwise limits a
    /// stream to 1000.
    pub max_consumers: u32,
    /// The wire version this process writes (0: the newest it knows). Pin the older
    /// version during a rolling upgrade until every process reads the newer one.
    pub wire_version: u16,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database`.
    pub url: Secret,
    pub pool_size: usize,
    pub connect_timeout_ms: u64,
    /// Server-side limit of one statement (0: none).
    pub statement_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectStoreKind {
    S3,
    Fs,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreConfig {
    pub kind: ObjectStoreKind,
    /// S3: endpoint URL (empty for AWS itself).
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// S3: `true` for path-style URLs (`endpoint/bucket/key`), as most self-hosted servers want.
    pub path_style: bool,
    /// Every key is written under this prefix.
    pub prefix: String,
    /// fs: the root directory.
    pub root: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// An `EnvFilter` directive, e.g. `info,ccfleet=debug`. `RUST_LOG` wins when set.
    pub log_level: String,
    pub log_format: LogFormat,
    /// OTLP/HTTP endpoint, e.g. `http://127.0.0.1:4318`. Empty: no export.
    pub otlp_endpoint: String,
    /// Fraction of traces sampled, 0.0–1.0.
    pub sample_ratio: f64,
    /// Where a trace is shown, with `{trace_id}` where its id goes, e.g.
    /// `http://jaeger:16686/trace/{trace_id}`. Empty: no trace links.
    #[serde(default)]
    pub trace_url: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MattermostConfig {
    /// Base URL of the Mattermost server. Empty: `ccfleet-gateway` refuses to start, and
    /// `deploy/local/fleet` starts the simulator.
    pub url: String,
    /// The bot account's access token.
    pub bot_token: Secret,
    /// Token Mattermost sends with outgoing webhooks.
    pub webhook_token: Secret,
    /// Token Mattermost sends with the `/claude` slash command.
    pub slash_token: Secret,
    /// Fleet-wide budget of Mattermost API requests per second, shared by all gateways.
    pub requests_per_second: u32,
    /// Consecutive failed requests (no answer, 5xx) after which egress stops sending and
    /// only probes Mattermost until it answers again.
    pub breaker_failures: u32,
    /// The longest pause between two probes while Mattermost does not answer.
    pub breaker_max_cooldown_s: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub listen: String,
    /// The URL people use to reach this gateway (for artifact links and action callbacks).
    pub public_url: String,
    /// Key of the HMAC that signs artifact links and button contexts: at least
    /// [`MIN_SIGNING_KEY_LEN`] characters of random text (`openssl rand -hex 32`); a short,
    /// repetitive or placeholder key is refused at start ([`signing_key_weakness`]).
    pub signing_key: Secret,
    /// How often the gateway resolves `worker.approvers` and `worker.allowed_users` to
    /// Mattermost user ids (and follows renames of the users they name), in seconds.
    pub directory_refresh_s: u64,
    /// Streaming edits of one post are coalesced to one per interval.
    pub coalesce_interval_ms: u64,
    pub shutdown_grace_s: u64,
    pub max_body_bytes: usize,
    /// Who may use the admin API (`/admin/v1` on `listen`). None: every request is 401.
    #[serde(default)]
    pub admin_tokens: Vec<AdminToken>,
}

/// One bearer token of the admin API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// Who the token stands for in the audit (e.g. `ops-oncall`).
    pub name: String,
    /// At least [`AdminToken::MIN_LEN`] characters.
    pub token: Secret,
    pub scope: AdminScope,
}

impl AdminToken {
    pub const MIN_LEN: usize = 24;
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminScope {
    /// Look: list and read.
    Read,
    /// Look and act: stop sessions, drain workers.
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Docker,
    Process,
    Sim,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Unique per worker; empty: `<hostname>-<n>`, stable across restarts (the lowest
    /// slot free in `<sessions_dir>/.worker-slots`, see `worker::fleet::worker_id`).
    pub id: String,
    pub runtime: RuntimeKind,
    /// Live sessions this worker runs at most.
    pub max_sessions: usize,
    /// A claim not renewed for this long is taken over by another worker.
    pub lease_ttl_s: u64,
    pub idle_timeout_s: u64,
    pub max_session_lifetime_s: u64,
    /// A turn running longer is stopped, with a note (0: no limit).
    pub turn_timeout_s: u64,
    /// A turn whose CLI shows nothing for this long (not waiting for an answer) is
    /// stopped, with a note (0: never).
    pub stall_timeout_s: u64,
    /// A session's files (workspace and the CLI's state) above this many bytes are not
    /// checkpointed: the thread is told, and the session goes on (0: no limit).
    pub max_workspace_bytes: u64,
    /// A file the turn made that is larger than this is listed but not uploaded as an
    /// artifact (0: no limit).
    pub max_artifact_bytes: u64,
    pub shutdown_grace_s: u64,
    /// Path of the Claude Code CLI for the process runtime.
    pub claude_bin: String,
    /// Where the process runtime keeps session directories.
    pub sessions_dir: PathBuf,
    /// Docker image of the runner.
    pub image: String,
    /// Docker network for session containers (`none`, `bridge`, or a named network).
    pub network: String,
    pub memory_mb: u64,
    pub cpus: f64,
    pub pids_limit: i64,
    /// Permission mode of new sessions: `default` (ask in the thread), `acceptEdits`
    /// (file edits run unasked), `plan`, or `bypassPermissions` (never ask; only in
    /// hardened containers: refused with the process runtime, which has no sandbox).
    pub permission_mode: String,
    /// How long an unanswered permission request waits before it is denied.
    pub approval_timeout_s: u64,
    /// Who may answer any session's permission requests, questions and plans, besides the
    /// session's owner: usernames (`alice` or `@alice`) or user ids (`id:<26 characters>`).
    /// Authorized by user id: the gateway pins each username to the id it names when first
    /// seen and follows that user's renames (see [`UserEntry`]).
    pub approvers: Vec<String>,
    /// Who may use Claude, in the same forms as `approvers`; empty: everyone.
    pub allowed_users: Vec<String>,
    /// Channel ids where Claude may be used; empty: every channel.
    pub allowed_channels: Vec<String>,
    /// Live sessions one user may have started at once; 0: unlimited.
    pub max_sessions_per_user: usize,
    /// docker runtime: containers kept started and initialized for new sessions; 0: none.
    pub warm_pool: usize,
    /// Serve Prometheus metrics at `http://ADDR/metrics`; empty: not served.
    pub metrics_listen: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `ANTHROPIC_BASE_URL` given to the CLI. Empty: Anthropic's API.
    pub base_url: String,
    pub api_key: Secret,
    /// `--model`; empty: the CLI's default.
    pub model: String,
    /// How often the CLI retries a failed model API call (`CLAUDE_CODE_MAX_RETRIES`);
    /// 0: the CLI's default (10, which with its backoff waits minutes).
    pub max_retries: u32,
    /// The egress gateway's credential pool (docker runtime). Empty: `api_key` alone, as a
    /// pool of one. Setting both is refused.
    #[serde(default)]
    pub credentials: Vec<ModelCredential>,
    /// How long, in total, the egress gateway holds a model request while every
    /// credential is cooling (after a 429/529 with `retry-after`) or at its limits, before
    /// the CLI gets the 429/529 as-is. Keep it below the CLI's own request timeout (10 min).
    pub max_wait_s: u64,
    /// USD per million tokens, by model-name prefix (the longest matching prefix wins; the
    /// entry with `model = ""` matches every model). Setting the list replaces it whole.
    #[serde(default)]
    pub prices: Vec<ModelPrice>,
}

impl ModelConfig {
    /// The credential pool: `credentials`, or `api_key` alone (labelled `default`).
    pub fn pool(&self) -> Vec<ModelCredential> {
        if !self.credentials.is_empty() {
            return self
                .credentials
                .iter()
                .enumerate()
                .map(|(i, c)| ModelCredential {
                    label: if c.label.is_empty() {
                        format!("credential-{}", i + 1)
                    } else {
                        c.label.clone()
                    },
                    ..c.clone()
                })
                .collect();
        }
        if self.api_key.is_empty() {
            return Vec::new();
        }
        vec![ModelCredential {
            secret: self.api_key.clone(),
            label: "default".to_owned(),
            max_concurrency: 0,
            requests_per_minute: 0,
        }]
    }
}

/// One credential of the egress gateway's pool.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCredential {
    /// An API key (sent as `x-api-key`) or a subscription's OAuth token (`sk-ant-oat…`,
    /// sent as `Authorization: Bearer`).
    pub secret: Secret,
    /// What logs, metrics and the usage record call it (never the secret). Empty:
    /// `credential-N` (its place in the list, from 1).
    #[serde(default)]
    pub label: String,
    /// Model requests in flight at once on it; 0: no limit.
    #[serde(default)]
    pub max_concurrency: u32,
    /// Model requests started on it per rolling minute; 0: no limit.
    #[serde(default)]
    pub requests_per_minute: u32,
}

/// What a model costs, USD per million tokens.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// A model-name prefix, e.g. `claude-sonnet-4`; `""`: any model.
    pub model: String,
    pub input: f64,
    pub output: f64,
    /// Tokens read from the prompt cache.
    pub cache_read: f64,
    /// Tokens written to the prompt cache.
    pub cache_write: f64,
}

/// The worker's egress gateway: session containers' only way out (see `worker::egress`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// Where the gateway listens. Empty: on the session network's gateway address (the
    /// host's side of its bridge), port chosen by the system — a worker running on the
    /// Docker host. A worker in a container attached to the session network: e.g.
    /// `0.0.0.0:3128`.
    pub listen: String,
    /// How session containers reach the gateway, `host:port`. Empty: the address it
    /// listens on (which then must not be unspecified).
    pub advertise: String,
    /// Hosts sessions may reach through the gateway besides the model API: `example.com`
    /// (that host), `*.example.com` (its subdomains, not itself), each optionally with
    /// `:port` (else any port). Every other host is refused.
    pub allowed_hosts: Vec<String>,
    /// More hosts for the sessions of some channels: channel id → patterns as in
    /// `allowed_hosts`. A request to a host on neither list is refused and the thread is
    /// asked whether to allow it.
    #[serde(default)]
    pub channel_allowed_hosts: std::collections::BTreeMap<String, Vec<String>>,
}

/// Which API a repository's reviews go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoProvider {
    /// GitLab (gitlab.com or self-managed): merge requests through the REST API v4.
    Gitlab,
    /// GitHub (github.com or Enterprise Server): pull requests through the REST API.
    Github,
    /// Plain git: the branch is pushed, nothing is opened.
    Git,
}

/// One `[[repositories]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// What users call it: `repo:NAME`, `/claude repo NAME`. Letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// The https (or http) clone URL, without credentials.
    pub url: String,
    pub provider: RepoProvider,
    /// The provider's API base URL; empty: derived from `url` (`https://HOST/api/v4` for
    /// GitLab; `https://api.github.com` for github.com, `https://HOST/api/v3` for GitHub
    /// Enterprise).
    #[serde(default)]
    pub api_url: String,
    /// The token: git's password over HTTPS and the API's credential. Required for
    /// `gitlab` and `github` (here or in `token_file`); empty for a plain-git repository
    /// anyone may push to.
    #[serde(default)]
    pub token: Secret,
    /// A file holding the token instead of `token`: a mounted Kubernetes Secret or Docker
    /// secret, because the environment cannot set a key inside `[[repositories]]` and the
    /// configuration file is often not secret (a ConfigMap). [`Config::load`] reads it
    /// into `token` before validating, so a missing file stops the start, not the first
    /// push; surrounding whitespace (the newline `echo` leaves) is dropped.
    #[serde(default)]
    pub token_file: PathBuf,
    /// The user name git sends with the token; empty: `oauth2` (GitLab), `x-access-token`
    /// (GitHub), `git` (plain git).
    #[serde(default)]
    pub username: String,
    /// The branch merge requests target and sessions start from; empty: the remote's.
    #[serde(default)]
    pub default_branch: String,
    /// Channel ids where this repository is the default for new sessions.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Commits fetched when cloning; 0: the whole history.
    #[serde(default = "default_clone_depth")]
    pub clone_depth: u32,
    /// A changed file larger than this is not pushed (the thread is told); 0: no limit.
    #[serde(default = "default_max_push_file_bytes")]
    pub max_push_file_bytes: u64,
    /// Sessions without a repository offer to push the files their turns make here, each
    /// on a branch of its own (`ccfleet/<thread>`), with a merge/pull request when the
    /// provider has one. At most one repository has it.
    #[serde(default)]
    pub generated_files: bool,
}

fn default_clone_depth() -> u32 {
    1
}

fn default_max_push_file_bytes() -> u64 {
    10 * 1024 * 1024
}

impl RepositoryConfig {
    /// The project's path on its forge (`group/sub/web`): the clone URL's path without
    /// `.git`.
    pub fn project_path(&self) -> String {
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, r)| r);
        let path = rest.split_once('/').map_or("", |(_, p)| p);
        let path = path.trim_end_matches('/');
        path.strip_suffix(".git").unwrap_or(path).to_owned()
    }

    /// `scheme://host[:port]` of the clone URL.
    fn origin(&self) -> &str {
        let (scheme, rest) = self.url.split_once("://").unwrap_or(("https", &self.url));
        let host_len = rest.find('/').unwrap_or(rest.len());
        &self.url[..scheme.len() + 3 + host_len]
    }

    /// The API base URL, without a trailing slash; empty for plain git.
    pub fn api_base(&self) -> String {
        if !self.api_url.is_empty() {
            return self.api_url.trim_end_matches('/').to_owned();
        }
        match self.provider {
            RepoProvider::Gitlab => format!("{}/api/v4", self.origin()),
            RepoProvider::Github if self.origin() == "https://github.com" => {
                "https://api.github.com".to_owned()
            }
            RepoProvider::Github => format!("{}/api/v3", self.origin()),
            RepoProvider::Git => String::new(),
        }
    }

    /// The user name sent with the token over HTTPS.
    pub fn git_username(&self) -> &str {
        match (self.username.as_str(), self.provider) {
            ("", RepoProvider::Gitlab) => "oauth2",
            ("", RepoProvider::Github) => "x-access-token",
            ("", RepoProvider::Git) => "git",
            (name, _) => name,
        }
    }

    /// Reads `token_file` into `token` (see there). Errors name the repository and the
    /// path, never the file's contents.
    fn read_token_file(&mut self, key: &str) -> Result<(), Error> {
        if self.token_file.as_os_str().is_empty() {
            return Ok(());
        }
        let key = format!("{key}.token_file");
        let (name, path) = (&self.name, self.token_file.display());
        if !self.token.is_empty() {
            return Err(Error::invalid(
                &key,
                format!("and `token` are both set for repository {name:?}: keep one"),
            ));
        }
        let bytes = std::fs::read(&self.token_file).map_err(|err| {
            Error::invalid(
                &key,
                format!("of repository {name:?}: cannot read {path}: {err}"),
            )
        })?;
        let text = String::from_utf8(bytes).map_err(|_| {
            Error::invalid(
                &key,
                format!("of repository {name:?}: {path} is not UTF-8 text"),
            )
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(Error::invalid(
                &key,
                format!("of repository {name:?}: {path} is empty"),
            ));
        }
        self.token = Secret::new(token);
        Ok(())
    }

    fn validate(&self, key: &str) -> Result<(), Error> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err(Error::invalid(
                &format!("{key}.name"),
                "must be 1-64 letters, digits, `-`, `_` or `.`",
            ));
        }
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return Err(Error::invalid(
                &format!("{key}.url"),
                "must be an http(s) clone URL",
            ));
        };
        if !matches!(scheme, "https" | "http") {
            return Err(Error::invalid(
                &format!("{key}.url"),
                "must be an http(s) clone URL (the token is given over HTTPS)",
            ));
        }
        let authority = rest.split('/').next().unwrap_or("");
        if authority.contains('@') {
            return Err(Error::invalid(
                &format!("{key}.url"),
                "must not hold credentials: put the token in `token`",
            ));
        }
        if authority.is_empty() || self.project_path().is_empty() {
            return Err(Error::invalid(
                &format!("{key}.url"),
                "must name a host and a repository path",
            ));
        }
        if !self.api_url.is_empty() && !self.api_url.starts_with("http") {
            return Err(Error::invalid(
                &format!("{key}.api_url"),
                "must be an http(s) URL or empty",
            ));
        }
        if self.provider != RepoProvider::Git && self.token.is_empty() {
            return Err(Error::invalid(
                &format!("{key}.token"),
                "(or `token_file`) is required for gitlab and github (a token with the narrowest scope that pushes and opens reviews)",
            ));
        }
        // It goes into an HTTP header and git's askpass answer: one line, no spaces.
        if self
            .token
            .expose()
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            let field = if self.token_file.as_os_str().is_empty() {
                "token"
            } else {
                "token_file"
            };
            return Err(Error::invalid(
                &format!("{key}.{field}"),
                format!(
                    "of repository {:?}: the token must not contain spaces, line breaks or control characters",
                    self.name
                ),
            ));
        }
        if self.default_branch.starts_with('-')
            || self.default_branch.contains("..")
            || self.default_branch.contains(char::is_whitespace)
        {
            return Err(Error::invalid(
                &format!("{key}.default_branch"),
                "must be a branch name or empty",
            ));
        }
        Ok(())
    }
}

/// One entry of `egress.allowed_hosts`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lower case, no trailing dot.
    pub host: String,
    /// `*.host`: subdomains of `host`, not `host` itself.
    pub subdomains: bool,
    /// `None`: any port.
    pub port: Option<u16>,
}

impl HostPattern {
    /// Parses `host`, `*.host`, optionally with `:port`. Hosts are DNS names or IPv4
    /// addresses: letters, digits, `-` and `.`, case-insensitive.
    pub fn parse(text: &str) -> Option<Self> {
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port.parse::<u16>().ok().filter(|p| *p > 0)?)),
            None => (text, None),
        };
        let (host, subdomains) = match host.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (host, false),
        };
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        (!host.is_empty() && host.len() <= 253 && host.split('.').all(label_ok)).then_some(Self {
            host,
            subdomains,
            port,
        })
    }
}

/// The shortest `gateway.signing_key` accepted.
pub const MIN_SIGNING_KEY_LEN: usize = 32;

/// Keys that documentation or examples show: a key copied from them is no secret.
const PLACEHOLDER_KEYS: &[&str] = &[
    "signing-key-of-at-least-32-bytes-long",
    "change-me",
    "changeme",
    "replace-me",
    "your-signing-key",
    "secret",
];

/// Why `key` is too weak to sign links and buttons, or `None`. Empty is not judged here
/// (tools that sign nothing load the configuration without a key; the gateway and the
/// worker refuse an empty one at start).
pub fn signing_key_weakness(key: &str) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    let lower = key.to_ascii_lowercase();
    if PLACEHOLDER_KEYS
        .iter()
        .any(|p| lower == *p || (p.len() >= 8 && lower.contains(p)))
        || lower.contains("change-me")
        || lower.contains("changeme")
    {
        return Some(
            "is a placeholder from the documentation; generate one with `openssl rand -hex 32`"
                .into(),
        );
    }
    let len = key.chars().count();
    if len < MIN_SIGNING_KEY_LEN {
        return Some(format!(
            "is {len} characters long; it must be at least {MIN_SIGNING_KEY_LEN} characters of random text (`openssl rand -hex 32`)"
        ));
    }
    // Shannon entropy of the characters' distribution: random hex carries about 4 bits a
    // character, base64 about 6; a repeated pattern or a word repeated carries little.
    let mut counts = std::collections::HashMap::<char, usize>::new();
    for c in key.chars() {
        *counts.entry(c).or_default() += 1;
    }
    let n = len as f64;
    let bits_per_char: f64 = counts
        .values()
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    if counts.len() < 10 || bits_per_char < 3.0 {
        return Some(format!(
            "has too little entropy ({} distinct characters, {bits_per_char:.1} bits per character); use random text (`openssl rand -hex 32`)",
            counts.len()
        ));
    }
    None
}

/// One entry of `worker.approvers` or `worker.allowed_users`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UserEntry {
    /// A username (lower case, without `@`), pinned by the gateway to the id it names.
    Name(String),
    /// A Mattermost user id (`id:<id>`).
    Id(String),
}

impl UserEntry {
    /// Parses `alice`, `@alice` or `id:<id>`; `None` if it is neither a Mattermost
    /// username (letters, digits, `.`, `-`, `_`; at most 64) nor a valid id.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Some(id) = text.strip_prefix("id:") {
            let id = proto::UserId::parse(id.trim()).ok()?;
            return Some(UserEntry::Id(id.0));
        }
        let name = text.trim_start_matches('@').to_ascii_lowercase();
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b));
        ok.then_some(UserEntry::Name(name))
    }
}

/// Where configuration comes from, in increasing precedence after the defaults.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// A TOML file.
    pub file: Option<PathBuf>,
    /// Environment variables; only `CCFLEET__*` ones are read.
    pub env: HashMap<String, String>,
    /// `section.key` → value, e.g. from command-line flags.
    pub overrides: Vec<(String, String)>,
}

impl Sources {
    /// The file from `--config`, the process environment, and overrides from flags.
    pub fn from_process(file: Option<PathBuf>, overrides: Vec<(String, String)>) -> Self {
        Self {
            file,
            env: std::env::vars().collect(),
            overrides,
        }
    }
}

impl Config {
    /// Loads and validates the configuration.
    pub fn load(sources: &Sources) -> Result<Self, Error> {
        use ::config::{Environment, File, FileFormat};

        // A list of tables has no `KEY=a,b` form: `model.credentials` comes from the
        // environment as JSON, read here rather than by the environment source.
        let mut env = sources.env.clone();
        let credentials_json = env
            .remove(CREDENTIALS_ENV)
            .filter(|value| !value.trim().is_empty());
        let mut builder =
            ::config::Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(path) = &sources.file {
            if !path.exists() {
                return Err(Error::invalid(
                    "--config",
                    format!("names {}, which does not exist", path.display()),
                ));
            }
            builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
        }
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                // Lists come from the environment as comma-separated values.
                .list_separator(",")
                .with_list_parse_key("worker.approvers")
                .with_list_parse_key("worker.allowed_users")
                .with_list_parse_key("worker.allowed_channels")
                .with_list_parse_key("egress.allowed_hosts")
                .source(Some(env.into_iter().collect())),
        );
        for (key, value) in &sources.overrides {
            builder = builder
                .set_override(key.as_str(), value.as_str())
                .map_err(Error::Load)?;
        }
        let raw = builder.build().map_err(Error::Load)?;
        let mut config: Config = raw.try_deserialize().map_err(|e| match e {
            ::config::ConfigError::Type { ref key, .. } => Error::Invalid {
                key: key.clone().unwrap_or_default(),
                reason: e.to_string(),
            },
            other => Error::Load(other),
        })?;
        // A list set from an empty variable (`KEY=`, as Compose writes `${VAR:-}`) is
        // empty, not one empty entry; so are blank entries of `a,,b`.
        for list in [
            &mut config.worker.approvers,
            &mut config.worker.allowed_users,
            &mut config.worker.allowed_channels,
            &mut config.egress.allowed_hosts,
        ] {
            list.retain(|entry| !entry.trim().is_empty());
        }
        if let Some(json) = credentials_json {
            // serde_json's message names the place, never the text (a secret).
            config.model.credentials = serde_json::from_str(&json).map_err(|err| {
                Error::invalid(
                    "model.credentials",
                    format!(
                        "from {CREDENTIALS_ENV} must be a JSON list like [{{\"label\": \"a\", \"secret\": \"sk-ant-…\"}}]: {err}"
                    ),
                )
            })?;
        }
        for (i, repo) in config.repositories.iter_mut().enumerate() {
            repo.read_token_file(&format!("repositories[{i}]"))?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot. Each error names the key.
    pub fn validate(&self) -> Result<(), Error> {
        for url in self.nats.url.split(',') {
            let url = url.trim();
            if !(url.starts_with("nats://")
                || url.starts_with("tls://")
                || url.starts_with("ws://"))
            {
                return Err(Error::invalid(
                    "nats.url",
                    format!("must be nats:// URLs, got {url:?}"),
                ));
            }
        }
        if self.nats.prefix.is_empty()
            || !self
                .nats
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::invalid(
                "nats.prefix",
                "must be letters, digits, `_` or `-`",
            ));
        }
        if !(1..=5).contains(&self.nats.replicas) {
            return Err(Error::invalid("nats.replicas", "must be 1 to 5"));
        }
        if !(100..=i32::MAX as u32).contains(&self.nats.max_consumers) {
            return Err(Error::invalid(
                "nats.max_consumers",
                "must be at least 100 (one per live session, plus a few)",
            ));
        }
        if self.nats.wire_version != 0
            && !(proto::MIN_SUPPORTED..=proto::CURRENT).contains(&self.nats.wire_version)
        {
            return Err(Error::invalid(
                "nats.wire_version",
                format!(
                    "this build writes versions {}..={} (0: the newest)",
                    proto::MIN_SUPPORTED,
                    proto::CURRENT
                ),
            ));
        }
        if !self.postgres.url.expose().starts_with("postgres://")
            && !self.postgres.url.expose().starts_with("postgresql://")
        {
            return Err(Error::invalid("postgres.url", "must be a postgres:// URL"));
        }
        if self.postgres.pool_size == 0 {
            return Err(Error::invalid("postgres.pool_size", "must be at least 1"));
        }
        match self.object_store.kind {
            ObjectStoreKind::S3 => {
                if self.object_store.bucket.is_empty() {
                    return Err(Error::invalid(
                        "object_store.bucket",
                        "is required for kind = \"s3\"",
                    ));
                }
                if !self.object_store.endpoint.is_empty()
                    && !self.object_store.endpoint.starts_with("http")
                {
                    return Err(Error::invalid(
                        "object_store.endpoint",
                        "must be an http(s) URL",
                    ));
                }
            }
            ObjectStoreKind::Fs => {
                if self.object_store.root.as_os_str().is_empty() {
                    return Err(Error::invalid(
                        "object_store.root",
                        "is required for kind = \"fs\"",
                    ));
                }
            }
        }
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return Err(Error::invalid(
                "telemetry.sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if !self.telemetry.otlp_endpoint.is_empty()
            && !self.telemetry.otlp_endpoint.starts_with("http")
        {
            return Err(Error::invalid(
                "telemetry.otlp_endpoint",
                "must be an http(s) URL or empty",
            ));
        }
        let trace_url = &self.telemetry.trace_url;
        if !trace_url.is_empty()
            && (!trace_url.starts_with("http") || !trace_url.contains("{trace_id}"))
        {
            return Err(Error::invalid(
                "telemetry.trace_url",
                "must be an http(s) URL containing {trace_id}, or empty",
            ));
        }
        if !self.mattermost.url.is_empty() && !self.mattermost.url.starts_with("http") {
            return Err(Error::invalid(
                "mattermost.url",
                "must be an http(s) URL or empty",
            ));
        }
        if self.mattermost.requests_per_second == 0 {
            return Err(Error::invalid(
                "mattermost.requests_per_second",
                "must be at least 1",
            ));
        }
        if self.mattermost.breaker_failures == 0 {
            return Err(Error::invalid(
                "mattermost.breaker_failures",
                "must be at least 1",
            ));
        }
        if self.mattermost.breaker_max_cooldown_s == 0 {
            return Err(Error::invalid(
                "mattermost.breaker_max_cooldown_s",
                "must be at least 1",
            ));
        }
        if self.gateway.listen.parse::<SocketAddr>().is_err() {
            return Err(Error::invalid(
                "gateway.listen",
                "must be an address like 127.0.0.1:8080",
            ));
        }
        if !self.gateway.public_url.starts_with("http") {
            return Err(Error::invalid(
                "gateway.public_url",
                "must be an http(s) URL",
            ));
        }
        for (i, admin) in self.gateway.admin_tokens.iter().enumerate() {
            let key = format!("gateway.admin_tokens[{i}]");
            if admin.name.trim().is_empty() {
                return Err(Error::invalid(&format!("{key}.name"), "must not be empty"));
            }
            if admin.token.expose().chars().count() < AdminToken::MIN_LEN {
                return Err(Error::invalid(
                    &format!("{key}.token"),
                    format!("must be at least {} characters", AdminToken::MIN_LEN),
                ));
            }
            let earlier = &self.gateway.admin_tokens[..i];
            if earlier.iter().any(|other| other.name == admin.name) {
                return Err(Error::invalid(
                    &format!("{key}.name"),
                    "is used by another token",
                ));
            }
            if earlier.iter().any(|other| other.token == admin.token) {
                return Err(Error::invalid(
                    &format!("{key}.token"),
                    "is used by another token",
                ));
            }
        }
        if let Some(reason) = signing_key_weakness(self.gateway.signing_key.expose()) {
            return Err(Error::invalid("gateway.signing_key", reason));
        }
        if self.gateway.directory_refresh_s == 0 {
            return Err(Error::invalid(
                "gateway.directory_refresh_s",
                "must be at least 1",
            ));
        }
        for (key, list) in [
            ("worker.approvers", &self.worker.approvers),
            ("worker.allowed_users", &self.worker.allowed_users),
        ] {
            for entry in list {
                if UserEntry::parse(entry).is_none() {
                    return Err(Error::invalid(
                        key,
                        format!(
                            "entries must be usernames (`alice`, `@alice`) or user ids (`id:<26 lowercase letters and digits>`); got {entry:?}"
                        ),
                    ));
                }
            }
        }
        if self.gateway.coalesce_interval_ms == 0 {
            return Err(Error::invalid(
                "gateway.coalesce_interval_ms",
                "must be at least 1",
            ));
        }
        if self.worker.max_sessions == 0 {
            return Err(Error::invalid("worker.max_sessions", "must be at least 1"));
        }
        if self.worker.lease_ttl_s < 2 {
            return Err(Error::invalid("worker.lease_ttl_s", "must be at least 2"));
        }
        if ![
            "default",
            "acceptEdits",
            "plan",
            "bypassPermissions",
            "dontAsk",
        ]
        .contains(&self.worker.permission_mode.as_str())
        {
            return Err(Error::invalid(
                "worker.permission_mode",
                "must be default, acceptEdits, plan, bypassPermissions or dontAsk",
            ));
        }
        if self.worker.runtime == RuntimeKind::Process
            && self.worker.permission_mode == "bypassPermissions"
        {
            return Err(Error::invalid(
                "worker.permission_mode",
                "cannot be bypassPermissions with the process runtime: it has no sandbox (the agent runs as the worker's user, with its files, network and credentials), so every command the agent chose would run unasked on this machine; use the docker runtime for bypassPermissions",
            ));
        }
        if !self.worker.id.is_empty()
            && let Err(err) = proto::WorkerId::parse(&self.worker.id)
        {
            return Err(Error::invalid("worker.id", err.to_string()));
        }
        if self.worker.warm_pool > 64 {
            return Err(Error::invalid("worker.warm_pool", "must be at most 64"));
        }
        if !self.worker.metrics_listen.is_empty()
            && self
                .worker
                .metrics_listen
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(Error::invalid(
                "worker.metrics_listen",
                "must be empty or an address like 0.0.0.0:9464",
            ));
        }
        for (key, value) in [
            ("budgets.session_usd", self.budgets.session_usd),
            ("budgets.user_daily_usd", self.budgets.user_daily_usd),
            ("budgets.channel_daily_usd", self.budgets.channel_daily_usd),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(Error::invalid(
                    key,
                    "must be 0 (no budget) or a positive amount",
                ));
            }
        }
        if self.worker.cpus <= 0.0 {
            return Err(Error::invalid("worker.cpus", "must be positive"));
        }
        let lists = std::iter::once((
            "egress.allowed_hosts".to_owned(),
            &self.egress.allowed_hosts,
        ))
        .chain(
            self.egress
                .channel_allowed_hosts
                .iter()
                .map(|(channel, hosts)| (format!("egress.channel_allowed_hosts.{channel}"), hosts)),
        );
        for (key, patterns) in lists {
            for pattern in patterns {
                if HostPattern::parse(pattern).is_none() {
                    return Err(Error::invalid(
                        &key,
                        format!(
                            "entries must be `host`, `*.host`, optionally with `:port`; got {pattern:?}"
                        ),
                    ));
                }
            }
        }
        for (key, value) in [
            ("egress.listen", &self.egress.listen),
            ("egress.advertise", &self.egress.advertise),
        ] {
            if !value.is_empty()
                && value
                    .rsplit_once(':')
                    .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(Error::invalid(key, "must be empty or `host:port`"));
            }
        }
        if self.worker.runtime == RuntimeKind::Docker
            && matches!(
                self.worker.network.as_str(),
                "" | "none" | "bridge" | "host" | "default"
            )
        {
            return Err(Error::invalid(
                "worker.network",
                "must name a network of its own for the docker runtime (the worker makes it internal: sessions reach out only through the egress gateway)",
            ));
        }
        for (i, repo) in self.repositories.iter().enumerate() {
            let key = format!("repositories[{i}]");
            repo.validate(&key)?;
            let earlier = &self.repositories[..i];
            if earlier.iter().any(|other| other.name == repo.name) {
                return Err(Error::invalid(
                    &format!("{key}.name"),
                    "is used by another repository",
                ));
            }
            if repo.generated_files && earlier.iter().any(|other| other.generated_files) {
                return Err(Error::invalid(
                    &format!("{key}.generated_files"),
                    "is set on another repository already (one takes the generated files)",
                ));
            }
            for channel in &repo.channels {
                if earlier.iter().any(|other| other.channels.contains(channel)) {
                    return Err(Error::invalid(
                        &format!("{key}.channels"),
                        format!("channel {channel} already has a default repository"),
                    ));
                }
            }
        }
        if !self.model.api_key.is_empty() && !self.model.credentials.is_empty() {
            return Err(Error::invalid(
                "model.credentials",
                "and model.api_key are both set; put every credential in model.credentials",
            ));
        }
        for (i, credential) in self.model.credentials.iter().enumerate() {
            let key = format!("model.credentials[{i}]");
            if credential.secret.expose().trim().is_empty() {
                return Err(Error::invalid(
                    &format!("{key}.secret"),
                    "must not be empty",
                ));
            }
            if credential
                .secret
                .expose()
                .chars()
                .any(|c| c.is_control() || c == ' ')
            {
                return Err(Error::invalid(
                    &format!("{key}.secret"),
                    "must not contain spaces or control characters (it goes in an HTTP header)",
                ));
            }
        }
        let pool = self.model.pool();
        for (i, credential) in pool.iter().enumerate() {
            if pool[..i].iter().any(|c| c.label == credential.label) {
                return Err(Error::invalid(
                    &format!("model.credentials[{i}].label"),
                    format!("{:?} is used by another credential", credential.label),
                ));
            }
            if pool[..i].iter().any(|c| c.secret == credential.secret) {
                return Err(Error::invalid(
                    &format!("model.credentials[{i}].secret"),
                    "is listed twice",
                ));
            }
        }
        if self.model.max_wait_s > 3600 {
            return Err(Error::invalid(
                "model.max_wait_s",
                "must be at most 3600 (the CLI gives up on a request long before)",
            ));
        }
        for (i, price) in self.model.prices.iter().enumerate() {
            let key = format!("model.prices[{i}]");
            if [
                price.input,
                price.output,
                price.cache_read,
                price.cache_write,
            ]
            .iter()
            .any(|p| !p.is_finite() || *p < 0.0)
            {
                return Err(Error::invalid(
                    &key,
                    "prices must be non-negative numbers (USD per million tokens)",
                ));
            }
            if self.model.prices[..i]
                .iter()
                .any(|p| p.model == price.model)
            {
                return Err(Error::invalid(
                    &format!("{key}.model"),
                    format!("{:?} is priced twice", price.model),
                ));
            }
        }
        if !self.model.base_url.is_empty() && !self.model.base_url.starts_with("http") {
            return Err(Error::invalid(
                "model.base_url",
                "must be an http(s) URL or empty",
            ));
        }
        Ok(())
    }
}
