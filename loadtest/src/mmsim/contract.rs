//! Contract checking against the official OpenAPI spec (`mattermost-openapi-v4.yaml`).
//!
//! Every `/api/v4` exchange the simulator serves can be checked, non-strictly: the request path
//! must match a path template and method of the spec, required query parameters must be
//! present, JSON request bodies must fit their schema (types, `required`, items and properties
//! recursively; extra properties allowed), the answer's status must be declared (or
//! `default`), and JSON answers must fit the declared schema. `null` is accepted anywhere,
//! because the server's Go models emit `null` for empty slices and maps.
//!
//! The spec is parsed once per process and file. The strict-validator defects the reference
//! lists (§1.1: undeclared path parameters, a duplicate operationId, a bad parameter default)
//! do not matter to this checker, which never validates the spec itself. Inaccuracies that do
//! matter are tolerated explicitly, each with its reason, in [`TOLERATED_STATUSES`] and
//! [`TOLERATED_FIELDS`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::server::lock;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the OpenAPI spec {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse the OpenAPI spec {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Arc<serde_yaml_ng::Error>,
    },
    #[error("the OpenAPI spec {path} has no `paths`")]
    NoPaths { path: PathBuf },
}

/// Undeclared statuses the real server does answer with, and why they are accepted.
/// `(method or "*", path template or "*", status, reason)`.
pub const TOLERATED_STATUSES: &[(&str, &str, u16, &str)] = &[
    (
        "*",
        "*",
        404,
        "the spec's Error Handling section: unknown ids answer 404 with an AppError body, which many operations do not declare",
    ),
    (
        "*",
        "*",
        429,
        "the spec's Rate Limiting section applies to every endpoint",
    ),
    (
        "POST",
        "/api/v4/users/login",
        200,
        "the spec's own Authentication example shows `HTTP/1.1 200 OK`; the server answers 200, the operation declares only 201",
    ),
    (
        "POST",
        "/api/v4/users/login",
        401,
        "bad credentials answer 401 api.user.login.invalid_credentials_email_username; the operation declares only 400 and 403",
    ),
    (
        "POST",
        "/api/v4/users/logout",
        200,
        "the server answers ReturnStatusOK (200); the operation declares only 201",
    ),
    (
        "GET",
        "/api/v4/files/{file_id}",
        200,
        "the operation declares no success response; the server answers 200 with the file",
    ),
    (
        "POST",
        "/api/v4/commands/execute",
        500,
        "the server answers 500 when the command's integration fails or answers non-200",
    ),
];

/// Request body fields whose declared type is wrong: `(method, template, field, reason)`.
pub const TOLERATED_FIELDS: &[(&str, &str, &str, &str)] = &[
    (
        "PUT",
        "/api/v4/posts/{post_id}/patch",
        "$.props",
        "reference §1.2: typed string, the server decodes an object",
    ),
    (
        "PUT",
        "/api/v4/posts/{post_id}",
        "$.props",
        "reference §1.2: typed string, the server decodes an object",
    ),
];

/// One contract violation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    pub method: String,
    pub path: String,
    /// The spec's path template, when one matched.
    pub template: Option<String>,
    pub status: u16,
    pub message: String,
}

/// The parsed spec with its path templates split for matching.
pub struct Spec {
    doc: Value,
    templates: Vec<(String, Vec<Segment>)>,
}

enum Segment {
    Literal(String),
    Param,
}

type Loaded = Result<Arc<Spec>, Arc<Error>>;

static SPECS: OnceLock<Mutex<HashMap<PathBuf, Loaded>>> = OnceLock::new();

impl Spec {
    /// The spec at `path`, parsed at most once per process.
    pub fn load(path: &Path) -> Result<Arc<Spec>, Arc<Error>> {
        let cache = SPECS.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some(hit) = lock(cache).get(path) {
            return hit.clone();
        }
        // Parse outside the lock: it takes a while, and a racing parse is merely redundant.
        let parsed = Self::parse(path).map(Arc::new).map_err(Arc::new);
        lock(cache).entry(path.to_owned()).or_insert(parsed).clone()
    }

