//! Calls from the server to integrations, as the real server makes them: outgoing webhooks,
//! slash commands and their `response_url`, interactive button/menu actions, dialogs.
//!
//! Outgoing webhooks run in tracked background tasks (the server fires them asynchronously
//! after the post is saved); commands, actions and dialog submissions are answered inline
//! because the client waits for them.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::api::{create_and_publish, edit_post_as_integration, ephemeral_post, publish_ephemeral};
use super::error::ApiError;
use super::model::{Channel, CommandResponse, OutgoingWebhook, Post, StatusOk, new_id};
use super::server::{Auth, Shared, json, parse};
use super::store::{CommandWebhook, NewPost, Store, Trigger, forbidden, split_message};
use super::ws::{Broadcast, Event};

/// Largest integration answer read (`MaxIntegrationResponseSize`).
const MAX_RESPONSE: usize = 1024 * 1024;
/// Uses of one `response_url` (`CommandWebhook().TryUse(hook.Id, 5)`).
const COMMAND_WEBHOOK_USES: u32 = 5;
/// Lifetime of a `response_url` (`CommandWebhookLifetime`).
const COMMAND_WEBHOOK_LIFETIME_MS: i64 = 30 * 60 * 1000;

/// An outgoing webhook that matched a post, with what its payload needs.
pub(crate) struct HookDispatch {
    hook: OutgoingWebhook,
    post: Post,
    channel: Channel,
    team_domain: String,
    user_name: String,
    trigger_word: String,
}

/// Hooks a REST-created post fires: public channels only; first word against trigger words.
pub(crate) fn matching_hooks(store: &Store, post: &Post, channel: &Channel) -> Vec<HookDispatch> {
    if channel.channel_type != "O" || post.post_type.starts_with("system_") {
        return Vec::new();
    }
    let first = post.message.split_whitespace().next().unwrap_or("");
    let team_domain = store
        .teams
        .get(&channel.team_id)
        .map(|t| t.team.name.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for hook in store.hooks.values() {
        if hook.delete_at != 0 || hook.team_id != channel.team_id {
            continue;
        }
        if !hook.channel_id.is_empty() && hook.channel_id != channel.id {
            continue;
        }
        let trigger_word = if hook.trigger_words.is_empty() {
            String::new()
        } else {
            let hit = hook.trigger_words.iter().find(|w| {
                if hook.trigger_when == 0 {
                    first == w.as_str()
                } else {
                    first.starts_with(w.as_str())
                }
            });
            match hit {
                Some(w) => w.clone(),
                None => continue,
            }
        };
        out.push(HookDispatch {
            hook: hook.clone(),
            post: post.clone(),
            channel: channel.clone(),
            team_domain: team_domain.clone(),
            user_name: store.username(&post.user_id),
            trigger_word,
        });
    }
    out
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OutgoingWebhookResponse {
    text: Option<String>,
    response_type: String,
    props: Map<String, Value>,
    attachments: Vec<Value>,
    #[serde(rename = "type")]
    post_type: String,
}

/// Fires one matched hook at each of its callback URLs, in parallel.
pub(crate) fn spawn_outgoing_webhook(sh: &Arc<Shared>, d: HookDispatch) {
    let d = Arc::new(d);
    for url in d.hook.callback_urls.clone() {
        let sh2 = sh.clone();
        let d = d.clone();
        let cancel = sh.shutdown.clone();
        sh.tasks.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = call_outgoing_webhook(&sh2, &d, &url) => {}
            }
        });
    }
}

