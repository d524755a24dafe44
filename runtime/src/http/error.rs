//! The API's error type: a status and a JSON body `{ "error": "...", ...details }`, and how each
//! domain error and each extractor rejection becomes one.
//!
//! Internal causes (storage failures, bugs) are logged with the request's id and never sent:
//! the client gets a 500 that names the `x-request-id` of its answer, which finds the cause in
//! Prism's log.

use crate::projector::error::chain;
use crate::projector::{DeployError, LifecycleError, RetryError, StorageError};
use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// What a client is told of an internal failure.
pub(super) const INTERNAL: &str =
    "internal error: Prism's log has the cause under this answer's x-request-id";

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    details: Map<String, Value>,
    /// Seconds, for a `Retry-After` header.
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status` and a message for the client.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            details: Map::new(),
            retry_after: None,
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

    /// 503 with `Retry-After`: Prism cannot do it now, and may later.
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after_secs),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }

    /// 500: logs `cause` with its sources (in the request's span, which carries its id) and
    /// tells the client only where to look.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %chain(cause), "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, INTERNAL)
    }

    /// An error whose JSON body is `body` (which has an `error` message and details).
    pub fn detailed(status: StatusCode, body: &impl serde::Serialize) -> Self {
        let mut details = match serde_json::to_value(body) {
            Ok(Value::Object(details)) => details,
            Ok(_) => return Self::new(status, "error"),
            Err(e) => return Self::internal(&e),
        };
        let message = match details.remove("error") {
            Some(Value::String(message)) => message,
            _ => String::new(),
        };
        ApiError {
            details,
            ..Self::new(status, message)
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
        let mut response = (self.status, Json(Value::Object(body))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        use crate::engine::ModuleError;
        let e = match e {
            DeployError::Storage(e) => return e.into(),
            e => e,
        };
        let status = match &e {
            DeployError::InvalidName(_) => StatusCode::BAD_REQUEST,
            DeployError::UnknownModule(_) => StatusCode::NOT_FOUND,
            DeployError::Module(ModuleError::NotWasm) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            DeployError::Module(ModuleError::Unavailable { .. } | ModuleError::Compile(_))
            | DeployError::Storage(_) => {
                return ApiError::internal(&e);
            }
            DeployError::Module(ModuleError::Abandoned) => StatusCode::REQUEST_TIMEOUT,
            DeployError::Module(_) | DeployError::Instance(_) => StatusCode::UNPROCESSABLE_ENTITY,
            DeployError::Spawn(cause) => {
                tracing::error!(error = %cause, "starting a projector thread failed");
                return ApiError::unavailable(format!("{e}; try again"), 1);
            }
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::NotFound(_) => ApiError::not_found(e.to_string()),
            LifecycleError::Deploy(e) => e.into(),
            LifecycleError::Storage(e) => e.into(),
            LifecycleError::ReplayFailed(_) => ApiError::internal(&e),
            LifecycleError::Replay(ref fault) => {
                let fault = serde_json::to_value(fault).unwrap_or(Value::Null);
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).with("fault", fault)
            }
        }
    }
}

impl From<RetryError> for ApiError {
    fn from(e: RetryError) -> Self {
        let status = match e {
            RetryError::NoProjector(_) | RetryError::NoDeadLetter(_) => StatusCode::NOT_FOUND,
            RetryError::NotRunning => StatusCode::CONFLICT,
            RetryError::NotOwner => StatusCode::MISDIRECTED_REQUEST,
            RetryError::Failed(_) => StatusCode::UNPROCESSABLE_ENTITY,
            RetryError::Storage(e) => return e.into(),
            RetryError::Internal(_) => return ApiError::internal(&e),
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        use crate::projector::shared::SharedError;
        match e {
            StorageError::Shared(SharedError::NotOwner(_)) => {
                ApiError::new(StatusCode::MISDIRECTED_REQUEST, e.to_string())
            }
            StorageError::Shared(SharedError::Changed(_)) => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            StorageError::Shared(SharedError::Unavailable(_) | SharedError::Damaged(_)) => {
                ApiError::unavailable(e.to_string(), 1)
            }
            e => ApiError::internal(&e),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        if let crate::store::StoreError::Unavailable(_) = e {
            return ApiError::unavailable(e.to_string(), 1);
        }
        ApiError::internal(&e)
    }
}

impl From<crate::log::ReadError> for ApiError {
    fn from(e: crate::log::ReadError) -> Self {
        match e {
            crate::log::ReadError::Unavailable(_) => ApiError::unavailable(e.to_string(), 1),
            e => ApiError::internal(&e),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::internal(&e)
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        ApiError::new(rejection.status(), rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        // A path that matched a route but whose parameters do not parse (`/dead-letters/abc`).
        let status = match rejection.status() {
            StatusCode::INTERNAL_SERVER_ERROR => return ApiError::internal(&rejection),
            status => status,
        };
        ApiError::new(status, rejection.body_text())
    }
}
