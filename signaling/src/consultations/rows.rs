//! The consultation and invite rows: every SQL statement the consultation handlers need, apart
//! from the handlers (the query layer a second database plugs into). Each write takes the
//! connection of the caller's transaction, so a change and its audit entry commit together.

use consult_proto::api::{ConsultationMode, ConsultationStatus, InviteKind};
use consult_proto::signal::ParticipantRole;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::db::{from_unix, to_unix};
use consult_policy::Consent;

use crate::signal::hub::{RestoredPlace, RoomInfo};

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
    /// The doctor's participant id in its signaling room (the same after a restart).
    pub doctor_participant_id: Uuid,
    /// The doctor lets everyone else share a screen (clinicians always may).
    pub guests_share_screen: bool,
}

impl ConsultationRecord {
    /// What the signaling hub needs for its room, with the organisation's limit on how many
    /// take part at once.
    pub fn room_info(&self, max_participants: u8) -> RoomInfo {
        RoomInfo {
            consultation_id: self.id,
            doctor_user_id: self.doctor_id,
            doctor_name: self.doctor_name.clone(),
            mode: self.mode,
            e2ee: self.e2ee,
            doctor_participant_id: self.doctor_participant_id,
            max_participants: usize::from(max_participants),
            guests_share_screen: self.guests_share_screen,
        }
    }
}

/// The stored name of a mode.
pub fn mode_str(mode: ConsultationMode) -> &'static str {
    match mode {
        ConsultationMode::LiveOnly => "live_only",
        ConsultationMode::Recorded => "recorded",
    }
}

const SELECT: &str = "SELECT c.id, c.doctor_id, u.display_name, c.title, c.scheduled_at, c.mode, \
     c.status, c.created_at, c.ended_at, c.e2ee, c.doctor_participant_id, c.guests_share_screen \
     FROM consultations c JOIN users u ON u.id = c.doctor_id";

fn record_from_row(row: crate::db::Row) -> anyhow::Result<ConsultationRecord> {
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
        doctor_participant_id: Uuid::parse_str(row.get::<&str, _>(10))?,
        guests_share_screen: row.get::<i64, _>(11) != 0,
    })
}

/// Whether the doctor lets everyone else in the consultation's calls share a screen.
pub async fn set_guests_share_screen(
    db: impl crate::db::Executor<'_>,
    consultation_id: Uuid,
    allowed: bool,
) -> anyhow::Result<()> {
    crate::db::query("UPDATE consultations SET guests_share_screen = $1 WHERE id = $2")
        .bind(i64::from(allowed))
        .bind(consultation_id.to_string())
        .execute(db)
        .await?;
    Ok(())
}

/// Load a consultation by id.
pub async fn find(
    db: impl crate::db::Executor<'_>,
    id: Uuid,
) -> anyhow::Result<Option<ConsultationRecord>> {
    let row = crate::db::query(&format!("{SELECT} WHERE c.id = $1"))
        .bind(id.to_string())
        .fetch_optional(db)
        .await?;
    row.map(record_from_row).transpose()
}

/// A doctor's consultations, newest first (at most 500).
pub async fn of_doctor(
    db: impl crate::db::Executor<'_>,
    doctor_id: Uuid,
) -> anyhow::Result<Vec<ConsultationRecord>> {
    let rows = crate::db::query(&format!(
        "{SELECT} WHERE c.doctor_id = $1 ORDER BY c.created_at DESC, c.id LIMIT 500"
    ))
    .bind(doctor_id.to_string())
    .fetch_all(db)
    .await?;
    rows.into_iter().map(record_from_row).collect()
}

/// A new consultation to store.
pub struct NewConsultation<'a> {
    /// Its id.
    pub id: Uuid,
    /// The owning clinician.
    pub doctor_id: Uuid,
    /// Title, already trimmed and checked.
    pub title: Option<&'a str>,
    /// Planned time.
    pub scheduled_at: Option<OffsetDateTime>,
    /// Live-only or recorded.
    pub mode: ConsultationMode,
    /// End-to-end encrypted.
    pub e2ee: bool,
    /// When it was created.
    pub created_at: OffsetDateTime,
}

