//! Who else takes part in a consultation, as its doctor decides: a named invite per extra person
//! (a patient, an interpreter, a family member or carer), colleagues by their clinician account,
//! and removing anyone. Each change commits with its audit entry; nobody is promised a place
//! beyond the organisation's `policy.max_participants`, the doctor included.
//!
//! Every invited person and colleague waits in the waiting room and is admitted separately, as a
//! patient is; a removed one cannot come back (their invite is revoked, or they are off the
//! consultation) until the doctor invites or adds them again.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use consult_proto::api::{
    AddClinicianRequest, Colleague, ErrorBody, IssueInviteRequest, IssuedInvite, NamedInvite, Role,
    SharedConsultation,
};
use consult_proto::signal::{ServerMessage, SignalErrorCode};
use serde_json::json;
use uuid::Uuid;

use super::rows::{self, InviteRecord, Revoke};
use super::{actor, find_open, find_owned, insert_invite, remove_holders, revoke_invites};
use crate::audit::{Action, AuditedTransaction};
use crate::auth::sessions::CurrentDoctor;
use crate::cluster::rooms;
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::state::AppState;

/// A named invite as its doctor sees it; `None` for the patient link.
pub(crate) fn named_invite(record: &InviteRecord) -> Option<NamedInvite> {
    Some(NamedInvite {
        id: record.id,
        kind: record.kind,
        name: record.name.clone()?,
        issued_at: record.issued_at,
        expires_at: record.expires_at,
        in_use: record.in_use,
    })
}

/// Refuse (`409 consultation_full`) when the consultation has promised every place it has: the
/// doctor, each live or held invite, and each colleague count.
pub(crate) async fn check_room_for_one_more(
    state: &AppState,
    tx: &mut AuditedTransaction<'_>,
    consultation_id: Uuid,
) -> Result<(), ApiError> {
    let max = usize::from(state.config.policy.max_participants);
    let promised =
        rows::places_promised(tx.connection(), consultation_id, state.clock.now()).await?;
    if 1 + promised >= max {
        return Err(ApiError::conflict(
            "consultation_full",
            format!(
                "this consultation has places for {max} people, you included, and every one is \
                 promised: revoke an invite or remove a colleague first"
            ),
        ));
    }
    Ok(())
}

/// `POST /api/v1/consultations/{id}/invites`: invite one more person with a link of their own,
/// for a kind of participant and under a name the doctor chooses.
#[utoipa::path(post, path = "/api/v1/consultations/{id}/invites", tag = "consultations",
    request_body = IssueInviteRequest,
    params(("id" = Uuid, Path, description = "consultation id")),
    responses((status = 201, body = IssuedInvite, description = "issued; `invite_url` is shown only here"),
              (status = 400, body = ErrorBody, description = "invalid_name"),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "consultation_full"),
              (status = 410, body = ErrorBody, description = "consultation_ended")))]
pub async fn issue_invite(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<IssueInviteRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let name = crate::invites::checked_name(&req.name)?;
    find_open(&state, &doctor, id).await?;
    let mut tx = state.audit.begin().await?;
    check_room_for_one_more(&state, &mut tx, id).await?;
    let now = state.clock.now();
    let (invite_id, invite) =
        insert_invite(&state, &mut tx, &doctor, id, req.kind, Some(&name), now).await?;
    tx.commit().await?;
    let issued = IssuedInvite {
        invite: NamedInvite {
            id: invite_id,
            kind: req.kind,
            name,
            // As stored (whole seconds), so that this answer and later reads agree.
            issued_at: crate::db::from_unix(crate::db::to_unix(now)),
            expires_at: invite.expires_at,
            in_use: false,
        },
        invite_url: invite.invite_url,
    };
    Ok((StatusCode::CREATED, Json(issued)))
}

