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

/// A participant whose protected frames could not all be opened: their frames that did not
/// open (and, on video, the frames after them until the next keyframe that did) are left out of
/// the export; everyone else's are whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unopened {
    /// The participant who sent them.
    pub participant: Uuid,
    /// Frames left out.
    pub frames: u64,
    /// Of how many they sent.
    pub of: u64,
    /// Why, in words (the first reason seen).
    pub why: String,
}

impl std::fmt::Display for Unopened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "participant {}: {} of {} frames could not be opened ({})",
            self.participant, self.frames, self.of, self.why
        )
    }
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The file's tracks, frames and length.
    pub summary: ExportSummary,
    /// Senders of a zero-knowledge recording whose frames did not all open (empty otherwise).
    pub unopened: Vec<Unopened>,
}

/// Read, check and mux `row`'s recording into `out`. A recording that says it was cut short
/// (failed, interrupted) exports up to its last sealed chunk; any other must be whole.
///
/// A zero-knowledge recording is opened with `clinician_key`. Each sender's frames open only
/// with the keys that sender wrapped (the recorder stores who sent each key), so a participant
/// who sends bogus keys or unopenable frames loses their own frames from the export, named in
/// [`Exported::unopened`], and nobody else's. A key that opens nothing at all is
/// [`ExportError::DoesNotOpen`].
pub fn export<W: Write + Seek>(
    vault: &Vault,
    row: &RecordingRow,
    clinician_key: Option<&RecordingKeyPair>,
    out: W,
) -> Result<Exported, ExportError> {
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
    let unopened = match clinician_key {
        Some(key) => open_frames(id, &mut contents, key)?,
        None => Vec::new(),
    };
    let summary = matroska::export(&contents, out).map_err(vault_error)?;
    Ok(Exported { summary, unopened })
}

