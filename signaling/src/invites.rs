//! Patient invites from the patient's side: inspect a link, redeem it for a participant token,
//! and the rule that one device holds a link at a time.
//!
//! A redeemed invite is held by its participant until they leave, are declined or removed, stay
//! away longer than the reconnect grace period, or the consultation ends. While it is held, a
//! second device gets `409 invite_in_use`; the first keeps working.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use consult_proto::api::{
    ConsultationStatus, ErrorBody, InspectInviteRequest, InviteInfo, RedeemInviteRequest,
    RedeemInviteResponse,
};
use consult_proto::signal::{ParticipantRole, ServerMessage, SignalErrorCode};
use serde_json::json;
use uuid::Uuid;

use crate::alerts::rules::Observation;
use crate::audit::{Action, Actor};
use crate::audit_tally;
use crate::client_origin::ClientOrigin;
use crate::consultations::{self, rows, ConsultationRecord};
use crate::error::{ApiError, ApiJson};
use crate::secrets::Token;
use crate::signal::hub::{Departure, RestoredPlace};
use crate::state::AppState;

/// Longest patient name accepted.
const MAX_NAME_CHARS: usize = 80;

pub use crate::consultations::rows::{latest_invite as latest, InviteRecord};

/// A name as people enter it, trimmed, or `400 invalid_name`: 1 to 80 characters, not only
/// spaces, no control characters.
pub(crate) fn checked_name(raw: &str) -> Result<String, ApiError> {
    let name = raw.trim().to_owned();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(invalid_name());
    }
    Ok(name)
}

/// `400 invalid_name`: no name, or not one [`checked_name`] takes.
fn invalid_name() -> ApiError {
    ApiError::bad_request(
        "invalid_name",
        format!("enter a name of 1 to {MAX_NAME_CHARS} characters"),
    )
}

/// Find the invite a link names and check it can be used now.
async fn usable_invite(
    state: &AppState,
    token: &str,
) -> Result<(InviteRecord, ConsultationRecord), ApiError> {
    let not_found = || ApiError::NotFound("invite");
    let invite = rows::invite_by_token(&state.pool, &Token::from_client(token).hash().0)
        .await?
        .ok_or_else(not_found)?;
    let consultation = consultations::find(&state.pool, invite.consultation_id)
        .await?
        .ok_or_else(not_found)?;
    if consultation.status == ConsultationStatus::Ended {
        return Err(ApiError::gone(
            "consultation_ended",
            "this consultation has ended",
        ));
    }
    if invite.revoked_at.is_some() {
        return Err(ApiError::gone(
            "invite_revoked",
            "this invite link was withdrawn; ask your clinic for a new one",
        ));
    }
    if invite.expires_at <= state.clock.now() {
        return Err(ApiError::gone(
            "invite_expired",
            "this invite link has expired; ask your clinic for a new one",
        ));
    }
    Ok((invite, consultation))
}

fn info(invite: &InviteRecord, consultation: &ConsultationRecord) -> InviteInfo {
    InviteInfo {
        consultation_id: consultation.id,
        doctor_name: consultation.doctor_name.clone(),
        mode: consultation.mode,
        e2ee: consultation.e2ee,
        expires_at: invite.expires_at,
        kind: invite.kind,
        name: invite.name.clone(),
    }
}

/// Map "not found" to the patient-facing code.
fn patient_facing(e: ApiError) -> ApiError {
    match e {
        ApiError::NotFound(_) => ApiError::Gone {
            code: "invite_not_found",
            message: "this invite link is not valid; check that you copied all of it".into(),
        },
        other => other,
    }
}

/// `POST /api/v1/invites/inspect`: where an invite leads, before the patient joins.
#[utoipa::path(post, path = "/api/v1/invites/inspect", tag = "patients", request_body = InspectInviteRequest,
    responses((status = 200, body = InviteInfo),
              (status = 410, body = ErrorBody, description = "invite_not_found, invite_expired, invite_revoked or consultation_ended")))]
pub async fn inspect(
    State(state): State<AppState>,
    origin: ClientOrigin,
    ApiJson(req): ApiJson<InspectInviteRequest>,
) -> Result<Json<InviteInfo>, ApiError> {
    let (invite, consultation) = usable_or_counted(&state, &origin, &req.invite).await?;
    Ok(Json(info(&invite, &consultation)))
}

/// `POST /api/v1/invites/redeem`: take the patient's place in the consultation.
#[utoipa::path(post, path = "/api/v1/invites/redeem", tag = "patients", request_body = RedeemInviteRequest,
    responses((status = 201, body = RedeemInviteResponse),
              (status = 400, body = ErrorBody, description = "invalid_name"),
              (status = 409, body = ErrorBody, description = "invite_in_use: another device holds the link"),
              (status = 410, body = ErrorBody, description = "invite_not_found, invite_expired, invite_revoked or consultation_ended")))]
