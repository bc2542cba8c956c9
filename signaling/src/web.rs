//! The web demo, embedded in the binary so `consult serve` needs no other files.

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "../web-demo/"]
#[include = "*.html"]
#[include = "assets/**"]
#[exclude = "node_modules/*"]
struct WebDemo;

fn serve(path: &str) -> Response {
    match WebDemo::get(path) {
        Some(file) => {
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
pub async fn doctor_page() -> Response {
    serve("index.html")
}

/// `/join`: the patient's pages (the invite token is in the fragment).
pub async fn patient_page() -> Response {
    serve("join.html")
}

/// `/enrol`: set a password from an enrolment link.
pub async fn enrol_page() -> Response {
    serve("enrol.html")
}

/// `/verify`: anyone checks a medical certificate (the presentation after `#`, or pasted).
pub async fn verify_page() -> Response {
    serve("verify.html")
}

/// `/assets/*path`: scripts, styles and images.
pub async fn asset(Path(path): Path<String>) -> Response {
    if path.split('/').any(|segment| segment == "..") {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    serve(&format!("assets/{path}"))
}
