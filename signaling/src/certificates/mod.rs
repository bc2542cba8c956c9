//! Signed medical certificates: a clinician of a consultation issues one for its patient; the
//! patient's invite link fetches it and makes presentations that disclose only what the patient
//! chooses (a link, a QR code, a printable PDF); anyone verifies a presentation at `/verify`
//! or with `consult certificate verify`; the clinician or an administrator revokes it, and the
//! status list says so.
//!
//! The certificate itself (`consult_certificate`) is sealed by the vault in the database row;
//! every issue, view, fetch, presentation, revocation and refusal is audited (refused
//! verifications and unknown links are counted per source, like refused sign-ins).

pub mod issuer;
pub mod render;
pub mod rows;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use consult_certificate::{CertificateContent, CertificateError, CertificateKind};
use consult_proto::api::{
    CertificateClaim, CertificateKindName, CertificateList, CertificateState, CertificateSummary,
    ErrorBody, HeldCertificate, HeldCertificates, HeldCertificatesRequest, InviteKind,
    IssueCertificateRequest, Presentation, PresentationRequest, RevokeCertificateRequest,
    VerificationOutcome, VerificationResult, VerifyCertificateRequest,
};
use rand::Rng;
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use self::rows::CertificateRecord;
use crate::audit::{Action, Actor};
use crate::audit_tally;
use crate::auth::sessions::{CurrentDoctor, CurrentUser};
use crate::client_origin::ClientOrigin;
use crate::consultations::{self, rows as consultation_rows};
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::secrets::Token;
use crate::state::AppState;

/// Longest revocation reason (characters).
const MAX_REASON_CHARS: usize = 500;
/// Longest presentation (or verify link) accepted for verification.
const MAX_PRESENTATION_BYTES: usize = 16 * 1024;
/// A holder's fetches of one certificate are audited at most this often (its first always).
const FETCH_AUDIT_EVERY: time::Duration = time::Duration::hours(1);
/// Longest period a certificate covers.
const MAX_PERIOD_DAYS: i64 = 366;

fn kind_of(name: CertificateKindName) -> CertificateKind {
    match name {
        CertificateKindName::UnfitForWork => CertificateKind::UnfitForWork,
        CertificateKindName::Attendance => CertificateKind::Attendance,
        CertificateKindName::FitToTravel => CertificateKind::FitToTravel,
        CertificateKindName::FreeText => CertificateKind::FreeText,
    }
}

fn name_of(kind: CertificateKind) -> CertificateKindName {
    match kind {
        CertificateKind::UnfitForWork => CertificateKindName::UnfitForWork,
        CertificateKind::Attendance => CertificateKindName::Attendance,
        CertificateKind::FitToTravel => CertificateKindName::FitToTravel,
        CertificateKind::FreeText => CertificateKindName::FreeText,
    }
}

/// The kind for people.
pub fn kind_label(kind: CertificateKindName) -> &'static str {
    match kind {
        CertificateKindName::UnfitForWork => "Unfit for work",
        CertificateKindName::Attendance => "Attended a consultation",
        CertificateKindName::FitToTravel => "Fit to travel",
        CertificateKindName::FreeText => "Medical certificate",
    }
}

/// A claim's name for people.
fn claim_label(name: &str) -> &'static str {
    match name {
        "period" => "Period",
        "patient_name" => "Patient",
        "clinician_name" => "Clinician",
        "clinician_licence" => "Clinician's licence number",
        "restrictions" => "Restrictions",
        "diagnosis" => "Diagnosis",
        "note" => "Note",
        _ => "Claim",
    }
}

fn claim_text(name: &str, value: &serde_json::Value) -> String {
    match (name, value) {
        ("period", v) => format!(
            "{} to {}",
            v["start"].as_str().unwrap_or("?"),
            v["end"].as_str().unwrap_or("?")
        ),
        (_, serde_json::Value::String(text)) => text.clone(),
        (_, other) => other.to_string(),
    }
}

fn day(text: &str, field: &str) -> Result<time::Date, ApiError> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, format).map_err(|_| {
        ApiError::bad_request(
            "invalid_certificate",
            format!("{field} must be a date written YYYY-MM-DD"),
        )
    })
}

