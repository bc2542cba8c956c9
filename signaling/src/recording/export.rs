//! Opening a recording into a playable file, for the HTTP download and `consult recording
//! export`. The caller has already checked the policy and audits the outcome.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};

use consult_e2ee::format::ProtectedFrame;
use consult_e2ee::recording_key::{EpochKeyBinding, RecordingKeyPair};
use consult_e2ee::sframe::{ReceiverKey, Suite};
use consult_e2ee::MediaFormat;
use consult_vault::chunks::ChunkReader;
use consult_vault::matroska::{self, Container, ExportSummary, MuxPlan};
use consult_vault::recording::{
    Codec, EpochKey, Frame, FramesInTimeOrder, RecordingIndex, Track, TrackRole,
};
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
    /// Its segments cannot be followed (see [`super::rows::BrokenChain`]).
    #[error("recording {id} is damaged: {why}")]
    BrokenChain {
        /// The recording.
        id: uuid::Uuid,
        /// What is wrong with the chain.
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
    /// The segments (recordings holding media) the file joins, first to last: more than one
    /// when the recording was interrupted and continued.
    pub segments: Vec<Uuid>,
}

/// One segment of an export: a recording's frames, opened with its own keys (a zero-knowledge
/// recording's keys are bound to its id), on the file's tracks and timeline.
struct Segment {
    id: Uuid,
    /// The tracks as recorded (which were protected, whose).
    recorded: BTreeMap<u8, Track>,
    keys: Option<SenderKeys>,
    /// Its track ids, to the file's: a sender's track of the same role and codec is one track of
    /// the file across segments.
    to_file: BTreeMap<u8, u8>,
    /// Where it starts on the file's timeline: microseconds after the first segment started.
    offset_us: u64,
}

/// An export checked and planned, ready to stream: [`prepare`] read the recording's index and
/// scanned its frames once, so every refusal (shredded, empty, a key that opens nothing, a
/// damaged chunk) comes before the first byte of the file, and [`PreparedExport::write`] reads
/// the frames a second time into the file. Memory holds one chunk and a few seconds of frames
/// at a time, whatever the recording's length: nothing of the recording is kept between the
/// passes but its tracks, its senders' keys and the plan.
///
/// A recording interrupted by the end of the node recording it and continued on another
/// (segments, see [`super::rows::RecordingRow::continues`]) is one file: each sender's tracks
/// go on across the segments, after the gap the failover left; each segment's video starts at
/// its first keyframe.
pub struct PreparedExport {
    id: Uuid,
    segments: Vec<Segment>,
    plan: MuxPlan,
    left_out: u64,
    unopened: Vec<Unopened>,
}

impl std::fmt::Debug for PreparedExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedExport")
            .field("id", &self.id)
            .field("segments", &self.segments.len())
            .field("summary", &self.summary())
            .field("unopened", &self.unopened)
            .finish_non_exhaustive()
    }
}

