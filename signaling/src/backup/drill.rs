//! `consult backup drill`: restore a backup into a scratch data directory (never the live one),
//! start a service on it on loopback, and prove it works as the installation did: it answers,
//! a clinician signs in, the audit chain and its checkpoints verify, every recording exports into
//! a file ffprobe accepts, shredded recordings stay shredded. Then the recovery point: what the
//! live installation has that the backup does not.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db;
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;

use super::{BackupError, Backups, Scratch};
use crate::audit::{Action, Actor, AuditLog};
use crate::config::Config;
use crate::recording::export::ExportError;
use crate::recording::rows::{self, RecordingStatus};
use consult_e2ee::recording_key::RecordingKeyPair;

/// A clinician account the drill signs in with (a JSON file): a dedicated account with no
/// consultations of its own is enough.
#[derive(Deserialize)]
pub struct SignIn {
    /// The account's email.
    pub email: String,
    /// Its password.
    pub password: String,
    /// Its TOTP secret (base32), to make a code.
    pub totp_secret: String,
}

/// What the drill is given.
#[derive(Default)]
pub struct DrillOptions {
    /// The backup to restore (`None`: the latest).
    pub snapshot: Option<String>,
    /// Sign in as this clinician on the restored service.
    pub sign_in: Option<SignIn>,
    /// A clinician's unlocked recording key: their zero-knowledge recordings are exported too.
    pub clinician_key: Option<Arc<RecordingKeyPair>>,
    /// An empty PostgreSQL database to restore into (needed when the installation runs on
    /// PostgreSQL).
    pub scratch_database_url: Option<String>,
    /// The ffprobe program.
    pub ffprobe: PathBuf,
}

/// One recording's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct RecordingCheck {
    /// The recording (the first segment of a chain).
    pub id: uuid::Uuid,
    /// `exported` (ffprobe accepted it), `sealed` (zero-knowledge without the clinician's key:
    /// every sealed chunk authenticated), `shredded` (refused, as it must be), `empty`, or
    /// `failed`.
    pub outcome: String,
    /// The export's duration (`exported`), or why it failed.
    pub detail: String,
}

/// What the drill proved.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    /// The backup restored.
    pub snapshot: String,
    /// When it was taken.
    pub taken_at: String,
    /// Seconds to restore it.
    pub restore_seconds: f64,
    /// Seconds until the restored service answered `/readyz`.
    pub start_seconds: f64,
    /// Whether the clinician signed in (`None`: not asked).
    pub signed_in: Option<bool>,
    /// Audit entries whose chain verified.
    pub audit_entries: usize,
    /// Stored checkpoints that verified.
    pub audit_checkpoints: usize,
    /// Every recording, checked.
    pub recordings: Vec<RecordingCheck>,
    /// How old the backup is: the recovery point if the installation were lost now.
    pub recovery_point_seconds: f64,
    /// Audit entries the live installation has that the backup does not.
    pub audit_entries_since: i64,
    /// Recordings the live installation has that the backup does not.
    pub recordings_since: usize,
    /// Everything that did not hold (empty: the drill passed).
    pub failures: Vec<String>,
}