    fn parse(path: &Path) -> Result<Spec, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let doc: Value = serde_yaml_ng::from_str(&text).map_err(|source| Error::Parse {
            path: path.to_owned(),
            source: Arc::new(source),
        })?;
        let paths = doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::NoPaths {
                path: path.to_owned(),
            })?;
        let templates = paths
            .keys()
            .map(|t| {
                let segs = t
                    .trim_matches('/')
                    .split('/')
                    .map(|s| {
                        if s.starts_with('{') && s.ends_with('}') {
                            Segment::Param
                        } else {
                            Segment::Literal(s.to_owned())
                        }
                    })
                    .collect();
                (t.clone(), segs)
            })
            .collect();
        Ok(Spec { doc, templates })
    }

    /// The template matching a concrete path; literal segments win over parameters
    /// (`/users/username/{username}` over `/users/{user_id}/...`).
    pub fn match_path(&self, path: &str) -> Option<&str> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        self.templates
            .iter()
            .filter(|(_, segs)| {
                segs.len() == parts.len()
                    && segs.iter().zip(&parts).all(|(s, p)| match s {
                        Segment::Literal(l) => l == p,
                        Segment::Param => !p.is_empty(),
                    })
            })
            .max_by_key(|(_, segs)| {
                segs.iter()
                    .filter(|s| matches!(s, Segment::Literal(_)))
                    .count()
            })
            .map(|(t, _)| t.as_str())
    }

    fn operation(&self, template: &str, method: &str) -> Option<&Value> {
        self.doc
            .get("paths")?
            .get(template)?
            .get(method.to_ascii_lowercase())
    }

    /// Follows `$ref`s (local JSON pointers only).
    fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        for _ in 0..16 {
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) => match r.strip_prefix('#').and_then(|p| self.doc.pointer(p)) {
                    Some(target) => v = target,
                    None => return v,
                },
                None => return v,
            }
        }
        v
    }

    /// Non-strict JSON Schema check; problems are pushed as `"<json path>: <what>"`.
    fn validate(
        &self,
        schema: &Value,
        value: &Value,
        at: &str,
        required: bool,
        out: &mut Vec<String>,
        depth: usize,
    ) {
        if depth > 64 || value.is_null() {
            return;
        }
        let schema = self.resolve(schema);
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for s in all {
                self.validate(s, value, at, required, out, depth + 1);
            }
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(alts) = schema.get(key).and_then(Value::as_array) {
                let fits = alts.iter().any(|s| {
                    let mut errs = Vec::new();
                    self.validate(s, value, at, required, &mut errs, depth + 1);
                    errs.is_empty()
                });
                if !fits && !alts.is_empty() {
                    out.push(format!("{at}: matches none of {key}"));
                }
            }
        }
        let ty = schema.get("type").and_then(Value::as_str).or_else(|| {
            (schema.get("properties").is_some() || schema.get("additionalProperties").is_some())
                .then_some("object")
        });
        match ty {
            Some("object") => {
                let Some(obj) = value.as_object() else {
                    out.push(format!("{at}: expected an object, got {}", kind(value)));
                    return;
                };
                let props = schema.get("properties").and_then(Value::as_object);
                if required && let Some(req) = schema.get("required").and_then(Value::as_array) {
                    for name in req.iter().filter_map(Value::as_str) {
                        if !obj.contains_key(name) {
                            out.push(format!("{at}: missing required property `{name}`"));
                        }
                    }
                }
                let extra = schema.get("additionalProperties").filter(|a| a.is_object());
                for (k, v) in obj {
                    let child = format!("{at}.{k}");
                    if let Some(s) = props.and_then(|p| p.get(k)) {
                        self.validate(s, v, &child, required, out, depth + 1);
                    } else if let Some(s) = extra {
                        self.validate(s, v, &child, required, out, depth + 1);
                    }
                }
            }
            Some("array") => {
                let Some(items) = value.as_array() else {
                    out.push(format!("{at}: expected an array, got {}", kind(value)));
                    return;
                };
                if let Some(s) = schema.get("items") {
                    for (i, v) in items.iter().enumerate() {
                        self.validate(s, v, &format!("{at}[{i}]"), required, out, depth + 1);
                    }
                }
            }
            Some("string") if !value.is_string() => {
                out.push(format!("{at}: expected a string, got {}", kind(value)));
            }
            Some("integer") if !(value.is_i64() || value.is_u64()) => {
                out.push(format!("{at}: expected an integer, got {}", kind(value)));
            }
            Some("number") if !value.is_number() => {
                out.push(format!("{at}: expected a number, got {}", kind(value)));
            }
            Some("boolean") if !value.is_boolean() => {
                out.push(format!("{at}: expected a boolean, got {}", kind(value)));
            }
            _ => {}
        }
    }

    fn json_schema<'a>(&'a self, holder: &'a Value) -> Option<&'a Value> {
        let holder = self.resolve(holder);
        let content = holder.get("content")?.as_object()?;
        content
            .iter()
            .find(|(ct, _)| ct.contains("json"))
            .and_then(|(_, media)| media.get("schema"))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One REST exchange as it crossed the wire.
pub(crate) struct Exchange<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub request_content_type: &'a str,
    pub request_body: &'a [u8],
    pub status: u16,
    pub response_content_type: &'a str,
    pub response_body: &'a [u8],
}

