//! The records a recorder writes into a recording's chunks, and reading them back.
//!
//! A chunk's plaintext is a sequence of records, each starting with a one-byte tag (big-endian
//! integers throughout):
//!
//! ```text
//! 1 track      id u8 | codec u8 | role u8 | flags u8 (bit 0: SFrame-protected) | participant (16)
//! 2 frame      track u8 | flags u8 (bit 0: keyframe) | time µs u64 | length u32 | bytes
//! 3 note       time µs u64 | length u16 | UTF-8 text (consent withdrawn, loss, ...)
//! 4 epoch key  sender (16) | kid u64 | suite u16 | length u32 | bytes (an SFrame base key
//!              wrapped to the clinician's recording key; opaque here)
//! ```
//!
//! Times are microseconds since the recording started. Records never span chunks.

use std::collections::BTreeMap;
use std::io::Read;

use uuid::Uuid;

use crate::chunks::{ChunkReader, StreamEnd};
use crate::VaultError;

/// A recorded track's codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Opus audio, 48 kHz.
    Opus,
    /// VP8 video.
    Vp8,
    /// H.264 video, Annex-B.
    H264,
}

impl Codec {
    fn to_byte(self) -> u8 {
        match self {
            Self::Opus => 1,
            Self::Vp8 => 2,
            Self::H264 => 3,
        }
    }

    fn from_byte(b: u8) -> Result<Self, VaultError> {
        Ok(match b {
            1 => Self::Opus,
            2 => Self::Vp8,
            3 => Self::H264,
            other => return Err(VaultError::Malformed(format!("unknown codec {other}"))),
        })
    }

    /// Whether this is a video codec.
    pub fn is_video(self) -> bool {
        !matches!(self, Self::Opus)
    }
}

/// Whose track it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackRole {
    /// The doctor's (who runs the consultation).
    Doctor,
    /// A patient's.
    Patient,
    /// Another clinician's, added to the consultation by its doctor (group consultations).
    Clinician,
    /// A medical interpreter's (group consultations).
    Interpreter,
    /// A family member's or carer's (group consultations).
    Companion,
}

impl TrackRole {
    /// The byte a track record stores.
    fn to_byte(self) -> u8 {
        match self {
            Self::Doctor => 1,
            Self::Patient => 2,
            Self::Clinician => 3,
            Self::Interpreter => 4,
            Self::Companion => 5,
        }
    }

    fn from_byte(byte: u8) -> Result<Self, VaultError> {
        Ok(match byte {
            1 => Self::Doctor,
            2 => Self::Patient,
            3 => Self::Clinician,
            4 => Self::Interpreter,
            5 => Self::Companion,
            other => return Err(VaultError::Malformed(format!("unknown role {other}"))),
        })
    }

    /// How an export names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Doctor => "doctor",
            Self::Patient => "patient",
            Self::Clinician => "clinician",
            Self::Interpreter => "interpreter",
            Self::Companion => "companion",
        }
    }
}

/// A track of the recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    /// Its id in frame records.
    pub id: u8,
    /// Its codec.
    pub codec: Codec,
    /// Whose.
    pub role: TrackRole,
    /// The participant who sent it.
    pub participant: Uuid,
    /// Frames are SFrame ciphertext as they arrived (a zero-knowledge recording).
    pub protected: bool,
    /// A screen the participant shared (a video track beside their camera's).
    pub screen: bool,
}

/// One encoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its track.
    pub track: u8,
    /// Microseconds since the recording started.
    pub at_us: u64,
    /// A video keyframe.
    pub keyframe: bool,
    /// The encoded (or SFrame-protected) frame.
    pub data: Vec<u8>,
}

/// A wrapped SFrame base key, as the recorder received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochKey {
    /// The participant whose frames it opens (their tracks' `participant`).
    pub sender: Uuid,
    /// The SFrame KID.
    pub kid: u64,
    /// The SFrame suite id.
    pub suite: u16,
    /// The wrapped key.
    pub wrapped: Vec<u8>,
}

/// A record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A track starts.
    Track(Track),
    /// A frame.
    Frame(Frame),
    /// Something that happened (consent withdrawn, storage trouble), at a time.
    Note {
        /// Microseconds since the recording started.
        at_us: u64,
        /// What.
        text: String,
    },
    /// An SFrame base key of a sender's protected tracks, wrapped to the clinician's recording
    /// key (opaque to the vault).
    EpochKey(EpochKey),
}