async fn call_outgoing_webhook(sh: &Arc<Shared>, d: &HookDispatch, url: &str) {
    let json_body = d.hook.content_type == "application/json";
    let file_ids = d.post.file_ids.join(",");
    let mut req = sh
        .http
        .post(url)
        .timeout(sh.options.integration_timeout)
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, "Go 1.1 package http");
    if json_body {
        req = req.json(&json!({
            "token": d.hook.token,
            "team_id": d.hook.team_id,
            "team_domain": d.team_domain,
            "channel_id": d.channel.id,
            "channel_name": d.channel.name,
            "timestamp": d.post.create_at,
            "user_id": d.post.user_id,
            "user_name": d.user_name,
            "post_id": d.post.id,
            "text": d.post.message,
            "trigger_word": d.trigger_word,
            "file_ids": file_ids,
        }));
    } else {
        let form = [
            ("token", d.hook.token.clone()),
            ("team_id", d.hook.team_id.clone()),
            ("team_domain", d.team_domain.clone()),
            ("channel_id", d.channel.id.clone()),
            ("channel_name", d.channel.name.clone()),
            // The form encoding carries seconds, the JSON one milliseconds (`ToFormValues`).
            ("timestamp", (d.post.create_at / 1000).to_string()),
            ("user_id", d.post.user_id.clone()),
            ("user_name", d.user_name.clone()),
            ("post_id", d.post.id.clone()),
            ("text", d.post.message.clone()),
            ("trigger_word", d.trigger_word.clone()),
            ("file_ids", file_ids),
        ];
        req = req.form(&form);
    }
    let (status, body) = match send(req).await {
        Ok(x) => x,
        Err(e) => {
            sh.log_integration(json!({"kind": "outgoing_webhook", "url": url, "error": e}));
            return;
        }
    };
    // The status is not checked and the body is JSON whatever its Content-Type.
    let mut entry = json!({"kind": "outgoing_webhook", "url": url, "status": status});
    if body.is_empty() {
        sh.log_integration(entry);
        return;
    }
    let resp: OutgoingWebhookResponse = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            entry["error"] = Value::from(format!("invalid JSON: {e}"));
            sh.log_integration(entry);
            return;
        }
    };
    if resp.text.is_none() && resp.attachments.is_empty() {
        sh.log_integration(entry);
        return;
    }
    let root_id = if resp.response_type == "comment" {
        // The triggering post's id even when it is itself a reply: the server then fails
        // the reply with api.post.create_post.root_id.app_error.
        d.post.id.clone()
    } else {
        String::new()
    };
    let mut props = resp.props;
    props.insert("from_webhook".into(), Value::from("true"));
    props.insert(
        "webhook_display_name".into(),
        Value::from(d.hook.display_name.clone()),
    );
    props.remove("override_username");
    props.remove("override_icon_url");
    let mut post_type = if resp.post_type.starts_with("system_") {
        String::new()
    } else {
        resp.post_type
    };
    if !resp.attachments.is_empty() {
        props.insert("attachments".into(), Value::Array(resp.attachments));
        post_type = "slack_attachment".into();
    }
    let text = slack_links_to_markdown(&resp.text.unwrap_or_default());
    let mut created = Vec::new();
    for part in split_message(&text) {
        let np = NewPost {
            user_id: d.hook.creator_id.clone(),
            channel_id: d.channel.id.clone(),
            root_id: root_id.clone(),
            message: part,
            props: props.clone(),
            post_type: post_type.clone(),
            ..NewPost::default()
        };
        match create_and_publish(sh, np, false) {
            Ok(p) => created.push(Value::from(p.id)),
            Err(e) => {
                entry["error"] = Value::from(e.id);
                break;
            }
        }
    }
    entry["created_posts"] = Value::Array(created);
    sh.log_integration(entry);
}

