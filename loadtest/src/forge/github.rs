//! A double of the GitHub REST API (GitHub Enterprise Server's layout, under `/api/v3`)
//! for the calls the fleet makes: the repository, a branch, a commit, and pull requests
//! (list by head and state, create, get, update). Answers carry the fields GitHub
//! documents, including the API `url`s clients follow; errors are GitHub's (`401 Bad
//! credentials`, `404 Not Found`, `422 Validation Failed` for a second open pull request
//! from the same head).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{CommitInfo, Review, Shared, iso_from_unix, now_iso, presented_token};

/// Every route served, as recorded in [`super::Forge::routes_seen`].
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v3/repos/{owner}/{repo}"),
    ("GET", "/api/v3/repos/{owner}/{repo}/branches/{*branch}"),
    ("GET", "/api/v3/repos/{owner}/{repo}/commits/{sha}"),
    ("GET", "/api/v3/repos/{owner}/{repo}/pulls"),
    ("POST", "/api/v3/repos/{owner}/{repo}/pulls"),
    ("GET", "/api/v3/repos/{owner}/{repo}/pulls/{number}"),
    ("PATCH", "/api/v3/repos/{owner}/{repo}/pulls/{number}"),
];

const DOCS: &str = "https://docs.github.com/rest";

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v3/repos/{owner}/{repo}", get(repository))
        .route(
            "/api/v3/repos/{owner}/{repo}/branches/{*branch}",
            get(branch),
        )
        .route("/api/v3/repos/{owner}/{repo}/commits/{sha}", get(commit))
        .route(
            "/api/v3/repos/{owner}/{repo}/pulls",
            get(list_pulls).post(create_pull),
        )
        .route(
            "/api/v3/repos/{owner}/{repo}/pulls/{number}",
            get(get_pull).patch(update_pull),
        )
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "message": message,
            "documentation_url": DOCS,
            "status": status.as_u16().to_string(),
        })),
    )
        .into_response()
}

/// Why a request was not let in.
enum Denied {
    Unauthorized,
    NotFound,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Unauthorized => error(StatusCode::UNAUTHORIZED, "Bad credentials"),
            Denied::NotFound => error(StatusCode::NOT_FOUND, "Not Found"),
        }
    }
}

/// The repository a request names (`owner/repo`), after checking its token.
fn authorize(
    shared: &Shared,
    headers: &HeaderMap,
    owner: &str,
    repo: &str,
) -> Result<(u64, String), Denied> {
    if presented_token(headers).as_deref() != Some(shared.options.token.as_str()) {
        return Err(Denied::Unauthorized);
    }
    shared
        .resolve(&format!("{owner}/{repo}"))
        .ok_or(Denied::NotFound)
}

struct Urls {
    web: String,
    api: String,
}

fn urls(headers: &HeaderMap) -> Urls {
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    Urls {
        web: format!("http://{host}"),
        api: format!("http://{host}/api/v3"),
    }
}

fn user_json(u: &Urls, login: &str) -> Value {
    json!({
        "login": login,
        "id": 1,
        "node_id": "MDQ6VXNlcjE=",
        "type": "User",
        "site_admin": false,
        "url": format!("{}/users/{login}", u.api),
        "html_url": format!("{}/{login}", u.web),
    })
}

fn repo_json(shared: &Shared, u: &Urls, id: u64, path: &str) -> Value {
    let (owner, name) = path.split_once('/').unwrap_or(("", path));
    json!({
        "id": id,
        "node_id": format!("R_{id}"),
        "name": name,
        "full_name": path,
        "owner": user_json(u, owner),
        "private": true,
        "visibility": "private",
        "fork": false,
        "archived": false,
        "disabled": false,
        "default_branch": shared.default_branch(path),
        "url": format!("{}/repos/{path}", u.api),
        "html_url": format!("{}/{path}", u.web),
        "clone_url": format!("{}/{path}.git", u.web),
        "git_url": format!("git://localhost/{path}.git"),
        "ssh_url": format!("git@localhost:{path}.git"),
        "pulls_url": format!("{}/repos/{path}/pulls{{/number}}", u.api),
        "commits_url": format!("{}/repos/{path}/commits{{/sha}}", u.api),
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": now_iso(),
        "pushed_at": now_iso(),
        "permissions": { "admin": false, "maintain": false, "push": true, "triage": true, "pull": true },
    })
}

