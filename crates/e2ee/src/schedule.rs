//! The end-to-end key schedule of one participant in a 1:1 call: X25519 key agreement over the
//! peer-to-peer data channel, per-sender base keys per epoch, KIDs and counters, replay windows,
//! rotation and erasure. Sans-IO: `now` and a random number generator are arguments.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::format::{FormatError, MediaFormat};
use crate::in_place::FrameBuffers;
use crate::sas::{commitment, key_hash, transcript_hash, Fingerprint, Sas};
use crate::sframe::{BaseKey, ReceiverKey, SenderKey, Suite};
use crate::wire::{AbortReason, KeyMessage, WireError};

/// KID stream of audio and video frames.
pub const STREAM_MEDIA: u8 = 0;
/// KID stream of data-channel messages.
pub const STREAM_DATA: u8 = 1;

/// The KID of a sender's stream in an epoch.
pub fn kid(sender_tag: u16, stream: u8, epoch: u64) -> u64 {
    (u64::from(sender_tag) << 24) | (u64::from(stream) << 16) | (epoch & 0xffff)
}

/// The tag that names a sender in its KIDs: the first two bytes of SHA-256 of its hello key.
pub fn sender_tag(public_key: &[u8]) -> u16 {
    let digest = Sha256::digest(public_key);
    u16::from_be_bytes([digest[0], digest[1]])
}

/// How the schedule behaves.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// Cipher suite of this sender's keys.
    pub suite: Suite,
    /// Start a new epoch this often.
    pub rotate_every: Duration,
    /// Switch to a new send key this long after announcing it, if not acknowledged sooner.
    pub switch_after: Duration,
    /// How long a receiver keeps a sender's older keys once the newer one is in use.
    pub grace: Duration,
    /// Start a new epoch when a counter reaches this (long before any counter could repeat).
    pub max_counter: u64,
    /// Out-of-order tolerance of the replay check, in counter values (at most 65,536).
    pub replay_window: u64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            suite: Suite::Aes128Gcm,
            rotate_every: Duration::from_secs(600),
            switch_after: Duration::from_secs(1),
            grace: Duration::from_secs(2),
            max_counter: 1 << 32,
            replay_window: 1024,
        }
    }
}

/// Why a frame or key message was refused. Each is counted in [`E2eeStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rejection {
    /// Authentication failed: the frame (or its clear part) was changed, or the key is wrong.
    Tampered,
    /// A frame whose counter was already seen (or is older than the replay window).
    Replayed,
    /// A frame under a KID no key is known for.
    UnknownKid,
    /// A frame under a KID whose key was erased (an old epoch past its grace window).
    ExpiredKid,
    /// A frame too short or malformed for its format.
    Truncated,
    /// A key message from someone other than the participant this connection is with.
    KeyFromStranger,
    /// A key message for an epoch not newer than the last one accepted, or a second hello.
    KeyReplayed,
    /// A key message that could not be parsed, or arrived out of order.
    KeyMalformed,
    /// A key message whose wrapped key did not decrypt (wrong transcript, tampering).
    KeyUndecryptable,
    /// A frame or message that arrived unprotected while end-to-end encryption is on.
    Unprotected,
    /// A hello whose key does not match the sender's commitment: the agreement is aborted.
    CommitmentMismatch,
    /// A hello before the sender's commitment: the agreement is aborted.
    RevealBeforeCommitment,
}

impl Rejection {
    /// Stable snake_case name, for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Rejection::Tampered => "tampered",
            Rejection::Replayed => "replayed",
            Rejection::UnknownKid => "unknown_kid",
            Rejection::ExpiredKid => "expired_kid",
            Rejection::Truncated => "truncated",
            Rejection::KeyFromStranger => "key_from_stranger",
            Rejection::KeyReplayed => "key_replayed",
            Rejection::KeyMalformed => "key_malformed",
            Rejection::KeyUndecryptable => "key_undecryptable",
            Rejection::Unprotected => "unprotected",
            Rejection::CommitmentMismatch => "commitment_mismatch",
            Rejection::RevealBeforeCommitment => "reveal_before_commitment",
        }
    }
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum E2eeError {
    /// An incoming frame or key message was refused (and counted).
    #[error("refused: {}", .0.name())]
    Rejected(Rejection),
    /// No send key yet (keys are still being agreed): drop the frame, never send it clear.
    #[error("no end-to-end key yet")]
    NoSendKey,
    /// Our own frame could not be protected (for example an H.264 frame that is not Annex-B).
    #[error("frame cannot be protected: {0}")]
    Format(FormatError),
}

/// Something the application should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum E2eeEvent {
    /// Both hellos are in: show this SAS to the person.
    SasReady(Sas),
    /// Frames are now protected under this epoch of ours.
    SendKeyActive {
        /// Our epoch.
        epoch: u64,
    },
    /// The remote's key for this epoch is installed.
    ReceiveKeyInstalled {
        /// The remote's epoch.
        epoch: u64,
    },
    /// Key agreement on this connection stopped, and every key of it is erased: tell the person
    /// why. Nothing is protected or opened until the next connection agrees keys.
    Aborted {
        /// Why.
        reason: AbortReason,
        /// Whether the other side stopped it (its `abort` message) rather than this one.
        by_remote: bool,
    },
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleOutput {
    /// Send this text on the `consult-e2ee` data channel.
    Send(String),
    /// Something happened.
    Event(E2eeEvent),
    /// Call [`KeySchedule::handle_timeout`] at this time; `None` if no timer is running.
    Timeout(Option<Instant>),
}

/// Counters of what the schedule did and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct E2eeStats {
    /// Frames and messages protected.
    pub protected: u64,
    /// Frames and messages opened.
    pub opened: u64,
    /// Frames dropped on the sending side because no key was ready.
    pub dropped_without_key: u64,
    /// Refusals by reason.
    pub rejected: std::collections::BTreeMap<Rejection, u64>,
    /// Epochs of ours used so far.
    pub send_epoch: u64,
    /// Latest epoch of the remote's installed.
    pub receive_epoch: u64,
}

impl E2eeStats {
    /// Refusals of one reason.
    pub fn rejected(&self, reason: Rejection) -> u64 {
        self.rejected.get(&reason).copied().unwrap_or(0)
    }
}

/// One connection's key agreement.
struct Connection {
    remote_id: String,
    local_fingerprint: Fingerprint,
    remote_fingerprint: Fingerprint,
    secret: StaticSecret,
    public: PublicKey,
    /// The remote's commitment to its key, once its `commit` arrived (our hello goes then).
    remote_commitment: Option<[u8; 32]>,
    /// Set when the remote's hello arrived and matched its commitment.
    agreed: Option<Agreed>,
    /// Set when either side stopped the agreement: nothing more is accepted on this connection.
    aborted: Option<AbortReason>,
}

struct Agreed {
    remote_tag: u16,
    sas: Sas,
    wrap_out: Zeroizing<[u8; 32]>,
    wrap_in: Zeroizing<[u8; 32]>,
}

struct SendKeys {
    epoch: u64,
    media: SenderKey,
    data: SenderKey,
    media_ctr: u64,
    data_ctr: u64,
    since: Instant,
}

struct PendingSend {
    keys: SendKeys,
    announced_at: Instant,
}

struct ReceiveKey {
    epoch: u64,
    key: ReceiverKey,
    seen: ReplayWindow,
    expires_at: Option<Instant>,
}

/// Counters seen under one key: the highest, and a bitmap of the `size` below it (bit `i` of
/// the ring is counter `i mod capacity`), as in SRTP's replay list.
struct ReplayWindow {
    size: u64,
    highest: Option<u64>,
    bits: Vec<u64>,
}

impl ReplayWindow {
    fn new(size: u64) -> Self {
        let size = size.clamp(1, MAX_REPLAY_WINDOW);
        Self {
            size,
            highest: None,
            bits: vec![0; size.div_ceil(64) as usize + 1],
        }
    }

    fn capacity(&self) -> u64 {
        self.bits.len() as u64 * 64
    }

