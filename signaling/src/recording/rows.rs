//! What the database knows about recordings (the media and keys are in the vault).

use serde::{Deserialize, Serialize};
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
    /// The recording this one continues: it was interrupted (the node recording it stopped) and
    /// this segment took over when the call went on. Segments export and are shredded as one.
    pub continues: Option<Uuid>,
}

const SELECT: &str = "SELECT id, consultation_id, state, zero_knowledge, started_at, ended_at, \
                      retain_until, chunks, bytes, note, continues FROM recordings";

/// The longest chain of segments followed (a recording interrupted this many times over is not
/// one any more; a bound on the walk whatever the database holds).
pub const MAX_SEGMENTS: usize = 64;

fn from_row(row: crate::db::Row) -> anyhow::Result<RecordingRow> {
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
        continues: row
            .get::<Option<&str>, _>(10)
            .map(Uuid::parse_str)
            .transpose()?,
    })
}

/// What a new recording is: its consultation, whether zero-knowledge, its retention, and the
/// interrupted recording it continues, if any.
#[derive(Debug, Clone, Copy)]
pub struct NewRecording {
    /// Its id.
    pub id: Uuid,
    /// Its consultation.
    pub consultation_id: Uuid,
    /// SFrame ciphertext only the clinician's recording key opens.
    pub zero_knowledge: bool,
    /// When it starts.
    pub started_at: OffsetDateTime,
    /// When the retention job shreds it.
    pub retain_until: OffsetDateTime,
    /// The interrupted recording it continues.
    pub continues: Option<Uuid>,
}

/// A new recording, in state `recording`.
pub async fn insert(db: impl crate::db::Executor<'_>, new: &NewRecording) -> anyhow::Result<()> {
    crate::db::query(
        "INSERT INTO recordings (id, consultation_id, state, zero_knowledge, started_at, retain_until,
                                 continues)
         VALUES ($1, $2, 'recording', $3, $4, $5, $6)",
    )
    .bind(new.id.to_string())
    .bind(new.consultation_id.to_string())
    .bind(i64::from(new.zero_knowledge))
    .bind(to_unix(new.started_at))
    .bind(to_unix(new.retain_until))
    .bind(new.continues.map(|id| id.to_string()))
    .execute(db)
    .await?;
    Ok(())
}