fn optional_text(text: &Option<String>) -> Option<String> {
    text.as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// Whether `user` is a clinician of the consultation: its doctor, or a colleague on it now.
async fn is_clinician_of(
    state: &AppState,
    consultation: &consultation_rows::ConsultationRecord,
    user: Uuid,
) -> Result<bool, ApiError> {
    Ok(consultation.doctor_id == user
        || consultation_rows::colleague(&state.pool, consultation.id, user)
            .await?
            .is_some())
}

/// `user` as the actor on consultation `id`, if they are one of its clinicians; otherwise the
/// refusal (audited) for what they `attempted`.
async fn as_clinician_of(
    state: &AppState,
    user: Uuid,
    id: Uuid,
    attempted: &str,
    reason: &'static str,
) -> Result<Actor, ApiError> {
    let actor = Actor::User(user);
    let consultation = consultations::find(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound("consultation"))?;
    if !is_clinician_of(state, &consultation, user).await? {
        return Err(refuse(state, &actor, id, attempted, reason).await);
    }
    Ok(actor)
}

/// A refusal of a signed-in clinician: audited, then `403` with the reason.
async fn refuse(
    state: &AppState,
    actor: &Actor,
    consultation_id: Uuid,
    what: &str,
    reason: &'static str,
) -> ApiError {
    if let Err(e) = state
        .audit
        .record(
            state.clock.now(),
            actor,
            Action::CertificateRefused,
            Some(consultation_id),
            json!({ "attempted": what, "reason": reason }),
        )
        .await
    {
        return ApiError::Internal(e);
    }
    ApiError::Denied(reason.to_owned())
}

/// The certificate held in `record`, opened from the vault (`None` after retention).
async fn opened(state: &AppState, record: &CertificateRecord) -> Result<Option<String>, ApiError> {
    let Some(sealed) = &record.sealed else {
        return Ok(None);
    };
    let sealed: consult_vault::SealedDocument =
        serde_json::from_str(sealed).map_err(|e| ApiError::Internal(e.into()))?;
    let vault = state.recordings.vault.clone();
    let id = record.id;
    let bytes = tokio::task::spawn_blocking(move || vault.open_document(id, &sealed))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| ApiError::Internal(e.into()))?;
    String::from_utf8(bytes.to_vec())
        .map(Some)
        .map_err(|e| ApiError::Internal(e.into()))
}

fn claims_of(issued: &str) -> Result<Vec<CertificateClaim>, ApiError> {
    Ok(consult_certificate::claims(issued)
        .map_err(|e| ApiError::Internal(e.into()))?
        .into_iter()
        .map(|(name, value)| CertificateClaim { name, value })
        .collect())
}

fn summary(
    record: &CertificateRecord,
    issued: Option<&str>,
) -> Result<CertificateSummary, ApiError> {
    Ok(CertificateSummary {
        id: record.id,
        consultation_id: record.consultation_id,
        kind: record.kind,
        issued_at: record.issued_at,
        valid_until: record.valid_until,
        holder_until: record.holder_until,
        issued_by: record.issued_by_name.clone(),
        state: record.state(),
        revoked_at: record.revoked_at,
        revoke_reason: record.revoke_reason.clone(),
        claims: issued.map(claims_of).transpose()?,
    })
}

/// `POST /api/v1/consultations/{id}/certificates`: a clinician of the consultation issues a
/// certificate for its patient, signed as the organisation with the clinician's name and
/// licence number.
#[utoipa::path(post, path = "/api/v1/consultations/{id}/certificates", tag = "certificates",
    params(("id" = Uuid, Path, description = "consultation id")),
    request_body = IssueCertificateRequest,
    responses((status = 201, body = CertificateSummary),
              (status = 400, body = ErrorBody, description = "invalid_certificate: a field is missing, too long or inconsistent"),
              (status = 403, body = ErrorBody, description = "not a clinician of this consultation"),
              (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "licence_number_missing")))]
