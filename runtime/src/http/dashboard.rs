//! `GET /`: a dashboard page (plain HTML, JavaScript and CSS embedded in the binary) that shows
//! the projectors live and browses views and streams through the API itself.
//!
//! The page and its assets carry no data, so they are served without a token (see [`super::auth`]);
//! the page asks for one when the API answers 401, keeps it in `localStorage` and sends it as
//! `Authorization: Bearer` on every API call.

use super::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// Where the assets are served from; `auth` lets `GET` requests under it through.
pub const ASSETS: &str = "/dashboard/";

/// The page may load only its own scripts and styles and talk only to Prism.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the dashboard page.
#[utoipa::path(
    get,
    path = "/",
    tag = "dashboard",
    responses((status = 200, description = "The dashboard page.",
        content_type = "text/html; charset=utf-8", body = String)),
)]
pub async fn index() -> Response {
    serve("text/html; charset=utf-8", INDEX)
}

/// `GET /dashboard/{file}`: the page's script and stylesheet.
#[utoipa::path(
    get,
    path = "/dashboard/{file}",
    tag = "dashboard",
    params(("file" = String, Path, description = "`app.js` or `style.css`.")),
    responses(
        (status = 200, description = "The asset.", content(
            (String = "text/javascript; charset=utf-8"),
            (String = "text/css; charset=utf-8"),
        )),
        (status = 404, description = "No such asset.", body = super::ErrorBody),
    ),
)]
pub async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => serve("text/javascript; charset=utf-8", APP_JS),
        "style.css" => serve("text/css; charset=utf-8", STYLE_CSS),
        _ => super::ApiError::not_found("no such dashboard asset").into_response(),
    }
}

fn serve(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The assets change with the binary: revalidate rather than keep a stale copy.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
