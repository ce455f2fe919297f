//! The git side of the forge: a CGI runner for Debian's `git http-backend` (smart HTTP,
//! protocol v0 and v2) with basic auth. Each request runs the backend once, with the
//! CGI variables it reads (RFC 3875 plus `GIT_PROJECT_ROOT`, `GIT_HTTP_EXPORT_ALL`,
//! `GIT_PROTOCOL`); its `Status:` and headers become the response's.
//!
//! Pushes need `REMOTE_USER`, which is set only after the token was checked, so the
//! backend's own rule (receive-pack only for authenticated users) holds. Hooks in the
//! bare repositories run as they would on a server (protected branches use one).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Shared;

/// Where Debian's git package puts the backend.
pub const DEFAULT_BACKEND: &str = "/usr/lib/git-core/git-http-backend";

/// The largest request body taken (a push of a large repository).
const MAX_BODY: usize = 1 << 30;

pub(crate) async fn serve(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let path = req.uri().path().to_owned();
    if !path.contains(".git/") && !path.ends_with(".git") {
        return (StatusCode::NOT_FOUND, "404 Not Found").into_response();
    }
    let Some(user) = authorized_user(&shared, req.headers()) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(http::header::WWW_AUTHENTICATE, "Basic realm=\"forge\"")],
            "HTTP Basic: Access denied\n",
        )
            .into_response();
    };
    match run(&shared, peer, &user, req).await {
        Ok(response) => response,
        Err(err) => {
            tracing::error!(error = %err, "git http-backend failed");
            (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response()
        }
    }
}

/// The basic-auth user name if the password is the forge's token.
fn authorized_user(shared: &Shared, headers: &http::HeaderMap) -> Option<String> {
    use base64::Engine;
    let auth = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = auth.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    (password == shared.options.token && !user.is_empty()).then(|| user.to_owned())
}

async fn run(
    shared: &Shared,
    peer: SocketAddr,
    user: &str,
    req: Request,
) -> Result<Response, String> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| format!("request body: {e}"))?;
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut cmd = tokio::process::Command::new(&shared.options.backend);
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &shared.root)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", &shared.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("REMOTE_ADDR", peer.ip().to_string())
        .env("REMOTE_USER", user)
        .env("AUTH_TYPE", "Basic")
        .env("CONTENT_LENGTH", body.len().to_string());
    if let Some(ct) = header("content-type") {
        cmd.env("CONTENT_TYPE", ct);
    }
    if let Some(enc) = header("content-encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", enc);
    }
    if let Some(proto) = header("git-protocol") {
        cmd.env("GIT_PROTOCOL", proto);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", shared.options.backend.display()))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let write = async move {
        // The backend may stop reading early (an error): a broken pipe is its answer.
        let _ignored = stdin.write_all(&body).await;
        drop(stdin);
    };
    let mut out = Vec::new();
    let mut err = Vec::new();
    let (_, read_out, read_err) = tokio::join!(
        write,
        stdout.read_to_end(&mut out),
        stderr.read_to_end(&mut err)
    );
    read_out.map_err(|e| format!("stdout: {e}"))?;
    read_err.map_err(|e| format!("stderr: {e}"))?;
    let status = child.wait().await.map_err(|e| format!("wait: {e}"))?;
    if !err.is_empty() {
        tracing::debug!(stderr = %String::from_utf8_lossy(&err), "git http-backend");
    }
    parse_cgi(&out).ok_or_else(|| {
        format!(
            "unreadable CGI output (exit {status}): {}",
            String::from_utf8_lossy(&err)
        )
    })
}

/// Splits CGI output into a response: header lines up to the first empty line (`\r\n`
/// or `\n`), `Status: NNN reason` setting the status.
fn parse_cgi(out: &[u8]) -> Option<Response> {
    let (head, body) = match find(out, b"\r\n\r\n") {
        Some(i) => (&out[..i], &out[i + 4..]),
        None => {
            let i = find(out, b"\n\n")?;
            (&out[..i], &out[i + 2..])
        }
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut response = Response::new(Body::from(body.to_vec()));
    for line in head.lines() {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next()?.parse::<u16>().ok()?;
            *response.status_mut() = StatusCode::from_u16(code).ok()?;
        } else {
            response.headers_mut().append(
                HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
                HeaderValue::from_str(value).ok()?,
            );
        }
    }
    Some(response)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cgi_output_becomes_a_response() {
        let r = super::parse_cgi(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope")
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()["content-type"], "text/plain");
        let r = super::parse_cgi(b"Content-Type: x\n\nbody").unwrap();
        assert_eq!(r.status(), 200);
        assert!(super::parse_cgi(b"no blank line").is_none());
    }
}
