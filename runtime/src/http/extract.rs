//! axum's `Path` and `Query` extractors, rejecting with the API's JSON error shape instead of
//! axum's plain text (use these, never axum's, in handlers).

use super::ApiError;
use axum::extract::FromRequestParts;

/// The path parameters; a parameter that does not parse answers 400 with a JSON error.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// The query string; one that does not parse answers 400 with a JSON error.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);
