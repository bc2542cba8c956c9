//! The recordings API: list, download (export) and shred, each decided by the policy and
//! audited, allowed or not.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use consult_policy::{decide_access, Access, Action as PolicyAction, RecordingFacts, Relation};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::export::{self, ExportError};
use super::rows::{self, RecordingRow, RecordingStatus};
use crate::alerts::rules::Observation;
use crate::audit::{Action, Actor};
use crate::auth::sessions::CurrentDoctor;
use crate::consultations;
use consult_proto::api::{ErrorBody, RecordingKeyBody};

use crate::error::{ApiError, ApiPath};
use crate::state::AppState;

/// A consultation's recordings.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingList {
    /// Oldest first.
    pub recordings: Vec<RecordingRow>,
}

fn facts(row: Option<&RecordingRow>) -> RecordingFacts {
    RecordingFacts {
        shredded: row.is_some_and(|r| r.state == RecordingStatus::Shredded),
        zero_knowledge: row.is_some_and(|r| r.zero_knowledge),
    }
}

fn audit_action(action: PolicyAction) -> Action {
    match action {
        PolicyAction::List => Action::RecordingListed,
        PolicyAction::Play => Action::RecordingPlayed,
        PolicyAction::Export => Action::RecordingExported,
        PolicyAction::Delete => Action::RecordingShredded,
    }
}

/// Ask the policy whether `who` may do `action` on a recording of `consultation_id`; a refusal
/// is audited and becomes a 403 naming the reason.
pub async fn check_access(
    state: &AppState,
    actor: &Actor,
    who: Relation,
    action: PolicyAction,
    consultation_id: Uuid,
    row: Option<&RecordingRow>,
) -> Result<(), ApiError> {
    match decide_access(who, action, facts(row)) {
        Access::Allowed { .. } => Ok(()),
        Access::Denied { reason } => {
            if let (PolicyAction::Export, Actor::User(user)) = (action, actor) {
                let user = *user;
                state
                    .alerts
                    .observe(state.clock.now(), Observation::ExportRefused { user });
            }
            state
                .audit
                .record(
                    state.clock.now(),
                    actor,
                    Action::RecordingAccessDenied,
                    Some(consultation_id),
                    json!({ "action": action, "recording_id": row.map(|r| r.id),
                            "reason": reason }),
                )
                .await?;
            Err(ApiError::Denied(reason.to_string()))
        }
    }
}

async fn relation(
    state: &AppState,
    doctor: &CurrentDoctor,
    consultation_id: Uuid,
) -> Result<Relation, ApiError> {
    let consultation = consultations::find(&state.pool, consultation_id)
        .await?
        .ok_or(ApiError::NotFound("consultation"))?;
    Ok(if consultation.doctor_id == doctor.0.user.id {
        Relation::OwnerClinician
    } else {
        Relation::OtherClinician
    })
}

fn actor(doctor: &CurrentDoctor) -> Actor {
    Actor::User(doctor.0.user.id)
}

async fn audited(
    state: &AppState,
    actor: &Actor,
    action: PolicyAction,
    row: &RecordingRow,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    state
        .audit
        .record(
            state.clock.now(),
            actor,
            audit_action(action),
            Some(row.consultation_id),
            json!({ "recording_id": row.id, "detail": detail }),
        )
        .await?;
    Ok(())
}