pub async fn issue(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<IssueCertificateRequest>,
) -> Result<(StatusCode, Json<CertificateSummary>), ApiError> {
    let user = &doctor.0.user;
    let actor = as_clinician_of(
        &state,
        user.id,
        id,
        "issue",
        "only a clinician of this consultation may issue its certificates",
    )
    .await?;
    let Some(licence) = rows::licence_number(&state.pool, user.id).await? else {
        return Err(ApiError::conflict(
            "licence_number_missing",
            "your account has no licence number: ask an administrator to set it (consult admin set-licence)",
        ));
    };
    let invite = match req.invite_id {
        Some(invite_id) => rows::invite_of(&state.pool, invite_id)
            .await?
            .filter(|i| i.consultation_id == id && i.kind == InviteKind::Patient)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_certificate",
                    "invite_id is not a patient invite of this consultation",
                )
            })?,
        None => consultation_rows::latest_invite(&state.pool, id)
            .await?
            .ok_or(ApiError::NotFound("patient invite"))?,
    };
    let (start, end) = (
        day(&req.period_start, "period_start")?,
        day(&req.period_end, "period_end")?,
    );
    if (end - start).whole_days() >= MAX_PERIOD_DAYS {
        return Err(ApiError::bad_request(
            "invalid_certificate",
            format!("a certificate covers at most {MAX_PERIOD_DAYS} days"),
        ));
    }
    let today = state.clock.now().date();
    let reach = time::Duration::days(MAX_PERIOD_DAYS);
    if today
        .checked_sub(reach)
        .is_some_and(|earliest| end < earliest)
        || today
            .checked_add(reach)
            .is_some_and(|latest| start > latest)
    {
        return Err(ApiError::bad_request(
            "invalid_certificate",
            format!("the period must lie within {MAX_PERIOD_DAYS} days of today"),
        ));
    }
    let content = CertificateContent {
        kind: kind_of(req.kind),
        period_start: start,
        period_end: end,
        patient_name: req.patient_name.clone(),
        restrictions: optional_text(&req.restrictions),
        diagnosis: optional_text(&req.diagnosis),
        note: optional_text(&req.note),
        clinician_name: user.display_name.clone(),
        clinician_licence: licence,
    };
    let now = state.clock.now();
    let config = &state.config.certificate;
    let valid_until = end
        .next_day()
        .map(|day| day.midnight().assume_utc())
        .and_then(|after| {
            after.checked_add(time::Duration::try_from(config.valid_after_period).ok()?)
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_certificate",
                "the period ends too far in the future",
            )
        })?;
    let issuer = &state.certificates;
    let certificate_id = Uuid::new_v4();

    let mut tx = state.audit.begin().await?;
    let mut status_index = None;
    for _ in 0..16 {
        let candidate = rand::thread_rng().gen_range(0..issuer::STATUS_LIST_BITS);
        if !rows::status_index_taken(tx.connection(), candidate).await? {
            status_index = Some(candidate);
            break;
        }
    }
    let Some(status_index) = status_index else {
        return Err(ApiError::unavailable(
            "status_list_full",
            "the status list has no room left for another certificate",
        ));
    };
    let status = consult_certificate::StatusReference {
        uri: issuer.status_list_uri(),
        idx: status_index,
    };
    let issued = consult_certificate::issue(
        issuer.key(),
        issuer.issuer(),
        &content,
        now,
        valid_until,
        Some(&status),
    )
    .map_err(|e| match e {
        CertificateError::Issuing(why) => ApiError::bad_request("invalid_certificate", why),
        other => ApiError::Internal(other.into()),
    })?;
    let vault = state.recordings.vault.clone();
    let plaintext = issued.clone().into_bytes();
    let sealed =
        tokio::task::spawn_blocking(move || vault.seal_document(certificate_id, &plaintext))
            .await
            .map_err(|e| ApiError::Internal(e.into()))?
            .map_err(|e| ApiError::Internal(e.into()))?;
    let sealed = serde_json::to_string(&sealed).map_err(|e| ApiError::Internal(e.into()))?;
    let new = rows::NewCertificate {
        id: certificate_id,
        consultation_id: id,
        invite_id: invite.id,
        issued_by: user.id,
        kind: req.kind,
        issued_at: now,
        valid_until,
        holder_until: now.saturating_add(
            time::Duration::try_from(config.holder_access).unwrap_or(time::Duration::MAX),
        ),
        retain_until: now.saturating_add(
            time::Duration::try_from(config.retention).unwrap_or(time::Duration::MAX),
        ),
        status_index,
        kid: issuer.key().kid(),
        sealed: &sealed,
    };
    rows::insert(tx.connection(), &new).await?;
    tx.record(
        now,
        &actor,
        Action::CertificateIssued,
        Some(id),
        json!({ "certificate_id": certificate_id, "kind": rows::kind_str(req.kind),
                "invite_id": invite.id, "kid": issuer.key().kid(),
                "valid_until": valid_until.unix_timestamp() }),
    )
    .await?;
    tx.commit().await?;
    let record = rows::find(&state.pool, certificate_id)
        .await?
        .ok_or(ApiError::NotFound("certificate"))?;
    Ok((StatusCode::CREATED, Json(summary(&record, Some(&issued))?)))
}

