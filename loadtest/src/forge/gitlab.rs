//! A double of the GitLab REST API v4 for the calls the fleet makes: the project (by
//! numeric id or URL-encoded path), a branch, a commit, and merge requests (list by
//! source branch and state, create, get, update). Answers carry the fields GitLab
//! documents for them; errors are GitLab's (`401 Unauthorized`, `404 Project Not Found`,
//! `409` for a second open merge request from the same branch).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{CommitInfo, Review, Shared, iso_from_unix, now_iso, presented_token};

/// Every route served, as recorded in [`super::Forge::routes_seen`].
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v4/projects/{id}"),
    ("GET", "/api/v4/projects/{id}/repository/branches/{branch}"),
    ("GET", "/api/v4/projects/{id}/repository/commits/{sha}"),
    ("GET", "/api/v4/projects/{id}/merge_requests"),
    ("POST", "/api/v4/projects/{id}/merge_requests"),
    ("GET", "/api/v4/projects/{id}/merge_requests/{iid}"),
    ("PUT", "/api/v4/projects/{id}/merge_requests/{iid}"),
];

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v4/projects/{id}", get(project))
        .route(
            "/api/v4/projects/{id}/repository/branches/{branch}",
            get(branch),
        )
        .route(
            "/api/v4/projects/{id}/repository/commits/{sha}",
            get(commit),
        )
        .route(
            "/api/v4/projects/{id}/merge_requests",
            get(list_mrs).post(create_mr),
        )
        .route(
            "/api/v4/projects/{id}/merge_requests/{iid}",
            get(get_mr).put(update_mr),
        )
}

fn error(status: StatusCode, message: Value) -> Response {
    (status, axum::Json(json!({ "message": message }))).into_response()
}

/// Why a request was not let in.
enum Denied {
    Unauthorized,
    NotFound,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Unauthorized => error(StatusCode::UNAUTHORIZED, json!("401 Unauthorized")),
            Denied::NotFound => error(StatusCode::NOT_FOUND, json!("404 Project Not Found")),
        }
    }
}

/// The project a request names, after checking its token.
fn authorize(shared: &Shared, headers: &HeaderMap, id: &str) -> Result<(u64, String), Denied> {
    if presented_token(headers).as_deref() != Some(shared.options.token.as_str()) {
        return Err(Denied::Unauthorized);
    }
    shared.resolve(id).ok_or(Denied::NotFound)
}

fn web_base(headers: &HeaderMap) -> String {
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

fn project_json(shared: &Shared, headers: &HeaderMap, id: u64, path: &str) -> Value {
    let base = web_base(headers);
    let (namespace, name) = path.rsplit_once('/').unwrap_or(("", path));
    json!({
        "id": id,
        "name": name,
        "path": name,
        "name_with_namespace": path.replace('/', " / "),
        "path_with_namespace": path,
        "description": null,
        "default_branch": shared.default_branch(path),
        "visibility": "private",
        "web_url": format!("{base}/{path}"),
        "http_url_to_repo": format!("{base}/{path}.git"),
        "ssh_url_to_repo": format!("git@localhost:{path}.git"),
        "namespace": {
            "id": id,
            "name": namespace,
            "path": namespace,
            "kind": "group",
            "full_path": namespace,
        },
        "created_at": "2026-01-01T00:00:00.000Z",
        "last_activity_at": now_iso(),
        "archived": false,
        "empty_repo": false,
    })
}

async fn project(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    match authorize(&shared, &headers, &id) {
        Ok((id, path)) => axum::Json(project_json(&shared, &headers, id, &path)).into_response(),
        Err(r) => r.into_response(),
    }
}

fn commit_json(base: &str, path: &str, c: &CommitInfo) -> Value {
    json!({
        "id": c.sha,
        "short_id": &c.sha[..8.min(c.sha.len())],
        "title": c.title,
        "message": c.message,
        "author_name": c.author_name,
        "author_email": c.author_email,
        "authored_date": iso_from_unix(c.author_time, 0),
        "committer_name": c.committer_name,
        "committer_email": c.committer_email,
        "committed_date": iso_from_unix(c.committer_time, 0),
        "created_at": iso_from_unix(c.committer_time, 0),
        "parent_ids": c.parents,
        "web_url": format!("{base}/{path}/-/commit/{}", c.sha),
    })
}

async fn branch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((id, name)): Path<(String, String)>,
) -> Response {
    let (_, path) = match authorize(&shared, &headers, &id) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let Some(commit) = shared
        .branch_head(&path, &name)
        .and_then(|sha| shared.commit(&path, &sha))
    else {
        return error(StatusCode::NOT_FOUND, json!("404 Branch Not Found"));
    };
    let base = web_base(&headers);
    let protected = shared.protected(&path).contains(&name);
    axum::Json(json!({
        "name": name,
        "merged": false,
        "protected": protected,
        "default": shared.default_branch(&path) == name,
        "developers_can_push": !protected,
        "developers_can_merge": !protected,
        "can_push": !protected,
        "web_url": format!("{base}/{path}/-/tree/{name}"),
        "commit": commit_json(&base, &path, &commit),
    }))
    .into_response()
}

async fn commit(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((id, sha)): Path<(String, String)>,
) -> Response {
    let (_, path) = match authorize(&shared, &headers, &id) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    match shared.commit(&path, &sha) {
        Some(c) => axum::Json(commit_json(&web_base(&headers), &path, &c)).into_response(),
        None => error(StatusCode::NOT_FOUND, json!("404 Commit Not Found")),
    }
}

