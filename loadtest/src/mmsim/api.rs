//! REST v4 handlers: users, teams, channels, bots, tokens, posts, reactions, files, and the
//! admin calls that register integrations. Status codes and error ids follow the server.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::integrations;
use super::model::{
    Bot, Channel, ChannelMember, Command, DEFAULT_PER_PAGE, FileInfo, FileUploadResponse,
    MAX_PER_PAGE, OutgoingWebhook, Post, PostList, Reaction, StatusOk, Team, TeamMember, User,
    UserAccessToken, channel_type, new_id,
};
use super::server::{Auth, MAX_FILE_SIZE, Shared, json, parse, token_from};
use super::store::{
    ChannelAudience, ChannelRec, FileRec, NewPost, PostRec, Session, Store, TeamRec, UserRec,
    default_timezone, default_user_notify_props, forbidden, validate_message,
};
use super::ws::{Broadcast, Event};

fn ok_status() -> Response {
    json(
        StatusCode::OK,
        &StatusOk {
            status: "OK".into(),
            trigger_id: None,
        },
    )
}

fn resolve_me<'a>(auth: &'a Auth, user_id: &'a str) -> &'a str {
    if user_id == "me" {
        &auth.user_id
    } else {
        user_id
    }
}

fn valid_name(name: &str, min: usize, max: usize, extra: &[char]) -> bool {
    let n = name.chars().count();
    n >= min
        && n <= max
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c))
}

// ---- events -------------------------------------------------------------------------------

fn post_string(post: &Post) -> Value {
    Value::from(serde_json::to_string(&post.stripped()).unwrap_or_default())
}

/// `posted` to the channel's members, `mentions` computed per receiver.
pub(crate) fn publish_posted(
    sh: &Shared,
    post: &Post,
    audience: &ChannelAudience,
    sender: &str,
    mentioned: HashSet<String>,
) {
    let ch = &audience.channel;
    let mut data = Map::new();
    data.insert(
        "channel_display_name".into(),
        Value::from(ch.display_name.clone()),
    );
    data.insert("channel_name".into(), Value::from(ch.name.clone()));
    data.insert("channel_type".into(), Value::from(ch.channel_type.clone()));
    data.insert("post".into(), post_string(post));
    data.insert("sender_name".into(), Value::from(format!("@{sender}")));
    data.insert("set_online".into(), Value::from(true));
    data.insert("team_id".into(), Value::from(ch.team_id.clone()));
    if !post.metadata.files.is_empty() {
        data.insert("otherFile".into(), Value::from("true"));
        if post
            .metadata
            .files
            .iter()
            .any(|f| f.mime_type.starts_with("image/"))
        {
            data.insert("image".into(), Value::from("true"));
        }
    }
    sh.hub.publish(Event {
        name: "posted",
        data,
        broadcast: Broadcast {
            channel_id: ch.id.clone(),
            ..Broadcast::default()
        },
        recipients: audience.members.clone(),
        mentioned,
    });
}

/// `post_edited` / `post_deleted` to the channel's members.
pub(crate) fn publish_post_event(
    sh: &Shared,
    name: &'static str,
    post: &Post,
    audience: &ChannelAudience,
) {
    let mut data = Map::new();
    data.insert("post".into(), post_string(post));
    sh.hub.publish(Event {
        name,
        data,
        broadcast: Broadcast {
            channel_id: audience.channel.id.clone(),
            ..Broadcast::default()
        },
        recipients: audience.members.clone(),
        mentioned: HashSet::new(),
    });
}

/// An ephemeral post (`ephemeral_message`) to one user; it is never stored.
pub(crate) fn publish_ephemeral(sh: &Shared, user_id: &str, post: &Post) {
    let mut data = Map::new();
    data.insert("post".into(), post_string(post));
    sh.hub.publish(Event {
        name: "ephemeral_message",
        data,
        broadcast: Broadcast {
            user_id: user_id.to_owned(),
            channel_id: post.channel_id.clone(),
            ..Broadcast::default()
        },
        recipients: vec![user_id.to_owned()],
        mentioned: HashSet::new(),
    });
}

pub(crate) fn ephemeral_post(
    sh: &Shared,
    user_id: &str,
    channel_id: &str,
    root_id: &str,
    message: &str,
) -> Post {
    let now = sh.now();
    Post {
        id: new_id(),
        create_at: now,
        update_at: now,
        user_id: user_id.to_owned(),
        channel_id: channel_id.to_owned(),
        root_id: root_id.to_owned(),
        message: message.to_owned(),
        post_type: "system_ephemeral".into(),
        ..Post::default()
    }
}

fn publish_reaction(
    sh: &Shared,
    name: &'static str,
    reaction: &Reaction,
    audience: &ChannelAudience,
) {
    let mut data = Map::new();
    data.insert(
        "reaction".into(),
        Value::from(serde_json::to_string(reaction).unwrap_or_default()),
    );
    sh.hub.publish(Event {
        name,
        data,
        broadcast: Broadcast {
            channel_id: audience.channel.id.clone(),
            ..Broadcast::default()
        },
        recipients: audience.members.clone(),
        mentioned: HashSet::new(),
    });
}

/// Stores a post and announces it; the one path every post takes (REST, integrations, system
/// messages). Returns the post as clients see it.
pub(crate) fn create_and_publish(
    sh: &Arc<Shared>,
    np: NewPost,
    trigger_webhooks: bool,
) -> Result<Post, ApiError> {
    let now = sh.now();
    let (created, audience, sender, mentioned, hooks) = {
        let mut store = sh.write();
        let created = store.create_post(np, now)?;
        let audience = store.audience(&created.post.channel_id);
        let sender = store.username(&created.post.user_id);
        let mentioned = match &audience {
            Some(a) if !created.duplicate => store.mentions(&created.post, a),
            _ => HashSet::new(),
        };
        let hooks = match &audience {
            Some(a) if trigger_webhooks && !created.duplicate => {
                integrations::matching_hooks(&store, &created.post, &a.channel)
            }
            _ => Vec::new(),
        };
        (created, audience, sender, mentioned, hooks)
    };
    if created.duplicate {
        return Ok(created.post.stripped());
    }
    if let Some(audience) = &audience {
        publish_posted(sh, &created.post, audience, &sender, mentioned);
    }
    for dispatch in hooks {
        integrations::spawn_outgoing_webhook(sh, dispatch);
    }
    Ok(created.post.stripped())
}

// ---- users --------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct CreateUser {
    email: String,
    username: String,
    password: String,
    first_name: String,
    last_name: String,
    nickname: String,
    position: String,
    locale: String,
    props: Map<String, Value>,
}