/// `GET /api/v1/consultations/{id}/certificates`: the consultation's certificates, with their
/// claims, for its clinicians (audited as a view).
#[utoipa::path(get, path = "/api/v1/consultations/{id}/certificates", tag = "certificates",
    params(("id" = Uuid, Path, description = "consultation id")),
    responses((status = 200, body = CertificateList), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    doctor: CurrentDoctor,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<CertificateList>, ApiError> {
    let actor = as_clinician_of(
        &state,
        doctor.0.user.id,
        id,
        "list",
        "only a clinician of this consultation may see its certificates",
    )
    .await?;
    let records = rows::of_consultation(&state.pool, id).await?;
    let mut certificates = Vec::with_capacity(records.len());
    for record in &records {
        let issued = opened(&state, record).await?;
        certificates.push(summary(record, issued.as_deref())?);
    }
    state
        .audit
        .record(
            state.clock.now(),
            &actor,
            Action::CertificatesViewed,
            Some(id),
            json!({ "certificates": records.iter().map(|r| r.id).collect::<Vec<_>>() }),
        )
        .await?;
    Ok(Json(CertificateList { certificates }))
}

/// A revocation reason as given, trimmed: 1 to 500 characters, no control characters.
fn checked_reason(raw: &str) -> Result<String, ApiError> {
    let reason = raw.trim();
    if reason.is_empty()
        || reason.chars().count() > MAX_REASON_CHARS
        || reason.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(
            "invalid_reason",
            format!("give a reason of 1 to {MAX_REASON_CHARS} characters"),
        ));
    }
    Ok(reason.to_owned())
}

/// `consult certificate revoke`: the operator (an administrator at the command line) revokes a
/// certificate named by its id (from the audit trail) or by a presentation of it (a verify
/// link someone showed them, checked against this issuer first). Audited as the operator.
pub async fn revoke_as_operator(
    config: &crate::config::Config,
    target: &str,
    reason: &str,
) -> anyhow::Result<CertificateRecord> {
    let reason = checked_reason(reason).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pool = crate::db::open_configured(config).await?;
    let record = match Uuid::parse_str(target.trim()) {
        Ok(id) => rows::find(&pool, id).await?,
        Err(_) => {
            let vault = crate::recording::open_vault(config).await?;
            let issuer = config
                .certificate
                .issuer
                .clone()
                .unwrap_or_else(|| crate::server::public_url(config, config.bind));
            let issuer = issuer::CertificateIssuer::load(&vault, issuer)?;
            let verified = consult_certificate::verify(
                presentation_in(target),
                issuer.issuer(),
                issuer.jwks(),
                OffsetDateTime::now_utc(),
            )
            .map_err(|e| anyhow::anyhow!("not a certificate of this issuer: {e}"))?;
            let status = verified
                .status
                .filter(|s| s.uri == issuer.status_list_uri())
                .ok_or_else(|| {
                    anyhow::anyhow!("the certificate names no status list of this issuer")
                })?;
            rows::by_status_index(&pool, status.idx).await?
        }
    }
    .ok_or_else(|| anyhow::anyhow!("no such certificate"))?;
    let now = OffsetDateTime::now_utc();
    let actor = Actor::Operator;
    let audit = crate::audit::AuditLog::new(pool.clone());
    let mut tx = audit.begin().await?;
    if !rows::revoke(tx.connection(), record.id, &actor, &reason, now).await? {
        anyhow::bail!("certificate {} was already revoked", record.id);
    }
    tx.record(
        now,
        &actor,
        Action::CertificateRevoked,
        Some(record.consultation_id),
        json!({ "certificate_id": record.id, "reason": reason }),
    )
    .await?;
    tx.commit().await?;
    rows::find(&pool, record.id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no such certificate"))
}

/// `POST /api/v1/certificates/{id}/revoke`: its consultation's clinicians or an administrator
/// revoke a certificate, with a reason; the status list says so from then on.
#[utoipa::path(post, path = "/api/v1/certificates/{id}/revoke", tag = "certificates",
    params(("id" = Uuid, Path, description = "certificate id")),
    request_body = RevokeCertificateRequest,
    responses((status = 200, body = CertificateSummary),
              (status = 400, body = ErrorBody, description = "invalid_reason"),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "certificate_revoked: it already was")))]