    fn bit(&self, ctr: u64) -> (usize, u64) {
        let slot = ctr % self.capacity();
        ((slot / 64) as usize, 1 << (slot % 64))
    }

    fn is_fresh(&self, ctr: u64) -> bool {
        match self.highest {
            None => true,
            Some(high) if ctr > high => true,
            Some(high) if high - ctr >= self.size => false,
            Some(_) => {
                let (word, mask) = self.bit(ctr);
                self.bits[word] & mask == 0
            }
        }
    }

    fn record(&mut self, ctr: u64) {
        match self.highest {
            Some(high) if ctr <= high => {}
            Some(high) => {
                // Clear the slots the window moves over (they held counters now too old).
                let cleared = (ctr - high).min(self.capacity());
                for old in (ctr - cleared + 1)..=ctr {
                    let (word, mask) = self.bit(old);
                    self.bits[word] &= !mask;
                }
                self.highest = Some(ctr);
            }
            None => self.highest = Some(ctr),
        }
        let (word, mask) = self.bit(ctr);
        self.bits[word] |= mask;
    }
}

/// The largest replay window accepted in [`ScheduleConfig::replay_window`].
const MAX_REPLAY_WINDOW: u64 = 1 << 16;

/// The key schedule of one participant. See the crate docs for the protocol.
pub struct KeySchedule {
    config: ScheduleConfig,
    local_id: String,
    conn: Option<Connection>,
    /// Our last epoch number (announced or active).
    epoch: u64,
    send: Option<SendKeys>,
    pending: Option<PendingSend>,
    /// A new epoch is wanted (join, leave, timer, counter) at the next chance.
    rotate_wanted: bool,
    receive: HashMap<u64, ReceiveKey>,
    /// Highest remote epoch accepted on this connection.
    remote_epoch: u64,
    /// KIDs whose keys were erased, to tell "expired" from "unknown" (bounded).
    expired: VecDeque<u64>,
    outbox: VecDeque<String>,
    events: VecDeque<E2eeEvent>,
    stats: E2eeStats,
    /// Key messages that arrived before [`KeySchedule::connect`] (the remote's channel can be
    /// faster than ours), handled once it is called.
    early: VecDeque<String>,
    /// Scratch space of the frame formats, kept between frames.
    outgoing: FrameBuffers,
    incoming: FrameBuffers,
}

const EXPIRED_KIDS_REMEMBERED: usize = 64;
/// Key messages kept from before `connect`: a hello and a key, with room to spare.
const EARLY_MESSAGES_KEPT: usize = 4;

impl KeySchedule {
    /// A schedule for the participant `local_id` (its participant id from the signaling service).
    pub fn new(config: ScheduleConfig, local_id: &str) -> Self {
        Self {
            config,
            local_id: local_id.to_owned(),
            conn: None,
            epoch: 0,
            send: None,
            pending: None,
            rotate_wanted: false,
            receive: HashMap::new(),
            remote_epoch: 0,
            expired: VecDeque::new(),
            outgoing: FrameBuffers::default(),
            incoming: FrameBuffers::default(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            stats: E2eeStats::default(),
            early: VecDeque::new(),
        }
    }

    /// A connection to `remote_id` is up (its data channel is open): a fresh X25519 key, and
    /// our commitment to it. Our hello (the key itself) goes once the remote's commitment has
    /// arrived, so neither side can choose its key after seeing the other's. The DTLS
    /// fingerprints are this connection's, local and remote, as the DTLS layer verified them.
    pub fn connect(
        &mut self,
        now: Instant,
        rng: &mut dyn CryptoRngCore,
        remote_id: &str,
        local_fingerprint: Fingerprint,
        remote_fingerprint: Fingerprint,
    ) {
        self.leave(now);
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut());
        let secret = StaticSecret::from(*seed);
        let public = PublicKey::from(&secret);
        let committed = commitment(
            &self.local_id,
            &local_fingerprint,
            &remote_fingerprint,
            public.as_bytes(),
        );
        self.outbox.push_back(
            KeyMessage::Commit {
                participant: self.local_id.clone(),
                commitment: BASE64.encode(committed),
            }
            .encode(),
        );
        self.conn = Some(Connection {
            remote_id: remote_id.to_owned(),
            local_fingerprint,
            remote_fingerprint,
            secret,
            public,
            remote_commitment: None,
            agreed: None,
            aborted: None,
        });
        for text in std::mem::take(&mut self.early) {
            // Refusals are counted like any other.
            let _ = self.handle_message(now, rng, &text);
        }
    }

    /// The remote left or the connection closed: erase every key it knew or gave us. A new
    /// epoch starts when the next connection agrees keys.
    pub fn disconnect(&mut self, now: Instant) {
        self.leave(now);
    }

    fn leave(&mut self, _now: Instant) {
        if self.conn.take().is_some() || self.send.is_some() {
            self.rotate_wanted = true;
        }
        self.send = None;
        self.pending = None;
        let kids: Vec<u64> = self.receive.keys().copied().collect();
        for kid in kids {
            self.erase_receive_key(kid);
        }
        self.remote_epoch = 0;
    }

    fn erase_receive_key(&mut self, kid: u64) {
        if self.receive.remove(&kid).is_some() {
            self.expired.push_back(kid);
            if self.expired.len() > EXPIRED_KIDS_REMEMBERED {
                self.expired.pop_front();
            }
        }
    }

    /// The SAS of this connection, once both hellos are in.
    pub fn sas(&self) -> Option<Sas> {
        self.conn.as_ref()?.agreed.as_ref().map(|a| a.sas)
    }

    /// Why key agreement on this connection stopped, if it did.
    pub fn aborted(&self) -> Option<AbortReason> {
        self.conn.as_ref()?.aborted
    }

    /// Whether frames can be protected now.
    pub fn can_send(&self) -> bool {
        self.send.is_some()
    }