pub(crate) async fn create_user(
    State(sh): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateUser = parse(&body, "user")?;
    let username = req.username.to_lowercase();
    if !valid_name(&username, 3, 22, &['.', '-', '_']) {
        return Err(ApiError::bad_request(
            "model.user.is_valid.username.app_error",
            "Username must begin with a letter, and contain between 3 to 22 lowercase characters made up of numbers, letters, and the symbols \".\", \"-\", and \"_\".",
        ));
    }
    if !req.email.contains('@') {
        return Err(ApiError::bad_request(
            "model.user.is_valid.email.app_error",
            "Invalid email.",
        ));
    }
    if req.password.is_empty() {
        return Err(ApiError::bad_request(
            "model.user.is_valid.pwd.app_error",
            "Your password must contain at least 5 characters.",
        ));
    }
    let caller = token_from(&headers, q.as_deref());
    let now = sh.now();
    let mut store = sh.write();
    let first = store.users.is_empty();
    if !first && !sh.options.open_server {
        let caller_id = caller
            .and_then(|t| store.sessions.get(&t).map(|s| s.user_id.clone()))
            .ok_or_else(|| {
                ApiError::forbidden(
                    "api.user.create_user.no_open_server",
                    "This server does not allow open signups. Please speak with your Administrator to receive an invitation.",
                )
            })?;
        if !store.is_admin(&caller_id) {
            return Err(forbidden());
        }
    }
    if store.usernames.contains_key(&username) {
        return Err(ApiError::bad_request(
            "app.user.save.username_exists.app_error",
            "An account with that username already exists.",
        ));
    }
    let email = req.email.to_lowercase();
    if store.users.values().any(|u| u.user.email == email) {
        return Err(ApiError::bad_request(
            "app.user.save.email_exists.app_error",
            "An account with that email already exists.",
        ));
    }
    let user = User {
        id: new_id(),
        create_at: now,
        update_at: now,
        username: username.clone(),
        email,
        nickname: req.nickname,
        first_name: req.first_name,
        last_name: req.last_name,
        position: req.position,
        // The first account of an empty server becomes its system admin.
        roles: if first {
            "system_admin system_user"
        } else {
            "system_user"
        }
        .into(),
        locale: if req.locale.is_empty() {
            "en".into()
        } else {
            req.locale
        },
        props: req.props,
        notify_props: default_user_notify_props(),
        timezone: default_timezone(),
        last_password_update: now,
        ..User::default()
    };
    store.usernames.insert(username, user.id.clone());
    store.users.insert(
        user.id.clone(),
        UserRec {
            user: user.clone(),
            password: req.password,
        },
    );
    Ok(json(StatusCode::CREATED, &user))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Login {
    login_id: String,
    password: String,
}

pub(crate) async fn login(
    State(sh): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: Login = parse(&body, "login_id")?;
    let invalid = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "api.user.login.invalid_credentials_email_username",
            "Enter a valid email or username and/or password.",
        )
    };
    let login = req.login_id.to_lowercase();
    let mut store = sh.write();
    let rec = store
        .users
        .values()
        .find(|u| u.user.username == login || u.user.email == login)
        .ok_or_else(invalid)?;
    if rec.password != req.password || rec.user.is_bot || rec.user.delete_at != 0 {
        return Err(invalid());
    }
    let user = rec.user.clone();
    let token = new_id();
    store.sessions.insert(
        token.clone(),
        Session {
            user_id: user.id.clone(),
            access_token_id: None,
        },
    );
    let mut resp = json(StatusCode::OK, &user);
    if let Ok(v) = HeaderValue::from_str(&token) {
        resp.headers_mut().insert("token", v);
    }
    Ok(resp)
}

pub(crate) async fn logout(
    State(sh): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    if let Some(token) = token_from(&headers, q.as_deref()) {
        let mut store = sh.write();
        if store
            .sessions
            .get(&token)
            .is_some_and(|s| s.access_token_id.is_none())
        {
            store.sessions.remove(&token);
        }
    }
    ok_status()
}

pub(crate) async fn get_user(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path(user_id): Path<String>,
) -> Result<Response, ApiError> {
    let store = sh.read();
    Ok(json(
        StatusCode::OK,
        store.user(resolve_me(&auth, &user_id))?,
    ))
}

pub(crate) async fn get_user_by_username(
    State(sh): State<Arc<Shared>>,
    _auth: Auth,
    Path(username): Path<String>,
) -> Result<Response, ApiError> {
    let store = sh.read();
    let id = store
        .usernames
        .get(&username.to_lowercase())
        .ok_or_else(|| ApiError::not_found("app.user.get_by_username.app_error", "Unable to find an existing account matching your username for this team. This team may require an invite from the team owner to join."))?;
    Ok(json(StatusCode::OK, store.user(id)?))
}