impl Record {
    /// Append the record's encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Track(t) => {
                out.push(1);
                out.push(t.id);
                out.push(t.codec.to_byte());
                out.push(t.role.to_byte());
                // Flags: 1 protected, 2 a shared screen (earlier recordings have neither).
                out.push(u8::from(t.protected) | (u8::from(t.screen) << 1));
                out.extend_from_slice(t.participant.as_bytes());
            }
            Self::Frame(f) => {
                out.push(2);
                out.push(f.track);
                out.push(u8::from(f.keyframe));
                out.extend_from_slice(&f.at_us.to_be_bytes());
                out.extend_from_slice(&(f.data.len() as u32).to_be_bytes());
                out.extend_from_slice(&f.data);
            }
            Self::Note { at_us, text } => {
                let text = &text.as_bytes()[..text.len().min(u16::MAX as usize)];
                out.push(3);
                out.extend_from_slice(&at_us.to_be_bytes());
                out.extend_from_slice(&(text.len() as u16).to_be_bytes());
                out.extend_from_slice(text);
            }
            Self::EpochKey(key) => {
                out.push(4);
                out.extend_from_slice(key.sender.as_bytes());
                out.extend_from_slice(&key.kid.to_be_bytes());
                out.extend_from_slice(&key.suite.to_be_bytes());
                out.extend_from_slice(&(key.wrapped.len() as u32).to_be_bytes());
                out.extend_from_slice(&key.wrapped);
            }
        }
    }

    /// Decode every record of a chunk's plaintext.
    pub fn decode_all(mut bytes: &[u8]) -> Result<Vec<Record>, VaultError> {
        let mut records = Vec::new();
        while !bytes.is_empty() {
            records.push(Self::decode_one(&mut bytes)?);
        }
        Ok(records)
    }

    fn decode_one(bytes: &mut &[u8]) -> Result<Record, VaultError> {
        let tag = take::<1>(bytes)?[0];
        Ok(match tag {
            1 => {
                let [id, codec, role, flags] = take::<4>(bytes)?;
                // A flag this version does not know would change what the track is: refuse
                // rather than misread it.
                if flags & !3 != 0 {
                    return Err(VaultError::Malformed(format!(
                        "unknown track flags {flags:#x}"
                    )));
                }
                let participant = Uuid::from_bytes(take::<16>(bytes)?);
                Self::Track(Track {
                    id,
                    codec: Codec::from_byte(codec)?,
                    role: TrackRole::from_byte(role)?,
                    participant,
                    protected: flags & 1 == 1,
                    screen: flags & 2 == 2,
                })
            }
            2 => {
                let [track, flags] = take::<2>(bytes)?;
                let at_us = u64::from_be_bytes(take::<8>(bytes)?);
                let len = u32::from_be_bytes(take::<4>(bytes)?) as usize;
                Self::Frame(Frame {
                    track,
                    at_us,
                    keyframe: flags & 1 == 1,
                    data: take_vec(bytes, len)?,
                })
            }
            3 => {
                let at_us = u64::from_be_bytes(take::<8>(bytes)?);
                let len = u16::from_be_bytes(take::<2>(bytes)?) as usize;
                let text = String::from_utf8(take_vec(bytes, len)?)
                    .map_err(|_| VaultError::Malformed("a note is not UTF-8".into()))?;
                Self::Note { at_us, text }
            }
            4 => {
                let sender = Uuid::from_bytes(take::<16>(bytes)?);
                let kid = u64::from_be_bytes(take::<8>(bytes)?);
                let suite = u16::from_be_bytes(take::<2>(bytes)?);
                let len = u32::from_be_bytes(take::<4>(bytes)?) as usize;
                Self::EpochKey(EpochKey {
                    sender,
                    kid,
                    suite,
                    wrapped: take_vec(bytes, len)?,
                })
            }
            other => return Err(VaultError::Malformed(format!("unknown record tag {other}"))),
        })
    }
}

