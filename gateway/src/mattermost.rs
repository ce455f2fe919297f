//! The Mattermost REST v4 calls the gateway makes, with errors classified for retry.

use std::time::Duration;
use tracing::Instrument as _;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Mattermost rate limit hit; retry after {retry_after:?}")]
    RateLimited { retry_after: Duration },
    #[error("Mattermost answered {status} to {call}: {id}")]
    Status {
        call: &'static str,
        status: u16,
        /// Mattermost's error id, e.g. `api.post.create_post.root_id.app_error`.
        id: String,
    },
    #[error("request to Mattermost failed ({call})")]
    Network {
        call: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("Mattermost sent an unexpected body for {call}")]
    Body {
        call: &'static str,
        #[source]
        source: reqwest::Error,
    },
}

impl Error {
    /// The `class` of `mattermost_responses_total` this answer counts under.
    pub fn status_class(&self) -> &'static str {
        match self {
            Error::RateLimited { .. } => "429",
            Error::Status { status, .. } if *status >= 500 => "5xx",
            Error::Status { .. } => "4xx",
            // The request did not get an answer, or the answer was not what was asked.
            Error::Network { .. } => "network",
            Error::Body { .. } => "2xx",
        }
    }

    /// Worth retrying: rate limits, and whatever [`Error::is_unavailable`] covers. Any
    /// other answer (a 4xx, a body that does not parse) is Mattermost refusing for good.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::RateLimited { .. }) || self.is_unavailable()
    }

    /// Mattermost did not answer, or answered that it cannot now: a network failure or
    /// timeout, a 5xx, a 408. What the circuit breaker counts; everything else shows
    /// that the server is up.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Network { .. } => true,
            Error::Status { status, .. } => *status >= 500 || *status == 408,
            Error::RateLimited { .. } | Error::Body { .. } => false,
        }
    }
}

/// What the server said about its rate limit in the last response.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateInfo {
    pub remaining: Option<u64>,
    pub reset: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Post {
    pub id: String,
    #[serde(default)]
    pub channel_id: String,
    #[serde(default)]
    pub root_id: String,
    #[serde(default)]
    pub user_id: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub props: Value,
    #[serde(default)]
    pub file_ids: Vec<String>,
    #[serde(default)]
    pub create_at: i64,
    #[serde(default)]
    pub update_at: i64,
    #[serde(default)]
    pub delete_at: i64,
    /// Empty for a user's post; `system_*` for Mattermost's own.
    #[serde(default, rename = "type")]
    pub kind: String,
}

/// A channel the bot is a member of (`GET /users/me/channels`).
#[derive(Debug, Clone, Deserialize)]
pub struct Channel {
    pub id: String,
    /// `O`, `P`, `D` or `G`.
    #[serde(default, rename = "type")]
    pub kind: String,
}

/// `PostList`: ids in `order`, posts by id.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PostList {
    #[serde(default)]
    pub order: Vec<String>,
    #[serde(default)]
    pub posts: std::collections::HashMap<String, Post>,
}

/// Most posts `GET /channels/{id}/posts?since=` returns at once.
pub const SINCE_LIMIT: usize = 1000;

#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub id: String,
    pub username: String,
}

/// A REST client authenticated as the bot.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    id: String,
}

impl Client {
    pub fn new(base_url: &str, token: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build()
            .expect("static reqwest configuration is valid");
        Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        call: &'static str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(reqwest::Response, RateInfo), Error> {
        let url = format!("{}/api/v4{path}", self.base);
        let span = http_span(&method, &url);
        let mut request = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let recorded = span.clone();
        async {
            let response = request.send().await;
            record_status(&recorded, &response);
            check(
                call,
                response.map_err(|source| Error::Network { call, source })?,
            )
            .await
        }
        .instrument(span)
        .await
    }

    pub async fn me(&self) -> Result<User, Error> {
        let (response, _) = self.call("get me", Method::GET, "/users/me", None).await?;
        response.json().await.map_err(|source| Error::Body {
            call: "get me",
            source,
        })
    }

    pub async fn user(&self, user_id: &str) -> Result<User, Error> {
        let (response, _) = self
            .call("get user", Method::GET, &format!("/users/{user_id}"), None)
            .await?;
        response.json().await.map_err(|source| Error::Body {
            call: "get user",
            source,
        })
    }

    /// The users with these usernames (`POST /users/usernames`); names nobody has are
    /// left out of the answer.
    pub async fn users_by_usernames(&self, usernames: &[String]) -> Result<Vec<User>, Error> {
        let call = "get users by usernames";
        let (response, _) = self
            .call(
                call,
                Method::POST,
                "/users/usernames",
                Some(serde_json::json!(usernames)),
            )
            .await?;
        response
            .json()
            .await
            .map_err(|source| Error::Body { call, source })
    }