impl Backups {
    /// Run the drill against the live installation `live_pool` (read only: it is compared, never
    /// changed, but for one audit entry recording the drill).
    pub async fn drill(
        &self,
        live_pool: &db::Db,
        options: DrillOptions,
    ) -> Result<DrillReport, BackupError> {
        let scratch = Scratch::new("consult-drill")?;
        let mut config = self.config.clone();
        config.data_dir = scratch.path().join("data");
        config.database_url = match (&self.config.database_url, options.scratch_database_url) {
            (Some(_), Some(url)) => Some(url),
            (Some(_), None) => {
                return Err(BackupError::Database(
                    "this installation runs on PostgreSQL: give --scratch-database-url, an empty database the drill may restore into".into(),
                ))
            }
            (None, _) => None,
        };
        config.bind = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        config.public_url = None;
        config.tls = false;
        config.admin.bind = None;
        config.cluster.redis_url = None;
        config.backup.interval = None;
        // The drill's service must change nothing it shares with the live one (object storage).
        config.recording.retention_sweep_interval = Duration::ZERO;
        config.alerts.webhook_url = None;

        let started = Instant::now();
        let restored = Backups {
            restic: self.restic.clone(),
            config: config.clone(),
        }
        .restore_with(
            options.snapshot.as_deref(),
            false,
            super::restore::ShreddedMedia::Leave,
        )
        .await?;
        let restore_seconds = started.elapsed().as_secs_f64();

        let started = Instant::now();
        let running = crate::server::start(config.clone(), Arc::new(crate::clock::SystemClock))
            .await
            .map_err(|e| BackupError::Database(format!("starting the restored service: {e:#}")))?;
        let mut report = DrillReport {
            snapshot: restored.snapshot.clone(),
            taken_at: restored.taken_at.clone(),
            restore_seconds,
            start_seconds: 0.0,
            signed_in: None,
            audit_entries: 0,
            audit_checkpoints: 0,
            recordings: Vec::new(),
            recovery_point_seconds: 0.0,
            audit_entries_since: 0,
            recordings_since: 0,
            failures: Vec::new(),
        };
        let outcome = prove(
            &running,
            &config,
            &options.sign_in,
            options.clinician_key.as_ref(),
            &options.ffprobe,
            scratch.path(),
            &mut report,
            started,
        )
        .await;
        let _ = running.shutdown(Duration::from_secs(1)).await;
        outcome?;

        // The recovery point: what the live installation has that the backup has not.
        let taken = OffsetDateTime::parse(
            &restored.taken_at,
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        report.recovery_point_seconds = (OffsetDateTime::now_utc() - taken).as_seconds_f64();
        let live_head: i64 = db::query("SELECT COALESCE(MAX(seq), 0) AS n FROM audit_log")
            .fetch_one(live_pool)
            .await?
            .try_get("n")?;
        report.audit_entries_since = live_head - restored.manifest.audit_entries;
        let backed_up: std::collections::HashSet<uuid::Uuid> =
            restored.manifest.recordings.iter().map(|r| r.id).collect();
        report.recordings_since = rows::all(live_pool)
            .await
            .map_err(|e| BackupError::Database(format!("{e:#}")))?
            .iter()
            .filter(|r| !backed_up.contains(&r.id))
            .count();

        AuditLog::new(live_pool.clone())
            .record(
                OffsetDateTime::now_utc(),
                &Actor::Operator,
                Action::BackupDrilled,
                None,
                json!({
                    "snapshot": report.snapshot,
                    "passed": report.failures.is_empty(),
                    "recordings": report.recordings.len(),
                    "failures": report.failures.len(),
                    "recovery_point_seconds": report.recovery_point_seconds.round(),
                }),
            )
            .await
            .map_err(|e| BackupError::Database(format!("{e:#}")))?;
        Ok(report)
    }
}

/// The checks on the running restored service; failures go into the report.
#[allow(clippy::too_many_arguments)]
async fn prove(
    running: &crate::server::RunningServer,
    config: &Config,
    sign_in: &Option<SignIn>,
    clinician_key: Option<&Arc<RecordingKeyPair>>,
    ffprobe: &std::path::Path,
    scratch: &std::path::Path,
    report: &mut DrillReport,
    started: Instant,
) -> Result<(), BackupError> {
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("{}/readyz", running.url))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    report.start_seconds = started.elapsed().as_secs_f64();
    if !ready {
        report
            .failures
            .push("the restored service is not ready".into());
    }

    if let Some(account) = sign_in {
        // This step's code may have been used already (each step works once per account): the
        // next step's is accepted too.
        let now = OffsetDateTime::now_utc().unix_timestamp() as u64;
        let mut signed_in = false;
        for at in [now, now + crate::auth::totp::STEP_SECS] {
            let code = crate::auth::totp::code_at(&account.totp_secret, at).map_err(|_| {
                BackupError::Database("the sign-in file's totp_secret is malformed".into())
            })?;
            let body =
                json!({ "email": account.email, "password": account.password, "totp": code });
            let answer = client
                .post(format!("{}/api/v1/auth/login", running.url))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string())
                .send()
                .await;
            signed_in = match answer {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok_and(|bytes| {
                    serde_json::from_slice::<serde_json::Value>(&bytes)
                        .is_ok_and(|body| body["status"] == "signed_in")
                }),
                _ => false,
            };
            if signed_in {
                break;
            }
        }
        report.signed_in = Some(signed_in);
        if !signed_in {
            report
                .failures
                .push(format!("{} could not sign in", account.email));
        }
    }

    let pool = &running.state.pool;
    match crate::audit::verify(pool).await {
        Ok(Ok(n)) => report.audit_entries = n,
        Ok(Err(broken)) => report.failures.push(format!("the audit chain: {broken}")),
        Err(e) => report.failures.push(format!("the audit chain: {e:#}")),
    }
    let keys = crate::audit_checkpoints::public_keys(&config.data_dir).map_err(|e| {
        BackupError::Corrupt {
            detail: format!("the audit keys: {e}"),
        }
    })?;
    match crate::audit_checkpoints::verify_checkpoints(pool, &keys).await {
        Ok(Ok(n)) => report.audit_checkpoints = n,
        Ok(Err((seq, mismatch))) => report
            .failures
            .push(format!("the audit checkpoint at entry {seq}: {mismatch}")),
        Err(e) => report
            .failures
            .push(format!("the audit checkpoints: {e:#}")),
    }

    let vault = running.state.recordings.vault.clone();
    let all = rows::all(pool)
        .await
        .map_err(|e| BackupError::Database(format!("{e:#}")))?;
    for row in all.iter().filter(|r| r.continues.is_none()) {
        let check = check_recording(pool, &vault, row, clinician_key, ffprobe, scratch).await;
        if check.outcome == "failed" {
            report
                .failures
                .push(format!("recording {}: {}", check.id, check.detail));
        }
        report.recordings.push(check);
    }
    Ok(())
}