/// `GET /api/v1/consultations/{id}/recordings`: the consultation's recordings (metadata only).
#[utoipa::path(get, path = "/api/v1/consultations/{id}/recordings", tag = "recordings",
    params(("id" = Uuid, Path, description = "consultation id")),
    responses((status = 200, body = RecordingList), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<RecordingList>, ApiError> {
    let who = relation(&state, &doctor, id).await?;
    let actor = actor(&doctor);
    check_access(&state, &actor, who, PolicyAction::List, id, None).await?;
    let recordings = rows::of_consultation(&state.pool, id).await?;
    state
        .audit
        .record(
            state.clock.now(),
            &actor,
            Action::RecordingListed,
            Some(id),
            json!({ "count": recordings.len() }),
        )
        .await?;
    Ok(Json(RecordingList { recordings }))
}

/// The recording `id`, if the policy lets this doctor do `action` on it; and the audit actor.
async fn authorised(
    state: &AppState,
    doctor: &CurrentDoctor,
    id: Uuid,
    action: PolicyAction,
) -> Result<(RecordingRow, Actor), ApiError> {
    let row = rows::find(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound("recording"))?;
    let who = relation(state, doctor, row.consultation_id).await?;
    let actor = actor(doctor);
    check_access(state, &actor, who, action, row.consultation_id, Some(&row)).await?;
    Ok((row, actor))
}

/// `GET /api/v1/recordings/{id}/export`: download the recording as a playable file (WebM, or
/// Matroska for H.264).
#[utoipa::path(get, path = "/api/v1/recordings/{id}/export", tag = "recordings",
    params(("id" = Uuid, Path, description = "recording id")),
    responses((status = 200, description = "video/webm or video/x-matroska"),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub async fn download(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    let (row, actor) = authorised(&state, &doctor, id, PolicyAction::Export).await?;
    let vault = state.recordings.vault.clone();
    // A chain that cannot be followed is refused (and audited) like any damaged recording.
    let segments = match rows::segments(&state.pool, id).await {
        Ok(segments) => Ok(segments),
        Err(e) => match e.downcast_ref::<rows::BrokenChain>() {
            Some(broken) => Err(ExportError::BrokenChain {
                id,
                why: broken.to_string(),
            }),
            None => return Err(e.into()),
        },
    };
    // Check and plan first (every refusal comes before the first byte), then stream.
    // Each track is named after the person who sent it.
    let names = export::participant_names(&state.pool, row.consultation_id).await?;
    let prepared = match segments {
        Ok(segments) => {
            let vault = vault.clone();
            tokio::task::spawn_blocking(move || match segments.split_first() {
                Some((first, continuations)) => export::prepare(&vault, first, continuations, None)
                    .map(|prepared| prepared.with_names(&names)),
                None => Err(ExportError::Empty(id)),
            })
            .await
            .map_err(|e| ApiError::Internal(e.into()))?
        }
        Err(broken) => Err(broken),
    };
    let prepared = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            let user = doctor.0.user.id;
            state
                .alerts
                .observe(state.clock.now(), Observation::ExportRefused { user });
            audited(
                &state,
                &actor,
                PolicyAction::Export,
                &row,
                json!({ "refused": e.to_string() }),
            )
            .await?;
            return Err(export_error(e));
        }
    };
    let summary = prepared.summary();
    let user = doctor.0.user.id;
    state
        .alerts
        .observe(state.clock.now(), Observation::Exported { user });
    audited(
        &state,
        &actor,
        PolicyAction::Export,
        &row,
        json!({ "frames": summary.frames, "duration_ms": summary.duration_ms,
                "segments": prepared.segment_ids() }),
    )
    .await?;
    let mime = match summary.container {
        consult_vault::matroska::Container::WebM => "video/webm",
        consult_vault::matroska::Container::Matroska => "video/x-matroska",
    };
    let disposition = format!(
        "attachment; filename=\"recording-{id}.{}\"",
        summary.container.extension()
    );
    let (pieces, body) = BodyWriter::channel();
    tokio::task::spawn_blocking(move || {
        let mut out = pieces;
        let written = prepared
            .write(&vault, &mut out)
            .map_err(|e| e.to_string())
            .and_then(|_| out.finish().map_err(|e| e.to_string()));
        // Anything but a finished file: the writer, dropped, cuts the connection, so the client
        // sees the download break off, never a short file that looks whole.
        if let Err(e) = written {
            tracing::warn!(recording = %id, error = %e, "recording download stopped");
        }
    });
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// What a blocking export writes goes to a response body in pieces of [`BodyWriter::PIECE`]
/// bytes through a channel of a few pieces: the writer waits while the client is behind, so a
/// download holds a few hundred KiB whatever the recording's length. A client that goes away
/// makes the next write fail, and so does one that stops reading for [`BodyWriter::STALL`] (the
/// blocking thread is not held forever). Unless [`BodyWriter::finish`] is called, the body ends
/// with an error (the connection is cut), so a failed or panicked export never looks whole.
struct BodyWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<axum::body::Bytes>>,
    runtime: tokio::runtime::Handle,
    piece: Vec<u8>,
    finished: bool,
}

