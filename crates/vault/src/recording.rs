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
    /// The doctor's.
    Doctor,
    /// The patient's.
    Patient,
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
                out.push(match t.role {
                    TrackRole::Doctor => 1,
                    TrackRole::Patient => 2,
                });
                out.push(u8::from(t.protected));
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
                let participant = Uuid::from_bytes(take::<16>(bytes)?);
                Self::Track(Track {
                    id,
                    codec: Codec::from_byte(codec)?,
                    role: match role {
                        1 => TrackRole::Doctor,
                        2 => TrackRole::Patient,
                        other => {
                            return Err(VaultError::Malformed(format!("unknown role {other}")))
                        }
                    },
                    participant,
                    protected: flags & 1 == 1,
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
}

/// Everything in a recording, read and checked: tracks, notes, wrapped epoch keys, and frames
/// ordered by time.
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
        mut reader: ChunkReader<R>,
        accept_unfinished: bool,
    ) -> Result<Self, VaultError> {
        let mut contents = Self::default();
        while let Some(chunk) = reader.next_chunk()? {
            for record in Record::decode_all(&chunk)? {
                match record {
                    Record::Track(t) => {
                        contents.tracks.insert(t.id, t);
                    }
                    Record::Frame(f) => {
                        if !contents.tracks.contains_key(&f.track) {
                            return Err(VaultError::Malformed(format!(
                                "a frame of undeclared track {}",
                                f.track
                            )));
                        }
                        contents.frames.push(f);
                    }
                    Record::Note { at_us, text } => contents.notes.push((at_us, text)),
                    Record::EpochKey(key) => contents.epoch_keys.push(key),
                }
            }
        }
        match reader.end() {
            Some(StreamEnd::Complete { chunks }) => {
                contents.chunks = chunks;
                contents.complete = true;
            }
            Some(StreamEnd::Unfinished { chunks, .. }) if accept_unfinished => {
                contents.chunks = chunks;
            }
            Some(StreamEnd::Unfinished { chunks, .. }) => {
                return Err(VaultError::Truncated { chunks })
            }
            None => return Err(VaultError::Truncated { chunks: 0 }),
        }
        // Stable: frames with the same time keep their recording order.
        contents.frames.sort_by_key(|f| f.at_us);
        Ok(contents)
    }
}