/// Sends a request and reads at most `MAX_RESPONSE` bytes of the answer.
async fn send(req: reqwest::RequestBuilder) -> Result<(u16, Bytes), String> {
    let mut resp = req.send().await.map_err(|e| error_chain(&e))?;
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        let room = MAX_RESPONSE.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_RESPONSE {
            break;
        }
    }
    Ok((status, Bytes::from(body)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Slack-style `<url|label>` links become markdown links, as the server converts them.
pub(crate) fn slack_links_to_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        match tail.find('>') {
            Some(end) => {
                let inner = &tail[1..end];
                match inner.split_once('|') {
                    Some((url, label)) if url.contains("://") => {
                        out.push_str(&format!("[{label}]({url})"));
                    }
                    _ if inner.contains("://") && !inner.contains(' ') => out.push_str(inner),
                    _ => out.push_str(&tail[..=end]),
                }
                rest = &tail[end + 1..];
            }
            None => {
                out.push_str(tail);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

// ---- trigger ids --------------------------------------------------------------------------

/// A trigger id shaped like the server's: base64 of `clientTriggerId:userId:millis:signature`.
/// The simulator remembers it instead of signing it.
fn new_trigger_id(store: &mut Store, user_id: &str, now: i64) -> String {
    let sig: String = (0..3).map(|_| new_id()).collect();
    let id = STANDARD.encode(format!("{}:{user_id}:{now}:{sig}", new_id()));
    store.triggers.insert(
        id.clone(),
        Trigger {
            user_id: user_id.to_owned(),
            create_at: now,
        },
    );
    id
}

fn verify_trigger_id(sh: &Shared, store: &Store, trigger_id: &str) -> Result<String, ApiError> {
    let t = store.triggers.get(trigger_id).ok_or_else(|| {
        ApiError::bad_request(
            "interactive_message.decode_trigger_id.signature_failed",
            "Signature verification failed of the trigger ID for interactive dialog.",
        )
    })?;
    let timeout = i64::try_from(sh.options.integration_timeout.as_millis()).unwrap_or(i64::MAX);
    if sh.now() - t.create_at > timeout {
        return Err(ApiError::bad_request(
            "interactive_message.decode_trigger_id.expired",
            "Trigger ID for interactive dialog is expired.",
        ));
    }
    Ok(t.user_id.clone())
}

// ---- slash commands -----------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct ExecuteCommand {
    channel_id: String,
    command: String,
    root_id: String,
    parent_id: String,
    team_id: String,
}

/// Where a command's replies go.
#[derive(Clone)]
struct ReplyTarget {
    user_id: String,
    channel_id: String,
    root_id: String,
}

pub(crate) async fn execute_command(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ExecuteCommand = parse(&body, "command_args")?;
    if req.channel_id.is_empty() || !req.command.starts_with('/') {
        return Err(ApiError::invalid_param("command"));
    }
    let (trigger, text) = match req.command[1..].split_once(char::is_whitespace) {
        Some((t, rest)) => (t.to_owned(), rest.trim().to_owned()),
        None => (req.command[1..].to_owned(), String::new()),
    };
    let root_id = if req.root_id.is_empty() {
        req.parent_id
    } else {
        req.root_id
    };
    let now = sh.now();
    let (cmd, form, target) = {
        let mut store = sh.write();
        let ch = store.channel(&req.channel_id).map_err(|_| forbidden())?;
        if !store.can_write(&auth.user_id, ch) {
            return Err(forbidden());
        }
        let channel = ch.channel.clone();
        let team_id = if channel.team_id.is_empty() {
            req.team_id
        } else {
            channel.team_id.clone()
        };
        let cmd = store
            .commands
            .values()
            .find(|c| c.team_id == team_id && c.trigger == trigger && c.delete_at == 0)
            .cloned()
            .ok_or_else(|| {
                ApiError::not_found(
                    "api.command.execute_command.not_found.app_error",
                    &format!("Command with a trigger of '{trigger}' not found."),
                )
            })?;
        let team_domain = store
            .teams
            .get(&team_id)
            .map(|t| t.team.name.clone())
            .unwrap_or_default();
        let user_name = store.username(&auth.user_id);
        let hook_id = new_id();
        store.command_webhooks.insert(
            hook_id.clone(),
            CommandWebhook {
                command_id: cmd.id.clone(),
                user_id: auth.user_id.clone(),
                channel_id: channel.id.clone(),
                root_id: root_id.clone(),
                create_at: now,
                use_count: 0,
            },
        );
        let trigger_id = new_trigger_id(&mut store, &auth.user_id, now);
        let mut form = vec![
            ("token", cmd.token.clone()),
            ("team_id", team_id),
            ("team_domain", team_domain),
            ("channel_id", channel.id.clone()),
            ("channel_name", channel.name.clone()),
            ("user_id", auth.user_id.clone()),
            ("user_name", user_name),
            ("command", format!("/{trigger}")),
            ("text", text.clone()),
            (
                "response_url",
                format!("{}/hooks/commands/{hook_id}", sh.site_url),
            ),
            ("trigger_id", trigger_id),
        ];
        if !root_id.is_empty() {
            form.push(("root_id", root_id.clone()));
        }
        for word in text.split_whitespace() {
            if let Some(name) = word.strip_prefix('@')
                && let Some(uid) = store.usernames.get(&name.to_lowercase())
            {
                form.push(("user_mentions", name.to_lowercase()));
                form.push(("user_mentions_ids", uid.clone()));
            }
            if let Some(name) = word.strip_prefix('~')
                && let Some(c) = store.channels.values().find(|c| {
                    c.channel.name == name
                        && c.channel.channel_type == "O"
                        && c.channel.team_id == channel.team_id
                })
            {
                form.push(("channel_mentions", name.to_owned()));
                form.push(("channel_mentions_ids", c.channel.id.clone()));
            }
        }
        let target = ReplyTarget {
            user_id: auth.user_id.clone(),
            channel_id: channel.id,
            root_id,
        };
        (cmd, form, target)
    };
    let mut http_req = if cmd.method == "G" {
        sh.http.get(&cmd.url).query(&form)
    } else {
        sh.http.post(&cmd.url).form(&form)
    };
    http_req = http_req
        .timeout(sh.options.integration_timeout)
        .header(header::ACCEPT, "application/json")
        .header(header::AUTHORIZATION, format!("Token {}", cmd.token))
        .header(header::USER_AGENT, "Mattermost-Bot/1.1");
    let result = send_with_headers(http_req).await;
    let (status, ct, body) = result.map_err(|e| {
        sh.log_integration(json!({"kind": "slash_command", "url": cmd.url, "error": e}));
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api.command.execute_command.failed.app_error",
            &format!("Command with a trigger of '{trigger}' failed."),
        )
        .with_detail(e)
    })?;
    sh.log_integration(json!({"kind": "slash_command", "url": cmd.url, "status": status}));
    if status != 200 {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api.command.execute_command.failed_resp.app_error",
            &format!("Command with a trigger of '{trigger}' returned response {status}."),
        ));
    }
    let resp = command_response(&ct, &body).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api.command.execute_command.failed_empty.app_error",
            &format!("Command with a trigger of '{trigger}' returned an empty response."),
        )
    })?;
    handle_command_response(&sh, &target, &resp)?;
    Ok(json(StatusCode::OK, &resp))
}

