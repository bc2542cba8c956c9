//! Consultations and their patient invites, as the doctor manages them: create, list, end,
//! reissue and revoke the patient link, see the waiting room, admit and decline. Who else takes
//! part (named invites, colleagues, removal) is in [`members`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use consult_proto::api::{
    Colleague, Consultation, ConsultationMode, ConsultationStatus, CreateConsultationRequest,
    ErrorBody, Invite, InviteKind, InviteStatus, WaitingPatient,
};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::{Action, Actor, AuditedTransaction};
use crate::auth::sessions::CurrentDoctor;
use crate::cluster::rooms;
use crate::db::to_unix;
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::invites;
use crate::secrets::Token;
use crate::signal::hub::AdmissionError;
use crate::state::AppState;

pub mod members;
pub mod rows;

use rows::mode_str;
pub use rows::{find, ConsultationRecord};

/// Longest title accepted.
const MAX_TITLE_CHARS: usize = 200;

/// Load a consultation that belongs to `doctor`; someone else's looks like a missing one.
pub(crate) async fn find_owned(
    state: &AppState,
    doctor: &CurrentDoctor,
    id: Uuid,
) -> Result<ConsultationRecord, ApiError> {
    find(&state.pool, id)
        .await?
        .filter(|c| c.doctor_id == doctor.0.user.id)
        .ok_or(ApiError::NotFound("consultation"))
}

/// The API's view of a consultation; `waiting` is its doctor's waiting room.
async fn view(
    state: &AppState,
    record: &ConsultationRecord,
    invite_url: Option<String>,
    waiting: &[WaitingPatient],
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
    let waiting: Vec<WaitingPatient> = waiting
        .iter()
        .filter(|w| w.consultation_id == record.id)
        .cloned()
        .collect();
    let invites = rows::named_invites(&state.pool, record.id, now)
        .await?
        .iter()
        .filter_map(members::named_invite)
        .collect();
    let clinicians = rows::colleagues_of(&state.pool, record.id)
        .await?
        .into_iter()
        .map(|c| Colleague {
            user_id: c.user_id,
            name: c.name,
            participant_id: c.participant_id,
            added_at: c.added_at,
        })
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
        invites,
        clinicians,
        max_participants: state.config.policy.max_participants,
        places_taken: u8::try_from(1 + rows::places_promised(&state.pool, record.id, now).await?)
            .unwrap_or(u8::MAX),
    })
}

fn actor(doctor: &CurrentDoctor) -> Actor {
    Actor::User(doctor.0.user.id)
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
    // The consultation, its first invite and their audit entries commit together.
    let scheduled_at = req.scheduled_at;
    let invite = state
        .write({
            let doctor = doctor.clone();
            move |state| async move {
                let mut tx = state.audit.begin().await?;
                rows::insert(
                    tx.connection(),
                    &rows::NewConsultation {
                        id,
                        doctor_id: doctor.0.user.id,
                        title: title.as_deref(),
                        scheduled_at,
                        mode,
                        e2ee,
                        created_at: now,
                    },
                )
                .await?;
                tx.record(
                    now,
                    &actor(&doctor),
                    Action::ConsultationCreated,
                    Some(id),
                    json!({ "mode": mode_str(mode), "e2ee": e2ee }),
                )
                .await?;
                let (_, invite) =
                    insert_invite(&state, &mut tx, &doctor, id, InviteKind::Patient, None, now)
                        .await?;
                tx.commit().await?;
                Ok::<_, ApiError>(invite)
            }
        })
        .await?;
    let record = find_owned(&state, &doctor, id).await?;
    Ok((
        StatusCode::CREATED,
        Json(view(&state, &record, Some(invite.invite_url), &[]).await?),
    ))
}

/// Revoke the patient link (disconnecting a device holding it) and issue a new one, audited in
/// one transaction; refused when the call could not take one more person.
async fn issue_invite(
    state: &AppState,
    doctor: &CurrentDoctor,
    consultation_id: Uuid,
) -> Result<Invite, ApiError> {
    let mut tx = state.audit.begin().await?;
    let revoked = revoke_invites(
        state,
        &mut tx,
        doctor,
        consultation_id,
        rows::Revoke::PatientLink,
    )
    .await?;
    members::check_room_for_one_more(state, &mut tx, consultation_id).await?;
    let (_, invite) = insert_invite(
        state,
        &mut tx,
        doctor,
        consultation_id,
        InviteKind::Patient,
        None,
        state.clock.now(),
    )
    .await?;
    tx.commit().await?;
    remove_holders(state, doctor.0.user.id, consultation_id, &revoked).await;
    Ok(invite)
}

