//! Errors: the simulator's own (`Error`) and the REST error answers it gives (`ApiError`).

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::CONTENT_TYPE;

use super::model::{AppError, new_id};

/// Failures of the simulator process itself (not of the requests it serves).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the state file {path}")]
    ReadState {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse the state file {path}")]
    ParseState {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write the state file {path}")]
    WriteState {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode the state")]
    EncodeState(#[source] serde_json::Error),
    #[error("cannot read the listener's address")]
    LocalAddr(#[source] std::io::Error),
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
    #[error("cannot load the OpenAPI spec for contract checking")]
    Contract(#[source] std::sync::Arc<super::contract::Error>),
    #[error("the simulator task panicked")]
    Panicked,
    #[error("cannot build the integration HTTP client")]
    HttpClient(#[source] reqwest::Error),
}

/// A REST error answer in Mattermost's shape (`model.AppError`).
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub id: String,
    pub message: String,
    pub detailed: String,
}

impl ApiError {
    pub fn new(status: StatusCode, id: &str, message: &str) -> Self {
        ApiError {
            status,
            id: id.to_owned(),
            message: message.to_owned(),
            detailed: String::new(),
        }
    }

    pub fn bad_request(id: &str, message: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, id, message)
    }

    pub fn forbidden(id: &str, message: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, id, message)
    }

    pub fn not_found(id: &str, message: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, id, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "api.context.session_expired.app_error",
            "Invalid or expired session, please login again.",
        )
    }

    /// A missing or malformed body field (`NewInvalidParamError`).
    pub fn invalid_param(param: &str) -> Self {
        Self::bad_request(
            "api.context.invalid_body_param.app_error",
            &format!("Invalid or missing {param} in request body."),
        )
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detailed = detail.into();
        self
    }

    pub fn body(&self) -> AppError {
        AppError {
            id: self.id.clone(),
            message: self.message.clone(),
            detailed_error: self.detailed.clone(),
            request_id: new_id(),
            status_code: self.status.as_u16(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        (self.status, [(CONTENT_TYPE, "application/json")], body).into_response()
    }
}
