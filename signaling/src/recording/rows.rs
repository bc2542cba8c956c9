//! What the database knows about recordings (the media and keys are in the vault).

use serde::{Deserialize, Serialize};
use sqlx::{AnyExecutor, AnyPool, Row};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::{from_unix, to_unix};

/// Where a recording is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordingStatus {
    /// Being written now.
    Recording,
    /// Ended normally: whole.
    Complete,
    /// Stopped because the patient withdrew consent; what came before is kept and flagged.
    Withdrawn,
    /// Storage failed while recording; everything up to the last sealed chunk is kept.
    Failed,
    /// The service stopped without closing it (a crash); everything up to the last sealed chunk
    /// is kept.
    Interrupted,
    /// Its key is destroyed: nothing can be read any more.
    Shredded,
}

impl RecordingStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Recording => "recording",
            Self::Complete => "complete",
            Self::Withdrawn => "withdrawn",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
            Self::Shredded => "shredded",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "recording" => Self::Recording,
            "complete" => Self::Complete,
            "withdrawn" => Self::Withdrawn,
            "failed" => Self::Failed,
            "interrupted" => Self::Interrupted,
            "shredded" => Self::Shredded,
            other => anyhow::bail!("unknown recording state {other:?}"),
        })
    }

    /// Whether its stream may end without a final chunk (it was cut short, and says so).
    pub fn may_be_unfinished(self) -> bool {
        matches!(self, Self::Failed | Self::Interrupted)
    }
}

/// A recording, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecordingRow {
    /// Id.
    pub id: Uuid,
    /// Its consultation.
    pub consultation_id: Uuid,
    /// Where it is in its life.
    pub state: RecordingStatus,
    /// SFrame ciphertext only the clinician's recording key opens.
    pub zero_knowledge: bool,
    /// When recording started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When it stopped.
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    /// When the retention job shreds it.
    #[serde(with = "time::serde::rfc3339")]
    pub retain_until: OffsetDateTime,
    /// Sealed chunks.
    pub chunks: i64,
    /// Bytes of sealed media.
    pub bytes: i64,
    /// Why it stopped, for people.
    pub note: Option<String>,
}

const SELECT: &str = "SELECT id, consultation_id, state, zero_knowledge, started_at, ended_at, \
                      retain_until, chunks, bytes, note FROM recordings";

fn from_row(row: sqlx::any::AnyRow) -> anyhow::Result<RecordingRow> {
    Ok(RecordingRow {
        id: Uuid::parse_str(row.get::<&str, _>(0))?,
        consultation_id: Uuid::parse_str(row.get::<&str, _>(1))?,
        state: RecordingStatus::parse(row.get::<&str, _>(2))?,
        zero_knowledge: row.get::<i64, _>(3) != 0,
        started_at: from_unix(row.get(4)),
        ended_at: row.get::<Option<i64>, _>(5).map(from_unix),
        retain_until: from_unix(row.get(6)),
        chunks: row.get(7),
        bytes: row.get(8),
        note: row.get(9),
    })
}

/// A new recording, in state `recording`.
pub async fn insert(
    db: impl AnyExecutor<'_>,
    id: Uuid,
    consultation_id: Uuid,
    zero_knowledge: bool,
    started_at: OffsetDateTime,
    retain_until: OffsetDateTime,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO recordings (id, consultation_id, state, zero_knowledge, started_at, retain_until)
         VALUES ($1, $2, 'recording', $3, $4, $5)",
    )
    .bind(id.to_string())
    .bind(consultation_id.to_string())
    .bind(i64::from(zero_knowledge))
    .bind(to_unix(started_at))
    .bind(to_unix(retain_until))
    .execute(db)
    .await?;
    Ok(())
}

/// The recording stopped.
pub async fn finish(
    pool: &AnyPool,
    id: Uuid,
    state: RecordingStatus,
    ended_at: OffsetDateTime,
    chunks: u64,
    bytes: u64,
    note: Option<&str>,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE recordings SET state = $1, ended_at = $2, chunks = $3, bytes = $4, note = $5 WHERE id = $6",
    )
    .bind(state.as_str())
    .bind(to_unix(ended_at))
    .bind(chunks as i64)
    .bind(bytes as i64)
    .bind(note)
    .bind(id.to_string())
    .execute(pool)
    .await?;
    Ok(())
}

/// One recording.
pub async fn find(pool: &AnyPool, id: Uuid) -> anyhow::Result<Option<RecordingRow>> {
    sqlx::query(&format!("{SELECT} WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await?
        .map(from_row)
        .transpose()
}

/// A consultation's recordings, oldest first.
pub async fn of_consultation(
    pool: &AnyPool,
    consultation_id: Uuid,
) -> anyhow::Result<Vec<RecordingRow>> {
    sqlx::query(&format!(
        "{SELECT} WHERE consultation_id = $1 ORDER BY started_at, id"
    ))
    .bind(consultation_id.to_string())
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(from_row)
    .collect()
}

/// Every recording, newest first (operators).
pub async fn all(pool: &AnyPool) -> anyhow::Result<Vec<RecordingRow>> {
    sqlx::query(&format!("{SELECT} ORDER BY started_at DESC, id"))
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(from_row)
        .collect()
}

/// Recordings past their retention and not yet shredded (nor being written).
pub async fn past_retention(
    pool: &AnyPool,
    now: OffsetDateTime,
) -> anyhow::Result<Vec<RecordingRow>> {
    sqlx::query(&format!(
        "{SELECT} WHERE retain_until <= $1 AND state NOT IN ('shredded', 'recording')"
    ))
    .bind(to_unix(now))
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(from_row)
    .collect()
}

/// The recording's key is destroyed.
pub async fn set_shredded(
    db: impl AnyExecutor<'_>,
    id: Uuid,
    at: OffsetDateTime,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE recordings SET state = 'shredded', ended_at = COALESCE(ended_at, $1) WHERE id = $2",
    )
    .bind(to_unix(at))
    .bind(id.to_string())
    .execute(db)
    .await?;
    Ok(())
}

/// Recordings a process left in state `recording` (it stopped without closing them): every
/// one at start-up of a single node, one doctor's when a node takes over their consultations.
pub async fn left_open(pool: &AnyPool, doctor: Option<Uuid>) -> anyhow::Result<Vec<RecordingRow>> {
    sqlx::query(&format!(
        "{SELECT} WHERE state = 'recording' AND ($1 IS NULL OR consultation_id IN
           (SELECT id FROM consultations WHERE doctor_id = $1))"
    ))
    .bind(doctor.map(|d| d.to_string()))
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(from_row)
    .collect()
}

/// The recording public key registered for a clinician, if any.
pub async fn recording_key_of(
    db: impl AnyExecutor<'_>,
    user_id: Uuid,
) -> anyhow::Result<Option<String>> {
    let key: Option<Option<String>> =
        sqlx::query_scalar("SELECT recording_public_key FROM users WHERE id = $1")
            .bind(user_id.to_string())
            .fetch_optional(db)
            .await?;
    Ok(key.flatten())
}

/// Register (or with `None`, remove) a clinician's recording public key.
pub async fn set_recording_key(
    db: impl AnyExecutor<'_>,
    user_id: Uuid,
    key: Option<&str>,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE users SET recording_public_key = $1 WHERE id = $2")
        .bind(key)
        .bind(user_id.to_string())
        .execute(db)
        .await?;
    Ok(())
}