async fn send_with_headers(req: reqwest::RequestBuilder) -> Result<(u16, String, Bytes), String> {
    let resp = req.send().await.map_err(|e| error_chain(&e))?;
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| error_chain(&e))?;
    Ok((status, ct, body.slice(..body.len().min(MAX_RESPONSE))))
}

/// JSON when declared so, otherwise the whole body is the text (`CommandResponseFromHTTPBody`).
fn command_response(content_type: &str, body: &[u8]) -> Option<CommandResponse> {
    if content_type.starts_with("application/json") {
        serde_json::from_slice(body).ok()
    } else {
        let text = String::from_utf8_lossy(body).into_owned();
        (!text.trim().is_empty()).then(|| CommandResponse {
            text,
            ..CommandResponse::default()
        })
    }
}

fn handle_command_response(
    sh: &Arc<Shared>,
    target: &ReplyTarget,
    resp: &CommandResponse,
) -> Result<(), ApiError> {
    for r in std::iter::once(resp).chain(resp.extra_responses.iter()) {
        let mut channel_id = target.channel_id.clone();
        if !r.channel_id.is_empty() && r.channel_id != target.channel_id {
            let store = sh.read();
            let ch = store.channel(&r.channel_id).map_err(|_| forbidden())?;
            if !ch.members.contains_key(&target.user_id) {
                return Err(forbidden());
            }
            channel_id = r.channel_id.clone();
        }
        let text = if r.skip_slack_parsing {
            r.text.clone()
        } else {
            slack_links_to_markdown(&r.text)
        };
        let mut props = r.props.clone();
        let mut post_type = if r.post_type.starts_with("system_") {
            String::new()
        } else {
            r.post_type.clone()
        };
        if !r.attachments.is_empty() {
            props.insert("attachments".into(), Value::Array(r.attachments.clone()));
            post_type = "slack_attachment".into();
        }
        if r.response_type == "in_channel" {
            // Custom commands are bot-like, so their posts are marked as webhook posts.
            props.insert("from_webhook".into(), Value::from("true"));
            let np = NewPost {
                user_id: target.user_id.clone(),
                channel_id,
                root_id: target.root_id.clone(),
                message: text,
                props,
                post_type,
                ..NewPost::default()
            };
            create_and_publish(sh, np, false)?;
        } else if !text.is_empty() || !r.attachments.is_empty() {
            let mut post = ephemeral_post(sh, &target.user_id, &channel_id, &target.root_id, &text);
            post.props = props;
            publish_ephemeral(sh, &target.user_id, &post);
        }
    }
    Ok(())
}

