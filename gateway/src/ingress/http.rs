//! HTTP ingress: outgoing webhooks, the `/claude` slash command, button actions and
//! dialog submissions, as Mattermost sends them (see the reference, §2–4).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use common::signing::{ActionClaims, DialogClaims, Signer};
use proto::commands;
use proto::v1::{
    ButtonAction, DialogSubmission, EventBody, MessagePosted, SlashCommand, Source, User,
};
use proto::{ChannelId, ChatEvent, PostId, ThreadId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{channel_type, token_matches};
use crate::AppState;
use crate::error::Error;

pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Error> {
    if is_json(headers) {
        serde_json::from_slice(body)
            .map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")))
    } else {
        serde_urlencoded::from_bytes(body)
            .map_err(|e| Error::BadRequest(format!("invalid form body: {e}")))
    }
}

/// An outgoing webhook's request (JSON or form).
/// The root of `post`'s thread (`None` for a root post), from Mattermost, tried a few
/// times within the webhook's 30 s. A post the bot may not read is taken as a root.
async fn root_of(
    state: &AppState,
    post: &PostId,
) -> Result<Option<PostId>, crate::mattermost::Error> {
    let mut wait = std::time::Duration::from_millis(250);
    let mut tries = 0;
    loop {
        tries += 1;
        match state.mattermost.get_post(post.as_str()).await {
            Ok(found) if found.root_id.is_empty() => return Ok(None),
            Ok(found) => match PostId::parse(found.root_id) {
                Ok(root) => return Ok(Some(root)),
                // Mattermost never sends one; a post without a usable root is a root.
                Err(err) => {
                    tracing::warn!(error = %err, post = %post, "webhook post's root is not an id");
                    return Ok(None);
                }
            },
            Err(err) if err.is_retryable() && tries < 5 => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            // The bot cannot see the post (not in the channel, or gone): the webhook's own
            // word is all there is, and it names no thread.
            Err(crate::mattermost::Error::Status { status, .. })
                if (400..500).contains(&status) =>
            {
                tracing::debug!(status, post = %post, "webhook post not readable; taken as a thread root");
                return Ok(None);
            }
            Err(err) => return Err(err),
        }
    }
}

/// The webhook's reply when its post could not be taken: Mattermost posts `text` in the
/// channel (its status code is not read, so an error status would be lost).
fn webhook_failure() -> Response {
    Json(json!({
        "text": ":warning: Claude could not take this message (Mattermost or the message queue did not answer). Please send it again in a moment."
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
pub struct WebhookRequest {
    #[serde(default)]
    pub(crate) token: String,
    #[serde(default)]
    pub(crate) channel_id: String,
    #[serde(default)]
    pub(crate) user_id: String,
    #[serde(default)]
    pub(crate) user_name: String,
    #[serde(default)]
    pub(crate) post_id: String,
    #[serde(default)]
    pub(crate) text: String,
    #[serde(default)]
    pub(crate) file_ids: String,
    /// JSON: milliseconds; form: seconds.
    #[serde(default)]
    pub(crate) timestamp: Value,
}

impl WebhookRequest {
    /// When the post was made, in milliseconds: a JSON body says milliseconds, a form
    /// seconds. Anything unreadable (or out of range) is 0.
    pub(crate) fn create_at_ms(&self, json: bool) -> i64 {
        let seconds = |s: i64| s.checked_mul(1000).unwrap_or(0);
        match &self.timestamp {
            Value::Number(n) if json => n.as_i64().unwrap_or(0),
            Value::Number(n) => n.as_i64().map_or(0, seconds),
            Value::String(s) => s.parse::<i64>().map_or(0, seconds),
            _ => 0,
        }
    }

    /// The attached files (`file_ids` is comma-separated).
    pub(crate) fn file_ids(&self) -> Vec<proto::FileId> {
        self.file_ids
            .split(',')
            .filter(|s| !s.is_empty())
            .map(proto::FileId::from)
            .collect()
    }

    /// Whether the request names what an event needs.
    pub(crate) fn is_complete(&self) -> bool {
        !(self.post_id.is_empty() || self.channel_id.is_empty() || self.user_id.is_empty())
    }
}

#[tracing::instrument(
    parent = None,
    name = "ingress",
    skip_all,
    fields(
        otel.name = "ingress webhook",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/hooks/outgoing",
    )
)]
pub async fn outgoing_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let request: WebhookRequest = decode(&headers, &body)?;
    if !token_matches(
        &request.token,
        state.config.mattermost.webhook_token.expose(),
    ) {
        return Err(Error::Unauthorized);
    }
    if !request.is_complete() {
        return Err(Error::BadRequest(
            "post_id, channel_id and user_id are required".into(),
        ));
    }
    if request.user_id == state.bot.id {
        return Ok(Json(json!({})).into_response());
    }
    let create_at_ms = request.create_at_ms(is_json(&headers));
    let file_ids = request.file_ids();
    for file in &file_ids {
        file.check().map_err(Error::bad_id)?;
    }
    let post_id = PostId::parse(request.post_id).map_err(Error::bad_id)?;
    let channel = ChannelId::parse(request.channel_id).map_err(Error::bad_id)?;
    let user_id = UserId::parse(request.user_id).map_err(Error::bad_id)?;
    // Outgoing webhooks do not say whether the post is a reply: Mattermost does. The same
    // post may also come over the WebSocket, with the same dedupe id: both must name the
    // same thread, or whichever came first would decide.
    let root = match root_of(&state, &post_id).await {
        Ok(root) => root,
        Err(err) => {
            tracing::error!(error = %common::error_chain(&err), post_id = %post_id, "could not read the webhook's post");
            return Ok(webhook_failure());
        }
    };
    let thread = ThreadId::of_post(&post_id, root.as_ref());
    let event = ChatEvent {
        event_id: post_id.to_string(),
        thread: thread.clone(),
        channel,
        user: User {
            id: user_id,
            username: request.user_name,
        },
        received_at_ms: common::now_ms(),
        body: EventBody::Message(MessagePosted {
            post_id,
            root_id: root,
            text: request.text,
            file_ids,
            mentions_bot: true,
            channel_type: channel_type("O"),
            source: Source::OutgoingWebhook,
            create_at_ms,
        }),
    };
    // Mattermost does not read a webhook's status: a failure must be a visible reply.
    if let Err(err) = state.publisher.join_thread(&thread).await {
        tracing::error!(error = %common::error_chain(&err), "could not join the webhook's thread");
        return Ok(webhook_failure());
    }
    if let EventBody::Message(message) = &event.body {
        state
            .publisher
            .stage_files(&thread, &message.file_ids)
            .await;
    }
    if let Err(err) = state.publisher.publish(&event, "webhook").await {
        tracing::error!(error = %common::error_chain(&err), "could not publish the webhook's event");
        return Ok(webhook_failure());
    }
    // An empty object: no reply post from Mattermost; the worker answers in the thread.
    Ok(Json(json!({})).into_response())
}

#[derive(Debug, Deserialize)]
pub struct SlashRequest {
    #[serde(default)]
    pub(crate) token: String,
    #[serde(default)]
    pub(crate) team_id: String,
    #[serde(default)]
    pub(crate) channel_id: String,
    #[serde(default)]
    pub(crate) user_id: String,
    #[serde(default)]
    pub(crate) user_name: String,
    #[serde(default)]
    pub(crate) command: String,
    #[serde(default)]
    pub(crate) text: String,
    #[serde(default)]
    pub(crate) trigger_id: String,
    #[serde(default)]
    pub(crate) root_id: String,
    #[serde(default)]
    pub(crate) response_url: String,
}

/// What a slash command asks for, decided before anything is sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SlashPlan<'a> {
    /// No text, or `help`: the help text, to the user only.
    Help,
    /// A verb that only makes sense inside a session's thread, run outside one.
    NeedsThread { word: &'a str },
    /// Publish `text` (trimmed) to the thread: the one it was run in, or a new one.
    Send {
        text: &'a str,
        verb: Option<&'static commands::Verb>,
        in_thread: bool,
    },
}

impl SlashRequest {
    pub(crate) fn plan(&self) -> SlashPlan<'_> {
        let text = self.text.trim();
        let word = text.split_whitespace().next().unwrap_or("");
        let verb = commands::verb(word);
        if word.is_empty() || verb.is_some_and(|v| v.action == commands::Action::Help) {
            return SlashPlan::Help;
        }
        let in_thread = !self.root_id.is_empty();
        if verb.is_some_and(|v| v.in_thread) && !in_thread {
            return SlashPlan::NeedsThread { word };
        }
        SlashPlan::Send {
            text,
            verb,
            in_thread,
        }
    }
}

fn ephemeral(text: impl Into<String>) -> Response {
    Json(json!({ "response_type": "ephemeral", "text": text.into() })).into_response()
}

#[tracing::instrument(
    parent = None,
    name = "ingress",
    skip_all,
    fields(
        otel.name = "ingress slash",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/hooks/slash",
    )
)]
pub async fn slash_command(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let request: SlashRequest = decode(&headers, &body)?;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Token "))
        .unwrap_or(&request.token);
    if !token_matches(presented, state.config.mattermost.slash_token.expose()) {
        return Err(Error::Unauthorized);
    }
    let (text, verb, in_thread) = match request.plan() {
        SlashPlan::Help => return Ok(ephemeral(commands::help())),
        SlashPlan::NeedsThread { word } => {
            return Ok(ephemeral(format!(
                "`/claude {word}` works inside a session's thread: open the thread and run it there."
            )));
        }
        SlashPlan::Send {
            text,
            verb,
            in_thread,
        } => (text.to_owned(), verb, in_thread),
    };
    let channel = ChannelId::parse(request.channel_id.as_str()).map_err(Error::bad_id)?;
    let user_id = UserId::parse(request.user_id.as_str()).map_err(Error::bad_id)?;
    let thread = if in_thread {
        ThreadId::parse(request.root_id.as_str()).map_err(Error::bad_id)?
    } else {
        // A prompt outside a thread starts one: the bot posts the prompt as its root.
        let root = format!("@{} asked: {}", request.user_name, text);
        let pending = format!("ccfleet:slash:{}", request.trigger_id);
        let (post, _) = state
            .mattermost
            .create_post(&request.channel_id, "", &root, None, &[], &pending)
            .await
            .map_err(Error::Mattermost)?;
        ThreadId::parse(post.id).map_err(Error::bad_id)?
    };
    let event = ChatEvent {
        event_id: format!("slash:{}", request.trigger_id),
        thread: thread.clone(),
        channel,
        user: User {
            id: user_id,
            username: request.user_name.clone(),
        },
        received_at_ms: common::now_ms(),
        body: EventBody::SlashCommand(SlashCommand {
            command: request.command,
            text,
            trigger_id: request.trigger_id,
            team_id: request.team_id,
            root_id: Some(PostId::new(thread.to_string())),
            response_url: request.response_url,
        }),
    };
    state
        .publisher
        .join_thread(&thread)
        .await
        .map_err(Error::Publish)?;
    state
        .publisher
        .publish(&event, "slash")
        .await
        .map_err(Error::Publish)?;
    Ok(ephemeral(match verb.map(|v| v.action) {
        Some(commands::Action::Status) => "Looking up the session…".to_owned(),
        Some(commands::Action::Stop) => "Stopping the current turn…".to_owned(),
        _ if in_thread => "Sent to the session.".to_owned(),
        _ => "Started a Claude Code session in a new thread.".to_owned(),
    }))
}

