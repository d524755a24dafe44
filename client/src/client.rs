//! The typed client: one method per route, answers as [`wire`](crate::wire) types, errors as
//! [`Error`].

use crate::wire::*;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL or the token cannot be used.
    #[error("{0}")]
    Usage(String),
    /// Prism could not be reached, or the answer could not be read.
    #[error("cannot reach the Prism server at {url} (is `prism serve` running?)")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// Prism answered with an error status; `body` is its JSON error (with any details).
    #[error("{status}: {message}")]
    Api {
        status: StatusCode,
        message: String,
        body: serde_json::Value,
    },
    /// A success answer that is not what the route promises.
    #[error("an unexpected answer from Prism: {0}")]
    Decode(String),
    /// A request body could not be made.
    #[error("cannot encode the request: {0}")]
    Encode(#[from] serde_json::Error),
}

impl Error {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An answer as it came: status, headers and body bytes (for callers that check statuses
/// themselves, such as tests probing error answers).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A view value with where it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewValue {
    /// The bytes the projector wrote.
    pub bytes: Vec<u8>,
    /// The value as JSON, when it is JSON.
    pub json: Option<serde_json::Value>,
    /// The module hash that wrote it (`Prism-Module`).
    pub module: String,
    /// The generation it was read from (`Prism-Generation`).
    pub generation: u64,
    /// The log position the answer reflects (`Prism-Checkpoint`).
    pub checkpoint: u64,
}

/// A client for one Prism server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    /// `base` parsed once, checked to take path segments.
    base_url: reqwest::Url,
    http: reqwest::Client,
}

impl Client {
    /// A client for the Prism at `base` (e.g. `http://127.0.0.1:7070`).
    pub fn new(base: &str) -> Result<Client, Error> {
        Client::with_token(base, None)
    }

