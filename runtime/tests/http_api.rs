//! Bad input gets a clear JSON error with the right status, and nothing is persisted by the
//! failed request; Prism keeps serving throughout.

mod common;

use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_json_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client
        .append("s-1", json!([{"type": "T", "data": {"n": 1}}]))
        .await;

    let long_key_path = format!(
        "/projectors/p/view/{}",
        "k".repeat(prism::http::MAX_KEY_LEN + 1)
    );
    let cases: Vec<(&str, &str, &str, Vec<u8>, u16)> = vec![
        (
            "malformed JSON",
            "POST",
            "/streams/s-1/events",
            b"[{".to_vec(),
            400,
        ),
        (
            "not an array",
            "POST",
            "/streams/s-1/events",
            br#"{"type":"T","data":1}"#.to_vec(),
            400,
        ),
        (
            "missing type",
            "POST",
            "/streams/s-1/events",
            br#"[{"data":1}]"#.to_vec(),
            400,
        ),
        (
            "missing data",
            "POST",
            "/streams/s-1/events",
            br#"[{"type":"T"}]"#.to_vec(),
            400,
        ),
        (
            "metadata not an object",
            "POST",
            "/streams/s-1/events",
            br#"[{"type":"T","data":1,"metadata":[1]}]"#.to_vec(),
            400,
        ),
        (
            "empty batch",
            "POST",
            "/streams/s-1/events",
            b"[]".to_vec(),
            400,
        ),
        (
            "empty type",
            "POST",
            "/streams/s-1/events",
            br#"[{"type":"","data":1}]"#.to_vec(),
            400,
        ),
        (
            "bad expected version",
            "POST",
            "/streams/s-1/events?expected_version=x",
            br#"[{"type":"T","data":1}]"#.to_vec(),
            400,
        ),
        (
            "version conflict",
            "POST",
            "/streams/s-1/events?expected_version=0",
            br#"[{"type":"T","data":1},{"type":"T","data":2}]"#.to_vec(),
            409,
        ),
        (
            "append too large",
            "POST",
            "/streams/s-1/events",
            vec![b' '; prism::http::MAX_APPEND_BODY + 1],
            413,
        ),
        (
            "random bytes as a module",
            "PUT",
            "/projectors/p",
            b"definitely not wasm".to_vec(),
            415,
        ),
        (
            "core module without component type",
            "PUT",
            "/projectors/p",
            b"\0asm\x01\0\0\0".to_vec(),
            422,
        ),
        (
            "component of another world",
            "PUT",
            "/projectors/p",
            b"\0asm\x0d\0\x01\0".to_vec(),
            422,
        ),
        (
            "truncated component",
            "PUT",
            "/projectors/p",
            {
                let wasm = common::artifacts::read(common::artifacts::EVENT_COUNTER);
                wasm[..wasm.len() / 2].to_vec()
            },
            422,
        ),
        (
            "module too large",
            "PUT",
            "/projectors/p",
            vec![0; prism::http::MAX_MODULE_BODY + 1],
            413,
        ),
        (
            "bad projector name",
            "PUT",
            "/projectors/bad%20name",
            common::artifacts::read(common::artifacts::EVENT_COUNTER),
            400,
        ),
        ("unknown stream", "GET", "/streams/nope", vec![], 404),
        ("unknown projector", "GET", "/projectors/nope", vec![], 404),
        (
            "unknown projector view",
            "GET",
            "/projectors/nope/view/k",
            vec![],
            404,
        ),
        (
            "unknown projector scan",
            "GET",
            "/projectors/nope/view",
            vec![],
            404,
        ),
        ("unknown route", "GET", "/nowhere", vec![], 404),
        (
            "read limit too large",
            "GET",
            "/streams/s-1?limit=100000",
            vec![],
            400,
        ),
        (
            "too many events in one append",
            "POST",
            "/streams/s-1/events",
            {
                let events: Vec<_> = (0..prism::http::MAX_APPEND_EVENTS + 1)
                    .map(|_| json!({"type": "T", "data": 0}))
                    .collect();
                serde_json::to_vec(&events).unwrap()
            },
            413,
        ),
        ("view key too long", "GET", &long_key_path, vec![], 400),
    ];
    for (what, method, path, body, status) in cases {
        let request = match method {
            "POST" => client
                .request("POST", path)
                .header("content-type", "application/json"),
            "PUT" => client
                .request("PUT", path)
                .header("content-type", "application/wasm"),
            _ => client.request("GET", path),
        };
        let reply = request.body(body).send().await.unwrap();
        assert_eq!(reply.status().as_u16(), status, "{what}");
        let body: serde_json::Value = reply
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: the error body is not JSON: {e}"));
        let message = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {body}"));
        assert!(!message.is_empty(), "{what}");
    }

    // A refused import is named.
    let wasi = client.put_raw("/projectors/p", wasi_importer()).await;
    let message = wasi.body["error"].as_str().unwrap();
    assert!(message.contains("wasi:cli/environment@0.2.0"), "{message}");

    // The conflict says what it found.
    let conflict = client
        .post_raw(
            "/streams/s-1/events?expected_version=5",
            r#"[{"type":"T","data":1}]"#,
        )
        .await;
    assert_eq!(conflict.body["actual_version"], 1);
    assert_eq!(conflict.body["expected_version"], 5);

    // Nothing was persisted by any failed request.
    let stream = client.get("/streams/s-1").await.body;
    assert_eq!(stream["version"], 1);
    assert_eq!(
        client.get("/projectors").await.body["projectors"],
        json!([])
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("modules"))
            .unwrap()
            .count(),
        0
    );

    // Still serving: a good deploy and append work.
    client
        .deploy("counter", common::artifacts::EVENT_COUNTER)
        .await;
    client
        .append("s-1", json!([{"type": "T", "data": 2}]))
        .await;
    client.wait_caught_up("counter").await;
    assert_eq!(client.view("counter", "total").await, json!(2));

    // Views: an unknown key is a 404 JSON error; a bad scan limit a 400.
    let missing = client.get("/projectors/counter/view/no-such-key").await;
    assert_eq!(
        (missing.status, missing.body["error"].is_string()),
        (404, true)
    );
    let bad_limit = client.get("/projectors/counter/view?limit=0").await;
    assert_eq!(bad_limit.status, 400);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redeploy_with_the_same_schema_continues_from_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    client
        .deploy("orders", common::artifacts::ORDER_TOTALS)
        .await;
    common::append_history(&client).await;
    client.wait_caught_up("orders").await;

    // The same code again (as a core module this time): continue mode, no event applied twice.
    let deployed = client
        .deploy("orders", common::artifacts::ORDER_TOTALS_CORE)
        .await;
    assert_eq!(deployed["mode"], "continue");
    client
        .append("order-o7", json!([{"type": "OrderPlaced", "data": {"order_id": "o7", "customer": "c2", "total_cents": 5}}]))
        .await;
    client.wait_caught_up("orders").await;
    assert_eq!(
        client.view("orders", "customer/c2").await,
        json!({"orders": 2, "total_cents": 705, "cancelled": 0})
    );
    assert_eq!(client.view("orders", "stats").await, json!({"ignored": 3}));
    server.stop().await;
}