fn mr_json(shared: &Shared, headers: &HeaderMap, project_id: u64, r: &Review) -> Value {
    let base = web_base(headers);
    json!({
        "id": r.id,
        "iid": r.number,
        "project_id": project_id,
        "title": r.title,
        "description": r.description,
        "state": if r.open { "opened" } else { "closed" },
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "target_branch": r.target_branch,
        "source_branch": r.source_branch,
        "source_project_id": project_id,
        "target_project_id": project_id,
        "author": { "id": 1, "username": "ccfleet", "name": "ccfleet", "state": "active" },
        "draft": false,
        "work_in_progress": false,
        "merge_status": "can_be_merged",
        "detailed_merge_status": "mergeable",
        "sha": shared.branch_head(&r.repo, &r.source_branch),
        "references": { "short": format!("!{}", r.number), "full": format!("{}!{}", r.repo, r.number) },
        "web_url": format!("{base}/{}/-/merge_requests/{}", r.repo, r.number),
    })
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    source_branch: Option<String>,
    target_branch: Option<String>,
}

async fn list_mrs(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let (pid, path) = match authorize(&shared, &headers, &id) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let reviews = shared.lock().reviews.clone();
    let list: Vec<Value> = reviews
        .iter()
        .rev()
        .filter(|r| r.repo == path)
        .filter(|r| match q.state.as_deref() {
            None | Some("all") => true,
            Some("opened") => r.open,
            Some("closed") => !r.open,
            Some(_) => false,
        })
        .filter(|r| {
            q.source_branch
                .as_ref()
                .is_none_or(|b| *b == r.source_branch)
        })
        .filter(|r| {
            q.target_branch
                .as_ref()
                .is_none_or(|b| *b == r.target_branch)
        })
        .map(|r| mr_json(&shared, &headers, pid, r))
        .collect();
    let total = list.len().to_string();
    (
        [
            ("x-page", "1".to_owned()),
            ("x-per-page", "20".to_owned()),
            ("x-total", total),
            ("x-total-pages", "1".to_owned()),
        ],
        axum::Json(Value::Array(list)),
    )
        .into_response()
}

/// A request's fields, sent as JSON or as a form (python-gitlab and curl both occur).
fn fields(headers: &HeaderMap, body: &Bytes) -> serde_json::Map<String, Value> {
    let json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if json {
        serde_json::from_slice::<serde_json::Map<String, Value>>(body).unwrap_or_default()
    } else {
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect()
    }
}

fn text(fields: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    fields.get(key).and_then(Value::as_str).map(str::to_owned)
}

async fn create_mr(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (pid, path) = match authorize(&shared, &headers, &id) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let f = fields(&headers, &body);
    let (Some(source), Some(target), Some(title)) = (
        text(&f, "source_branch"),
        text(&f, "target_branch"),
        text(&f, "title"),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            json!("source_branch, target_branch, title are missing"),
        );
    };
    if shared.branch_head(&path, &source).is_none() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!([format!("Source branch \"{source}\" does not exist")]),
        );
    }
    if shared.branch_head(&path, &target).is_none() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!([format!("Target branch \"{target}\" does not exist")]),
        );
    }
    if source == target {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!(["You can't use same project/branch for source and target"]),
        );
    }
    let mut data = shared.lock();
    if let Some(open) = data.reviews.iter().find(|r| {
        r.repo == path && r.open && r.source_branch == source && r.target_branch == target
    }) {
        return error(
            StatusCode::CONFLICT,
            json!([format!(
                "Another open merge request already exists for this source branch: !{}",
                open.number
            )]),
        );
    }
    data.next_review_id += 1;
    let number = data.reviews.iter().filter(|r| r.repo == path).count() as u64 + 1;
    let now = now_iso();
    let review = Review {
        number,
        id: data.next_review_id,
        repo: path,
        source_branch: source,
        target_branch: target,
        title,
        description: text(&f, "description").unwrap_or_default(),
        open: true,
        created_at: now.clone(),
        updated_at: now,
    };
    data.reviews.push(review.clone());
    drop(data);
    (
        StatusCode::CREATED,
        axum::Json(mr_json(&shared, &headers, pid, &review)),
    )
        .into_response()
}

async fn get_mr(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((id, iid)): Path<(String, u64)>,
) -> Response {
    let (pid, path) = match authorize(&shared, &headers, &id) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let found = shared
        .lock()
        .reviews
        .iter()
        .find(|r| r.repo == path && r.number == iid)
        .cloned();
    match found {
        Some(r) => axum::Json(mr_json(&shared, &headers, pid, &r)).into_response(),
        None => error(StatusCode::NOT_FOUND, json!("404 Not found")),
    }
}

async fn update_mr(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((id, iid)): Path<(String, u64)>,
    body: Bytes,
) -> Response {
    let (pid, path) = match authorize(&shared, &headers, &id) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let f = fields(&headers, &body);
    let mut data = shared.lock();
    let Some(r) = data
        .reviews
        .iter_mut()
        .find(|r| r.repo == path && r.number == iid)
    else {
        return error(StatusCode::NOT_FOUND, json!("404 Not found"));
    };
    if let Some(title) = text(&f, "title") {
        r.title = title;
    }
    if let Some(description) = text(&f, "description") {
        r.description = description;
    }
    match text(&f, "state_event").as_deref() {
        Some("close") => r.open = false,
        Some("reopen") => r.open = true,
        _ => {}
    }
    r.updated_at = now_iso();
    let r = r.clone();
    drop(data);
    axum::Json(mr_json(&shared, &headers, pid, &r)).into_response()
}