pub async fn revoke(
    State(state): State<AppState>,
    current: CurrentUser,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<RevokeCertificateRequest>,
) -> Result<Json<CertificateSummary>, ApiError> {
    let actor = Actor::User(current.user.id);
    let reason = checked_reason(&req.reason)?;
    let reason = reason.as_str();
    let record = rows::find(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound("certificate"))?;
    let allowed = current.user.role == consult_proto::api::Role::Admin || {
        let consultation = consultations::find(&state.pool, record.consultation_id)
            .await?
            .ok_or(ApiError::NotFound("consultation"))?;
        current.user.role == consult_proto::api::Role::Doctor
            && is_clinician_of(&state, &consultation, current.user.id).await?
    };
    if !allowed {
        return Err(refuse(
            &state,
            &actor,
            record.consultation_id,
            "revoke",
            "only a clinician of this consultation or an administrator may revoke its certificates",
        )
        .await);
    }
    let now = state.clock.now();
    let mut tx = state.audit.begin().await?;
    if !rows::revoke(tx.connection(), id, &actor, reason, now).await? {
        return Err(ApiError::conflict(
            "certificate_revoked",
            "this certificate was already revoked",
        ));
    }
    tx.record(
        now,
        &actor,
        Action::CertificateRevoked,
        Some(record.consultation_id),
        json!({ "certificate_id": id, "reason": reason }),
    )
    .await?;
    tx.commit().await?;
    state.certificates.status_changed();
    let record = rows::find(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound("certificate"))?;
    Ok(Json(summary(&record, None)?))
}

/// The certificates the invite link `token` may fetch now, or the refusal (counted per source
/// like a refused invite).
async fn held_by_token(
    state: &AppState,
    origin: &ClientOrigin,
    token: &str,
) -> Result<(consultation_rows::InviteRecord, Vec<CertificateRecord>), ApiError> {
    let invite =
        consultation_rows::invite_by_token(&state.pool, &Token::from_client(token).hash().0)
            .await?;
    // Ending a consultation revokes its links; for fetching certificates they keep working
    // (for `certificate.holder_access`). A link withdrawn while it was open does not.
    let usable = match &invite {
        Some(invite) => match invite.revoked_at {
            None => true,
            Some(revoked_at) => consultations::find(&state.pool, invite.consultation_id)
                .await?
                .and_then(|c| c.ended_at)
                .is_some_and(|ended_at| revoked_at >= ended_at),
        },
        None => false,
    };
    let invite = match invite {
        Some(invite) if usable => invite,
        Some(invite) => {
            crate::invites::refused(
                state,
                origin,
                Some(invite.consultation_id),
                "invite_revoked",
            )
            .await?;
            return Err(ApiError::gone(
                "invite_revoked",
                "this invite link was withdrawn; ask your clinic",
            ));
        }
        None => {
            crate::invites::refused(state, origin, None, "invite_not_found").await?;
            return Err(ApiError::gone(
                "invite_not_found",
                "this invite link is not valid; check that you copied all of it",
            ));
        }
    };
    let now = state.clock.now();
    let held = rows::held_by_invite(&state.pool, &invite)
        .await?
        .into_iter()
        // A revoked certificate is not handed out again: revoking is also how a clinician cuts
        // off a link that reached the wrong person after the consultation ended.
        .filter(|c| c.holder_until > now && c.sealed.is_some() && c.revoked_at.is_none())
        .collect();
    Ok((invite, held))
}

