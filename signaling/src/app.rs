//! The HTTP router, assembled in one place: API routes, the signaling socket, the web demo,
//! health, metrics, the OpenAPI document, and the layers every response goes through.

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use subtle::ConstantTimeEq;
use tower_http::compression::CompressionLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use crate::error::ApiError;
use crate::state::AppState;
use crate::{
    admin, alerts, auth, certificates, consultations, ice, invites, recording, signal, web,
};

/// Largest request body the API reads.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The OpenAPI document of the HTTP API, with the signaling messages as components.
#[derive(OpenApi)]
#[openapi(
    info(title = "Consult API", description = "Signaling service of Consult, a peer-to-peer encrypted video consultation engine. \
        Every error answers `{ \"error\": { \"code\", \"message\" } }`. Browser requests authenticated by the session cookie \
        must send `X-CSRF-Token` on state-changing methods; non-browser clients use `Authorization: Bearer <token>`. \
        The signaling WebSocket is at `/api/v1/signal`; its messages are the `ClientMessage` and `ServerMessage` schemas."),
    paths(
        auth::enrol, auth::login, auth::mfa_enrol, auth::current_session, auth::logout,
        auth::activity, auth::change_password, admin::list, admin::disable,
        alerts::list, alerts::acknowledge,
        auth::passkeys::start_sign_in, auth::passkeys::finish_sign_in, auth::passkeys::list,
        auth::passkeys::start_registration, auth::passkeys::finish_registration,
        auth::passkeys::rename, auth::passkeys::remove,
        consultations::create, consultations::list, consultations::get, consultations::end,
        consultations::reissue_invite, consultations::revoke_invite, consultations::waiting_room,
        consultations::admit, consultations::decline,
        consultations::members::issue_invite, consultations::members::revoke_invite,
        consultations::members::add_clinician, consultations::members::remove_clinician,
        consultations::members::remove_participant, consultations::members::shared,
        invites::inspect, invites::redeem,
        ice::get,
        recording::api::list, recording::api::download, recording::api::shred,
        recording::api::get_recording_key, recording::api::put_recording_key,
        certificates::issue, certificates::list, certificates::revoke, certificates::held,
        certificates::presentation, certificates::presentation_pdf, certificates::verify,
    ),
    components(schemas(
        consult_proto::signal::ClientMessage,
        consult_proto::signal::ServerMessage,
        consult_proto::signal::SignalErrorCode,
    )),
    tags((name = "auth"), (name = "account"), (name = "consultations"), (name = "patients"), (name = "media"),
         (name = "recordings"), (name = "certificates"), (name = "admin")),
)]
pub struct ApiDoc;

/// The API's OpenAPI document: what the handlers declare, plus the answers every operation can
/// give before its handler runs — `400` when its path, query or body cannot be read (not JSON,
/// not an object, a field of the wrong type, a path id that is not a UUID), and `413` when its
/// body is over the size limit. Served at `/api/v1/openapi.json` and printed by
/// `consult openapi`; API fuzzing (schemathesis) checks every answer against it.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::{RefOr, ResponseBuilder};
    let mut doc = ApiDoc::openapi();
    let error = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        )
    };
    for item in doc.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let reads_input = operation.request_body.is_some()
                || operation
                    .parameters
                    .iter()
                    .flatten()
                    .any(|p| matches!(p.parameter_in, ParameterIn::Path | ParameterIn::Query));
            let responses = &mut operation.responses.responses;
            if reads_input {
                responses.entry("400".into()).or_insert_with(|| {
                    error("invalid_body, invalid_path or invalid_query: the request could not be read")
                });
            }
            if operation.request_body.is_some() {
                responses
                    .entry("413".into())
                    .or_insert_with(|| error("body_too_large"));
            }
        }
    }
    doc
}

async fn openapi() -> impl IntoResponse {
    Json(openapi_document())
}

