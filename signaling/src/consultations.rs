//! Consultations and their patient invites, as the doctor manages them: create, list, end,
//! reissue and revoke the invite, see the waiting room, admit and decline.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use consult_proto::api::{
    Consultation, ConsultationMode, ConsultationStatus, CreateConsultationRequest, ErrorBody,
    Invite, InviteStatus, WaitingPatient,
};
use serde_json::json;
use sqlx::{Row, SqlitePool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::Action;
use crate::auth::sessions::CurrentDoctor;
use crate::db::{from_unix, to_unix};
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::invites;
use crate::secrets::Token;
use crate::signal::hub::{AdmissionError, RoomInfo};
use crate::state::AppState;

/// Longest title accepted.
const MAX_TITLE_CHARS: usize = 200;

/// A consultation row.
#[derive(Debug, Clone)]
pub struct ConsultationRecord {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub doctor_id: Uuid,
    /// Owner's display name.
    pub doctor_name: String,
    /// Title.
    pub title: Option<String>,
    /// Planned time.
    pub scheduled_at: Option<OffsetDateTime>,
    /// Mode.
    pub mode: ConsultationMode,
    /// End-to-end encrypted.
    pub e2ee: bool,
    /// Status.
    pub status: ConsultationStatus,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Ended.
    pub ended_at: Option<OffsetDateTime>,
}

impl ConsultationRecord {
    /// What the signaling hub needs for its room.
    pub fn room_info(&self) -> RoomInfo {
        RoomInfo {
            consultation_id: self.id,
            doctor_user_id: self.doctor_id,
            doctor_name: self.doctor_name.clone(),
            mode: self.mode,
            e2ee: self.e2ee,
        }
    }
}

fn mode_str(mode: ConsultationMode) -> &'static str {
    match mode {
        ConsultationMode::LiveOnly => "live_only",
        ConsultationMode::Recorded => "recorded",
    }
}

const SELECT: &str = "SELECT c.id, c.doctor_id, u.display_name, c.title, c.scheduled_at, c.mode, \
     c.status, c.created_at, c.ended_at, c.e2ee FROM consultations c JOIN users u ON u.id = c.doctor_id";

fn record_from_row(row: sqlx::sqlite::SqliteRow) -> anyhow::Result<ConsultationRecord> {
    let id: String = row.get(0);
    let doctor_id: String = row.get(1);
    let mode: String = row.get(5);
    let status: String = row.get(6);
    Ok(ConsultationRecord {
        id: Uuid::parse_str(&id)?,
        doctor_id: Uuid::parse_str(&doctor_id)?,
        doctor_name: row.get(2),
        title: row.get(3),
        scheduled_at: row.get::<Option<i64>, _>(4).map(from_unix),
        mode: if mode == "recorded" {
            ConsultationMode::Recorded
        } else {
            ConsultationMode::LiveOnly
        },
        status: if status == "ended" {
            ConsultationStatus::Ended
        } else {
            ConsultationStatus::Open
        },
        created_at: from_unix(row.get(7)),
        ended_at: row.get::<Option<i64>, _>(8).map(from_unix),
        e2ee: row.get::<i64, _>(9) != 0,
    })
}

/// Load a consultation by id.
pub async fn find(pool: &SqlitePool, id: Uuid) -> anyhow::Result<Option<ConsultationRecord>> {
    let row = sqlx::query(&format!("{SELECT} WHERE c.id = ?"))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await?;
    row.map(record_from_row).transpose()
}

/// Load a consultation that belongs to `doctor`; someone else's looks like a missing one.
async fn find_owned(
    state: &AppState,
    doctor: &CurrentDoctor,
    id: Uuid,
) -> Result<ConsultationRecord, ApiError> {
    find(&state.pool, id)
        .await?
        .filter(|c| c.doctor_id == doctor.0.user.id)
        .ok_or(ApiError::NotFound("consultation"))
}