/// `POST /api/v1/certificates/held`: the certificates the patient's invite link may fetch
/// (for `certificate.holder_access` after each is issued), with every claim and the SD-JWT.
#[utoipa::path(post, path = "/api/v1/certificates/held", tag = "certificates",
    request_body = HeldCertificatesRequest,
    responses((status = 200, body = HeldCertificates),
              (status = 410, body = ErrorBody, description = "invite_not_found or invite_revoked")))]
pub async fn held(
    State(state): State<AppState>,
    origin: ClientOrigin,
    ApiJson(req): ApiJson<HeldCertificatesRequest>,
) -> Result<Json<HeldCertificates>, ApiError> {
    let (invite, records) = held_by_token(&state, &origin, &req.token).await?;
    let mut certificates = Vec::with_capacity(records.len());
    for record in records.iter().rev() {
        let Some(sd_jwt) = opened(&state, record).await? else {
            continue;
        };
        certificates.push(HeldCertificate {
            id: record.id,
            kind: record.kind,
            issued_at: record.issued_at,
            valid_until: record.valid_until,
            state: record.state(),
            claims: claims_of(&sd_jwt)?,
            sd_jwt,
        });
    }
    // Audited when a certificate is first fetched and then at most once per
    // FETCH_AUDIT_EVERY: the patient's page asks every few seconds while it is open.
    if !certificates.is_empty() {
        let now = state.clock.now();
        let mut tx = state.audit.begin().await?;
        let ids: Vec<Uuid> = certificates.iter().map(|c| c.id).collect();
        let due = rows::mark_fetch_audited(tx.connection(), &ids, now, FETCH_AUDIT_EVERY).await?;
        if !due.is_empty() {
            tx.record(
                now,
                &Actor::Anonymous,
                Action::CertificateFetched,
                Some(invite.consultation_id),
                json!({ "invite_id": invite.id, "certificates": due }),
            )
            .await?;
            tx.commit().await?;
        }
    }
    Ok(Json(HeldCertificates { certificates }))
}

/// The presentation the holder asked for, audited with what it discloses.
async fn presentation_of(
    state: &AppState,
    origin: &ClientOrigin,
    id: Uuid,
    req: &PresentationRequest,
    format: &str,
) -> Result<(CertificateRecord, String, render::VerifyQr, String), ApiError> {
    let (invite, records) = held_by_token(state, origin, &req.token).await?;
    let record = records
        .into_iter()
        .find(|c| c.id == id)
        .ok_or(ApiError::NotFound("certificate"))?;
    let issued = opened(state, &record)
        .await?
        .ok_or(ApiError::NotFound("certificate"))?;
    let names: Vec<&str> = req.disclose.iter().map(String::as_str).collect();
    let presentation = consult_certificate::present(&issued, &names).map_err(|e| match e {
        CertificateError::NoSuchClaim(name) => ApiError::bad_request(
            "invalid_disclosure",
            format!("this certificate has no claim {name}"),
        ),
        other => ApiError::Internal(other.into()),
    })?;
    let link = format!("{}/verify#{presentation}", state.certificates.issuer());
    let qr = render::VerifyQr::new(&link)
        .map_err(|e| ApiError::bad_request("presentation_too_long", e.to_string()))?;
    state
        .audit
        .record(
            state.clock.now(),
            &Actor::Anonymous,
            Action::CertificatePresented,
            Some(record.consultation_id),
            json!({ "certificate_id": id, "invite_id": invite.id, "disclosed": names,
                    "format": format }),
        )
        .await?;
    Ok((record, presentation, qr, link))
}

/// `POST /api/v1/certificates/{id}/presentation`: the holder discloses the claims it names
/// and gets the presentation, its verify link and the link as a QR code.
#[utoipa::path(post, path = "/api/v1/certificates/{id}/presentation", tag = "certificates",
    params(("id" = Uuid, Path, description = "certificate id")),
    request_body = PresentationRequest,
    responses((status = 200, body = Presentation),
              (status = 400, body = ErrorBody, description = "invalid_disclosure or presentation_too_long"),
              (status = 404, body = ErrorBody, description = "not a certificate this link holds"),
              (status = 410, body = ErrorBody, description = "invite_not_found or invite_revoked")))]
