//! The gateway's HTTP error: 4xx are the caller's fault and not logged as errors; 5xx
//! return a generic body while the detail goes to the log and trace.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("unauthorized")]
    Unauthorized,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("not found")]
    NotFound,
    #[error("event could not be queued")]
    Publish(#[source] crate::publish::Error),
    #[error("Mattermost call failed")]
    Mattermost(#[source] crate::mattermost::Error),
    #[error("object store failed")]
    Store(#[source] object_store::Error),
}

impl Error {
    /// An id in a request that cannot be one (`proto::ids`): 400, saying which and why.
    pub fn bad_id(err: proto::IdError) -> Self {
        Error::BadRequest(err.to_string())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            Error::BadRequest(msg) => (StatusCode::BAD_REQUEST, msg.clone()),
            Error::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized".to_owned()),
            Error::Forbidden(msg) => (StatusCode::FORBIDDEN, (*msg).to_owned()),
            Error::NotFound => (StatusCode::NOT_FOUND, "not found".to_owned()),
            Error::Publish(_) | Error::Mattermost(_) | Error::Store(_) => {
                tracing::error!(error = ?anyhow::Error::from(self), "request failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily unavailable, please retry".to_owned(),
                )
            }
        };
        (status, body).into_response()
    }
}