#[derive(Debug, Deserialize)]
pub struct ActionRequest {
    #[serde(default)]
    pub(crate) user_id: String,
    #[serde(default)]
    pub(crate) user_name: String,
    #[serde(default)]
    pub(crate) channel_id: String,
    #[serde(default)]
    pub(crate) post_id: String,
    #[serde(default)]
    pub(crate) trigger_id: String,
    #[serde(default)]
    pub(crate) context: Value,
}

impl ActionRequest {
    /// The button's signed context: valid, unexpired at `now_s`, and for the channel the
    /// click came from.
    pub(crate) fn claims(&self, signer: &Signer, now_s: u64) -> Result<ActionClaims, Error> {
        let token = self
            .context
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let claims: ActionClaims = signer
            .verify(token, now_s)
            .map_err(|_| Error::Forbidden("this button is no longer valid"))?;
        if claims.channel != self.channel_id {
            return Err(Error::Forbidden("this button belongs to another channel"));
        }
        Ok(claims)
    }
}

#[tracing::instrument(
    parent = None,
    name = "ingress",
    skip_all,
    fields(
        otel.name = "ingress action",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/hooks/action",
    )
)]
pub async fn action(
    State(state): State<AppState>,
    Json(request): Json<ActionRequest>,
) -> Result<Response, Error> {
    let claims = request.claims(&state.signer, common::now_ms() / 1000)?;
    let trigger = if request.trigger_id.is_empty() {
        format!("{}:{}", request.user_id, common::now_ms())
    } else {
        request.trigger_id.clone()
    };
    let thread = ThreadId::parse(claims.thread.as_str()).map_err(Error::bad_id)?;
    let channel = ChannelId::parse(request.channel_id.as_str()).map_err(Error::bad_id)?;
    let user_id = UserId::parse(request.user_id.as_str()).map_err(Error::bad_id)?;
    let post_id = PostId::parse(request.post_id.as_str()).map_err(Error::bad_id)?;
    let event = ChatEvent {
        event_id: format!("action:{}:{}:{trigger}", request.post_id, claims.action),
        thread,
        channel,
        user: User {
            id: user_id,
            username: request.user_name,
        },
        received_at_ms: common::now_ms(),
        body: EventBody::ButtonAction(ButtonAction {
            post_id,
            action: claims.action,
            context_json: claims.data,
            trigger_id: (!request.trigger_id.is_empty()).then_some(request.trigger_id),
        }),
    };
    state
        .publisher
        .publish(&event, "action")
        .await
        .map_err(Error::Publish)?;
    Ok(Json(json!({})).into_response())
}