/// A component that imports a WASI interface (and exports nothing).
fn wasi_importer() -> Vec<u8> {
    wat::parse_str(r#"(component (import "wasi:cli/environment@0.2.0" (instance)))"#).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_tokens_guard_admin_write_and_read_routes() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start_with(dir.path(), |config| {
        config.tokens = prism::http::Tokens {
            admin: Some("admin-secret".into()),
            write: Some("write-secret".into()),
            read: Some("read-secret".into()),
        };
    })
    .await;
    let wasm = common::artifacts::read(common::artifacts::EVENT_COUNTER);
    let events = r#"[{"type":"T","data":1}]"#;
    let send = |method: reqwest::Method, path: &str, token: Option<&str>, body: Vec<u8>| {
        let content_type = if method == reqwest::Method::PUT {
            "application/wasm"
        } else {
            "application/json"
        };
        let mut request = client
            .api
            .request(method, path)
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap() }
    };
    use reqwest::Method;
    /// (method, path, token, body, expected status)
    type Case<'a> = (Method, &'a str, Option<&'a str>, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        (Method::GET, "/health", None, vec![], 200),
        (Method::PUT, "/projectors/c", None, wasm.clone(), 401),
        (
            Method::PUT,
            "/projectors/c",
            Some("write-secret"),
            wasm.clone(),
            401,
        ),
        (
            Method::PUT,
            "/projectors/c",
            Some("admin-secretX"),
            wasm.clone(),
            401,
        ),
        (
            Method::PUT,
            "/projectors/c",
            Some("admin-secret"),
            wasm.clone(),
            201,
        ),
        (Method::POST, "/streams/s/events", None, events.into(), 401),
        (
            Method::POST,
            "/streams/s/events",
            Some("read-secret"),
            events.into(),
            401,
        ),
        (
            Method::POST,
            "/streams/s/events",
            Some("write-secret"),
            events.into(),
            201,
        ),
        (
            Method::POST,
            "/streams/s/events",
            Some("admin-secret"),
            events.into(),
            201,
        ),
        (Method::GET, "/projectors", None, vec![], 401),
        (Method::GET, "/projectors", Some("read-secret"), vec![], 200),
        (Method::GET, "/streams/s", Some("write-secret"), vec![], 200),
        (
            Method::POST,
            "/projectors/c/pause",
            Some("read-secret"),
            vec![],
            401,
        ),
        (
            Method::POST,
            "/projectors/c/pause",
            Some("admin-secret"),
            vec![],
            200,
        ),
        (
            Method::DELETE,
            "/projectors/c",
            Some("write-secret"),
            vec![],
            401,
        ),
    ];
    for (method, path, token, body, status) in cases {
        let reply = send(method.clone(), path, token, body).await;
        assert_eq!(
            reply.status().as_u16(),
            status,
            "{method} {path} with {token:?}"
        );
        if status == 401 {
            assert_eq!(reply.headers()["www-authenticate"], "Bearer");
            let body: serde_json::Value = reply.json().await.unwrap();
            assert!(
                body["error"].as_str().unwrap().contains("bearer token"),
                "{body}"
            );
        }
    }
    // Refused requests changed nothing: the projector exists once, two events were appended.
    let stream = send(Method::GET, "/streams/s", Some("read-secret"), vec![]).await;
    let stream: serde_json::Value = stream.json().await.unwrap();
    assert_eq!(stream["version"], 2);
    server.stop().await;
}
