//! Opening a recording into a playable file, for the HTTP download and `consult recording
//! export`. The caller has already checked the policy and audits the outcome.

use std::io::{Seek, Write};

use consult_vault::matroska::{self, ExportSummary};
use consult_vault::recording::RecordingContents;
use consult_vault::{Vault, VaultError};

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
    out: W,
) -> Result<ExportSummary, ExportError> {
    let id = row.id;
    let vault_error = |source| ExportError::Vault { id, source };
    match row.state {
        RecordingStatus::Shredded => return Err(ExportError::Shredded(id)),
        RecordingStatus::Recording => return Err(ExportError::StillRecording(id)),
        _ => {}
    }
    if row.zero_knowledge {
        return Err(ExportError::NeedsClinicianKey(id));
    }
    let reader = vault.open_recording(id).map_err(|e| match e {
        VaultError::Shredded { .. } => ExportError::Shredded(id),
        other => vault_error(other),
    })?;
    let contents =
        RecordingContents::read(reader, row.state.may_be_unfinished()).map_err(vault_error)?;
    if contents.frames.is_empty() {
        return Err(ExportError::Empty(id));
    }
    matroska::export(&contents, out).map_err(vault_error)
}