#[derive(Debug, Deserialize)]
pub struct DialogRequest {
    #[serde(default)]
    pub(crate) callback_id: String,
    #[serde(default)]
    pub(crate) state: String,
    #[serde(default)]
    pub(crate) user_id: String,
    #[serde(default)]
    pub(crate) channel_id: String,
    #[serde(default)]
    pub(crate) submission: Value,
    #[serde(default)]
    pub(crate) cancelled: bool,
}

impl DialogRequest {
    /// The dialog's signed state, valid and unexpired at `now_s`.
    pub(crate) fn claims(&self, signer: &Signer, now_s: u64) -> Result<ActionClaims, Error> {
        signer
            .verify::<DialogClaims>(&self.state, now_s)
            .map(|claims| claims.0)
            .map_err(|_| Error::Forbidden("this dialog is no longer valid"))
    }

    /// The submitted values as JSON text, as the worker reads them.
    pub(crate) fn submission_json(&self) -> String {
        self.submission.to_string()
    }
}

#[tracing::instrument(
    parent = None,
    name = "ingress",
    skip_all,
    fields(
        otel.name = "ingress dialog",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/hooks/dialog",
    )
)]
pub async fn dialog(
    State(state): State<AppState>,
    Json(request): Json<DialogRequest>,
) -> Result<Response, Error> {
    let claims = request.claims(&state.signer, common::now_ms() / 1000)?;
    let event = ChatEvent {
        event_id: format!(
            "dialog:{}:{}:{}",
            request.callback_id,
            request.user_id,
            common::now_ms()
        ),
        thread: ThreadId::parse(claims.thread.as_str()).map_err(Error::bad_id)?,
        channel: ChannelId::parse(request.channel_id.as_str()).map_err(Error::bad_id)?,
        user: User {
            id: UserId::parse(request.user_id.as_str()).map_err(Error::bad_id)?,
            username: String::new(),
        },
        received_at_ms: common::now_ms(),
        body: EventBody::DialogSubmission(DialogSubmission {
            submission_json: request.submission_json(),
            callback_id: request.callback_id,
            state: claims.data,
            cancelled: request.cancelled,
        }),
    };
    state
        .publisher
        .publish(&event, "dialog")
        .await
        .map_err(Error::Publish)?;
    Ok(Json(json!({})).into_response())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn webhook(content_type: &'static str, body: &str) -> WebhookRequest {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        decode(&headers, body.as_bytes()).unwrap()
    }

    /// Found while writing the `http_webhook` fuzz harness: a form's seconds times 1000 overflowed
    /// (a panic in debug builds, a wrapped time in release).
    #[test]
    fn a_timestamp_out_of_range_is_zero_not_a_panic() {
        let form = "application/x-www-form-urlencoded";
        assert_eq!(
            webhook(form, "timestamp=9223372036854775").create_at_ms(false),
            9_223_372_036_854_775_000
        );
        assert_eq!(
            webhook(form, "timestamp=9223372036854776").create_at_ms(false),
            0
        );
        let json = "application/json";
        let string = r#"{"timestamp":"-9223372036854775808"}"#;
        assert_eq!(webhook(json, string).create_at_ms(true), 0);
        let number = r#"{"timestamp":9223372036854775807}"#;
        assert_eq!(webhook(json, number).create_at_ms(true), i64::MAX);
        assert_eq!(webhook(json, number).create_at_ms(false), 0);
    }

    #[test]
    fn file_ids_are_comma_separated_and_never_empty() {
        let request = webhook("application/json", r#"{"file_ids":",a,,b,"}"#);
        assert_eq!(
            request.file_ids(),
            vec![proto::FileId::from("a"), proto::FileId::from("b")]
        );
    }
}