/// Store a new, open consultation.
pub async fn insert(db: &mut crate::db::Tx, new: &NewConsultation<'_>) -> anyhow::Result<()> {
    crate::db::query(
        "INSERT INTO consultations (id, doctor_id, title, scheduled_at, mode, status, created_at, e2ee,
                                    doctor_participant_id)
         VALUES ($1, $2, $3, $4, $5, 'open', $6, $7, $8)",
    )
    .bind(new.id.to_string())
    .bind(new.doctor_id.to_string())
    .bind(new.title)
    .bind(new.scheduled_at.map(to_unix))
    .bind(mode_str(new.mode))
    .bind(to_unix(new.created_at))
    .bind(i64::from(new.e2ee))
    .bind(Uuid::new_v4().to_string())
    .execute(db)
    .await?;
    Ok(())
}

/// End an open consultation; whether it was open.
pub async fn mark_ended(
    db: &mut crate::db::Tx,
    id: Uuid,
    at: OffsetDateTime,
) -> anyhow::Result<bool> {
    let done = crate::db::query(
        "UPDATE consultations SET status = 'ended', ended_at = $1 WHERE id = $2 AND status = 'open'",
    )
    .bind(to_unix(at))
    .bind(id.to_string())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A new invite to store, by the hash of its token.
pub struct NewInvite<'a> {
    /// Its id.
    pub id: Uuid,
    /// Its consultation.
    pub consultation_id: Uuid,
    /// Who it is for.
    pub kind: InviteKind,
    /// The name its doctor chose; `None` for the patient link.
    pub name: Option<&'a str>,
    /// SHA-256 of its token (hex).
    pub token_hash: &'a str,
    /// Issued.
    pub issued_at: OffsetDateTime,
    /// Expires.
    pub expires_at: OffsetDateTime,
}

/// Store a new invite.
pub async fn insert_invite(db: &mut crate::db::Tx, new: &NewInvite<'_>) -> anyhow::Result<()> {
    crate::db::query(
        "INSERT INTO invites (id, consultation_id, token_hash, issued_at, expires_at, kind, name)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(new.id.to_string())
    .bind(new.consultation_id.to_string())
    .bind(new.token_hash)
    .bind(to_unix(new.issued_at))
    .bind(to_unix(new.expires_at))
    .bind(new.kind.as_str())
    .bind(new.name)
    .execute(db)
    .await?;
    Ok(())
}

/// Which invites a revocation takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoke {
    /// The patient link (the invites without a name).
    PatientLink,
    /// Every invite (the consultation ends).
    All,
    /// One invite, by id.
    One(Uuid),
}

/// Revoke live invites of a consultation; the ids of those revoked.
pub async fn revoke_invites(
    db: &mut crate::db::Tx,
    consultation_id: Uuid,
    which: Revoke,
    at: OffsetDateTime,
) -> anyhow::Result<Vec<String>> {
    let only = match which {
        Revoke::PatientLink => " AND name IS NULL",
        Revoke::All => "",
        Revoke::One(_) => " AND id = $3",
    };
    let query = format!(
        "UPDATE invites SET revoked_at = $1 WHERE consultation_id = $2 AND revoked_at IS NULL{only} RETURNING id"
    );
    let mut query = crate::db::query_scalar(&query)
        .bind(to_unix(at))
        .bind(consultation_id.to_string());
    if let Revoke::One(id) = which {
        query = query.bind(id.to_string());
    }
    Ok(query.fetch_all(db).await?)
}

/// An invite row.
#[derive(Debug, Clone)]
pub struct InviteRecord {
    /// Id.
    pub id: Uuid,
    /// Its consultation.
    pub consultation_id: Uuid,
    /// Issued.
    pub issued_at: OffsetDateTime,
    /// Expires.
    pub expires_at: OffsetDateTime,
    /// Revoked.
    pub revoked_at: Option<OffsetDateTime>,
    /// Held by a device now.
    pub in_use: bool,
    /// Who it is for.
    pub kind: InviteKind,
    /// The name its doctor chose; `None` for the patient link.
    pub name: Option<String>,
}

const SELECT_INVITE: &str =
    "SELECT i.id, i.consultation_id, i.issued_at, i.expires_at, i.revoked_at, \
     CASE WHEN EXISTS (SELECT 1 FROM participants p WHERE p.invite_id = i.id AND p.released_at IS NULL) THEN 1 ELSE 0 END, \
     i.kind, i.name \
     FROM invites i";