/// A new invite of the consultation in `tx`, issued `now`, audited there: its id and link.
pub(crate) async fn insert_invite(
    state: &AppState,
    tx: &mut AuditedTransaction<'_>,
    doctor: &CurrentDoctor,
    consultation_id: Uuid,
    kind: InviteKind,
    name: Option<&str>,
    now: OffsetDateTime,
) -> Result<(Uuid, Invite), ApiError> {
    let token = Token::generate();
    let expires_at = now + state.config.invite.ttl;
    let invite_id = Uuid::new_v4();
    rows::insert_invite(
        tx.connection(),
        &rows::NewInvite {
            id: invite_id,
            consultation_id,
            kind,
            name,
            token_hash: &token.hash().0,
            issued_at: now,
            expires_at,
        },
    )
    .await?;
    // The name is the doctor's to see in the consultation, not the audit's to keep.
    tx.record(
        now,
        &actor(doctor),
        Action::InviteIssued,
        Some(consultation_id),
        json!({ "invite_id": invite_id, "kind": kind.as_str(), "named": name.is_some(),
                "expires_at": to_unix(expires_at) }),
    )
    .await?;
    Ok((
        invite_id,
        Invite {
            // The token travels in the fragment: browsers never send it to a server or in a
            // Referer.
            invite_url: format!("{}/join#{}", state.public_url, token.expose()),
            expires_at,
        },
    ))
}

/// Revoke live invites in `tx`, each audited there; the ids revoked. Their holders are removed
/// once the transaction has committed ([`remove_holders`]).
pub(crate) async fn revoke_invites(
    state: &AppState,
    tx: &mut AuditedTransaction<'_>,
    doctor: &CurrentDoctor,
    consultation_id: Uuid,
    which: rows::Revoke,
) -> Result<Vec<String>, ApiError> {
    let now = state.clock.now();
    let revoked = rows::revoke_invites(tx.connection(), consultation_id, which, now).await?;
    for invite_id in &revoked {
        tx.record(
            now,
            &actor(doctor),
            Action::InviteRevoked,
            Some(consultation_id),
            json!({ "invite_id": invite_id }),
        )
        .await?;
    }
    Ok(revoked)
}

/// Disconnect the devices that held these (now revoked and committed) invites. Each is tried:
/// a failure is logged, never returned, because the revocation stands and the answer (a new
/// invite link, shown once) must reach the doctor.
pub(crate) async fn remove_holders(
    state: &AppState,
    doctor_id: Uuid,
    consultation_id: Uuid,
    revoked: &[String],
) {
    for invite_id in revoked {
        if let Err(e) = rooms::remove_holders(state, doctor_id, consultation_id, invite_id).await {
            tracing::error!(error = format!("{e:#}"), %consultation_id, "could not disconnect the holder of a revoked invite");
        }
    }
}

/// `GET /api/v1/consultations`: the doctor's consultations, newest first.
#[utoipa::path(get, path = "/api/v1/consultations", tag = "consultations",
    responses((status = 200, body = [Consultation]), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
) -> Result<Json<Vec<Consultation>>, ApiError> {
    let records = rows::of_doctor(&state.pool, doctor.0.user.id).await?;
    let waiting = rooms::waiting_for(&state, doctor.0.user.id).await?;
    let mut out = Vec::with_capacity(records.len());
    for record in &records {
        out.push(view(&state, record, None, &waiting).await?);
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
    let waiting = rooms::waiting_for(&state, record.doctor_id).await?;
    Ok(Json(view(&state, &record, None, &waiting).await?))
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
        // Ended, its invites dead and the end audited, together; then everyone is told.
        let doctor_actor = actor(&doctor);
        state
            .write(move |state| async move {
                let mut tx = state.audit.begin().await?;
                let ended = rows::mark_ended(tx.connection(), id, now).await?;
                rows::revoke_invites(tx.connection(), id, rows::Revoke::All, now).await?;
                if ended {
                    tx.record(
                        now,
                        &doctor_actor,
                        Action::ConsultationEnded,
                        Some(id),
                        json!({}),
                    )
                    .await?;
                }
                tx.commit().await
            })
            .await?;
        // The end stands once committed: telling everyone is tried in full (at the node that
        // holds the room), failures logged.
        if let Err(e) = rooms::end(&state, doctor.0.user.id, id).await {
            tracing::error!(error = %e, consultation_id = %id, "could not tell everyone of the end");
            end_here(&state, id).await;
        }
    }
    let record = find_owned(&state, &doctor, id).await?;
    let waiting = rooms::waiting_for(&state, record.doctor_id).await?;
    Ok(Json(view(&state, &record, None, &waiting).await?))
}

pub(crate) async fn find_open(
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

/// `POST /api/v1/consultations/{id}/invite`: issue a new patient link; the old one stops
/// working and a device holding it is disconnected.
#[utoipa::path(post, path = "/api/v1/consultations/{id}/invite", tag = "consultations",
    params(("id" = Uuid, Path, description = "consultation id")),
    responses((status = 201, body = Invite), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "consultation_full: named invites and colleagues take every place"),
              (status = 410, body = ErrorBody)))]
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

