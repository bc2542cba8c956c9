//! Recording orchestration: the policy decides, the service obeys.
//!
//! On every change that can matter — a patient admitted, a consent given, refused or withdrawn,
//! someone leaving — [`reconcile`] asks `consult_policy::decide_recording` again, starts or
//! stops the consultation's [`recorder`] to match, tells every participant (`recording`
//! message) and audits the decision. A live-only consultation never has a recorder and never
//! writes anything. A recording that fails (storage full) is not restarted in that
//! consultation: the call goes on, and the loss is reported and audited.

pub mod api;
pub mod candidates;
pub mod cli;
pub mod export;
pub mod recorder;
pub mod rows;
mod serial;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use consult_policy::{
    decide_recording, Decision, Mode, OrganisationPolicy, Reason, RecordingInput,
};
use consult_proto::api::ConsultationMode;
use consult_proto::signal::{RecordingState, ServerMessage};
use consult_vault::Vault;
use serde_json::json;
use time::Duration as TimeDuration;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::audit::{Action, Actor};
use crate::state::AppState;

/// Why a recorder is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The patient withdrew consent: what was recorded stays, flagged `withdrawn`.
    ConsentWithdrawn,
    /// The policy no longer records (the patient left, the consultation ended): `complete`.
    Ended,
}

/// How recently a recording must have been interrupted (its last frame) for the next recorder
/// of its consultation to continue it rather than start a new one: a failover or a restart, not
/// a consultation taken up again another day.
pub const CONTINUE_WITHIN: TimeDuration = TimeDuration::minutes(10);

struct Running {
    recording_id: Uuid,
    /// The recorder's participant id.
    recorder: Uuid,
    /// Zero-knowledge: the clinician's recording public key clients wrap their keys to.
    recording_key: Option<String>,
    stop: Option<oneshot::Sender<StopReason>>,
    done: tokio::task::JoinHandle<()>,
}

/// The recorders of every live consultation, and the vault they write into.
pub struct Recordings {
    /// The encrypted store.
    pub vault: Arc<Vault>,
    /// The address recorders receive media on.
    pub media_address: IpAddr,
    /// The addresses recorders may pair with.
    pub candidates: candidates::CandidatePolicy,
    running: Mutex<HashMap<Uuid, Running>>,
    /// Consultations whose recording failed, with what participants were told.
    failed: Mutex<HashMap<Uuid, String>>,
    last_decision: Mutex<HashMap<Uuid, Decision>>,
    /// One reconcile at a time per consultation; any number side by side.
    reconciling: serial::PerConsultation,
}