    /// A client that sends `token` as a bearer token with every request.
    pub fn with_token(base: &str, token: Option<&str>) -> Result<Client, Error> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Error::Usage("the token must be printable ASCII".into()))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .pool_max_idle_per_host(256)
            .build()
            .map_err(|e| Error::Usage(format!("cannot build an HTTP client: {e}")))?;
        Client::with_http(base, http)
    }

    /// A client over an HTTP client of the caller's.
    pub fn with_http(base: &str, http: reqwest::Client) -> Result<Client, Error> {
        let parsed = reqwest::Url::parse(base)
            .map_err(|e| Error::Usage(format!("{base:?} is not a URL: {e}")))?;
        if parsed.cannot_be_a_base() {
            return Err(Error::Usage(format!("{base:?} cannot be a base URL")));
        }
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            base_url: parsed,
            http,
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path`, to build and send by hand.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path))
    }

    /// Sends `request` and returns the answer as it came, whatever its status.
    pub async fn send(&self, request: RequestBuilder) -> Result<Reply, Error> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| self.unreachable(e))?;
        Ok(Reply {
            status,
            headers,
            body: body.to_vec(),
        })
    }

    fn unreachable(&self, source: reqwest::Error) -> Error {
        Error::Unreachable {
            url: self.base.clone(),
            source,
        }
    }

    /// Sends `request`; a success answer decodes as `T`, an error answer becomes
    /// [`Error::Api`].
    async fn call<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, Error> {
        let reply = checked(self.send(request).await?)?;
        serde_json::from_slice(&reply.body).map_err(|e| Error::Decode(e.to_string()))
    }

    /// The URL of the path `segments` (each percent-encoded as needed).
    fn path(&self, segments: &[&str]) -> Result<reqwest::Url, Error> {
        let mut url = self.base_url.clone();
        url.path_segments_mut()
            .map_err(|()| Error::Usage("the URL cannot be a base".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn at(&self, method: Method, segments: &[&str]) -> Result<RequestBuilder, Error> {
        Ok(self.http.request(method, self.path(segments)?))
    }

    // --- streams ---

    /// Appends `events` to `stream` atomically (only if it holds exactly `expected_version`
    /// events, when given).
    pub async fn append(
        &self,
        stream: &str,
        events: &[NewEvent],
        expected_version: Option<u64>,
    ) -> Result<Appended, Error> {
        let request = self.append_request(stream, events, expected_version)?;
        self.call(request).await
    }

    fn append_request(
        &self,
        stream: &str,
        events: &[NewEvent],
        expected_version: Option<u64>,
    ) -> Result<RequestBuilder, Error> {
        Ok(self
            .at(Method::POST, &["streams", stream, "events"])?
            .query(&AppendParams { expected_version })
            .json(events))
    }

    /// [`append`](Self::append) under an idempotency key: safe to retry after a timeout or a
    /// lost connection — within Prism's idempotency window the same append under the same key
    /// appends nothing and answers the first one's result.
    pub async fn append_once(
        &self,
        key: &str,
        stream: &str,
        events: &[NewEvent],
        expected_version: Option<u64>,
    ) -> Result<Appended, Error> {
        let request = self
            .append_request(stream, events, expected_version)?
            .header("idempotency-key", key);
        self.call(request).await
    }

    /// Appends `events`, each on the stream it names, atomically at consecutive positions in
    /// order (`POST /events`); under `key`, safe to retry as [`append_once`](Self::append_once).
    /// Answers with `replayed` true when the append was made before under that key.
    pub async fn append_all(
        &self,
        events: &[StreamEvent],
        key: Option<&str>,
    ) -> Result<(AppendedAll, bool), Error> {
        let body = serde_json::to_vec(events).map_err(|e| Error::Usage(e.to_string()))?;
        self.append_all_json(body, key, None).await
    }

    /// [`append_all`](Self::append_all) with the body given as JSON text: an array of
    /// [`StreamEvent`]s, sent as it is; with `expected_head`, only if the log's last position
    /// is that (else a 412 [`Error::Api`]).
    pub async fn append_all_json(
        &self,
        body: Vec<u8>,
        key: Option<&str>,
        expected_head: Option<u64>,
    ) -> Result<(AppendedAll, bool), Error> {
        let mut request = self
            .at(Method::POST, &["events"])?
            .query(&AppendAllParams { expected_head })
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let reply = checked(self.send(request).await?)?;
        let replayed = reply
            .headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        let appended =
            serde_json::from_slice(&reply.body).map_err(|e| Error::Decode(e.to_string()))?;
        Ok((appended, replayed))
    }

    /// A page of `stream`'s events.
    pub async fn read_stream(
        &self,
        stream: &str,
        params: &ReadParams,
    ) -> Result<StreamPage, Error> {
        let request = self.at(Method::GET, &["streams", stream])?.query(params);
        self.call(request).await
    }

    /// A page of stream names with their versions.
    pub async fn streams(&self, params: &ListParams) -> Result<StreamList, Error> {
        self.call(self.at(Method::GET, &["streams"])?.query(params))
            .await
    }

    // --- projectors ---

    /// Deploys `wasm` as `name` (or, with an empty `wasm` and `params.module`, a stored module).
    pub async fn deploy(
        &self,
        name: &str,
        wasm: Vec<u8>,
        params: &DeployParams,
    ) -> Result<Deployed, Error> {
        let request = self
            .at(Method::PUT, &["projectors", name])?
            .query(params)
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .body(wasm);
        self.call(request).await
    }

    /// Every projector's status.
    pub async fn projectors(&self) -> Result<ProjectorList, Error> {
        self.call(self.at(Method::GET, &["projectors"])?).await
    }

    /// The cluster as the node asked sees it: its live nodes and each projector's owner
    /// (404 from a Prism running alone).
    pub async fn cluster(&self) -> Result<ClusterStatus, Error> {
        self.call(self.at(Method::GET, &["cluster"])?).await
    }

    /// Drains node `node` of the cluster (`drained`), or undoes it.
    pub async fn drain(&self, node: &str, drained: bool) -> Result<Drain, Error> {
        let method = if drained {
            Method::POST
        } else {
            Method::DELETE
        };
        self.call(self.at(method, &["cluster", "nodes", node, "drain"])?)
            .await
    }

    /// Has the owner of projector `name` upload a snapshot of each of its views that changed.
    pub async fn snapshot(&self, name: &str) -> Result<Snapshots, Error> {
        self.call(self.at(Method::POST, &["projectors", name, "snapshot"])?)
            .await
    }

    /// One projector's status.
    pub async fn projector(&self, name: &str) -> Result<Projector, Error> {
        self.call(self.at(Method::GET, &["projectors", name])?)
            .await
    }

    /// `pause`, `resume` or `reset` a projector; its status after.
    pub async fn lifecycle(&self, name: &str, action: &str) -> Result<LifecycleReply, Error> {
        self.call(self.at(Method::POST, &["projectors", name, action])?)
            .await
    }

    /// Stops a projector and deletes its views.
    pub async fn delete(&self, name: &str) -> Result<LifecycleReply, Error> {
        self.call(self.at(Method::DELETE, &["projectors", name])?)
            .await
    }

    /// Replays a projector from scratch and compares with its live view.
    pub async fn verify(&self, name: &str) -> Result<Verification, Error> {
        self.call(self.at(Method::POST, &["projectors", name, "verify"])?)
            .await
    }

    /// A page of a projector's dead letters.
    pub async fn dead_letters(
        &self,
        name: &str,
        params: &DeadLetterParams,
    ) -> Result<DeadLetters, Error> {
        let request = self
            .at(Method::GET, &["projectors", name, "dead-letters"])?
            .query(params);
        self.call(request).await
    }

    /// Applies the dead letter at `position` again with the projector's current code.
    pub async fn retry(&self, name: &str, position: u64) -> Result<Retried, Error> {
        let position = position.to_string();
        let segments = ["projectors", name, "dead-letters", &position, "retry"];
        self.call(self.at(Method::POST, &segments)?).await
    }

    /// Discards the dead letter at `position`.
    pub async fn discard(&self, name: &str, position: u64) -> Result<Discarded, Error> {
        let position = position.to_string();
        let segments = ["projectors", name, "dead-letters", &position];
        self.call(self.at(Method::DELETE, &segments)?).await
    }

    /// The lines a projector's modules logged.
    pub async fn logs(&self, name: &str, params: &LogParams) -> Result<LogLines, Error> {
        let request = self
            .at(Method::GET, &["projectors", name, "logs"])?
            .query(params);
        self.call(request).await
    }

    /// The stored modules.
    pub async fn modules(&self) -> Result<Modules, Error> {
        self.call(self.at(Method::GET, &["modules"])?).await
    }

    // --- views ---

    /// The value under `key` (which may contain `/`) in projector `name`'s view; `None` when
    /// the view has no such key.
    pub async fn view_value(
        &self,
        name: &str,
        key: &str,
        consistency: &Consistency,
    ) -> Result<Option<ViewValue>, Error> {
        let mut segments = vec!["projectors", name, "view"];
        segments.extend(key.split('/'));
        let request = self.at(Method::GET, &segments)?.query(consistency);
        let reply = self.send(request).await?;
        if reply.status == StatusCode::NOT_FOUND && self.projector(name).await.is_ok() {
            return Ok(None);
        }
        let reply = checked(reply)?;
        let header = |name: &str| {
            reply
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        Ok(Some(ViewValue {
            json: serde_json::from_slice(&reply.body).ok(),
            module: header("prism-module"),
            generation: header("prism-generation").parse().unwrap_or_default(),
            checkpoint: header("prism-checkpoint").parse().unwrap_or_default(),
            bytes: reply.body,
        }))
    }

    /// A page of projector `name`'s view in key order.
    pub async fn scan(&self, name: &str, params: &ScanParams) -> Result<ScanPage, Error> {
        let request = self
            .at(Method::GET, &["projectors", name, "view"])?
            .query(params);
        self.call(request).await
    }

    // --- operations ---

    /// Liveness.
    pub async fn health(&self) -> Result<Health, Error> {
        self.call(self.at(Method::GET, &["health"])?).await
    }

    /// Readiness: whether Prism is ready (200) or not (503), and the details when the client
    /// may read them (without the read token, when one is set, Prism answers only the status).
    pub async fn ready(&self) -> Result<(bool, Option<Readiness>), Error> {
        let reply = self.send(self.at(Method::GET, &["ready"])?).await?;
        let ready = reply.status.is_success();
        if !ready && reply.status != StatusCode::SERVICE_UNAVAILABLE {
            return Err(checked(reply).unwrap_err());
        }
        if reply.body.is_empty() {
            return Ok((ready, None));
        }
        let details =
            serde_json::from_slice(&reply.body).map_err(|e| Error::Decode(e.to_string()))?;
        Ok((ready, Some(details)))
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> Result<String, Error> {
        let reply = checked(self.send(self.at(Method::GET, &["metrics"])?).await?)?;
        String::from_utf8(reply.body).map_err(|e| Error::Decode(e.to_string()))
    }
}

/// A success answer, or its error as [`Error::Api`].
fn checked(reply: Reply) -> Result<Reply, Error> {
    if reply.status.is_success() {
        return Ok(reply);
    }
    let body = reply.json();
    let message = body["error"].as_str().map_or_else(
        || String::from_utf8_lossy(&reply.body).into_owned(),
        str::to_string,
    );
    Err(Error::Api {
        status: reply.status,
        message,
        body,
    })
}
