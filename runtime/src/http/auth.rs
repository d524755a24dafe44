//! The admin boundary: bearer tokens by role, compared in constant time, and request timeouts.
//!
//! | role | routes | accepted tokens |
//! |---|---|---|
//! | admin | every `PUT`, `POST` and `DELETE` under `/projectors` (deploy, pause, resume, reset, delete, dead-letter actions) | admin |
//! | write | `POST /streams/{stream}/events`, `POST /events` | write, admin |
//! | read | every `GET` but `/health`, `/ready`, `/openapi.json` and the dashboard page | read, write, admin |
//!
//! A role whose token is not configured is open (for write: when neither the write nor the
//! admin token is set; for read: when no read token is set). `/health` and `/ready` are
//! always open (for orchestrators' probes), and so are `GET /openapi.json` (the API's
//! description), `GET /` and `/dashboard/*`: the dashboard page holds no data, and asks for a
//! token when the API needs one. `/openapi.json` states each route's role from [`role`].

use super::{ApiError, AppState};
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

/// Bearer tokens; `None` leaves that role open. (Also the `[tokens]` table of the config file.)
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tokens {
    /// For deploys and the projector lifecycle.
    pub admin: Option<String>,
    /// For appends.
    pub write: Option<String>,
    /// For reads (views, streams, status).
    pub read: Option<String>,
}

/// Which token a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Open,
    Read,
    Write,
    Admin,
}

/// The role a request needs (`path` may be a route template such as `/streams/{stream}`).
pub(super) fn role(method: &Method, path: &str) -> Role {
    let read = method == Method::GET || method == Method::HEAD;
    let dashboard = read && (path == "/" || path.starts_with(super::dashboard::ASSETS));
    let open = path == "/health" || path == "/ready" || (read && path == "/openapi.json");
    if open || dashboard {
        Role::Open
    } else if read {
        Role::Read
    } else if path.starts_with("/streams/") || path == "/events" {
        Role::Write
    } else {
        Role::Admin
    }
}

impl Tokens {
    /// Each role's name and token.
    pub fn roles(&self) -> impl Iterator<Item = (&'static str, Option<&str>)> {
        [
            ("admin", self.admin.as_deref()),
            ("write", self.write.as_deref()),
            ("read", self.read.as_deref()),
        ]
        .into_iter()
    }

    /// Whether no token is set (every role open).
    pub fn is_empty(&self) -> bool {
        self.roles().all(|(_, token)| token.is_none())
    }

    /// Refuses an empty token: every request would present it.
    pub fn check(&self) -> Result<(), String> {
        match self
            .roles()
            .find(|(_, token)| token.is_some_and(str::is_empty))
        {
            Some((role, _)) => Err(format!(
                "the {role} token is empty, which would let every request in; leave it out to keep the role open"
            )),
            None => Ok(()),
        }
    }

    /// The tokens that grant `role`; empty when the role is open.
    fn granting(&self, role: Role) -> Vec<&str> {
        let (admin, write, read) = (
            self.admin.as_deref(),
            self.write.as_deref(),
            self.read.as_deref(),
        );
        let tokens: Vec<Option<&str>> = match role {
            Role::Open => vec![],
            Role::Admin => vec![admin],
            Role::Write if write.is_none() && admin.is_none() => vec![],
            Role::Write => vec![write, admin],
            Role::Read if read.is_none() => vec![],
            Role::Read => vec![read, write, admin],
        };
        tokens.into_iter().flatten().collect()
    }
}

/// The bearer token of an `Authorization` header (the scheme in any case).
fn bearer(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim())
}

/// Whether `presented` is `token`, comparing their sha256 digests in constant time: the
/// comparison takes the same time whatever the tokens' lengths and contents.
fn same_token(presented: &str, token: &str) -> bool {
    use sha2::{Digest, Sha256};
    Sha256::digest(presented.as_bytes())
        .ct_eq(&Sha256::digest(token.as_bytes()))
        .into()
}

impl Tokens {
    /// Whether `headers` present a token that grants `role` (always, when the role is open).
    pub(super) fn grants(&self, role: Role, headers: &axum::http::HeaderMap) -> bool {
        let granting = self.granting(role);
        let presented = bearer(headers);
        // Compare against every candidate, without stopping early.
        granting.is_empty()
            || granting.iter().fold(false, |granted, token| {
                granted | same_token(presented, token)
            })
    }
}