fn invite_from_row(row: crate::db::Row) -> anyhow::Result<InviteRecord> {
    let id: String = row.get(0);
    let consultation_id: String = row.get(1);
    Ok(InviteRecord {
        id: Uuid::parse_str(&id)?,
        consultation_id: Uuid::parse_str(&consultation_id)?,
        issued_at: from_unix(row.get(2)),
        expires_at: from_unix(row.get(3)),
        revoked_at: row.get::<Option<i64>, _>(4).map(from_unix),
        in_use: row.get::<i64, _>(5) != 0,
        kind: InviteKind::from_stored(row.get::<&str, _>(6))
            .ok_or_else(|| anyhow::anyhow!("an invite of an unknown kind"))?,
        name: row.get(7),
    })
}

/// The most recently issued patient link of a consultation.
pub async fn latest_invite(
    db: impl crate::db::Executor<'_>,
    consultation_id: Uuid,
) -> anyhow::Result<Option<InviteRecord>> {
    let row = crate::db::query(&format!(
        "{SELECT_INVITE} WHERE i.consultation_id = $1 AND i.name IS NULL ORDER BY i.issued_at DESC, i.rowid DESC LIMIT 1"
    ))
    .bind(consultation_id.to_string())
    .fetch_optional(db)
    .await?;
    row.map(invite_from_row).transpose()
}

/// An invite (`i`) that promises a place at time `$2`: not revoked, and live or still held by a
/// device. The one definition behind the cap ([`places_promised`]) and the doctor's list
/// ([`named_invites`]).
const PROMISES_A_PLACE: &str = "i.revoked_at IS NULL AND (i.expires_at > $2 OR EXISTS \
     (SELECT 1 FROM participants p WHERE p.invite_id = i.id AND p.released_at IS NULL))";

/// The named invites of a consultation that promise a place ([`PROMISES_A_PLACE`]), oldest
/// first.
pub async fn named_invites(
    db: impl crate::db::Executor<'_>,
    consultation_id: Uuid,
    now: OffsetDateTime,
) -> anyhow::Result<Vec<InviteRecord>> {
    let rows = crate::db::query(&format!(
        "{SELECT_INVITE} WHERE i.consultation_id = $1 AND i.name IS NOT NULL AND {PROMISES_A_PLACE} \
         ORDER BY i.issued_at, i.rowid"
    ))
    .bind(consultation_id.to_string())
    .bind(to_unix(now))
    .fetch_all(db)
    .await?;
    rows.into_iter().map(invite_from_row).collect()
}

/// The invite with this id.
pub async fn invite_by_id(
    db: impl crate::db::Executor<'_>,
    invite_id: Uuid,
) -> anyhow::Result<Option<InviteRecord>> {
    let row = crate::db::query(&format!("{SELECT_INVITE} WHERE i.id = $1"))
        .bind(invite_id.to_string())
        .fetch_optional(db)
        .await?;
    row.map(invite_from_row).transpose()
}

/// The invite with this token hash.
pub async fn invite_by_token(
    db: impl crate::db::Executor<'_>,
    token_hash: &str,
) -> anyhow::Result<Option<InviteRecord>> {
    let row = crate::db::query(&format!("{SELECT_INVITE} WHERE i.token_hash = $1"))
        .bind(token_hash)
        .fetch_optional(db)
        .await?;
    row.map(invite_from_row).transpose()
}

/// A patient's place in a consultation, taken by redeeming an invite.
#[derive(Debug, Clone)]
pub struct NewParticipant<'a> {
    /// Participant id.
    pub id: Uuid,
    /// The consultation.
    pub consultation_id: Uuid,
    /// The invite redeemed.
    pub invite_id: Uuid,
    /// Patient, interpreter or companion: the invite's kind.
    pub role: InviteKind,
    /// The name entered, or the invite's.
    pub name: &'a str,
    /// The hash of the participant token.
    pub token_hash: &'a str,
    /// When.
    pub created_at: OffsetDateTime,
}