pub async fn presentation(
    State(state): State<AppState>,
    origin: ClientOrigin,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<PresentationRequest>,
) -> Result<Json<Presentation>, ApiError> {
    let (_, presentation, qr, link) = presentation_of(&state, &origin, id, &req, "link").await?;
    Ok(Json(Presentation {
        presentation,
        link,
        qr_svg: qr.svg(),
        qr_version: qr.version(),
    }))
}

fn day_text(t: OffsetDateTime) -> String {
    format!("{} {} {}", t.day(), t.month(), t.year())
}

/// `POST /api/v1/certificates/{id}/presentation.pdf`: the same presentation as a printable
/// PDF: the disclosed claims, and the verify link as a QR code.
#[utoipa::path(post, path = "/api/v1/certificates/{id}/presentation.pdf", tag = "certificates",
    params(("id" = Uuid, Path, description = "certificate id")),
    request_body = PresentationRequest,
    responses((status = 200, content_type = "application/pdf", description = "the PDF"),
              (status = 400, body = ErrorBody, description = "invalid_disclosure or presentation_too_long"),
              (status = 404, body = ErrorBody, description = "not a certificate this link holds"),
              (status = 410, body = ErrorBody, description = "invite_not_found or invite_revoked")))]
pub async fn presentation_pdf(
    State(state): State<AppState>,
    origin: ClientOrigin,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<PresentationRequest>,
) -> Result<Response, ApiError> {
    let (record, presentation, qr, _) = presentation_of(&state, &origin, id, &req, "pdf").await?;
    let claims: Vec<(String, String)> = consult_certificate::SdJwt::parse(&presentation)
        .map_err(|e| ApiError::Internal(e.into()))?
        .disclosures
        .iter()
        .map(|d| {
            (
                claim_label(&d.name).to_owned(),
                claim_text(&d.name, &d.value),
            )
        })
        .collect();
    let verify_page = format!("{}/verify", state.certificates.issuer());
    let printed = render::PrintedCertificate {
        issuer: state.certificates.issuer(),
        kind: kind_label(record.kind),
        issued_at: &day_text(record.issued_at),
        valid_until: &day_text(record.valid_until),
        claims: &claims,
        verify_page: &verify_page,
    };
    let bytes = render::pdf(&printed, &qr)
        .map_err(|e| ApiError::bad_request("presentation_too_long", e.to_string()))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/pdf"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"medical-certificate.pdf\""),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        bytes,
    )
        .into_response())
}

/// A stable code for why a presentation does not verify (audit tallies, tests).
fn failure_code(e: &CertificateError) -> &'static str {
    match e {
        CertificateError::Malformed(_) => "malformed",
        CertificateError::UnknownKey(_) => "unknown_key",
        CertificateError::WrongIssuer(_) => "wrong_issuer",
        CertificateError::Unsupported(_) => "unsupported",
        CertificateError::BadSignature => "bad_signature",
        CertificateError::UnsignedDisclosure(_) => "unsigned_disclosure",
        CertificateError::DuplicateDisclosure(_) => "duplicate_disclosure",
        CertificateError::NoSuchClaim(_) => "no_such_claim",
        CertificateError::Expired(_) => "expired",
        CertificateError::NotYetValid(_) => "not_yet_valid",
        CertificateError::Issuing(_) => "malformed",
    }
}

/// The presentation in what someone pasted: the SD-JWT itself, or a verify link with it after
/// `#`.
pub fn presentation_in(text: &str) -> &str {
    let text = text.trim();
    text.rsplit_once('#')
        .map_or(text, |(_, after)| after)
        .trim()
}

/// `POST /api/v1/certificates/verify`: anyone checks a presentation against this issuer's
/// keys and status list, and sees exactly what it discloses. A presentation that does not
/// verify is an answer (`invalid` with the reason), not an error; refusals are counted per
/// source in the audit trail.
#[utoipa::path(post, path = "/api/v1/certificates/verify", tag = "certificates",
    request_body = VerifyCertificateRequest,
    responses((status = 200, body = VerificationResult)))]