    /// The users with these ids (`POST /users/ids`); unknown ids are left out.
    pub async fn users_by_ids(&self, ids: &[String]) -> Result<Vec<User>, Error> {
        let call = "get users by ids";
        let (response, _) = self
            .call(
                call,
                Method::POST,
                "/users/ids",
                Some(serde_json::json!(ids)),
            )
            .await?;
        response
            .json()
            .await
            .map_err(|source| Error::Body { call, source })
    }

    /// A file's name (`GET /files/{id}/info`).
    pub async fn file_name(&self, file_id: &str) -> Result<String, Error> {
        let (response, _) = self
            .call(
                "get file info",
                Method::GET,
                &format!("/files/{file_id}/info"),
                None,
            )
            .await?;
        let info: Value = response.json().await.map_err(|source| Error::Body {
            call: "get file info",
            source,
        })?;
        Ok(info["name"].as_str().unwrap_or(file_id).to_owned())
    }

    /// A file's content (`GET /files/{id}`).
    pub async fn file(&self, file_id: &str) -> Result<bytes::Bytes, Error> {
        let (response, _) = self
            .call("get file", Method::GET, &format!("/files/{file_id}"), None)
            .await?;
        response.bytes().await.map_err(|source| Error::Body {
            call: "get file",
            source,
        })
    }

    pub async fn get_post(&self, post_id: &str) -> Result<Post, Error> {
        let (response, _) = self
            .call("get post", Method::GET, &format!("/posts/{post_id}"), None)
            .await?;
        response.json().await.map_err(|source| Error::Body {
            call: "get post",
            source,
        })
    }

    /// Every channel of every team the bot is a member of (direct and group messages too).
    pub async fn my_channels(&self) -> Result<Vec<Channel>, Error> {
        let (response, _) = self
            .call("get my channels", Method::GET, "/users/me/channels", None)
            .await?;
        response.json().await.map_err(|source| Error::Body {
            call: "get my channels",
            source,
        })
    }

    /// The posts of a channel created or changed after `since_ms` (Mattermost's clock),
    /// at most [`SINCE_LIMIT`].
    pub async fn channel_posts_since(
        &self,
        channel_id: &str,
        since_ms: i64,
    ) -> Result<PostList, Error> {
        let (response, _) = self
            .call(
                "get channel posts",
                Method::GET,
                &format!("/channels/{channel_id}/posts?since={since_ms}"),
                None,
            )
            .await?;
        response.json().await.map_err(|source| Error::Body {
            call: "get channel posts",
            source,
        })
    }

    /// Every post of the thread of `post_id`, root included (`GET /posts/{id}/thread`
    /// without paging: the whole thread).
    pub async fn thread(&self, post_id: &str) -> Result<(Vec<Post>, RateInfo), Error> {
        let call = "get thread";
        let (response, rate) = self
            .call(call, Method::GET, &format!("/posts/{post_id}/thread"), None)
            .await?;
        let list: PostList = response
            .json()
            .await
            .map_err(|source| Error::Body { call, source })?;
        Ok((list.posts.into_values().collect(), rate))
    }

    /// Creates a post. `pending_post_id` makes retries idempotent, but only for 30 s:
    /// Mattermost returns the post created by an earlier attempt with the same id while it
    /// is in its `seenPendingPostIdsCache`.
    pub async fn create_post(
        &self,
        channel_id: &str,
        root_id: &str,
        message: &str,
        props: Option<&Value>,
        file_ids: &[String],
        pending_post_id: &str,
    ) -> Result<(Post, RateInfo), Error> {
        let mut body = json!({
            "channel_id": channel_id,
            "root_id": root_id,
            "message": message,
            "pending_post_id": pending_post_id,
        });
        if let Some(props) = props {
            body["props"] = props.clone();
        }
        if !file_ids.is_empty() {
            body["file_ids"] = json!(file_ids);
        }
        let (response, rate) = self
            .call("create post", Method::POST, "/posts", Some(body))
            .await?;
        let post = response.json().await.map_err(|source| Error::Body {
            call: "create post",
            source,
        })?;
        Ok((post, rate))
    }

    pub async fn patch_post(
        &self,
        post_id: &str,
        message: &str,
        props: Option<&Value>,
    ) -> Result<RateInfo, Error> {
        let mut body = json!({ "message": message });
        if let Some(props) = props {
            body["props"] = props.clone();
        }
        let (_, rate) = self
            .call(
                "patch post",
                Method::PUT,
                &format!("/posts/{post_id}/patch"),
                Some(body),
            )
            .await?;
        Ok(rate)
    }