/// Check and plan the export of the recording `first`, continued by `continuations` (its later
/// segments, in order: [`super::rows::segments`]; empty for a recording never interrupted and
/// continued). A segment that says it was cut short (failed, interrupted) exports up to its
/// last sealed chunk; any other must be whole. Any segment shredded, or still being recorded,
/// refuses the whole export.
///
/// A zero-knowledge recording is opened with `clinician_key`. Each sender's frames open only
/// with the keys that sender wrapped (the recorder stores who sent each key), so a participant
/// who sends bogus keys or unopenable frames loses their own frames from the export, named in
/// [`Exported::unopened`], and nobody else's. A key that opens nothing at all is
/// [`ExportError::DoesNotOpen`].
pub fn prepare(
    vault: &Vault,
    first: &RecordingRow,
    continuations: &[RecordingRow],
    clinician_key: Option<&RecordingKeyPair>,
) -> Result<PreparedExport, ExportError> {
    let id = first.id;
    let rows = || std::iter::once(first).chain(continuations);
    for row in rows() {
        match row.state {
            RecordingStatus::Shredded => return Err(ExportError::Shredded(row.id)),
            RecordingStatus::Recording => return Err(ExportError::StillRecording(row.id)),
            _ => {}
        }
        if row.zero_knowledge != first.zero_knowledge {
            return Err(ExportError::Vault {
                id: row.id,
                source: VaultError::Malformed(format!(
                    "it continues recording {id}, which is of another kind (zero-knowledge or not)"
                )),
            });
        }
    }
    if first.zero_knowledge && clinician_key.is_none() {
        return Err(ExportError::NeedsClinicianKey(id));
    }
    let mut file_tracks: BTreeMap<u8, Track> = BTreeMap::new();
    let mut by_sender: HashMap<(Uuid, TrackRole, Codec, bool), u8> = HashMap::new();
    let mut segments = Vec::new();
    let (mut frames, mut protected_frames) = (0u64, 0u64);
    let (mut any_key, mut first_key_error) = (false, None::<String>);
    // The file time of the previous segment's last frame.
    let mut end_us: Option<u64> = None;
    for row in rows() {
        let index = RecordingIndex::read(open(vault, row.id)?, row.state.may_be_unfinished())
            .map_err(|source| ExportError::Vault { id: row.id, source })?;
        if index.frames() == 0 {
            continue;
        }
        frames += index.frames();
        // After the gap the interruption left (to the second: the rows' times), never before the
        // previous segment's last frame.
        let since_first = (row.started_at - first.started_at).whole_microseconds();
        let since_first = u64::try_from(since_first.max(0)).unwrap_or(u64::MAX);
        let offset_us = end_us.map_or(since_first, |end| since_first.max(end.saturating_add(1)));
        end_us = Some(offset_us.saturating_add(index.last_frame_us.unwrap_or(0)));
        let keys = clinician_key.map(|key| SenderKeys::unwrap(row.id, &index.epoch_keys, key));
        if let Some(keys) = &keys {
            protected_frames += index
                .tracks
                .values()
                .filter(|t| t.protected)
                .filter_map(|t| index.frames_per_track.get(&t.id))
                .sum::<u64>();
            any_key |= !keys.is_empty();
            if first_key_error.is_none() {
                first_key_error.clone_from(&keys.first_error);
            }
        }
        let mut to_file = BTreeMap::new();
        for (n, t) in &index.tracks {
            // One file track per sender, codec and source (a shared screen apart from the
            // camera), whichever segments it spans.
            let file_id = match by_sender.get(&(t.participant, t.role, t.codec, t.screen)) {
                Some(file_id) => *file_id,
                None => {
                    let file_id =
                        u8::try_from(file_tracks.len()).map_err(|_| ExportError::Vault {
                            id: row.id,
                            source: VaultError::Malformed(
                                "more than 256 tracks across segments".into(),
                            ),
                        })?;
                    let protected = t.protected && keys.is_none();
                    file_tracks.insert(
                        file_id,
                        Track {
                            id: file_id,
                            protected,
                            ..t.clone()
                        },
                    );
                    by_sender.insert((t.participant, t.role, t.codec, t.screen), file_id);
                    file_id
                }
            };
            to_file.insert(*n, file_id);
        }
        segments.push(Segment {
            id: row.id,
            recorded: index.tracks,
            keys,
            to_file,
            offset_us,
        });
    }
    if frames == 0 {
        return Err(ExportError::Empty(id));
    }
    let fail = |why: Option<String>, otherwise: &str| ExportError::DoesNotOpen {
        id,
        why: why.unwrap_or_else(|| otherwise.to_owned()),
    };
    if clinician_key.is_some() && !any_key && protected_frames > 0 {
        return Err(fail(first_key_error, "the recording holds no wrapped key"));
    }
    let mut opener = Opener::default();
    let mut chained = SegmentFrames::new(vault, &segments, &mut opener);
    let plan = MuxPlan::scan(&file_tracks, &mut chained).map_err(|source| ExportError::Vault {
        id: chained.failed_in.unwrap_or(id),
        source,
    })?;
    let left_out = chained.left_out;
    if clinician_key.is_some() && opener.kept == 0 {
        return Err(fail(
            first_key_error,
            "no frame opens with its sender's keys",
        ));
    }
    let unopened = opener.unopened();
    Ok(PreparedExport {
        id,
        segments,
        plan,
        left_out,
        unopened,
    })
}

impl PreparedExport {
    /// Name the file's tracks after the people who sent them (participant id → name); see
    /// [`participant_names`].
    pub fn with_names(mut self, names: &std::collections::HashMap<Uuid, String>) -> Self {
        self.plan.name_participants(names);
        self
    }