fn take<const N: usize>(bytes: &mut &[u8]) -> Result<[u8; N], VaultError> {
    if bytes.len() < N {
        return Err(VaultError::Malformed("a record is cut short".into()));
    }
    let (head, rest) = bytes.split_at(N);
    *bytes = rest;
    head.try_into()
        .map_err(|_| VaultError::Malformed("a record is cut short".into()))
}

fn take_vec(bytes: &mut &[u8], len: usize) -> Result<Vec<u8>, VaultError> {
    if bytes.len() < len {
        return Err(VaultError::Malformed("a record is cut short".into()));
    }
    let (head, rest) = bytes.split_at(len);
    *bytes = rest;
    Ok(head.to_vec())
}

/// Collects records into chunk-sized batches for a [`crate::RecordingWriter`].
#[derive(Debug, Default)]
pub struct RecordBatch {
    buf: Vec<u8>,
}

impl RecordBatch {
    /// Add a record.
    pub fn push(&mut self, record: &Record) {
        record.encode(&mut self.buf);
    }

    /// Bytes batched.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is batched.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Take the batch (for sealing), leaving it empty.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Take the batch, leaving `spare` (emptied) in its place: a buffer sealed before
    /// ([`crate::RecordingWriter::append_in_place`] hands it back empty) carries its allocation
    /// over, so batches of a running recording stop allocating.
    pub fn take_reusing(&mut self, spare: Option<Vec<u8>>) -> Vec<u8> {
        let mut next = spare.unwrap_or_default();
        next.clear();
        std::mem::replace(&mut self.buf, next)
    }
}

/// Everything in a recording but its frames, read and checked in one pass that holds one chunk
/// at a time: what an export needs before it streams the frames ([`FramesInTimeOrder`]), and
/// what the service needs of a recording its previous run left open.
#[derive(Debug, Default, Clone)]
pub struct RecordingIndex {
    /// Tracks by id.
    pub tracks: BTreeMap<u8, Track>,
    /// Frames per track id.
    pub frames_per_track: BTreeMap<u8, u64>,
    /// The latest frame time (µs), if any frame.
    pub last_frame_us: Option<u64>,
    /// Notes in recording order.
    pub notes: Vec<(u64, String)>,
    /// Wrapped epoch keys in recording order.
    pub epoch_keys: Vec<EpochKey>,
    /// Chunks read.
    pub chunks: u64,
    /// Whether the stream had its final chunk.
    pub complete: bool,
}

impl RecordingIndex {
    /// Read a recording's index. An unfinished stream (the recorder died) is an error
    /// ([`VaultError::Truncated`]) unless `accept_unfinished`, in which case every sealed chunk
    /// before the end counts and `complete` is false.
    pub fn read<R: Read>(
        reader: ChunkReader<R>,
        accept_unfinished: bool,
    ) -> Result<Self, VaultError> {
        visit(reader, accept_unfinished, |_| {})
    }

    /// Frames in the recording.
    pub fn frames(&self) -> u64 {
        self.frames_per_track.values().sum()
    }
}

/// Read every record, checking that frames belong to declared tracks; frames go to `on_frame`.
fn visit<R: Read>(
    mut reader: ChunkReader<R>,
    accept_unfinished: bool,
    mut on_frame: impl FnMut(Frame),
) -> Result<RecordingIndex, VaultError> {
    let mut index = RecordingIndex::default();
    while let Some(chunk) = reader.next_chunk()? {
        for record in Record::decode_all(&chunk)? {
            match record {
                Record::Track(t) => {
                    index.tracks.insert(t.id, t);
                }
                Record::Frame(f) => {
                    if !index.tracks.contains_key(&f.track) {
                        return Err(undeclared(f.track));
                    }
                    *index.frames_per_track.entry(f.track).or_default() += 1;
                    index.last_frame_us = index.last_frame_us.max(Some(f.at_us));
                    on_frame(f);
                }
                Record::Note { at_us, text } => index.notes.push((at_us, text)),
                Record::EpochKey(key) => index.epoch_keys.push(key),
            }
        }
    }
    match reader.end() {
        Some(StreamEnd::Complete { chunks }) => {
            index.chunks = chunks;
            index.complete = true;
        }
        Some(StreamEnd::Unfinished { chunks, .. }) if accept_unfinished => {
            index.chunks = chunks;
        }
        Some(StreamEnd::Unfinished { chunks, .. }) => return Err(VaultError::Truncated { chunks }),
        None => return Err(VaultError::Truncated { chunks: 0 }),
    }
    Ok(index)
}

