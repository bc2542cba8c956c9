//! The consultation and invite rows: every SQL statement the consultation handlers need, apart
//! from the handlers (the query layer a second database plugs into). Each write takes the
//! connection of the caller's transaction, so a change and its audit entry commit together.

use consult_proto::api::{ConsultationMode, ConsultationStatus};
use sqlx::{Row, SqliteConnection, SqliteExecutor};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::db::{from_unix, to_unix};
use crate::signal::hub::RoomInfo;

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

/// The stored name of a mode.
pub fn mode_str(mode: ConsultationMode) -> &'static str {
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
pub async fn find(
    db: impl SqliteExecutor<'_>,
    id: Uuid,
) -> anyhow::Result<Option<ConsultationRecord>> {
    let row = sqlx::query(&format!("{SELECT} WHERE c.id = ?"))
        .bind(id.to_string())
        .fetch_optional(db)
        .await?;
    row.map(record_from_row).transpose()
}

/// A doctor's consultations, newest first (at most 500).
pub async fn of_doctor(
    db: impl SqliteExecutor<'_>,
    doctor_id: Uuid,
) -> anyhow::Result<Vec<ConsultationRecord>> {
    let rows = sqlx::query(&format!(
        "{SELECT} WHERE c.doctor_id = ? ORDER BY c.created_at DESC, c.id LIMIT 500"
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
pub async fn insert(db: &mut SqliteConnection, new: &NewConsultation<'_>) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO consultations (id, doctor_id, title, scheduled_at, mode, status, created_at, e2ee)
         VALUES (?, ?, ?, ?, ?, 'open', ?, ?)",
    )
    .bind(new.id.to_string())
    .bind(new.doctor_id.to_string())
    .bind(new.title)
    .bind(new.scheduled_at.map(to_unix))
    .bind(mode_str(new.mode))
    .bind(to_unix(new.created_at))
    .bind(i64::from(new.e2ee))
    .execute(db)
    .await?;
    Ok(())
}

/// End an open consultation; whether it was open.
pub async fn mark_ended(
    db: &mut SqliteConnection,
    id: Uuid,
    at: OffsetDateTime,
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE consultations SET status = 'ended', ended_at = ? WHERE id = ? AND status = 'open'",
    )
    .bind(to_unix(at))
    .bind(id.to_string())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Store a new invite of a consultation by the hash of its token.
pub async fn insert_invite(
    db: &mut SqliteConnection,
    invite_id: Uuid,
    consultation_id: Uuid,
    token_hash: &str,
    issued_at: OffsetDateTime,
    expires_at: OffsetDateTime,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO invites (id, consultation_id, token_hash, issued_at, expires_at)
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(invite_id.to_string())
    .bind(consultation_id.to_string())
    .bind(token_hash)
    .bind(to_unix(issued_at))
    .bind(to_unix(expires_at))
    .execute(db)
    .await?;
    Ok(())
}

/// Revoke every live invite of a consultation; the ids of those revoked.
pub async fn revoke_invites(
    db: &mut SqliteConnection,
    consultation_id: Uuid,
    at: OffsetDateTime,
) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "UPDATE invites SET revoked_at = ? WHERE consultation_id = ? AND revoked_at IS NULL RETURNING id",
    )
    .bind(to_unix(at))
    .bind(consultation_id.to_string())
    .fetch_all(db)
    .await?)
}