    /// What the file will hold.
    pub fn summary(&self) -> ExportSummary {
        let mut summary = self.plan.summary();
        summary.skipped_frames += usize::try_from(self.left_out).unwrap_or(usize::MAX);
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

    /// How many segments (recordings holding media) the file joins: more than one when a
    /// recording was interrupted and continued.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// The ids of the segments the file joins, first to last.
    pub fn segment_ids(&self) -> Vec<Uuid> {
        self.segments.iter().map(|s| s.id).collect()
    }

    /// Stream the file into `out`, reading the recording a second time.
    pub fn write<W: Write>(&self, vault: &Vault, out: W) -> Result<Exported, ExportError> {
        let mut opener = Opener::default();
        let mut chained = SegmentFrames::new(vault, &self.segments, &mut opener);
        matroska::write(&self.plan, &mut chained, out).map_err(|source| ExportError::Vault {
            id: chained.failed_in.unwrap_or(self.id),
            source,
        })?;
        Ok(Exported {
            summary: self.summary(),
            unopened: self.unopened.clone(),
            segments: self.segment_ids(),
        })
    }
}

/// Everyone who took part in a consultation, by participant id, with the name shown in the call
/// (the doctor's, each invite holder's, each colleague's): the names of a group recording's
/// tracks.
pub async fn participant_names(
    db: &crate::db::Db,
    consultation_id: Uuid,
) -> anyhow::Result<std::collections::HashMap<Uuid, String>> {
    let mut names = std::collections::HashMap::new();
    let rows = crate::db::query(
        "SELECT c.doctor_participant_id, u.display_name FROM consultations c
         JOIN users u ON u.id = c.doctor_id WHERE c.id = $1
         UNION ALL SELECT p.id, p.name FROM participants p WHERE p.consultation_id = $1
         UNION ALL SELECT cc.participant_id, u.display_name FROM consultation_clinicians cc
         JOIN users u ON u.id = cc.user_id WHERE cc.consultation_id = $1",
    )
    .bind(consultation_id.to_string())
    .fetch_all(db)
    .await?;
    for row in rows {
        let id: String = row.get(0);
        names.insert(Uuid::parse_str(&id)?, row.get::<String, _>(1));
    }
    Ok(names)
}

/// Check, plan and write the recording `first` (continued by `continuations`) into `out` in one
/// call ([`prepare`], then [`PreparedExport::write`]).
pub fn export<W: Write>(
    vault: &Vault,
    first: &RecordingRow,
    continuations: &[RecordingRow],
    clinician_key: Option<&RecordingKeyPair>,
    out: W,
) -> Result<Exported, ExportError> {
    prepare(vault, first, continuations, clinician_key)?.write(vault, out)
}

/// The recording's chunks, or why not.
fn open(vault: &Vault, id: Uuid) -> Result<ChunkReader<Box<dyn Read + Send>>, ExportError> {
    vault.open_recording(id).map_err(|e| match e {
        VaultError::Shredded { .. } => ExportError::Shredded(id),
        source => ExportError::Vault { id, source },
    })
}

/// The frames of every segment in turn, each in time order, opened, on the file's tracks and
/// timeline. A segment's video tracks start at their first keyframe (what came before it in
/// that segment could not be decoded after the previous segment's frames). One segment's
/// chunks are open at a time.
struct SegmentFrames<'a> {
    vault: &'a Vault,
    segments: &'a [Segment],
    opener: &'a mut Opener,
    current: Option<(&'a Segment, FramesInTimeOrder<Box<dyn Read + Send>>)>,
    next: usize,
    /// The file's video tracks waiting for a keyframe in the current segment.
    waiting: BTreeSet<u8>,
    /// Frames left out here: late for their segment's time order, or video before a keyframe.
    left_out: u64,
    /// The segment an error came from.
    failed_in: Option<Uuid>,
}

impl<'a> SegmentFrames<'a> {
    fn new(vault: &'a Vault, segments: &'a [Segment], opener: &'a mut Opener) -> Self {
        Self {
            vault,
            segments,
            opener,
            current: None,
            next: 0,
            waiting: BTreeSet::new(),
            left_out: 0,
            failed_in: None,
        }
    }
}

impl Iterator for SegmentFrames<'_> {
    type Item = Result<Frame, VaultError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                let segment = self.segments.get(self.next)?;
                self.next += 1;
                let reader = match self.vault.open_recording(segment.id) {
                    Ok(reader) => reader,
                    Err(e) => {
                        self.failed_in = Some(segment.id);
                        self.next = self.segments.len();
                        return Some(Err(e));
                    }
                };
                self.waiting = segment
                    .recorded
                    .values()
                    .filter(|t| t.codec.is_video())
                    .filter_map(|t| segment.to_file.get(&t.id).copied())
                    .collect();
                self.current = Some((segment, FramesInTimeOrder::new(reader)));
            }
            let (segment, frames) = self.current.as_mut()?;
            let segment: &Segment = segment;
            let frame = match frames.next() {
                None => {
                    self.left_out += frames.late();
                    self.current = None;
                    continue;
                }
                Some(Err(e)) => {
                    self.failed_in = Some(segment.id);
                    self.current = None;
                    self.next = self.segments.len();
                    return Some(Err(e));
                }
                Some(Ok(frame)) => frame,
            };
            let Some(&file_track) = segment.to_file.get(&frame.track) else {
                self.left_out += 1;
                continue;
            };
            if self.waiting.contains(&file_track) {
                if !frame.keyframe {
                    self.left_out += 1;
                    continue;
                }
                self.waiting.remove(&file_track);
            }
            let Some(mut frame) = self.opener.open(segment, frame) else {
                continue;
            };
            frame.track = file_track;
            frame.at_us = frame.at_us.saturating_add(segment.offset_us);
            return Some(Ok(frame));
        }
    }
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
/// open with their sender's keys (those of the frame's segment); what does not open is left out
/// and counted per sender; video after a frame that did not open is left out until the next
/// keyframe that does (it could not be decoded). Without keys, frames pass as they are.
#[derive(Default)]
struct Opener {
    /// Per (segment, recorded track): video waiting for a keyframe that opens.
    broken_video: HashMap<(Uuid, u8), bool>,
    /// Per sender: frames sent, frames left out, the first reason.
    problems: HashMap<Uuid, (u64, u64, Option<String>)>,
    /// Frames passed on, of every track.
    kept: u64,
}

