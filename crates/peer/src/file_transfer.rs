//! File transfer over a data channel, as a sans-IO state machine: offer (name, size, MIME type,
//! SHA-256) → the receiver accepts or rejects → chunks under a bounded send queue → the receiver
//! verifies size and hash → complete. Progress on both sides, cancel from either side, resume from
//! the receiver's offset after a reconnect, and a size limit.
//!
//! Wire format, on the channel labelled [`FILE_CHANNEL_LABEL`] (reliable, ordered):
//!
//! * control messages are JSON text frames: [`Control`] (`offer`, `accept`, `reject`, `ack`,
//!   `done`, `complete`, `cancel`, `error`), tagged by `type`;
//! * chunks are binary frames: 16 bytes of transfer id (UUID), 8 bytes of offset (big-endian),
//!   then at most [`CHUNK_BYTES`] of data.
//!
//! The browser demo speaks the same protocol. A receiver never presents a file until every byte
//! arrived in order and the SHA-256 matches; anything else (a chunk out of order or past the
//! offered size, a short file, a wrong hash, a cancel, a vanished peer) ends in
//! [`FileEvent::Failed`] or [`FileEvent::Interrupted`] and the partial data is not handed out.
//!
//! ```
//! use consult_peer::file_transfer::{FileTransfers, FileEvent, Frame, Limits};
//!
//! let mut alice = FileTransfers::new(Limits::default());
//! let mut bob = FileTransfers::new(Limits::default());
//! let id = alice.offer("notes.txt", "text/plain", b"hello".to_vec()).unwrap();
//! // Wire the two together (a data channel in real life).
//! fn pump(from: &mut FileTransfers, to: &mut FileTransfers) {
//!     while let Some(frame) = from.poll_frame(usize::MAX) {
//!         to.handle_frame(frame);
//!     }
//! }
//! pump(&mut alice, &mut bob);
//! let Some(FileEvent::Offered { offer }) = bob.poll_event() else { panic!() };
//! bob.accept(offer.id).unwrap();
//! for _ in 0..3 {
//!     pump(&mut bob, &mut alice);
//!     pump(&mut alice, &mut bob);
//! }
//! let done = std::iter::from_fn(|| bob.poll_event()).find_map(|e| match e {
//!     FileEvent::Received { data, .. } => Some(data),
//!     _ => None,
//! });
//! assert_eq!(done.as_deref(), Some(&b"hello"[..]));
//! # let _ = id;
//! ```

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Label of the file-transfer data channel.
pub const FILE_CHANNEL_LABEL: &str = "consult-file";
/// Largest chunk payload.
pub const CHUNK_BYTES: usize = 16 * 1024;
/// Bytes before the payload in a chunk frame.
pub const CHUNK_HEADER_BYTES: usize = 16 + 8;
/// The receiver acknowledges at least this often (progress and the resume point).
pub const ACK_EVERY_BYTES: u64 = 256 * 1024;

/// Limits a side enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest file accepted or sent.
    pub max_file_bytes: u64,
    /// Longest file name, in bytes.
    pub max_name_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_bytes: 100 * 1024 * 1024,
            max_name_bytes: 255,
        }
    }
}

/// What a sender says about a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOffer {
    /// Transfer id; the same id is offered again to resume.
    pub id: Uuid,
    /// File name (no path).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// MIME type, e.g. `application/pdf`.
    pub mime: String,
    /// Hex SHA-256 of the whole file.
    pub sha256: String,
}

/// Control messages (JSON text frames).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Sender: here is a file.
    Offer(FileOffer),
    /// Receiver: send it, starting at `offset` (non-zero when resuming).
    Accept {
        /// Transfer id.
        id: Uuid,
        /// First byte wanted.
        offset: u64,
    },
    /// Receiver: no.
    Reject {
        /// Transfer id.
        id: Uuid,
        /// Why, e.g. `declined`, `too_large`.
        reason: String,
    },
    /// Receiver: everything before `offset` arrived.
    Ack {
        /// Transfer id.
        id: Uuid,
        /// Bytes received in order.
        offset: u64,
    },
    /// Sender: that was the last chunk.
    Done {
        /// Transfer id.
        id: Uuid,
    },
    /// Receiver: size and hash verified.
    Complete {
        /// Transfer id.
        id: Uuid,
    },
    /// Either side: stop.
    Cancel {
        /// Transfer id.
        id: Uuid,
    },
    /// Either side: the transfer failed.
    Error {
        /// Transfer id.
        id: Uuid,
        /// Machine-readable reason, see [`FailReason`].
        reason: String,
    },
}

/// A frame on the file channel, either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A control message (sent as a text frame).
    Control(Control),
    /// A chunk (sent as a binary frame): id, offset, data.
    Chunk {
        /// Transfer id.
        id: Uuid,
        /// Offset of the first byte.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A frame that could not be decoded (only ever produced by [`Frame::decode`]).
    Invalid(String),
}