/// Take a place; false if another device holds the invite (one unreleased place per invite),
/// or the invite stopped working (revoked, expired, its consultation ended) since it was
/// checked — the check is made again here, inside the caller's transaction.
pub async fn insert_participant(
    db: &mut crate::db::Tx,
    place: &NewParticipant<'_>,
) -> anyhow::Result<bool> {
    // DO NOTHING rather than catching the unique violation: on PostgreSQL an error would abort
    // the caller's transaction, its audit entry with it.
    let inserted = crate::db::query(
        "INSERT INTO participants (id, consultation_id, invite_id, name, token_hash, created_at, role)
         SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS (
             SELECT 1 FROM invites i JOIN consultations c ON c.id = i.consultation_id
             WHERE i.id = $3 AND i.revoked_at IS NULL AND i.expires_at > $6 AND c.status = 'open')
         ON CONFLICT DO NOTHING",
    )
    .bind(place.id.to_string())
    .bind(place.consultation_id.to_string())
    .bind(place.invite_id.to_string())
    .bind(place.name)
    .bind(place.token_hash)
    .bind(to_unix(place.created_at))
    .bind(place.role.as_str())
    .execute(db)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// A place still held.
#[derive(Debug, Clone)]
pub struct HeldPlace {
    /// Participant id.
    pub id: Uuid,
    /// The consultation.
    pub consultation_id: Uuid,
    /// The name entered, or the invite's.
    pub name: String,
    /// Patient, interpreter or companion.
    pub role: ParticipantRole,
    /// The invite it was taken with.
    pub invite_id: Uuid,
}

fn guest_role(stored: &str) -> anyhow::Result<ParticipantRole> {
    InviteKind::from_stored(stored)
        .map(InviteKind::role)
        .ok_or_else(|| anyhow::anyhow!("a place of an unknown role"))
}

fn held_place_from_row(row: crate::db::Row) -> anyhow::Result<HeldPlace> {
    Ok(HeldPlace {
        id: Uuid::parse_str(row.get::<&str, _>(0))?,
        consultation_id: Uuid::parse_str(row.get::<&str, _>(1))?,
        name: row.get(2),
        role: guest_role(row.get::<&str, _>(3))?,
        invite_id: Uuid::parse_str(row.get::<&str, _>(4))?,
    })
}

/// The unreleased place a participant token (by hash) belongs to, while its invite stands (a
/// revoked invite voids its place at once, even before the place is released).
pub async fn held_place(
    db: impl crate::db::Executor<'_>,
    token_hash: &str,
) -> anyhow::Result<Option<HeldPlace>> {
    let row = crate::db::query(
        "SELECT p.id, p.consultation_id, p.name, p.role, p.invite_id FROM participants p
         JOIN invites i ON i.id = p.invite_id
         WHERE p.token_hash = $1 AND p.released_at IS NULL AND i.revoked_at IS NULL",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await?;
    row.map(held_place_from_row).transpose()
}

/// The unreleased place of participant `participant_id` in a consultation.
pub async fn held_place_by_id(
    db: impl crate::db::Executor<'_>,
    consultation_id: Uuid,
    participant_id: Uuid,
) -> anyhow::Result<Option<HeldPlace>> {
    let row = crate::db::query(
        "SELECT p.id, p.consultation_id, p.name, p.role, p.invite_id FROM participants p
         WHERE p.id = $1 AND p.consultation_id = $2 AND p.released_at IS NULL",
    )
    .bind(participant_id.to_string())
    .bind(consultation_id.to_string())
    .fetch_optional(db)
    .await?;
    row.map(held_place_from_row).transpose()
}

/// Every place still held, with what a restarted service gives back: (consultation, place).
pub async fn held_places(
    db: impl crate::db::Executor<'_>,
    doctor: Option<Uuid>,
) -> anyhow::Result<Vec<(Uuid, RestoredPlace)>> {
    let rows = crate::db::query(
        "SELECT p.id, p.consultation_id, p.name, p.admitted_at, p.recording_consent, p.created_at, p.role
         FROM participants p JOIN consultations c ON c.id = p.consultation_id
         JOIN invites i ON i.id = p.invite_id
         WHERE p.released_at IS NULL AND i.revoked_at IS NULL AND ($1 IS NULL OR c.doctor_id = $1)
         ORDER BY p.created_at, p.id",
    )
    .bind(doctor.map(|d| d.to_string()))
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|row| {
            let consent: Option<String> = row.get(4);
            Ok((
                Uuid::parse_str(row.get::<&str, _>(1))?,
                RestoredPlace {
                    participant_id: Uuid::parse_str(row.get::<&str, _>(0))?,
                    role: guest_role(row.get::<&str, _>(6))?,
                    name: row.get(2),
                    admitted: row.get::<Option<i64>, _>(3).is_some(),
                    consent: consent.as_deref().and_then(consent_from_str),
                    since: from_unix(row.get(5)),
                },
            ))
        })
        .collect()
}

/// The doctors with places held in their consultations (candidates for a new home when the
/// node that held them is gone).
pub async fn doctors_with_held_places(
    db: impl crate::db::Executor<'_>,
) -> anyhow::Result<Vec<Uuid>> {
    let rows: Vec<String> = crate::db::query_scalar(
        "SELECT DISTINCT c.doctor_id FROM participants p
         JOIN consultations c ON c.id = p.consultation_id WHERE p.released_at IS NULL",
    )
    .fetch_all(db)
    .await?;
    rows.iter().map(|id| Ok(Uuid::parse_str(id)?)).collect()
}

/// The stored name of a recording answer.
pub fn consent_str(consent: Consent) -> Option<&'static str> {
    match consent {
        Consent::NotAsked => None,
        Consent::Given => Some("given"),
        Consent::Declined => Some("declined"),
        Consent::Withdrawn => Some("withdrawn"),
    }
}