/// Zero-knowledge: unwrap each sender's epoch keys with the clinician's key, then open each
/// protected frame (SFrame, in the call's frame formats) with its sender's keys. What does not
/// open is left out and reported per sender.
fn open_frames(
    id: Uuid,
    contents: &mut RecordingContents,
    clinician_key: &RecordingKeyPair,
) -> Result<Vec<Unopened>, ExportError> {
    let fail = |why: String| ExportError::DoesNotOpen { id, why };
    // A sender's KIDs may repeat across its connections (a reloaded page draws a new tag that
    // can collide): keep every key of a (sender, KID) and use the one that opens the frame.
    let mut keys: HashMap<(Uuid, u64), Vec<ReceiverKey>> = HashMap::new();
    // Per sender: frames sent, frames left out, the first reason.
    let mut problems: HashMap<Uuid, (u64, u64, Option<String>)> = HashMap::new();
    let mut first_key_error = None;
    for epoch in &contents.epoch_keys {
        let unwrapped = Suite::from_id(epoch.suite)
            .ok_or_else(|| format!("unknown SFrame suite {}", epoch.suite))
            .and_then(|suite| {
                let binding = EpochKeyBinding {
                    recording: *id.as_bytes(),
                    sender: *epoch.sender.as_bytes(),
                    kid: epoch.kid,
                    suite,
                };
                let base = clinician_key
                    .unwrap_epoch_key(&binding, &epoch.wrapped)
                    .map_err(|e| {
                        format!(
                            "its wrapped key for KID {:#x} does not open: {e}",
                            epoch.kid
                        )
                    })?;
                ReceiverKey::new(suite, epoch.kid, &base)
                    .map_err(|e| format!("its key for KID {:#x}: {e}", epoch.kid))
            });
        match unwrapped {
            Ok(receiver) => keys
                .entry((epoch.sender, epoch.kid))
                .or_default()
                .push(receiver),
            Err(why) => {
                let entry = problems.entry(epoch.sender).or_default();
                entry.2.get_or_insert_with(|| why.clone());
                first_key_error.get_or_insert(why);
            }
        }
    }
    let tracks = contents.tracks.clone();
    let protected_frames = contents
        .frames
        .iter()
        .filter(|f| tracks.get(&f.track).is_some_and(|t| t.protected))
        .count();
    if keys.is_empty() && protected_frames > 0 {
        return Err(fail(first_key_error.unwrap_or_else(|| {
            "the recording holds no wrapped key".to_owned()
        })));
    }
    // Video after a frame that did not open cannot be decoded until the next keyframe.
    let mut broken_video: HashMap<u8, bool> = HashMap::new();
    let mut keep = Vec::with_capacity(contents.frames.len());
    for frame in contents.frames.iter_mut() {
        let Some(track) = tracks.get(&frame.track).filter(|t| t.protected) else {
            keep.push(true);
            continue;
        };
        let format = match track.codec {
            Codec::Opus => MediaFormat::Opus,
            Codec::Vp8 => MediaFormat::Vp8,
            Codec::H264 => MediaFormat::H264,
        };
        let entry = problems.entry(track.participant).or_default();
        entry.0 += 1;
        let opened = open_one(format, &frame.data, &keys, track.participant);
        let broken = broken_video.entry(frame.track).or_insert(false);
        match opened {
            Ok(plain) if !*broken || frame.keyframe || !track.codec.is_video() => {
                *broken = false;
                frame.data = plain;
                keep.push(true);
            }
            Ok(_) => {
                entry.1 += 1;
                entry.2.get_or_insert_with(|| {
                    "video after a frame that did not open, until the next keyframe".into()
                });
                keep.push(false);
            }
            Err(why) => {
                entry.1 += 1;
                entry.2.get_or_insert(why);
                *broken = track.codec.is_video();
                keep.push(false);
            }
        }
    }
    let mut kept = keep.into_iter();
    contents.frames.retain(|_| kept.next().unwrap_or(false));
    for track in contents.tracks.values_mut() {
        track.protected = false;
    }
    if contents.frames.is_empty() {
        return Err(fail(
            first_key_error.unwrap_or_else(|| "no frame opens with its sender's keys".into()),
        ));
    }
    let mut unopened: Vec<Unopened> = problems
        .into_iter()
        .filter(|(_, (_, left_out, _))| *left_out > 0)
        .map(|(participant, (of, frames, why))| Unopened {
            participant,
            frames,
            of,
            why: why.unwrap_or_default(),
        })
        .collect();
    unopened.sort_by_key(|u| u.participant);
    Ok(unopened)
}