async fn repository(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((owner, repo)): Path<(String, String)>,
) -> Response {
    match authorize(&shared, &headers, &owner, &repo) {
        Ok((id, path)) => {
            axum::Json(repo_json(&shared, &urls(&headers), id, &path)).into_response()
        }
        Err(r) => r.into_response(),
    }
}

fn commit_json(u: &Urls, path: &str, c: &CommitInfo) -> Value {
    let who = |name: &str, email: &str, t: i64| json!({ "name": name, "email": email, "date": iso_from_unix(t, 0).replace(".000Z", "Z") });
    json!({
        "sha": c.sha,
        "node_id": format!("C_{}", c.sha),
        "url": format!("{}/repos/{path}/commits/{}", u.api, c.sha),
        "html_url": format!("{}/{path}/commit/{}", u.web, c.sha),
        "commit": {
            "url": format!("{}/repos/{path}/git/commits/{}", u.api, c.sha),
            "message": c.message,
            "author": who(&c.author_name, &c.author_email, c.author_time),
            "committer": who(&c.committer_name, &c.committer_email, c.committer_time),
            "comment_count": 0,
        },
        "author": null,
        "committer": null,
        "parents": c.parents.iter().map(|p| json!({
            "sha": p,
            "url": format!("{}/repos/{path}/commits/{p}", u.api),
            "html_url": format!("{}/{path}/commit/{p}", u.web),
        })).collect::<Vec<_>>(),
    })
}

async fn branch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((owner, repo, name)): Path<(String, String, String)>,
) -> Response {
    let (_, path) = match authorize(&shared, &headers, &owner, &repo) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let Some(c) = shared
        .branch_head(&path, &name)
        .and_then(|sha| shared.commit(&path, &sha))
    else {
        return error(StatusCode::NOT_FOUND, "Branch not found");
    };
    let u = urls(&headers);
    axum::Json(json!({
        "name": name,
        "commit": commit_json(&u, &path, &c),
        "protected": shared.protected(&path).contains(&name),
        "_links": {
            "self": format!("{}/repos/{path}/branches/{name}", u.api),
            "html": format!("{}/{path}/tree/{name}", u.web),
        },
    }))
    .into_response()
}

async fn commit(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((owner, repo, sha)): Path<(String, String, String)>,
) -> Response {
    let (_, path) = match authorize(&shared, &headers, &owner, &repo) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    match shared.commit(&path, &sha) {
        Some(c) => axum::Json(commit_json(&urls(&headers), &path, &c)).into_response(),
        None => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("No commit found for SHA: {sha}"),
        ),
    }
}

fn pull_json(shared: &Shared, u: &Urls, repo_id: u64, r: &Review) -> Value {
    let path = &r.repo;
    let owner = path.split_once('/').map_or(path.as_str(), |(o, _)| o);
    let repo = repo_json(shared, u, repo_id, path);
    let side = |branch: &str| {
        json!({
            "label": format!("{owner}:{branch}"),
            "ref": branch,
            "sha": shared.branch_head(path, branch),
            "user": user_json(u, owner),
            "repo": repo,
        })
    };
    json!({
        "id": r.id,
        "node_id": format!("PR_{}", r.id),
        "number": r.number,
        "state": if r.open { "open" } else { "closed" },
        "locked": false,
        "title": r.title,
        "body": r.description,
        "user": user_json(u, "ccfleet"),
        "created_at": r.created_at.replace(".000Z", "Z"),
        "updated_at": r.updated_at.replace(".000Z", "Z"),
        "closed_at": null,
        "merged_at": null,
        "merged": false,
        "draft": false,
        "head": side(&r.source_branch),
        "base": side(&r.target_branch),
        "url": format!("{}/repos/{path}/pulls/{}", u.api, r.number),
        "html_url": format!("{}/{path}/pull/{}", u.web, r.number),
        "issue_url": format!("{}/repos/{path}/issues/{}", u.api, r.number),
        "commits_url": format!("{}/repos/{path}/pulls/{}/commits", u.api, r.number),
    })
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    head: Option<String>,
    base: Option<String>,
}

