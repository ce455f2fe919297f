//! A small Mattermost client built only on the public API (REST v4 and the WebSocket), for
//! scripted users, bootstrapping and tests. It works against the simulator and a real server
//! alike; [`SimControl`] wraps the simulator-only `/sim/` endpoints.
//!
//! ```no_run
//! # async fn demo(base: &str) -> Result<(), loadtest::mmsim::client::Error> {
//! use loadtest::mmsim::client::bootstrap;
//! let boot = bootstrap(base).await?;
//! let mut events = boot.demo.websocket().await?;
//! let post = boot.demo.post(&boot.channel.id, "hello @claude", None).await?;
//! let echoed = events
//!     .wait_for(std::time::Duration::from_secs(5), |e| e.post().is_some_and(|p| p.id == post.id))
//!     .await?;
//! # let _ = echoed; Ok(()) }
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use futures::{SinkExt, Stream, StreamExt};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::contract::Report;
use super::limits::Faults;
use super::model::{
    AppError, Bot, Channel, ChannelMember, Command, CommandResponse, FileInfo, FileUploadResponse,
    OutgoingWebhook, Post, PostList, Reaction, StatusOk, Team, TeamMember, User as UserModel,
    UserAccessToken,
};
use super::operator::Stats;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{method} {path} failed to send")]
    Http {
        method: Method,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {path} answered {status}: {} ({})", error.id, error.message)]
    Api {
        method: Method,
        path: String,
        status: u16,
        error: Box<AppError>,
    },
    #[error("{method} {path} answered {status} with a body that is not an AppError: {body}")]
    Status {
        method: Method,
        path: String,
        status: u16,
        body: String,
    },
    #[error("cannot decode the answer of {what}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("login answered without a Token header")]
    MissingToken,
    #[error("WebSocket failure")]
    WebSocket(#[source] Box<tokio_tungstenite::tungstenite::Error>),
    #[error("the WebSocket closed")]
    Closed,
    #[error("no matching WebSocket event within {0:?}")]
    Timeout(Duration),
}

impl Error {
    /// The HTTP status of a failed REST call, if it got that far.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The Mattermost error id of a failed REST call.
    pub fn error_id(&self) -> Option<&str> {
        match self {
            Error::Api { error, .. } => Some(&error.id),
            _ => None,
        }
    }
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// An answer of a REST call: status, headers, body.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

async fn call(
    http: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Answer> {
    let mut req = http.request(method.clone(), format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.map_err(|source| Error::Http {
        method: method.clone(),
        path: path.to_owned(),
        source,
    })?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(|source| Error::Http {
        method: method.clone(),
        path: path.to_owned(),
        source,
    })?;
    if status >= 400 {
        return Err(match serde_json::from_slice::<AppError>(&body) {
            Ok(error) if !error.id.is_empty() => Error::Api {
                method,
                path: path.to_owned(),
                status,
                error: Box::new(error),
            },
            _ => Error::Status {
                method,
                path: path.to_owned(),
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            },
        });
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn decode<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|source| Error::Decode {
        what: what.to_owned(),
        source,
    })
}

/// Unauthenticated access: sign-up and login.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    pub fn new(base_url: &str) -> Self {
        Client {
            http: http_client(),
            base: base_url.trim_end_matches('/').to_owned(),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /users` without a session: allowed for the first user of an empty server (who
    /// becomes system admin) or on an open server.
    pub async fn sign_up(&self, username: &str, email: &str, password: &str) -> Result<UserModel> {
        let body = json!({"username": username, "email": email, "password": password});
        let a = call(
            &self.http,
            &self.base,
            None,
            Method::POST,
            "/api/v4/users",
            Some(&body),
        )
        .await?;
        decode("POST /users", &a.body)
    }

    /// `POST /users/login`; the session token comes back in the `Token` header.
    pub async fn login(&self, login_id: &str, password: &str) -> Result<User> {
        let body = json!({"login_id": login_id, "password": password});
        let a = call(
            &self.http,
            &self.base,
            None,
            Method::POST,
            "/api/v4/users/login",
            Some(&body),
        )
        .await?;
        let user: UserModel = decode("POST /users/login", &a.body)?;
        let token = a
            .headers
            .get("token")
            .and_then(|v| v.to_str().ok())
            .ok_or(Error::MissingToken)?;
        Ok(User::new(&self.base, token, &user.id, &user.username))
    }
}

/// A post to create, with the optional fields of `POST /posts`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NewPost {
    pub channel_id: String,
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub root_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub file_ids: Vec<String>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub props: Map<String, Value>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pending_post_id: String,
}

/// An authenticated user (person or bot) acting through the public API.
#[derive(Clone)]
pub struct User {
    http: reqwest::Client,
    base: String,
    token: String,
    pub id: String,
    pub username: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl User {
    pub fn new(base_url: &str, token: &str, id: &str, username: &str) -> Self {
        User {
            http: http_client(),
            base: base_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            id: id.to_owned(),
            username: username.to_owned(),
        }
    }

    /// A user from a bearer token (session or access token), via `GET /users/me`.
    pub async fn from_token(base_url: &str, token: &str) -> Result<Self> {
        let mut u = User::new(base_url, token, "", "");
        let me = u.me().await?;
        u.id = me.id;
        u.username = me.username;
        Ok(u)
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn req<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T> {
        let what = format!("{method} {path}");
        let a = call(
            &self.http,
            &self.base,
            Some(&self.token),
            method,
            path,
            body,
        )
        .await?;
        decode(&what, &a.body)
    }

    /// Any call, answering status and JSON body (`Null` if not JSON); failures (>= 400) come
    /// back as [`Error::Api`] or [`Error::Status`].
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let a = call(
            &self.http,
            &self.base,
            Some(&self.token),
            method,
            path,
            body,
        )
        .await?;
        let value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
        Ok((a.status, value))
    }

    pub async fn me(&self) -> Result<UserModel> {
        self.req(Method::GET, "/api/v4/users/me", None).await
    }

    pub async fn user(&self, user_id: &str) -> Result<UserModel> {
        self.req(Method::GET, &format!("/api/v4/users/{user_id}"), None)
            .await
    }

    pub async fn user_by_username(&self, username: &str) -> Result<UserModel> {
        self.req(
            Method::GET,
            &format!("/api/v4/users/username/{username}"),
            None,
        )
        .await
    }

    /// `PUT /users/{id}/patch` with a new username (as the user or an admin).
    pub async fn rename_user(&self, user_id: &str, username: &str) -> Result<UserModel> {
        let body = json!({ "username": username });
        self.req(
            Method::PUT,
            &format!("/api/v4/users/{user_id}/patch"),
            Some(&body),
        )
        .await
    }

    /// `POST /users/usernames`: the users with these names.
    pub async fn users_by_usernames(&self, usernames: &[&str]) -> Result<Vec<UserModel>> {
        let body = json!(usernames);
        self.req(Method::POST, "/api/v4/users/usernames", Some(&body))
            .await
    }

    /// `POST /users` as this (admin) user.
    pub async fn create_user(
        &self,
        username: &str,
        email: &str,
        password: &str,
    ) -> Result<UserModel> {
        let body = json!({"username": username, "email": email, "password": password});
        self.req(Method::POST, "/api/v4/users", Some(&body)).await
    }

    pub async fn create_team(&self, name: &str, display_name: &str) -> Result<Team> {
        let body = json!({"name": name, "display_name": display_name, "type": "O"});
        self.req(Method::POST, "/api/v4/teams", Some(&body)).await
    }

    pub async fn add_team_member(&self, team_id: &str, user_id: &str) -> Result<TeamMember> {
        let body = json!({"team_id": team_id, "user_id": user_id});
        self.req(
            Method::POST,
            &format!("/api/v4/teams/{team_id}/members"),
            Some(&body),
        )
        .await
    }

    pub async fn create_channel(
        &self,
        team_id: &str,
        name: &str,
        display_name: &str,
        private: bool,
    ) -> Result<Channel> {
        let body = json!({
            "team_id": team_id,
            "name": name,
            "display_name": display_name,
            "type": if private { "P" } else { "O" },
        });
        self.req(Method::POST, "/api/v4/channels", Some(&body))
            .await
    }

    /// The direct-message channel between this user and `other_user_id`.
    pub async fn direct_channel(&self, other_user_id: &str) -> Result<Channel> {
        let body = json!([self.id, other_user_id]);
        self.req(Method::POST, "/api/v4/channels/direct", Some(&body))
            .await
    }

    pub async fn add_channel_member(
        &self,
        channel_id: &str,
        user_id: &str,
    ) -> Result<ChannelMember> {
        let body = json!({"user_id": user_id});
        self.req(
            Method::POST,
            &format!("/api/v4/channels/{channel_id}/members"),
            Some(&body),
        )
        .await
    }

    pub async fn channel(&self, channel_id: &str) -> Result<Channel> {
        self.req(Method::GET, &format!("/api/v4/channels/{channel_id}"), None)
            .await
    }

    pub async fn team_by_name(&self, name: &str) -> Result<Team> {
        self.req(Method::GET, &format!("/api/v4/teams/name/{name}"), None)
            .await
    }

    pub async fn channel_by_name(&self, team_id: &str, name: &str) -> Result<Channel> {
        self.req(
            Method::GET,
            &format!("/api/v4/teams/{team_id}/channels/name/{name}"),
            None,
        )
        .await
    }

    pub async fn create_bot(
        &self,
        username: &str,
        display_name: &str,
        description: &str,
    ) -> Result<Bot> {
        let body =
            json!({"username": username, "display_name": display_name, "description": description});
        self.req(Method::POST, "/api/v4/bots", Some(&body)).await
    }

    /// A personal access token for `user_id` (a bot this user owns, or itself).
    pub async fn create_access_token(
        &self,
        user_id: &str,
        description: &str,
    ) -> Result<UserAccessToken> {
        let body = json!({"description": description});
        self.req(
            Method::POST,
            &format!("/api/v4/users/{user_id}/tokens"),
            Some(&body),
        )
        .await
    }

    /// Posts `text` in a channel, in the thread of `root_id` if given.
    pub async fn post(&self, channel_id: &str, text: &str, root_id: Option<&str>) -> Result<Post> {
        self.create_post(&NewPost {
            channel_id: channel_id.to_owned(),
            message: text.to_owned(),
            root_id: root_id.unwrap_or("").to_owned(),
            ..NewPost::default()
        })
        .await
    }

    pub async fn create_post(&self, post: &NewPost) -> Result<Post> {
        let body = serde_json::to_value(post).unwrap_or(Value::Null);
        self.req(Method::POST, "/api/v4/posts", Some(&body)).await
    }

    /// Edits a post's message (`PUT /posts/{id}/patch`).
    pub async fn patch(&self, post_id: &str, message: &str) -> Result<Post> {
        self.patch_post(post_id, &json!({"message": message})).await
    }

    /// `PUT /posts/{id}/patch` with any patch body (`message`, `props`, `file_ids`, …).
    pub async fn patch_post(&self, post_id: &str, patch: &Value) -> Result<Post> {
        self.req(
            Method::PUT,
            &format!("/api/v4/posts/{post_id}/patch"),
            Some(patch),
        )
        .await
    }

    pub async fn get_post(&self, post_id: &str) -> Result<Post> {
        self.req(Method::GET, &format!("/api/v4/posts/{post_id}"), None)
            .await
    }

    pub async fn delete_post(&self, post_id: &str) -> Result<StatusOk> {
        self.req(Method::DELETE, &format!("/api/v4/posts/{post_id}"), None)
            .await
    }

    /// The whole thread of a post, newest first (`PostList.order`).
    pub async fn thread(&self, root_id: &str) -> Result<PostList> {
        self.req(
            Method::GET,
            &format!("/api/v4/posts/{root_id}/thread"),
            None,
        )
        .await
    }

    /// One page of a channel's posts, newest first.
    pub async fn channel_posts(
        &self,
        channel_id: &str,
        page: usize,
        per_page: usize,
    ) -> Result<PostList> {
        self.req(
            Method::GET,
            &format!("/api/v4/channels/{channel_id}/posts?page={page}&per_page={per_page}"),
            None,
        )
        .await
    }

    pub async fn react(&self, post_id: &str, emoji: &str) -> Result<Reaction> {
        let body = json!({"user_id": self.id, "post_id": post_id, "emoji_name": emoji});
        self.req(Method::POST, "/api/v4/reactions", Some(&body))
            .await
    }

    pub async fn unreact(&self, post_id: &str, emoji: &str) -> Result<StatusOk> {
        let path = format!(
            "/api/v4/users/{}/posts/{post_id}/reactions/{emoji}",
            self.id
        );
        self.req(Method::DELETE, &path, None).await
    }

    pub async fn reactions(&self, post_id: &str) -> Result<Vec<Reaction>> {
        self.req(
            Method::GET,
            &format!("/api/v4/posts/{post_id}/reactions"),
            None,
        )
        .await
    }

    /// Clicks a button, as the webapp does (`POST /posts/{id}/actions/{action_id}`).
    pub async fn click(&self, post_id: &str, action_id: &str) -> Result<StatusOk> {
        self.req(
            Method::POST,
            &format!("/api/v4/posts/{post_id}/actions/{action_id}"),
            Some(&json!({})),
        )
        .await
    }

    /// Chooses `option` in a select menu.
    pub async fn select(&self, post_id: &str, action_id: &str, option: &str) -> Result<StatusOk> {
        let body = json!({"selected_option": option});
        self.req(
            Method::POST,
            &format!("/api/v4/posts/{post_id}/actions/{action_id}"),
            Some(&body),
        )
        .await
    }

    /// Uploads one file (multipart, like the webapp) into a channel.
    pub async fn upload_file(
        &self,
        channel_id: &str,
        name: &str,
        data: Vec<u8>,
    ) -> Result<FileInfo> {
        let path = "/api/v4/files";
        let form = reqwest::multipart::Form::new()
            .text("channel_id", channel_id.to_owned())
            .text("client_ids", "client-0")
            .part(
                "files",
                reqwest::multipart::Part::bytes(data).file_name(name.to_owned()),
            );
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .multipart(form)
            .send()
            .await
            .map_err(|source| Error::Http {
                method: Method::POST,
                path: path.to_owned(),
                source,
            })?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|source| Error::Http {
            method: Method::POST,
            path: path.to_owned(),
            source,
        })?;
        if status >= 400 {
            return Err(match serde_json::from_slice::<AppError>(&body) {
                Ok(error) => Error::Api {
                    method: Method::POST,
                    path: path.to_owned(),
                    status,
                    error: Box::new(error),
                },
                Err(_) => Error::Status {
                    method: Method::POST,
                    path: path.to_owned(),
                    status,
                    body: String::from_utf8_lossy(&body).into_owned(),
                },
            });
        }
        let resp: FileUploadResponse = decode("POST /files", &body)?;
        resp.file_infos
            .into_iter()
            .next()
            .ok_or_else(|| Error::Status {
                method: Method::POST,
                path: path.to_owned(),
                status,
                body: "no file_infos".into(),
            })
    }

    /// A file's content.
    pub async fn get_file(&self, file_id: &str) -> Result<Vec<u8>> {
        let path = format!("/api/v4/files/{file_id}");
        let a = call(
            &self.http,
            &self.base,
            Some(&self.token),
            Method::GET,
            &path,
            None,
        )
        .await?;
        Ok(a.body.to_vec())
    }

    pub async fn file_info(&self, file_id: &str) -> Result<FileInfo> {
        self.req(Method::GET, &format!("/api/v4/files/{file_id}/info"), None)
            .await
    }

    /// Runs a slash command (`/trigger args`) in a channel, in a thread if `root_id` is given.
    pub async fn execute_command(
        &self,
        channel_id: &str,
        command: &str,
        root_id: Option<&str>,
    ) -> Result<CommandResponse> {
        let mut body = json!({"channel_id": channel_id, "command": command});
        if let Some(r) = root_id {
            body["root_id"] = Value::from(r);
        }
        self.req(Method::POST, "/api/v4/commands/execute", Some(&body))
            .await
    }

    /// Registers an outgoing webhook, as an admin does in the System Console.
    pub async fn create_outgoing_webhook(&self, hook: &OutgoingWebhook) -> Result<OutgoingWebhook> {
        let body = serde_json::to_value(hook).unwrap_or(Value::Null);
        self.req(Method::POST, "/api/v4/hooks/outgoing", Some(&body))
            .await
    }

    /// Registers a custom slash command.
    pub async fn create_slash_command(&self, command: &Command) -> Result<Command> {
        let body = serde_json::to_value(command).unwrap_or(Value::Null);
        self.req(Method::POST, "/api/v4/commands", Some(&body))
            .await
    }

    /// `POST /actions/dialogs/open`, as an integration holding a trigger id does.
    pub async fn open_dialog(
        &self,
        trigger_id: &str,
        url: &str,
        dialog: &Value,
    ) -> Result<StatusOk> {
        let body = json!({"trigger_id": trigger_id, "url": url, "dialog": dialog});
        self.req(Method::POST, "/api/v4/actions/dialogs/open", Some(&body))
            .await
    }

    /// Submits a dialog, as the webapp does; answers the integration's reply (or `status`).
    pub async fn submit_dialog(&self, submission: &Value) -> Result<Value> {
        self.req(
            Method::POST,
            "/api/v4/actions/dialogs/submit",
            Some(submission),
        )
        .await
    }

    /// A WebSocket authenticated by the `Authorization: Bearer` header.
    pub async fn websocket(&self) -> Result<EventStream> {
        EventStream::connect(&self.base, &self.token, Auth::Header, None).await
    }

    /// A WebSocket authenticated by an `authentication_challenge` after connecting.
    pub async fn websocket_challenge(&self) -> Result<EventStream> {
        EventStream::connect(&self.base, &self.token, Auth::Challenge, None).await
    }
}

// ---- WebSocket ----------------------------------------------------------------------------

/// The `broadcast` object of an event.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct EventBroadcast {
    pub omit_users: Option<Map<String, Value>>,
    pub user_id: String,
    pub channel_id: String,
    pub team_id: String,
    pub connection_id: String,
    pub omit_connection_id: String,
}

/// Event names a bot handles; anything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Hello,
    Posted,
    PostEdited,
    PostDeleted,
    ReactionAdded,
    ReactionRemoved,
    OpenDialog,
    EphemeralMessage,
    Other,
}

/// One WebSocket event, in the server's envelope.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Event {
    pub event: String,
    #[serde(default)]
    pub data: Map<String, Value>,
    #[serde(default)]
    pub broadcast: EventBroadcast,
    pub seq: i64,
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self.event.as_str() {
            "hello" => EventKind::Hello,
            "posted" => EventKind::Posted,
            "post_edited" => EventKind::PostEdited,
            "post_deleted" => EventKind::PostDeleted,
            "reaction_added" => EventKind::ReactionAdded,
            "reaction_removed" => EventKind::ReactionRemoved,
            "open_dialog" => EventKind::OpenDialog,
            "ephemeral_message" => EventKind::EphemeralMessage,
            _ => EventKind::Other,
        }
    }

    fn json_string<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        serde_json::from_str(self.data.get(key)?.as_str()?).ok()
    }

    /// `data.post`, which the server sends as a JSON-encoded string.
    pub fn post(&self) -> Option<Post> {
        self.json_string("post")
    }

    /// `data.reaction`, a JSON-encoded string.
    pub fn reaction(&self) -> Option<Reaction> {
        self.json_string("reaction")
    }

    /// `data.dialog`, a JSON-encoded string.
    pub fn dialog(&self) -> Option<Value> {
        self.json_string("dialog")
    }

    /// `data.mentions`: present (holding the receiver's id) only if the receiver was mentioned.
    pub fn mentions(&self) -> Vec<String> {
        self.json_string("mentions").unwrap_or_default()
    }

    /// `hello`'s `connection_id`.
    pub fn connection_id(&self) -> Option<&str> {
        self.data.get("connection_id").and_then(Value::as_str)
    }
}

#[derive(Clone, Copy)]
enum Auth {
    Header,
    Challenge,
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The event stream of one connection. Tracks the connection id and the next `seq`, so
/// [`EventStream::reconnect`] resumes without losing events.
pub struct EventStream {
    socket: Socket,
    base: String,
    token: String,
    auth: Auth,
    connection_id: String,
    next_seq: i64,
    action_seq: i64,
    replies: VecDeque<Value>,
}

fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> Error {
    Error::WebSocket(Box::new(e))
}

impl EventStream {
    async fn connect(
        base: &str,
        token: &str,
        auth: Auth,
        resume: Option<(&str, i64)>,
    ) -> Result<Self> {
        let mut url = format!("{}/api/v4/websocket", base.replacen("http", "ws", 1));
        if let Some((conn, seq)) = resume {
            url.push_str(&format!("?connection_id={conn}&sequence_number={seq}"));
        }
        let mut request = url.into_client_request().map_err(ws_err)?;
        if matches!(auth, Auth::Header)
            && let Ok(v) = format!("Bearer {token}").parse()
        {
            request.headers_mut().insert("authorization", v);
        }
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(ws_err)?;
        let mut stream = EventStream {
            socket,
            base: base.to_owned(),
            token: token.to_owned(),
            auth,
            connection_id: resume.map(|(c, _)| c.to_owned()).unwrap_or_default(),
            next_seq: resume.map_or(0, |(_, s)| s),
            action_seq: 0,
            replies: VecDeque::new(),
        };
        if matches!(auth, Auth::Challenge) {
            stream
                .send_action("authentication_challenge", json!({"token": token}))
                .await?;
        }
        Ok(stream)
    }

    /// The id from `hello` (empty until it arrived).
    pub fn connection_id(&self) -> &str {
        &self.connection_id
    }

    /// The `seq` the next event should carry.
    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }

    async fn send_action(&mut self, action: &str, data: Value) -> Result<i64> {
        self.action_seq += 1;
        let msg = json!({"seq": self.action_seq, "action": action, "data": data});
        self.socket
            .send(Message::Text(msg.to_string().into()))
            .await
            .map_err(ws_err)?;
        Ok(self.action_seq)
    }

    /// The next event; action replies (`seq_reply`) are kept aside for [`EventStream::ping`].
    pub async fn next_event(&mut self) -> Result<Event> {
        loop {
            let msg = self
                .socket
                .next()
                .await
                .ok_or(Error::Closed)?
                .map_err(ws_err)?;
            let text = match msg {
                Message::Text(t) => t,
                Message::Close(_) => return Err(Error::Closed),
                _ => continue,
            };
            let value: Value =
                serde_json::from_str(text.as_str()).map_err(|source| Error::Decode {
                    what: "WebSocket message".into(),
                    source,
                })?;
            if value.get("seq_reply").is_some() {
                self.replies.push_back(value);
                continue;
            }
            let event: Event = serde_json::from_value(value).map_err(|source| Error::Decode {
                what: "WebSocket event".into(),
                source,
            })?;
            if let Some(id) = event
                .connection_id()
                .filter(|_| event.kind() == EventKind::Hello)
            {
                self.connection_id = id.to_owned();
            }
            self.next_seq = event.seq + 1;
            return Ok(event);
        }
    }

    /// The first event satisfying `pred` within `within`; others are skipped.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Result<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.next_event()).await {
                Err(_) => return Err(Error::Timeout(within)),
                Ok(event) => {
                    let event = event?;
                    if pred(&event) {
                        return Ok(event);
                    }
                }
            }
        }
    }

    /// Events arriving within `within` (fewer if the socket goes quiet).
    pub async fn collect_for(&mut self, within: Duration) -> Result<Vec<Event>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        while let Ok(event) = tokio::time::timeout_at(deadline, self.next_event()).await {
            out.push(event?);
        }
        Ok(out)
    }

    /// Sends action `ping` and answers the reply (`{status, seq_reply, data:{text:"pong"…}}`).
    pub async fn ping(&mut self, within: Duration) -> Result<Value> {
        let seq = self.send_action("ping", json!({})).await?;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(pos) = self
                .replies
                .iter()
                .position(|r| r.get("seq_reply").and_then(Value::as_i64) == Some(seq))
                && let Some(reply) = self.replies.remove(pos)
            {
                return Ok(reply);
            }
            // Events arriving meanwhile are not lost: the caller can resume from `next_seq`.
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return Err(Error::Timeout(within)),
                Ok(None) => return Err(Error::Closed),
                Ok(Some(msg)) => {
                    if let Message::Text(t) = msg.map_err(ws_err)?
                        && let Ok(v) = serde_json::from_str::<Value>(t.as_str())
                        && v.get("seq_reply").is_some()
                    {
                        self.replies.push_back(v);
                    }
                }
            }
        }
    }

    /// Replies to actions received so far (e.g. the challenge's `OK`).
    pub fn take_replies(&mut self) -> Vec<Value> {
        self.replies.drain(..).collect()
    }

    /// Drops this socket and reconnects with `connection_id` and `sequence_number`, so the
    /// server replays what was missed (or starts a new connection with a new `hello`).
    pub async fn reconnect(&mut self) -> Result<()> {
        let _ = self.socket.close(None).await;
        let conn = self.connection_id.clone();
        let resume = (!conn.is_empty()).then_some((conn.as_str(), self.next_seq));
        let fresh = EventStream::connect(&self.base, &self.token, self.auth, resume).await?;
        let next_seq = self.next_seq;
        *self = fresh;
        if resume.is_some() {
            self.next_seq = next_seq;
        }
        Ok(())
    }

    /// Closes the socket.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }

    /// The events as a `Stream`.
    pub fn into_stream(self) -> impl Stream<Item = Result<Event>> {
        futures::stream::unfold(self, |mut s| async move {
            match s.next_event().await {
                Err(Error::Closed) => None,
                r => Some((r, s)),
            }
        })
    }
}

// ---- bootstrap ----------------------------------------------------------------------------

/// What [`bootstrap`] set up.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// The first user, system admin, logged in.
    pub admin: User,
    pub team: Team,
    /// A public channel everyone below is a member of.
    pub channel: Channel,
    /// The bot, acting with its personal access token.
    pub bot: User,
    pub bot_token: String,
    /// A regular user, logged in.
    pub demo: User,
}

impl Bootstrap {
    /// Registers ccfleet's integrations as an admin does: an outgoing webhook (trigger
    /// `claude:` in the channel) and the `/claude` slash command, both calling the gateway
    /// at `gateway_url`. Mentions need neither: they arrive over the WebSocket.
    pub async fn register_integrations(
        &self,
        gateway_url: &str,
    ) -> Result<(OutgoingWebhook, Command)> {
        let hook = self
            .admin
            .create_outgoing_webhook(&OutgoingWebhook {
                team_id: self.team.id.clone(),
                channel_id: self.channel.id.clone(),
                display_name: "Claude".into(),
                trigger_words: vec!["claude:".into()],
                trigger_when: 1,
                callback_urls: vec![format!("{gateway_url}/hooks/outgoing")],
                content_type: "application/json".into(),
                ..Default::default()
            })
            .await?;
        let command = self
            .admin
            .create_slash_command(&Command {
                team_id: self.team.id.clone(),
                trigger: "claude".into(),
                method: "P".into(),
                url: format!("{gateway_url}/hooks/slash"),
                ..Default::default()
            })
            .await?;
        Ok((hook, command))
    }
}

/// Password of the users [`bootstrap`] creates.
pub const BOOTSTRAP_PASSWORD: &str = "sim-password-1";

/// Sets up an empty server the way a first-time admin does: an admin user, a team, a public
/// channel, a bot with an access token, and a demo user, all members of the team and channel.
pub async fn bootstrap(base_url: &str) -> Result<Bootstrap> {
    let anon = Client::new(base_url);
    anon.sign_up("admin", "admin@example.com", BOOTSTRAP_PASSWORD)
        .await?;
    let admin = anon.login("admin", BOOTSTRAP_PASSWORD).await?;
    let team = admin.create_team("ccfleet", "ccfleet").await?;
    let channel = admin
        .create_channel(&team.id, "claude", "Claude", false)
        .await?;
    let bot = admin
        .create_bot("claude", "Claude", "Claude Code in Mattermost")
        .await?;
    let token = admin
        .create_access_token(&bot.user_id, "ccfleet gateway")
        .await?;
    let demo = admin
        .create_user("alice", "alice@example.com", BOOTSTRAP_PASSWORD)
        .await?;
    for user_id in [&bot.user_id, &demo.id] {
        admin.add_team_member(&team.id, user_id).await?;
        admin.add_channel_member(&channel.id, user_id).await?;
    }
    let demo = anon.login("alice", BOOTSTRAP_PASSWORD).await?;
    let bot_user = User::new(&anon.base, &token.token, &bot.user_id, &bot.username);
    Ok(Bootstrap {
        admin,
        team,
        channel,
        bot: bot_user,
        bot_token: token.token,
        demo,
    })
}

// ---- simulator controls -------------------------------------------------------------------

/// The simulator-only `/sim/` endpoints (not part of Mattermost's API).
#[derive(Clone)]
pub struct SimControl {
    http: reqwest::Client,
    base: String,
}

impl SimControl {
    pub fn new(base_url: &str) -> Self {
        SimControl {
            http: http_client(),
            base: base_url.trim_end_matches('/').to_owned(),
        }
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<bytes::Bytes> {
        Ok(call(&self.http, &self.base, None, method, path, body)
            .await?
            .body)
    }

    pub async fn stats(&self) -> Result<Stats> {
        decode(
            "GET /sim/stats",
            &self.send(Method::GET, "/sim/stats", None).await?,
        )
    }

    pub async fn reset_stats(&self) -> Result<()> {
        self.send(Method::DELETE, "/sim/stats", None)
            .await
            .map(drop)
    }

    pub async fn faults(&self) -> Result<Faults> {
        decode(
            "GET /sim/faults",
            &self.send(Method::GET, "/sim/faults", None).await?,
        )
    }

    pub async fn set_faults(&self, faults: &Faults) -> Result<()> {
        let body = serde_json::to_value(faults).unwrap_or(Value::Null);
        self.send(Method::PUT, "/sim/faults", Some(&body))
            .await
            .map(drop)
    }

    pub async fn contract(&self) -> Result<Report> {
        decode(
            "GET /sim/contract",
            &self.send(Method::GET, "/sim/contract", None).await?,
        )
    }

    pub async fn integrations(&self) -> Result<Vec<Value>> {
        decode(
            "GET /sim/integrations",
            &self.send(Method::GET, "/sim/integrations", None).await?,
        )
    }

    /// Moves the simulator's clock forward (expiry of trigger ids, response URLs, dedupe).
    pub async fn advance_clock(&self, by: Duration) -> Result<()> {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.send(Method::POST, "/sim/clock/advance", Some(&json!({"ms": ms})))
            .await
            .map(drop)
    }

    pub async fn save_state(&self) -> Result<()> {
        self.send(Method::POST, "/sim/state/save", None)
            .await
            .map(drop)
    }
}