pub async fn redeem(
    State(state): State<AppState>,
    origin: ClientOrigin,
    ApiJson(req): ApiJson<RedeemInviteRequest>,
) -> Result<impl IntoResponse, ApiError> {
    // A name given is checked before anything else (a named invite then ignores it).
    let entered = req.name.as_deref().map(checked_name).transpose()?;
    let now = state.clock.now();
    let (invite, consultation) = usable_or_counted(&state, &origin, &req.invite).await?;
    // A named invite carries the name its doctor chose: whoever opens it cannot pose as
    // someone else. The patient link needs the patient's.
    let name = match (&invite.name, entered) {
        (Some(name), _) => name.clone(),
        (None, Some(entered)) => entered,
        (None, None) => return Err(invalid_name()),
    };
    let participant_id = Uuid::new_v4();
    let token = Token::generate();
    // The place taken and its audit entry commit together.
    let taken = state
        .write({
            let (consultation_id, invite_id, role) = (consultation.id, invite.id, invite.kind);
            let (name, token_hash) = (name.clone(), token.hash().0);
            move |state| async move {
                let mut tx = state.audit.begin().await?;
                let place = rows::NewParticipant {
                    id: participant_id,
                    consultation_id,
                    invite_id,
                    role,
                    name: &name,
                    token_hash: &token_hash,
                    created_at: now,
                };
                if !rows::insert_participant(tx.connection(), &place).await? {
                    return Ok::<_, anyhow::Error>(false);
                }
                tx.record(
                    now,
                    &Actor::Participant(participant_id),
                    Action::InviteUsed,
                    Some(consultation_id),
                    json!({ "invite_id": invite_id }),
                )
                .await?;
                tx.commit().await?;
                Ok(true)
            }
        })
        .await?;
    if !taken {
        // Revoked, expired or ended meanwhile: said as such; otherwise another device has it.
        usable_or_counted(&state, &origin, &req.invite).await?;
        refused(&state, &origin, Some(consultation.id), "invite_in_use").await?;
        return Err(ApiError::conflict(
            "invite_in_use",
            "this link is already in use on another device",
        ));
    }
    // A device that redeems but never connects must not hold the link for ever.
    let grace = state.config.signaling.reconnect_grace;
    let state_for_timer = state.clone();
    let consultation_id = consultation.id;
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        if !state_for_timer
            .hub
            .is_present(consultation_id, participant_id)
            && let Err(e) = release(&state_for_timer, participant_id).await
        {
            tracing::error!(
                error = format!("{e:#}"),
                "could not release an unused invite"
            );
        }
    });
    Ok((
        StatusCode::CREATED,
        Json(RedeemInviteResponse {
            participant_token: token.expose().to_owned(),
            participant_id,
            invite: info(&invite, &consultation),
        }),
    ))
}

/// The invite behind `token` and its consultation; a link that is unknown, expired, revoked or
/// ended is counted as refused ([`refused`]) and answered as the patient should hear it.
async fn usable_or_counted(
    state: &AppState,
    origin: &ClientOrigin,
    token: &str,
) -> Result<(InviteRecord, ConsultationRecord), ApiError> {
    match usable_invite(state, token).await {
        Ok(found) => Ok(found),
        Err(e) => {
            let e = patient_facing(e);
            refused(state, origin, None, e.code()).await?;
            Err(e)
        }
    }
}

/// Count a refused redemption or lookup (by nobody we know: the device has no place) in the
/// audit's tallies, per source and window ([`audit_tally`]).
pub(crate) async fn refused(
    state: &AppState,
    origin: &ClientOrigin,
    consultation_id: Option<Uuid>,
    reason: &str,
) -> anyhow::Result<()> {
    let event = audit_tally::Unauthenticated {
        action: Action::InviteRefused,
        actor: Actor::Anonymous,
        source: origin.address,
        reason,
        consultation_id,
    };
    let now = state.clock.now();
    if reason == "invite_not_found" {
        state.alerts.observe(
            now,
            Observation::UnknownInvite {
                source: origin.address,
            },
        );
    }
    audit_tally::count_now(&state.writer, now, &state.config.audit, &event).await
}

/// A place taken with an invite, looked up by participant token.
#[derive(Debug, Clone)]
pub struct ParticipantRecord {
    /// Participant id.
    pub id: Uuid,
    /// Name entered, or the invite's.
    pub name: String,
    /// Patient, interpreter or companion.
    pub role: ParticipantRole,
    /// The consultation.
    pub consultation: ConsultationRecord,
}

/// The unreleased participant a token belongs to.
pub async fn find_participant(
    state: &AppState,
    token: &Token,
) -> Result<Option<ParticipantRecord>, ApiError> {
    let Some(place) = rows::held_place(&state.pool, &token.hash().0).await? else {
        return Ok(None);
    };
    let Some(consultation) = consultations::find(&state.pool, place.consultation_id).await? else {
        return Ok(None);
    };
    Ok(Some(ParticipantRecord {
        id: place.id,
        name: place.name,
        role: place.role,
        consultation,
    }))
}