impl Recordings {
    /// Recordings over `vault`, with recorders receiving on `media_address` and pairing only
    /// with the addresses `candidates` allows.
    pub fn new(
        vault: Arc<Vault>,
        media_address: IpAddr,
        candidates: candidates::CandidatePolicy,
    ) -> Self {
        Self {
            vault,
            media_address,
            candidates,
            running: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            last_decision: Mutex::new(HashMap::new()),
            reconciling: serial::PerConsultation::default(),
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The recording being written in a consultation now, if any.
    pub fn active(&self, consultation_id: Uuid) -> Option<Uuid> {
        Self::lock(&self.running)
            .get(&consultation_id)
            .map(|r| r.recording_id)
    }

    /// The recording being written in a consultation now and its recorder's participant id,
    /// if it is zero-knowledge (clients send it wrapped keys).
    pub fn zero_knowledge_recorder(&self, consultation_id: Uuid) -> Option<(Uuid, Uuid)> {
        Self::lock(&self.running)
            .get(&consultation_id)
            .filter(|r| r.recording_key.is_some())
            .map(|r| (r.recording_id, r.recorder))
    }

    fn current(&self, consultation_id: Uuid) -> Option<(Uuid, Option<String>)> {
        Self::lock(&self.running)
            .get(&consultation_id)
            .map(|r| (r.recording_id, r.recording_key.clone()))
    }

    /// Stop every recorder and wait for them to seal their last chunk (service shutdown).
    pub async fn stop_all(&self) {
        // After any reconcile in progress (which may be starting a recorder): the shutdown token
        // is cancelled already, so none starts after this.
        let _serial = self.reconciling.all().await;
        let running: Vec<Running> = Self::lock(&self.running).drain().map(|(_, r)| r).collect();
        for mut r in running {
            if let Some(stop) = r.stop.take() {
                let _ = stop.send(StopReason::Ended);
            }
            let _ = r.done.await;
        }
    }
}

fn organisation(state: &AppState) -> OrganisationPolicy {
    OrganisationPolicy {
        recording_allowed: state.config.policy.recording_allowed,
        e2ee_required: state.config.policy.e2ee_required,
        retention_days: state.config.policy.retention_days,
    }
}

/// What participants are told, from the decision (and whether recording failed), with the
/// recording being made (its id and, zero-knowledge, the key to wrap to).
fn announcement(
    decision: &Decision,
    failed: Option<&str>,
    current: Option<(Uuid, Option<String>)>,
) -> ServerMessage {
    let reasons: Vec<String> = decision
        .reasons()
        .iter()
        .map(|r| {
            serde_json::to_value(r)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        })
        .collect();
    let has = |r: Reason| decision.reasons().contains(&r);
    let (state, retention_days, zero_knowledge) = match decision {
        _ if failed.is_some() => (RecordingState::Failed, None, false),
        Decision::Record(plan) => (
            RecordingState::Recording,
            Some(plan.retention_days),
            plan.zero_knowledge,
        ),
        Decision::LiveOnly { .. } if has(Reason::ConsentWithdrawn) => {
            (RecordingState::Withdrawn, None, false)
        }
        Decision::LiveOnly { .. }
            if has(Reason::OrganisationForbidsRecording) || has(Reason::ModeLiveOnly) =>
        {
            (RecordingState::LiveOnly, None, false)
        }
        Decision::LiveOnly { .. } if has(Reason::ConsentDeclined) => {
            (RecordingState::Declined, None, false)
        }
        Decision::LiveOnly { .. } => (RecordingState::AwaitingConsent, None, false),
    };
    ServerMessage::Recording {
        state,
        reasons,
        retention_days,
        zero_knowledge,
        problem: failed.map(str::to_owned),
        recording_id: current
            .as_ref()
            .filter(|_| state == RecordingState::Recording)
            .map(|(id, _)| *id),
        recording_key: current
            .and_then(|(_, key)| key)
            .filter(|_| state == RecordingState::Recording),
    }
}

/// Open the vault in `data_dir/vault`, its media where the configuration says: the directory
/// beside it, or the S3 bucket of `[recording.object_storage]` — checked with a write, a read
/// and a delete first, so a bucket that cannot be used is named at start-up rather than at the
/// first recording.
pub async fn open_vault(config: &crate::config::Config) -> anyhow::Result<Vault> {
    use anyhow::Context as _;
    let dir = config.data_dir.join("vault");
    let storage = config.recording.object_storage.clone();
    tokio::task::spawn_blocking(move || match storage {
        None => Vault::open(&dir).context("opening the vault"),
        Some(storage) => {
            let media = consult_vault::object::ObjectStorage::new(&storage.to_vault())
                .context("recording.object_storage")?;
            media.check().with_context(|| {
                format!(
                    "recording.object_storage: bucket {:?} at {}",
                    storage.bucket,
                    storage.endpoint.as_deref().unwrap_or("AWS")
                )
            })?;
            Vault::with_media_store(&dir, Box::new(media)).context("opening the vault")
        }
    })
    .await?
}

/// Close the recordings left in state `recording` by a node that stopped (all of them at a
/// single node's start-up; one doctor's when a node takes over their consultations): marked
/// interrupted (audited), they keep everything up to their last sealed chunk.
pub async fn close_left_open(
    pool: &crate::db::Db,
    vault: &Arc<Vault>,
    clock: &Arc<dyn crate::clock::Clock>,
    doctor: Option<Uuid>,
) -> anyhow::Result<()> {
    for row in rows::left_open(pool, doctor).await? {
        let (id, started_at) = (row.id, row.started_at);
        let reader = Arc::clone(vault);
        // What survived: every sealed chunk; the recording ends with its last frame.
        let survived = tokio::task::spawn_blocking(move || {
            // The index alone: one chunk in memory at a time, whatever the recording's length.
            let index =
                consult_vault::recording::RecordingIndex::read(reader.open_recording(id)?, true)?;
            Ok::<_, consult_vault::VaultError>((index.chunks, index.last_frame_us.unwrap_or(0)))
        })
        .await?;
        let sizer = Arc::clone(vault);
        let bytes = match tokio::task::spawn_blocking(move || sizer.media_size(id)).await? {
            Ok(size) => size.unwrap_or(0),
            Err(e) => {
                tracing::warn!(recording = %id, error = %e, "could not size a recording left open");
                0
            }
        };
        // Storage that could not be read just now (object storage not answering) is not
        // damage: the recording stays interrupted, readable when storage answers again.
        let damaged = matches!(&survived, Err(e) if !matches!(e, consult_vault::VaultError::Io(_)));
        let (chunks, ended_at, note) = match survived {
            Ok((chunks, last_us)) => (
                chunks,
                started_at + std::time::Duration::from_micros(last_us),
                "the service stopped while recording; kept up to the last sealed chunk".to_owned(),
            ),
            Err(e) => (
                0,
                started_at,
                format!("the service stopped while recording, and what it left does not open: {e}"),
            ),
        };
        // What does not open is storage that failed: never continued (a chain with it would
        // not export), kept for what can be read of it.
        let status = if !damaged {
            rows::RecordingStatus::Interrupted
        } else {
            rows::RecordingStatus::Failed
        };
        rows::finish(pool, id, status, ended_at, chunks, bytes, Some(&note)).await?;
        crate::audit::AuditLog::new(pool.clone())
            .record(
                clock.now(),
                &Actor::System,
                crate::audit::Action::RecordingStopped,
                Some(row.consultation_id),
                serde_json::json!({ "recording_id": id, "state": status, "chunks": chunks,
                                    "bytes": bytes }),
            )
            .await?;
        tracing::warn!(recording = %id, chunks, "a recording was interrupted by the end of the node recording it");
    }
    Ok(())
}

/// Decide again whether `consultation_id` is recorded, and make it so.
pub async fn reconcile(state: &AppState, consultation_id: Uuid) {
    let recordings = &state.recordings;
    let _serial = recordings.reconciling.one(consultation_id).await;
    let Some((info, participants)) = state.hub.recording_facts(consultation_id) else {
        stop(state, consultation_id, StopReason::Ended).await;
        Recordings::lock(&recordings.last_decision).remove(&consultation_id);
        return;
    };
    let decision = decide_recording(&RecordingInput {
        org: organisation(state),
        mode: match info.mode {
            ConsultationMode::LiveOnly => Mode::LiveOnly,
            ConsultationMode::Recorded => Mode::Recorded,
        },
        e2ee: info.e2ee,
        participants: &participants,
    });
    let changed = Recordings::lock(&recordings.last_decision)
        .insert(consultation_id, decision.clone())
        .as_ref()
        != Some(&decision);
    if changed {
        state
            .audit
            .record_or_log(
                state.clock.now(),
                &Actor::System,
                Action::RecordingDecision,
                Some(consultation_id),
                json!({ "decision": decision }),
            )
            .await;
    }
    let mut problem = Recordings::lock(&recordings.failed)
        .get(&consultation_id)
        .cloned();
    let failed = problem.is_some();
    let running = recordings.active(consultation_id).is_some();
    // While the service shuts down, no recorder starts: it could not seal what it began (the
    // next run marks it interrupted) after the others were stopped.
    let shutting_down = state.shutdown.is_cancelled();
    let mut stopping = None;
    match &decision {
        Decision::Record(plan) if !running && !failed && !shutting_down => {
            if let Err(e) = start(state, &info, plan).await {
                tracing::error!(error = format!("{e:#}"), "could not start a recorder");
                let told = "the recorder could not start; the call goes on unrecorded";
                mark_failed(state, consultation_id, &format!("{e:#}"), told).await;
                problem = Some(told.to_owned());
            }
        }
        Decision::LiveOnly { reasons } if running => {
            let reason = if reasons.contains(&Reason::ConsentWithdrawn) {
                StopReason::ConsentWithdrawn
            } else {
                StopReason::Ended
            };
            // Told at once; everyone hears before the last chunk is sealed.
            stopping = Recordings::lock(&recordings.running).remove(&consultation_id);
            if let Some(running) = &mut stopping
                && let Some(stop) = running.stop.take()
            {
                let _ = stop.send(reason);
            }
        }
        _ => {}
    }
    let current = recordings.current(consultation_id);
    state.hub.announce_recording(
        consultation_id,
        announcement(&decision, problem.as_deref(), current),
    );
    if let Some(running) = stopping {
        let _ = running.done.await;
    }
}

async fn start(
    state: &AppState,
    info: &crate::signal::hub::RoomInfo,
    plan: &consult_policy::RecordingPlan,
) -> anyhow::Result<()> {
    let recording_id = Uuid::new_v4();
    let now = state.clock.now();
    let recording_key = if plan.zero_knowledge {
        let key = api::recording_key_of(&state.pool, info.doctor_user_id).await?;
        Some(key.ok_or_else(|| anyhow::anyhow!("the clinician has no recording key"))?)
    } else {
        None
    };
    let vault = state.recordings.vault.clone();
    let writer =
        tokio::task::spawn_blocking(move || vault.create_recording(recording_id)).await??;
    // The recording's row and its audit entry commit together, before its recorder starts.
    let mut tx = state.audit.begin().await?;
    // A recording its node left interrupted moments ago goes on in this one, a new segment
    // exported (and kept, and shredded) with it.
    let mut continued = rows::to_continue(
        tx.connection(),
        info.consultation_id,
        plan.zero_knowledge,
        now - CONTINUE_WITHIN,
    )
    .await?;
    // A recording interrupted over and over (a node that keeps dying) ends its chain at the
    // longest one export follows: the next recording starts a chain of its own.
    if let Some(previous) = &continued {
        let chain = rows::segments(&state.pool, previous.id).await;
        if chain.map_or(true, |chain| chain.len() >= rows::MAX_SEGMENTS) {
            continued = None;
        }
    }
    let retain_until = continued.as_ref().map_or_else(
        || now + TimeDuration::days(i64::from(plan.retention_days)),
        |previous| previous.retain_until,
    );
    let new = rows::NewRecording {
        id: recording_id,
        consultation_id: info.consultation_id,
        zero_knowledge: plan.zero_knowledge,
        started_at: now,
        retain_until,
        continues: continued.as_ref().map(|previous| previous.id),
    };
    rows::insert(tx.connection(), &new).await?;
    tx.record(
        now,
        &Actor::System,
        Action::RecordingStarted,
        Some(info.consultation_id),
        json!({ "recording_id": recording_id, "zero_knowledge": plan.zero_knowledge,
                "retain_until": retain_until.unix_timestamp(), "continues": new.continues }),
    )
    .await?;
    tx.commit().await?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let recorder = Uuid::new_v4();
    let done = recorder::spawn(
        state.clone(),
        info.clone(),
        recorder,
        recording_id,
        writer,
        stop_rx,
    );
    Recordings::lock(&state.recordings.running).insert(
        info.consultation_id,
        Running {
            recording_id,
            recorder,
            recording_key,
            stop: Some(stop_tx),
            done,
        },
    );
    Ok(())
}

/// Stop the consultation's recorder, if any, and wait until its last chunk is sealed.
async fn stop(state: &AppState, consultation_id: Uuid, reason: StopReason) {
    let running = Recordings::lock(&state.recordings.running).remove(&consultation_id);
    if let Some(mut running) = running {
        if let Some(stop) = running.stop.take() {
            let _ = stop.send(reason);
        }
        let _ = running.done.await;
    }
}

/// The recorder of `consultation_id` could not write: no more recording in this consultation.
/// `problem` is audited; `told` is what participants are told, now and on every later change.
async fn mark_failed(state: &AppState, consultation_id: Uuid, problem: &str, told: &str) {
    Recordings::lock(&state.recordings.failed).insert(consultation_id, told.to_owned());
    state
        .audit
        .record_or_log(
            state.clock.now(),
            &Actor::System,
            Action::RecordingFailed,
            Some(consultation_id),
            json!({ "problem": problem }),
        )
        .await;
}

/// Called by a recorder whose storage failed: the consultation goes on unrecorded, everyone is
/// told, and it is audited.
pub async fn recorder_failed(state: &AppState, consultation_id: Uuid, problem: &str) {
    // Participants hear that storage failed; what failed (paths, addresses, the store's own
    // words) is for the audit log, the service's log and the clinician's recordings view.
    tracing::warn!(consultation = %consultation_id, problem, "a recording's storage failed");
    let told = "recording stopped: the recording storage failed; the call goes on unrecorded";
    mark_failed(state, consultation_id, problem, told).await;
    Recordings::lock(&state.recordings.running).remove(&consultation_id);
    let decision = Recordings::lock(&state.recordings.last_decision)
        .get(&consultation_id)
        .cloned();
    if let Some(decision) = decision {
        state
            .hub
            .announce_recording(consultation_id, announcement(&decision, Some(told), None));
    }
}

/// Shred every recording past its retention (the retention job).
pub async fn shred_expired(state: &AppState) -> anyhow::Result<usize> {
    let expired = rows::past_retention(&state.pool, state.clock.now()).await?;
    for row in &expired {
        let vault = state.recordings.vault.clone();
        let id = row.id;
        tokio::task::spawn_blocking(move || vault.shred(id)).await??;
        let now = state.clock.now();
        let mut tx = state.audit.begin().await?;
        rows::set_shredded(tx.connection(), id, now).await?;
        tx.record(
            now,
            &Actor::System,
            Action::RecordingShredded,
            Some(row.consultation_id),
            json!({ "recording_id": id, "reason": "retention" }),
        )
        .await?;
        tx.commit().await?;
    }
    Ok(expired.len())
}

/// Run [`shred_expired`] now and then every `interval`, until the process ends.
pub fn spawn_retention_job(state: AppState, interval: std::time::Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            match shred_expired(&state).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(shredded = n, "retention: shredded recordings");
                    // Their keys leave the backups at the next backup: now.
                    state.backup_soon.notify_one();
                }
                Err(e) => tracing::error!(error = format!("{e:#}"), "retention job failed"),
            }
            match crate::certificates::apply_retention(&state).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(destroyed = n, "retention: destroyed certificates"),
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "certificate retention job failed")
                }
            }
        }
    });
}
