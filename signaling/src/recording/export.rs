//! Opening a recording into a playable file, for the HTTP download and `consult recording
//! export`. The caller has already checked the policy and audits the outcome.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};

use consult_e2ee::format::ProtectedFrame;
use consult_e2ee::recording_key::{EpochKeyBinding, RecordingKeyPair};
use consult_e2ee::sframe::{ReceiverKey, Suite};
use consult_e2ee::MediaFormat;
use consult_vault::chunks::ChunkReader;
use consult_vault::matroska::{self, Container, ExportSummary, MuxPlan};
use consult_vault::recording::{Codec, EpochKey, Frame, FramesInTimeOrder, RecordingIndex, Track};
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

/// An export checked and planned, ready to stream: [`prepare`] read the recording's index and
/// scanned its frames once, so every refusal (shredded, empty, a key that opens nothing, a
/// damaged chunk) comes before the first byte of the file, and [`PreparedExport::write`] reads
/// the frames a second time into the file. Memory holds one chunk and a few seconds of frames
/// at a time, whatever the recording's length: nothing of the recording is kept between the
/// passes but its tracks, its senders' keys and the plan.
pub struct PreparedExport {
    id: Uuid,
    /// The tracks as recorded (which were protected, whose).
    recorded: BTreeMap<u8, Track>,
    keys: Option<SenderKeys>,
    plan: MuxPlan,
    late: u64,
    unopened: Vec<Unopened>,
}

impl std::fmt::Debug for PreparedExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedExport")
            .field("id", &self.id)
            .field("summary", &self.summary())
            .field("unopened", &self.unopened)
            .finish_non_exhaustive()
    }
}

/// Check and plan the export of `row`'s recording (see [`PreparedExport`]). A recording that
/// says it was cut short (failed, interrupted) exports up to its last sealed chunk; any other
/// must be whole.
///
/// A zero-knowledge recording is opened with `clinician_key`. Each sender's frames open only
/// with the keys that sender wrapped (the recorder stores who sent each key), so a participant
/// who sends bogus keys or unopenable frames loses their own frames from the export, named in
/// [`Exported::unopened`], and nobody else's. A key that opens nothing at all is
/// [`ExportError::DoesNotOpen`].
pub fn prepare(
    vault: &Vault,
    row: &RecordingRow,
    clinician_key: Option<&RecordingKeyPair>,
) -> Result<PreparedExport, ExportError> {
    let id = row.id;
    match row.state {
        RecordingStatus::Shredded => return Err(ExportError::Shredded(id)),
        RecordingStatus::Recording => return Err(ExportError::StillRecording(id)),
        _ => {}
    }
    if row.zero_knowledge && clinician_key.is_none() {
        return Err(ExportError::NeedsClinicianKey(id));
    }
    let index = RecordingIndex::read(open(vault, id)?, row.state.may_be_unfinished())
        .map_err(|source| ExportError::Vault { id, source })?;
    if index.frames() == 0 {
        return Err(ExportError::Empty(id));
    }
    let fail = |why: String| ExportError::DoesNotOpen { id, why };
    let keys = match clinician_key {
        None => None,
        Some(key) => {
            let keys = SenderKeys::unwrap(id, &index.epoch_keys, key);
            let protected_frames: u64 = index
                .tracks
                .values()
                .filter(|t| t.protected)
                .filter_map(|t| index.frames_per_track.get(&t.id))
                .sum();
            if keys.is_empty() && protected_frames > 0 {
                return Err(fail(keys.first_error.clone().unwrap_or_else(|| {
                    "the recording holds no wrapped key".to_owned()
                })));
            }
            Some(keys)
        }
    };
    let opened = index
        .tracks
        .iter()
        .map(|(n, t)| {
            let protected = t.protected && keys.is_none();
            (
                *n,
                Track {
                    protected,
                    ..t.clone()
                },
            )
        })
        .collect();
    let mut opener = Opener::new(keys.as_ref(), &index.tracks);
    let mut ordered = FramesInTimeOrder::new(open(vault, id)?);
    let plan = MuxPlan::scan(&opened, opener.frames(&mut ordered))
        .map_err(|source| ExportError::Vault { id, source })?;
    if let Some(keys) = keys.as_ref().filter(|_| opener.kept == 0) {
        let why = keys.first_error.clone();
        return Err(fail(
            why.unwrap_or_else(|| "no frame opens with its sender's keys".into()),
        ));
    }
    let unopened = opener.unopened();
    Ok(PreparedExport {
        id,
        recorded: index.tracks,
        keys,
        plan,
        late: ordered.late(),
        unopened,
    })
}

impl PreparedExport {
    /// What the file will hold.
    pub fn summary(&self) -> ExportSummary {
        let mut summary = self.plan.summary();
        summary.skipped_frames += usize::try_from(self.late).unwrap_or(usize::MAX);
        summary
    }