/// Passes `request` on (to its projector's owner in a cluster, see [`super::cluster`]) when it
/// carries a token that grants its route's role; refuses it 401 otherwise.
pub async fn authorized(state: &AppState, request: Request, next: Next) -> Response {
    let role = role(request.method(), request.uri().path());
    if state.tokens.grants(role, request.headers()) {
        return super::cluster::route(state, request, next).await;
    }
    // Let a client still sending a body get the answer rather than a broken pipe: the body
    // is read and dropped as it arrives, never held (bounded by the largest body any route
    // accepts, and by a few seconds).
    let limit = state.limits.max_module_bytes;
    discard(request.into_body(), limit).await;
    let what = match role {
        Role::Admin => "deploys and projector changes need the admin token",
        Role::Write => "appends need the write (or admin) token",
        _ => "reads need the read (or write, or admin) token",
    };
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        format!("missing or wrong bearer token: {what} (Authorization: Bearer <token>)"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Reads and drops up to `limit` bytes of `body`, for at most 5 s.
async fn discard(body: axum::body::Body, limit: usize) {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut read = 0;
    let drain = async {
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read > limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
}

/// `answer`, or 408 when it takes longer than the configured timeout.
pub async fn within_time(state: &AppState, answer: impl Future<Output = Response>) -> Response {
    let limit = state.limits.request_timeout;
    match tokio::time::timeout(limit, answer).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request took longer than {} s", limit.as_secs_f64()),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(admin: Option<&str>, write: Option<&str>, read: Option<&str>) -> Tokens {
        Tokens {
            admin: admin.map(Into::into),
            write: write.map(Into::into),
            read: read.map(Into::into),
        }
    }

    #[test]
    fn tokens_compare_by_digest_and_the_scheme_in_any_case() {
        assert!(same_token("secret", "secret"));
        assert!(!same_token("secre", "secret"));
        assert!(!same_token("secret-and-more", "secret"));
        assert!(!same_token("", "secret"));
        let all = tokens(Some("a"), None, Some("r"));
        let mut headers = axum::http::HeaderMap::new();
        for value in ["Bearer r", "bearer r", "BEARER  r "] {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            assert!(all.grants(Role::Read, &headers), "{value}");
        }
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic r"));
        assert!(!all.grants(Role::Read, &headers));
    }

    #[test]
    fn routes_map_to_roles() {
        assert_eq!(role(&Method::GET, "/health"), Role::Open);
        assert_eq!(role(&Method::GET, "/"), Role::Open);
        assert_eq!(role(&Method::GET, "/dashboard/app.js"), Role::Open);
        assert_eq!(role(&Method::GET, "/openapi.json"), Role::Open);
        assert_eq!(role(&Method::POST, "/openapi.json"), Role::Admin);
        assert_eq!(role(&Method::POST, "/"), Role::Admin);
        assert_eq!(role(&Method::GET, "/streams"), Role::Read);
        assert_eq!(role(&Method::GET, "/projectors/p/view/k"), Role::Read);
        assert_eq!(role(&Method::POST, "/streams/s/events"), Role::Write);
        assert_eq!(role(&Method::PUT, "/projectors/p"), Role::Admin);
        assert_eq!(role(&Method::POST, "/projectors/p/pause"), Role::Admin);
        assert_eq!(
            role(&Method::DELETE, "/projectors/p/dead-letters/3"),
            Role::Admin
        );
    }

    #[test]
    fn unset_tokens_leave_roles_open_and_higher_tokens_grant_lower_roles() {
        let none = tokens(None, None, None);
        assert!(none.granting(Role::Admin).is_empty());
        let admin_only = tokens(Some("a"), None, None);
        assert_eq!(admin_only.granting(Role::Admin), ["a"]);
        assert_eq!(admin_only.granting(Role::Write), ["a"]);
        assert!(admin_only.granting(Role::Read).is_empty());
        let all = tokens(Some("a"), Some("w"), Some("r"));
        assert_eq!(all.granting(Role::Read), ["r", "w", "a"]);
        assert_eq!(all.granting(Role::Write), ["w", "a"]);
    }
}