/// Checks exchanges and keeps the violations.
pub(crate) struct Checker {
    spec: Arc<Spec>,
    spec_path: PathBuf,
    checked: AtomicU64,
    violations: Mutex<Vec<Violation>>,
}

/// What `GET /sim/contract` answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub enabled: bool,
    pub spec: Option<String>,
    pub checked: u64,
    pub violations: Vec<Violation>,
}

impl Checker {
    pub fn new(spec: Arc<Spec>, spec_path: PathBuf) -> Self {
        Checker {
            spec,
            spec_path,
            checked: AtomicU64::new(0),
            violations: Mutex::new(Vec::new()),
        }
    }

    pub fn report(&self) -> Report {
        Report {
            enabled: true,
            spec: Some(self.spec_path.display().to_string()),
            checked: self.checked.load(Ordering::Relaxed),
            violations: lock(&self.violations).clone(),
        }
    }

    pub fn reset(&self) {
        lock(&self.violations).clear();
        self.checked.store(0, Ordering::Relaxed);
    }

    pub fn check(&self, ex: &Exchange<'_>) {
        self.checked.fetch_add(1, Ordering::Relaxed);
        let problems = self.problems(ex);
        if problems.1.is_empty() {
            return;
        }
        let mut v = lock(&self.violations);
        for message in problems.1 {
            v.push(Violation {
                method: ex.method.to_owned(),
                path: ex.path.to_owned(),
                template: problems.0.clone(),
                status: ex.status,
                message,
            });
        }
    }

    fn problems(&self, ex: &Exchange<'_>) -> (Option<String>, Vec<String>) {
        let spec = &*self.spec;
        let mut out = Vec::new();
        let Some(template) = spec.match_path(ex.path) else {
            out.push("no path template of the spec matches".to_owned());
            return (None, out);
        };
        let Some(op) = spec.operation(template, ex.method) else {
            out.push(format!("the spec declares no {} operation here", ex.method));
            return (Some(template.to_owned()), out);
        };
        let query: Vec<(String, String)> = ex
            .query
            .and_then(|q| serde_urlencoded::from_str(q).ok())
            .unwrap_or_default();
        for p in op
            .get("parameters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let p = spec.resolve(p);
            let required = p.get("required").and_then(Value::as_bool).unwrap_or(false);
            if p.get("in").and_then(Value::as_str) == Some("query")
                && required
                && let Some(name) = p.get("name").and_then(Value::as_str)
                && !query.iter().any(|(k, _)| k == name)
            {
                out.push(format!("missing required query parameter `{name}`"));
            }
        }
        if let Some(body) = op.get("requestBody") {
            let body = spec.resolve(body);
            let required = body
                .get("required")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if ex.request_body.is_empty() {
                if required && !ex.request_content_type.contains("multipart") {
                    out.push("missing required request body".to_owned());
                }
            } else if ex.request_content_type.contains("json")
                && let Some(schema) = spec.json_schema(body)
            {
                match serde_json::from_slice::<Value>(ex.request_body) {
                    Ok(v) => {
                        let mut errs = Vec::new();
                        spec.validate(schema, &v, "$", true, &mut errs, 0);
                        errs.retain(|e| !field_tolerated(ex.method, template, e));
                        out.extend(errs.into_iter().map(|e| format!("request body {e}")));
                    }
                    Err(e) => out.push(format!("request body is not JSON: {e}")),
                }
            }
        }
        let responses = op.get("responses");
        let status = ex.status.to_string();
        let declared = responses.and_then(|r| r.get(&status).or_else(|| r.get("default")));
        match declared {
            None if !status_tolerated(ex.method, template, ex.status) => {
                out.push(format!("status {status} is not declared"));
            }
            None => {
                // Tolerated statuses still carry the documented AppError body when they fail.
                if ex.status >= 400 && ex.status != 429 && ex.response_content_type.contains("json")
                {
                    let app_error = serde_json::json!({"$ref": "#/components/schemas/AppError"});
                    self.check_body(&app_error, ex, &mut out);
                }
            }
            Some(resp) => {
                if ex.response_content_type.contains("json")
                    && let Some(schema) = spec.json_schema(resp)
                {
                    self.check_body(schema, ex, &mut out);
                }
            }
        }
        (Some(template.to_owned()), out)
    }

