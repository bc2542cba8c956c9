//! The web demo, embedded in the binary so `consult serve` needs no other files.

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "../web-demo/"]
#[include = "*.html"]
#[include = "assets/**"]
#[exclude = "node_modules/*"]
struct WebDemo;

/// The embedded file at `path`, or 304 when the browser's copy (`If-None-Match`) is current.
/// Compression (gzip, for whoever asks) is the router's: see `app::router`.
fn serve(path: &str, request: &HeaderMap) -> Response {
    match WebDemo::get(path) {
        Some(file) => {
            // The content's hash: a page revalidated on a weak link costs a round trip, not
            // its bytes again. Weak (`W/`): the gzipped and the plain answer carry the same tag,
            // and `If-None-Match` compares weakly (RFC 9110 §13.1.2), `*` matching any.
            let opaque = format!("\"{}\"", hex::encode(file.metadata.sha256_hash()));
            let current = request
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|tags| {
                    tags.split(',')
                        .map(str::trim)
                        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == opaque)
                });
            let etag = format!("W/{opaque}");
            let mut response = if current {
                StatusCode::NOT_MODIFIED.into_response()
            } else {
                let mime = mime_guess::from_path(path).first_or_octet_stream();
                let text = mime.type_() == "text" || mime.subtype() == "javascript";
                let content_type = if text {
                    format!("{mime}; charset=utf-8")
                } else {
                    mime.to_string()
                };
                let mut response = Response::new(Body::from(file.data.into_owned()));
                if let Ok(value) = HeaderValue::from_str(&content_type) {
                    response.headers_mut().insert(header::CONTENT_TYPE, value);
                }
                response
            };
            if let Ok(value) = HeaderValue::from_str(&etag) {
                response.headers_mut().insert(header::ETAG, value);
            }
            // The pages change with each release; let the browser revalidate.
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// `/`: the doctor's pages.
pub async fn doctor_page(request: HeaderMap) -> Response {
    serve("index.html", &request)
}

/// `/join`: the patient's pages (the invite token is in the fragment).
pub async fn patient_page(request: HeaderMap) -> Response {
    serve("join.html", &request)
}

/// `/enrol`: set a password from an enrolment link.
pub async fn enrol_page(request: HeaderMap) -> Response {
    serve("enrol.html", &request)
}

/// `/verify`: anyone checks a medical certificate (the presentation after `#`, or pasted).
pub async fn verify_page(request: HeaderMap) -> Response {
    serve("verify.html", &request)
}

/// `/assets/*path`: scripts, styles and images.
pub async fn asset(Path(path): Path<String>, request: HeaderMap) -> Response {
    if path.split('/').any(|segment| segment == "..") {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    serve(&format!("assets/{path}"), &request)
}
