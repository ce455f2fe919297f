//! Artifact links: `GET /a/{token}/{path}` streams a generated file from the object store,
//! `GET /a/{token}/` lists them ("browse all"), `GET /z/{token}` zips them.
//!
//! The token is an HMAC-signed [`LinkClaims`] (thread, path prefix, expiry): it cannot be
//! guessed or widened, and it expires. Objects live under
//! `artifacts/<thread>/<prefix><path>`. HTML is served as a page, inside a CSP sandbox so a
//! generated web app runs in an opaque origin.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use common::signing::LinkClaims;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;

use crate::AppState;
use crate::error::Error;

/// The object-key root of a thread's artifacts.
pub fn thread_root(thread: &str) -> String {
    format!("artifacts/{thread}")
}

fn claims(state: &AppState, token: &str) -> Result<LinkClaims, Error> {
    state
        .signer
        .verify::<LinkClaims>(token, common::now_ms() / 1000)
        .map_err(|_| Error::Forbidden("this link is invalid or has expired"))
}

/// Rejects traversal and odd segments. `path` is already percent-decoded.
fn clean(path: &str) -> Result<String, Error> {
    let mut parts = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" => continue,
            "." | ".." => return Err(Error::BadRequest("path traversal is not allowed".into())),
            s if s.contains('\\') || s.contains('\0') => {
                return Err(Error::BadRequest("invalid path".into()));
            }
            s => parts.push(s),
        }
    }
    Ok(parts.join("/"))
}

fn scope(claims: &LinkClaims) -> String {
    let prefix = claims.prefix.trim_matches('/');
    if prefix.is_empty() {
        thread_root(&claims.thread)
    } else {
        format!("{}/{prefix}", thread_root(&claims.thread))
    }
}

pub async fn get_file(
    State(state): State<AppState>,
    Path((token, path)): Path<(String, String)>,
) -> Result<Response, Error> {
    let claims = claims(&state, &token)?;
    let relative = clean(&path)?;
    if relative.is_empty() || path.ends_with('/') {
        return listing(&state, &token, &claims, &relative).await;
    }
    let key = ObjectPath::from(format!("{}/{relative}", scope(&claims)));
    let object = match state.store.objects().get(&key).await {
        Ok(object) => object,
        Err(object_store::Error::NotFound { .. }) => return Err(Error::NotFound),
        Err(err) => return Err(Error::Store(err)),
    };
    let mime = mime_guess::from_path(&relative).first_or_octet_stream();
    let content_type = if mime.type_() == "text" || mime.essence_str() == "application/javascript" {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.essence_str().to_owned()
    };
    let is_html = mime.essence_str() == "text/html";
    let size = object.meta.size;
    let stream = object.into_stream().map_err(std::io::Error::other);
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=300"),
    );
    if is_html {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox allow-scripts allow-forms allow-popups allow-modals"),
        );
    }
    Ok(response)
}

pub async fn get_root(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, Error> {
    let claims = claims(&state, &token)?;
    listing(&state, &token, &claims, "").await
}

async fn list(
    state: &AppState,
    claims: &LinkClaims,
    under: &str,
) -> Result<Vec<(String, u64)>, Error> {
    let root = scope(claims);
    let prefix = if under.is_empty() {
        root.clone()
    } else {
        format!("{root}/{under}")
    };
    let objects: Vec<_> = state
        .store
        .objects()
        .list(Some(&ObjectPath::from(prefix)))
        .try_collect()
        .await
        .map_err(Error::Store)?;
    let mut files: Vec<(String, u64)> = objects
        .into_iter()
        .filter_map(|meta| {
            let key = meta.location.to_string();
            key.strip_prefix(&format!("{root}/"))
                .map(|rel| (rel.to_owned(), meta.size))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn listing(
    state: &AppState,
    token: &str,
    claims: &LinkClaims,
    under: &str,
) -> Result<Response, Error> {
    let files = list(state, claims, under).await?;
    if files.is_empty() {
        return Err(Error::NotFound);
    }
    let rows: String = files
        .iter()
        .map(|(path, size)| {
            let href = format!(
                "/a/{token}/{}",
                path.split('/').map(urlencode).collect::<Vec<_>>().join("/")
            );
            format!(
                "<tr><td><a href=\"{}\">{}</a></td><td class=n>{}</td></tr>",
                escape(&href),
                escape(path),
                human_size(*size)
            )
        })
        .collect();
    let page = format!(
        "<!doctype html><html><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
         <title>Files · ccfleet</title><style>body{{font:15px system-ui,sans-serif;margin:2rem auto;max-width:50rem;padding:0 1rem}}\
         table{{border-collapse:collapse;width:100%}}td{{padding:.35rem .5rem;border-bottom:1px solid #ddd}}td.n{{text-align:right;color:#555}}</style></head>\
         <body><h1>Files from this session</h1><p>{} file(s). <a href=\"/z/{}\">Download all as zip</a></p><table>{rows}</table></body></html>",
        files.len(),
        escape(token)
    );
    Ok(Html(page).into_response())
}

fn urlencode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / 1024.0 / 1024.0),
    }
}

pub async fn get_zip(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, Error> {
    let claims = claims(&state, &token)?;
    let files = list(&state, &claims, "").await?;
    if files.is_empty() {
        return Err(Error::NotFound);
    }
    let root = scope(&claims);
    let mut buffer = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buffer);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        let mut fetches = futures::stream::iter(files.into_iter().map(|(path, _)| {
            let store = state.store.clone();
            let key = ObjectPath::from(format!("{root}/{path}"));
            async move {
                let bytes = store.objects().get(&key).await?.bytes().await?;
                Ok::<_, object_store::Error>((path, bytes))
            }
        }))
        .buffered(8);
        while let Some(next) = fetches.next().await {
            let (path, bytes) = next.map_err(Error::Store)?;
            zip.start_file(path, options)
                .map_err(|e| Error::BadRequest(format!("zip: {e}")))?;
            std::io::Write::write_all(&mut zip, &bytes)
                .map_err(|e| Error::BadRequest(format!("zip: {e}")))?;
        }
        zip.finish()
            .map_err(|e| Error::BadRequest(format!("zip: {e}")))?;
    }
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/zip".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"session-{}.zip\"", claims.thread),
            ),
        ],
        buffer.into_inner(),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn traversal_is_rejected() {
        assert!(clean("../etc/passwd").is_err());
        assert!(clean("a/../../b").is_err());
        assert!(clean("a/./b").is_err());
        assert_eq!(clean("a//b/").unwrap(), "a/b");
        assert_eq!(clean("index.html").unwrap(), "index.html");
    }
}