/// `DELETE /api/v1/consultations/{id}/invite`: revoke the patient link.
#[utoipa::path(delete, path = "/api/v1/consultations/{id}/invite", tag = "consultations",
    params(("id" = Uuid, Path, description = "consultation id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke_invite(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    find_owned(&state, &doctor, id).await?;
    let mut tx = state.audit.begin().await?;
    let revoked = revoke_invites(&state, &mut tx, &doctor, id, rows::Revoke::PatientLink).await?;
    if revoked.is_empty() {
        return Err(ApiError::NotFound("live invite"));
    }
    tx.commit().await?;
    remove_holders(&state, doctor.0.user.id, id, &revoked).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/waiting-room`: patients waiting for this doctor, across consultations.
#[utoipa::path(get, path = "/api/v1/waiting-room", tag = "consultations",
    responses((status = 200, body = [WaitingPatient]), (status = 401, body = ErrorBody),
              (status = 503, body = ErrorBody, description = "cluster_unavailable")))]
pub async fn waiting_room(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
) -> Result<Json<Vec<WaitingPatient>>, ApiError> {
    rooms::waiting_for(&state, doctor.0.user.id).await.map(Json)
}

/// Close an ended consultation's room on this node (its doctor's home): everyone is told and
/// disconnected, each departure audited, every hold on its invites released.
pub async fn end_here(state: &AppState, id: Uuid) {
    for departure in state.hub.end(id) {
        if let Err(e) = invites::depart(state, &departure).await {
            tracing::error!(error = format!("{e:#}"), consultation_id = %id, "could not record a departure at the end");
        }
    }
    if let Err(e) = invites::release_all(state, id).await {
        tracing::error!(error = format!("{e:#}"), consultation_id = %id, "could not release the invite holds at the end");
    }
}

/// Admit someone waiting: shared by the REST endpoint and the signaling `admit` message.
pub async fn admit_patient(
    state: &AppState,
    doctor_user_id: Uuid,
    consultation_id: Uuid,
    participant_id: Uuid,
) -> Result<(), AdmissionError> {
    state
        .hub
        .admit(consultation_id, doctor_user_id, participant_id)?;
    // Kept, so a restarted service gives them their place in the call back (a colleague's is
    // kept with the colleague; the update of the other table changes nothing), and audited in
    // the same transaction. They are admitted already: if that fails, it is logged and the
    // admission audited on its own.
    let now = state.clock.now();
    let stored = state
        .write(move |state| async move {
            let mut tx = state.audit.begin().await?;
            rows::set_admitted(tx.connection(), participant_id, now).await?;
            rows::set_colleague_admitted(tx.connection(), participant_id, Some(now)).await?;
            tx.record(
                now,
                &Actor::User(doctor_user_id),
                Action::Admitted,
                Some(consultation_id),
                json!({ "participant_id": participant_id }),
            )
            .await?;
            tx.commit().await
        })
        .await;
    if let Err(e) = stored {
        tracing::error!(error = format!("{e:#}"), "could not store an admission");
        state
            .audit
            .record_or_log(
                now,
                &Actor::User(doctor_user_id),
                Action::Admitted,
                Some(consultation_id),
                json!({ "participant_id": participant_id, "stored": false }),
            )
            .await;
    }
    crate::recording::reconcile(state, consultation_id).await;
    Ok(())
}

/// Decline someone waiting: shared by the REST endpoint and the signaling `decline` message.
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
                &Actor::User(doctor_user_id),
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
        AdmissionError::Full => ApiError::conflict("consultation_full", e.to_string()),
    }
}

/// `POST /api/v1/consultations/{id}/participants/{pid}/admit`.
#[utoipa::path(post, path = "/api/v1/consultations/{id}/participants/{pid}/admit", tag = "consultations",
    params(("id" = Uuid, Path, description = "consultation id"), ("pid" = Uuid, Path, description = "participant id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "doctor_busy or consultation_full"),
              (status = 410, body = ErrorBody, description = "consultation_ended")))]
pub async fn admit(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiPath((id, pid)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    find_open(&state, &doctor, id).await?;
    rooms::admit(&state, doctor.0.user.id, id, pid)
        .await?
        .map_err(admission_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/consultations/{id}/participants/{pid}/decline`.
#[utoipa::path(post, path = "/api/v1/consultations/{id}/participants/{pid}/decline", tag = "consultations",
    params(("id" = Uuid, Path, description = "consultation id"), ("pid" = Uuid, Path, description = "participant id")),
    responses((status = 204), (status = 404, body = ErrorBody),
              (status = 410, body = ErrorBody, description = "consultation_ended")))]
pub async fn decline(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiPath((id, pid)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    find_open(&state, &doctor, id).await?;
    rooms::decline(&state, doctor.0.user.id, id, pid)
        .await?
        .map_err(admission_error)?;
    Ok(StatusCode::NO_CONTENT)
}