async fn view(
    state: &AppState,
    record: &ConsultationRecord,
    invite_url: Option<String>,
) -> Result<Consultation, ApiError> {
    let now = state.clock.now();
    let invite = invites::latest(&state.pool, record.id)
        .await?
        .map(|invite| InviteStatus {
            issued_at: invite.issued_at,
            expires_at: invite.expires_at,
            in_use: invite.in_use,
            revoked: invite.revoked_at.is_some()
                || record.status == ConsultationStatus::Ended
                || invite.expires_at <= now,
        });
    let waiting: Vec<WaitingPatient> = state
        .hub
        .waiting_for(record.doctor_id)
        .into_iter()
        .filter(|w| w.consultation_id == record.id)
        .collect();
    Ok(Consultation {
        id: record.id,
        title: record.title.clone(),
        scheduled_at: record.scheduled_at,
        mode: record.mode,
        e2ee: record.e2ee,
        status: record.status,
        created_at: record.created_at,
        ended_at: record.ended_at,
        invite,
        invite_url,
        waiting,
    })
}

fn actor(doctor: &CurrentDoctor) -> String {
    format!("user:{}", doctor.0.user.id)
}

/// `POST /api/v1/consultations`: create a consultation and its first invite link.
#[utoipa::path(post, path = "/api/v1/consultations", tag = "consultations",
    request_body = CreateConsultationRequest,
    responses((status = 201, body = Consultation, description = "created; `invite_url` is shown only here"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiJson(req): ApiJson<CreateConsultationRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let title = req
        .title
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    if title
        .as_ref()
        .is_some_and(|t| t.chars().count() > MAX_TITLE_CHARS)
    {
        return Err(ApiError::bad_request(
            "title_too_long",
            format!("the title must have at most {MAX_TITLE_CHARS} characters"),
        ));
    }
    let mode = req.mode.unwrap_or_default();
    if mode == ConsultationMode::Recorded && !state.config.policy.recording_allowed {
        return Err(ApiError::bad_request(
            "recording_not_allowed",
            "this organisation does not allow recording consultations; use live_only",
        ));
    }
    let e2ee_required = state.config.policy.e2ee_required;
    if e2ee_required && req.e2ee == Some(false) {
        return Err(ApiError::bad_request(
            "e2ee_required",
            "this organisation requires end-to-end encryption for every consultation",
        ));
    }
    if mode == ConsultationMode::Recorded
        && req.e2ee.unwrap_or(e2ee_required)
        && crate::recording::api::recording_key_of(&state.pool, doctor.0.user.id)
            .await?
            .is_none()
    {
        // A zero-knowledge recording is wrapped to the clinician's recording key: without
        // one, nobody could ever open it.
        return Err(ApiError::bad_request(
            "recording_key_missing",
            "register your recording key (consult recording keygen) before recording end-to-end encrypted consultations",
        ));
    }
    let e2ee = req.e2ee.unwrap_or(e2ee_required);
    let now = state.clock.now();
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO consultations (id, doctor_id, title, scheduled_at, mode, status, created_at, e2ee)
         VALUES (?, ?, ?, ?, ?, 'open', ?, ?)",
    )
    .bind(id.to_string())
    .bind(doctor.0.user.id.to_string())
    .bind(&title)
    .bind(req.scheduled_at.map(to_unix))
    .bind(mode_str(mode))
    .bind(to_unix(now))
    .bind(i64::from(e2ee))
    .execute(&state.pool)
    .await?;
    state
        .audit
        .record(
            now,
            &actor(&doctor),
            Action::ConsultationCreated,
            Some(id),
            json!({ "mode": mode_str(mode), "e2ee": e2ee }),
        )
        .await?;
    let invite = issue_invite(&state, &doctor, id).await?;
    let record = find_owned(&state, &doctor, id).await?;
    Ok((
        StatusCode::CREATED,
        Json(view(&state, &record, Some(invite.invite_url)).await?),
    ))
}

/// Revoke any live invite of the consultation (disconnecting the device holding it) and issue a
/// new one.
async fn issue_invite(
    state: &AppState,
    doctor: &CurrentDoctor,
    consultation_id: Uuid,
) -> Result<Invite, ApiError> {
    revoke_invites(state, doctor, consultation_id).await?;
    let now = state.clock.now();
    let token = Token::generate();
    let expires_at = now + state.config.invite.ttl;
    let invite_id = Uuid::new_v4();
    sqlx::query("INSERT INTO invites (id, consultation_id, token_hash, issued_at, expires_at) VALUES (?, ?, ?, ?, ?)")
        .bind(invite_id.to_string())
        .bind(consultation_id.to_string())
        .bind(token.hash().0)
        .bind(to_unix(now))
        .bind(to_unix(expires_at))
        .execute(&state.pool)
        .await?;
    state
        .audit
        .record(
            now,
            &actor(doctor),
            Action::InviteIssued,
            Some(consultation_id),
            json!({ "invite_id": invite_id, "expires_at": to_unix(expires_at) }),
        )
        .await?;
    Ok(Invite {
        // The token travels in the fragment: browsers never send it to a server or in a Referer.
        invite_url: format!("{}/join#{}", state.public_url, token.expose()),
        expires_at,
    })
}

