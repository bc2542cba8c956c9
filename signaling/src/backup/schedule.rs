//! Scheduled backups: `consult serve` with `[backup] interval` set backs up at start-up, then
//! every interval, and at once after a recording is shredded (so its key leaves the backups
//! without waiting). After each backup the retention policy is applied. Each run sets the
//! `consult_backup_*` metrics; a success is audited, a failure logged and counted (and the
//! staleness alert in `deploy/prometheus` fires when successes stop).

use std::time::Duration;

use serde_json::json;

use super::{BackupError, Backups};
use crate::audit::{Action, Actor};
use crate::state::AppState;

/// The shortest pause between two runs, however often shredding asks for one.
const MIN_PAUSE: Duration = Duration::from_secs(1);
/// After a failed run, the next comes this soon (or at the interval, if sooner).
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Start the schedule if the configuration has one.
pub fn spawn(state: AppState) {
    let Some(interval) = state.config.backup.interval else {
        return;
    };
    if state.config.backup.repository.is_none() {
        return;
    }
    state
        .metrics
        .backup
        .interval
        .set(i64::try_from(interval.as_secs()).unwrap_or(i64::MAX));
    tokio::spawn(async move {
        loop {
            let wait = if run_once(&state).await {
                interval
            } else {
                interval.min(RETRY_AFTER)
            };
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = state.backup_soon.notified() => {}
            }
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = tokio::time::sleep(MIN_PAUSE) => {}
            }
        }
    });
}

/// One scheduled backup and prune; whether the backup succeeded (failures are reported).
pub async fn run_once(state: &AppState) -> bool {
    let backups = match Backups::new(&state.config) {
        Ok(backups) => backups,
        Err(e) => {
            tracing::warn!(error = %e, "backups are configured but cannot run");
            return false;
        }
    };
    match backups.create(&state.pool).await {
        Ok(created) => {
            let metrics = &state.metrics.backup;
            metrics
                .last_success
                .set(time::OffsetDateTime::now_utc().unix_timestamp());
            metrics.last_duration.set(created.duration.as_secs_f64());
            metrics
                .last_added_bytes
                .set(i64::try_from(created.bytes_added).unwrap_or(i64::MAX));
            metrics
                .last_processed_bytes
                .set(i64::try_from(created.bytes_processed).unwrap_or(i64::MAX));
            tracing::info!(
                snapshot = %created.data_snapshot,
                added_bytes = created.bytes_added,
                seconds = created.duration.as_secs_f64(),
                "backup made"
            );
            state
                .audit
                .record_or_log(
                    state.clock.now(),
                    &Actor::System,
                    Action::BackupCreated,
                    None,
                    json!({
                        "snapshot": created.data_snapshot,
                        "keys_snapshot": created.keys_snapshot,
                        "added_bytes": created.bytes_added,
                        "recordings": created.manifest.recordings.len(),
                    }),
                )
                .await;
            let installation = created.manifest.installation;
            if let Err(e) = backups.prune(installation).await {
                tracing::warn!(error = %e, "backup retention could not be applied");
            }
            true
        }
        Err(e) => {
            state
                .metrics
                .backup
                .failures
                .with_label_values(&[reason(&e)])
                .inc();
            tracing::error!(error = %e, "backup failed");
            false
        }
    }
}

/// Every `reason` label of `consult_backup_failures_total`.
pub const FAILURE_REASONS: [&str; 7] = [
    "unreachable",
    "full",
    "corrupt",
    "wrong_key",
    "other_installation",
    "timed_out",
    "other",
];

/// The `reason` label of a failure.
fn reason(e: &BackupError) -> &'static str {
    match e {
        BackupError::Unreachable { .. } | BackupError::NoRepository { .. } => "unreachable",
        BackupError::TargetFull { .. } => "full",
        BackupError::Corrupt { .. } => "corrupt",
        BackupError::WrongKey => "wrong_key",
        BackupError::OtherInstallation { .. } => "other_installation",
        BackupError::TimedOut { .. } => "timed_out",
        _ => "other",
    }
}
