//! `GET /openapi.json`: the served description is OpenAPI 3.1, lists exactly the routes the
//! router serves, and real answers validate against its response schemas.

mod common;

use common::artifacts;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// A reply as it came: status, `Content-Type`, and body.
struct Raw {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

async fn send(client: &common::Client, method: &str, path: &str, body: Vec<u8>) -> Raw {
    let content_type = if method == "PUT" {
        "application/wasm"
    } else {
        "application/json"
    };
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let response = client
        .api
        .request(method, path)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    // An event stream does not end: its headers are enough.
    let body = if content_type.starts_with("text/event-stream") {
        Vec::new()
    } else {
        response.bytes().await.unwrap().to_vec()
    };
    Raw {
        status,
        content_type,
        body,
    }
}

/// The served description.
struct Spec(Value);

/// `text/html; charset=utf-8` and `text/html;charset=UTF-8` are the same media type.
fn media(content_type: &str) -> String {
    content_type.replace(' ', "").to_ascii_lowercase()
}

impl Spec {
    fn operation(&self, method: &str, template: &str) -> Result<&Value, String> {
        self.0["paths"][template]
            .get(method.to_ascii_lowercase())
            .ok_or_else(|| format!("{method} {template} is not in the description"))
    }

    /// A schema of the description, standalone: its `$ref`s resolve into the components.
    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let mut root = schema.as_object().expect("a schema is an object").clone();
        root.insert("components".into(), self.0["components"].clone());
        jsonschema::draft202012::new(&Value::Object(root)).expect("the schema compiles")
    }