fn consent_from_str(stored: &str) -> Option<Consent> {
    match stored {
        "given" => Some(Consent::Given),
        "declined" => Some(Consent::Declined),
        "withdrawn" => Some(Consent::Withdrawn),
        _ => None,
    }
}

/// The doctor admitted a participant (kept, so a restart does not send them back to waiting).
pub async fn set_admitted(
    db: impl crate::db::Executor<'_>,
    participant_id: Uuid,
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    crate::db::query(
        "UPDATE participants SET admitted_at = $1 WHERE id = $2 AND admitted_at IS NULL",
    )
    .bind(to_unix(now))
    .bind(participant_id.to_string())
    .execute(db)
    .await?;
    Ok(())
}

/// A patient's answer to the recording question (kept, so a restart does not ask again).
pub async fn set_recording_consent(
    db: impl crate::db::Executor<'_>,
    participant_id: Uuid,
    consent: Consent,
) -> anyhow::Result<()> {
    crate::db::query("UPDATE participants SET recording_consent = $1 WHERE id = $2")
        .bind(consent_str(consent))
        .bind(participant_id.to_string())
        .execute(db)
        .await?;
    Ok(())
}

/// Release a participant's place; their token stops working.
pub async fn release_place(
    db: impl crate::db::Executor<'_>,
    participant_id: Uuid,
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    crate::db::query(
        "UPDATE participants SET released_at = $1 WHERE id = $2 AND released_at IS NULL",
    )
    .bind(to_unix(now))
    .bind(participant_id.to_string())
    .execute(db)
    .await?;
    Ok(())
}

/// Release every place of a consultation.
pub async fn release_places(
    db: impl crate::db::Executor<'_>,
    consultation_id: Uuid,
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    crate::db::query(
        "UPDATE participants SET released_at = $1 WHERE consultation_id = $2 AND released_at IS NULL",
    )
    .bind(to_unix(now))
    .bind(consultation_id.to_string())
    .execute(db)
    .await?;
    Ok(())
}

/// Who holds an invite now.
pub async fn invite_holders(
    db: impl crate::db::Executor<'_>,
    invite_id: &str,
) -> anyhow::Result<Vec<Uuid>> {
    let holders: Vec<String> = crate::db::query_scalar(
        "SELECT id FROM participants WHERE invite_id = $1 AND released_at IS NULL",
    )
    .bind(invite_id)
    .fetch_all(db)
    .await?;
    holders.iter().map(|h| Ok(Uuid::parse_str(h)?)).collect()
}

/// A colleague added to a consultation.
#[derive(Debug, Clone)]
pub struct ColleagueRecord {
    /// The consultation.
    pub consultation_id: Uuid,
    /// Their account.
    pub user_id: Uuid,
    /// Their display name.
    pub name: String,
    /// Their participant id in the consultation's calls.
    pub participant_id: Uuid,
    /// When they were added.
    pub added_at: OffsetDateTime,
    /// When the doctor admitted them to the call going on, if they are in it.
    pub admitted_at: Option<OffsetDateTime>,
}