/// Revoke every live invite; returns how many were revoked.
async fn revoke_invites(
    state: &AppState,
    doctor: &CurrentDoctor,
    consultation_id: Uuid,
) -> Result<u64, ApiError> {
    let now = state.clock.now();
    let revoked: Vec<String> = sqlx::query_scalar(
        "UPDATE invites SET revoked_at = ? WHERE consultation_id = ? AND revoked_at IS NULL RETURNING id",
    )
    .bind(to_unix(now))
    .bind(consultation_id.to_string())
    .fetch_all(&state.pool)
    .await?;
    for invite_id in &revoked {
        state
            .audit
            .record(
                now,
                &actor(doctor),
                Action::InviteRevoked,
                Some(consultation_id),
                json!({ "invite_id": invite_id }),
            )
            .await?;
        invites::remove_holders(state, consultation_id, invite_id).await?;
    }
    Ok(revoked.len() as u64)
}

/// `GET /api/v1/consultations`: the doctor's consultations, newest first.
#[utoipa::path(get, path = "/api/v1/consultations", tag = "consultations",
    responses((status = 200, body = [Consultation]), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
) -> Result<Json<Vec<Consultation>>, ApiError> {
    let rows = sqlx::query(&format!(
        "{SELECT} WHERE c.doctor_id = ? ORDER BY c.created_at DESC, c.id LIMIT 500"
    ))
    .bind(doctor.0.user.id.to_string())
    .fetch_all(&state.pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let record = record_from_row(row)?;
        out.push(view(&state, &record, None).await?);
    }
    Ok(Json(out))
}

/// `GET /api/v1/consultations/{id}`.
#[utoipa::path(get, path = "/api/v1/consultations/{id}", tag = "consultations",
    params(("id" = Uuid, Path, description = "consultation id")),
    responses((status = 200, body = Consultation), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Consultation>, ApiError> {
    let record = find_owned(&state, &doctor, id).await?;
    Ok(Json(view(&state, &record, None).await?))
}

/// `POST /api/v1/consultations/{id}/end`: end it, disconnect everyone, kill the invite.
#[utoipa::path(post, path = "/api/v1/consultations/{id}/end", tag = "consultations",
    params(("id" = Uuid, Path, description = "consultation id")),
    responses((status = 200, body = Consultation), (status = 404, body = ErrorBody)))]