/// Open one protected frame of `sender` with the keys they wrapped for its KID.
fn open_one(
    format: MediaFormat,
    data: &[u8],
    keys: &HashMap<(Uuid, u64), Vec<ReceiverKey>>,
    sender: Uuid,
) -> Result<Vec<u8>, String> {
    let protected = ProtectedFrame::parse(format, data)
        .map_err(|e| format!("a frame is not an SFrame frame: {e}"))?;
    let kid = protected.kid();
    let candidates = keys
        .get(&(sender, kid))
        .ok_or_else(|| format!("no key of theirs for KID {kid:#x}"))?;
    let mut last_error = String::new();
    for key in candidates {
        match protected.open(key) {
            Ok(plain) => return Ok(plain),
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(format!(
        "a frame under KID {kid:#x} does not open: {last_error}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use consult_e2ee::format::protect;
    use consult_e2ee::sframe::{BaseKey, SenderKey};
    use consult_vault::recording::{EpochKey, Frame, Record, RecordBatch, Track, TrackRole};

    /// A VP8 keyframe (64x48) with `marker` after its header; an interframe when `key` is false.
    fn vp8(key: bool, marker: &[u8]) -> Vec<u8> {
        let mut frame = if key {
            vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 64, 0, 48, 0]
        } else {
            vec![0x11, 0x02, 0x00]
        };
        frame.extend_from_slice(marker);
        frame
    }

    struct Sender {
        participant: Uuid,
        track: u8,
        key: SenderKey,
        kid: u64,
    }

    /// A zero-knowledge recording of two senders, 30 video frames each (a keyframe every 10),
    /// with each sender's epoch key wrapped by `wrap(sender index, binding, base key)`.
    fn recording(
        wrap: impl Fn(usize, &EpochKeyBinding, &BaseKey) -> Vec<u8>,
    ) -> (tempfile::TempDir, Vault, RecordingRow, Vec<Uuid>) {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(dir.path()).unwrap();
        let id = Uuid::new_v4();
        let mut writer = vault.create_recording(id).unwrap();
        let mut batch = RecordBatch::default();
        let senders: Vec<Sender> = (0..2u8)
            .map(|n| {
                let kid = 0x100 + u64::from(n);
                let base = BaseKey::new(vec![0x30 + n; 16]);
                Sender {
                    participant: Uuid::new_v4(),
                    track: n,
                    key: SenderKey::new(Suite::Aes128Gcm, kid, &base).unwrap(),
                    kid,
                }
            })
            .collect();
        for (n, s) in senders.iter().enumerate() {
            batch.push(&Record::Track(Track {
                id: s.track,
                codec: Codec::Vp8,
                role: if n == 0 {
                    TrackRole::Doctor
                } else {
                    TrackRole::Patient
                },
                participant: s.participant,
                protected: true,
            }));
            let binding = EpochKeyBinding {
                recording: *id.as_bytes(),
                sender: *s.participant.as_bytes(),
                kid: s.kid,
                suite: Suite::Aes128Gcm,
            };
            let base = BaseKey::new(vec![0x30 + n as u8; 16]);
            batch.push(&Record::EpochKey(EpochKey {
                sender: s.participant,
                kid: s.kid,
                suite: Suite::Aes128Gcm.id(),
                wrapped: wrap(n, &binding, &base),
            }));
        }
        for i in 0..30u64 {
            for s in &senders {
                let key = i % 10 == 0;
                let plain = vp8(key, format!("sender {} frame {i}", s.track).as_bytes());
                batch.push(&Record::Frame(Frame {
                    track: s.track,
                    at_us: i * 33_000,
                    keyframe: key,
                    data: protect(MediaFormat::Vp8, &s.key, i, &plain).unwrap(),
                }));
            }
        }
        writer.append(&batch.take()).unwrap();
        writer.finish(&[]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let row = RecordingRow {
            id,
            consultation_id: Uuid::new_v4(),
            state: RecordingStatus::Complete,
            zero_knowledge: true,
            started_at: now,
            ended_at: Some(now),
            retain_until: now,
            chunks: 2,
            bytes: 0,
            note: None,
        };
        let participants = senders.iter().map(|s| s.participant).collect();
        (dir, vault, row, participants)
    }

    fn honest(
        clinician: &RecordingKeyPair,
    ) -> impl Fn(usize, &EpochKeyBinding, &BaseKey) -> Vec<u8> + '_ {
        move |_, binding, base| {
            binding
                .wrap(&clinician.public(), base, &mut rand::rngs::OsRng)
                .unwrap()
        }
    }

    fn export_to_vec(
        vault: &Vault,
        row: &RecordingRow,
        key: &RecordingKeyPair,
    ) -> Result<(Exported, Vec<u8>), ExportError> {
        let mut out = std::io::Cursor::new(Vec::new());
        export(vault, row, Some(key), &mut out).map(|e| (e, out.into_inner()))
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn every_honest_sender_opens_whole() {
        let clinician = RecordingKeyPair::generate(&mut rand::rngs::OsRng);
        let (_dir, vault, row, _) = recording(honest(&clinician));
        let (exported, bytes) = export_to_vec(&vault, &row, &clinician).unwrap();
        assert_eq!(exported.summary.frames, 60);
        assert_eq!(exported.unopened, vec![]);
        assert!(contains(&bytes, b"sender 0 frame 29") && contains(&bytes, b"sender 1 frame 29"));
    }

    #[test]
    fn a_senders_bogus_key_costs_only_their_own_frames_and_names_them() {
        let clinician = RecordingKeyPair::generate(&mut rand::rngs::OsRng);
        let good = honest(&clinician);
        let (_dir, vault, row, participants) = recording(|n, binding, base| {
            if n == 1 {
                vec![0x42; 80]
            } else {
                good(n, binding, base)
            }
        });
        let (exported, bytes) = export_to_vec(&vault, &row, &clinician).unwrap();
        assert_eq!(exported.summary.frames, 30, "the honest sender's 30 frames");
        assert!(contains(&bytes, b"sender 0 frame 29"));
        assert!(!contains(&bytes, b"sender 1 frame"));
        assert_eq!(exported.unopened.len(), 1);
        let named = &exported.unopened[0];
        assert_eq!(
            (named.participant, named.frames, named.of),
            (participants[1], 30, 30)
        );
        assert!(named.why.contains("does not open"), "{}", named.why);
        assert!(named.to_string().contains(&participants[1].to_string()));
    }

    #[test]
    fn a_key_wrapped_for_another_sender_opens_nothing_of_theirs() {
        // Sender 1 wraps sender 0's key under its own name, hoping to pass frames as theirs:
        // the binding names the sender, so it opens only frames on sender 1's own tracks.
        let clinician = RecordingKeyPair::generate(&mut rand::rngs::OsRng);
        let good = honest(&clinician);
        let (_dir, vault, row, participants) = recording(|n, binding, base| {
            if n == 1 {
                // Sender 0's base key, wrapped under sender 1's name for sender 0's KID.
                let forged = EpochKeyBinding {
                    kid: 0x100,
                    ..*binding
                };
                let base0 = BaseKey::new(vec![0x30; 16]);
                forged
                    .wrap(&clinician.public(), &base0, &mut rand::rngs::OsRng)
                    .unwrap()
            } else {
                good(n, binding, base)
            }
        });
        let (exported, _) = export_to_vec(&vault, &row, &clinician).unwrap();
        assert_eq!(exported.summary.frames, 30);
        assert_eq!(exported.unopened.len(), 1);
        assert_eq!(exported.unopened[0].participant, participants[1]);
    }

    #[test]
    fn video_after_an_unopenable_frame_resumes_at_the_next_keyframe() {
        let clinician = RecordingKeyPair::generate(&mut rand::rngs::OsRng);
        let (_dir, vault, row, participants) = recording(honest(&clinician));
        // Damage sender 1's frame 12 (an interframe) in a copy of the contents: frames 12 to
        // 19 are left out, 20 (a keyframe) opens again.
        let reader = vault.open_recording(row.id).unwrap();
        let mut contents = RecordingContents::read(reader, false).unwrap();
        let damaged = contents
            .frames
            .iter()
            .position(|f| f.track == 1 && f.at_us == 12 * 33_000)
            .unwrap();
        let last = contents.frames[damaged].data.len() - 1;
        contents.frames[damaged].data[last] ^= 1;
        let unopened = open_frames(row.id, &mut contents, &clinician).unwrap();
        assert_eq!(unopened.len(), 1);
        assert_eq!(
            (unopened[0].participant, unopened[0].frames),
            (participants[1], 8)
        );
        assert_eq!(contents.frames.len(), 52);
        assert!(contents
            .frames
            .iter()
            .any(|f| f.track == 1 && f.at_us == 20 * 33_000));
    }

    #[test]
    fn a_key_that_opens_nothing_is_an_error_not_an_empty_file() {
        let clinician = RecordingKeyPair::generate(&mut rand::rngs::OsRng);
        let stranger = RecordingKeyPair::generate(&mut rand::rngs::OsRng);
        let (_dir, vault, row, _) = recording(honest(&clinician));
        let err = export_to_vec(&vault, &row, &stranger).unwrap_err();
        assert!(matches!(err, ExportError::DoesNotOpen { .. }), "{err}");
    }
}
