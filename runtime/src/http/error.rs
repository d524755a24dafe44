//! The API's error type: a status and a JSON body `{ "error": "...", ...details }`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// An error answered to a client. Server-side causes are logged, not shown.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    details: Map<String, Value>,
}

impl ApiError {
    /// An error with `status` and a message for the client.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            details: Map::new(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: the thing asked for does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 500: logs `cause` and tells the client only that the server failed.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {cause}"),
        )
    }

    /// An error whose JSON body is `body` (which has an `error` message and details).
    pub fn detailed(status: StatusCode, body: &impl serde::Serialize) -> Self {
        let mut details = match serde_json::to_value(body) {
            Ok(Value::Object(details)) => details,
            Ok(other) => return Self::internal(format!("an error body is not an object: {other}")),
            Err(e) => return Self::internal(e),
        };
        let message = match details.remove("error") {
            Some(Value::String(message)) => message,
            _ => String::new(),
        };
        ApiError {
            status,
            message,
            details,
        }
    }

    /// Adds a field to the JSON body.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.details;
        body.insert("error".into(), json!(self.message));
        (self.status, Json(Value::Object(body))).into_response()
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::BytesRejection) -> Self {
        ApiError::new(rejection.status(), rejection.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::bad_request(rejection.body_text())
    }
}