    /// Whether a remote key is installed.
    pub fn can_receive(&self) -> bool {
        !self.receive.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> &E2eeStats {
        &self.stats
    }

    /// Start a new epoch now (for tests and operators; the schedule also rotates by itself).
    pub fn rotate(&mut self, now: Instant, rng: &mut dyn CryptoRngCore) {
        self.rotate_wanted = true;
        self.start_epoch_if_wanted(now, rng);
    }

    /// Count something the transport delivered that the caller refused before it reached the
    /// schedule — a chat or file message in the clear ([`Rejection::Unprotected`]), a binary
    /// message on the key channel ([`Rejection::KeyMalformed`]) — and return the error.
    pub fn note_refused(&mut self, reason: Rejection) -> E2eeError {
        *self.stats.rejected.entry(reason).or_insert(0) += 1;
        E2eeError::Rejected(reason)
    }

    fn reject<T>(&mut self, reason: Rejection) -> Result<T, E2eeError> {
        Err(self.note_refused(reason))
    }

    /// A text message arrived on the `consult-e2ee` channel.
    pub fn handle_message(
        &mut self,
        now: Instant,
        rng: &mut dyn CryptoRngCore,
        text: &str,
    ) -> Result<(), E2eeError> {
        if self.conn.is_none() {
            if self.early.len() >= EARLY_MESSAGES_KEPT {
                return self.reject(Rejection::KeyMalformed);
            }
            self.early.push_back(text.to_owned());
            return Ok(());
        }
        let message = match KeyMessage::decode(text) {
            Ok(message) => message,
            Err(WireError::TooLong | WireError::Malformed(_) | WireError::Version(_)) => {
                return self.reject(Rejection::KeyMalformed)
            }
        };
        if self.conn.as_ref().is_some_and(|c| c.aborted.is_some()) {
            // Nothing more is agreed on a connection either side gave up on.
            return self.reject(Rejection::KeyMalformed);
        }
        match message {
            KeyMessage::Commit {
                participant,
                commitment,
            } => self.handle_commit(&participant, &commitment),
            KeyMessage::Hello {
                participant,
                public_key,
            } => self.handle_hello(now, rng, &participant, &public_key),
            KeyMessage::Key {
                from,
                to,
                epoch,
                suite,
                nonce,
                wrapped,
            } => self.handle_key(now, &from, &to, epoch, suite, &nonce, &wrapped),
            KeyMessage::Ack { from, epoch } => self.handle_ack(now, &from, epoch),
            KeyMessage::Abort { from, reason } => self.handle_abort(&from, reason),
        }
    }

    fn handle_commit(&mut self, participant: &str, committed: &str) -> Result<(), E2eeError> {
        let Some(conn) = self.conn.as_ref() else {
            return self.reject(Rejection::KeyMalformed);
        };
        if participant != conn.remote_id {
            return self.reject(Rejection::KeyFromStranger);
        }
        if conn.remote_commitment.is_some() {
            return self.reject(Rejection::KeyReplayed);
        }
        let Some(committed) = BASE64
            .decode(committed)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        else {
            return self.reject(Rejection::KeyMalformed);
        };
        let hello = KeyMessage::Hello {
            participant: self.local_id.clone(),
            public_key: BASE64.encode(conn.public.as_bytes()),
        }
        .encode();
        if let Some(conn) = self.conn.as_mut() {
            conn.remote_commitment = Some(committed);
        }
        // Their key is fixed now: ours may be revealed.
        self.outbox.push_back(hello);
        Ok(())
    }

    fn handle_abort(&mut self, from: &str, reason: AbortReason) -> Result<(), E2eeError> {
        let Some(conn) = self.conn.as_ref() else {
            return self.reject(Rejection::KeyMalformed);
        };
        if from != conn.remote_id {
            return self.reject(Rejection::KeyFromStranger);
        }
        self.stop_agreement(reason, true);
        Ok(())
    }

    /// We stop the agreement because of `reason`: tell the remote and the application, and
    /// refuse the message that caused it.
    fn abort(&mut self, reason: AbortReason) -> Result<(), E2eeError> {
        self.outbox.push_back(
            KeyMessage::Abort {
                from: self.local_id.clone(),
                reason,
            }
            .encode(),
        );
        self.stop_agreement(reason, false);
        self.reject(match reason {
            AbortReason::CommitmentMismatch => Rejection::CommitmentMismatch,
            AbortReason::RevealBeforeCommitment => Rejection::RevealBeforeCommitment,
        })
    }

    /// Erase every key of this connection and accept nothing more on it.
    fn stop_agreement(&mut self, reason: AbortReason, by_remote: bool) {
        if let Some(conn) = self.conn.as_mut() {
            conn.aborted = Some(reason);
            conn.agreed = None;
        }
        self.send = None;
        self.pending = None;
        let kids: Vec<u64> = self.receive.keys().copied().collect();
        for kid in kids {
            self.erase_receive_key(kid);
        }
        self.events
            .push_back(E2eeEvent::Aborted { reason, by_remote });
    }

    fn handle_hello(
        &mut self,
        now: Instant,
        rng: &mut dyn CryptoRngCore,
        participant: &str,
        public_key: &str,
    ) -> Result<(), E2eeError> {
        let Some(conn) = self.conn.as_ref() else {
            return self.reject(Rejection::KeyMalformed);
        };
        if participant != conn.remote_id {
            return self.reject(Rejection::KeyFromStranger);
        }
        if conn.agreed.is_some() {
            return self.reject(Rejection::KeyReplayed);
        }
        let Some(remote_commitment) = conn.remote_commitment else {
            return self.abort(AbortReason::RevealBeforeCommitment);
        };
        let Some(remote_public) = BASE64
            .decode(public_key)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        else {
            return self.reject(Rejection::KeyMalformed);
        };
        let remote_public = PublicKey::from(remote_public);
        let shared = conn.secret.diffie_hellman(&remote_public);
        if !shared.was_contributory() {
            return self.reject(Rejection::KeyMalformed);
        }
        // Checked from our side: the remote's id, its fingerprint as the sender's, ours as the
        // receiver's. A key chosen after seeing ours, or a commitment from another connection,
        // does not match.
        let expected = commitment(
            &conn.remote_id,
            &conn.remote_fingerprint,
            &conn.local_fingerprint,
            remote_public.as_bytes(),
        );
        if expected != remote_commitment {
            return self.abort(AbortReason::CommitmentMismatch);
        }
        let transcript = transcript_hash(
            &conn.local_fingerprint,
            &conn.remote_fingerprint,
            conn.public.as_bytes(),
            remote_public.as_bytes(),
        );
        let keys = key_hash(conn.public.as_bytes(), remote_public.as_bytes());
        let wrap_out = wrap_key(shared.as_bytes(), &keys, &self.local_id, &conn.remote_id);
        let wrap_in = wrap_key(shared.as_bytes(), &keys, &conn.remote_id, &self.local_id);
        let sas = Sas::from_transcript(&transcript);
        if let Some(conn) = self.conn.as_mut() {
            conn.agreed = Some(Agreed {
                remote_tag: sender_tag(remote_public.as_bytes()),
                sas,
                wrap_out,
                wrap_in,
            });
        }
        self.events.push_back(E2eeEvent::SasReady(sas));
        // Someone joined: a new epoch, which only the participants of this call know.
        self.rotate_wanted = true;
        self.start_epoch_if_wanted(now, rng);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_key(
        &mut self,
        now: Instant,
        from: &str,
        to: &str,
        epoch: u64,
        suite: u16,
        nonce: &str,
        wrapped: &str,
    ) -> Result<(), E2eeError> {
        let Some(conn) = self.conn.as_ref() else {
            return self.reject(Rejection::KeyMalformed);
        };
        if from != conn.remote_id || to != self.local_id {
            return self.reject(Rejection::KeyFromStranger);
        }
        let Some(agreed) = conn.agreed.as_ref() else {
            return self.reject(Rejection::KeyMalformed);
        };
        if epoch <= self.remote_epoch {
            return self.reject(Rejection::KeyReplayed);
        }
        let Some(suite) = Suite::from_id(suite) else {
            return self.reject(Rejection::KeyMalformed);
        };
        let (Ok(nonce), Ok(wrapped)) = (BASE64.decode(nonce), BASE64.decode(wrapped)) else {
            return self.reject(Rejection::KeyMalformed);
        };
        if nonce.len() != 12 {
            return self.reject(Rejection::KeyMalformed);
        }
        let aad = key_aad(from, to, epoch, suite);
        let cipher = Aes256Gcm::new_from_slice(agreed.wrap_in.as_ref())
            .map_err(|_| E2eeError::Rejected(Rejection::KeyUndecryptable))?;
        let Ok(base) = cipher.decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &wrapped,
                aad: &aad,
            },
        ) else {
            return self.reject(Rejection::KeyUndecryptable);
        };
        let base = BaseKey::new(base);
        if base.expose().len() != suite.base_key_len() {
            return self.reject(Rejection::KeyMalformed);
        }
        let remote_tag = agreed.remote_tag;
        let mut installed = Vec::new();
        for stream in [STREAM_MEDIA, STREAM_DATA] {
            let id = kid(remote_tag, stream, epoch);
            let Ok(key) = ReceiverKey::new(suite, id, &base) else {
                return self.reject(Rejection::KeyMalformed);
            };
            installed.push((id, key));
        }
        // Older keys of this sender go once the new one is in use, and at the latest once the
        // sender must have switched.
        let deadline = now + self.config.switch_after + self.config.grace;
        for old in self.receive.values_mut() {
            old.expires_at = Some(old.expires_at.map_or(deadline, |t| t.min(deadline)));
        }
        for (id, key) in installed {
            self.receive.insert(
                id,
                ReceiveKey {
                    epoch,
                    key,
                    seen: ReplayWindow::new(self.config.replay_window),
                    expires_at: None,
                },
            );
        }
        self.remote_epoch = epoch;
        self.stats.receive_epoch = epoch;
        self.outbox.push_back(
            KeyMessage::Ack {
                from: self.local_id.clone(),
                epoch,
            }
            .encode(),
        );
        self.events
            .push_back(E2eeEvent::ReceiveKeyInstalled { epoch });
        Ok(())
    }