    pub async fn add_reaction(
        &self,
        user_id: &str,
        post_id: &str,
        emoji: &str,
    ) -> Result<RateInfo, Error> {
        let body = json!({ "user_id": user_id, "post_id": post_id, "emoji_name": emoji });
        let (_, rate) = self
            .call("add reaction", Method::POST, "/reactions", Some(body))
            .await?;
        Ok(rate)
    }

    pub async fn remove_reaction(
        &self,
        user_id: &str,
        post_id: &str,
        emoji: &str,
    ) -> Result<RateInfo, Error> {
        let path = format!("/users/{user_id}/posts/{post_id}/reactions/{emoji}");
        match self
            .call("remove reaction", Method::DELETE, &path, None)
            .await
        {
            Ok((_, rate)) => Ok(rate),
            // Already gone: the goal is reached.
            Err(Error::Status { status: 404, .. }) => Ok(RateInfo::default()),
            Err(e) => Err(e),
        }
    }

    pub async fn ephemeral(
        &self,
        user_id: &str,
        channel_id: &str,
        root_id: &str,
        message: &str,
    ) -> Result<RateInfo, Error> {
        let body = json!({
            "user_id": user_id,
            "post": { "channel_id": channel_id, "root_id": root_id, "message": message },
        });
        let (_, rate) = self
            .call(
                "ephemeral post",
                Method::POST,
                "/posts/ephemeral",
                Some(body),
            )
            .await?;
        Ok(rate)
    }

    /// Uploads one file to a channel; returns its file id.
    pub async fn upload_file(
        &self,
        channel_id: &str,
        name: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> Result<(String, RateInfo), Error> {
        let call = "upload file";
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(name.to_owned())
            .mime_str(content_type)
            .unwrap_or_else(|_| reqwest::multipart::Part::bytes(Vec::new()));
        let form = reqwest::multipart::Form::new()
            .text("channel_id", channel_id.to_owned())
            .part("files", part);
        let url = format!("{}/api/v4/files", self.base);
        let span = http_span(&Method::POST, &url);
        let request = self.http.post(url).bearer_auth(&self.token).multipart(form);
        let recorded = span.clone();
        let (response, rate) = async {
            let response = request.send().await;
            record_status(&recorded, &response);
            check(
                call,
                response.map_err(|source| Error::Network { call, source })?,
            )
            .await
        }
        .instrument(span)
        .await?;
        let body: Value = response
            .json()
            .await
            .map_err(|source| Error::Body { call, source })?;
        let id = body["file_infos"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok((id, rate))
    }
}

/// A CLIENT span for one request to Mattermost, in OpenTelemetry's HTTP conventions
/// (named after the method: the URL holds ids). The status is recorded by
/// [`record_status`].
fn http_span(method: &Method, url: &str) -> tracing::Span {
    let parsed = reqwest::Url::parse(url).ok();
    tracing::info_span!(
        "http",
        otel.name = %method,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        url.full = %url,
        server.address = parsed.as_ref().and_then(|u| u.host_str()).unwrap_or_default(),
        server.port = parsed.as_ref().and_then(reqwest::Url::port_or_known_default).unwrap_or_default(),
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// Records the outcome of a request on its span (made by [`http_span`]).
fn record_status(span: &tracing::Span, response: &Result<reqwest::Response, reqwest::Error>) {
    match response {
        Ok(response) => {
            let status = response.status().as_u16();
            span.record("http.response.status_code", i64::from(status));
            if status >= 400 {
                span.record("error.type", tracing::field::display(status));
                span.record("otel.status_code", "ERROR");
            }
        }
        Err(err) => {
            let kind = if err.is_timeout() {
                "timeout"
            } else if err.is_connect() {
                "connect"
            } else {
                "request"
            };
            span.record("error.type", kind);
            span.record("otel.status_code", "ERROR");
        }
    }
}

fn rate_info(response: &reqwest::Response) -> RateInfo {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    RateInfo {
        remaining: header("X-RateLimit-Remaining"),
        reset: header("X-RateLimit-Reset").map(Duration::from_secs),
    }
}

async fn check(
    call: &'static str,
    response: reqwest::Response,
) -> Result<(reqwest::Response, RateInfo), Error> {
    let rate = rate_info(&response);
    let status = response.status();
    if status.is_success() {
        return Ok((response, rate));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = response
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .or(rate.reset)
            .unwrap_or(Duration::from_secs(1));
        return Err(Error::RateLimited { retry_after });
    }
    let id = response
        .json::<ErrorBody>()
        .await
        .map(|b| b.id)
        .unwrap_or_default();
    Err(Error::Status {
        call,
        status: status.as_u16(),
        id,
    })
}