impl Frame {
    /// Encode: `(binary, bytes)` as the data channel wants them.
    pub fn encode(&self) -> (bool, Vec<u8>) {
        match self {
            Frame::Control(control) => (false, serde_json::to_vec(control).unwrap_or_default()),
            Frame::Chunk { id, offset, data } => {
                let mut out = Vec::with_capacity(CHUNK_HEADER_BYTES + data.len());
                out.extend_from_slice(id.as_bytes());
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(data);
                (true, out)
            }
            Frame::Invalid(_) => (false, Vec::new()),
        }
    }

    /// Decode a received data-channel message.
    pub fn decode(binary: bool, bytes: &[u8]) -> Frame {
        if binary {
            if bytes.len() < CHUNK_HEADER_BYTES {
                return Frame::Invalid(format!(
                    "chunk of {} bytes is shorter than its header",
                    bytes.len()
                ));
            }
            if bytes.len() > CHUNK_HEADER_BYTES + CHUNK_BYTES {
                return Frame::Invalid(format!("chunk of {} bytes is over the limit", bytes.len()));
            }
            let (id, rest) = bytes.split_at(16);
            let (offset, data) = rest.split_at(8);
            let id = Uuid::from_slice(id).unwrap_or_default();
            let mut offset_bytes = [0u8; 8];
            offset_bytes.copy_from_slice(offset);
            return Frame::Chunk {
                id,
                offset: u64::from_be_bytes(offset_bytes),
                data: data.to_vec(),
            };
        }
        match serde_json::from_slice(bytes) {
            Ok(control) => Frame::Control(control),
            Err(e) => Frame::Invalid(format!("bad control message: {e}")),
        }
    }
}

/// Why a transfer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FailReason {
    /// The receiver declined.
    #[error("declined by the receiver")]
    Declined,
    /// Over the size limit of one side.
    #[error("the file is larger than allowed")]
    TooLarge,
    /// A chunk did not start where the previous one ended.
    #[error("a chunk arrived out of order")]
    OutOfOrder,
    /// A chunk went past the offered size.
    #[error("more data than the offered size")]
    BeyondSize,
    /// `done` came before all offered bytes.
    #[error("the sender finished before the offered size")]
    Incomplete,
    /// All bytes arrived but the SHA-256 differs from the offer.
    #[error("the file does not match its SHA-256")]
    HashMismatch,
    /// The other side cancelled.
    #[error("cancelled by the other side")]
    CancelledByPeer,
    /// This side cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The other side reported an error.
    #[error("the other side reported an error")]
    Remote,
    /// The offer itself is unusable (empty name, bad hash format, ...).
    #[error("invalid offer")]
    InvalidOffer,
}

impl FailReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Declined => "declined",
            Self::TooLarge => "too_large",
            Self::OutOfOrder => "out_of_order",
            Self::BeyondSize => "beyond_size",
            Self::Incomplete => "incomplete",
            Self::HashMismatch => "hash_mismatch",
            Self::CancelledByPeer => "cancelled_by_peer",
            Self::Cancelled => "cancelled",
            Self::Remote => "remote_error",
            Self::InvalidOffer => "invalid_offer",
        }
    }
}

/// Which way a transfer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We send.
    Outgoing,
    /// We receive.
    Incoming,
}

/// What happened, for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileEvent {
    /// The other side offers a file: [`FileTransfers::accept`] or [`FileTransfers::reject`] it.
    Offered {
        /// The offer.
        offer: FileOffer,
    },
    /// Bytes confirmed so far (sender: acknowledged by the receiver, every
    /// [`ACK_EVERY_BYTES`]; receiver: received in order, after every chunk).
    Progress {
        /// Transfer id.
        id: Uuid,
        /// Which way.
        direction: Direction,
        /// Bytes so far.
        bytes: u64,
        /// Of this many.
        total: u64,
    },
    /// Sender: the receiver verified the file.
    Sent {
        /// Transfer id.
        id: Uuid,
    },
    /// Receiver: every byte arrived and the hash matches. The only event that hands out data.
    Received {
        /// The offer (name, MIME type, hash).
        offer: FileOffer,
        /// The whole file.
        data: Vec<u8>,
    },
    /// The transfer ended without a file. Partial data is discarded.
    Failed {
        /// Transfer id.
        id: Uuid,
        /// Which way.
        direction: Direction,
        /// Why.
        reason: FailReason,
    },
    /// A transfer interrupted by a reconnect picked up again from `bytes`.
    Resumed {
        /// Transfer id.
        id: Uuid,
        /// Which way.
        direction: Direction,
        /// Where it continues.
        bytes: u64,
    },
    /// The channel went away mid-transfer. It resumes by itself when a file channel opens again
    /// (the sender re-offers under the same id, the receiver continues from what it holds).
    Interrupted {
        /// Transfer id.
        id: Uuid,
        /// Which way.
        direction: Direction,
        /// Bytes the receiver holds (where a resume starts).
        bytes: u64,
    },
    /// A frame this side could not make sense of; the transfer (if any) goes on.
    ProtocolError {
        /// What was wrong.
        message: String,
    },
}