/// `POST /hooks/commands/{id}`: a command's `response_url`; the id is the secret.
pub(crate) async fn command_webhook(
    State(sh): State<Arc<Shared>>,
    Path(hook_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let now = sh.now();
    let target = {
        let mut store = sh.write();
        let invalid =
            || ApiError::bad_request("web.command_webhook.invalid.app_error", "Invalid webhook.");
        let hook = store
            .command_webhooks
            .get_mut(&hook_id)
            .ok_or_else(invalid)?;
        if now - hook.create_at > COMMAND_WEBHOOK_LIFETIME_MS {
            return Err(invalid());
        }
        if hook.use_count >= COMMAND_WEBHOOK_USES {
            return Err(ApiError::bad_request(
                "app.command_webhook.try_use.invalid",
                "Invalid webhook.",
            ));
        }
        hook.use_count += 1;
        ReplyTarget {
            user_id: hook.user_id.clone(),
            channel_id: hook.channel_id.clone(),
            root_id: hook.root_id.clone(),
        }
    };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let resp = command_response(ct, &body).ok_or_else(|| {
        ApiError::bad_request(
            "web.command_webhook.parse.app_error",
            "Unable to parse incoming data.",
        )
    })?;
    handle_command_response(&sh, &target, &resp)?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], "ok").into_response())
}

// ---- interactive actions ------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct DoAction {
    selected_option: String,
    cookie: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ActionResponse {
    update: Option<Post>,
    ephemeral_text: String,
}

/// Keys of the clicked post's props that survive an `update` (`PostActionRetainPropKeys`).
const RETAINED_PROP_KEYS: [&str; 3] = ["from_webhook", "override_username", "override_icon_url"];