/// `/api/v1/signal/schema.json`: the JSON schemas of the signaling messages, for browser clients.
async fn signal_schema() -> impl IntoResponse {
    let doc = openapi_document();
    let schemas = doc.components.map(|c| c.schemas).unwrap_or_default();
    Json(serde_json::json!({
        "$comment": "Signaling protocol of Consult. Every message also carries \"v\": 1.",
        "protocol_version": consult_proto::signal::PROTOCOL_VERSION,
        "max_message_bytes": consult_proto::signal::DEFAULT_MAX_MESSAGE_BYTES,
        "schemas": schemas,
    }))
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready for new work: not draining (a load balancer stops sending new connections when this
/// node is shutting down), Redis answered at the last exchange (with several nodes), and the
/// database answers within two seconds.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining");
    }
    if !state.cluster.is_healthy() {
        return (StatusCode::SERVICE_UNAVAILABLE, "redis unavailable");
    }
    let ping = crate::db::query_scalar::<i64>("SELECT 1").fetch_one(&state.pool);
    match tokio::time::timeout(std::time::Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready"),
        Ok(Err(_)) | Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable"),
    }
}

/// `/metrics` on the main listener: only with `Authorization: Bearer <metrics token>`.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let sent = crate::auth::sessions::token_from_bearer(&headers);
    let sent = sent.as_ref().map(|t| t.expose()).unwrap_or_default();
    if !bool::from(sent.as_bytes().ct_eq(state.metrics_token.as_bytes())) {
        let body = serde_json::json!({ "error": {
            "code": "metrics_token_required",
            "message": "send the metrics token (admin.metrics_token, or DATA_DIR/keys/metrics.token) as Authorization: Bearer",
        }});
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"metrics\"")],
            Json(body),
        )
            .into_response();
    }
    metrics_text(&state)
}

/// `/metrics` on the admin listener: no token (the listener is the operator's).
async fn admin_metrics(State(state): State<AppState>) -> Response {
    metrics_text(&state)
}

fn metrics_text(state: &AppState) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// The operator's listener (`admin.bind`): metrics and health, nothing else.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(admin_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn api_not_found() -> ApiError {
    ApiError::NotFound("endpoint")
}