/// Why a local call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// Over the configured size limit.
    #[error("the file is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// File size.
        size: u64,
        /// Limit.
        limit: u64,
    },
    /// Name empty, too long, or with a path separator or control character.
    #[error("invalid file name")]
    InvalidName,
    /// No such transfer in a state that allows this.
    #[error("no such pending transfer")]
    UnknownTransfer,
}

#[derive(Debug)]
struct Outgoing {
    offer: FileOffer,
    data: Vec<u8>,
    /// Next byte to put on the channel (None until accepted).
    next: Option<u64>,
    acked: u64,
    done_sent: bool,
}

#[derive(Debug)]
struct Incoming {
    offer: FileOffer,
    data: Vec<u8>,
    hasher: Sha256,
    accepted: bool,
    /// Accepted before an interruption: a re-offer resumes without asking again.
    accepted_before: bool,
    last_ack: u64,
}

/// All transfers on one file channel, both directions.
#[derive(Debug)]
pub struct FileTransfers {
    limits: Limits,
    outgoing: HashMap<Uuid, Outgoing>,
    /// Order in which outgoing transfers get the channel.
    send_order: VecDeque<Uuid>,
    incoming: HashMap<Uuid, Incoming>,
    /// Partial incoming data kept after an interruption, for a resume.
    suspended: HashMap<Uuid, Incoming>,
    /// Outgoing transfers interrupted by a lost channel, re-offered when one opens again.
    suspended_outgoing: HashMap<Uuid, Outgoing>,
    frames: VecDeque<Frame>,
    events: VecDeque<FileEvent>,
}

fn valid_name(name: &str, limits: &Limits) -> bool {
    !name.is_empty()
        && name.len() <= limits.max_name_bytes
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
}

impl FileTransfers {
    /// No transfers yet.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            outgoing: HashMap::new(),
            send_order: VecDeque::new(),
            incoming: HashMap::new(),
            suspended: HashMap::new(),
            suspended_outgoing: HashMap::new(),
            frames: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Offer a file to the other side. Returns the transfer id.
    pub fn offer(&mut self, name: &str, mime: &str, data: Vec<u8>) -> Result<Uuid, FileError> {
        self.offer_with_id(Uuid::new_v4(), name, mime, data)
    }

    /// Offer (or re-offer, to resume) a file under a given id.
    pub fn offer_with_id(
        &mut self,
        id: Uuid,
        name: &str,
        mime: &str,
        data: Vec<u8>,
    ) -> Result<Uuid, FileError> {
        let size = data.len() as u64;
        if size > self.limits.max_file_bytes {
            return Err(FileError::TooLarge {
                size,
                limit: self.limits.max_file_bytes,
            });
        }
        if !valid_name(name, &self.limits) {
            return Err(FileError::InvalidName);
        }
        let offer = FileOffer {
            id,
            name: name.to_owned(),
            size,
            mime: mime.to_owned(),
            sha256: hex::encode(Sha256::digest(&data)),
        };
        self.frames
            .push_back(Frame::Control(Control::Offer(offer.clone())));
        // A manual re-offer supersedes the automatic one.
        self.suspended_outgoing.remove(&id);
        self.outgoing.insert(
            id,
            Outgoing {
                offer,
                data,
                next: None,
                acked: 0,
                done_sent: false,
            },
        );
        if !self.send_order.contains(&id) {
            self.send_order.push_back(id);
        }
        Ok(id)
    }

    /// Accept an offered file (resuming from what is already held under its id).
    pub fn accept(&mut self, id: Uuid) -> Result<(), FileError> {
        let incoming = self
            .incoming
            .get_mut(&id)
            .filter(|t| !t.accepted)
            .ok_or(FileError::UnknownTransfer)?;
        incoming.accepted = true;
        let offset = incoming.data.len() as u64;
        self.frames
            .push_back(Frame::Control(Control::Accept { id, offset }));
        Ok(())
    }

    /// Decline an offered file.
    pub fn reject(&mut self, id: Uuid) -> Result<(), FileError> {
        self.incoming
            .remove(&id)
            .ok_or(FileError::UnknownTransfer)?;
        self.frames.push_back(Frame::Control(Control::Reject {
            id,
            reason: FailReason::Declined.as_str().into(),
        }));
        Ok(())
    }

    /// Cancel a transfer in either direction.
    pub fn cancel(&mut self, id: Uuid) -> Result<(), FileError> {
        let direction = if self.outgoing.remove(&id).is_some()
            || self.suspended_outgoing.remove(&id).is_some()
        {
            self.send_order.retain(|t| *t != id);
            Direction::Outgoing
        } else if self.incoming.remove(&id).is_some() || self.suspended.remove(&id).is_some() {
            Direction::Incoming
        } else {
            return Err(FileError::UnknownTransfer);
        };
        self.frames
            .push_back(Frame::Control(Control::Cancel { id }));
        self.events.push_back(FileEvent::Failed {
            id,
            direction,
            reason: FailReason::Cancelled,
        });
        Ok(())
    }