/// What an integration's failure looks like to the clicking client.
fn upstream_error(status: u16, what: &str) -> ApiError {
    let code = match status {
        429 => StatusCode::TOO_MANY_REQUESTS,
        503 => StatusCode::SERVICE_UNAVAILABLE,
        500..=599 => StatusCode::BAD_GATEWAY,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(code, what, "Action integration error.").with_detail(format!("status={status}"))
}

pub(crate) async fn do_post_action(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path((post_id, action_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: DoAction = if body.is_empty() {
        DoAction::default()
    } else {
        parse(&body, "post_action")?
    };
    let _ = req.cookie;
    let now = sh.now();
    let (url, payload, post, trigger_id) = {
        let mut store = sh.write();
        let rec = store.post(&post_id)?;
        let ch = store.readable_channel(&auth.user_id, &rec.post.channel_id)?;
        let channel = ch.channel.clone();
        let post = rec.post.clone();
        let action = post
            .actions()
            .into_iter()
            .find(|a| a.get("id").and_then(Value::as_str) == Some(action_id.as_str()))
            .cloned()
            .ok_or_else(|| {
                ApiError::not_found(
                    "api.post.do_action.action_id.app_error",
                    "Invalid action id.",
                )
            })?;
        let integration = action.get("integration").cloned().unwrap_or(Value::Null);
        let url = integration
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let mut context = integration
            .get("context")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let action_type = action
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("button")
            .to_owned();
        let data_source = action
            .get("data_source")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if action_type == "select" {
            context.insert("selected_option".into(), Value::from(req.selected_option));
        }
        let team_domain = store
            .teams
            .get(&channel.team_id)
            .map(|t| t.team.name.clone())
            .unwrap_or_default();
        let trigger_id = new_trigger_id(&mut store, &auth.user_id, now);
        let payload = json!({
            "user_id": auth.user_id,
            "user_name": store.username(&auth.user_id),
            "channel_id": channel.id,
            "channel_name": channel.name,
            "team_id": channel.team_id,
            "team_domain": team_domain,
            "post_id": post.id,
            "trigger_id": trigger_id,
            "type": action_type,
            "data_source": data_source,
            "context": context,
        });
        (url, payload, post, trigger_id)
    };
    if url.is_empty() {
        return Err(ApiError::bad_request(
            "api.post.do_action.action_integration.app_error",
            "Action integration error.",
        ));
    }
    let http_req = sh
        .http
        .post(&url)
        .timeout(sh.options.integration_timeout)
        .header(header::ACCEPT, "application/json")
        .json(&payload);
    let (status, _, body) = send_with_headers(http_req).await.map_err(|e| {
        sh.log_integration(json!({"kind": "action", "url": url, "error": e}));
        ApiError::bad_request(
            "api.post.do_action.action_integration.app_error",
            "Action integration error.",
        )
        .with_detail(e)
    })?;
    sh.log_integration(json!({"kind": "action", "url": url, "status": status}));
    if status != 200 {
        return Err(upstream_error(
            status,
            "api.post.do_action.action_integration.app_error",
        ));
    }
    let resp: ActionResponse = if body.is_empty() {
        ActionResponse::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "api.post.do_action.action_integration.app_error",
                "Action integration error.",
            )
            .with_detail(e.to_string())
        })?
    };
    if let Some(update) = resp.update {
        let props = if update.props.is_empty() && !body_has_props(&body) {
            post.props.clone()
        } else {
            let mut props = update.props;
            for key in RETAINED_PROP_KEYS {
                match post.props.get(key) {
                    Some(v) => {
                        props.insert(key.into(), v.clone());
                    }
                    None => {
                        props.remove(key);
                    }
                }
            }
            props
        };
        edit_post_as_integration(&sh, &post.id, update.message, props)?;
    }
    if !resp.ephemeral_text.is_empty() {
        let eph = ephemeral_post(
            &sh,
            &auth.user_id,
            &post.channel_id,
            &post.root_id,
            &resp.ephemeral_text,
        );
        publish_ephemeral(&sh, &auth.user_id, &eph);
    }
    Ok(json(
        StatusCode::OK,
        &StatusOk {
            status: "OK".into(),
            trigger_id: Some(trigger_id),
        },
    ))
}

/// Whether `update.props` was given at all (`props: null` keeps the original props).
fn body_has_props(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("update").and_then(|u| u.get("props")).cloned())
        .is_some_and(|p| !p.is_null())
}