/// Export one recording (with its segments) into a scratch file and ask ffprobe; a shredded one
/// must refuse; a zero-knowledge one without the clinician's key must authenticate chunk by chunk.
async fn check_recording(
    pool: &db::Db,
    vault: &Arc<consult_vault::Vault>,
    row: &rows::RecordingRow,
    clinician_key: Option<&Arc<RecordingKeyPair>>,
    ffprobe: &std::path::Path,
    scratch: &std::path::Path,
) -> RecordingCheck {
    let check = |outcome: &str, detail: String| RecordingCheck {
        id: row.id,
        outcome: outcome.to_owned(),
        detail,
    };
    let segments = match rows::segments(pool, row.id).await {
        Ok(segments) if !segments.is_empty() => segments,
        Ok(_) => vec![row.clone()],
        Err(e) => return check("failed", format!("its segments: {e:#}")),
    };
    if segments
        .iter()
        .any(|s| s.state == RecordingStatus::Shredded)
    {
        return if segments.iter().all(|s| vault.is_shredded(s.id))
            && segments.iter().all(|s| vault.open_recording(s.id).is_err())
        {
            check("shredded", "its key is destroyed; it does not open".into())
        } else {
            check("failed", "marked shredded, but it still opens".into())
        };
    }
    if row.zero_knowledge && clinician_key.is_none() {
        let mut chunks = 0u64;
        for segment in &segments {
            let mut reader = match vault.open_recording(segment.id) {
                Ok(reader) => reader,
                Err(e) => return check("failed", e.to_string()),
            };
            loop {
                match reader.next_chunk() {
                    Ok(Some(_)) => chunks += 1,
                    Ok(None) => break,
                    Err(e) => return check("failed", e.to_string()),
                }
            }
        }
        return check(
            "sealed",
            format!("{chunks} sealed chunks authenticated (the content needs the clinician's key)"),
        );
    }
    let file = scratch.join(format!("{}.export", row.id));
    let (vault, first, rest, key, out) = (
        vault.clone(),
        segments[0].clone(),
        segments[1..].to_vec(),
        clinician_key.cloned(),
        file.clone(),
    );
    let exported = tokio::task::spawn_blocking(move || {
        let writer = std::io::BufWriter::new(std::fs::File::create(&out)?);
        Ok::<_, std::io::Error>(crate::recording::export::export(
            &vault,
            &first,
            &rest,
            key.as_deref(),
            writer,
        ))
    })
    .await;
    let outcome = match exported {
        Ok(Ok(Ok(exported))) => {
            let probed = tokio::process::Command::new(ffprobe)
                .args([
                    "-v",
                    "error",
                    "-show_entries",
                    "format=duration",
                    "-of",
                    "csv=p=0",
                ])
                .arg(&file)
                .output()
                .await;
            match probed {
                Ok(o) if o.status.success() && o.stderr.is_empty() => check(
                    "exported",
                    format!(
                        "{:.1} s, {} tracks, {} frames; ffprobe: {} s",
                        exported.summary.duration_ms as f64 / 1000.0,
                        exported.summary.tracks,
                        exported.summary.frames,
                        String::from_utf8_lossy(&o.stdout).trim()
                    ),
                ),
                Ok(o) => check(
                    "failed",
                    format!(
                        "ffprobe refused it: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                ),
                Err(e) => check(
                    "failed",
                    format!("ffprobe could not run ({e}): apt-get install ffmpeg"),
                ),
            }
        }
        Ok(Ok(Err(e @ ExportError::Empty(_)))) => check("empty", e.to_string()),
        Ok(Ok(Err(e))) => check("failed", e.to_string()),
        Ok(Err(e)) => check("failed", format!("the scratch file: {e}")),
        Err(e) => check("failed", e.to_string()),
    };
    let _ = std::fs::remove_file(&file);
    outcome
}
