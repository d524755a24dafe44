//! The browser boundary: Prism listens on loopback without a token by default, so a web page
//! the user visits must not be able to reach it.
//!
//! - **Host** (against DNS rebinding): a request is answered only when its `Host` names Prism
//!   by an IP address, `localhost` (or a `*.localhost` name), or a name on the allow-list
//!   (`allowed_hosts`; `*` allows any). A rebinding page's own name is on none of these.
//! - **Origin** (against cross-site requests): a mutating request (`POST`, `PUT`, `PATCH`,
//!   `DELETE`) that carries an `Origin` is answered only when that origin is Prism itself (its
//!   authority equals the `Host`) or on the allow-list. Browsers send `Origin` on every
//!   cross-site request; other clients need not send one.
//! - **Content types** (checked by the handlers): appends must be `application/json` and
//!   uploads `application/wasm` or `application/octet-stream`, which a page cannot send across
//!   sites without a CORS preflight that Prism never grants.
//!
//! Refusals answer 403 with the JSON error.

use super::ApiError;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Which `Host` and `Origin` names are accepted beyond IP addresses and `localhost`: the
/// allow-list, and in a cluster the addresses the live nodes advertise (kept up to date by the
/// node's loop).
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts(Vec<String>, Peers);

/// The authorities (`host:port`) the cluster's live nodes advertise.
pub type Peers = std::sync::Arc<parking_lot::RwLock<Vec<String>>>;

impl AllowedHosts {
    /// The allow-list `names` (host names, `name:port`, or `*` for any).
    pub fn new(names: impl IntoIterator<Item = String>) -> AllowedHosts {
        AllowedHosts(
            names
                .into_iter()
                .map(|n| n.trim().to_ascii_lowercase())
                .filter(|n| !n.is_empty())
                .collect(),
            Peers::default(),
        )
    }

    /// The allow-list, with the cluster's `peers` beside it.
    pub fn with_peers(mut self, peers: Peers) -> AllowedHosts {
        self.1 = peers;
        self
    }

    /// Whether the authority `host[:port]` may name Prism.
    pub fn allows(&self, authority: &str) -> bool {
        let authority = authority.trim();
        let host = host_of(authority);
        host.parse::<std::net::IpAddr>().is_ok()
            || host.eq_ignore_ascii_case("localhost")
            || host
                .len()
                .checked_sub(".localhost".len())
                .and_then(|at| host.get(at..))
                .is_some_and(|end| end.eq_ignore_ascii_case(".localhost"))
            || self.0.iter().any(|allowed| {
                allowed == "*"
                    || allowed.eq_ignore_ascii_case(authority)
                    || allowed.eq_ignore_ascii_case(host)
            })
            || self
                .1
                .read()
                .iter()
                .any(|peer| peer.eq_ignore_ascii_case(authority))
    }
}

/// The host part of `host[:port]` (IPv6 literals without their brackets).
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// The authority (`host[:port]`) of an `Origin` value, `None` for `null` or garbage.
fn origin_authority(origin: &str) -> Option<&str> {
    let (_, rest) = origin.split_once("://")?;
    Some(rest.split('/').next().unwrap_or(rest)).filter(|a| !a.is_empty())
}

fn refused(message: String) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, message).into_response()
}

/// The 403 answer to a request from outside the boundary (see the module docs), `None` for
/// one inside it.
pub fn refusal(allowed_hosts: &AllowedHosts, request: &Request) -> Option<Response> {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default();
    if !allowed_hosts.allows(host) {
        return Some(refused(format!(
            "the Host {host:?} does not name this Prism: use its IP address or localhost, or add \
             the name to allowed_hosts (--allowed-host)"
        )));
    }
    let mutating = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let origin = request.headers().get(header::ORIGIN).filter(|_| mutating)?;
    let origin = origin.to_str().unwrap_or_default();
    let same = origin_authority(origin).is_some_and(|authority| {
        authority.eq_ignore_ascii_case(host) || allowed_hosts.allows_origin(authority)
    });
    (!same).then(|| {
        refused(format!(
            "a request from the web page at {origin:?} may not change this Prism"
        ))
    })
}

impl AllowedHosts {
    /// Whether a page served from `authority` (another origin) may change Prism: only when it
    /// is on the allow-list by name (IP addresses and localhost are not enough: any local page
    /// has those).
    fn allows_origin(&self, authority: &str) -> bool {
        let authority = authority.to_ascii_lowercase();
        let host = host_of(&authority);
        self.0
            .iter()
            .any(|allowed| allowed != "*" && (*allowed == authority || *allowed == host))
    }
}

/// Whether `request_type` (a `Content-Type` value) is one of `accepted` (parameters ignored).
pub fn content_type_is(headers: &axum::http::HeaderMap, accepted: &[&str]) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim())
        .is_some_and(|v| accepted.iter().any(|a| v.eq_ignore_ascii_case(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_s_peers_are_accepted_by_the_address_they_advertise() {
        let peers = Peers::default();
        let hosts = AllowedHosts::new(["prism.example".to_string()]).with_peers(peers.clone());
        assert!(!hosts.allows("node-2.internal:7070"));
        peers.write().push("node-2.internal:7070".into());
        assert!(hosts.allows("node-2.internal:7070"));
        assert!(hosts.allows("NODE-2.internal:7070"));
        assert!(!hosts.allows("node-2.internal:7071"));
        assert!(!hosts.allows("node-3.internal:7070"));
        assert!(hosts.allows("prism.example:1"));
        peers.write().clear();
        assert!(!hosts.allows("node-2.internal:7070"));
    }

    #[test]
    fn hosts_by_ip_or_localhost_pass_names_need_the_allow_list() {
        let none = AllowedHosts::default();
        for ok in [
            "127.0.0.1:7070",
            "localhost:7070",
            "LOCALHOST",
            "[::1]:7070",
            "10.1.2.3",
            "app.localhost:1",
        ] {
            assert!(none.allows(ok), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:7070",
            "localhost.evil.example",
            "",
        ] {
            assert!(!none.allows(refused), "{refused}");
        }
        let some = AllowedHosts::new(["prism.internal".to_string()]);
        assert!(some.allows("prism.internal:7070"));
        assert!(!some.allows("evil.example"));
        assert!(AllowedHosts::new(["*".to_string()]).allows("anything.example"));
    }

    #[test]
    fn origins_parse_to_their_authority() {
        assert_eq!(
            origin_authority("http://evil.example"),
            Some("evil.example")
        );
        assert_eq!(
            origin_authority("http://127.0.0.1:7070"),
            Some("127.0.0.1:7070")
        );
        assert_eq!(origin_authority("null"), None);
    }
}