    /// The container the file will be.
    pub fn container(&self) -> Container {
        self.plan.container()
    }

    /// Senders whose frames did not all open (see [`Exported::unopened`]).
    pub fn unopened(&self) -> &[Unopened] {
        &self.unopened
    }

    /// Stream the file into `out`, reading the recording a second time.
    pub fn write<W: Write>(&self, vault: &Vault, out: W) -> Result<Exported, ExportError> {
        let id = self.id;
        let mut opener = Opener::new(self.keys.as_ref(), &self.recorded);
        let mut ordered = FramesInTimeOrder::new(open(vault, id)?);
        matroska::write(&self.plan, opener.frames(&mut ordered), out)
            .map_err(|source| ExportError::Vault { id, source })?;
        Ok(Exported {
            summary: self.summary(),
            unopened: self.unopened.clone(),
        })
    }
}

/// Check, plan and write `row`'s recording into `out` in one call ([`prepare`], then
/// [`PreparedExport::write`]).
pub fn export<W: Write>(
    vault: &Vault,
    row: &RecordingRow,
    clinician_key: Option<&RecordingKeyPair>,
    out: W,
) -> Result<Exported, ExportError> {
    prepare(vault, row, clinician_key)?.write(vault, out)
}

/// The recording's chunks, or why not.
fn open(vault: &Vault, id: Uuid) -> Result<ChunkReader<Box<dyn Read + Send>>, ExportError> {
    vault.open_recording(id).map_err(|e| match e {
        VaultError::Shredded { .. } => ExportError::Shredded(id),
        source => ExportError::Vault { id, source },
    })
}

/// Each sender's epoch keys of a zero-knowledge recording, unwrapped with the clinician's key.
struct SenderKeys {
    /// A sender's KIDs may repeat across its connections (a reloaded page draws a new tag that
    /// can collide): every key of a (sender, KID) is kept, and the one that opens a frame used.
    keys: HashMap<(Uuid, u64), Vec<ReceiverKey>>,
    /// Per sender, the first reason one of their keys did not unwrap.
    key_errors: HashMap<Uuid, String>,
    first_error: Option<String>,
}

impl SenderKeys {
    fn unwrap(id: Uuid, epoch_keys: &[EpochKey], clinician_key: &RecordingKeyPair) -> Self {
        let mut keys: HashMap<(Uuid, u64), Vec<ReceiverKey>> = HashMap::new();
        let mut key_errors = HashMap::new();
        let mut first_error = None;
        for epoch in epoch_keys {
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
                    key_errors
                        .entry(epoch.sender)
                        .or_insert_with(|| why.clone());
                    first_error.get_or_insert(why);
                }
            }
        }
        Self {
            keys,
            key_errors,
            first_error,
        }
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Open one protected frame of `sender` with the keys they wrapped for its KID.
    fn open(&self, format: MediaFormat, data: &[u8], sender: Uuid) -> Result<Vec<u8>, String> {
        let protected = ProtectedFrame::parse(format, data)
            .map_err(|e| format!("a frame is not an SFrame frame: {e}"))?;
        let kid = protected.kid();
        let candidates = self
            .keys
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
}

/// One pass of opening a zero-knowledge recording's frames, in time order: protected frames
/// open with their sender's keys; what does not open is left out and counted per sender; video
/// after a frame that did not open is left out until the next keyframe that does (it could
/// not be decoded). Without keys, frames pass as they are.
struct Opener<'a> {
    keys: Option<&'a SenderKeys>,
    tracks: &'a BTreeMap<u8, Track>,
    broken_video: HashMap<u8, bool>,
    /// Per sender: frames sent, frames left out, the first reason.
    problems: HashMap<Uuid, (u64, u64, Option<String>)>,
    /// Frames passed on, of every track.
    kept: u64,
}

impl<'a> Opener<'a> {
    fn new(keys: Option<&'a SenderKeys>, tracks: &'a BTreeMap<u8, Track>) -> Self {
        Self {
            keys,
            tracks,
            broken_video: HashMap::new(),
            problems: HashMap::new(),
            kept: 0,
        }
    }

