//! The browser boundary over a real socket: a DNS-rebinding `Host`, a foreign `Origin` and
//! the content types a page can send across sites are refused; the API's own clients and the
//! dashboard (same origin) go through.

mod common;

use common::artifacts;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_web_page_cannot_reach_prism() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    let port = server.addr().port();
    let send = |method: &str, path: &str, headers: &[(&str, &str)], body: &str| {
        let mut request = client.request(method, path).body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
    };
    let json_type = ("content-type", "application/json");
    let events = r#"[{"type": "Clicked", "data": {}}]"#;

    // DNS rebinding: the attacker's name resolves to 127.0.0.1, the browser sends its Host.
    let rebound = client
        .send(send("GET", "/projectors", &[("host", "evil.example")], ""))
        .await;
    assert_eq!(rebound.status, 403, "{}", rebound.body);
    assert!(rebound.body["error"].as_str().unwrap().contains("Host"));
    let rebound_append = client
        .send(send(
            "POST",
            "/streams/s/events",
            &[("host", &format!("evil.example:{port}")), json_type],
            events,
        ))
        .await;
    assert_eq!(rebound_append.status, 403);
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let reply = client
            .send(send("GET", "/health", &[("host", &host)], ""))
            .await;
        assert_eq!(reply.status, 200, "{host}");
    }

    // A cross-site form or fetch: refused by its Origin, whatever its content type.
    for content_type in ["text/plain", "application/json"] {
        let reply = client
            .send(send(
                "POST",
                "/streams/s/events",
                &[
                    ("origin", "http://evil.example"),
                    ("content-type", content_type),
                ],
                events,
            ))
            .await;
        assert_eq!(reply.status, 403, "{content_type}: {}", reply.body);
    }
    let reply = client
        .send(send(
            "POST",
            "/projectors/none/pause",
            &[("origin", "null")],
            "",
        ))
        .await;
    assert_eq!(reply.status, 403);

    // Content types a page can send without a preflight are not an append or an upload.
    for headers in [vec![("content-type", "text/plain")], vec![]] {
        let reply = client
            .send(send("POST", "/streams/s/events", &headers, events))
            .await;
        assert_eq!(reply.status, 415, "{headers:?}: {}", reply.body);
    }
    let upload = client
        .send(
            client
                .request("PUT", "/projectors/tally")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(artifacts::read(artifacts::TALLY_V1)),
        )
        .await;
    assert_eq!(upload.status, 415, "{}", upload.body);
    // Nothing of the refused requests was kept.
    let streams = client.get("/streams").await;
    assert_eq!(streams.body["streams"], json!([]));
    assert_eq!(client.get("/projectors/tally").await.status, 404);

    // The API's clients and the page's own origin go through.
    client.deploy("tally", artifacts::TALLY_V1).await;
    let same_origin = format!("http://127.0.0.1:{port}");
    let reply = client
        .send(send(
            "POST",
            "/streams/s/events",
            &[("origin", &same_origin), json_type],
            events,
        ))
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    client.wait_caught_up("tally").await;
    assert_eq!(client.view("tally", "applied").await, json!(1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allow_listed_name_reaches_prism() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start_with(dir.path(), |config| {
        config.allowed_hosts = vec!["prism.internal".into()];
    })
    .await;
    let reply = client
        .send(
            client
                .request("GET", "/health")
                .header("host", "prism.internal:7070"),
        )
        .await;
    assert_eq!(reply.status, 200);
    let other = client
        .send(
            client
                .request("GET", "/health")
                .header("host", "other.internal"),
        )
        .await;
    assert_eq!(other.status, 403);
    server.stop().await;
}