fn undeclared(track: u8) -> VaultError {
    VaultError::Malformed(format!("a frame of undeclared track {track}"))
}

/// Everything in a recording, read and checked: tracks, notes, wrapped epoch keys, and frames
/// ordered by time. It holds every frame in memory: for small recordings and tests. An export
/// reads a [`RecordingIndex`] and then streams [`FramesInTimeOrder`].
#[derive(Debug, Default)]
pub struct RecordingContents {
    /// Tracks by id.
    pub tracks: BTreeMap<u8, Track>,
    /// Frames in time order (ties in recording order).
    pub frames: Vec<Frame>,
    /// Notes in recording order.
    pub notes: Vec<(u64, String)>,
    /// Wrapped epoch keys in recording order.
    pub epoch_keys: Vec<EpochKey>,
    /// Chunks read.
    pub chunks: u64,
    /// Whether the stream had its final chunk.
    pub complete: bool,
}

impl RecordingContents {
    /// Read a whole recording. An unfinished stream (the recorder died) is an error
    /// ([`VaultError::Truncated`]) unless `accept_unfinished`, in which case every sealed chunk
    /// before the end is returned and `complete` is false.
    pub fn read<R: Read>(
        reader: ChunkReader<R>,
        accept_unfinished: bool,
    ) -> Result<Self, VaultError> {
        let mut frames = Vec::new();
        let index = visit(reader, accept_unfinished, |f| frames.push(f))?;
        // Stable: frames with the same time keep their recording order.
        frames.sort_by_key(|f| f.at_us);
        Ok(Self {
            tracks: index.tracks,
            frames,
            notes: index.notes,
            epoch_keys: index.epoch_keys,
            chunks: index.chunks,
            complete: index.complete,
        })
    }
}

/// How far back in time a frame may come after a later one in a recording's record order. The
/// recorder stamps a frame by its sender's RTP clock anchored at arrival, and re-anchors when
/// that drifts a second from arrival: two frames in record order are at most two seconds out
/// of time order. Five seconds leaves room.
pub const REORDER_WINDOW_US: u64 = 5_000_000;

/// At most this many frames wait in the reorder window (about a minute of four tracks at 80
/// frames a second): past it the earliest goes out, so memory stays bounded whatever the times.
pub const REORDER_MAX_FRAMES: usize = 20_000;

/// Puts frames that arrive in record order into time order (ties in record order) while
/// holding only a window of them: a frame leaves once a frame
/// [`REORDER_WINDOW_US`] later has arrived (or [`REORDER_MAX_FRAMES`] wait). The order equals a
/// stable sort by time for every frame that is not later than the window allows; such a late
/// frame is dropped and counted ([`TimeOrder::late`]). Sans-IO: feed it with
/// [`TimeOrder::push`] and take frames with [`TimeOrder::pop`].
///
/// ```
/// use consult_vault::recording::{Frame, TimeOrder};
///
/// let frame = |at_us| Frame { track: 1, at_us, keyframe: false, data: vec![] };
/// let mut order = TimeOrder::default();
/// for at in [0, 2_000_000, 1_000_000, 9_000_000] {
///     order.push(frame(at));
/// }
/// let mut times = Vec::new();
/// while let Some(f) = order.pop(false) {
///     times.push(f.at_us);
/// }
/// assert_eq!(times, [0, 1_000_000, 2_000_000]); // 9 s waits for what may still come before it
/// while let Some(f) = order.pop(true) {
///     times.push(f.at_us);
/// }
/// assert_eq!(times, [0, 1_000_000, 2_000_000, 9_000_000]);
/// ```
#[derive(Debug, Default)]
pub struct TimeOrder {
    waiting: std::collections::BinaryHeap<std::cmp::Reverse<Waiting>>,
    pushed: u64,
    newest_us: u64,
    released_us: Option<u64>,
    late: u64,
}

#[derive(Debug)]
struct Waiting {
    at_us: u64,
    seq: u64,
    frame: Frame,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        (self.at_us, self.seq) == (other.at_us, other.seq)
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_us, self.seq).cmp(&(other.at_us, other.seq))
    }
}

