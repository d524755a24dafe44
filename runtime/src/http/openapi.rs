//! `GET /openapi.json`: the API's OpenAPI 3.1 description, generated from the code.
//!
//! Every route is registered with utoipa-axum's `routes!` (see [`super::api`]), which takes the
//! path and methods from the handler's `#[utoipa::path]` attribute: registering a route and
//! documenting it are the same line, so the description cannot leave a route out. Response
//! bodies are the `ToSchema` types the handlers serialize. What is the same for many routes is
//! added here from the code that does it: the bearer requirement and its 401 from
//! [`super::auth`]'s roles, and the 408 of the request timeout.

use super::auth::{self, Role};
use axum::http::Method;
use prism_client::wire::{ErrorBody, ModeChoice};
use std::sync::LazyLock;
use utoipa::Modify;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{OpenApi, RefOr, Response, ResponseBuilder};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Prism",
        description = "Prism's HTTP API: append events, deploy WebAssembly projectors, query their views. \
                       Bearer tokens are optional: a role whose token is not configured is open. \
                       Errors are JSON `{\"error\": \"...\"}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&Shared),
    // Schemas only parameters name (utoipa adds those of bodies by itself).
    components(schemas(ErrorBody, ModeChoice)),
    tags(
        (name = "streams", description = "The event log: append, read, list streams."),
        (name = "projectors", description = "Deploy projectors and run their lifecycle."),
        (name = "views", description = "Query a projector's view, or follow its changes."),
        (name = "operations", description = "Health, readiness, metrics and this description."),
        (name = "dashboard", description = "The dashboard page and its assets."),
    )
)]
struct ApiDoc;

/// The starting document the routes are added to.
pub(super) fn base() -> OpenApi {
    use utoipa::OpenApi as _;
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// Adds the bearer security scheme.
struct Shared;

impl Modify for Shared {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <token>`. Three optional tokens: admin (deploys and \
                         projector changes), write (appends; admin also grants it) and read \
                         (every other GET; write and admin also grant it). A role whose token is \
                         not configured is open.",
                    ))
                    .build(),
            ),
        );
    }
}

const BEARER: &str = "bearer";

/// Completes the document the routes made: the wildcard of `/projectors/{name}/view/{*key}` as
/// a plain `{key}` parameter, each operation's security and 401 from its [`auth`] role, the 408
/// every request can get from the timeout, the 400 of parameters that do not parse, and the 500
/// of an internal failure.
pub(super) fn finish(mut doc: OpenApi) -> OpenApi {
    let paths = std::mem::take(&mut doc.paths.paths);
    for (path, mut item) in paths {
        let operations = [
            (Method::GET, &mut item.get),
            (Method::PUT, &mut item.put),
            (Method::POST, &mut item.post),
            (Method::DELETE, &mut item.delete),
            (Method::PATCH, &mut item.patch),
            (Method::HEAD, &mut item.head),
            (Method::OPTIONS, &mut item.options),
            (Method::TRACE, &mut item.trace),
        ];
        for (method, operation) in operations {
            if let Some(operation) = operation {
                secure(operation, auth::role(&method, &path));
                respond(
                    operation,
                    408,
                    "The request took longer than the server's request timeout.",
                );
                // `extract::Path` and `extract::Query` reject what does not parse with 400.
                if operation.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                    respond(operation, 400, "A path or query parameter does not parse.");
                }
                respond(
                    operation,
                    403,
                    "The `Host` does not name this Prism, or a web page of another origin tried \
                     to change it (see the browser boundary).",
                );
                // Any handler may fail inside (its cause is logged, never sent).
                respond(
                    operation,
                    500,
                    "An internal failure; Prism's log has its cause under the answer's \
                     `x-request-id`.",
                );
            }
        }
        doc.paths.paths.insert(path.replace("{*", "{"), item);
    }
    doc
}

fn secure(operation: &mut Operation, role: Role) {
    let (needs, who) = match role {
        Role::Open => {
            operation.security = Some(Vec::new());
            return;
        }
        Role::Read => ("the read token", "read, write or admin"),
        Role::Write => ("the write token", "write or admin"),
        Role::Admin => ("the admin token", "admin"),
    };
    // Optional: the requirement holds only when that role's token is configured.
    operation.security = Some(vec![
        SecurityRequirement::new(BEARER, Vec::<String>::new()),
        SecurityRequirement::default(),
    ]);
    let note = format!("Needs {needs} ({who}) when one is configured; open otherwise.");
    operation.description = Some(match operation.description.take() {
        Some(description) => format!("{description}\n\n{note}"),
        None => note,
    });
    respond(
        operation,
        401,
        "Missing or wrong bearer token (with `WWW-Authenticate: Bearer`).",
    );
}

/// Adds a JSON error response, unless the operation documents that status itself.
fn respond(operation: &mut Operation, status: u16, description: &str) {
    let response: RefOr<Response> = ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into();
    operation
        .responses
        .responses
        .entry(status.to_string())
        .or_insert(response);
}

/// The whole description, built once from the routes.
pub fn openapi() -> OpenApi {
    finish(super::api(super::RequestLimits::default()).into_openapi())
}

static SPEC: LazyLock<String> = LazyLock::new(|| {
    openapi()
        .to_pretty_json()
        .expect("the OpenAPI description serializes")
});

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This OpenAPI 3.1 description of the API.",
        content_type = "application/json", body = serde_json::Value)),
)]
pub async fn spec() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        SPEC.as_str(),
    )
}