const SELECT_COLLEAGUE: &str =
    "SELECT cc.consultation_id, cc.user_id, u.display_name, cc.participant_id, cc.added_at, cc.admitted_at \
     FROM consultation_clinicians cc JOIN users u ON u.id = cc.user_id";

fn colleague_from_row(row: crate::db::Row) -> anyhow::Result<ColleagueRecord> {
    Ok(ColleagueRecord {
        consultation_id: Uuid::parse_str(row.get::<&str, _>(0))?,
        user_id: Uuid::parse_str(row.get::<&str, _>(1))?,
        name: row.get(2),
        participant_id: Uuid::parse_str(row.get::<&str, _>(3))?,
        added_at: from_unix(row.get(4)),
        admitted_at: row.get::<Option<i64>, _>(5).map(from_unix),
    })
}

/// Add a colleague to a consultation (again, if they were removed: with a new participant id,
/// so nothing of their earlier place carries over); their participant id, or `None` if they are
/// in it already.
pub async fn add_colleague(
    db: &mut crate::db::Tx,
    consultation_id: Uuid,
    user_id: Uuid,
    now: OffsetDateTime,
) -> anyhow::Result<Option<Uuid>> {
    let participant_id = Uuid::new_v4();
    let done = crate::db::query(
        "INSERT INTO consultation_clinicians (consultation_id, user_id, participant_id, added_at)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (consultation_id, user_id) DO UPDATE
           SET participant_id = excluded.participant_id, added_at = excluded.added_at,
               admitted_at = NULL, removed_at = NULL
           WHERE consultation_clinicians.removed_at IS NOT NULL",
    )
    .bind(consultation_id.to_string())
    .bind(user_id.to_string())
    .bind(participant_id.to_string())
    .bind(to_unix(now))
    .execute(db)
    .await?;
    Ok((done.rows_affected() == 1).then_some(participant_id))
}

/// Take a colleague off a consultation; their participant id, if they were on it.
pub async fn remove_colleague(
    db: &mut crate::db::Tx,
    consultation_id: Uuid,
    user_id: Uuid,
    now: OffsetDateTime,
) -> anyhow::Result<Option<Uuid>> {
    let removed: Option<String> = crate::db::query_scalar(
        "UPDATE consultation_clinicians SET removed_at = $1, admitted_at = NULL
         WHERE consultation_id = $2 AND user_id = $3 AND removed_at IS NULL RETURNING participant_id",
    )
    .bind(to_unix(now))
    .bind(consultation_id.to_string())
    .bind(user_id.to_string())
    .fetch_optional(db)
    .await?;
    removed.map(|id| Ok(Uuid::parse_str(&id)?)).transpose()
}

/// The colleagues on a consultation now, in the order they were added.
pub async fn colleagues_of(
    db: impl crate::db::Executor<'_>,
    consultation_id: Uuid,
) -> anyhow::Result<Vec<ColleagueRecord>> {
    let rows = crate::db::query(&format!(
        "{SELECT_COLLEAGUE} WHERE cc.consultation_id = $1 AND cc.removed_at IS NULL ORDER BY cc.added_at, cc.user_id"
    ))
    .bind(consultation_id.to_string())
    .fetch_all(db)
    .await?;
    rows.into_iter().map(colleague_from_row).collect()
}

/// The colleague `user_id` on a consultation, if they are on it now.
pub async fn colleague(
    db: impl crate::db::Executor<'_>,
    consultation_id: Uuid,
    user_id: Uuid,
) -> anyhow::Result<Option<ColleagueRecord>> {
    let row = crate::db::query(&format!(
        "{SELECT_COLLEAGUE} WHERE cc.consultation_id = $1 AND cc.user_id = $2 AND cc.removed_at IS NULL"
    ))
    .bind(consultation_id.to_string())
    .bind(user_id.to_string())
    .fetch_optional(db)
    .await?;
    row.map(colleague_from_row).transpose()
}

/// The colleague with participant id `participant_id` on a consultation, if on it now.
pub async fn colleague_by_participant(
    db: impl crate::db::Executor<'_>,
    consultation_id: Uuid,
    participant_id: Uuid,
) -> anyhow::Result<Option<ColleagueRecord>> {
    let row = crate::db::query(&format!(
        "{SELECT_COLLEAGUE} WHERE cc.consultation_id = $1 AND cc.participant_id = $2 AND cc.removed_at IS NULL"
    ))
    .bind(consultation_id.to_string())
    .bind(participant_id.to_string())
    .fetch_optional(db)
    .await?;
    row.map(colleague_from_row).transpose()
}