    fn handle_ack(&mut self, _now: Instant, from: &str, epoch: u64) -> Result<(), E2eeError> {
        let Some(conn) = self.conn.as_ref() else {
            return self.reject(Rejection::KeyMalformed);
        };
        if from != conn.remote_id {
            return self.reject(Rejection::KeyFromStranger);
        }
        match &self.pending {
            Some(pending) if pending.keys.epoch == epoch => {
                self.switch_to_pending();
                Ok(())
            }
            // An ack for the active epoch arriving after the switch timer: harmless.
            _ if self.send.as_ref().is_some_and(|s| s.epoch == epoch) => Ok(()),
            _ => self.reject(Rejection::KeyReplayed),
        }
    }

    fn switch_to_pending(&mut self) {
        if let Some(pending) = self.pending.take() {
            let epoch = pending.keys.epoch;
            // The old send key is dropped (and its base key zeroized) here: forward secrecy.
            self.send = Some(pending.keys);
            self.stats.send_epoch = epoch;
            self.events.push_back(E2eeEvent::SendKeyActive { epoch });
        }
    }

    fn start_epoch_if_wanted(&mut self, now: Instant, rng: &mut dyn CryptoRngCore) {
        if !self.rotate_wanted || self.pending.is_some() {
            return;
        }
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        let Some(agreed) = conn.agreed.as_ref() else {
            return;
        };
        let suite = self.config.suite;
        let mut base = vec![0u8; suite.base_key_len()];
        rng.fill_bytes(&mut base);
        let base = BaseKey::new(base);
        let epoch = self.epoch + 1;
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        let aad = key_aad(&self.local_id, &conn.remote_id, epoch, suite);
        let Ok(cipher) = Aes256Gcm::new_from_slice(agreed.wrap_out.as_ref()) else {
            return;
        };
        let Ok(wrapped) = cipher.encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: base.expose(),
                aad: &aad,
            },
        ) else {
            return;
        };
        let local_tag = sender_tag(conn.public.as_bytes());
        let (Ok(media), Ok(data)) = (
            SenderKey::new(suite, kid(local_tag, STREAM_MEDIA, epoch), &base),
            SenderKey::new(suite, kid(local_tag, STREAM_DATA, epoch), &base),
        ) else {
            return;
        };
        self.outbox.push_back(
            KeyMessage::Key {
                from: self.local_id.clone(),
                to: conn.remote_id.clone(),
                epoch,
                suite: suite.id(),
                nonce: BASE64.encode(nonce),
                wrapped: BASE64.encode(wrapped),
            }
            .encode(),
        );
        self.epoch = epoch;
        self.rotate_wanted = false;
        self.pending = Some(PendingSend {
            keys: SendKeys {
                epoch,
                media,
                data,
                media_ctr: 0,
                data_ctr: 0,
                since: now,
            },
            announced_at: now,
        });
    }

    /// Run the timers due at `now`: switch to an announced key, rotate, erase old keys.
    pub fn handle_timeout(&mut self, now: Instant, rng: &mut dyn CryptoRngCore) {
        if let Some(pending) = &self.pending
            && now >= pending.announced_at + self.config.switch_after
        {
            self.switch_to_pending();
        }
        // While an epoch waits for its acknowledgement the timer has done its work already.
        if let (Some(send), None) = (&self.send, &self.pending)
            && now >= send.since + self.config.rotate_every
        {
            self.rotate_wanted = true;
        }
        self.start_epoch_if_wanted(now, rng);
        let expired: Vec<u64> = self
            .receive
            .iter()
            .filter(|(_, k)| k.expires_at.is_some_and(|t| now >= t))
            .map(|(kid, _)| *kid)
            .collect();
        for kid in expired {
            self.erase_receive_key(kid);
        }
    }

    /// The next message to send, event, or when to call [`KeySchedule::handle_timeout`].
    pub fn poll_output(&mut self) -> ScheduleOutput {
        if let Some(text) = self.outbox.pop_front() {
            return ScheduleOutput::Send(text);
        }
        if let Some(event) = self.events.pop_front() {
            return ScheduleOutput::Event(event);
        }
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if let Some(pending) = &self.pending {
            consider(pending.announced_at + self.config.switch_after);
        }
        if let (Some(send), None) = (&self.send, &self.pending) {
            consider(send.since + self.config.rotate_every);
        }
        for key in self.receive.values() {
            if let Some(t) = key.expires_at {
                consider(t);
            }
        }
        ScheduleOutput::Timeout(next)
    }

    /// Protect an outgoing frame of `format` (audio, video or a data message) under our
    /// current key. [`E2eeError::NoSendKey`] until keys are agreed: drop the frame.
    pub fn protect(
        &mut self,
        now: Instant,
        format: MediaFormat,
        frame: &[u8],
    ) -> Result<Vec<u8>, E2eeError> {
        let mut out = Vec::new();
        self.protect_into(now, format, frame, &mut out)?;
        Ok(out)
    }

    /// Like [`KeySchedule::protect`], into `out` (its contents replaced): with a buffer kept from
    /// frame to frame, nothing is allocated per frame.
    pub fn protect_into(
        &mut self,
        _now: Instant,
        format: MediaFormat,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), E2eeError> {
        let max = self.config.max_counter;
        let announced = self.pending.is_some();
        let Some(send) = self.send.as_mut() else {
            self.stats.dropped_without_key += 1;
            return Err(E2eeError::NoSendKey);
        };
        let (key, ctr) = if format == MediaFormat::Data {
            (&send.data, &mut send.data_ctr)
        } else {
            (&send.media, &mut send.media_ctr)
        };
        self.outgoing
            .protect(format, key, *ctr, frame, out)
            .map_err(E2eeError::Format)?;
        *ctr += 1;
        if *ctr >= max && !announced {
            // Rotate long before the counter could wrap: the next timeout starts a new epoch
            // (unless one is already announced, which is that new key).
            self.rotate_wanted = true;
        }
        self.stats.protected += 1;
        Ok(())
    }

    /// Open an incoming frame of `format`. Refusals are counted; the frame must be dropped.
    pub fn unprotect(
        &mut self,
        now: Instant,
        format: MediaFormat,
        data: &[u8],
    ) -> Result<Vec<u8>, E2eeError> {
        let mut frame = data.to_vec();
        let opened = self.unprotect_in_place(now, format, &mut frame)?;
        frame.truncate(opened.end);
        frame.drain(..opened.start);
        Ok(frame)
    }

    /// Like [`KeySchedule::unprotect`], where the frame lies: the original frame is then
    /// `data[range]`. Nothing is allocated or copied for Opus, VP8 and data frames. On a refusal
    /// `data` may be partly decrypted: drop it.
    pub fn unprotect_in_place(
        &mut self,
        now: Instant,
        format: MediaFormat,
        data: &mut [u8],
    ) -> Result<std::ops::Range<usize>, E2eeError> {
        let header = match self.incoming.parse(format, data) {
            Ok(header) => header,
            Err(_) => return self.reject(Rejection::Truncated),
        };
        let id = header.kid;
        let key = match self.receive.get_mut(&id) {
            Some(k) if k.expires_at.is_some_and(|t| now >= t) => {
                self.erase_receive_key(id);
                None
            }
            key => key,
        };
        let Some(key) = key else {
            let reason = if self.expired.contains(&id) {
                Rejection::ExpiredKid
            } else {
                Rejection::UnknownKid
            };
            return self.reject(reason);
        };
        if !key.seen.is_fresh(header.ctr) {
            return self.reject(Rejection::Replayed);
        }
        let opened = match self.incoming.open(&key.key, data) {
            Ok(range) => range,
            Err(FormatError::Sframe(_)) => return self.reject(Rejection::Tampered),
            Err(_) => return self.reject(Rejection::Truncated),
        };
        key.seen.record(header.ctr);
        let epoch = key.epoch;
        // The sender uses this epoch now: its older keys have a short grace left.
        if self.receive.len() > 1 {
            let deadline = now + self.config.grace;
            for old in self.receive.values_mut().filter(|k| k.epoch < epoch) {
                old.expires_at = Some(old.expires_at.map_or(deadline, |t| t.min(deadline)));
            }
        }
        self.stats.opened += 1;
        Ok(opened)
    }

    /// Protect a data-channel message (chat text or a binary file frame).
    pub fn protect_message(
        &mut self,
        now: Instant,
        binary: bool,
        bytes: &[u8],
    ) -> Result<Vec<u8>, E2eeError> {
        let mut plain = Vec::with_capacity(bytes.len() + 1);
        plain.push(u8::from(binary));
        plain.extend_from_slice(bytes);
        self.protect(now, MediaFormat::Data, &plain)
    }

    /// Open a protected data-channel message: whether it was binary, and its bytes.
    pub fn unprotect_message(
        &mut self,
        now: Instant,
        bytes: &[u8],
    ) -> Result<(bool, Vec<u8>), E2eeError> {
        let mut plain = self.unprotect(now, MediaFormat::Data, bytes)?;
        match plain.first() {
            Some(kind @ (0 | 1)) => {
                let binary = *kind == 1;
                plain.remove(0);
                Ok((binary, plain))
            }
            _ => self.reject(Rejection::Truncated),
        }
    }
}