    /// Whether any outgoing transfer has chunks waiting for channel space.
    pub fn wants_to_send(&self) -> bool {
        !self.frames.is_empty()
            || self.send_order.iter().any(|id| {
                self.outgoing
                    .get(id)
                    .is_some_and(|t| t.next.is_some_and(|n| n < t.offer.size || !t.done_sent))
            })
    }

    /// The next frame to put on the channel. Chunks are only produced while `channel_space`
    /// (bytes the caller lets queue on the channel) allows one; control frames always go.
    pub fn poll_frame(&mut self, channel_space: usize) -> Option<Frame> {
        if let Some(frame) = self.frames.pop_front() {
            return Some(frame);
        }
        for _ in 0..self.send_order.len() {
            let id = *self.send_order.front()?;
            let Some(transfer) = self.outgoing.get_mut(&id) else {
                self.send_order.pop_front();
                continue;
            };
            let Some(next) = transfer.next else {
                self.send_order.rotate_left(1);
                continue;
            };
            if next < transfer.offer.size {
                let end = (next + CHUNK_BYTES as u64).min(transfer.offer.size);
                let len = (end - next) as usize;
                if channel_space < len + CHUNK_HEADER_BYTES {
                    return None;
                }
                transfer.next = Some(end);
                let data = transfer.data[next as usize..end as usize].to_vec();
                // Round-robin between files, one chunk at a time.
                self.send_order.rotate_left(1);
                return Some(Frame::Chunk {
                    id,
                    offset: next,
                    data,
                });
            }
            if !transfer.done_sent {
                transfer.done_sent = true;
                return Some(Frame::Control(Control::Done { id }));
            }
            self.send_order.rotate_left(1);
        }
        None
    }