    /// Whether `body` validates against `schema`; the errors when it does not.
    fn validate(&self, schema: &Value, body: &Value) -> Result<(), String> {
        let validator = self.validator(schema);
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Whether `reply` is an answer the description allows for `method template`: a documented
    /// status and media type, and a JSON body valid against its schema.
    fn check(&self, method: &str, template: &str, reply: &Raw) -> Result<(), String> {
        let operation = self.operation(method, template)?;
        let response = operation["responses"]
            .get(reply.status.to_string())
            .ok_or_else(|| {
                format!(
                    "{method} {template}: status {} is not documented",
                    reply.status
                )
            })?;
        let content = response["content"]
            .as_object()
            .ok_or_else(|| format!("{method} {template} {}: no content", reply.status))?;
        let (media_type, documented) = content
            .iter()
            .find(|(documented, _)| media(documented) == media(&reply.content_type))
            .ok_or_else(|| {
                format!(
                    "{method} {template} {}: Content-Type {:?} is not one of {:?}",
                    reply.status,
                    reply.content_type,
                    content.keys().collect::<Vec<_>>()
                )
            })?;
        if media_type.starts_with("application/json") {
            let body: Value = serde_json::from_slice(&reply.body)
                .map_err(|e| format!("{method} {template}: not JSON: {e}"))?;
            self.validate(&documented["schema"], &body).map_err(|e| {
                format!(
                    "{method} {template} {}: {body} is invalid: {e}",
                    reply.status
                )
            })?;
        } else if media_type.starts_with("text/") {
            std::str::from_utf8(&reply.body)
                .map_err(|e| format!("{method} {template}: not text: {e}"))?;
        }
        Ok(())
    }

    /// Every (method, path template) the description lists.
    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut operations = BTreeSet::new();
        for (path, item) in self.0["paths"].as_object().unwrap() {
            for method in [
                "get", "put", "post", "delete", "patch", "head", "options", "trace",
            ] {
                if item.get(method).is_some() {
                    operations.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        operations
    }
}

/// The handlers `runtime/src/http/mod.rs` registers, read from its `routes!(...)` calls; and
/// a check that no file of the HTTP module registers a route any other way (which would serve
/// a route the description does not list).
fn registered_handlers() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut handlers = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        let code: String = source
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for undocumented in [
            ".route(",
            ".route_service(",
            ".nest(",
            ".nest_service(",
            ".merge(",
            "routing::",
        ] {
            assert!(
                !code.contains(undocumented),
                "{}: `{undocumented}` registers a route the OpenAPI description does not list; \
                 register it with `.routes(routes!(handler))` and a `#[utoipa::path]`",
                path.display()
            );
        }
        let mut rest = code.as_str();
        while let Some(start) = rest.find("routes!(") {
            let after = &rest[start + "routes!(".len()..];
            let end = after.find(')').expect("routes!( is closed");
            handlers.extend(
                after[..end]
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(str::to_string),
            );
            rest = &after[end..];
        }
    }
    handlers
}

/// Every `$ref` in a document.
fn references(value: &Value) -> Vec<String> {
    match value {
        Value::Object(map) => map
            .iter()
            .flat_map(|(k, v)| match (k.as_str(), v) {
                ("$ref", Value::String(r)) => vec![r.clone()],
                _ => references(v),
            })
            .collect(),
        Value::Array(items) => items.iter().flat_map(references).collect(),
        _ => Vec::new(),
    }
}

/// A path for a template, with parameters that name nothing that exists.
fn probe_path(template: &str) -> String {
    template
        .replace("{name}", "no-such-projector")
        .replace("{stream}", "no-such-stream")
        .replace("{key}", "no/such/key")
        .replace("{position}", "1")
        .replace("{file}", "no-such-asset")
}

#[tokio::test]
async fn the_description_lists_every_route_and_real_answers_match_it() {
    let data = tempfile::tempdir().unwrap();
    let (server, client) = common::start(data.path()).await;

    // (1) The served description is OpenAPI 3.1.
    let served = send(&client, "GET", "/openapi.json", Vec::new()).await;
    assert_eq!(served.status, 200);
    assert!(served.content_type.starts_with("application/json"));
    let text = String::from_utf8(served.body.clone()).unwrap();
    let parsed = oas3::from_json(&text).expect("the description parses as OpenAPI 3.1");
    let version = parsed
        .validate_version()
        .expect("a supported OpenAPI version");
    assert_eq!(version.major, 3);
    let spec = Spec(serde_json::from_str(&text).unwrap());
    assert_eq!(spec.0["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        spec.0["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // It describes itself.
    spec.check("GET", "/openapi.json", &served).unwrap();
    // Every `$ref` names a component that exists.
    let refs = references(&spec.0);
    assert!(!refs.is_empty());
    for reference in &refs {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{reference} is not local"));
        assert!(
            spec.0.pointer(pointer).is_some(),
            "{reference} names nothing"
        );
    }
    // Every schema of every response compiles, with its `$ref`s resolved.
    let operations = spec.operations();
    for (method, path) in &operations {
        let operation = spec.operation(method, path).unwrap();
        for (status, response) in operation["responses"].as_object().unwrap() {
            for (media_type, content) in response["content"].as_object().into_iter().flatten() {
                assert!(
                    content.get("schema").is_some(),
                    "{method} {path} {status} {media_type}: no schema"
                );
                spec.validator(&content["schema"]);
            }
        }
        assert!(
            operation["responses"]
                .as_object()
                .unwrap()
                .keys()
                .any(|s| s.starts_with('2')),
            "{method} {path}: no success response"
        );
        // Path parameters are exactly the template's.
        let declared: BTreeSet<&str> = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "path")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        let in_template: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        assert_eq!(declared, in_template, "{method} {path}: path parameters");
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            assert!(
                parameter["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{method} {path}: parameter {} has no description",
                parameter["name"]
            );
        }
    }

    // (1) It lists exactly the routes the router serves: every route is registered through
    // `routes!`, which documents it (and nothing registers one otherwise)...
    let handlers = registered_handlers();
    assert_eq!(
        handlers.len(),
        operations.len(),
        "handlers registered with routes!: {handlers:?}; operations described: {operations:?}"
    );
    let ids: BTreeSet<&str> = operations
        .iter()
        .map(|(m, p)| {
            spec.operation(m, p).unwrap()["operationId"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(ids.len(), operations.len(), "operation ids are unique");
    // ...and every described operation is served: a request reaches its handler (not the
    // fallback, not 405), and its answer is one the description allows.
    for (method, template) in &operations {
        let reply = send(&client, method, &probe_path(template), Vec::new()).await;
        assert_ne!(reply.status, 405, "{method} {template} is not served");
        assert_ne!(
            reply.json()["error"],
            "no such route",
            "{method} {template} is not served"
        );
        spec.check(method, template, &reply).unwrap();
    }
    // A route that does not exist hits the fallback, which the probe above tells apart.
    let missing = send(&client, "GET", "/no-such-route", Vec::new()).await;
    assert_eq!(missing.json()["error"], "no such route");
    assert!(spec.0["paths"].get("/no-such-route").is_none());

    // (2) Real answers validate against the description.
    let deployed = send(
        &client,
        "PUT",
        "/projectors/event-counter",
        artifacts::read(artifacts::EVENT_COUNTER),
    )
    .await;
    assert_eq!(deployed.status, 201, "{}", deployed.json());
    spec.check("PUT", "/projectors/{name}", &deployed).unwrap();
    let head = common::append_history(&client).await;
    let appended = send(
        &client,
        "POST",
        "/streams/order-9/events",
        json!([{"type": "OrderPlaced", "data": {"order": "o9"}, "metadata": {"by": "test"}}])
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(appended.status, 201);
    spec.check("POST", "/streams/{stream}/events", &appended)
        .unwrap();
    assert_eq!(appended.json()["last_position"], head + 1);
    client.wait_caught_up("event-counter").await;

    let reads = [
        ("/projectors", "/projectors", 200),
        ("/projectors/event-counter", "/projectors/{name}", 200),
        (
            "/projectors/event-counter/view/total",
            "/projectors/{name}/view/{key}",
            200,
        ),
        (
            "/projectors/event-counter/view/type/OrderPlaced?min_position=1&timeout_ms=1000",
            "/projectors/{name}/view/{key}",
            200,
        ),
        (
            "/projectors/event-counter/view?prefix=type/&limit=3",
            "/projectors/{name}/view",
            200,
        ),
        ("/streams/order-9?from=1&limit=10", "/streams/{stream}", 200),
        ("/streams?limit=2", "/streams", 200),
        (
            "/projectors/event-counter/logs",
            "/projectors/{name}/logs",
            200,
        ),
        (
            "/projectors/event-counter/dead-letters",
            "/projectors/{name}/dead-letters",
            200,
        ),
        ("/modules", "/modules", 200),
        ("/health", "/health", 200),
        ("/ready", "/ready", 200),
        ("/metrics", "/metrics", 200),
        (
            "/projectors/event-counter/changes",
            "/projectors/{name}/changes",
            200,
        ),
        ("/", "/", 200),
        ("/dashboard/app.js", "/dashboard/{file}", 200),
        ("/dashboard/style.css", "/dashboard/{file}", 200),
        // Errors.
        ("/projectors/nobody", "/projectors/{name}", 404),
        (
            "/projectors/event-counter/view/no-such-key",
            "/projectors/{name}/view/{key}",
            404,
        ),
        ("/streams/order-9?limit=0", "/streams/{stream}", 400),
        (
            "/projectors/event-counter/view?limit=5000",
            "/projectors/{name}/view",
            400,
        ),
        (
            "/projectors/event-counter/logs?bogus=1",
            "/projectors/{name}/logs",
            400,
        ),
        (
            "/projectors/event-counter/view/total?min_position=999999&timeout_ms=20",
            "/projectors/{name}/view/{key}",
            504,
        ),
    ];
    for (path, template, status) in reads {
        let reply = send(&client, "GET", path, Vec::new()).await;
        assert_eq!(reply.status, status, "GET {path}: {}", reply.json());
        spec.check("GET", template, &reply).unwrap();
    }
    let scan = send(
        &client,
        "GET",
        "/projectors/event-counter/view?limit=3",
        Vec::new(),
    )
    .await;
    assert_eq!(scan.json()["items"].as_array().unwrap().len(), 3);
    assert!(scan.json()["next"].is_string());

    let writes = [
        (
            "POST",
            "/projectors/event-counter/verify",
            "/projectors/{name}/verify",
            vec![],
            200,
        ),
        (
            "POST",
            "/projectors/event-counter/pause",
            "/projectors/{name}/pause",
            vec![],
            200,
        ),
        (
            "POST",
            "/projectors/event-counter/resume",
            "/projectors/{name}/resume",
            vec![],
            200,
        ),
        (
            "POST",
            "/streams/order-9/events?expected_version=7",
            "/streams/{stream}/events",
            b"[{\"type\": \"OrderPlaced\", \"data\": {}}]".to_vec(),
            409,
        ),
        (
            "POST",
            "/streams/order-9/events",
            "/streams/{stream}/events",
            b"{}".to_vec(),
            400,
        ),
        (
            "POST",
            "/events",
            "/events",
            b"[{\"stream\": \"order-10\", \"type\": \"OrderPlaced\", \"data\": {}}, \
               {\"stream\": \"order-11\", \"type\": \"OrderPlaced\", \"data\": {}}]"
                .to_vec(),
            201,
        ),
        (
            "POST",
            "/events",
            "/events",
            b"[{\"stream\": \"order-12\", \"type\": \"OrderPlaced\", \"data\": {}}, \
               {\"stream\": \"order-10\", \"type\": \"OrderPlaced\", \"data\": {}, \
                \"expected_version\": 5}]"
                .to_vec(),
            409,
        ),
        (
            "POST",
            "/events",
            "/events",
            b"[{\"type\": \"T\"}]".to_vec(),
            400,
        ),
        (
            "PUT",
            "/projectors/not-wasm",
            "/projectors/{name}",
            b"hello".to_vec(),
            415,
        ),
        (
            "PUT",
            "/projectors/broken",
            "/projectors/{name}",
            b"\0asm\x01\0\0\0\x05".to_vec(),
            422,
        ),
        (
            "POST",
            "/projectors/event-counter/dead-letters/3/retry",
            "/projectors/{name}/dead-letters/{position}/retry",
            vec![],
            404,
        ),
        (
            "DELETE",
            "/projectors/event-counter/dead-letters/x",
            "/projectors/{name}/dead-letters/{position}",
            vec![],
            400,
        ),
        // Every extractor rejection answers the JSON error shape the description states.
        (
            "POST",
            "/projectors/event-counter/dead-letters/-1/retry",
            "/projectors/{name}/dead-letters/{position}/retry",
            vec![],
            400,
        ),
        (
            "GET",
            "/projectors/event-counter/dead-letters?after=soon",
            "/projectors/{name}/dead-letters",
            vec![],
            400,
        ),
        (
            "GET",
            "/projectors/event-counter/view/total?min_position=soon",
            "/projectors/{name}/view/{key}",
            vec![],
            400,
        ),
        (
            "GET",
            "/projectors/event-counter/view?limit=-3",
            "/projectors/{name}/view",
            vec![],
            400,
        ),
        (
            "PUT",
            "/projectors/event-counter?mode=sideways",
            "/projectors/{name}",
            vec![],
            400,
        ),
        (
            "GET",
            "/streams/order-9?from=first",
            "/streams/{stream}",
            vec![],
            400,
        ),
        ("GET", "/projectors/%FF", "/projectors/{name}", vec![], 400),
        (
            "DELETE",
            "/projectors/event-counter",
            "/projectors/{name}",
            vec![],
            200,
        ),
    ];
    for (method, path, template, body, status) in writes {
        let reply = send(&client, method, path, body).await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.json());
        spec.check(method, template, &reply).unwrap();
    }

    // An internal failure (the modules directory is now a file) is documented too.
    let modules = data.path().join("modules");
    std::fs::remove_dir_all(&modules).unwrap();
    std::fs::write(&modules, b"not a directory").unwrap();
    let failed = send(
        &client,
        "PUT",
        "/projectors/fresh",
        common::artifacts::read(common::artifacts::TALLY_V3),
    )
    .await;
    assert_eq!(failed.status, 500, "{}", failed.json());
    spec.check("PUT", "/projectors/{name}", &failed).unwrap();

    // A check that cannot fail proves nothing: wrong answers are refused.
    let good = send(&client, "GET", "/projectors", Vec::new()).await;
    spec.check("GET", "/projectors", &good).unwrap();
    let wrong = |body: Value, status: u16, content_type: &str| Raw {
        status,
        content_type: content_type.into(),
        body: body.to_string().into_bytes(),
    };
    for (what, reply) in [
        (
            "a string head",
            wrong(
                json!({"head": "7", "projectors": []}),
                200,
                "application/json",
            ),
        ),
        (
            "no projectors",
            wrong(json!({"head": 7}), 200, "application/json"),
        ),
        (
            "a projector without its fields",
            wrong(
                json!({"head": 7, "projectors": [{"name": "x"}]}),
                200,
                "application/json",
            ),
        ),
        (
            "an undocumented status",
            wrong(
                json!({"head": 7, "projectors": []}),
                418,
                "application/json",
            ),
        ),
        (
            "another media type",
            wrong(json!({"head": 7, "projectors": []}), 200, "text/plain"),
        ),
        (
            "an error without a message",
            wrong(json!({"reason": "x"}), 401, "application/json"),
        ),
        (
            "a numeric error",
            wrong(json!({"error": 5}), 408, "application/json"),
        ),
    ] {
        assert!(
            spec.check("GET", "/projectors", &reply).is_err(),
            "{what} passed validation"
        );
    }
    let plain = wrong(json!("Invalid URL"), 400, "text/plain; charset=utf-8");
    assert!(
        spec.check(
            "DELETE",
            "/projectors/{name}/dead-letters/{position}",
            &plain
        )
        .is_err(),
        "a plain-text rejection passed validation"
    );
    let conflict = wrong(json!({"error": "conflict"}), 409, "application/json");
    assert!(
        spec.check("POST", "/streams/{stream}/events", &conflict)
            .is_err(),
        "a 409 without its versions passed validation"
    );
    let entry = json!({"items": [{"key": "k"}], "next": null});
    assert!(
        spec.check(
            "GET",
            "/projectors/{name}/view",
            &wrong(entry, 200, "application/json")
        )
        .is_err(),
        "a view entry without a value passed validation"
    );

    server.stop().await;
}

#[tokio::test]
async fn the_description_needs_no_token_and_states_each_routes_role() {
    let data = tempfile::tempdir().unwrap();
    let (server, client) = common::start_with(data.path(), |config| {
        config.tokens.admin = Some("admin-secret".into());
        config.tokens.write = Some("write-secret".into());
        config.tokens.read = Some("read-secret".into());
    })
    .await;
    let served = send(&client, "GET", "/openapi.json", Vec::new()).await;
    assert_eq!(served.status, 200);
    let spec = Spec(serde_json::from_slice(&served.body).unwrap());
    // The role stated is the one enforced: without a token, an open route answers and every
    // other one is refused with the documented 401.
    for (method, template) in spec.operations() {
        let operation = spec.operation(&method, &template).unwrap();
        let open = operation["security"] == json!([]);
        if !open {
            assert_eq!(
                operation["security"],
                json!([{"bearer": []}, {}]),
                "{method} {template}"
            );
        }
        let reply = send(&client, &method, &probe_path(&template), Vec::new()).await;
        assert_eq!(
            reply.status == 401,
            !open,
            "{method} {template}: {}",
            reply.status
        );
        spec.check(&method, &template, &reply).unwrap();
    }
    server.stop().await;
}
