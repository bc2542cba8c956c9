//! Opening a recording into a playable file, for the HTTP download and `consult recording
//! export`. The caller has already checked the policy and audits the outcome.

use std::collections::HashMap;
use std::io::{Seek, Write};

use consult_e2ee::format::ProtectedFrame;
use consult_e2ee::recording_key::{EpochKeyBinding, RecordingKeyPair};
use consult_e2ee::sframe::{ReceiverKey, Suite};
use consult_e2ee::MediaFormat;
use consult_vault::matroska::{self, ExportSummary};
use consult_vault::recording::{Codec, RecordingContents};
use consult_vault::{Vault, VaultError};
use uuid::Uuid;

use super::rows::{RecordingRow, RecordingStatus};

/// Why an export could not be made. Each message names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Shredded: the key is gone.
    #[error("recording {0} was shredded: its key is destroyed and it can never be opened")]
    Shredded(uuid::Uuid),
    /// Still being written.
    #[error("recording {0} is still being recorded; export it when the consultation is over")]
    StillRecording(uuid::Uuid),
    /// End-to-end encrypted: needs the clinician's recording key.
    #[error("recording {0} is end-to-end encrypted: it needs the clinician's recording key")]
    NeedsClinicianKey(uuid::Uuid),
    /// Nothing to play.
    #[error("recording {0} holds no media")]
    Empty(uuid::Uuid),
    /// The clinician's key does not open the recording's wrapped keys or frames.
    #[error("recording {id} does not open with this recording key: {why}")]
    DoesNotOpen {
        /// The recording.
        id: uuid::Uuid,
        /// What did not open.
        why: String,
    },
    /// The vault refused (damaged, truncated, wrong key, ...).
    #[error("recording {id} cannot be opened: {source}")]
    Vault {
        /// The recording.
        id: uuid::Uuid,
        /// What the vault found.
        #[source]
        source: VaultError,
    },
}

/// Read, check and mux `row`'s recording into `out`. A recording that says it was cut short
/// (failed, interrupted) exports up to its last sealed chunk; any other must be whole.
pub fn export<W: Write + Seek>(
    vault: &Vault,
    row: &RecordingRow,
    clinician_key: Option<&RecordingKeyPair>,
    out: W,
) -> Result<ExportSummary, ExportError> {
    let id = row.id;
    let vault_error = |source| ExportError::Vault { id, source };
    match row.state {
        RecordingStatus::Shredded => return Err(ExportError::Shredded(id)),
        RecordingStatus::Recording => return Err(ExportError::StillRecording(id)),
        _ => {}
    }
    if row.zero_knowledge && clinician_key.is_none() {
        return Err(ExportError::NeedsClinicianKey(id));
    }
    let reader = vault.open_recording(id).map_err(|e| match e {
        VaultError::Shredded { .. } => ExportError::Shredded(id),
        other => vault_error(other),
    })?;
    let mut contents =
        RecordingContents::read(reader, row.state.may_be_unfinished()).map_err(vault_error)?;
    if contents.frames.is_empty() {
        return Err(ExportError::Empty(id));
    }
    if let Some(key) = clinician_key {
        open_frames(id, &mut contents, key)?;
    }
    matroska::export(&contents, out).map_err(vault_error)
}

/// Zero-knowledge: unwrap every epoch key with the clinician's key, then open every protected
/// frame (SFrame, in the call's frame formats). A frame that does not open is an error: never a
/// partial file.
fn open_frames(
    id: Uuid,
    contents: &mut RecordingContents,
    clinician_key: &RecordingKeyPair,
) -> Result<(), ExportError> {
    let fail = |why: String| ExportError::DoesNotOpen { id, why };
    // A sender's KIDs may repeat across its connections (a reloaded page draws a new tag that
    // can collide): keep every key of a (sender, KID) and use the one that opens the frame.
    let mut keys: HashMap<(Uuid, u64), Vec<ReceiverKey>> = HashMap::new();
    for epoch in &contents.epoch_keys {
        let suite = Suite::from_id(epoch.suite)
            .ok_or_else(|| fail(format!("unknown SFrame suite {}", epoch.suite)))?;
        let binding = EpochKeyBinding {
            recording: *id.as_bytes(),
            sender: *epoch.sender.as_bytes(),
            kid: epoch.kid,
            suite,
        };
        let base = clinician_key
            .unwrap_epoch_key(&binding, &epoch.wrapped)
            .map_err(|e| fail(format!("the wrapped key for KID {:#x}: {e}", epoch.kid)))?;
        let receiver = ReceiverKey::new(suite, epoch.kid, &base)
            .map_err(|e| fail(format!("KID {:#x}: {e}", epoch.kid)))?;
        keys.entry((epoch.sender, epoch.kid))
            .or_default()
            .push(receiver);
    }
    let tracks = contents.tracks.clone();
    for (n, frame) in contents.frames.iter_mut().enumerate() {
        let Some(track) = tracks.get(&frame.track).filter(|t| t.protected) else {
            continue;
        };
        let format = match track.codec {
            Codec::Opus => MediaFormat::Opus,
            Codec::Vp8 => MediaFormat::Vp8,
            Codec::H264 => MediaFormat::H264,
        };
        let protected = ProtectedFrame::parse(format, &frame.data)
            .map_err(|e| fail(format!("frame {n} is not an SFrame frame: {e}")))?;
        let kid = protected.kid();
        let candidates = keys
            .get(&(track.participant, kid))
            .ok_or_else(|| fail(format!("no wrapped key for KID {kid:#x} (frame {n})")))?;
        let mut last_error = None;
        let opened = candidates.iter().find_map(|key| match protected.open(key) {
            Ok(plain) => Some(plain),
            Err(e) => {
                last_error = Some(e);
                None
            }
        });
        frame.data = opened.ok_or_else(|| {
            let why = last_error.map(|e| e.to_string()).unwrap_or_default();
            fail(format!("frame {n} (KID {kid:#x}): {why}"))
        })?;
    }
    for track in contents.tracks.values_mut() {
        track.protected = false;
    }
    Ok(())
}