const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; \
    connect-src 'self'; style-src 'self'; script-src 'self'; object-src 'none'; \
    frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The whole service.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/auth/enrol", post(auth::enrol))
        .route("/auth/login", post(auth::login))
        .route("/auth/mfa/enrol", post(auth::mfa_enrol))
        .route("/auth/session", get(auth::current_session))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/activity", post(auth::activity))
        .route("/auth/password", post(auth::change_password))
        .route("/auth/passkey/start", post(auth::passkeys::start_sign_in))
        .route("/auth/passkey/finish", post(auth::passkeys::finish_sign_in))
        .route(
            "/account/passkeys",
            get(auth::passkeys::list).post(auth::passkeys::finish_registration),
        )
        .route(
            "/account/passkeys/registration",
            post(auth::passkeys::start_registration),
        )
        .route(
            "/account/passkeys/{id}",
            patch(auth::passkeys::rename).delete(auth::passkeys::remove),
        )
        .route("/admin/accounts", get(admin::list))
        .route("/admin/accounts/{id}/disable", post(admin::disable))
        .route("/admin/alerts", get(alerts::list))
        .route("/admin/alerts/{id}/acknowledge", post(alerts::acknowledge))
        .route(
            "/consultations",
            post(consultations::create).get(consultations::list),
        )
        .route("/consultations/shared", get(consultations::members::shared))
        .route("/consultations/{id}", get(consultations::get))
        .route("/consultations/{id}/end", post(consultations::end))
        .route(
            "/consultations/{id}/invite",
            post(consultations::reissue_invite).delete(consultations::revoke_invite),
        )
        .route(
            "/consultations/{id}/participants/{pid}/admit",
            post(consultations::admit),
        )
        .route(
            "/consultations/{id}/participants/{pid}/decline",
            post(consultations::decline),
        )
        .route(
            "/consultations/{id}/participants/{pid}/remove",
            post(consultations::members::remove_participant),
        )
        .route(
            "/consultations/{id}/invites",
            post(consultations::members::issue_invite),
        )
        .route(
            "/consultations/{id}/invites/{invite_id}",
            delete(consultations::members::revoke_invite),
        )
        .route(
            "/consultations/{id}/clinicians",
            post(consultations::members::add_clinician),
        )
        .route(
            "/consultations/{id}/clinicians/{user_id}",
            delete(consultations::members::remove_clinician),
        )
        .route("/consultations/{id}/recordings", get(recording::api::list))
        .route(
            "/consultations/{id}/certificates",
            post(certificates::issue).get(certificates::list),
        )
        .route("/certificates/held", post(certificates::held))
        .route("/certificates/verify", post(certificates::verify))
        .route("/certificates/status-list", get(certificates::status_list))
        .route("/certificates/{id}/revoke", post(certificates::revoke))
        .route(
            "/certificates/{id}/presentation",
            post(certificates::presentation),
        )
        .route(
            "/certificates/{id}/presentation.pdf",
            post(certificates::presentation_pdf),
        )
        .route("/recordings/{id}/export", get(recording::api::download))
        .route("/recordings/{id}", delete(recording::api::shred))
        .route(
            "/account/recording-key",
            get(recording::api::get_recording_key).put(recording::api::put_recording_key),
        )
        .route("/waiting-room", get(consultations::waiting_room))
        .route("/invites/inspect", post(invites::inspect))
        .route("/invites/redeem", post(invites::redeem))
        .route("/ice-servers", get(ice::get))
        .route("/openapi.json", get(openapi))
        .route("/signal/schema.json", get(signal_schema))
        .fallback(api_not_found)
        // Every body is read through `ApiJson`, which honours this limit and answers 413 with
        // the API's error body.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));

    // The web demo's files, gzipped for a browser that asks: a patient on weak mobile data
    // loads the page in a quarter of the time. Only these: they hold no secret, so compressing
    // them lets nobody guess one from the size of an answer (BREACH), which the API's answers
    // could allow.
    let pages = Router::new()
        .route("/", get(web::doctor_page))
        .route("/join", get(web::patient_page))
        .route("/enrol", get(web::enrol_page))
        .route("/verify", get(web::verify_page))
        .route("/assets/{*path}", get(web::asset))
        .layer(CompressionLayer::new().gzip(true));

    Router::new()
        // The WebSocket lives outside the timeout layer: it is meant to stay open.
        .route("/api/v1/signal", get(signal::socket::upgrade))
        .nest("/api/v1", api)
        .merge(pages)
        .route("/.well-known/jwks.json", get(certificates::jwks))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            strict_transport,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .with_state(state)
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static("permissions-policy"),
            HeaderValue::from_static("camera=(self), microphone=(self), display-capture=(self)"),
        ))
        .layer(TraceLayer::new_for_http())
}

/// Count every answer by status class (`consult_http_responses_total`), for the error-rate
/// alert.
async fn count_responses(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(request).await;
    state
        .metrics
        .http_responses
        .with_label_values(&[crate::metrics::status_class(response.status())])
        .inc();
    response
}

/// HSTS on every answer to a client that came over HTTPS: to us (`tls`), or to a trusted
/// reverse proxy that says so. Over plain HTTP the header would mean nothing, and a client
/// cannot ask for it by writing a forwarding header itself.
async fn strict_transport(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let https = match request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
    {
        Some(axum::extract::ConnectInfo(peer)) => {
            state
                .trusted_proxies
                .origin(peer.ip(), request.headers(), state.config.tls)
                .https
        }
        None => state.config.tls,
    };
    let mut response = next.run(request).await;
    if https {
        response
            .headers_mut()
            .entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert(HeaderValue::from_static("max-age=31536000"));
    }
    response
}
