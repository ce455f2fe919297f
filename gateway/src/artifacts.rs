//! Artifact links: `GET /a/{token}/{path}` streams a generated file from the object store,
//! `GET /a/{token}/` lists them ("browse all"), `GET /z/{token}` zips them. Both downloads
//! stream: objects are read chunk by chunk and the zip is written as it goes
//! ([`zip_stream`]), so a gateway's memory does not grow with the files' sizes.
//!
//! The token is an HMAC-signed [`LinkClaims`] (thread, path prefix, expiry): it cannot be
//! guessed or widened, and it expires. Objects live under
//! `artifacts/<thread>/<prefix><path>`. HTML is served as a page, inside a CSP sandbox so a
//! generated web app runs in an opaque origin.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use common::signing::{LinkClaims, Signer};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;

use crate::AppState;
use crate::error::Error;
use zip_stream::ZipStream;

mod zip_stream;

/// The object-key root of a thread's artifacts.
pub fn thread_root(thread: &str) -> String {
    format!("artifacts/{thread}")
}

fn claims(state: &AppState, token: &str) -> Result<LinkClaims, Error> {
    verify_link(&state.signer, token, common::now_ms() / 1000)
}

/// A link's claims, if `signer` signed them and they are unexpired at `now_s`.
pub(crate) fn verify_link(signer: &Signer, token: &str, now_s: u64) -> Result<LinkClaims, Error> {
    signer
        .verify::<LinkClaims>(token, now_s)
        .map_err(|_| Error::Forbidden("this link is invalid or has expired"))
}

/// Rejects traversal and odd segments. `path` is already percent-decoded.
pub(crate) fn clean(path: &str) -> Result<String, Error> {
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

pub(crate) fn scope(claims: &LinkClaims) -> String {
    let prefix = claims.prefix.trim_matches('/');
    if prefix.is_empty() {
        thread_root(&claims.thread)
    } else {
        format!("{}/{prefix}", thread_root(&claims.thread))
    }
}

/// The object a link's `relative` path (already [`clean`]) names.
pub(crate) fn object_key(claims: &LinkClaims, relative: &str) -> String {
    format!("{}/{relative}", scope(claims))
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
    let key = ObjectPath::from(object_key(&claims, &relative));
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

/// What the zip body still has to send.
struct Zipping {
    zip: ZipStream,
    store: common::store::Store,
    root: String,
    files: std::collections::VecDeque<String>,
    current: Option<futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>>,
    done: bool,
}

impl Zipping {
    /// The next piece of the archive, `None` at its end. Each object is read as a stream,
    /// one at a time, so memory stays bounded whatever the files' sizes.
    async fn next(&mut self) -> Option<std::io::Result<bytes::Bytes>> {
        loop {
            if let Some(stream) = self.current.as_mut() {
                match stream.next().await {
                    Some(Ok(chunk)) => {
                        let out = self.zip.write(&chunk);
                        if out.is_empty() {
                            continue;
                        }
                        return Some(Ok(out.into()));
                    }
                    Some(Err(err)) => return Some(Err(self.fail(err))),
                    None => {
                        self.current = None;
                        return Some(Ok(self.zip.finish_entry().into()));
                    }
                }
            }
            if self.done {
                return None;
            }
            let Some(path) = self.files.pop_front() else {
                self.done = true;
                return Some(Ok(self.zip.finish().into()));
            };
            let key = ObjectPath::from(format!("{}/{path}", self.root));
            match self.store.objects().get(&key).await {
                Ok(object) => {
                    self.current = Some(object.into_stream().boxed());
                    return Some(Ok(self.zip.start(&path).into()));
                }
                // Deleted since it was listed.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(err) => return Some(Err(self.fail(err))),
            }
        }
    }

    /// The response has started: the only way left to report an error is to cut the body,
    /// so the client never takes a truncated archive for a whole one.
    fn fail(&mut self, err: object_store::Error) -> std::io::Error {
        tracing::error!(
            error = &err as &dyn std::error::Error,
            "zip download cut: could not read an artifact"
        );
        self.done = true;
        self.current = None;
        std::io::Error::other(err)
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
    let zipping = Zipping {
        zip: ZipStream::new(),
        store: state.store.clone(),
        root: scope(&claims),
        files: files.into_iter().map(|(path, _)| path).collect(),
        current: None,
        done: false,
    };
    let body = futures::stream::unfold(zipping, |mut zipping| async move {
        let next = zipping.next().await?;
        Some((next, zipping))
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/zip".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"session-{}.zip\"", claims.thread),
            ),
        ],
        Body::from_stream(body),
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