impl Opener {
    fn open(&mut self, segment: &Segment, mut frame: Frame) -> Option<Frame> {
        let (Some(keys), Some(track)) = (
            segment.keys.as_ref(),
            segment.recorded.get(&frame.track).filter(|t| t.protected),
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
        let broken = self
            .broken_video
            .entry((segment.id, frame.track))
            .or_insert(false);
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
    use consult_vault::Vault;

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
                screen: false,
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
            continues: None,
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
        export(vault, row, &[], Some(key), &mut out).map(|e| (e, out.into_inner()))
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

    /// A plain recording segment of two senders (`participants`: the doctor, then the
    /// patient), their VP8 frames `0..frames` 33 ms apart with a keyframe every 10 from
    /// `first_key`, marked `segment {segment} sender {n} frame {i}`. `swap` declares the
    /// senders' tracks the other way round. An `Interrupted` one is left without its final
    /// chunk, as a node's death leaves it.
    #[allow(clippy::too_many_arguments)]
    fn plain_segment(
        vault: &Vault,
        participants: &[Uuid; 2],
        segment: u8,
        frames: u64,
        first_key: u64,
        swap: bool,
        state: RecordingStatus,
        started_at: time::OffsetDateTime,
        continues: Option<Uuid>,
    ) -> RecordingRow {
        let id = Uuid::new_v4();
        let mut writer = vault.create_recording(id).unwrap();
        let mut batch = RecordBatch::default();
        let track_of = |n: u8| if swap { 1 - n } else { n };
        for n in 0..2u8 {
            batch.push(&Record::Track(Track {
                id: track_of(n),
                codec: Codec::Vp8,
                role: if n == 0 {
                    TrackRole::Doctor
                } else {
                    TrackRole::Patient
                },
                participant: participants[usize::from(n)],
                protected: false,
                screen: false,
            }));
        }
        for i in 0..frames {
            for n in 0..2u8 {
                let key = i >= first_key && (i - first_key).is_multiple_of(10);
                batch.push(&Record::Frame(Frame {
                    track: track_of(n),
                    at_us: i * 33_000,
                    keyframe: key,
                    data: vp8(
                        key,
                        format!("segment {segment} sender {n} frame {i}.").as_bytes(),
                    ),
                }));
            }
        }
        writer.append(&batch.take()).unwrap();
        if state != RecordingStatus::Interrupted {
            writer.finish(&[]).unwrap();
        }
        RecordingRow {
            id,
            consultation_id: Uuid::nil(),
            state,
            zero_knowledge: false,
            started_at,
            ended_at: Some(started_at),
            retain_until: started_at,
            chunks: 1,
            bytes: 0,
            note: None,
            continues,
        }
    }

    fn two_segments(gap_s: i64) -> (tempfile::TempDir, Vault, RecordingRow, RecordingRow) {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(dir.path()).unwrap();
        let participants = [Uuid::new_v4(), Uuid::new_v4()];
        let start = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let first = plain_segment(
            &vault,
            &participants,
            1,
            30,
            0,
            false,
            RecordingStatus::Interrupted,
            start,
            None,
        );
        // The new recorder's first frames are interframes (it joined mid-stream); its tracks
        // are declared in another order.
        let second = plain_segment(
            &vault,
            &participants,
            2,
            30,
            2,
            true,
            RecordingStatus::Complete,
            start + time::Duration::seconds(gap_s),
            Some(first.id),
        );
        (dir, vault, first, second)
    }

    #[test]
    fn an_interrupted_recording_and_its_continuation_export_as_one_file() {
        let (_dir, vault, first, second) = two_segments(5);
        let mut out = Vec::new();
        let exported = export(
            &vault,
            &first,
            std::slice::from_ref(&second),
            None,
            &mut out,
        )
        .unwrap();
        assert_eq!(exported.segments, [first.id, second.id]);
        // One track per sender across both segments; the second segment's video starts at its
        // first keyframe (2 interframes each left out).
        assert_eq!(exported.summary.tracks, 2);
        assert_eq!(exported.summary.frames, 60 + 56);
        assert_eq!(exported.summary.skipped_frames, 4);
        // The second segment 5 s after the first began: its frame 29 ends 5 s + 30 frames in.
        assert_eq!(exported.summary.duration_ms, 5_000 + 29 * 33 + 33);
        for n in 0..2 {
            for marker in [
                format!("segment 1 sender {n} frame 0."),
                format!("segment 1 sender {n} frame 29."),
                format!("segment 2 sender {n} frame 2."),
                format!("segment 2 sender {n} frame 29."),
            ] {
                assert!(contains(&out, marker.as_bytes()), "{marker}");
            }
            let skipped = format!("segment 2 sender {n} frame 1.");
            assert!(!contains(&out, skipped.as_bytes()), "{skipped}");
        }
        // Each sender's frames stay on their own track although the second segment declared
        // the tracks the other way round: the file's block for "segment 2 sender 0" is on the
        // track of "segment 1 sender 0" (track numbers are the byte after the SimpleBlock size).
        let track_before = |marker: &str| {
            let at = out
                .windows(marker.len())
                .position(|w| w == marker.as_bytes())
                .unwrap();
            // block: track number (1 byte), timecode (2), flags (1), then the VP8 header.
            let header = if marker.ends_with("frame 0") || marker.ends_with(" 2") {
                10
            } else {
                3
            };
            out[at - header - 4]
        };
        assert_eq!(
            track_before("segment 1 sender 0 frame 0"),
            track_before("segment 2 sender 0 frame 2")
        );
        assert_eq!(
            track_before("segment 1 sender 1 frame 0"),
            track_before("segment 2 sender 1 frame 2")
        );
        assert_ne!(
            track_before("segment 1 sender 0 frame 0"),
            track_before("segment 1 sender 1 frame 0")
        );
        // The same recording from its first segment alone: what the first node sealed.
        let alone = export(&vault, &first, &[], None, std::io::sink()).unwrap();
        assert_eq!((alone.segments, alone.summary.frames), (vec![first.id], 60));
    }

    #[test]
    fn a_continuation_that_starts_in_the_same_second_goes_after_the_first_segment() {
        // The rows' times are whole seconds: the second segment may seem to start before the
        // first one's last frame. It goes after it, and no frame is dropped as out of order.
        let (_dir, vault, first, second) = two_segments(0);
        let exported = export(&vault, &first, &[second], None, std::io::sink()).unwrap();
        assert_eq!(exported.summary.frames, 60 + 56);
        assert_eq!(exported.summary.skipped_frames, 4);
        // Its frame 0 just after the first segment's frame 29.
        assert_eq!(exported.summary.duration_ms, 29 * 33 + 29 * 33 + 33);
    }

    #[test]
    fn a_segment_still_recording_or_shredded_refuses_the_whole_export() {
        let (_dir, vault, first, second) = two_segments(5);
        let recording = RecordingRow {
            state: RecordingStatus::Recording,
            ..second.clone()
        };
        let err = prepare(&vault, &first, &[recording], None).unwrap_err();
        assert!(
            matches!(err, ExportError::StillRecording(id) if id == second.id),
            "{err}"
        );
        vault.shred(second.id).unwrap();
        let shredded = RecordingRow {
            state: RecordingStatus::Shredded,
            ..second.clone()
        };
        let err = prepare(&vault, &first, &[shredded], None).unwrap_err();
        assert!(
            matches!(err, ExportError::Shredded(id) if id == second.id),
            "{err}"
        );
        // Shredded in the vault although its row says otherwise: refused, never half a file.
        let err = prepare(&vault, &first, std::slice::from_ref(&second), None).unwrap_err();
        assert!(
            matches!(err, ExportError::Shredded(id) if id == second.id),
            "{err}"
        );
    }
}