async fn list_pulls(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((owner, repo)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Response {
    let (id, path) = match authorize(&shared, &headers, &owner, &repo) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let u = urls(&headers);
    let reviews = shared.lock().reviews.clone();
    // `head` is `user:branch`; GitHub ignores a head without the user part.
    let head = q
        .head
        .as_deref()
        .and_then(|h| h.split_once(':'))
        .map(|(user, branch)| (user.to_owned(), branch.to_owned()));
    let list: Vec<Value> = reviews
        .iter()
        .rev()
        .filter(|r| r.repo == path)
        .filter(|r| match q.state.as_deref() {
            None | Some("open") => r.open,
            Some("closed") => !r.open,
            Some("all") => true,
            Some(_) => false,
        })
        .filter(|r| {
            head.as_ref()
                .is_none_or(|(user, branch)| *user == owner && *branch == r.source_branch)
        })
        .filter(|r| q.base.as_ref().is_none_or(|b| *b == r.target_branch))
        .map(|r| pull_json(&shared, &u, id, r))
        .collect();
    axum::Json(Value::Array(list)).into_response()
}

#[derive(Debug, Deserialize)]
struct CreatePull {
    title: Option<String>,
    head: Option<String>,
    base: Option<String>,
    body: Option<String>,
}

fn validation(message: String) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        axum::Json(json!({
            "message": "Validation Failed",
            "errors": [{ "resource": "PullRequest", "code": "custom", "message": message }],
            "documentation_url": DOCS,
            "status": "422",
        })),
    )
        .into_response()
}

async fn create_pull(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((owner, repo)): Path<(String, String)>,
    axum::Json(body): axum::Json<CreatePull>,
) -> Response {
    let (id, path) = match authorize(&shared, &headers, &owner, &repo) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let (Some(title), Some(head), Some(base)) = (body.title, body.head, body.base) else {
        return validation("title, head and base are required".to_owned());
    };
    let head_branch = head
        .split_once(':')
        .map_or(head.as_str(), |(_, b)| b)
        .to_owned();
    if shared.branch_head(&path, &head_branch).is_none() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({
                "message": "Validation Failed",
                "errors": [{ "resource": "PullRequest", "field": "head", "code": "invalid" }],
                "documentation_url": DOCS,
                "status": "422",
            })),
        )
            .into_response();
    }
    if shared.branch_head(&path, &base).is_none() {
        return validation(format!("base {base} does not exist"));
    }
    let mut data = shared.lock();
    if data.reviews.iter().any(|r| {
        r.repo == path && r.open && r.source_branch == head_branch && r.target_branch == base
    }) {
        return validation(format!(
            "A pull request already exists for {owner}:{head_branch}."
        ));
    }
    data.next_review_id += 1;
    let number = data.reviews.iter().filter(|r| r.repo == path).count() as u64 + 1;
    let now = now_iso();
    let review = Review {
        number,
        id: data.next_review_id,
        repo: path,
        source_branch: head_branch,
        target_branch: base,
        title,
        description: body.body.unwrap_or_default(),
        open: true,
        created_at: now.clone(),
        updated_at: now,
    };
    data.reviews.push(review.clone());
    drop(data);
    (
        StatusCode::CREATED,
        axum::Json(pull_json(&shared, &urls(&headers), id, &review)),
    )
        .into_response()
}

async fn get_pull(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((owner, repo, number)): Path<(String, String, u64)>,
) -> Response {
    let (id, path) = match authorize(&shared, &headers, &owner, &repo) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let found = shared
        .lock()
        .reviews
        .iter()
        .find(|r| r.repo == path && r.number == number)
        .cloned();
    match found {
        Some(r) => axum::Json(pull_json(&shared, &urls(&headers), id, &r)).into_response(),
        None => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

#[derive(Debug, Deserialize)]
struct UpdatePull {
    title: Option<String>,
    body: Option<String>,
    state: Option<String>,
}

async fn update_pull(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    axum::Json(body): axum::Json<UpdatePull>,
) -> Response {
    let (id, path) = match authorize(&shared, &headers, &owner, &repo) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let mut data = shared.lock();
    let Some(r) = data
        .reviews
        .iter_mut()
        .find(|r| r.repo == path && r.number == number)
    else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    if let Some(title) = body.title {
        r.title = title;
    }
    if let Some(text) = body.body {
        r.description = text;
    }
    match body.state.as_deref() {
        Some("closed") => r.open = false,
        Some("open") => r.open = true,
        _ => {}
    }
    r.updated_at = now_iso();
    let r = r.clone();
    drop(data);
    axum::Json(pull_json(&shared, &urls(&headers), id, &r)).into_response()
}
