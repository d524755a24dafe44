//! Requests forwarded from node to node: a request about a projector goes to the node owning
//! it, with the lease revision the sender saw, this node's id (the loop guard: a forwarded
//! request is never forwarded again) and the cluster token. The answer, a change stream
//! included, streams back as it comes.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, header};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use std::time::Duration;

/// The id of the node that forwarded a request (its presence: a forwarded request).
pub const FORWARDED_BY: HeaderName = HeaderName::from_static("prism-forwarded-by");
/// The lease revision the sender saw the owner hold (0: a deploy creating the projector).
pub const LEASE_REVISION: HeaderName = HeaderName::from_static("prism-lease-revision");
/// The secret every node presents to the others.
pub const CLUSTER_TOKEN: HeaderName = HeaderName::from_static("prism-cluster-token");

/// Sends requests to other nodes.
#[derive(Clone)]
pub struct Forwarder {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    node: HeaderValue,
    token: HeaderValue,
}

/// Headers of one connection, not of the request (RFC 9110 §7.6.1), and those the first node
/// has dealt with (`Host` is the owner's; `Origin` was checked by the boundary there).
const NOT_FORWARDED: [HeaderName; 8] = [
    header::CONNECTION,
    header::HOST,
    header::ORIGIN,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::CONTENT_LENGTH,
];

impl Forwarder {
    /// A forwarder for node `node`, presenting `token`; with `tls`, it talks to other nodes
    /// only over TLS, trusting the cluster's CA and presenting this node's certificate.
    pub fn new(node: &str, token: &str, tls: Option<&super::PeerTls>) -> anyhow::Result<Forwarder> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let connector = match tls {
            Some(tls) => builder.with_tls_config(tls.client_config()?).https_only(),
            // No TLS between nodes: plain HTTP only (nothing is trusted for https).
            None => builder
                .with_tls_config(
                    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
                )
                .https_or_http(),
        }
        .enable_http1()
        .wrap_connector(connector);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Forwarder {
            client,
            node: HeaderValue::from_str(node)?,
            token: HeaderValue::from_str(token)?,
        })
    }

    /// Sends `method uri` with `headers` and `body` to the node at `base` (`http://host:port`),
    /// as forwarded under lease `revision`.
    pub async fn send(
        &self,
        base: &str,
        revision: u64,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Bytes,
    ) -> anyhow::Result<axum::response::Response> {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let target: Uri = format!("{}{path}", base.trim_end_matches('/')).parse()?;
        let mut request = Request::builder().method(method.clone()).uri(target);
        let out = request.headers_mut().expect("a fresh request");
        for (name, value) in headers {
            if !NOT_FORWARDED.contains(name) && !is_cluster_header(name) {
                out.append(name, value.clone());
            }
        }
        out.insert(FORWARDED_BY, self.node.clone());
        out.insert(LEASE_REVISION, HeaderValue::from(revision));
        out.insert(CLUSTER_TOKEN, self.token.clone());
        let response = self.client.request(request.body(Body::from(body))?).await?;
        let (mut parts, body) = response.into_parts();
        for name in [header::CONNECTION, header::TRANSFER_ENCODING] {
            parts.headers.remove(name);
        }
        Ok(axum::response::Response::from_parts(parts, Body::new(body)))
    }
}

/// Whether `name` is one of the headers nodes send each other (never taken from a client).
pub fn is_cluster_header(name: &HeaderName) -> bool {
    [FORWARDED_BY, LEASE_REVISION, CLUSTER_TOKEN].contains(name)
}