impl BodyWriter {
    const PIECE: usize = 64 * 1024;
    const PIECES_IN_FLIGHT: usize = 4;
    const STALL: std::time::Duration = std::time::Duration::from_secs(60);

    /// The writer (to move into a blocking task) and the body it fills.
    fn channel() -> (Self, axum::body::Body) {
        let (tx, rx) = tokio::sync::mpsc::channel(Self::PIECES_IN_FLIGHT);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|piece| (piece, rx))
        });
        let writer = Self {
            tx,
            runtime: tokio::runtime::Handle::current(),
            piece: Vec::with_capacity(Self::PIECE),
            finished: false,
        };
        (writer, axum::body::Body::from_stream(stream))
    }

    fn send(&self, item: std::io::Result<axum::body::Bytes>) -> std::io::Result<()> {
        use tokio::sync::mpsc::error::SendTimeoutError;
        match self
            .runtime
            .block_on(self.tx.send_timeout(item, Self::STALL))
        {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Closed(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client went away",
            )),
            Err(SendTimeoutError::Timeout(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            )),
        }
    }

    fn send_piece(&mut self) -> std::io::Result<()> {
        if self.piece.is_empty() {
            return Ok(());
        }
        let piece = axum::body::Bytes::from(std::mem::replace(
            &mut self.piece,
            Vec::with_capacity(Self::PIECE),
        ));
        self.send(Ok(piece))
    }

    /// The whole file was written: the body ends normally.
    fn finish(mut self) -> std::io::Result<()> {
        self.send_piece()?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        if !self.finished {
            // Cut the connection: the body must not end as if the file were whole. Sent from a
            // task, so a drop never blocks (nor needs to be on a blocking thread).
            let tx = self.tx.clone();
            self.runtime.spawn(async move {
                let _ = tx
                    .send(Err(std::io::Error::other("the export stopped")))
                    .await;
            });
        }
    }
}

impl std::io::Write for BodyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = Self::PIECE - self.piece.len();
        let n = buf.len().min(room);
        self.piece.extend_from_slice(&buf[..n]);
        if self.piece.len() == Self::PIECE {
            self.send_piece()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_piece()
    }
}

/// The API error for an export that could not be made.
pub fn export_error(e: ExportError) -> ApiError {
    match e {
        ExportError::Shredded(_) => ApiError::Gone {
            code: "recording_shredded",
            message: e.to_string(),
        },
        ExportError::StillRecording(_) => ApiError::conflict("still_recording", e.to_string()),
        ExportError::NeedsClinicianKey(_) => {
            ApiError::conflict("needs_clinician_key", e.to_string())
        }
        ExportError::Empty(_) => ApiError::conflict("recording_empty", e.to_string()),
        ExportError::Vault { .. } | ExportError::BrokenChain { .. } => {
            ApiError::conflict("recording_damaged", e.to_string())
        }
        ExportError::DoesNotOpen { .. } => ApiError::conflict("wrong_recording_key", e.to_string()),
    }
}