/// Release a patient's hold on their invite; their token stops working.
pub async fn release(state: &AppState, participant_id: Uuid) -> anyhow::Result<()> {
    let now = state.clock.now();
    state
        .write(move |state| async move {
            rows::release_place(&state.writer, participant_id, now).await
        })
        .await
}

/// Release every patient of a consultation (it ended).
pub async fn release_all(state: &AppState, consultation_id: Uuid) -> anyhow::Result<()> {
    let now = state.clock.now();
    state
        .write(move |state| async move {
            rows::release_places(&state.writer, consultation_id, now).await?;
            rows::clear_colleagues_admitted(&state.writer, consultation_id).await
        })
        .await
}

/// Release the patients holding a revoked invite and disconnect them.
pub async fn remove_holders(
    state: &AppState,
    consultation_id: Uuid,
    invite_id: &str,
) -> anyhow::Result<()> {
    for participant_id in rows::invite_holders(&state.pool, invite_id).await? {
        let last_words = ServerMessage::Error {
            code: SignalErrorCode::Unauthorized,
            message: "your invite link was withdrawn by the clinic".into(),
            fatal: true,
        };
        match state
            .hub
            .remove(consultation_id, participant_id, last_words)
        {
            Some(departure) => depart(state, &departure).await?,
            None => release(state, participant_id).await?,
        }
    }
    Ok(())
}

/// Record that someone left for good: release the invite they held (a colleague is simply out
/// of the call) and audit it (together), then let the recording policy see who is left.
pub async fn depart(state: &AppState, departure: &Departure) -> anyhow::Result<()> {
    let now = state.clock.now();
    let (participant_id, consultation_id, role) = (
        departure.participant_id,
        departure.consultation_id,
        departure.role,
    );
    let detail = json!({ "role": departure.role, "reason": departure.reason });
    state
        .write(move |state| async move {
            let mut tx = state.audit.begin().await?;
            match role {
                ParticipantRole::Patient
                | ParticipantRole::Interpreter
                | ParticipantRole::Companion => {
                    rows::release_place(tx.connection(), participant_id, now).await?;
                }
                ParticipantRole::Clinician => {
                    rows::set_colleague_admitted(tx.connection(), participant_id, None).await?;
                }
                ParticipantRole::Doctor | ParticipantRole::Recorder => {}
            }
            tx.record(
                now,
                &Actor::Participant(participant_id),
                Action::Left,
                Some(consultation_id),
                detail,
            )
            .await?;
            tx.commit().await
        })
        .await?;
    if departure.role != ParticipantRole::Recorder {
        // A patient gone may end the recording; the recorder's own departure is its doing.
        crate::recording::reconcile(state, departure.consultation_id).await;
    }
    Ok(())
}

/// At start-up: every place the previous run left held goes back to its consultation's room,
/// offline, admitted or waiting as it was, with the patient's recording answer; the doctor's
/// participant id is the consultation's own. Whoever reconnects within the reconnect grace
/// resumes (the same token, the same peers, no new admission); whoever does not is removed as
/// after any lost connection. Places of a consultation that ended are released. Returns how
/// many places came back.
///
/// With several nodes, the same happens for one doctor's consultations (`doctor`) when a node
/// becomes their home after the node that held them is gone; recordings that node left open are
/// closed first (interrupted, kept up to their last sealed chunk).
pub async fn restore_places(state: &AppState, doctor: Option<Uuid>) -> anyhow::Result<usize> {
    if let Some(doctor) = doctor {
        crate::recording::close_left_open(
            &state.writer,
            &state.recordings.vault,
            &state.clock,
            Some(doctor),
        )
        .await?;
    }
    let mut by_consultation: std::collections::BTreeMap<Uuid, Vec<RestoredPlace>> =
        std::collections::BTreeMap::new();
    let mut held = rows::held_places(&state.pool, doctor).await?;
    held.extend(rows::admitted_colleagues(&state.pool, doctor).await?);
    for (consultation_id, place) in held {
        by_consultation
            .entry(consultation_id)
            .or_default()
            .push(place);
    }
    let now = state.clock.now();
    let mut restored = 0;
    for (consultation_id, places) in by_consultation {
        let record = crate::consultations::find(&state.pool, consultation_id).await?;
        let Some(record) = record.filter(|c| c.status != ConsultationStatus::Ended) else {
            rows::release_places(&state.writer, consultation_id, now).await?;
            continue;
        };
        restored += places.len();
        let info = record.room_info(state.config.policy.max_participants);
        for (participant_id, generation) in state.hub.restore(info, places, now) {
            crate::signal::socket::schedule_expiry(
                state.clone(),
                consultation_id,
                participant_id,
                generation,
            );
        }
    }
    Ok(restored)
}