/// The consultations `user_id` was added to as a colleague, newest first (at most 500), with
/// when they were added.
pub async fn shared_with(
    db: impl crate::db::Executor<'_>,
    user_id: Uuid,
) -> anyhow::Result<Vec<(ConsultationRecord, OffsetDateTime)>> {
    let rows = crate::db::query(
        "SELECT c.id, c.doctor_id, u.display_name, c.title, c.scheduled_at, c.mode, \
         c.status, c.created_at, c.ended_at, c.e2ee, c.doctor_participant_id, \
         c.guests_share_screen, cc.added_at \
         FROM consultations c JOIN users u ON u.id = c.doctor_id \
         JOIN consultation_clinicians cc ON cc.consultation_id = c.id \
         WHERE cc.user_id = $1 AND cc.removed_at IS NULL ORDER BY cc.added_at DESC, c.id LIMIT 500",
    )
    .bind(user_id.to_string())
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|row| {
            // After the columns of `SELECT` (`record_from_row` reads those).
            let added_at = from_unix(row.get::<i64, _>(12));
            Ok((record_from_row(row)?, added_at))
        })
        .collect()
}

/// A colleague was admitted to the call (`Some`), or left it (`None`): kept, so a restarted
/// service gives an admitted colleague their place back.
pub async fn set_colleague_admitted(
    db: impl crate::db::Executor<'_>,
    participant_id: Uuid,
    at: Option<OffsetDateTime>,
) -> anyhow::Result<()> {
    crate::db::query(
        "UPDATE consultation_clinicians SET admitted_at = $1 WHERE participant_id = $2",
    )
    .bind(at.map(to_unix))
    .bind(participant_id.to_string())
    .execute(db)
    .await?;
    Ok(())
}

/// Colleagues admitted to a call when the previous run stopped, as places to restore:
/// (consultation, place).
pub async fn admitted_colleagues(
    db: impl crate::db::Executor<'_>,
    doctor: Option<Uuid>,
) -> anyhow::Result<Vec<(Uuid, RestoredPlace)>> {
    let rows = crate::db::query(&format!(
        "{SELECT_COLLEAGUE} JOIN consultations c ON c.id = cc.consultation_id \
         WHERE cc.removed_at IS NULL AND cc.admitted_at IS NOT NULL AND c.status = 'open' \
         AND ($1 IS NULL OR c.doctor_id = $1) \
         ORDER BY cc.added_at, cc.user_id"
    ))
    .bind(doctor.map(|d| d.to_string()))
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|row| {
            let colleague = colleague_from_row(row)?;
            Ok((
                colleague.consultation_id,
                RestoredPlace {
                    participant_id: colleague.participant_id,
                    role: ParticipantRole::Clinician,
                    name: colleague.name,
                    admitted: true,
                    consent: None,
                    since: colleague.added_at,
                },
            ))
        })
        .collect()
}

/// Nobody of a consultation's colleagues is in its call any more (it ended).
pub async fn clear_colleagues_admitted(
    db: impl crate::db::Executor<'_>,
    consultation_id: Uuid,
) -> anyhow::Result<()> {
    crate::db::query(
        "UPDATE consultation_clinicians SET admitted_at = NULL WHERE consultation_id = $1",
    )
    .bind(consultation_id.to_string())
    .execute(db)
    .await?;
    Ok(())
}

/// How many people a consultation has promised a place to besides its doctor: every invite not
/// revoked that is live or still held by a device, and every colleague on it.
pub async fn places_promised(
    db: impl crate::db::Executor<'_>,
    consultation_id: Uuid,
    now: OffsetDateTime,
) -> anyhow::Result<usize> {
    let count: i64 = crate::db::query_scalar(&format!(
        "SELECT (SELECT COUNT(*) FROM invites i WHERE i.consultation_id = $1 AND {PROMISES_A_PLACE})
              + (SELECT COUNT(*) FROM consultation_clinicians cc
                 WHERE cc.consultation_id = $1 AND cc.removed_at IS NULL)"
    ))
    .bind(consultation_id.to_string())
    .bind(to_unix(now))
    .fetch_one(db)
    .await?;
    Ok(usize::try_from(count)?)
}