/// `DELETE /api/v1/recordings/{id}`: shred the recording (destroy its key).
#[utoipa::path(delete, path = "/api/v1/recordings/{id}", tag = "recordings",
    params(("id" = Uuid, Path, description = "recording id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn shred(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let (row, actor) = authorised(&state, &doctor, id, PolicyAction::Delete).await?;
    shred_row(&state, &row, &actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Destroy the key and media of `row`'s recording — every segment of it: a recording
/// interrupted and continued is shredded whole — mark each shredded, and audit who did it,
/// segment by segment. Refused while a segment is still being recorded.
///
/// It all happens under the database's write lock, which starting a recorder also takes to
/// choose the recording it continues: a recorder starting meanwhile either came first (its
/// segment is part of the chain, still recording, and the shredding is refused) or finds the
/// recording shredded and starts a new one — never a continuation of a recording being shredded.
pub async fn shred_row(
    state: &AppState,
    row: &RecordingRow,
    actor: &Actor,
) -> Result<(), ApiError> {
    let mut tx = state.audit.begin().await?;
    let segments = match rows::segments(&state.pool, row.id).await {
        Ok(segments) if !segments.is_empty() => segments,
        // A chain that cannot be followed still lets this recording be shredded.
        Ok(_) => vec![row.clone()],
        Err(e) => {
            tracing::warn!(recording = %row.id, error = format!("{e:#}"), "shredding one segment: its chain cannot be followed");
            vec![row.clone()]
        }
    };
    if segments
        .iter()
        .any(|s| s.state == RecordingStatus::Recording)
    {
        return Err(ApiError::conflict(
            "still_recording",
            format!(
                "recording {} is still being made; end its consultation first",
                row.id
            ),
        ));
    }
    for segment in segments
        .iter()
        .filter(|s| s.state != RecordingStatus::Shredded)
    {
        let vault = state.recordings.vault.clone();
        let id = segment.id;
        tokio::task::spawn_blocking(move || vault.shred(id))
            .await
            .map_err(|e| ApiError::Internal(e.into()))?
            .map_err(|e| ApiError::Internal(e.into()))?;
        // Marked shredded and audited together (the key and media are gone already; shredding
        // again, should this not commit, finds nothing left and marks it).
        let now = state.clock.now();
        rows::set_shredded(tx.connection(), id, now).await?;
        let detail = if id == row.id {
            json!({ "reason": "request" })
        } else {
            json!({ "reason": "request", "segment_of": row.id })
        };
        tx.record(
            now,
            actor,
            audit_action(PolicyAction::Delete),
            Some(segment.consultation_id),
            json!({ "recording_id": id, "detail": detail }),
        )
        .await?;
    }
    tx.commit().await?;
    // The key is gone here; the next backup takes it out of every backup.
    state.backup_soon.notify_one();
    Ok(())
}

pub use super::rows::recording_key_of;

/// `GET /api/v1/account/recording-key`: the clinician's registered recording public key.
#[utoipa::path(get, path = "/api/v1/account/recording-key", tag = "recordings",
    responses((status = 200, body = RecordingKeyBody), (status = 401, body = ErrorBody)))]
pub async fn get_recording_key(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
) -> Result<Json<RecordingKeyBody>, ApiError> {
    Ok(Json(RecordingKeyBody {
        public_key: recording_key_of(&state.pool, doctor.0.user.id).await?,
    }))
}

/// `PUT /api/v1/account/recording-key`: register the clinician's recording public key (its
/// private half stays in their key file). Recordings of their end-to-end encrypted
/// consultations are wrapped to it from then on.
#[utoipa::path(put, path = "/api/v1/account/recording-key", tag = "recordings",
    request_body = RecordingKeyBody,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn put_recording_key(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    crate::error::ApiJson(body): crate::error::ApiJson<RecordingKeyBody>,
) -> Result<StatusCode, ApiError> {
    let key = body
        .public_key
        .as_deref()
        .map(consult_e2ee::recording_key::RecordingPublicKey::from_base64)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_recording_key", e.to_string()))?;
    let key = key.map(|k| k.to_base64());
    // The key and its audit entry commit together.
    let now = state.clock.now();
    let mut tx = state.audit.begin().await?;
    rows::set_recording_key(tx.connection(), doctor.0.user.id, key.as_deref()).await?;
    tx.record(
        now,
        &actor(&doctor),
        Action::RecordingKeyRegistered,
        None,
        json!({ "public_key": key }),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