/// `POST /users/usernames`: the users with these names; names nobody has are left out.
pub(crate) async fn users_by_usernames(
    State(sh): State<Arc<Shared>>,
    _auth: Auth,
    body: Bytes,
) -> Result<Response, ApiError> {
    let names: Vec<String> = parse(&body, "usernames")?;
    let store = sh.read();
    let users: Vec<&User> = names
        .iter()
        .filter_map(|name| store.usernames.get(&name.to_lowercase()))
        .filter_map(|id| store.users.get(id).map(|r| &r.user))
        .collect();
    Ok(json(StatusCode::OK, &users))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PatchUser {
    username: Option<String>,
    nickname: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    position: Option<String>,
}

/// `PUT /users/{user_id}/patch`: the user themselves or a system admin
/// (`edit_other_users`) changes the given fields; a new username must be free and valid.
pub(crate) async fn patch_user(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path(user_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let patch: PatchUser = parse(&body, "user")?;
    let user_id = resolve_me(&auth, &user_id).to_owned();
    let now = sh.now();
    let mut store = sh.write();
    if user_id != auth.user_id && !store.is_admin(&auth.user_id) {
        return Err(forbidden());
    }
    let old = store.user(&user_id)?.username.clone();
    let new_name = match patch.username {
        Some(name) => {
            let name = name.to_lowercase();
            if !valid_name(&name, 3, 22, &['.', '-', '_']) {
                return Err(ApiError::bad_request(
                    "model.user.is_valid.username.app_error",
                    "Username must begin with a letter, and contain between 3 to 22 lowercase characters made up of numbers, letters, and the symbols \".\", \"-\", and \"_\".",
                ));
            }
            if name != old && store.usernames.contains_key(&name) {
                return Err(ApiError::bad_request(
                    "app.user.save.username_exists.app_error",
                    "An account with that username already exists.",
                ));
            }
            Some(name)
        }
        None => None,
    };
    if let Some(name) = &new_name {
        store.usernames.remove(&old);
        store.usernames.insert(name.clone(), user_id.clone());
    }
    let rec = store.users.get_mut(&user_id).ok_or_else(|| {
        ApiError::not_found("app.user.missing_account.const", "Unable to find the user.")
    })?;
    let user = &mut rec.user;
    if let Some(name) = new_name {
        user.username = name;
    }
    for (field, value) in [
        (&mut user.nickname, patch.nickname),
        (&mut user.first_name, patch.first_name),
        (&mut user.last_name, patch.last_name),
        (&mut user.position, patch.position),
    ] {
        if let Some(value) = value {
            *field = value;
        }
    }
    user.update_at = now;
    Ok(json(StatusCode::OK, &rec.user))
}

pub(crate) async fn users_by_ids(
    State(sh): State<Arc<Shared>>,
    _auth: Auth,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ids: Vec<String> = parse(&body, "user_ids")?;
    let store = sh.read();
    let users: Vec<&User> = ids
        .iter()
        .filter_map(|id| store.users.get(id).map(|r| &r.user))
        .collect();
    Ok(json(StatusCode::OK, &users))
}

pub(crate) async fn user_teams(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path(user_id): Path<String>,
) -> Result<Response, ApiError> {
    let user_id = resolve_me(&auth, &user_id);
    let store = sh.read();
    if user_id != auth.user_id && !store.is_admin(&auth.user_id) {
        return Err(forbidden());
    }
    let teams: Vec<&Team> = store
        .teams
        .values()
        .filter(|t| t.members.contains_key(user_id))
        .map(|t| &t.team)
        .collect();
    Ok(json(StatusCode::OK, &teams))
}

/// `GET /users/{user_id}/channels`: the channels of every team (and the direct and group
/// messages) the user is a member of; deleted ones only with `include_deleted`.
pub(crate) async fn user_channels(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path(user_id): Path<String>,
    Query(q): Query<UserChannelsQuery>,
) -> Result<Response, ApiError> {
    let user_id = resolve_me(&auth, &user_id);
    let store = sh.read();
    if user_id != auth.user_id && !store.is_admin(&auth.user_id) {
        return Err(forbidden());
    }
    let mut channels: Vec<&Channel> = store
        .channels
        .values()
        .filter(|c| c.members.contains_key(user_id))
        .filter(|c| {
            c.channel.delete_at == 0
                || (q.include_deleted.unwrap_or(false)
                    && c.channel.delete_at >= q.last_delete_at.unwrap_or(0))
        })
        .map(|c| &c.channel)
        .collect();
    channels.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(json(StatusCode::OK, &channels))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct UserChannelsQuery {
    include_deleted: Option<bool>,
    last_delete_at: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CreateToken {
    description: String,
}

pub(crate) async fn create_token(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path(user_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateToken = parse(&body, "description")?;
    if req.description.is_empty() {
        return Err(ApiError::invalid_param("description"));
    }
    let user_id = resolve_me(&auth, &user_id).to_owned();
    let mut store = sh.write();
    store.user(&user_id)?;
    let owns_bot = store
        .bots
        .get(&user_id)
        .is_some_and(|b| b.owner_id == auth.user_id);
    if user_id != auth.user_id && !owns_bot && !store.is_admin(&auth.user_id) {
        return Err(forbidden());
    }
    let token = UserAccessToken {
        id: new_id(),
        token: new_id(),
        user_id: user_id.clone(),
        description: req.description,
        is_active: true,
    };
    store.sessions.insert(
        token.token.clone(),
        Session {
            user_id,
            access_token_id: Some(token.id.clone()),
        },
    );
    store.access_tokens.insert(
        token.id.clone(),
        UserAccessToken {
            token: String::new(),
            ..token.clone()
        },
    );
    Ok(json(StatusCode::CREATED, &token))
}

// ---- teams and channels -------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct CreateTeam {
    name: String,
    display_name: String,
    #[serde(rename = "type")]
    team_type: String,
    description: String,
}

fn new_channel(
    team_id: &str,
    name: &str,
    display: &str,
    kind: &str,
    creator: &str,
    now: i64,
) -> Channel {
    Channel {
        id: new_id(),
        create_at: now,
        update_at: now,
        team_id: team_id.to_owned(),
        channel_type: kind.to_owned(),
        display_name: display.to_owned(),
        name: name.to_owned(),
        creator_id: creator.to_owned(),
        ..Channel::default()
    }
}

fn insert_channel(store: &mut Store, channel: Channel) {
    store.channels.insert(
        channel.id.clone(),
        ChannelRec {
            channel,
            members: HashMap::new(),
            posts: Vec::new(),
        },
    );
}

/// Channels every team member joins (`town-square`, `off-topic`).
const DEFAULT_CHANNELS: [(&str, &str); 2] =
    [("town-square", "Town Square"), ("off-topic", "Off-Topic")];

fn join_team(
    store: &mut Store,
    team_id: &str,
    user_id: &str,
    admin: bool,
    now: i64,
) -> Option<TeamMember> {
    let team = store.teams.get_mut(team_id)?;
    let member = team
        .members
        .entry(user_id.to_owned())
        .or_insert_with(|| TeamMember {
            team_id: team_id.to_owned(),
            user_id: user_id.to_owned(),
            roles: if admin {
                "team_user team_admin"
            } else {
                "team_user"
            }
            .into(),
            scheme_user: true,
            scheme_admin: admin,
            ..TeamMember::default()
        })
        .clone();
    let defaults: Vec<String> = store
        .channels
        .values()
        .filter(|c| {
            c.channel.team_id == team_id
                && DEFAULT_CHANNELS.iter().any(|(n, _)| *n == c.channel.name)
        })
        .map(|c| c.channel.id.clone())
        .collect();
    for ch in defaults {
        store.add_channel_member(&ch, user_id, now);
    }
    Some(member)
}

pub(crate) async fn create_team(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateTeam = parse(&body, "team")?;
    if !valid_name(&req.name, 2, 64, &['-']) {
        return Err(ApiError::bad_request(
            "model.team.is_valid.name.app_error",
            "Invalid name.",
        ));
    }
    if req.display_name.is_empty() {
        return Err(ApiError::bad_request(
            "model.team.is_valid.name.app_error",
            "Invalid name.",
        ));
    }
    if req.team_type != "O" && req.team_type != "I" {
        return Err(ApiError::bad_request(
            "model.team.is_valid.type.app_error",
            "Invalid type.",
        ));
    }
    let now = sh.now();
    let mut store = sh.write();
    if store.team_names.contains_key(&req.name) {
        return Err(ApiError::bad_request(
            "app.team.save.existing.app_error",
            "A team with that name already exists.",
        ));
    }
    let team = Team {
        id: new_id(),
        create_at: now,
        update_at: now,
        display_name: req.display_name,
        name: req.name.clone(),
        description: req.description,
        team_type: req.team_type,
        invite_id: new_id(),
        allow_open_invite: false,
        ..Team::default()
    };
    store.team_names.insert(req.name, team.id.clone());
    store.teams.insert(
        team.id.clone(),
        TeamRec {
            team: team.clone(),
            members: HashMap::new(),
        },
    );
    for (name, display) in DEFAULT_CHANNELS {
        let ch = new_channel(
            &team.id,
            name,
            display,
            channel_type::OPEN,
            &auth.user_id,
            now,
        );
        insert_channel(&mut store, ch);
    }
    join_team(&mut store, &team.id, &auth.user_id, true, now);
    Ok(json(StatusCode::CREATED, &team))
}

fn team_visible(store: &Store, user_id: &str, team: &TeamRec) -> Result<(), ApiError> {
    if team.members.contains_key(user_id) || store.is_admin(user_id) || team.team.allow_open_invite
    {
        Ok(())
    } else {
        Err(forbidden())
    }
}

pub(crate) async fn get_team(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path(team_id): Path<String>,
) -> Result<Response, ApiError> {
    let store = sh.read();
    let team = store.team(&team_id)?;
    team_visible(&store, &auth.user_id, team)?;
    Ok(json(StatusCode::OK, &team.team))
}

pub(crate) async fn get_team_by_name(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let store = sh.read();
    let id = store.team_names.get(&name).ok_or_else(|| {
        ApiError::not_found(
            "app.team.get_by_name.missing.app_error",
            "Unable to find the existing team.",
        )
    })?;
    let team = store.team(id)?;
    team_visible(&store, &auth.user_id, team)?;
    Ok(json(StatusCode::OK, &team.team))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AddTeamMember {
    team_id: String,
    user_id: String,
}

pub(crate) async fn add_team_member(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path(team_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: AddTeamMember = parse(&body, "team_member")?;
    if req.team_id != team_id {
        return Err(ApiError::invalid_param("team_id"));
    }
    let now = sh.now();
    let mut store = sh.write();
    let team = store.team(&team_id)?;
    if !team.members.contains_key(&auth.user_id) && !store.is_admin(&auth.user_id) {
        return Err(forbidden());
    }
    store.user(&req.user_id)?;
    let member = join_team(&mut store, &team_id, &req.user_id, false, now).ok_or_else(forbidden)?;
    Ok(json(StatusCode::CREATED, &member))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CreateChannel {
    team_id: String,
    name: String,
    display_name: String,
    purpose: String,
    header: String,
    #[serde(rename = "type")]
    channel_type: String,
}

pub(crate) async fn create_channel(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateChannel = parse(&body, "channel")?;
    if req.name.is_empty()
        || req.name.len() > 64
        || !req
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(ApiError::bad_request(
            "model.channel.is_valid.2_or_more.app_error",
            "Name must be 2 or more lowercase alphanumeric characters.",
        ));
    }
    if req.display_name.is_empty() {
        return Err(ApiError::bad_request(
            "model.channel.is_valid.display_name.app_error",
            "Invalid display name.",
        ));
    }
    if req.channel_type != channel_type::OPEN && req.channel_type != channel_type::PRIVATE {
        return Err(ApiError::bad_request(
            "model.channel.is_valid.type.app_error",
            "Invalid type.",
        ));
    }
    let now = sh.now();
    let mut store = sh.write();
    let team = store.team(&req.team_id).map_err(|_| forbidden())?;
    if !team.members.contains_key(&auth.user_id) && !store.is_admin(&auth.user_id) {
        return Err(forbidden());
    }
    if store
        .channels
        .values()
        .any(|c| c.channel.team_id == req.team_id && c.channel.name == req.name)
    {
        return Err(ApiError::bad_request(
            "store.sql_channel.save_channel.exists.app_error",
            "A channel with that name already exists on the same team.",
        ));
    }
    let mut ch = new_channel(
        &req.team_id,
        &req.name,
        &req.display_name,
        &req.channel_type,
        &auth.user_id,
        now,
    );
    ch.purpose = req.purpose;
    ch.header = req.header;
    let id = ch.id.clone();
    insert_channel(&mut store, ch.clone());
    if let Some(m) = store.add_channel_member(&id, &auth.user_id, now)
        && let Some(rec) = store.channels.get_mut(&id)
    {
        rec.members.insert(
            auth.user_id.clone(),
            ChannelMember {
                roles: "channel_user channel_admin".into(),
                scheme_admin: true,
                ..m
            },
        );
    }
    Ok(json(StatusCode::CREATED, &ch))
}

pub(crate) async fn create_direct_channel(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ids: Vec<String> = parse(&body, "user_ids")?;
    if ids.len() != 2 {
        return Err(ApiError::invalid_param("user_ids"));
    }
    let now = sh.now();
    let mut store = sh.write();
    if !ids.contains(&auth.user_id) && !store.is_admin(&auth.user_id) {
        return Err(forbidden());
    }
    for id in &ids {
        store.user(id).map_err(|_| {
            ApiError::bad_request(
                "api.channel.create_direct_channel.invalid_user.app_error",
                "Invalid user ID for direct channel creation.",
            )
        })?;
    }
    let mut sorted = ids.clone();
    sorted.sort();
    let name = format!("{}__{}", sorted[0], sorted[1]);
    if let Some(existing) = store
        .channels
        .values()
        .find(|c| c.channel.name == name && c.channel.channel_type == channel_type::DIRECT)
    {
        return Ok(json(StatusCode::CREATED, &existing.channel));
    }
    let ch = new_channel("", &name, "", channel_type::DIRECT, &auth.user_id, now);
    let id = ch.id.clone();
    insert_channel(&mut store, ch.clone());
    for user in &sorted {
        store.add_channel_member(&id, user, now);
    }
    Ok(json(StatusCode::CREATED, &ch))
}

pub(crate) async fn get_channel(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path(channel_id): Path<String>,
) -> Result<Response, ApiError> {
    let store = sh.read();
    let ch = store.readable_channel(&auth.user_id, &channel_id)?;
    Ok(json(StatusCode::OK, &ch.channel))
}

pub(crate) async fn get_channel_by_name(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path((team_id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let store = sh.read();
    let ch = store
        .channels
        .values()
        .find(|c| {
            c.channel.team_id == team_id && c.channel.name == name && c.channel.delete_at == 0
        })
        .ok_or_else(|| {
            ApiError::not_found(
                "app.channel.get_by_name.missing.app_error",
                "Channel does not exist.",
            )
        })?;
    if !store.can_read(&auth.user_id, ch) {
        return Err(forbidden());
    }
    Ok(json(StatusCode::OK, &ch.channel))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AddChannelMember {
    user_id: String,
}

pub(crate) async fn add_channel_member(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path(channel_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: AddChannelMember = parse(&body, "user_id")?;
    if req.user_id.is_empty() {
        return Err(ApiError::invalid_param("user_id"));
    }
    let now = sh.now();
    let (member, system_post) = {
        let mut store = sh.write();
        let ch = store.channel(&channel_id)?;
        if ch.channel.channel_type == channel_type::DIRECT
            || ch.channel.channel_type == channel_type::GROUP
        {
            return Err(ApiError::bad_request(
                "api.channel.add_user_to_channel.type.app_error",
                "Can not add user to this channel type.",
            ));
        }
        let caller_ok = ch.members.contains_key(&auth.user_id)
            || store.is_admin(&auth.user_id)
            || (ch.channel.channel_type == channel_type::OPEN
                && req.user_id == auth.user_id
                && store.can_read(&auth.user_id, ch));
        if !caller_ok {
            return Err(forbidden());
        }
        let already = ch.members.contains_key(&req.user_id);
        let team_id = ch.channel.team_id.clone();
        let target = store.user(&req.user_id)?.username.clone();
        if !store
            .teams
            .get(&team_id)
            .is_some_and(|t| t.members.contains_key(&req.user_id))
        {
            return Err(ApiError::forbidden(
                "api.channel.add_members.user_denied",
                "Channel membership denied to the following users because of group constraints.",
            ));
        }
        let member = store
            .add_channel_member(&channel_id, &req.user_id, now)
            .ok_or_else(forbidden)?;
        let adder = store.username(&auth.user_id);
        let system_post = (!already).then(|| {
            let mut props = Map::new();
            if req.user_id == auth.user_id {
                props.insert("username".into(), Value::from(target.clone()));
                NewPost {
                    user_id: req.user_id.clone(),
                    channel_id: channel_id.clone(),
                    message: format!("@{target} joined the channel."),
                    post_type: "system_join_channel".into(),
                    props,
                    ..NewPost::default()
                }
            } else {
                props.insert("addedUserId".into(), Value::from(req.user_id.clone()));
                props.insert("addedUsername".into(), Value::from(target.clone()));
                props.insert("userId".into(), Value::from(auth.user_id.clone()));
                props.insert("username".into(), Value::from(adder.clone()));
                NewPost {
                    user_id: auth.user_id.clone(),
                    channel_id: channel_id.clone(),
                    message: format!("@{target} added to the channel by @{adder}."),
                    post_type: "system_add_to_channel".into(),
                    props,
                    ..NewPost::default()
                }
            }
        });
        (member, system_post)
    };
    if let Some(np) = system_post {
        create_and_publish(&sh, np, false)?;
    }
    Ok(json(StatusCode::CREATED, &member))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct ChannelPostsQuery {
    page: Option<usize>,
    per_page: Option<usize>,
    since: Option<i64>,
    before: Option<String>,
    after: Option<String>,
    include_deleted: Option<bool>,
}

pub(crate) async fn channel_posts(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path(channel_id): Path<String>,
    Query(q): Query<ChannelPostsQuery>,
) -> Result<Response, ApiError> {
    let store = sh.read();
    let ch = store.readable_channel(&auth.user_id, &channel_id)?;
    let include_deleted = q.include_deleted.unwrap_or(false);
    // Newest first, as the server orders channel pages.
    let mut ids: Vec<&String> = ch
        .posts
        .iter()
        .rev()
        .filter(|id| {
            store
                .posts
                .get(*id)
                .is_some_and(|p| include_deleted || p.post.delete_at == 0)
        })
        .collect();
    if let Some(since) = q.since {
        ids.retain(|id| {
            store
                .posts
                .get(*id)
                .is_some_and(|p| p.post.update_at > since)
        });
    } else {
        if let Some(before) = q.before.as_ref().filter(|s| !s.is_empty())
            && let Some(pos) = ids.iter().position(|id| *id == before)
        {
            ids.drain(..=pos);
        }
        if let Some(after) = q.after.as_ref().filter(|s| !s.is_empty())
            && let Some(pos) = ids.iter().position(|id| *id == after)
        {
            ids.truncate(pos);
        }
        let per_page = q.per_page.unwrap_or(DEFAULT_PER_PAGE).min(MAX_PER_PAGE);
        let start = q.page.unwrap_or(0).saturating_mul(per_page);
        ids = ids.into_iter().skip(start).take(per_page).collect();
    }
    let list = post_list(&store, ids.into_iter());
    Ok(json(StatusCode::OK, &list))
}

fn post_list<'a>(store: &Store, ids: impl Iterator<Item = &'a String>) -> PostList {
    let mut list = PostList::default();
    for id in ids {
        if let Some(rec) = store.posts.get(id) {
            list.order.push(id.clone());
            list.posts.insert(id.clone(), store.post_view(rec));
        }
    }
    list
}

// ---- bots ---------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct CreateBot {
    username: String,
    display_name: String,
    description: String,
}

pub(crate) async fn create_bot(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateBot = parse(&body, "bot")?;
    let username = req.username.to_lowercase();
    if !valid_name(&username, 3, 22, &['.', '-', '_']) {
        return Err(ApiError::bad_request(
            "model.user.is_valid.username.app_error",
            "Invalid username.",
        ));
    }
    let now = sh.now();
    let mut store = sh.write();
    if !store.is_admin(&auth.user_id) {
        return Err(forbidden());
    }
    if store.usernames.contains_key(&username) {
        return Err(ApiError::bad_request(
            "app.user.save.username_exists.app_error",
            "An account with that username already exists.",
        ));
    }
    let user = User {
        id: new_id(),
        create_at: now,
        update_at: now,
        username: username.clone(),
        email: format!("{username}@localhost"),
        nickname: req.display_name.clone(),
        first_name: req.display_name.clone(),
        roles: "system_user".into(),
        locale: "en".into(),
        notify_props: default_user_notify_props(),
        timezone: default_timezone(),
        is_bot: true,
        bot_description: req.description.clone(),
        ..User::default()
    };
    let bot = Bot {
        user_id: user.id.clone(),
        username: username.clone(),
        display_name: req.display_name,
        description: req.description,
        owner_id: auth.user_id.clone(),
        create_at: now,
        update_at: now,
        delete_at: 0,
    };
    store.usernames.insert(username, user.id.clone());
    store.users.insert(
        user.id.clone(),
        UserRec {
            user,
            password: String::new(),
        },
    );
    store.bots.insert(bot.user_id.clone(), bot.clone());
    Ok(json(StatusCode::CREATED, &bot))
}

// ---- posts --------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct CreatePost {
    channel_id: String,
    message: String,
    root_id: String,
    file_ids: Vec<String>,
    props: Map<String, Value>,
    pending_post_id: String,
    metadata: Option<Map<String, Value>>,
}

pub(crate) async fn create_post(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreatePost = parse(&body, "post")?;
    if req.channel_id.is_empty() {
        return Err(ApiError::invalid_param("channel_id"));
    }
    {
        let store = sh.read();
        match store.channels.get(&req.channel_id) {
            Some(ch) if store.can_write(&auth.user_id, ch) => {}
            _ => return Err(forbidden()),
        }
    }
    let np = NewPost {
        user_id: auth.user_id.clone(),
        channel_id: req.channel_id,
        root_id: req.root_id,
        message: req.message,
        props: req.props,
        file_ids: req.file_ids,
        pending_post_id: req.pending_post_id,
        post_type: String::new(),
        priority: req.metadata.and_then(|mut m| m.remove("priority")),
    };
    let post = create_and_publish(&sh, np, true)?;
    let view = {
        let store = sh.read();
        store
            .posts
            .get(&post.id)
            .map_or(post, |r| store.post_view(r))
    };
    Ok(json(StatusCode::CREATED, &view))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct EphemeralReq {
    user_id: String,
    post: CreatePost,
}

pub(crate) async fn create_ephemeral_post(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: EphemeralReq = parse(&body, "post")?;
    if req.user_id.is_empty() || req.post.channel_id.is_empty() {
        return Err(ApiError::invalid_param("post"));
    }
    validate_message(&req.post.message)?;
    {
        let store = sh.read();
        let caller_is_bot = store
            .users
            .get(&auth.user_id)
            .is_some_and(|u| u.user.is_bot);
        if !caller_is_bot && !store.is_admin(&auth.user_id) {
            return Err(forbidden());
        }
        store
            .channel(&req.post.channel_id)
            .map_err(|_| forbidden())?;
    }
    let mut post = ephemeral_post(
        &sh,
        &auth.user_id,
        &req.post.channel_id,
        &req.post.root_id,
        &req.post.message,
    );
    post.props = req.post.props;
    publish_ephemeral(&sh, &req.user_id, &post);
    Ok(json(StatusCode::CREATED, &post.stripped()))
}

fn post_in_readable_channel<'a>(
    store: &'a Store,
    user_id: &str,
    post_id: &str,
) -> Result<&'a PostRec, ApiError> {
    let rec = store.post(post_id)?;
    store.readable_channel(user_id, &rec.post.channel_id)?;
    Ok(rec)
}

pub(crate) async fn get_post(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path(post_id): Path<String>,
) -> Result<Response, ApiError> {
    let store = sh.read();
    let rec = post_in_readable_channel(&store, &auth.user_id, &post_id)?;
    Ok(json(StatusCode::OK, &store.post_view(rec)))
}

pub(crate) async fn get_thread(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path(post_id): Path<String>,
) -> Result<Response, ApiError> {
    let store = sh.read();
    let rec = post_in_readable_channel(&store, &auth.user_id, &post_id)?;
    let root_id = if rec.post.root_id.is_empty() {
        rec.post.id.clone()
    } else {
        rec.post.root_id.clone()
    };
    let root = store.post(&root_id)?;
    let mut ids: Vec<&String> = root
        .replies
        .iter()
        .filter(|id| store.posts.get(*id).is_some_and(|p| p.post.delete_at == 0))
        .collect();
    ids.reverse();
    ids.push(&root.post.id);
    Ok(json(StatusCode::OK, &post_list(&store, ids.into_iter())))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PatchPost {
    message: Option<String>,
    props: Option<Map<String, Value>>,
    file_ids: Option<Vec<String>>,
    is_pinned: Option<bool>,
    has_reactions: Option<bool>,
}

/// Applies an edit by the author (or an admin) and announces `post_edited`.
fn edit_post(sh: &Shared, auth: &Auth, post_id: &str, patch: PatchPost) -> Result<Post, ApiError> {
    if let Some(m) = &patch.message {
        validate_message(m)?;
    }
    let now = sh.now();
    let (post, audience) = {
        let mut store = sh.write();
        let rec = store.post(post_id)?;
        if rec.post.user_id != auth.user_id && !store.is_admin(&auth.user_id) {
            return Err(forbidden());
        }
        let channel_id = rec.post.channel_id.clone();
        let Some(rec) = store.posts.get_mut(post_id) else {
            return Err(forbidden());
        };
        let p = &mut rec.post;
        if let Some(m) = patch.message
            && m != p.message
        {
            p.message = m;
            p.edit_at = now;
        }
        if let Some(props) = patch.props {
            p.props = props;
        }
        if let Some(ids) = patch.file_ids {
            p.file_ids = ids;
        }
        if let Some(pinned) = patch.is_pinned {
            p.is_pinned = pinned;
        }
        if let Some(r) = patch.has_reactions {
            p.has_reactions = r;
        }
        p.update_at = now;
        let rec = rec.clone();
        (store.post_view(&rec), store.audience(&channel_id))
    };
    if let Some(audience) = &audience {
        publish_post_event(sh, "post_edited", &post, audience);
    }
    Ok(post)
}

/// Applies an integration's `update` to a clicked post: message and props change; pinning and
/// reactions stay.
pub(crate) fn edit_post_as_integration(
    sh: &Shared,
    post_id: &str,
    message: String,
    props: Map<String, Value>,
) -> Result<Post, ApiError> {
    let owner = {
        let store = sh.read();
        store.post(post_id)?.post.user_id.clone()
    };
    let patch = PatchPost {
        message: Some(message),
        props: Some(props),
        ..PatchPost::default()
    };
    edit_post(sh, &Auth { user_id: owner }, post_id, patch)
}

pub(crate) async fn patch_post(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path(post_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let patch: PatchPost = parse(&body, "post")?;
    Ok(json(
        StatusCode::OK,
        &edit_post(&sh, &auth, &post_id, patch)?,
    ))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct UpdatePost {
    id: String,
    message: String,
    props: Option<Map<String, Value>>,
    file_ids: Option<Vec<String>>,
    is_pinned: Option<bool>,
    has_reactions: Option<bool>,
}

pub(crate) async fn update_post(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path(post_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: UpdatePost = parse(&body, "post")?;
    if req.id != post_id {
        return Err(ApiError::invalid_param("id"));
    }
    // An update replaces the post: omitted fields are blanked.
    let patch = PatchPost {
        message: Some(req.message),
        props: Some(req.props.unwrap_or_default()),
        file_ids: req.file_ids,
        is_pinned: req.is_pinned,
        has_reactions: req.has_reactions,
    };
    Ok(json(
        StatusCode::OK,
        &edit_post(&sh, &auth, &post_id, patch)?,
    ))
}

pub(crate) async fn delete_post(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path(post_id): Path<String>,
) -> Result<Response, ApiError> {
    let now = sh.now();
    let (post, audience) = {
        let mut store = sh.write();
        let rec = store.post(&post_id)?;
        if rec.post.user_id != auth.user_id && !store.is_admin(&auth.user_id) {
            return Err(forbidden());
        }
        let replies = rec.replies.clone();
        let channel_id = rec.post.channel_id.clone();
        for id in replies.iter().chain(std::iter::once(&post_id)) {
            if let Some(r) = store.posts.get_mut(id) {
                r.post.delete_at = now;
                r.post.update_at = now;
            }
        }
        let post = store
            .posts
            .get(&post_id)
            .map(|r| r.post.clone())
            .unwrap_or_default();
        (post, store.audience(&channel_id))
    };
    if let Some(audience) = &audience {
        publish_post_event(&sh, "post_deleted", &post, audience);
    }
    Ok(ok_status())
}

// ---- reactions ----------------------------------------------------------------------------

fn valid_emoji(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+'))
}

pub(crate) async fn create_reaction(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: Reaction = parse(&body, "reaction")?;
    if req.user_id != auth.user_id {
        return Err(ApiError::forbidden(
            "api.reaction.save_reaction.user_id.app_error",
            "You cannot save reaction for the other user.",
        ));
    }
    if req.post_id.is_empty() {
        return Err(ApiError::invalid_param("post_id"));
    }
    if !valid_emoji(&req.emoji_name) {
        return Err(ApiError::invalid_param("emoji_name"));
    }
    let now = sh.now();
    let (reaction, audience, fresh) = {
        let mut store = sh.write();
        let rec = store.post(&req.post_id).map_err(|_| forbidden())?;
        let channel_id = rec.post.channel_id.clone();
        if !store.can_write(&auth.user_id, store.channel(&channel_id)?) {
            return Err(forbidden());
        }
        let audience = store.audience(&channel_id);
        let Some(rec) = store.posts.get_mut(&req.post_id) else {
            return Err(forbidden());
        };
        if let Some(existing) = rec
            .reactions
            .iter()
            .find(|r| r.user_id == req.user_id && r.emoji_name == req.emoji_name)
        {
            (existing.clone(), audience, false)
        } else {
            let reaction = Reaction {
                user_id: req.user_id,
                post_id: req.post_id,
                emoji_name: req.emoji_name,
                create_at: now,
                update_at: now,
                channel_id,
                ..Reaction::default()
            };
            rec.reactions.push(reaction.clone());
            rec.post.has_reactions = true;
            rec.post.update_at = now;
            (reaction, audience, true)
        }
    };
    if fresh && let Some(a) = &audience {
        publish_reaction(&sh, "reaction_added", &reaction, a);
    }
    Ok(json(StatusCode::CREATED, &reaction))
}

pub(crate) async fn delete_reaction(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path((user_id, post_id, emoji)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let user_id = resolve_me(&auth, &user_id).to_owned();
    let now = sh.now();
    let (removed, audience) = {
        let mut store = sh.write();
        if user_id != auth.user_id && !store.is_admin(&auth.user_id) {
            return Err(forbidden());
        }
        let rec = store.post(&post_id).map_err(|_| forbidden())?;
        let channel_id = rec.post.channel_id.clone();
        if !store.can_write(&auth.user_id, store.channel(&channel_id)?) {
            return Err(forbidden());
        }
        let audience = store.audience(&channel_id);
        let Some(rec) = store.posts.get_mut(&post_id) else {
            return Err(forbidden());
        };
        let pos = rec
            .reactions
            .iter()
            .position(|r| r.user_id == user_id && r.emoji_name == emoji);
        let removed = pos.map(|i| rec.reactions.remove(i));
        if removed.is_some() {
            rec.post.has_reactions = !rec.reactions.is_empty();
            rec.post.update_at = now;
        }
        (removed, audience)
    };
    if let (Some(mut r), Some(a)) = (removed, &audience) {
        r.update_at = now;
        r.delete_at = now;
        publish_reaction(&sh, "reaction_removed", &r, a);
    }
    Ok(ok_status())
}

pub(crate) async fn post_reactions(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path(post_id): Path<String>,
) -> Result<Response, ApiError> {
    let store = sh.read();
    let rec = post_in_readable_channel(&store, &auth.user_id, &post_id)?;
    Ok(json(StatusCode::OK, &rec.reactions))
}

// ---- files --------------------------------------------------------------------------------

fn mime_for(ext: &str) -> &'static str {
    match ext {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "txt" | "log" => "text/plain",
        "md" => "text/markdown",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        _ => "application/octet-stream",
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "api.file.upload_file.too_large_detailed.app_error",
        "Unable to upload file. File is too large.",
    )
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct UploadQuery {
    channel_id: String,
    filename: String,
}

pub(crate) async fn upload_file(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut channel_id = q.channel_id;
    let mut client_ids = Vec::new();
    let mut files: Vec<(String, Bytes)> = Vec::new();
    if ct.starts_with("multipart/form-data") {
        let req = http::Request::builder()
            .header(header::CONTENT_TYPE, ct)
            .body(axum::body::Body::from(body))
            .map_err(|_| ApiError::invalid_param("multipart"))?;
        let mut mp = <Multipart as axum::extract::FromRequest<()>>::from_request(req, &())
            .await
            .map_err(|e| {
                ApiError::bad_request(
                    "api.file.upload_file.read_request.app_error",
                    "Unable to upload file(s). Error reading or parsing request data.",
                )
                .with_detail(e.to_string())
            })?;
        loop {
            let field = match mp.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    return Err(ApiError::bad_request(
                        "api.file.upload_file.read_request.app_error",
                        "Unable to upload file(s). Error reading or parsing request data.",
                    )
                    .with_detail(e.to_string()));
                }
            };
            let name = field.name().unwrap_or("").to_owned();
            let file_name = field.file_name().map(str::to_owned);
            let data = field.bytes().await.map_err(|_| too_large())?;
            match name.as_str() {
                "channel_id" => channel_id = String::from_utf8_lossy(&data).into_owned(),
                "client_ids" => client_ids.push(String::from_utf8_lossy(&data).into_owned()),
                "files" => files.push((file_name.unwrap_or_else(|| "file".into()), data)),
                _ => {}
            }
        }
    } else if !q.filename.is_empty() {
        files.push((q.filename, body));
    }
    if channel_id.is_empty() {
        return Err(ApiError::invalid_param("channel_id"));
    }
    if files.is_empty() {
        return Err(ApiError::bad_request(
            "api.file.upload_file.incorrect_number_of_files.app_error",
            "Unable to upload files. Incorrect number of files specified.",
        ));
    }
    if files.iter().any(|(_, d)| d.len() > MAX_FILE_SIZE) {
        return Err(too_large());
    }
    let now = sh.now();
    let mut store = sh.write();
    let ch = store.channel(&channel_id).map_err(|_| forbidden())?;
    if !store.can_write(&auth.user_id, ch) {
        return Err(forbidden());
    }
    let mut infos = Vec::new();
    for (name, data) in files {
        let extension = name
            .rsplit_once('.')
            .map(|(_, e)| e.to_lowercase())
            .unwrap_or_default();
        let info = FileInfo {
            id: new_id(),
            user_id: auth.user_id.clone(),
            channel_id: channel_id.clone(),
            create_at: now,
            update_at: now,
            mime_type: mime_for(&extension).into(),
            extension,
            name,
            size: i64::try_from(data.len()).unwrap_or(i64::MAX),
            ..FileInfo::default()
        };
        store.files.insert(
            info.id.clone(),
            FileRec {
                info: info.clone(),
                data: data.to_vec(),
            },
        );
        infos.push(info);
    }
    Ok(json(
        StatusCode::CREATED,
        &FileUploadResponse {
            file_infos: infos,
            client_ids,
        },
    ))
}

fn readable_file<'a>(
    store: &'a Store,
    user_id: &str,
    file_id: &str,
) -> Result<&'a FileRec, ApiError> {
    let f = store.files.get(file_id).ok_or_else(|| {
        ApiError::not_found(
            "app.file_info.get.app_error",
            "Unable to get the file info.",
        )
    })?;
    let ch = store.channel(&f.info.channel_id)?;
    if f.info.user_id == user_id || store.can_read(user_id, ch) {
        Ok(f)
    } else {
        Err(ApiError::forbidden(
            "api.context.permissions.app_error",
            "You do not have the appropriate permissions.",
        ))
    }
}

pub(crate) async fn get_file(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path(file_id): Path<String>,
) -> Result<Response, ApiError> {
    let store = sh.read();
    let f = readable_file(&store, &auth.user_id, &file_id)?;
    let disposition = format!("attachment;filename=\"{}\"", f.info.name.replace('"', ""));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, f.info.mime_type.clone()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        f.data.clone(),
    )
        .into_response())
}

pub(crate) async fn get_file_info(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    Path(file_id): Path<String>,
) -> Result<Response, ApiError> {
    let store = sh.read();
    Ok(json(
        StatusCode::OK,
        &readable_file(&store, &auth.user_id, &file_id)?.info,
    ))
}

// ---- integrations registration ------------------------------------------------------------

fn may_manage_integrations(store: &Store, user_id: &str, team_id: &str) -> bool {
    store.is_admin(user_id)
        || store
            .teams
            .get(team_id)
            .and_then(|t| t.members.get(user_id))
            .is_some_and(|m| m.scheme_admin)
}

fn valid_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://")) && url.len() > "https://".len()
}

pub(crate) async fn create_outgoing_hook(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: OutgoingWebhook = parse(&body, "outgoing_webhook")?;
    let now = sh.now();
    let mut store = sh.write();
    store
        .team(&req.team_id)
        .map_err(|_| ApiError::invalid_param("team_id"))?;
    if !may_manage_integrations(&store, &auth.user_id, &req.team_id) {
        return Err(forbidden());
    }
    if !req.channel_id.is_empty() {
        let ch = store.channel(&req.channel_id)?;
        if ch.channel.channel_type != channel_type::OPEN {
            return Err(ApiError::forbidden(
                "api.webhook.create_outgoing.not_open.app_error",
                "Outgoing webhooks can only be created for public channels.",
            ));
        }
        if ch.channel.team_id != req.team_id {
            return Err(ApiError::bad_request(
                "api.webhook.create_outgoing.permissions.app_error",
                "Invalid permissions to create outgoing webhook.",
            ));
        }
    }
    if req.trigger_words.iter().all(String::is_empty) && req.channel_id.is_empty() {
        return Err(ApiError::bad_request(
            "api.webhook.create_outgoing.triggers.app_error",
            "Either trigger_words or channel_id must be set.",
        ));
    }
    if req.callback_urls.is_empty() || !req.callback_urls.iter().all(|u| valid_url(u)) {
        return Err(ApiError::bad_request(
            "model.outgoing_hook.is_valid.callback.app_error",
            "Invalid callback urls.",
        ));
    }
    if req.trigger_when != 0 && req.trigger_when != 1 {
        return Err(ApiError::bad_request(
            "model.outgoing_hook.is_valid.trigger_when.app_error",
            "Invalid trigger when.",
        ));
    }
    let hook = OutgoingWebhook {
        id: new_id(),
        token: new_id(),
        create_at: now,
        update_at: now,
        delete_at: 0,
        creator_id: auth.user_id.clone(),
        trigger_words: req
            .trigger_words
            .into_iter()
            .filter(|w| !w.is_empty())
            .collect(),
        content_type: if req.content_type.is_empty() {
            "application/x-www-form-urlencoded".into()
        } else {
            req.content_type
        },
        ..req
    };
    store.hooks.insert(hook.id.clone(), hook.clone());
    Ok(json(StatusCode::CREATED, &hook))
}

pub(crate) async fn create_command(
    State(sh): State<Arc<Shared>>,
    auth: Auth,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: Command = parse(&body, "command")?;
    let now = sh.now();
    let mut store = sh.write();
    store
        .team(&req.team_id)
        .map_err(|_| ApiError::invalid_param("team_id"))?;
    if !may_manage_integrations(&store, &auth.user_id, &req.team_id) {
        return Err(forbidden());
    }
    let trigger = req.trigger.trim_start_matches('/').to_owned();
    if trigger.is_empty() || trigger.len() > 128 || trigger.contains(char::is_whitespace) {
        return Err(ApiError::bad_request(
            "model.command.is_valid.trigger.app_error",
            "Invalid trigger.",
        ));
    }
    if !valid_url(&req.url) {
        return Err(ApiError::bad_request(
            "model.command.is_valid.url.app_error",
            "Invalid URL.",
        ));
    }
    let method = req.method.to_uppercase();
    if method != "P" && method != "G" {
        return Err(ApiError::bad_request(
            "model.command.is_valid.method.app_error",
            "Invalid Method.",
        ));
    }
    if store
        .commands
        .values()
        .any(|c| c.team_id == req.team_id && c.trigger == trigger && c.delete_at == 0)
    {
        return Err(ApiError::bad_request(
            "api.command.duplicate_trigger.app_error",
            "This trigger word is already in use. Please choose another word.",
        ));
    }
    let cmd = Command {
        id: new_id(),
        token: new_id(),
        create_at: now,
        update_at: now,
        delete_at: 0,
        creator_id: auth.user_id.clone(),
        trigger,
        method,
        ..req
    };
    store.commands.insert(cmd.id.clone(), cmd.clone());
    Ok(json(StatusCode::CREATED, &cmd))
}