pub async fn end(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Consultation>, ApiError> {
    let record = find_owned(&state, &doctor, id).await?;
    if record.status == ConsultationStatus::Open {
        let now = state.clock.now();
        sqlx::query("UPDATE consultations SET status = 'ended', ended_at = ? WHERE id = ? AND status = 'open'")
            .bind(to_unix(now))
            .bind(id.to_string())
            .execute(&state.pool)
            .await?;
        sqlx::query(
            "UPDATE invites SET revoked_at = ? WHERE consultation_id = ? AND revoked_at IS NULL",
        )
        .bind(to_unix(now))
        .bind(id.to_string())
        .execute(&state.pool)
        .await?;
        for departure in state.hub.end(id) {
            invites::depart(&state, &departure).await?;
        }
        invites::release_all(&state, id).await?;
        state
            .audit
            .record(
                now,
                &actor(&doctor),
                Action::ConsultationEnded,
                Some(id),
                json!({}),
            )
            .await?;
    }
    let record = find_owned(&state, &doctor, id).await?;
    Ok(Json(view(&state, &record, None).await?))
}

async fn find_open(
    state: &AppState,
    doctor: &CurrentDoctor,
    id: Uuid,
) -> Result<ConsultationRecord, ApiError> {
    let record = find_owned(state, doctor, id).await?;
    if record.status == ConsultationStatus::Ended {
        return Err(ApiError::gone(
            "consultation_ended",
            "this consultation has ended",
        ));
    }
    Ok(record)
}

/// `POST /api/v1/consultations/{id}/invite`: issue a new invite link; the old one stops working
/// and a device holding it is disconnected.
#[utoipa::path(post, path = "/api/v1/consultations/{id}/invite", tag = "consultations",
    params(("id" = Uuid, Path, description = "consultation id")),
    responses((status = 201, body = Invite), (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub async fn reissue_invite(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<impl IntoResponse, ApiError> {
    find_open(&state, &doctor, id).await?;
    Ok((
        StatusCode::CREATED,
        Json(issue_invite(&state, &doctor, id).await?),
    ))
}

/// `DELETE /api/v1/consultations/{id}/invite`: revoke the invite link.
#[utoipa::path(delete, path = "/api/v1/consultations/{id}/invite", tag = "consultations",
    params(("id" = Uuid, Path, description = "consultation id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke_invite(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    find_owned(&state, &doctor, id).await?;
    if revoke_invites(&state, &doctor, id).await? == 0 {
        return Err(ApiError::NotFound("live invite"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/waiting-room`: patients waiting for this doctor, across consultations.
#[utoipa::path(get, path = "/api/v1/waiting-room", tag = "consultations",
    responses((status = 200, body = [WaitingPatient]), (status = 401, body = ErrorBody)))]
pub async fn waiting_room(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
) -> Json<Vec<WaitingPatient>> {
    Json(state.hub.waiting_for(doctor.0.user.id))
}

/// Admit a waiting patient: shared by the REST endpoint and the signaling `admit` message.
pub async fn admit_patient(
    state: &AppState,
    doctor_user_id: Uuid,
    consultation_id: Uuid,
    participant_id: Uuid,
) -> Result<(), AdmissionError> {
    state
        .hub
        .admit(consultation_id, doctor_user_id, participant_id)?;
    state
        .audit
        .record_or_log(
            state.clock.now(),
            &format!("user:{doctor_user_id}"),
            Action::Admitted,
            Some(consultation_id),
            json!({ "participant_id": participant_id }),
        )
        .await;
    crate::recording::reconcile(state, consultation_id).await;
    Ok(())
}

/// Decline a waiting patient: shared by the REST endpoint and the signaling `decline` message.
pub async fn decline_patient(
    state: &AppState,
    doctor_user_id: Uuid,
    consultation_id: Uuid,
    participant_id: Uuid,
) -> Result<(), AdmissionError> {
    let departure = state
        .hub
        .decline(consultation_id, doctor_user_id, participant_id)?;
    let now = state.clock.now();
    let result = async {
        state
            .audit
            .record(
                now,
                &format!("user:{doctor_user_id}"),
                Action::Declined,
                Some(consultation_id),
                json!({ "participant_id": participant_id }),
            )
            .await?;
        invites::depart(state, &departure).await
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = format!("{e:#}"), "could not record a decline");
    }
    Ok(())
}

fn admission_error(e: AdmissionError) -> ApiError {
    match e {
        AdmissionError::NotWaiting => ApiError::NotFound("waiting patient"),
        AdmissionError::DoctorBusy => ApiError::conflict("doctor_busy", e.to_string()),
    }
}

/// `POST /api/v1/consultations/{id}/participants/{pid}/admit`.
#[utoipa::path(post, path = "/api/v1/consultations/{id}/participants/{pid}/admit", tag = "consultations",
    params(("id" = Uuid, Path, description = "consultation id"), ("pid" = Uuid, Path, description = "participant id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "doctor_busy")))]
pub async fn admit(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiPath((id, pid)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    find_open(&state, &doctor, id).await?;
    admit_patient(&state, doctor.0.user.id, id, pid)
        .await
        .map_err(admission_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/consultations/{id}/participants/{pid}/decline`.
#[utoipa::path(post, path = "/api/v1/consultations/{id}/participants/{pid}/decline", tag = "consultations",
    params(("id" = Uuid, Path, description = "consultation id"), ("pid" = Uuid, Path, description = "participant id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn decline(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiPath((id, pid)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    find_open(&state, &doctor, id).await?;
    decline_patient(&state, doctor.0.user.id, id, pid)
        .await
        .map_err(admission_error)?;
    Ok(StatusCode::NO_CONTENT)
}