    /// `ordered`'s frames, opened.
    fn frames<'s, R: Read>(
        &'s mut self,
        ordered: &'s mut FramesInTimeOrder<R>,
    ) -> impl Iterator<Item = Result<Frame, VaultError>> + 's {
        ordered.filter_map(move |frame| match frame {
            Ok(frame) => self.open(frame).map(Ok),
            Err(e) => Some(Err(e)),
        })
    }

    fn open(&mut self, mut frame: Frame) -> Option<Frame> {
        let (Some(keys), Some(track)) = (
            self.keys,
            self.tracks.get(&frame.track).filter(|t| t.protected),
        ) else {
            self.kept += 1;
            return Some(frame);
        };
        let format = match track.codec {
            Codec::Opus => MediaFormat::Opus,
            Codec::Vp8 => MediaFormat::Vp8,
            Codec::H264 => MediaFormat::H264,
        };
        let entry = self.problems.entry(track.participant).or_default();
        entry.0 += 1;
        let broken = self.broken_video.entry(frame.track).or_insert(false);
        match keys.open(format, &frame.data, track.participant) {
            Ok(plain) if !*broken || frame.keyframe || !track.codec.is_video() => {
                *broken = false;
                frame.data = plain;
                self.kept += 1;
                Some(frame)
            }
            Ok(_) => {
                entry.1 += 1;
                entry.2.get_or_insert_with(|| {
                    "video after a frame that did not open, until the next keyframe".into()
                });
                None
            }
            Err(why) => {
                entry.1 += 1;
                let why = keys
                    .key_errors
                    .get(&track.participant)
                    .cloned()
                    .unwrap_or(why);
                entry.2.get_or_insert(why);
                *broken = track.codec.is_video();
                None
            }
        }
    }

    /// Senders with frames left out, in participant order.
    fn unopened(&self) -> Vec<Unopened> {
        let mut unopened: Vec<Unopened> = self
            .problems
            .iter()
            .filter(|(_, (_, left_out, _))| *left_out > 0)
            .map(|(participant, (of, frames, why))| Unopened {
                participant: *participant,
                frames: *frames,
                of: *of,
                why: why.clone().unwrap_or_default(),
            })
            .collect();
        unopened.sort_by_key(|u| u.participant);
        unopened
    }
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
        damaged: Option<(u8, u64)>,
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
                let mut data = protect(MediaFormat::Vp8, &s.key, i, &plain).unwrap();
                if damaged == Some((s.track, i)) {
                    *data.last_mut().unwrap() ^= 1;
                }
                batch.push(&Record::Frame(Frame {
                    track: s.track,
                    at_us: i * 33_000,
                    keyframe: key,
                    data,
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
        let (_dir, vault, row, _) = recording(honest(&clinician), None);
        let (exported, bytes) = export_to_vec(&vault, &row, &clinician).unwrap();
        assert_eq!(exported.summary.frames, 60);
        assert_eq!(exported.unopened, vec![]);
        assert!(contains(&bytes, b"sender 0 frame 29") && contains(&bytes, b"sender 1 frame 29"));
    }

    #[test]
    fn a_senders_bogus_key_costs_only_their_own_frames_and_names_them() {
        let clinician = RecordingKeyPair::generate(&mut rand::rngs::OsRng);
        let good = honest(&clinician);
        let (_dir, vault, row, participants) = recording(
            |n, binding, base| {
                if n == 1 {
                    vec![0x42; 80]
                } else {
                    good(n, binding, base)
                }
            },
            None,
        );
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
        let (_dir, vault, row, participants) = recording(
            |n, binding, base| {
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
            },
            None,
        );
        let (exported, _) = export_to_vec(&vault, &row, &clinician).unwrap();
        assert_eq!(exported.summary.frames, 30);
        assert_eq!(exported.unopened.len(), 1);
        assert_eq!(exported.unopened[0].participant, participants[1]);
    }

    #[test]
    fn video_after_an_unopenable_frame_resumes_at_the_next_keyframe() {
        let clinician = RecordingKeyPair::generate(&mut rand::rngs::OsRng);
        // Sender 1's frame 12 (an interframe) is damaged: frames 12 to 19 are left out, 20 (a
        // keyframe) opens again.
        let (_dir, vault, row, participants) = recording(honest(&clinician), Some((1, 12)));
        let (exported, bytes) = export_to_vec(&vault, &row, &clinician).unwrap();
        assert_eq!(exported.unopened.len(), 1);
        assert_eq!(
            (
                exported.unopened[0].participant,
                exported.unopened[0].frames
            ),
            (participants[1], 8)
        );
        assert_eq!(exported.summary.frames, 52);
        assert!(contains(&bytes, b"sender 1 frame 11") && contains(&bytes, b"sender 1 frame 20"));
        assert!(!contains(&bytes, b"sender 1 frame 12") && !contains(&bytes, b"sender 1 frame 19"));
    }

    #[test]
    fn a_key_that_opens_nothing_is_an_error_not_an_empty_file() {
        let clinician = RecordingKeyPair::generate(&mut rand::rngs::OsRng);
        let stranger = RecordingKeyPair::generate(&mut rand::rngs::OsRng);
        let (_dir, vault, row, _) = recording(honest(&clinician), None);
        let err = export_to_vec(&vault, &row, &stranger).unwrap_err();
        assert!(matches!(err, ExportError::DoesNotOpen { .. }), "{err}");
    }
}