/// The recording stopped.
pub async fn finish(
    pool: &crate::db::Db,
    id: Uuid,
    state: RecordingStatus,
    ended_at: OffsetDateTime,
    chunks: u64,
    bytes: u64,
    note: Option<&str>,
) -> anyhow::Result<()> {
    crate::db::query(
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
pub async fn find(pool: &crate::db::Db, id: Uuid) -> anyhow::Result<Option<RecordingRow>> {
    crate::db::query(&format!("{SELECT} WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await?
        .map(from_row)
        .transpose()
}

/// The interrupted recording of `consultation_id` that a new recorder continues: the latest one
/// interrupted (its node stopped while recording) that no segment continues yet, of the same
/// kind (`zero_knowledge`), whose last frame is no older than `since`. A recording interrupted
/// longer ago than that, or followed by another recording, starts a new one.
pub async fn to_continue(
    db: impl crate::db::Executor<'_>,
    consultation_id: Uuid,
    zero_knowledge: bool,
    since: OffsetDateTime,
) -> anyhow::Result<Option<RecordingRow>> {
    crate::db::query(&format!(
        "{SELECT} r WHERE consultation_id = $1 AND state = 'interrupted' AND zero_knowledge = $2
           AND ended_at >= $3
           AND NOT EXISTS (SELECT 1 FROM recordings c WHERE c.continues = r.id)
           AND NOT EXISTS (SELECT 1 FROM recordings l WHERE l.consultation_id = r.consultation_id
                           AND l.started_at > r.started_at)
         ORDER BY started_at DESC LIMIT 1"
    ))
    .bind(consultation_id.to_string())
    .bind(i64::from(zero_knowledge))
    .bind(to_unix(since))
    .fetch_optional(db)
    .await?
    .map(from_row)
    .transpose()
}

/// A chain of segments that cannot be followed (too long, a link missing, or a link to another
/// consultation's recording): the recording is damaged, not the database unreachable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BrokenChain(pub String);

/// Every segment of the recording `id` belongs to, first to last: the recordings it continues
/// and those that continue it (just `id` when it was never interrupted and continued). Empty
/// when there is no recording `id`. A chain that cannot be followed is an error holding a
/// [`BrokenChain`].
pub async fn segments(pool: &crate::db::Db, id: Uuid) -> anyhow::Result<Vec<RecordingRow>> {
    let Some(mut first) = find(pool, id).await? else {
        return Ok(Vec::new());
    };
    let mut walked = 1;
    while let Some(previous) = first.continues {
        walked += 1;
        if walked > MAX_SEGMENTS {
            return Err(BrokenChain(format!(
                "recording {id} has more than {MAX_SEGMENTS} segments"
            ))
            .into());
        }
        first = find(pool, previous).await?.ok_or_else(|| {
            BrokenChain(format!(
                "recording {id} continues {previous}, which is missing"
            ))
        })?;
    }
    let mut chain = vec![first];
    while let Some(last) = chain.last().map(|r| r.id) {
        let next = crate::db::query(&format!("{SELECT} WHERE continues = $1"))
            .bind(last.to_string())
            .fetch_optional(pool)
            .await?
            .map(from_row)
            .transpose()?;
        let Some(next) = next else { break };
        if chain.len() >= MAX_SEGMENTS {
            return Err(BrokenChain(format!(
                "recording {id} has more than {MAX_SEGMENTS} segments"
            ))
            .into());
        }
        chain.push(next);
    }
    // Segments are of one consultation (the service only continues a recording in its own), so
    // whoever may have one may have all: anything else is refused, never followed.
    let consultation = chain[0].consultation_id;
    if let Some(stranger) = chain.iter().find(|r| r.consultation_id != consultation) {
        return Err(BrokenChain(format!(
            "recording {} continues one of another consultation",
            stranger.id
        ))
        .into());
    }
    Ok(chain)
}

/// A consultation's recordings, oldest first.
pub async fn of_consultation(
    pool: &crate::db::Db,
    consultation_id: Uuid,
) -> anyhow::Result<Vec<RecordingRow>> {
    crate::db::query(&format!(
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
pub async fn all(pool: &crate::db::Db) -> anyhow::Result<Vec<RecordingRow>> {
    crate::db::query(&format!("{SELECT} ORDER BY started_at DESC, id"))
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(from_row)
        .collect()
}

/// Recordings past their retention and not yet shredded (nor being written).
pub async fn past_retention(
    pool: &crate::db::Db,
    now: OffsetDateTime,
) -> anyhow::Result<Vec<RecordingRow>> {
    crate::db::query(&format!(
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
    db: impl crate::db::Executor<'_>,
    id: Uuid,
    at: OffsetDateTime,
) -> anyhow::Result<()> {
    crate::db::query(
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
pub async fn left_open(
    pool: &crate::db::Db,
    doctor: Option<Uuid>,
) -> anyhow::Result<Vec<RecordingRow>> {
    crate::db::query(&format!(
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
    db: impl crate::db::Executor<'_>,
    user_id: Uuid,
) -> anyhow::Result<Option<String>> {
    let key: Option<Option<String>> =
        crate::db::query_scalar("SELECT recording_public_key FROM users WHERE id = $1")
            .bind(user_id.to_string())
            .fetch_optional(db)
            .await?;
    Ok(key.flatten())
}

/// Register (or with `None`, remove) a clinician's recording public key.
pub async fn set_recording_key(
    db: impl crate::db::Executor<'_>,
    user_id: Uuid,
    key: Option<&str>,
) -> anyhow::Result<()> {
    crate::db::query("UPDATE users SET recording_public_key = $1 WHERE id = $2")
        .bind(key)
        .bind(user_id.to_string())
        .execute(db)
        .await?;
    Ok(())
}