    fn check_body(&self, schema: &Value, ex: &Exchange<'_>, out: &mut Vec<String>) {
        match serde_json::from_slice::<Value>(ex.response_body) {
            Ok(v) => {
                let mut errs = Vec::new();
                self.spec.validate(schema, &v, "$", false, &mut errs, 0);
                out.extend(errs.into_iter().map(|e| format!("response body {e}")));
            }
            Err(e) => out.push(format!("response body is not JSON: {e}")),
        }
    }
}

fn status_tolerated(method: &str, template: &str, status: u16) -> bool {
    TOLERATED_STATUSES.iter().any(|(m, t, s, _)| {
        (*m == "*" || *m == method) && (*t == "*" || *t == template) && *s == status
    })
}

fn field_tolerated(method: &str, template: &str, problem: &str) -> bool {
    TOLERATED_FIELDS.iter().any(|(m, t, field, _)| {
        *m == method
            && *t == template
            && (problem.starts_with(&format!("{field}:"))
                || problem.starts_with(&format!("{field}.")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker() -> Option<Checker> {
        let path = super::super::spec_path();
        if !path.exists() {
            eprintln!(
                "SKIPPED: contract checker unit tests — no spec at {}",
                path.display()
            );
            return None;
        }
        Spec::load(&path).ok().map(|s| Checker::new(s, path))
    }

    fn exchange<'a>(
        method: &'a str,
        path: &'a str,
        req: &'a [u8],
        status: u16,
        resp: &'a [u8],
    ) -> Exchange<'a> {
        Exchange {
            method,
            path,
            query: None,
            request_content_type: "application/json",
            request_body: req,
            status,
            response_content_type: "application/json",
            response_body: resp,
        }
    }

    fn messages(c: &Checker) -> Vec<String> {
        let out = c
            .report()
            .violations
            .into_iter()
            .map(|v| v.message)
            .collect();
        c.reset();
        out
    }

    #[test]
    fn matching_prefers_literal_segments_and_accepts_me() {
        let Some(c) = checker() else { return };
        assert_eq!(
            c.spec.match_path("/api/v4/users/me"),
            Some("/api/v4/users/{user_id}")
        );
        assert_eq!(
            c.spec.match_path("/api/v4/users/username/bob"),
            Some("/api/v4/users/username/{username}")
        );
        assert_eq!(c.spec.match_path("/api/v4/nope/nope/nope/nope"), None);
    }

    #[test]
    fn detects_violations_and_tolerates_listed_inaccuracies() {
        let Some(c) = checker() else { return };
        c.check(&exchange(
            "POST",
            "/api/v4/posts",
            br#"{"message":"x"}"#,
            201,
            b"{}",
        ));
        let m = messages(&c);
        assert!(
            m.iter()
                .any(|m| m.contains("missing required property `channel_id`")),
            "{m:?}"
        );
        c.check(&exchange(
            "POST",
            "/api/v4/posts",
            br#"{"channel_id":"c","message":"x"}"#,
            201,
            br#"{"id":5,"props":"s"}"#,
        ));
        let m = messages(&c);
        assert!(
            m.iter().any(|m| m.contains("$.id: expected a string")),
            "{m:?}"
        );
        assert!(
            m.iter().any(|m| m.contains("$.props: expected an object")),
            "{m:?}"
        );
        c.check(&exchange(
            "POST",
            "/api/v4/posts",
            br#"{"channel_id":"c","message":"x"}"#,
            418,
            b"{}",
        ));
        assert_eq!(messages(&c), vec!["status 418 is not declared".to_owned()]);
        c.check(&exchange(
            "PUT",
            "/api/v4/posts/abc/patch",
            br#"{"props":{"a":1}}"#,
            200,
            b"{}",
        ));
        assert!(
            messages(&c).is_empty(),
            "patch props as an object is tolerated"
        );
        c.check(&exchange(
            "POST",
            "/api/v4/users/login",
            br#"{"login_id":"a","password":"b"}"#,
            200,
            b"{}",
        ));
        assert!(messages(&c).is_empty(), "login answers 200");
        c.check(&exchange(
            "GET",
            "/api/v4/posts/abc",
            b"",
            404,
            br#"{"id":"x","message":"m","status_code":"404"}"#,
        ));
        let m = messages(&c);
        assert!(
            m.iter()
                .any(|m| m.contains("$.status_code: expected an integer")),
            "{m:?}"
        );
        c.check(&exchange("PATCH", "/api/v4/posts", b"", 200, b"{}"));
        assert_eq!(
            messages(&c),
            vec!["the spec declares no PATCH operation here".to_owned()]
        );
        assert_eq!(c.report().checked, 0);
    }
}