    /// Whether an accepted outgoing transfer has chunks left to put on the channel.
    pub fn has_chunks_to_send(&self) -> bool {
        self.outgoing
            .values()
            .any(|t| t.next.is_some_and(|next| next < t.offer.size))
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<FileEvent> {
        self.events.pop_front()
    }

    /// The channel closed or the peer went away: every transfer in flight is interrupted. Incoming
    /// partial data is kept (not presented) so that a re-offer with the same id resumes it.
    pub fn channel_lost(&mut self) {
        for (id, mut transfer) in self.outgoing.drain() {
            self.events.push_back(FileEvent::Interrupted {
                id,
                direction: Direction::Outgoing,
                bytes: transfer.acked,
            });
            transfer.next = None;
            transfer.done_sent = false;
            self.suspended_outgoing.insert(id, transfer);
        }
        self.send_order.clear();
        for (id, mut transfer) in self.incoming.drain() {
            let bytes = transfer.data.len() as u64;
            self.events.push_back(FileEvent::Interrupted {
                id,
                direction: Direction::Incoming,
                bytes,
            });
            transfer.accepted_before = transfer.accepted;
            transfer.accepted = false;
            self.suspended.insert(id, transfer);
        }
        self.frames.clear();
    }

    /// A file channel is open (again): re-offer every interrupted outgoing transfer under its id,
    /// so the receiver continues from what it holds.
    pub fn channel_opened(&mut self) {
        for (id, transfer) in self.suspended_outgoing.drain() {
            self.frames
                .push_back(Frame::Control(Control::Offer(transfer.offer.clone())));
            self.outgoing.insert(id, transfer);
            self.send_order.push_back(id);
        }
    }

    /// Feed a frame received on the file channel.
    pub fn handle_frame(&mut self, frame: Frame) {
        match frame {
            Frame::Invalid(message) => self.events.push_back(FileEvent::ProtocolError { message }),
            Frame::Chunk { id, offset, data } => self.handle_chunk(id, offset, data),
            Frame::Control(control) => self.handle_control(control),
        }
    }

    fn protocol_error(&mut self, message: String) {
        self.events.push_back(FileEvent::ProtocolError { message });
    }

    fn fail_incoming(&mut self, id: Uuid, reason: FailReason) {
        self.incoming.remove(&id);
        self.frames.push_back(Frame::Control(Control::Error {
            id,
            reason: reason.as_str().into(),
        }));
        self.events.push_back(FileEvent::Failed {
            id,
            direction: Direction::Incoming,
            reason,
        });
    }

    fn handle_chunk(&mut self, id: Uuid, offset: u64, data: Vec<u8>) {
        let Some(transfer) = self.incoming.get_mut(&id).filter(|t| t.accepted) else {
            self.protocol_error(format!("chunk for unknown or unaccepted transfer {id}"));
            return;
        };
        let held = transfer.data.len() as u64;
        if offset != held {
            self.fail_incoming(id, FailReason::OutOfOrder);
            return;
        }
        if held + data.len() as u64 > transfer.offer.size {
            self.fail_incoming(id, FailReason::BeyondSize);
            return;
        }
        transfer.hasher.update(&data);
        transfer.data.extend_from_slice(&data);
        let held = transfer.data.len() as u64;
        let total = transfer.offer.size;
        if held - transfer.last_ack >= ACK_EVERY_BYTES || held == total {
            transfer.last_ack = held;
            self.frames
                .push_back(Frame::Control(Control::Ack { id, offset: held }));
        }
        // Every chunk: on a slow link (a few KiB/s at 10 % loss on a busy machine) the person,
        // and a test, see it move, long before the next acknowledgement.
        self.events.push_back(FileEvent::Progress {
            id,
            direction: Direction::Incoming,
            bytes: held,
            total,
        });
    }

    fn handle_control(&mut self, control: Control) {
        match control {
            Control::Offer(offer) => self.handle_offer(offer),
            Control::Accept { id, offset } => {
                let Some(transfer) = self.outgoing.get_mut(&id).filter(|t| t.next.is_none()) else {
                    self.protocol_error(format!("accept for unknown transfer {id}"));
                    return;
                };
                if offset > transfer.offer.size {
                    self.protocol_error(format!("accept past the end of transfer {id}"));
                    return;
                }
                transfer.next = Some(offset);
                transfer.acked = offset;
                if offset > 0 {
                    self.events.push_back(FileEvent::Resumed {
                        id,
                        direction: Direction::Outgoing,
                        bytes: offset,
                    });
                }
            }
            Control::Reject { id, .. } => {
                if self.outgoing.remove(&id).is_some() {
                    self.send_order.retain(|t| *t != id);
                    self.events.push_back(FileEvent::Failed {
                        id,
                        direction: Direction::Outgoing,
                        reason: FailReason::Declined,
                    });
                }
            }
            Control::Ack { id, offset } => {
                if let Some(transfer) = self.outgoing.get_mut(&id)
                    && offset > transfer.acked
                    && offset <= transfer.next.unwrap_or(0)
                {
                    transfer.acked = offset;
                    let total = transfer.offer.size;
                    self.events.push_back(FileEvent::Progress {
                        id,
                        direction: Direction::Outgoing,
                        bytes: offset,
                        total,
                    });
                }
            }
            Control::Done { id } => self.handle_done(id),
            Control::Complete { id } => {
                if self.outgoing.remove(&id).is_some() {
                    self.send_order.retain(|t| *t != id);
                    self.events.push_back(FileEvent::Sent { id });
                }
            }
            Control::Cancel { id } => {
                if self.outgoing.remove(&id).is_some() {
                    self.send_order.retain(|t| *t != id);
                    self.events.push_back(FileEvent::Failed {
                        id,
                        direction: Direction::Outgoing,
                        reason: FailReason::CancelledByPeer,
                    });
                } else if self.incoming.remove(&id).is_some()
                    || self.suspended.remove(&id).is_some()
                {
                    self.events.push_back(FileEvent::Failed {
                        id,
                        direction: Direction::Incoming,
                        reason: FailReason::CancelledByPeer,
                    });
                }
            }
            Control::Error { id, reason } => {
                let reason = match reason.as_str() {
                    "too_large" => FailReason::TooLarge,
                    "hash_mismatch" => FailReason::HashMismatch,
                    "out_of_order" => FailReason::OutOfOrder,
                    "beyond_size" => FailReason::BeyondSize,
                    "incomplete" => FailReason::Incomplete,
                    "invalid_offer" => FailReason::InvalidOffer,
                    _ => FailReason::Remote,
                };
                if self.outgoing.remove(&id).is_some() {
                    self.send_order.retain(|t| *t != id);
                    self.events.push_back(FileEvent::Failed {
                        id,
                        direction: Direction::Outgoing,
                        reason,
                    });
                } else if self.incoming.remove(&id).is_some() {
                    self.events.push_back(FileEvent::Failed {
                        id,
                        direction: Direction::Incoming,
                        reason,
                    });
                }
            }
        }
    }

    fn handle_offer(&mut self, offer: FileOffer) {
        let id = offer.id;
        let hash_ok =
            offer.sha256.len() == 64 && offer.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid_name(&offer.name, &self.limits) || !hash_ok {
            self.frames.push_back(Frame::Control(Control::Error {
                id,
                reason: FailReason::InvalidOffer.as_str().into(),
            }));
            self.protocol_error(format!("invalid file offer {id}"));
            return;
        }
        if offer.size > self.limits.max_file_bytes {
            self.frames.push_back(Frame::Control(Control::Reject {
                id,
                reason: FailReason::TooLarge.as_str().into(),
            }));
            self.events.push_back(FileEvent::Failed {
                id,
                direction: Direction::Incoming,
                reason: FailReason::TooLarge,
            });
            return;
        }
        // A re-offer of a suspended transfer with the same content resumes it.
        let transfer = match self.suspended.remove(&id) {
            Some(held) if held.offer == offer => held,
            _ => Incoming {
                offer: offer.clone(),
                data: Vec::new(),
                hasher: Sha256::new(),
                accepted: false,
                accepted_before: false,
                last_ack: 0,
            },
        };
        if transfer.accepted_before {
            let offset = transfer.data.len() as u64;
            self.incoming.insert(
                id,
                Incoming {
                    accepted: true,
                    ..transfer
                },
            );
            self.frames
                .push_back(Frame::Control(Control::Accept { id, offset }));
            self.events.push_back(FileEvent::Resumed {
                id,
                direction: Direction::Incoming,
                bytes: offset,
            });
            return;
        }
        self.incoming.insert(id, transfer);
        self.events.push_back(FileEvent::Offered { offer });
    }

    fn handle_done(&mut self, id: Uuid) {
        let Some(transfer) = self.incoming.get(&id).filter(|t| t.accepted) else {
            self.protocol_error(format!("done for unknown transfer {id}"));
            return;
        };
        if (transfer.data.len() as u64) < transfer.offer.size {
            self.fail_incoming(id, FailReason::Incomplete);
            return;
        }
        let Some(transfer) = self.incoming.remove(&id) else {
            return;
        };
        let digest = hex::encode(transfer.hasher.finalize());
        if !digest.eq_ignore_ascii_case(&transfer.offer.sha256) {
            self.frames.push_back(Frame::Control(Control::Error {
                id,
                reason: FailReason::HashMismatch.as_str().into(),
            }));
            self.events.push_back(FileEvent::Failed {
                id,
                direction: Direction::Incoming,
                reason: FailReason::HashMismatch,
            });
            return;
        }
        self.frames
            .push_back(Frame::Control(Control::Complete { id }));
        self.events.push_back(FileEvent::Received {
            offer: transfer.offer,
            data: transfer.data,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pump(from: &mut FileTransfers, to: &mut FileTransfers) -> usize {
        let mut n = 0;
        while let Some(frame) = from.poll_frame(64 * 1024) {
            let (binary, bytes) = frame.encode();
            to.handle_frame(Frame::decode(binary, &bytes));
            n += 1;
        }
        n
    }

    fn run(a: &mut FileTransfers, b: &mut FileTransfers) {
        while pump(a, b) + pump(b, a) > 0 {}
    }

    fn events(t: &mut FileTransfers) -> Vec<FileEvent> {
        std::iter::from_fn(|| t.poll_event()).collect()
    }

    fn offered(t: &mut FileTransfers) -> FileOffer {
        events(t)
            .into_iter()
            .find_map(|e| match e {
                FileEvent::Offered { offer } => Some(offer),
                _ => None,
            })
            .expect("an offer")
    }

    fn random_bytes(n: usize) -> Vec<u8> {
        use rand::{RngCore, SeedableRng};
        let mut data = vec![0u8; n];
        rand_chacha::ChaCha8Rng::seed_from_u64(7).fill_bytes(&mut data);
        data
    }

    #[test]
    fn a_file_arrives_whole_with_progress_on_both_sides() {
        let (mut a, mut b) = (
            FileTransfers::new(Limits::default()),
            FileTransfers::new(Limits::default()),
        );
        let data = random_bytes(1_000_003);
        let id = a
            .offer("scan.pdf", "application/pdf", data.clone())
            .unwrap();
        pump(&mut a, &mut b);
        let offer = offered(&mut b);
        assert_eq!(
            (offer.id, offer.size, offer.mime.as_str()),
            (id, 1_000_003, "application/pdf")
        );
        b.accept(id).unwrap();
        run(&mut a, &mut b);
        let received = events(&mut b);
        assert!(received
            .iter()
            .any(|e| matches!(e, FileEvent::Progress { bytes, .. } if *bytes == 262_144)));
        assert!(matches!(received.last(), Some(FileEvent::Received { data: d, .. }) if *d == data));
        let sent = events(&mut a);
        assert!(matches!(sent.last(), Some(FileEvent::Sent { id: i }) if *i == id));
        assert!(sent.iter().any(|e| matches!(
            e,
            FileEvent::Progress {
                direction: Direction::Outgoing,
                ..
            }
        )));
    }

    #[test]
    fn chunks_wait_for_channel_space() {
        let mut a = FileTransfers::new(Limits::default());
        let id = a
            .offer("a.bin", "application/octet-stream", random_bytes(100_000))
            .unwrap();
        a.poll_frame(0); // the offer goes regardless
        a.handle_frame(Frame::Control(Control::Accept { id, offset: 0 }));
        assert_eq!(
            a.poll_frame(CHUNK_BYTES),
            None,
            "no room for header + chunk"
        );
        assert!(matches!(
            a.poll_frame(CHUNK_BYTES + CHUNK_HEADER_BYTES),
            Some(Frame::Chunk { offset: 0, .. })
        ));
        assert!(a.wants_to_send());
    }

    #[test]
    fn a_declined_or_oversized_offer_sends_nothing() {
        let (mut a, mut b) = (
            FileTransfers::new(Limits::default()),
            FileTransfers::new(Limits {
                max_file_bytes: 10,
                ..Limits::default()
            }),
        );
        let id = a
            .offer("big.bin", "application/octet-stream", vec![0; 11])
            .unwrap();
        run(&mut a, &mut b);
        assert!(events(&mut b).contains(&FileEvent::Failed {
            id,
            direction: Direction::Incoming,
            reason: FailReason::TooLarge
        }));
        assert!(matches!(
            events(&mut a).last(),
            Some(FileEvent::Failed {
                reason: FailReason::Declined,
                ..
            })
        ));
        let id = a
            .offer("small.bin", "application/octet-stream", vec![1; 5])
            .unwrap();
        pump(&mut a, &mut b);
        offered(&mut b);
        b.reject(id).unwrap();
        run(&mut a, &mut b);
        assert!(matches!(
            events(&mut a).last(),
            Some(FileEvent::Failed {
                reason: FailReason::Declined,
                ..
            })
        ));
        assert_eq!(
            FileTransfers::new(Limits {
                max_file_bytes: 10,
                ..Limits::default()
            })
            .offer("x", "y", vec![0; 11]),
            Err(FileError::TooLarge {
                size: 11,
                limit: 10
            })
        );
        assert_eq!(
            a.offer("../etc/passwd", "text/plain", vec![]),
            Err(FileError::InvalidName)
        );
    }

    /// A sender that lies: the receiver drives the protocol by hand.
    fn lying_offer(size: u64, sha256: String) -> (FileTransfers, Uuid) {
        let mut b = FileTransfers::new(Limits::default());
        let id = Uuid::new_v4();
        b.handle_frame(Frame::Control(Control::Offer(FileOffer {
            id,
            name: "x.bin".into(),
            size,
            mime: "a/b".into(),
            sha256,
        })));
        offered(&mut b);
        b.accept(id).unwrap();
        while b.poll_frame(usize::MAX).is_some() {}
        (b, id)
    }

    fn failure(b: &mut FileTransfers) -> Option<FailReason> {
        let evs = events(b);
        assert!(
            !evs.iter().any(|e| matches!(e, FileEvent::Received { .. })),
            "a bad file was presented"
        );
        evs.into_iter().find_map(|e| match e {
            FileEvent::Failed { reason, .. } => Some(reason),
            _ => None,
        })
    }

    #[test]
    fn a_sender_lying_about_size_or_hash_never_produces_a_file() {
        let real = b"0123456789".to_vec();
        let good_hash = hex::encode(Sha256::digest(&real));
        // More data than offered.
        let (mut b, id) = lying_offer(5, good_hash.clone());
        b.handle_frame(Frame::Chunk {
            id,
            offset: 0,
            data: real.clone(),
        });
        assert_eq!(failure(&mut b), Some(FailReason::BeyondSize));
        // Less data than offered.
        let (mut b, id) = lying_offer(20, good_hash.clone());
        b.handle_frame(Frame::Chunk {
            id,
            offset: 0,
            data: real.clone(),
        });
        b.handle_frame(Frame::Control(Control::Done { id }));
        assert_eq!(failure(&mut b), Some(FailReason::Incomplete));
        // Right size, wrong hash.
        let (mut b, id) = lying_offer(10, "ab".repeat(32));
        b.handle_frame(Frame::Chunk {
            id,
            offset: 0,
            data: real.clone(),
        });
        b.handle_frame(Frame::Control(Control::Done { id }));
        assert_eq!(failure(&mut b), Some(FailReason::HashMismatch));
        // Out of order.
        let (mut b, id) = lying_offer(10, good_hash.clone());
        b.handle_frame(Frame::Chunk {
            id,
            offset: 5,
            data: real[5..].to_vec(),
        });
        assert_eq!(failure(&mut b), Some(FailReason::OutOfOrder));
        // A chunk for a transfer nobody accepted is an error, not data.
        let mut b = FileTransfers::new(Limits::default());
        b.handle_frame(Frame::Chunk {
            id: Uuid::new_v4(),
            offset: 0,
            data: vec![1],
        });
        assert!(matches!(
            events(&mut b).as_slice(),
            [FileEvent::ProtocolError { .. }]
        ));
        // A malformed offer is refused.
        let mut b = FileTransfers::new(Limits::default());
        b.handle_frame(Frame::Control(Control::Offer(FileOffer {
            id,
            name: "".into(),
            size: 1,
            mime: "a/b".into(),
            sha256: "zz".into(),
        })));
        assert!(matches!(
            b.poll_frame(0),
            Some(Frame::Control(Control::Error { .. }))
        ));
    }

    #[test]
    fn garbage_frames_are_reported_not_trusted() {
        assert!(matches!(Frame::decode(true, &[1, 2, 3]), Frame::Invalid(_)));
        assert!(matches!(
            Frame::decode(true, &vec![0; CHUNK_HEADER_BYTES + CHUNK_BYTES + 1]),
            Frame::Invalid(_)
        ));
        assert!(matches!(
            Frame::decode(false, b"{\"type\":\"nope\"}"),
            Frame::Invalid(_)
        ));
        assert!(matches!(
            Frame::decode(false, &[0xff, 0xfe]),
            Frame::Invalid(_)
        ));
        let mut b = FileTransfers::new(Limits::default());
        b.handle_frame(Frame::decode(false, b"not json"));
        assert!(matches!(
            events(&mut b).as_slice(),
            [FileEvent::ProtocolError { .. }]
        ));
    }

    #[test]
    fn either_side_can_cancel() {
        let (mut a, mut b) = (
            FileTransfers::new(Limits::default()),
            FileTransfers::new(Limits::default()),
        );
        let id = a
            .offer("a.bin", "application/octet-stream", random_bytes(200_000))
            .unwrap();
        pump(&mut a, &mut b);
        offered(&mut b);
        b.accept(id).unwrap();
        pump(&mut b, &mut a);
        a.poll_frame(usize::MAX); // one chunk goes out, then the receiver cancels
        b.cancel(id).unwrap();
        run(&mut a, &mut b);
        assert!(matches!(failure(&mut b), Some(FailReason::Cancelled)));
        assert!(events(&mut a).contains(&FileEvent::Failed {
            id,
            direction: Direction::Outgoing,
            reason: FailReason::CancelledByPeer
        }));
        assert_eq!(b.cancel(id), Err(FileError::UnknownTransfer));
    }

    #[test]
    fn after_a_reconnect_transfers_resume_by_themselves() {
        let (mut a, mut b) = (
            FileTransfers::new(Limits::default()),
            FileTransfers::new(Limits::default()),
        );
        let data = random_bytes(700_000);
        let id = a
            .offer("x.bin", "application/octet-stream", data.clone())
            .unwrap();
        pump(&mut a, &mut b);
        offered(&mut b);
        b.accept(id).unwrap();
        pump(&mut b, &mut a);
        for _ in 0..25 {
            let frame = a.poll_frame(usize::MAX).unwrap();
            b.handle_frame(frame);
        }
        a.channel_lost();
        b.channel_lost();
        events(&mut a);
        events(&mut b);
        // A new channel opens: no user action on either side.
        a.channel_opened();
        b.channel_opened();
        run(&mut a, &mut b);
        let received = events(&mut b);
        assert!(received.contains(&FileEvent::Resumed {
            id,
            direction: Direction::Incoming,
            bytes: 25 * CHUNK_BYTES as u64
        }));
        assert!(
            !received
                .iter()
                .any(|e| matches!(e, FileEvent::Offered { .. })),
            "no second question to the user"
        );
        assert!(received
            .iter()
            .any(|e| matches!(e, FileEvent::Received { data: d, .. } if *d == data)));
        assert!(events(&mut a).iter().any(|e| matches!(
            e,
            FileEvent::Resumed {
                direction: Direction::Outgoing,
                ..
            }
        )));
    }

    #[test]
    fn an_interrupted_transfer_resumes_from_the_receivers_offset() {
        let (mut a, mut b) = (
            FileTransfers::new(Limits::default()),
            FileTransfers::new(Limits::default()),
        );
        let data = random_bytes(600_000);
        let id = a.offer("video.mp4", "video/mp4", data.clone()).unwrap();
        pump(&mut a, &mut b);
        offered(&mut b);
        b.accept(id).unwrap();
        pump(&mut b, &mut a);
        for _ in 0..20 {
            let frame = a.poll_frame(usize::MAX).unwrap();
            b.handle_frame(frame);
        }
        // The link drops: both sides are told; nothing is presented.
        a.channel_lost();
        b.channel_lost();
        assert!(matches!(
            events(&mut a).as_slice(),
            [
                ..,
                FileEvent::Interrupted {
                    direction: Direction::Outgoing,
                    ..
                }
            ]
        ));
        let held = events(&mut b)
            .into_iter()
            .find_map(|e| match e {
                FileEvent::Interrupted { bytes, .. } => Some(bytes),
                _ => None,
            })
            .unwrap();
        assert_eq!(held, 20 * CHUNK_BYTES as u64);
        // After the reconnect, the sender offers the same id; the receiver, which had accepted,
        // asks for the rest without asking the user again.
        a.offer_with_id(id, "video.mp4", "video/mp4", data.clone())
            .unwrap();
        pump(&mut a, &mut b);
        assert!(events(&mut b).contains(&FileEvent::Resumed {
            id,
            direction: Direction::Incoming,
            bytes: held
        }));
        assert_eq!(
            b.poll_frame(0),
            Some(Frame::Control(Control::Accept { id, offset: held }))
        );
        a.handle_frame(Frame::Control(Control::Accept { id, offset: held }));
        assert!(
            matches!(a.poll_frame(usize::MAX), Some(Frame::Chunk { offset, .. }) if offset == held)
        );
        // Finish (the first chunk above was consumed by the assertion, so hand it over again).
        b.handle_frame(Frame::Chunk {
            id,
            offset: held,
            data: data[held as usize..held as usize + CHUNK_BYTES].to_vec(),
        });
        run(&mut a, &mut b);
        assert!(events(&mut b)
            .iter()
            .any(|e| matches!(e, FileEvent::Received { data: d, .. } if *d == data)));
    }
}