impl TimeOrder {
    /// A frame in record order. One earlier than a frame already released is dropped (counted).
    pub fn push(&mut self, frame: Frame) {
        if self
            .released_us
            .is_some_and(|released| frame.at_us < released)
        {
            self.late += 1;
            return;
        }
        self.newest_us = self.newest_us.max(frame.at_us);
        self.pushed += 1;
        let (at_us, seq) = (frame.at_us, self.pushed);
        self.waiting
            .push(std::cmp::Reverse(Waiting { at_us, seq, frame }));
    }

    /// The next frame in time order that nothing still to come can precede; with `finished`
    /// (no more frames), the next of those left.
    pub fn pop(&mut self, finished: bool) -> Option<Frame> {
        let earliest = self.waiting.peek()?.0.at_us;
        let due = finished
            || self.waiting.len() > REORDER_MAX_FRAMES
            || self.newest_us.saturating_sub(earliest) >= REORDER_WINDOW_US;
        if !due {
            return None;
        }
        let std::cmp::Reverse(next) = self.waiting.pop()?;
        self.released_us = Some(next.at_us);
        Some(next.frame)
    }

    /// Frames dropped for coming later than the window allows.
    pub fn late(&self) -> u64 {
        self.late
    }
}

/// A recording's frames in time order, read one chunk at a time through a [`TimeOrder`]: memory
/// holds one chunk and the reorder window, whatever the recording's length. It checks frames
/// against the tracks declared so far; whether the stream is whole is the
/// [`RecordingIndex`]'s business, read first.
pub struct FramesInTimeOrder<R: Read> {
    reader: ChunkReader<R>,
    declared: std::collections::BTreeSet<u8>,
    order: TimeOrder,
    finished: bool,
}

impl<R: Read> FramesInTimeOrder<R> {
    /// Stream the frames of `reader`.
    pub fn new(reader: ChunkReader<R>) -> Self {
        Self {
            reader,
            declared: Default::default(),
            order: TimeOrder::default(),
            finished: false,
        }
    }

    /// Frames dropped for coming later than the reorder window allows (see [`TimeOrder`]).
    pub fn late(&self) -> u64 {
        self.order.late()
    }

    fn read_chunk(&mut self) -> Result<(), VaultError> {
        match self.reader.next_chunk()? {
            None => self.finished = true,
            Some(chunk) => {
                for record in Record::decode_all(&chunk)? {
                    match record {
                        Record::Track(t) => {
                            self.declared.insert(t.id);
                        }
                        Record::Frame(f) if self.declared.contains(&f.track) => self.order.push(f),
                        Record::Frame(f) => return Err(undeclared(f.track)),
                        Record::Note { .. } | Record::EpochKey(_) => {}
                    }
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for FramesInTimeOrder<R> {
    type Item = Result<Frame, VaultError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(frame) = self.order.pop(self.finished) {
                return Some(Ok(frame));
            }
            if self.finished {
                return None;
            }
            if let Err(e) = self.read_chunk() {
                self.finished = true;
                self.order = TimeOrder::default();
                return Some(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_of_a_group_consultation_round_trips_and_an_unknown_one_is_refused() {
        let roles = [
            TrackRole::Doctor,
            TrackRole::Patient,
            TrackRole::Clinician,
            TrackRole::Interpreter,
            TrackRole::Companion,
        ];
        let mut batch = RecordBatch::default();
        for (id, role) in roles.iter().enumerate() {
            batch.push(&Record::Track(Track {
                id: id as u8,
                codec: Codec::Opus,
                role: *role,
                participant: Uuid::new_v4(),
                protected: false,
                screen: false,
            }));
        }
        let bytes = batch.take();
        let decoded: Vec<TrackRole> = Record::decode_all(&bytes)
            .unwrap()
            .into_iter()
            .map(|r| match r {
                Record::Track(t) => t.role,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(decoded, roles);
        let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
        assert_eq!(
            names,
            ["doctor", "patient", "clinician", "interpreter", "companion"]
        );

        // The role byte of the first record (tag, id, codec, role): 6 names no role.
        let mut unknown = bytes.clone();
        unknown[3] = 6;
        assert!(matches!(
            Record::decode_all(&unknown),
            Err(VaultError::Malformed(m)) if m.contains("unknown role 6")
        ));
    }
}