pub async fn verify(
    State(state): State<AppState>,
    origin: ClientOrigin,
    ApiJson(req): ApiJson<VerifyCertificateRequest>,
) -> Result<Json<VerificationResult>, ApiError> {
    let now = state.clock.now();
    let issuer = &state.certificates;
    let presentation = presentation_in(&req.presentation);
    let verified = if presentation.len() > MAX_PRESENTATION_BYTES {
        Err(CertificateError::Malformed("too long".into()))
    } else {
        consult_certificate::verify(presentation, issuer.issuer(), issuer.jwks(), now)
    };
    let verified = match verified {
        Ok(verified) => verified,
        Err(e) => {
            let code = failure_code(&e);
            audit_tally::count_now(
                &state.writer,
                now,
                &state.config.audit,
                &audit_tally::Unauthenticated {
                    action: Action::CertificateVerificationFailed,
                    actor: Actor::Address(origin.address),
                    source: origin.address,
                    reason: code,
                    consultation_id: None,
                },
            )
            .await?;
            return Ok(Json(VerificationResult {
                outcome: VerificationOutcome::Invalid,
                reason: Some(e.to_string()),
                issuer: None,
                kind: None,
                issued_at: None,
                valid_until: None,
                disclosed: Vec::new(),
            }));
        }
    };
    let revoked = match &verified.status {
        Some(status) if status.uri == issuer.status_list_uri() => {
            rows::by_status_index(&state.pool, status.idx)
                .await?
                .is_some_and(|c| c.state() == CertificateState::Revoked)
        }
        _ => false,
    };
    Ok(Json(VerificationResult {
        outcome: if revoked {
            VerificationOutcome::Revoked
        } else {
            VerificationOutcome::Valid
        },
        reason: revoked.then(|| "revoked by its issuer".to_owned()),
        issuer: Some(verified.issuer.clone()),
        kind: Some(name_of(verified.kind)),
        issued_at: Some(verified.issued_at),
        valid_until: Some(verified.valid_until),
        disclosed: in_claim_order(verified.disclosed),
    }))
}

/// The order claims are shown in: what the certificate is about first.
const CLAIM_ORDER: [&str; 7] = [
    "period",
    "patient_name",
    "clinician_name",
    "clinician_licence",
    "restrictions",
    "diagnosis",
    "note",
];

fn in_claim_order(claims: serde_json::Map<String, serde_json::Value>) -> Vec<CertificateClaim> {
    let mut claims: Vec<CertificateClaim> = claims
        .into_iter()
        .map(|(name, value)| CertificateClaim { name, value })
        .collect();
    claims.sort_by_key(|c| {
        CLAIM_ORDER
            .iter()
            .position(|n| *n == c.name)
            .unwrap_or(CLAIM_ORDER.len())
    });
    claims
}

/// `GET /.well-known/jwks.json`: every issuer key, current and retired.
pub async fn jwks(State(state): State<AppState>) -> Response {
    (
        [(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        )],
        Json(state.certificates.jwks().clone()),
    )
        .into_response()
}

/// `GET /api/v1/certificates/status-list`: the signed status list (IETF Token Status List,
/// `application/statuslist+jwt`): bit `idx` set means revoked.
pub async fn status_list(State(state): State<AppState>) -> Result<Response, ApiError> {
    // The signed list is reused for a few seconds: the database is asked only when it is stale.
    let token = match state.certificates.cached_status_list() {
        Some(token) => token,
        None => {
            let revoked = rows::revoked_indices(&state.pool).await?;
            state
                .certificates
                .sign_status_list(&revoked, state.clock.now())
                .map_err(ApiError::Internal)?
        }
    };
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/statuslist+jwt"),
        )],
        token,
    )
        .into_response())
}

/// Destroy the sealed content of every certificate past its retention (the retention job): its
/// key goes with it; the row, its status bit and the audit trail stay.
pub async fn apply_retention(state: &AppState) -> anyhow::Result<usize> {
    let now = state.clock.now();
    let due = rows::past_retention(&state.pool, now).await?;
    for record in &due {
        let mut tx = state.audit.begin().await?;
        rows::clear_sealed(tx.connection(), record.id).await?;
        tx.record(
            now,
            &Actor::System,
            Action::CertificateDestroyed,
            Some(record.consultation_id),
            json!({ "certificate_id": record.id, "reason": "retention" }),
        )
        .await?;
        tx.commit().await?;
    }
    Ok(due.len())
}