// ---- dialogs ------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct OpenDialog {
    trigger_id: String,
    url: String,
    dialog: Map<String, Value>,
}

pub(crate) async fn open_dialog(
    State(sh): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: OpenDialog = parse(&body, "dialog")?;
    if req.url.is_empty() {
        return Err(ApiError::invalid_param("url"));
    }
    if req
        .dialog
        .get("title")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(ApiError::bad_request(
            "interactive_message.generate_trigger_id.dialog.title",
            "Invalid dialog title.",
        ));
    }
    let user_id = {
        let store = sh.read();
        verify_trigger_id(&sh, &store, &req.trigger_id)?
    };
    let mut data = Map::new();
    let raw: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    data.insert("dialog".into(), Value::from(raw.to_string()));
    sh.hub.publish(Event {
        name: "open_dialog",
        data,
        broadcast: Broadcast {
            user_id: user_id.clone(),
            ..Broadcast::default()
        },
        recipients: vec![user_id],
        mentioned: Default::default(),
    });
    Ok(json(
        StatusCode::OK,
        &StatusOk {
            status: "OK".into(),
            trigger_id: None,
        },
    ))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SubmitDialog {
    url: String,
    channel_id: String,
    callback_id: String,
    state: String,
    submission: Map<String, Value>,
    cancelled: bool,
    file_ids: Option<Vec<String>>,
}

pub(crate) async fn submit_dialog(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: SubmitDialog = parse(&body, "dialog")?;
    if req.url.is_empty() {
        return Err(ApiError::invalid_param("url"));
    }
    let team_id = {
        let store = sh.read();
        let ch = store.readable_channel(&auth.user_id, &req.channel_id)?;
        ch.channel.team_id.clone()
    };
    let mut payload = json!({
        "type": "dialog_submission",
        "callback_id": req.callback_id,
        "state": req.state,
        "user_id": auth.user_id,
        "channel_id": req.channel_id,
        "team_id": team_id,
        "submission": req.submission,
        "cancelled": req.cancelled,
    });
    if let Some(ids) = req.file_ids {
        payload["file_ids"] = json!(ids);
    }
    let http_req = sh
        .http
        .post(&req.url)
        .timeout(sh.options.integration_timeout)
        .header(header::ACCEPT, "application/json")
        .json(&payload);
    let (status, _, body) = send_with_headers(http_req).await.map_err(|e| {
        sh.log_integration(json!({"kind": "dialog_submission", "url": req.url, "error": e}));
        ApiError::bad_request(
            "api.dialog.submit.action_integration.app_error",
            "Dialog integration error.",
        )
        .with_detail(e)
    })?;
    sh.log_integration(json!({"kind": "dialog_submission", "url": req.url, "status": status}));
    if !(200..300).contains(&status) {
        return Err(upstream_error(
            status,
            "api.dialog.submit.action_integration.app_error",
        ));
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) if !m.is_empty() => Ok(json(StatusCode::OK, &m)),
        _ => Ok(json(
            StatusCode::OK,
            &StatusOk {
                status: "OK".into(),
                trigger_id: None,
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_links() {
        assert_eq!(
            slack_links_to_markdown("see <https://x.y/a|the doc> and <https://z>"),
            "see [the doc](https://x.y/a) and https://z"
        );
        assert_eq!(slack_links_to_markdown("a < b > c"), "a < b > c");
    }

    #[test]
    fn command_bodies() {
        let r = command_response("text/plain", b"hello");
        assert_eq!(r.map(|r| r.text), Some("hello".to_owned()));
        assert!(command_response("text/plain", b"  ").is_none());
        let r = command_response(
            "application/json",
            br#"{"response_type":"in_channel","text":"x"}"#,
        );
        assert_eq!(r.map(|r| r.response_type), Some("in_channel".to_owned()));
    }
}