/// `DELETE /api/v1/consultations/{id}/invites/{invite_id}`: revoke one invite; a device holding
/// it is disconnected and cannot come back with it.
#[utoipa::path(delete, path = "/api/v1/consultations/{id}/invites/{invite_id}", tag = "consultations",
    params(("id" = Uuid, Path, description = "consultation id"), ("invite_id" = Uuid, Path, description = "invite id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody, description = "no such live invite of this consultation")))]
pub async fn revoke_invite(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiPath((id, invite_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    find_owned(&state, &doctor, id).await?;
    let mut tx = state.audit.begin().await?;
    let revoked = revoke_invites(&state, &mut tx, &doctor, id, Revoke::One(invite_id)).await?;
    if revoked.is_empty() {
        return Err(ApiError::NotFound("live invite"));
    }
    tx.commit().await?;
    remove_holders(&state, doctor.0.user.id, id, &revoked).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/consultations/{id}/clinicians`: add a colleague by their account's email. They
/// find it under `GET /api/v1/consultations/shared`, join with its id, and wait to be admitted.
#[utoipa::path(post, path = "/api/v1/consultations/{id}/clinicians", tag = "consultations",
    request_body = AddClinicianRequest,
    params(("id" = Uuid, Path, description = "consultation id")),
    responses((status = 201, body = Colleague),
              (status = 400, body = ErrorBody, description = "invalid_email, or own_consultation: that is your own account"),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody, description = "no such consultation, or no active clinician account with that email"),
              (status = 409, body = ErrorBody, description = "already_added or consultation_full"),
              (status = 410, body = ErrorBody, description = "consultation_ended")))]
pub async fn add_clinician(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<AddClinicianRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let email = req.email.trim();
    if email.is_empty() || email.chars().count() > 254 || email.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_email",
            "enter the sign-in email of a colleague's account (at most 254 characters)",
        ));
    }
    find_open(&state, &doctor, id).await?;
    let colleague = crate::accounts::find_by_email(&state.pool, email)
        .await?
        .filter(|a| a.user.role == Role::Doctor && a.disabled_at.is_none())
        .ok_or(ApiError::NotFound("clinician account"))?;
    if colleague.user.id == doctor.0.user.id {
        return Err(ApiError::bad_request(
            "own_consultation",
            "that is your own account: you are in this consultation already",
        ));
    }
    let now = state.clock.now();
    let already_added = || {
        ApiError::conflict(
            "already_added",
            "this colleague is on the consultation already",
        )
    };
    let mut tx = state.audit.begin().await?;
    if rows::colleague(tx.connection(), id, colleague.user.id)
        .await?
        .is_some()
    {
        return Err(already_added());
    }
    check_room_for_one_more(&state, &mut tx, id).await?;
    let Some(participant_id) =
        rows::add_colleague(tx.connection(), id, colleague.user.id, now).await?
    else {
        return Err(already_added());
    };
    tx.record(
        now,
        &actor(&doctor),
        Action::ClinicianAdded,
        Some(id),
        json!({ "user_id": colleague.user.id }),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(Colleague {
            user_id: colleague.user.id,
            name: colleague.user.display_name,
            participant_id,
            // As stored (whole seconds), so that this answer and later reads agree.
            added_at: crate::db::from_unix(crate::db::to_unix(now)),
        }),
    ))
}

/// `DELETE /api/v1/consultations/{id}/clinicians/{user_id}`: take a colleague off the
/// consultation; if they are in the call or waiting, they are disconnected.
#[utoipa::path(delete, path = "/api/v1/consultations/{id}/clinicians/{user_id}", tag = "consultations",
    params(("id" = Uuid, Path, description = "consultation id"), ("user_id" = Uuid, Path, description = "the colleague's account")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody, description = "no such colleague on this consultation")))]
pub async fn remove_clinician(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiPath((id, user_id)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    find_owned(&state, &doctor, id).await?;
    take_colleague_off(&state, &doctor, id, user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Take colleague `user_id` off consultation `id` (audited, committed), then disconnect them.
async fn take_colleague_off(
    state: &AppState,
    doctor: &CurrentDoctor,
    id: Uuid,
    user_id: Uuid,
) -> Result<(), ApiError> {
    let now = state.clock.now();
    let mut tx = state.audit.begin().await?;
    let participant_id = rows::remove_colleague(tx.connection(), id, user_id, now)
        .await?
        .ok_or(ApiError::NotFound("colleague"))?;
    tx.record(
        now,
        &actor(doctor),
        Action::ClinicianRemoved,
        Some(id),
        json!({ "user_id": user_id, "participant_id": participant_id }),
    )
    .await?;
    tx.commit().await?;
    // The removal stands once committed: disconnecting is tried, a failure logged.
    if let Err(e) = rooms::remove_colleague(state, doctor.0.user.id, id, participant_id).await {
        tracing::error!(error = %e, consultation_id = %id, "could not disconnect a removed colleague");
    }
    Ok(())
}

/// At the doctor's home: disconnect a colleague just taken off the consultation, if they are in
/// its room, and record their departure.
pub async fn remove_colleague_here(
    state: &AppState,
    consultation_id: Uuid,
    participant_id: Uuid,
) -> anyhow::Result<()> {
    let last_words = ServerMessage::Error {
        code: SignalErrorCode::Forbidden,
        message: "the clinician took you off this consultation".into(),
        fatal: true,
    };
    if let Some(departure) = state
        .hub
        .remove(consultation_id, participant_id, last_words)
    {
        crate::invites::depart(state, &departure).await?;
    }
    Ok(())
}

/// `POST /api/v1/consultations/{id}/participants/{pid}/remove`: remove anyone from the call or
/// the waiting room — an invite's holder (their invite is revoked: they cannot come back with
/// it) or a colleague (taken off the consultation).
#[utoipa::path(post, path = "/api/v1/consultations/{id}/participants/{pid}/remove", tag = "consultations",
    params(("id" = Uuid, Path, description = "consultation id"), ("pid" = Uuid, Path, description = "participant id")),
    responses((status = 204),
              (status = 400, body = ErrorBody, description = "cannot_remove_yourself"),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody, description = "no such participant in this consultation"),
              (status = 410, body = ErrorBody, description = "consultation_ended")))]
pub async fn remove_participant(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiPath((id, pid)): ApiPath<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let record = find_open(&state, &doctor, id).await?;
    if pid == record.doctor_participant_id {
        return Err(ApiError::bad_request(
            "cannot_remove_yourself",
            "you cannot remove yourself; leave or end the consultation instead",
        ));
    }
    if let Some(place) = rows::held_place_by_id(&state.pool, id, pid).await? {
        let now = state.clock.now();
        let mut tx = state.audit.begin().await?;
        let mut revoked =
            revoke_invites(&state, &mut tx, &doctor, id, Revoke::One(place.invite_id)).await?;
        // Revoked already (a removal whose disconnection failed, say): its holder goes anyway.
        let invite = place.invite_id.to_string();
        if !revoked.contains(&invite) {
            revoked.push(invite);
        }
        tx.record(
            now,
            &actor(&doctor),
            Action::ParticipantRemoved,
            Some(id),
            json!({ "participant_id": pid, "role": place.role, "invite_id": place.invite_id }),
        )
        .await?;
        tx.commit().await?;
        remove_holders(&state, doctor.0.user.id, id, &revoked).await;
        return Ok(StatusCode::NO_CONTENT);
    }
    if let Some(colleague) = rows::colleague_by_participant(&state.pool, id, pid).await? {
        take_colleague_off(&state, &doctor, id, colleague.user_id).await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    Err(ApiError::NotFound("participant"))
}

/// `GET /api/v1/consultations/shared`: the consultations other clinicians added you to, most
/// recently added first.
#[utoipa::path(get, path = "/api/v1/consultations/shared", tag = "consultations",
    responses((status = 200, body = [SharedConsultation]), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
pub async fn shared(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
) -> Result<Json<Vec<SharedConsultation>>, ApiError> {
    let shared = rows::shared_with(&state.pool, doctor.0.user.id).await?;
    Ok(Json(
        shared
            .into_iter()
            .map(|(c, added_at)| SharedConsultation {
                id: c.id,
                title: c.title,
                doctor_name: c.doctor_name,
                mode: c.mode,
                e2ee: c.e2ee,
                status: c.status,
                added_at,
            })
            .collect(),
    ))
}