fn wrap_key(shared: &[u8], key_hash: &[u8; 32], from: &str, to: &str) -> Zeroizing<[u8; 32]> {
    let mut okm = Zeroizing::new([0u8; 32]);
    let info = format!("consult-e2ee/wrap/v1|{from}|{to}");
    // 32 bytes are far below HKDF-SHA256's limit, so expand cannot fail.
    let _ = Hkdf::<Sha256>::new(Some(key_hash), shared).expand(info.as_bytes(), okm.as_mut());
    okm
}

fn key_aad(from: &str, to: &str, epoch: u64, suite: Suite) -> Vec<u8> {
    format!("consult-e2ee/key/v1|{from}|{to}|{epoch}|{}", suite.id()).into_bytes()
}

/// The pieces of the key agreement the shared test vectors pin down.
#[doc(hidden)]
pub mod vectors {
    use super::*;

    /// `(public key, transcript hash, SAS, wrap key from→to)` for a given secret and peer.
    pub fn agreement(
        secret: [u8; 32],
        remote_public: [u8; 32],
        local_fingerprint: &Fingerprint,
        remote_fingerprint: &Fingerprint,
        from: &str,
        to: &str,
    ) -> ([u8; 32], [u8; 32], Sas, [u8; 32]) {
        let secret = StaticSecret::from(secret);
        let public = PublicKey::from(&secret);
        let remote = PublicKey::from(remote_public);
        let shared = secret.diffie_hellman(&remote);
        let transcript = transcript_hash(
            local_fingerprint,
            remote_fingerprint,
            public.as_bytes(),
            remote.as_bytes(),
        );
        let wrap = wrap_key(
            shared.as_bytes(),
            &key_hash(public.as_bytes(), remote.as_bytes()),
            from,
            to,
        );
        (
            *public.as_bytes(),
            transcript,
            Sas::from_transcript(&transcript),
            *wrap,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    fn fp(byte: u8) -> Fingerprint {
        Fingerprint::new("sha-256", vec![byte; 32])
    }

    /// Two schedules with a perfect data channel between them.
    struct Pair {
        a: KeySchedule,
        b: KeySchedule,
        /// Every key message that went from b to a, for replay tests.
        b_to_a: Vec<String>,
    }

    impl Pair {
        fn new(config: ScheduleConfig, now: Instant) -> Self {
            let mut a = KeySchedule::new(config.clone(), "doctor");
            let mut b = KeySchedule::new(config, "patient");
            a.connect(now, &mut OsRng, "patient", fp(1), fp(2));
            b.connect(now, &mut OsRng, "doctor", fp(2), fp(1));
            let mut pair = Self {
                a,
                b,
                b_to_a: Vec::new(),
            };
            pair.shuttle(now);
            pair
        }

        fn shuttle(&mut self, now: Instant) {
            loop {
                let mut moved = false;
                while let ScheduleOutput::Send(m) = self.a.poll_output() {
                    self.b.handle_message(now, &mut OsRng, &m).unwrap();
                    moved = true;
                }
                while let ScheduleOutput::Send(m) = self.b.poll_output() {
                    self.a.handle_message(now, &mut OsRng, &m).unwrap();
                    self.b_to_a.push(m);
                    moved = true;
                }
                if !moved {
                    break;
                }
            }
        }

        fn tick(&mut self, now: Instant) {
            self.a.handle_timeout(now, &mut OsRng);
            self.b.handle_timeout(now, &mut OsRng);
            self.shuttle(now);
        }
    }

    fn a_to_b(pair: &mut Pair, now: Instant, frame: &[u8]) -> Result<Vec<u8>, E2eeError> {
        let sealed = pair.a.protect(now, MediaFormat::Opus, frame)?;
        pair.b.unprotect(now, MediaFormat::Opus, &sealed)
    }

    #[test]
    fn both_sides_agree_keys_and_show_the_same_sas() {
        let now = Instant::now();
        let mut pair = Pair::new(ScheduleConfig::default(), now);
        assert!(pair.a.sas().is_some());
        assert_eq!(pair.a.sas(), pair.b.sas());
        assert!(pair.a.can_send() && pair.b.can_send());
        assert_eq!(a_to_b(&mut pair, now, b"hello").unwrap(), b"hello");
        let sealed = pair.b.protect(now, MediaFormat::Opus, b"back").unwrap();
        assert_eq!(
            pair.a.unprotect(now, MediaFormat::Opus, &sealed).unwrap(),
            b"back"
        );
        let msg = pair.a.protect_message(now, false, b"chat").unwrap();
        assert_eq!(
            pair.b.unprotect_message(now, &msg).unwrap(),
            (false, b"chat".to_vec())
        );
        assert_eq!(pair.a.stats().send_epoch, 1);
    }

    /// Carry every message both ways until both are quiet (events stay queued); what each
    /// side refused.
    fn exchange(a: &mut KeySchedule, b: &mut KeySchedule, now: Instant) -> Vec<E2eeError> {
        let mut refused = Vec::new();
        loop {
            let mut moved = false;
            while let Some(m) = a.outbox.pop_front() {
                refused.extend(b.handle_message(now, &mut OsRng, &m).err());
                moved = true;
            }
            while let Some(m) = b.outbox.pop_front() {
                refused.extend(a.handle_message(now, &mut OsRng, &m).err());
                moved = true;
            }
            if !moved {
                return refused;
            }
        }
    }

    /// The events a schedule has queued (its messages are left in place).
    fn events_of(x: &mut KeySchedule) -> Vec<E2eeEvent> {
        let events: Vec<E2eeEvent> = x.events.drain(..).collect();
        events
    }

    fn next_message(x: &mut KeySchedule) -> String {
        x.outbox.pop_front().expect("a message to send")
    }

    #[test]
    fn a_commitment_that_arrives_before_connect_is_kept_until_then() {
        let now = Instant::now();
        let mut a = KeySchedule::new(ScheduleConfig::default(), "doctor");
        let mut b = KeySchedule::new(ScheduleConfig::default(), "patient");
        a.connect(now, &mut OsRng, "patient", fp(1), fp(2));
        let commit = next_message(&mut a);
        assert!(commit.contains(r#""type":"commit""#), "{commit}");
        b.handle_message(now, &mut OsRng, &commit).unwrap();
        b.connect(now, &mut OsRng, "doctor", fp(2), fp(1));
        // b commits, then reveals at once: a's commitment is in.
        assert!(next_message(&mut b).contains(r#""type":"commit""#));
        let hello = next_message(&mut b);
        assert!(hello.contains(r#""type":"hello""#), "{hello}");
        a.handle_message(now, &mut OsRng, &hello)
            .expect_err("a has no commitment from b yet");
        assert_eq!(
            a.aborted(),
            Some(AbortReason::RevealBeforeCommitment),
            "a hello ahead of its commitment is refused (the channel is ordered: never by accident)"
        );
        // The same order, delivered properly, agrees.
        let mut a = KeySchedule::new(ScheduleConfig::default(), "doctor");
        let mut b = KeySchedule::new(ScheduleConfig::default(), "patient");
        a.connect(now, &mut OsRng, "patient", fp(1), fp(2));
        b.handle_message(now, &mut OsRng, &next_message(&mut a))
            .unwrap();
        b.connect(now, &mut OsRng, "doctor", fp(2), fp(1));
        assert!(exchange(&mut a, &mut b, now).is_empty());
        assert!(a.sas().is_some());
        assert_eq!(a.sas(), b.sas());
        assert!(a.can_send() && b.can_send());
        // Not an unbounded buffer: a flood before connect is refused.
        let mut c = KeySchedule::new(ScheduleConfig::default(), "x");
        for _ in 0..EARLY_MESSAGES_KEPT {
            c.handle_message(now, &mut OsRng, "{}").unwrap();
        }
        assert!(c.handle_message(now, &mut OsRng, "{}").is_err());
    }

    #[test]
    fn malformed_hellos_and_keys_out_of_order_are_refused_and_agreement_still_works() {
        let now = Instant::now();
        let mut a = KeySchedule::new(ScheduleConfig::default(), "doctor");
        let mut b = KeySchedule::new(ScheduleConfig::default(), "patient");
        a.connect(now, &mut OsRng, "patient", fp(1), fp(2));
        b.connect(now, &mut OsRng, "doctor", fp(2), fp(1));
        // b's commitment reaches a (a reveals in return, held back here).
        a.handle_message(now, &mut OsRng, &next_message(&mut b))
            .unwrap();
        let hello = |key: &[u8]| {
            KeyMessage::Hello {
                participant: "patient".into(),
                public_key: BASE64.encode(key),
            }
            .encode()
        };
        let reject = |r| Err(E2eeError::Rejected(r));
        // Too short, not base64, and a low-order point (a shared secret of zeros).
        assert_eq!(
            a.handle_message(now, &mut OsRng, &hello(&[7; 31])),
            reject(Rejection::KeyMalformed)
        );
        let not_base64 = hello(&[7; 32]).replace(r#""public_key":""#, r#""public_key":"!"#);
        assert_eq!(
            a.handle_message(now, &mut OsRng, &not_base64),
            reject(Rejection::KeyMalformed)
        );
        assert_eq!(
            a.handle_message(now, &mut OsRng, &hello(&[0; 32])),
            reject(Rejection::KeyMalformed)
        );
        // A key or an ack before any hello.
        let early_key = KeyMessage::Key {
            from: "patient".into(),
            to: "doctor".into(),
            epoch: 1,
            suite: 4,
            nonce: BASE64.encode([0u8; 12]),
            wrapped: BASE64.encode([0u8; 32]),
        };
        assert_eq!(
            a.handle_message(now, &mut OsRng, &early_key.encode()),
            reject(Rejection::KeyMalformed)
        );
        let early_ack = KeyMessage::Ack {
            from: "patient".into(),
            epoch: 1,
        };
        assert_eq!(
            a.handle_message(now, &mut OsRng, &early_ack.encode()),
            reject(Rejection::KeyReplayed)
        );
        assert_eq!(a.stats().rejected(Rejection::KeyMalformed), 4);
        assert!(a.sas().is_none(), "nothing was agreed from bad input");
        assert_eq!(
            a.aborted(),
            None,
            "a malformed key is no attempt at another key"
        );
        // The real hello still works afterwards.
        assert!(exchange(&mut a, &mut b, now).is_empty());
        assert_eq!(a.sas(), b.sas());
        assert!(a.can_send() && a.can_receive());
    }

    #[test]
    fn nothing_is_sent_before_keys_are_agreed() {
        let now = Instant::now();
        let mut a = KeySchedule::new(ScheduleConfig::default(), "doctor");
        assert_eq!(
            a.protect(now, MediaFormat::Opus, b"x"),
            Err(E2eeError::NoSendKey)
        );
        a.connect(now, &mut OsRng, "patient", fp(1), fp(2));
        assert_eq!(
            a.protect(now, MediaFormat::Opus, b"x"),
            Err(E2eeError::NoSendKey)
        );
        assert_eq!(a.stats().dropped_without_key, 2);
    }

    #[test]
    fn bad_frames_are_refused_counted_and_the_call_goes_on() {
        let now = Instant::now();
        let mut pair = Pair::new(ScheduleConfig::default(), now);
        let sealed = pair
            .a
            .protect(now, MediaFormat::Opus, b"frame one")
            .unwrap();
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 0x40;
        let reject = |r| Err(E2eeError::Rejected(r));
        assert_eq!(
            pair.b.unprotect(now, MediaFormat::Opus, &tampered),
            reject(Rejection::Tampered)
        );
        assert_eq!(
            pair.b.unprotect(now, MediaFormat::Opus, &sealed[..10]),
            reject(Rejection::Truncated)
        );
        assert_eq!(
            pair.b.unprotect(now, MediaFormat::Opus, &[]),
            reject(Rejection::Truncated)
        );
        assert!(pair.b.unprotect(now, MediaFormat::Opus, &sealed).is_ok());
        assert_eq!(
            pair.b.unprotect(now, MediaFormat::Opus, &sealed),
            reject(Rejection::Replayed)
        );
        // A frame under a KID nobody announced.
        let stranger = SenderKey::new(
            Suite::Aes128Gcm,
            kid(0x7777, 0, 1),
            &BaseKey::new(vec![1; 16]),
        )
        .unwrap();
        let forged = crate::format::protect(MediaFormat::Opus, &stranger, 0, b"forged").unwrap();
        assert_eq!(
            pair.b.unprotect(now, MediaFormat::Opus, &forged),
            reject(Rejection::UnknownKid)
        );
        // Data messages under the media key (a different KID) are not data messages.
        let media = pair
            .a
            .protect(now, MediaFormat::Opus, b"\x00not chat")
            .unwrap();
        assert!(
            pair.b.unprotect_message(now, &media).is_ok(),
            "KID decides the key"
        );
        // And the call continues.
        assert_eq!(a_to_b(&mut pair, now, b"frame two").unwrap(), b"frame two");
        let stats = pair.b.stats();
        for (reason, count) in [
            (Rejection::Tampered, 1),
            (Rejection::Truncated, 2),
            (Rejection::Replayed, 1),
            (Rejection::UnknownKid, 1),
        ] {
            assert_eq!(stats.rejected(reason), count, "{reason:?}");
        }
    }

    #[test]
    fn out_of_order_frames_within_the_window_open_and_old_ones_do_not() {
        let now = Instant::now();
        let mut pair = Pair::new(
            ScheduleConfig {
                replay_window: 8,
                ..Default::default()
            },
            now,
        );
        let frames: Vec<Vec<u8>> = (0..20)
            .map(|i| pair.a.protect(now, MediaFormat::Opus, &[i]).unwrap())
            .collect();
        assert!(pair
            .b
            .unprotect(now, MediaFormat::Opus, &frames[10])
            .is_ok());
        assert!(
            pair.b.unprotect(now, MediaFormat::Opus, &frames[5]).is_ok(),
            "5 is within 8 of 10"
        );
        assert_eq!(
            pair.b.unprotect(now, MediaFormat::Opus, &frames[1]),
            Err(E2eeError::Rejected(Rejection::Replayed)),
            "1 is older than the window"
        );
        assert!(pair
            .b
            .unprotect(now, MediaFormat::Opus, &frames[19])
            .is_ok());
    }

    #[test]
    fn the_replay_window_matches_a_set_of_seen_counters() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        for size in [1u64, 8, 64, 100, 1024] {
            let mut window = ReplayWindow::new(size);
            let mut seen = std::collections::BTreeSet::new();
            let mut high = 0u64;
            for _ in 0..5000 {
                // Mostly forward, sometimes far ahead, sometimes back into or past the window.
                let ctr = match rng.gen_range(0..10) {
                    0 => high + rng.gen_range(1..3000),
                    1..=3 => high.saturating_sub(rng.gen_range(0..size * 2 + 1)),
                    _ => high + rng.gen_range(0..3),
                };
                let expected =
                    seen.is_empty() || ctr > high || (high - ctr < size && !seen.contains(&ctr));
                assert_eq!(
                    window.is_fresh(ctr),
                    expected,
                    "size {size} ctr {ctr} high {high}"
                );
                if expected {
                    window.record(ctr);
                    seen.insert(ctr);
                    high = high.max(ctr);
                }
            }
        }
    }

    #[test]
    fn key_messages_from_strangers_or_replayed_from_an_earlier_epoch_are_refused() {
        let now = Instant::now();
        let mut pair = Pair::new(ScheduleConfig::default(), now);
        let old_key = pair
            .b_to_a
            .iter()
            .find(|m| m.contains(r#""type":"key""#))
            .cloned()
            .unwrap();
        // Rotate b: epoch 2.
        pair.b.rotate(now, &mut OsRng);
        pair.shuttle(now);
        assert_eq!(pair.a.stats().receive_epoch, 2);
        let reject = |r| Err(E2eeError::Rejected(r));
        assert_eq!(
            pair.a.handle_message(now, &mut OsRng, &old_key),
            reject(Rejection::KeyReplayed)
        );
        let stranger = old_key.replace(r#""from":"patient""#, r#""from":"mallory""#);
        assert_eq!(
            pair.a.handle_message(now, &mut OsRng, &stranger),
            reject(Rejection::KeyFromStranger)
        );
        let misaddressed = old_key.replace(r#""to":"doctor""#, r#""to":"someone-else""#);
        assert_eq!(
            pair.a.handle_message(now, &mut OsRng, &misaddressed),
            reject(Rejection::KeyFromStranger)
        );
        let stranger_hello = KeyMessage::Hello {
            participant: "mallory".into(),
            public_key: BASE64.encode([9u8; 32]),
        };
        assert_eq!(
            pair.a
                .handle_message(now, &mut OsRng, &stranger_hello.encode()),
            reject(Rejection::KeyFromStranger)
        );
        // A key with a future epoch but a changed wrapped key does not decrypt.
        let forged = old_key.replace(r#""epoch":1"#, r#""epoch":9"#);
        assert_eq!(
            pair.a.handle_message(now, &mut OsRng, &forged),
            reject(Rejection::KeyUndecryptable)
        );
        assert_eq!(
            pair.a.handle_message(now, &mut OsRng, "{]"),
            reject(Rejection::KeyMalformed)
        );
        // None of it disturbed the call.
        let sealed = pair
            .b
            .protect(now, MediaFormat::Opus, b"still here")
            .unwrap();
        assert_eq!(
            pair.a.unprotect(now, MediaFormat::Opus, &sealed).unwrap(),
            b"still here"
        );
        assert_eq!(pair.a.stats().receive_epoch, 2);
    }

    #[test]
    fn rotation_by_timer_keeps_frames_flowing_and_erases_the_old_key_after_the_grace() {
        let start = Instant::now();
        let config = ScheduleConfig::default();
        let mut pair = Pair::new(config.clone(), start);
        let old = pair
            .a
            .protect(start, MediaFormat::Opus, b"epoch 1")
            .unwrap();
        let t = start + config.rotate_every;
        // The timer fires before the acknowledgement arrives, and again while it is awaited.
        pair.a.handle_timeout(t, &mut OsRng);
        pair.a
            .handle_timeout(t + Duration::from_millis(10), &mut OsRng);
        pair.tick(t);
        pair.tick(t + Duration::from_millis(20));
        assert_eq!(
            pair.a.stats().send_epoch,
            2,
            "one rotation per expiry, switched on ack"
        );
        // Every frame after the switch opens: no gap.
        for i in 0..50u8 {
            assert_eq!(a_to_b(&mut pair, t, &[i]).unwrap(), [i]);
        }
        // A late frame of the old epoch still opens within the grace window...
        assert!(pair
            .b
            .unprotect(t + Duration::from_millis(500), MediaFormat::Opus, &old)
            .is_ok());
        // ...and is refused as expired after it.
        let after = t + config.grace + Duration::from_millis(1);
        pair.tick(after);
        assert_eq!(
            pair.b.unprotect(after, MediaFormat::Opus, &old),
            Err(E2eeError::Rejected(Rejection::ExpiredKid))
        );
    }

    #[test]
    fn a_counter_reaching_its_limit_starts_a_new_epoch() {
        let now = Instant::now();
        let mut pair = Pair::new(
            ScheduleConfig {
                max_counter: 10,
                ..Default::default()
            },
            now,
        );
        for i in 0..10u8 {
            a_to_b(&mut pair, now, &[i]).unwrap();
        }
        pair.a.handle_timeout(now, &mut OsRng); // announces epoch 2
        for i in 0..5u8 {
            // Frames still go out under epoch 1 past the limit until the switch.
            a_to_b(&mut pair, now, &[i]).unwrap();
        }
        pair.tick(now);
        pair.tick(now);
        assert_eq!(
            pair.a.stats().send_epoch,
            2,
            "one rotation for the limit, not two"
        );
        assert_eq!(a_to_b(&mut pair, now, b"fresh").unwrap(), b"fresh");
    }

    #[test]
    fn leave_and_join_start_a_new_epoch_and_erase_the_old_keys() {
        let now = Instant::now();
        let mut pair = Pair::new(ScheduleConfig::default(), now);
        let before = pair.a.protect(now, MediaFormat::Opus, b"before").unwrap();
        pair.a.disconnect(now);
        pair.b.disconnect(now);
        assert!(
            !pair.a.can_send(),
            "no key the departed peer knew is used again"
        );
        assert_eq!(
            pair.b.unprotect(now, MediaFormat::Opus, &before),
            Err(E2eeError::Rejected(Rejection::ExpiredKid))
        );
        pair.a.connect(now, &mut OsRng, "patient", fp(1), fp(3));
        pair.b.connect(now, &mut OsRng, "doctor", fp(3), fp(1));
        pair.shuttle(now);
        assert_eq!(pair.a.stats().send_epoch, 2);
        assert_eq!(a_to_b(&mut pair, now, b"after").unwrap(), b"after");
    }

    #[test]
    fn a_man_in_the_middle_with_its_own_certificates_is_caught_by_the_commitments() {
        // The service swapped both DTLS fingerprints and relays every key message unchanged:
        // each side sees the middle's certificate as the remote one. Each commitment names the
        // certificates its sender saw, so neither side's check passes: both stop, no key is
        // agreed, and both are told why.
        let now = Instant::now();
        let mut a = KeySchedule::new(ScheduleConfig::default(), "doctor");
        let mut b = KeySchedule::new(ScheduleConfig::default(), "patient");
        a.connect(now, &mut OsRng, "patient", fp(1), fp(0xee));
        b.connect(now, &mut OsRng, "doctor", fp(2), fp(0xef));
        let refused = exchange(&mut a, &mut b, now);
        assert!(refused.contains(&E2eeError::Rejected(Rejection::CommitmentMismatch)));
        for x in [&mut a, &mut b] {
            assert_eq!(x.aborted(), Some(AbortReason::CommitmentMismatch));
            assert!(x.sas().is_none() && !x.can_send() && !x.can_receive());
            assert!(events_of(x).contains(&E2eeEvent::Aborted {
                reason: AbortReason::CommitmentMismatch,
                by_remote: false
            }));
        }
    }

    /// A connected pair whose commitments have crossed; each holds the other's hello unsent.
    fn committed_pair(now: Instant) -> (KeySchedule, KeySchedule) {
        let mut a = KeySchedule::new(ScheduleConfig::default(), "doctor");
        let mut b = KeySchedule::new(ScheduleConfig::default(), "patient");
        a.connect(now, &mut OsRng, "patient", fp(1), fp(2));
        b.connect(now, &mut OsRng, "doctor", fp(2), fp(1));
        let (ca, cb) = (next_message(&mut a), next_message(&mut b));
        b.handle_message(now, &mut OsRng, &ca).unwrap();
        a.handle_message(now, &mut OsRng, &cb).unwrap();
        (a, b)
    }

    #[test]
    fn a_reveal_that_differs_from_its_commitment_stops_both_sides_with_the_reason() {
        let now = Instant::now();
        let (mut a, mut b) = committed_pair(now);
        // b's real hello is replaced by one with another key (chosen after seeing a's, say).
        let _real = next_message(&mut b);
        let other = StaticSecret::random_from_rng(OsRng);
        let forged = KeyMessage::Hello {
            participant: "patient".into(),
            public_key: BASE64.encode(PublicKey::from(&other).as_bytes()),
        };
        assert_eq!(
            a.handle_message(now, &mut OsRng, &forged.encode()),
            Err(E2eeError::Rejected(Rejection::CommitmentMismatch))
        );
        assert_eq!(a.aborted(), Some(AbortReason::CommitmentMismatch));
        assert_eq!(a.stats().rejected(Rejection::CommitmentMismatch), 1);
        // a told b: b stops too and says it was the other side.
        let _a_hello = next_message(&mut a);
        let abort = next_message(&mut a);
        assert_eq!(
            abort,
            r#"{"v":2,"type":"abort","from":"doctor","reason":"commitment_mismatch"}"#
        );
        b.handle_message(now, &mut OsRng, &abort).unwrap();
        assert_eq!(b.aborted(), Some(AbortReason::CommitmentMismatch));
        assert!(events_of(&mut b).contains(&E2eeEvent::Aborted {
            reason: AbortReason::CommitmentMismatch,
            by_remote: true
        }));
        // Nothing more is agreed on this connection, not even the right hello.
        assert_eq!(
            a.handle_message(now, &mut OsRng, &_real),
            Err(E2eeError::Rejected(Rejection::KeyMalformed))
        );
        assert!(a.sas().is_none() && !a.can_send());
        assert_eq!(
            a.protect(now, MediaFormat::Opus, b"x"),
            Err(E2eeError::NoSendKey)
        );
        // A new connection starts afresh.
        a.connect(now, &mut OsRng, "patient", fp(1), fp(2));
        b.connect(now, &mut OsRng, "doctor", fp(2), fp(1));
        assert!(exchange(&mut a, &mut b, now).is_empty());
        assert_eq!(a.aborted(), None);
        assert!(a.sas().is_some() && a.sas() == b.sas());
    }

    #[test]
    fn a_commitment_replayed_from_another_call_never_matches() {
        // The middle recorded b's commitment and hello from an earlier call (other
        // certificates) and plays them to a in this one.
        let now = Instant::now();
        let mut earlier_a = KeySchedule::new(ScheduleConfig::default(), "doctor");
        let mut earlier_b = KeySchedule::new(ScheduleConfig::default(), "patient");
        earlier_a.connect(now, &mut OsRng, "patient", fp(7), fp(8));
        earlier_b.connect(now, &mut OsRng, "doctor", fp(8), fp(7));
        let old_commit = next_message(&mut earlier_b);
        earlier_b
            .handle_message(now, &mut OsRng, &next_message(&mut earlier_a))
            .unwrap();
        let old_hello = next_message(&mut earlier_b);

        let mut a = KeySchedule::new(ScheduleConfig::default(), "doctor");
        a.connect(now, &mut OsRng, "patient", fp(1), fp(2));
        a.handle_message(now, &mut OsRng, &old_commit).unwrap();
        assert_eq!(
            a.handle_message(now, &mut OsRng, &old_hello),
            Err(E2eeError::Rejected(Rejection::CommitmentMismatch))
        );
        assert_eq!(a.aborted(), Some(AbortReason::CommitmentMismatch));
        assert!(a.sas().is_none());
    }

    #[test]
    fn a_hello_before_a_commitment_stops_the_agreement() {
        let now = Instant::now();
        let mut a = KeySchedule::new(ScheduleConfig::default(), "doctor");
        a.connect(now, &mut OsRng, "patient", fp(1), fp(2));
        let early_hello = KeyMessage::Hello {
            participant: "patient".into(),
            public_key: BASE64
                .encode(PublicKey::from(&StaticSecret::random_from_rng(OsRng)).as_bytes()),
        };
        assert_eq!(
            a.handle_message(now, &mut OsRng, &early_hello.encode()),
            Err(E2eeError::Rejected(Rejection::RevealBeforeCommitment))
        );
        assert_eq!(a.aborted(), Some(AbortReason::RevealBeforeCommitment));
        let _commit = next_message(&mut a);
        assert_eq!(
            next_message(&mut a),
            r#"{"v":2,"type":"abort","from":"doctor","reason":"reveal_before_commitment"}"#
        );
        assert!(events_of(&mut a).contains(&E2eeEvent::Aborted {
            reason: AbortReason::RevealBeforeCommitment,
            by_remote: false
        }));
    }

    #[test]
    fn second_commitments_strangers_and_strangers_aborts_are_refused_and_agreement_goes_on() {
        let now = Instant::now();
        let (mut a, mut b) = committed_pair(now);
        let reject = |r| Err(E2eeError::Rejected(r));
        let commit = |who: &str, bytes: &[u8]| {
            KeyMessage::Commit {
                participant: who.into(),
                commitment: BASE64.encode(bytes),
            }
            .encode()
        };
        assert_eq!(
            a.handle_message(now, &mut OsRng, &commit("patient", &[1; 32])),
            reject(Rejection::KeyReplayed),
            "a second commitment cannot replace the first"
        );
        assert_eq!(
            a.handle_message(now, &mut OsRng, &commit("mallory", &[1; 32])),
            reject(Rejection::KeyFromStranger)
        );
        let mut fresh = KeySchedule::new(ScheduleConfig::default(), "doctor");
        fresh.connect(now, &mut OsRng, "patient", fp(1), fp(2));
        assert_eq!(
            fresh.handle_message(now, &mut OsRng, &commit("patient", &[1; 31])),
            reject(Rejection::KeyMalformed)
        );
        let stranger_abort = KeyMessage::Abort {
            from: "mallory".into(),
            reason: AbortReason::CommitmentMismatch,
        };
        assert_eq!(
            a.handle_message(now, &mut OsRng, &stranger_abort.encode()),
            reject(Rejection::KeyFromStranger)
        );
        assert_eq!(a.aborted(), None);
        assert!(exchange(&mut a, &mut b, now).is_empty());
        assert!(a.sas().is_some() && a.sas() == b.sas());
        assert!(a.can_send() && b.can_send());
    }

    #[test]
    fn a_middle_that_substitutes_its_own_key_agreement_shows_differing_sas() {
        // The middle runs its own schedules towards each side: it gets keys, but each side's
        // transcript names the middle's public key and certificate, so the SAS differ.
        let now = Instant::now();
        let mut a = KeySchedule::new(ScheduleConfig::default(), "doctor");
        let mut m_a = KeySchedule::new(ScheduleConfig::default(), "patient");
        let mut m_b = KeySchedule::new(ScheduleConfig::default(), "doctor");
        let mut b = KeySchedule::new(ScheduleConfig::default(), "patient");
        a.connect(now, &mut OsRng, "patient", fp(1), fp(0xee));
        m_a.connect(now, &mut OsRng, "doctor", fp(0xee), fp(1));
        m_b.connect(now, &mut OsRng, "patient", fp(0xef), fp(2));
        b.connect(now, &mut OsRng, "doctor", fp(2), fp(0xef));
        for _ in 0..3 {
            for (x, y) in [(&mut a, &mut m_a), (&mut m_b, &mut b)] {
                while let ScheduleOutput::Send(msg) = x.poll_output() {
                    y.handle_message(now, &mut OsRng, &msg).unwrap();
                }
                while let ScheduleOutput::Send(msg) = y.poll_output() {
                    x.handle_message(now, &mut OsRng, &msg).unwrap();
                }
            }
        }
        assert_eq!((a.aborted(), b.aborted()), (None, None));
        assert_eq!(a.sas(), m_a.sas());
        assert_eq!(b.sas(), m_b.sas());
        assert_ne!(
            a.sas(),
            b.sas(),
            "the people comparing their strings notice"
        );
    }
}
