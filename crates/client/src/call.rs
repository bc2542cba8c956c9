//! The decisions of a call, sans-IO: perfect negotiation (the impolite side offers at once,
//! the polite one after a pause unless an offer came first; glare), candidates held back until
//! the first description, ICE restart when the connection stays down, keyframe gating and
//! keyframe requests, the recorder link's lifecycle, and the warning about a remote that never
//! agrees end-to-end keys.
//!
//! Like [`Peer`], a [`Call`] has no sockets, tasks or clock: signaling messages, datagrams and
//! time go in, [`Call::poll_output`] says what to send where, what to tell the application, and
//! when to call again. The session's tokio loop ([`crate::session`]) owns the WebSocket, the
//! UDP sockets, TURN and the codecs around it; the tests drive two calls over a simulated
//! network on a virtual clock.
//!
//! ```text
//!   handle_signal(now, ServerMessage) ─┐                 ┌─► Signal(ClientMessage)  → WebSocket
//!   handle_receive(now, datagram)  ────┼─► Call ─poll──► ├─► Transmit               → UDP / TURN
//!   handle_timeout(now)  ──────────────┤   ├─ Peer       ├─► Event(SessionEvent)    → application
//!   write_video / write_audio  ────────┘   └─ recorder   ├─► Frame(EncodedFrame)    → decoder
//!                                               link     ├─► Bitrate(bps)           → encoder
//!                                                        └─► Timeout(at)
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use consult_e2ee::{E2eeEvent, ScheduleConfig};
use consult_peer::file_transfer::FileTransfers;
use consult_peer::{
    E2eeSetup, EncodedFrame, Output, Peer, PeerConfig, PeerError, PeerEvent,
    RemoteDescriptionOutcome, TrackKind, Transmit, VideoCodec, VideoSource,
};
use consult_proto::signal::{
    ClientMessage, IceCandidate, ParticipantRole, RecordingState, SdpKind, ServerMessage,
    SessionDescription,
};
use uuid::Uuid;

use crate::events::{ReceiveMode, SessionEvent};
use crate::recorder_link::{RecorderLink, RecordingTarget};

/// How long after connecting the remote may take to start key agreement before we say so.
const E2EE_AGREEMENT_WARNING: Duration = Duration::from_secs(10);
/// Keyframe requests closer together than this are merged (a lost request is repeated).
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(250);
/// After a remote description that leaves something unnegotiated, offer again this soon.
const RENEGOTIATION_DELAY: Duration = Duration::from_millis(50);
/// The heartbeat until the service says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// How far ahead to wake when nothing is due.
const IDLE_WAKE: Duration = Duration::from_secs(3600);
/// A datagram no connection claims yet is kept this long, and tried again as connections learn
/// their remote addresses (in a group, a DTLS first flight can arrive a moment before its
/// connection knows the address it comes from; dropped, it costs a one-second retransmission).
const UNCLAIMED_KEEP: Duration = Duration::from_secs(2);

/// A connection that fails sooner than this after it was made is replaced only after this long
/// (one failing at once again and again would otherwise be replaced without end).
const LINK_RETRY_PAUSE: Duration = Duration::from_secs(2);
/// At most this many unclaimed datagrams are kept (the oldest go first).
const UNCLAIMED_MAX: usize = 64;

/// What the call decides with: the parts of the session's configuration it needs.
#[derive(Debug, Clone)]
pub(crate) struct CallConfig {
    /// The WebRTC peer (tracks, codecs, limits); politeness and E2EE are set per connection.
    pub peer: PeerConfig,
    /// Whether received video is decoded (then it is gated on keyframes) or handed over.
    pub receive: ReceiveMode,
    /// Restart ICE when the connection stays down this long.
    pub ice_restart_after: Duration,
    /// A polite peer waits this long for the other side's offer before offering itself.
    pub polite_offer_delay: Duration,
    /// End-to-end encryption: `None` follows the consultation.
    pub e2ee: Option<bool>,
    /// Key-schedule timers and limits.
    pub e2ee_schedule: ScheduleConfig,
    /// The video encoder's target; bandwidth estimates are clamped to a tenth to twice this.
    pub video_bitrate_bps: u32,
}

/// A connection that came up and has been down for less than this is repaired by an ICE
/// restart when signaling comes back; one down for longer is made again.
const REPAIR_BY_RESTART: Duration = Duration::from_secs(10);

/// The local addresses a new connection offers as candidates.
#[derive(Debug, Clone, Default)]
pub(crate) struct LocalCandidates {
    /// Host candidates (one per bound UDP socket).
    pub host: Vec<SocketAddr>,
    /// Server-reflexive candidates: (mapped address, the local base it maps).
    pub reflexive: Vec<(SocketAddr, SocketAddr)>,
    /// Relayed candidates: (relayed address on the TURN server, the local socket to it).
    pub relayed: Vec<(SocketAddr, SocketAddr)>,
    /// Offer relayed candidates only.
    pub relay_only: bool,
}

/// What the call wants done.
#[derive(Debug)]
pub(crate) enum CallOutput {
    /// Send this on the signaling connection (queue it while the connection is down).
    Signal(ClientMessage),
    /// Send this datagram from its source address.
    Transmit(Transmit),
    /// Tell the application.
    Event(SessionEvent),
    /// A received frame to decode (in [`ReceiveMode::Decoded`], video only once decodable) or
    /// to hand over as it is (in [`ReceiveMode::Encoded`]).
    Frame {
        /// Who sent it.
        from: Uuid,
        /// The frame.
        frame: EncodedFrame,
    },
    /// Set the video encoder's bitrate to this (bits per second).
    Bitrate(u32),
    /// Nothing more until this time, a signaling message or a datagram.
    Timeout(Instant),
}

/// Why the call is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallEnd {
    /// Declined, ended, or replaced by another connection (the application was told).
    Finished,
    /// The service refused us with a fatal error.
    Rejected {
        /// The error code.
        code: String,
        /// What it said.
        message: String,
    },
}

/// Whether received video can be decoded: after a codec change, a loss or a decode error,
/// nothing but a keyframe.
#[derive(Debug, Default)]
struct KeyframeGate {
    codec: Option<VideoCodec>,
    decodable: bool,
}

impl KeyframeGate {
    /// Whether to decode this frame (false: drop it and ask for a keyframe).
    fn admit(&mut self, codec: VideoCodec, frame: &EncodedFrame) -> bool {
        if self.codec != Some(codec) {
            self.codec = Some(codec);
            self.decodable = false;
        }
        if !frame.contiguous && !frame.keyframe {
            self.decodable = false;
        }
        frame.keyframe || self.decodable
    }
}

/// The connection to one other participant, and what the call decides about it.
struct Link {
    peer: Peer,
    timeout: Instant,
    /// Candidates held back until our first description (browsers refuse them before).
    pending_candidates: Vec<String>,
    offer_at: Option<Instant>,
    down_since: Option<Instant>,
    /// When the connection came up, to notice a remote that never agrees keys.
    connected_at: Option<Instant>,
    e2ee_warned: bool,
    gate: KeyframeGate,
    /// The same for the screen this participant shares.
    screen_gate: KeyframeGate,
    /// Whether our screen could go on this connection at the last screen frame.
    screen_was_ready: bool,
    last_keyframe_request: Option<Instant>,
    /// The bandwidth estimate of this connection (bits per second).
    bitrate: Option<u64>,
    /// When it was made: its negotiation's steps are logged (debug) as time since then.
    started: Instant,
    /// Who it is with, as the service described them (to start afresh if this one fails).
    who: consult_proto::signal::Peer,
    /// Our video frames sent on this connection, and theirs decoded (for its statistics).
    frames_sent: u64,
    frames_decoded: u64,
}

impl Link {
    /// Their participant id.
    fn remote(&self) -> Uuid {
        self.who.participant_id
    }
}

/// One participant's call: a connection to every other participant (a full mesh: media goes
/// peer to peer, never through the service) and, while the consultation is recorded, the
/// send-only link to the recorder. One encoder feeds every connection.
pub(crate) struct Call {
    config: CallConfig,
    candidates: LocalCandidates,
    now: Instant,
    started: Instant,
    queue: VecDeque<CallOutput>,
    end: Option<CallEnd>,
    // Who we are, from `joined`.
    local_id: Option<Uuid>,
    /// Our politeness toward the doctor (`joined`), for a service that does not say it per peer.
    polite: bool,
    admitted: bool,
    e2ee: bool,
    heartbeat: Duration,
    /// The connections, in the order the participants came.
    links: Vec<Link>,
    /// File transfers of connections that ended, by participant: resumed by the next
    /// connection with that same participant, never with anyone else.
    parked_files: HashMap<Uuid, FileTransfers>,
    /// Datagrams no connection claimed yet: (when, source, local address, bytes).
    unclaimed: VecDeque<(Instant, SocketAddr, SocketAddr, Vec<u8>)>,
    /// Participants whose failed connection is replaced at that time (it failed right away).
    relink_at: Vec<(Instant, consult_proto::signal::Peer)>,
    // Media.
    keyframe_due: bool,
    /// Whether this side shares a screen (every connection carries it).
    screen_shared: bool,
    /// Whether the next screen frame should be a keyframe.
    screen_keyframe_due: bool,
    /// The doctor lets everyone share a screen (else only clinicians' screens are handed over).
    guests_share_screen: bool,
    /// Our role, from `joined`.
    role: Option<ParticipantRole>,
    last_bitrate: Option<u32>,
    audio_rtp: u64,
    frames_encoded: u64,
    frames_decoded: u64,
    // The recorder.
    recorder_id: Option<Uuid>,
    recording: Option<RecordingTarget>,
    recorder: Option<RecorderLink>,
}

impl Call {
    /// A call that has not joined yet.
    pub fn new(config: CallConfig, candidates: LocalCandidates, now: Instant) -> Self {
        Self {
            config,
            candidates,
            now,
            started: now,
            queue: VecDeque::new(),
            end: None,
            local_id: None,
            polite: false,
            admitted: false,
            e2ee: false,
            heartbeat: DEFAULT_HEARTBEAT,
            links: Vec::new(),
            parked_files: HashMap::new(),
            unclaimed: VecDeque::new(),
            relink_at: Vec::new(),
            keyframe_due: true,
            screen_shared: false,
            screen_keyframe_due: false,
            guests_share_screen: false,
            role: None,
            last_bitrate: None,
            audio_rtp: 0,
            frames_encoded: 0,
            frames_decoded: 0,
            recorder_id: None,
            recording: None,
            recorder: None,
        }
    }

    /// Send `ping` at least this often (the service says how often in `joined`).
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Why the call is over, once it is.
    pub fn end(&self) -> Option<&CallEnd> {
        self.end.as_ref()
    }

    /// Whether media flows to at least one other participant.
    pub fn is_connected(&self) -> bool {
        self.links.iter().any(|l| l.peer.is_connected())
    }

    /// The participants media flows with now.
    pub fn connected_peers(&self) -> Vec<Uuid> {
        self.links
            .iter()
            .filter(|l| l.peer.is_connected())
            .map(|l| l.remote())
            .collect()
    }

    /// Every connection (chat, files, key rotation), connected or not.
    pub fn peers_mut(&mut self) -> impl Iterator<Item = (Uuid, &mut Peer)> {
        self.links.iter_mut().map(|l| (l.remote(), &mut l.peer))
    }

    /// The lowest send bandwidth estimate of the connections that are up, bits per second (not
    /// clamped the way the encoder's bitrate is).
    pub fn lowest_send_estimate(&self) -> Option<u64> {
        self.links
            .iter()
            .filter(|l| l.peer.is_connected())
            .filter_map(|l| l.bitrate)
            .min()
    }

    /// The video codec to encode with: the one negotiated on the first connection that is up
    /// (connections with another codec get no video).
    pub fn video_codec(&mut self) -> Option<VideoCodec> {
        self.links
            .iter_mut()
            .filter(|l| l.peer.is_connected())
            .find_map(|l| l.peer.video_codec())
    }

    fn emit(&mut self, event: SessionEvent) {
        self.queue.push_back(CallOutput::Event(event));
    }

    fn warn(&mut self, warning: impl Into<String>) {
        self.emit(SessionEvent::Warning(warning.into()));
    }

    fn signal(&mut self, message: ClientMessage) {
        self.queue.push_back(CallOutput::Signal(message));
    }

    fn link_index(&self, remote: Uuid) -> Option<usize> {
        self.links.iter().position(|l| l.remote() == remote)
    }

    /// Our side of negotiation with `peer`: as the service says per pair, or, from a service
    /// that does not, polite toward the doctor when `joined` said so (and impolite otherwise).
    fn polite_toward(&self, peer: &consult_proto::signal::Peer) -> bool {
        peer.polite || (peer.role == ParticipantRole::Doctor && self.polite)
    }

    /// A message from the signaling service.
    pub fn handle_signal(&mut self, now: Instant, message: ServerMessage) -> Result<(), PeerError> {
        self.now = now;
        match message {
            ServerMessage::Joined {
                participant_id,
                role,
                admitted,
                polite,
                heartbeat_interval_ms,
                peers,
                consultation,
                ..
            } => {
                let same_place = self.local_id == Some(participant_id);
                self.role = Some(role);
                self.set_guests_share_screen(consultation.guests_share_screen);
                self.polite = polite;
                self.admitted = admitted;
                self.local_id = Some(participant_id);
                self.e2ee = self.config.e2ee.unwrap_or(consultation.e2ee);
                self.heartbeat = Duration::from_millis(heartbeat_interval_ms.max(1000));
                self.emit(SessionEvent::Joined {
                    participant_id,
                    admitted,
                    doctor_name: consultation.doctor_name,
                });
                // `joined` lists everyone, and the room's `recording` message follows it.
                self.recorder_is(
                    peers
                        .iter()
                        .find(|p| p.role == ParticipantRole::Recorder)
                        .map(|p| p.participant_id),
                );
                // Whoever is gone from the call went while our signaling was away.
                let present: Vec<Uuid> = peers.iter().map(|p| p.participant_id).collect();
                let gone: Vec<Uuid> = self
                    .links
                    .iter()
                    .map(|l| l.remote())
                    .filter(|r| !present.contains(r))
                    .collect();
                for remote in gone {
                    self.peer_left(remote)?;
                }
                // A connection waiting to be made again is for someone still here, and only
                // while we are admitted.
                self.relink_at
                    .retain(|(_, p)| admitted && present.contains(&p.participant_id));
                // Back on signaling (a reconnect, or the service restarted) in the same place,
                // with a peer still in the call and a connection that came up: media never went
                // through the service, so that connection (and its keys) stays; if it went down
                // lately (our address changed), its ICE restart brings it back. A new peer, a
                // new place, a connection that never came up (its negotiation may have been lost
                // with the old socket) or one down for longer than [`REPAIR_BY_RESTART`] (the
                // other side may have a new connection an ICE restart cannot reach) starts a
                // new one.
                let others = peers
                    .into_iter()
                    .filter(|p| p.role != ParticipantRole::Recorder)
                    .filter(|p| {
                        !(same_place
                            && self.link_index(p.participant_id).is_some_and(|i| {
                                let link = &self.links[i];
                                link.peer.is_connected()
                                    || (link.connected_at.is_some()
                                        && link.down_since.is_none_or(|since| {
                                            self.now.saturating_duration_since(since)
                                                < REPAIR_BY_RESTART
                                        }))
                            }))
                    })
                    .collect();
                self.met(others)?;
                // A kept connection that is down, or was restarting (our address changed), had
                // its offer go with the old socket: restart it now, not when its timer fires.
                if same_place {
                    let down: Vec<Uuid> = self
                        .links
                        .iter()
                        .filter(|l| l.down_since.is_some() && l.connected_at.is_some())
                        .map(Link::remote)
                        .collect();
                    for remote in down {
                        if let Some(i) = self.link_index(remote)
                            && let Err(e) = self.restart_ice(i)
                        {
                            self.link_failed(i, e)?;
                        }
                    }
                    // A kept connection that is up may wait on an answer to an offer that went
                    // with the old socket (a screen's section, say): the same offer again.
                    let unanswered: Vec<(usize, String)> = self
                        .links
                        .iter()
                        .enumerate()
                        .filter(|(_, l)| l.peer.is_connected())
                        .filter_map(|(i, l)| {
                            l.peer.pending_offer_sdp().map(|sdp| (i, sdp.to_owned()))
                        })
                        .collect();
                    for (i, sdp) in unanswered {
                        tracing::debug!(remote = %self.links[i].remote(), "joined again: our unanswered offer again");
                        self.send_description(i, SdpKind::Offer, sdp);
                    }
                }
            }
            ServerMessage::Admitted { peers } => {
                self.admitted = true;
                self.emit(SessionEvent::Admitted);
                self.met(peers)?;
            }
            // The service's recorder: a send-only connection of its own, beside the call.
            ServerMessage::PeerJoined { peer } if peer.role == ParticipantRole::Recorder => {
                self.recorder_is(Some(peer.participant_id));
                self.start_recorder_link()?;
            }
            ServerMessage::PeerLeft { participant_id, .. }
                if self.recorder_id == Some(participant_id) =>
            {
                self.recorder_is(None);
            }
            ServerMessage::Recording {
                state,
                recording_id,
                recording_key,
                ..
            } => {
                let target = match (state, recording_id) {
                    (RecordingState::Recording, Some(recording_id)) => Some(RecordingTarget {
                        recording_id,
                        recording_key,
                    }),
                    _ => None,
                };
                if target != self.recording {
                    self.recorder = None;
                    self.recording = target;
                }
                self.emit(SessionEvent::Recording(state));
                self.start_recorder_link()?;
            }
            ServerMessage::Description { from, description }
                if Some(from) == self.recorder_id && description.kind == SdpKind::Answer =>
            {
                if let Some(link) = &mut self.recorder {
                    match link.peer.handle_remote_answer(&description.sdp) {
                        // A change made while an offer was out goes in the next one.
                        Ok(_) => link.offer_due = link.peer.needs_negotiation(),
                        Err(e) => {
                            tracing::warn!(error = %e, "the recorder's answer does not fit; dropping the link");
                            self.recorder = None;
                        }
                    }
                }
            }
            ServerMessage::Candidate {
                from,
                candidate: Some(candidate),
            } if Some(from) == self.recorder_id => {
                if let Some(link) = &mut self.recorder
                    && let Err(e) = link.peer.add_remote_candidate(&candidate.candidate)
                {
                    tracing::debug!(error = %e, "ignored a recorder candidate");
                }
            }
            ServerMessage::PeerJoined { peer } => {
                self.start_link(&peer)?;
                self.new_epoch_with_everyone_but(peer.participant_id);
            }
            ServerMessage::PeerLeft { participant_id, .. } => {
                self.peer_left(participant_id)?;
            }
            ServerMessage::Description { from, description } => {
                // Someone whose failed connection waits to be made again offers first: make it now.
                if self.link_index(from).is_none()
                    && let Some(who) = self
                        .relink_at
                        .iter()
                        .find(|(_, p)| p.participant_id == from)
                        .map(|(_, p)| p.clone())
                {
                    self.open_link(&who)?;
                }
                if let Some(i) = self.link_index(from) {
                    self.handle_description(i, description)?;
                }
            }
            ServerMessage::Candidate { from, candidate } => {
                let link = self.link_index(from).map(|i| &mut self.links[i]);
                if let (Some(link), Some(candidate)) = (link, candidate)
                    && let Err(e) = link.peer.add_remote_candidate(&candidate.candidate)
                {
                    self.warn(format!("ignored a remote candidate: {e}"));
                }
                // A datagram from that address may have come first.
                self.retry_unclaimed();
            }
            // Back within the grace period (or their socket replaced): whatever was said to them
            // meanwhile (an offer, an answer, candidates) may be lost, so a connection that is
            // not up yet starts its negotiation over (our pending offer, if any, is replaced),
            // and one that is up sends its unanswered offer again.
            ServerMessage::PeerPresence {
                participant_id,
                online: true,
            } => {
                if let Some(i) = self.link_index(participant_id) {
                    if !self.links[i].peer.is_connected() {
                        tracing::debug!(remote = %participant_id, "back online before connecting: offering again");
                        if let Err(e) = self.restart_ice(i) {
                            self.link_failed(i, e)?;
                        }
                    } else if let Some(sdp) = self.links[i].peer.pending_offer_sdp() {
                        tracing::debug!(remote = %participant_id, "back online: our unanswered offer again");
                        let sdp = sdp.to_owned();
                        self.send_description(i, SdpKind::Offer, sdp);
                    }
                }
            }
            ServerMessage::ScreenSharing { guests_allowed } => {
                self.set_guests_share_screen(guests_allowed);
            }
            ServerMessage::Declined {} => {
                self.emit(SessionEvent::Declined);
                self.end = Some(CallEnd::Finished);
            }
            ServerMessage::ConsultationEnded {} => {
                self.emit(SessionEvent::Ended);
                self.end = Some(CallEnd::Finished);
            }
            ServerMessage::Replaced {} => {
                self.warn("another connection took this place");
                self.end = Some(CallEnd::Finished);
            }
            ServerMessage::Error {
                code,
                message,
                fatal,
            } => {
                self.warn(format!("{}: {message}", code.as_str()));
                if fatal {
                    self.end = Some(CallEnd::Rejected {
                        code: code.as_str().into(),
                        message,
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Our addresses changed: `candidates` is the whole new set (an interface came or went, a
    /// relay was allocated or dropped). New candidates are trickled on every connection. When
    /// one we offered is gone, every connection whose path sent from it (or that has no path
    /// yet) restarts ICE at once with the new set, rather than waiting for its checks to time
    /// out, and the recorder link is made again if its path did; the others forget it and go on.
    pub fn set_local_candidates(
        &mut self,
        now: Instant,
        candidates: LocalCandidates,
    ) -> Result<(), PeerError> {
        self.now = now;
        let earlier = std::mem::replace(&mut self.candidates, candidates);
        if self.candidates.keeps_all_of(&earlier) {
            let added = self.candidates.new_since(&earlier);
            if added.is_empty() {
                return Ok(());
            }
            for i in 0..self.links.len() {
                let lines = added.offer(&mut self.links[i].peer)?;
                if self.links[i].offer_at.is_some() {
                    // Our description has not gone yet: they go right after it.
                    self.links[i].pending_candidates.extend(lines);
                } else {
                    let to = self.links[i].remote();
                    for line in lines {
                        self.signal(candidate_message(to, line));
                    }
                }
            }
            if let Some(link) = &mut self.recorder {
                let to = link.recorder;
                let lines = added.offer(&mut link.peer)?;
                for line in lines {
                    self.signal(candidate_message(to, line));
                }
            }
            return Ok(());
        }
        let gone = earlier.new_since(&self.candidates).to_candidates();
        let added = self.candidates.new_since(&earlier);
        // A connection whose path runs through a candidate that went (or that has no path yet)
        // restarts ICE at once. One whose path does not (a relay it never used was lost under a
        // weak link, say) goes on as it is: it forgets what went and learns what came, as for
        // a new candidate, and its media never pauses.
        let path_lost = |peer: &Peer| {
            !peer.is_connected()
                || peer.path_source().is_none_or(|local| {
                    // A pair sends from its local candidate's address; from its base for a
                    // server-reflexive one (whose going means the way out changed).
                    gone.iter().any(|c| {
                        c.addr() == local
                            || (c.kind() == consult_peer::str0m::CandidateKind::ServerReflexive
                                && c.local() == local)
                    })
                })
        };
        tracing::info!("our addresses changed: one we offered went");
        let mut i = 0;
        let mut end = self.links.len();
        while i < end {
            let restarted = (|| -> Result<(), PeerError> {
                let link = &mut self.links[i];
                for candidate in &gone {
                    link.peer.invalidate_local_candidate(candidate);
                }
                let lines = added.offer(&mut link.peer)?;
                if !path_lost(&link.peer) {
                    if link.offer_at.is_some() {
                        link.pending_candidates.extend(lines);
                    } else {
                        let to = link.remote();
                        for line in lines {
                            self.signal(candidate_message(to, line));
                        }
                    }
                    return Ok(());
                }
                tracing::info!(remote = %link.who.participant_id, "its path went: restarting ICE");
                link.down_since = Some(now);
                // The restart's offer carries every local candidate, under its new credentials.
                match link.peer.restart_ice()? {
                    Some(sdp) => {
                        link.pending_candidates.clear();
                        link.offer_at = None;
                        self.send_description(i, SdpKind::Offer, sdp);
                    }
                    None => link.pending_candidates.extend(lines),
                }
                Ok(())
            })();
            match restarted {
                Ok(()) => i += 1,
                Err(e) => {
                    self.link_failed(i, e)?;
                    end -= 1;
                }
            }
        }
        // The recorder link likewise: made again only when its path went.
        if let Some(link) = &mut self.recorder
            && !path_lost(&link.peer)
        {
            for candidate in &gone {
                link.peer.invalidate_local_candidate(candidate);
            }
            let to = link.recorder;
            let lines = added.offer(&mut link.peer)?;
            for line in lines {
                self.signal(candidate_message(to, line));
            }
            return Ok(());
        }
        self.recorder = None;
        self.start_recorder_link()
    }

    /// Connection `i` failed (its peer returned an error): a fresh connection with the same
    /// participant replaces it (its file transfers resume there), and the rest of the call goes
    /// on. Only a failure to make the new one (no local candidate) ends the call.
    fn link_failed(&mut self, i: usize, error: PeerError) -> Result<(), PeerError> {
        let who = self.links[i].who.clone();
        let young = self.now.saturating_duration_since(self.links[i].started) < LINK_RETRY_PAUSE;
        if young {
            // It failed right after it was made: another now would likely fail the same way.
            // Wait a moment (the participant stays in the call; only media with them pauses).
            self.warn(format!(
                "the connection with {} failed again ({error}); trying again shortly",
                who.participant_id
            ));
            if let Err(e) = self.drain_link(i) {
                tracing::debug!(error = %e, "the failed connection said nothing more");
            }
            let mut link = self.links.remove(i);
            self.parked_files
                .insert(who.participant_id, link.peer.take_file_transfers());
            self.relink_at.push((self.now + LINK_RETRY_PAUSE, who));
            return Ok(());
        }
        self.warn(format!(
            "the connection with {} failed ({error}); starting a new one",
            who.participant_id
        ));
        self.open_link(&who)
    }

    /// A participant left for good: their connection goes, its transfers parked.
    fn peer_left(&mut self, remote: Uuid) -> Result<(), PeerError> {
        self.relink_at.retain(|(_, p)| p.participant_id != remote);
        let Some(i) = self.link_index(remote) else {
            return Ok(());
        };
        self.links[i].peer.remote_gone();
        if let Err(e) = self.drain_link(i) {
            tracing::debug!(error = %e, %remote, "the connection of who left failed");
        }
        let mut link = self.links.remove(i);
        self.parked_files
            .insert(remote, link.peer.take_file_transfers());
        self.emit(SessionEvent::PeerLeft {
            participant_id: remote,
        });
        self.update_bitrate();
        self.new_epoch_with_everyone_but(remote);
        Ok(())
    }

    /// Someone joined or left: the keys with everyone else start a new epoch, so that the keys
    /// in use change with the call's membership. (Keys are per pair, so who left never held the
    /// others' keys and who joined gets none of the earlier ones; the new epoch keeps the rule
    /// "a new epoch whenever someone joins or leaves" true of every pair as well.) A connection
    /// still agreeing keys starts with a fresh epoch anyway.
    fn new_epoch_with_everyone_but(&mut self, changed: Uuid) {
        for link in self.links.iter_mut().filter(|l| l.remote() != changed) {
            if link.peer.e2ee_ready() {
                link.peer.e2ee_rotate();
            }
        }
    }

    /// `joined` or `admitted`: the recorder, a connection to every other participant, and the
    /// recorder link.
    fn met(&mut self, peers: Vec<consult_proto::signal::Peer>) -> Result<(), PeerError> {
        if let Some(recorder) = peers.iter().find(|p| p.role == ParticipantRole::Recorder) {
            self.recorder_is(Some(recorder.participant_id));
        }
        for peer in peers.iter().filter(|p| p.role != ParticipantRole::Recorder) {
            self.start_link(peer)?;
        }
        self.start_recorder_link()
    }

    /// A (new) remote participant: a fresh peer connection (replacing any earlier one with
    /// them), our candidates held back, and an offer (right away if impolite, after a pause if
    /// polite).
    fn start_link(&mut self, remote: &consult_proto::signal::Peer) -> Result<(), PeerError> {
        if Some(remote.participant_id) == self.local_id {
            return Ok(());
        }
        self.open_link(remote)?;
        self.emit(SessionEvent::PeerJoined {
            participant_id: remote.participant_id,
            name: remote.name.clone(),
            role: remote.role,
        });
        Ok(())
    }

    /// A fresh connection with `remote`, replacing any earlier one (see [`Call::start_link`]).
    fn open_link(&mut self, remote: &consult_proto::signal::Peer) -> Result<(), PeerError> {
        self.relink_at
            .retain(|(_, p)| p.participant_id != remote.participant_id);
        let polite = self.polite_toward(remote);
        let id = remote.participant_id;
        // Transfers of the previous connection with them resume on the new one.
        if let Some(i) = self.link_index(id) {
            // What it still had to say goes first; a connection that failed says nothing more.
            if let Err(e) = self.drain_link(i) {
                tracing::debug!(error = %e, remote = %id, "the replaced connection failed");
            }
            let mut old = self.links.remove(i);
            self.parked_files.insert(id, old.peer.take_file_transfers());
        }
        let now = self.now;
        let e2ee = match (self.e2ee, self.local_id) {
            (true, Some(local)) => Some(E2eeSetup {
                local_id: local.to_string(),
                remote_id: id.to_string(),
                schedule: self.config.e2ee_schedule.clone(),
            }),
            _ => None,
        };
        let mut peer = Peer::new(
            PeerConfig {
                polite,
                e2ee,
                ..self.config.peer.clone()
            },
            now,
        );
        if let Some(files) = self.parked_files.remove(&id) {
            peer.adopt_file_transfers(files);
        }
        // A screen shared before this connection was made goes on it too.
        peer.share_screen(self.screen_shared);
        self.screen_keyframe_due |= self.screen_shared;
        let pending_candidates = self.candidates.offer(&mut peer)?;
        self.links.push(Link {
            peer,
            timeout: now,
            pending_candidates,
            offer_at: Some(if polite {
                now + self.config.polite_offer_delay
            } else {
                now
            }),
            down_since: None,
            connected_at: None,
            e2ee_warned: false,
            gate: KeyframeGate::default(),
            screen_gate: KeyframeGate::default(),
            screen_was_ready: false,
            last_keyframe_request: None,
            bitrate: None,
            started: now,
            who: remote.clone(),
            frames_sent: 0,
            frames_decoded: 0,
        });
        tracing::debug!(%id, polite, "connection started");
        self.keyframe_due = true;
        Ok(())
    }

    /// Send a description on link `i`, then the candidates held back until now.
    fn send_description(&mut self, i: usize, kind: SdpKind, sdp: String) {
        let to = self.links[i].remote();
        let pending = std::mem::take(&mut self.links[i].pending_candidates);
        self.signal(ClientMessage::Description {
            to,
            description: SessionDescription { kind, sdp },
        });
        for line in pending {
            self.signal(candidate_message(to, line));
        }
    }

    fn make_offer(&mut self, i: usize) -> Result<(), PeerError> {
        let link = &self.links[i];
        tracing::debug!(remote = %link.remote(), after_ms = (self.now - link.started).as_millis(), "offering");
        if let Some(sdp) = self.links[i].peer.create_offer()? {
            self.send_description(i, SdpKind::Offer, sdp);
        }
        Ok(())
    }

    fn restart_ice(&mut self, i: usize) -> Result<(), PeerError> {
        self.warn("connection down: restarting ICE");
        if let Some(sdp) = self.links[i].peer.restart_ice()? {
            self.send_description(i, SdpKind::Offer, sdp);
        }
        Ok(())
    }

    fn handle_description(
        &mut self,
        i: usize,
        description: SessionDescription,
    ) -> Result<(), PeerError> {
        let link = &self.links[i];
        tracing::debug!(remote = %link.remote(), kind = ?description.kind,
            after_ms = (self.now - link.started).as_millis(), "remote description");
        let peer = &mut self.links[i].peer;
        let outcome = match description.kind {
            SdpKind::Offer => peer.handle_remote_offer(&description.sdp),
            SdpKind::Answer | SdpKind::Pranswer => peer.handle_remote_answer(&description.sdp),
            SdpKind::Rollback => {
                peer.handle_remote_rollback();
                return Ok(());
            }
        };
        match outcome {
            Ok(RemoteDescriptionOutcome::Answer(sdp)) => {
                // The remote offered: no need for ours (unless something is still missing).
                self.links[i].offer_at = None;
                self.send_description(i, SdpKind::Answer, sdp);
            }
            Ok(RemoteDescriptionOutcome::Applied) => {}
            Ok(RemoteDescriptionOutcome::IgnoredGlare) => {
                tracing::debug!(remote = %self.links[i].remote(), "glare: the remote offer ignored");
                return Ok(());
            }
            Err(e) => {
                // A bad or incompatible SDP: say so and keep the call.
                self.warn(format!("remote description refused: {e}"));
                return Ok(());
            }
        }
        if self.links[i].peer.needs_negotiation() {
            self.links[i].offer_at = Some(self.now + RENEGOTIATION_DELAY);
        }
        Ok(())
    }

    /// The consultation's recorder is now `recorder`. A recorder that left, or was replaced (its
    /// node died and another node's recorder took over), takes its link and its recording with
    /// it: the next `recording` message (the service sends the room's current one after every
    /// `joined`, and a new recorder's right after it joins) names the recording the new one
    /// makes. A link built for the old recording would send a key the service refuses, and its
    /// answer would not fit the link that replaces it.
    fn recorder_is(&mut self, recorder: Option<Uuid>) {
        if self.recorder_id.is_some() && self.recorder_id != recorder {
            self.recorder = None;
            self.recording = None;
        }
        self.recorder_id = recorder;
    }

    /// Offer the recorder a send-only connection, if one is present, we are admitted, and the
    /// consultation is being recorded; with a zero-knowledge recording, the wrapped key first.
    fn start_recorder_link(&mut self) -> Result<(), PeerError> {
        let (Some(recorder), Some(target), Some(me)) =
            (self.recorder_id, self.recording.clone(), self.local_id)
        else {
            return Ok(());
        };
        if !self.admitted
            || self
                .recorder
                .as_ref()
                .is_some_and(|l| l.recorder == recorder)
        {
            return Ok(());
        }
        let (mut link, key_message) =
            match RecorderLink::new(recorder, me, &target, &self.config.peer, self.now) {
                Ok(made) => made,
                Err(e) => {
                    self.warn(format!("not sending to the recorder: {e}"));
                    return Ok(());
                }
            };
        let candidates = self.candidates.offer(&mut link.peer)?;
        // A screen shared now is recorded too, as its own track.
        link.peer.share_screen(self.screen_shared);
        let Some(offer) = link.peer.create_offer()? else {
            return Ok(());
        };
        if let Some(message) = key_message {
            self.signal(message);
        }
        self.recorder = Some(link);
        self.signal(ClientMessage::Description {
            to: recorder,
            description: SessionDescription {
                kind: SdpKind::Offer,
                sdp: offer,
            },
        });
        for line in candidates {
            self.signal(candidate_message(recorder, line));
        }
        Ok(())
    }

    /// A datagram arrived on one of our addresses: for the recorder link or the connection it
    /// belongs to (the only one, when a datagram fits none).
    pub fn handle_receive(
        &mut self,
        at: Instant,
        source: SocketAddr,
        local: SocketAddr,
        bytes: &[u8],
    ) {
        self.now = self.now.max(at);
        let for_recorder = self
            .recorder
            .as_mut()
            .filter(|link| link.peer.accepts(source, local, bytes));
        if let Some(link) = for_recorder {
            if let Err(e) = link.peer.handle_receive(at, source, local, bytes) {
                tracing::debug!(error = %e, "recorder link dropped a datagram");
            }
            return;
        }
        let index = self
            .links
            .iter()
            .position(|l| l.peer.accepts(source, local, bytes))
            .or((self.links.len() == 1).then_some(0));
        match index.map(|i| &mut self.links[i]) {
            Some(link) => {
                if let Err(e) = link.peer.handle_receive(at, source, local, bytes) {
                    tracing::debug!(error = %e, "dropped a datagram");
                }
                self.retry_unclaimed();
            }
            None => {
                tracing::debug!(%source, "a datagram for no connection yet: kept a moment");
                if self.unclaimed.len() >= UNCLAIMED_MAX {
                    self.unclaimed.pop_front();
                }
                self.unclaimed
                    .push_back((at, source, local, bytes.to_vec()));
            }
        }
    }

    /// Hand the datagrams kept unclaimed to the connections that claim them now; forget those
    /// kept too long.
    fn retry_unclaimed(&mut self) {
        if self.unclaimed.is_empty() {
            return;
        }
        let now = self.now;
        for (at, source, local, bytes) in std::mem::take(&mut self.unclaimed) {
            let claimed = self
                .links
                .iter_mut()
                .find(|l| l.peer.accepts(source, local, &bytes));
            match claimed {
                Some(link) => {
                    if let Err(e) = link.peer.handle_receive(now, source, local, &bytes) {
                        tracing::debug!(error = %e, "dropped a datagram kept unclaimed");
                    }
                }
                None if now.saturating_duration_since(at) < UNCLAIMED_KEEP => {
                    self.unclaimed.push_back((at, source, local, bytes));
                }
                None => tracing::debug!(%source, "a datagram no connection claimed: dropped"),
            }
        }
    }

    /// Time passed: the peers' timers, pending offers, ICE restarts. A connection that fails
    /// is replaced by a fresh one with the same participant; the others go on.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), PeerError> {
        self.now = now;
        // Connections whose replacement waited after failing again.
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.relink_at)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.relink_at = later;
        for (_, who) in due {
            if self.link_index(who.participant_id).is_none() {
                self.open_link(&who)?;
            }
        }
        let mut i = 0;
        // Only the connections there now: a replacement made below waits for the next call.
        let mut end = self.links.len();
        while i < end {
            let mut step = || -> Result<(), PeerError> {
                if self.links[i].timeout <= now {
                    self.links[i].peer.handle_timeout(now)?;
                }
                if self.links[i].offer_at.is_some_and(|at| at <= now) {
                    self.links[i].offer_at = None;
                    self.make_offer(i)?;
                }
                if self.links[i]
                    .down_since
                    .is_some_and(|since| now - since >= self.config.ice_restart_after)
                {
                    self.links[i].down_since = Some(now);
                    self.restart_ice(i)?;
                }
                Ok(())
            };
            match step() {
                Ok(()) => i += 1,
                // The replacement goes to the end; what was after `i` moved down to it.
                Err(e) => {
                    self.link_failed(i, e)?;
                    end -= 1;
                }
            }
        }
        if let Some(link) = self.recorder.as_mut().filter(|l| l.next_timeout <= now)
            && let Err(e) = link.peer.handle_timeout(now)
        {
            tracing::warn!(error = %e, "recorder link failed; dropping it");
            self.recorder = None;
        }
        self.retry_unclaimed();
        Ok(())
    }

    /// The next thing to do; [`CallOutput::Timeout`] when there is nothing until then.
    pub fn poll_output(&mut self) -> Result<CallOutput, PeerError> {
        'again: loop {
            if let Some(output) = self.queue.pop_front() {
                return Ok(output);
            }
            for i in 0..self.links.len() {
                match self.links[i].peer.poll_output() {
                    Ok(Output::Transmit(transmit)) => return Ok(CallOutput::Transmit(transmit)),
                    Ok(Output::Event(event)) => {
                        self.handle_peer_event(i, event);
                        continue 'again;
                    }
                    Ok(Output::Timeout(at)) => self.links[i].timeout = at,
                    Err(e) => {
                        self.link_failed(i, e)?;
                        continue 'again;
                    }
                }
            }
            if let Some(link) = &mut self.recorder {
                match link.peer.poll_output() {
                    Ok(Output::Transmit(transmit)) => return Ok(CallOutput::Transmit(transmit)),
                    // The recorder asks for a keyframe when it joins mid-call (it records
                    // video from one): the one encoder makes it, for the call too.
                    Ok(Output::Event(PeerEvent::KeyframeRequested)) => {
                        self.keyframe_due = true;
                        continue;
                    }
                    Ok(Output::Event(PeerEvent::ScreenKeyframeRequested)) => {
                        self.screen_keyframe_due = true;
                        continue;
                    }
                    // The screen's section comes or goes: offer again (the recorder answers).
                    Ok(Output::Event(PeerEvent::Connected)) | Ok(Output::Timeout(_))
                        if link.offer_due && link.peer.is_connected() =>
                    {
                        link.offer_due = false;
                        let recorder = link.recorder;
                        match link.peer.create_offer() {
                            Ok(Some(sdp)) => self.signal(ClientMessage::Description {
                                to: recorder,
                                description: SessionDescription {
                                    kind: SdpKind::Offer,
                                    sdp,
                                },
                            }),
                            Ok(None) => {}
                            Err(e) => tracing::debug!(error = %e, "no new offer for the recorder"),
                        }
                        continue;
                    }
                    // Otherwise it only answers and never sends media: nothing to tell.
                    Ok(Output::Event(_)) => continue,
                    Ok(Output::Timeout(at)) => link.next_timeout = at,
                    Err(e) => {
                        tracing::warn!(error = %e, "recorder link failed; dropping it");
                        self.recorder = None;
                        continue;
                    }
                }
            }
            return Ok(CallOutput::Timeout(self.next_timeout()));
        }
    }

    fn next_timeout(&self) -> Instant {
        let mut at = self.now + IDLE_WAKE;
        for link in &self.links {
            at = at.min(link.timeout);
            if let Some(offer_at) = link.offer_at {
                at = at.min(offer_at);
            }
            if let Some(since) = link.down_since {
                at = at.min(since + self.config.ice_restart_after);
            }
        }
        if let Some(link) = &self.recorder {
            at = at.min(link.next_timeout);
        }
        for (when, _) in &self.relink_at {
            at = at.min(*when);
        }
        at
    }

    /// Move what link `i` has to say into the queue (before it is replaced or dropped).
    fn drain_link(&mut self, i: usize) -> Result<(), PeerError> {
        loop {
            match self.links[i].peer.poll_output()? {
                Output::Transmit(transmit) => self.queue.push_back(CallOutput::Transmit(transmit)),
                Output::Event(event) => self.handle_peer_event(i, event),
                Output::Timeout(at) => {
                    self.links[i].timeout = at;
                    return Ok(());
                }
            }
        }
    }

    /// Tell the encoder its new target ([`encoder_bitrate`]) when it changed.
    fn update_bitrate(&mut self) {
        let estimates: Vec<Option<u64>> = self
            .links
            .iter()
            .filter(|l| l.peer.is_connected())
            .map(|l| l.bitrate)
            .collect();
        let Some(bps) = encoder_bitrate(self.config.video_bitrate_bps, &estimates) else {
            return;
        };
        if self.last_bitrate != Some(bps) {
            self.last_bitrate = Some(bps);
            self.queue.push_back(CallOutput::Bitrate(bps));
        }
    }

    fn handle_peer_event(&mut self, i: usize, event: PeerEvent) {
        let now = self.now;
        let peer = self.links[i].remote();
        let after_ms = (now - self.links[i].started).as_millis();
        match &event {
            PeerEvent::Connected | PeerEvent::Disconnected | PeerEvent::IceState(_) => {
                tracing::debug!(remote = %peer, after_ms, event = ?event, "connection state");
            }
            _ => {}
        }
        match event {
            PeerEvent::Connected => {
                let link = &mut self.links[i];
                link.down_since = None;
                link.connected_at.get_or_insert(now);
                self.keyframe_due = true;
                self.emit(SessionEvent::Connected { peer });
                self.update_bitrate();
            }
            PeerEvent::Disconnected => {
                self.links[i].down_since.get_or_insert(now);
                self.emit(SessionEvent::Disconnected { peer });
            }
            PeerEvent::IceState(state) => {
                if matches!(
                    state,
                    consult_peer::str0m::IceConnectionState::Connected
                        | consult_peer::str0m::IceConnectionState::Completed
                ) {
                    self.links[i].down_since = None;
                    self.emit(SessionEvent::IceConnected { peer });
                }
            }
            PeerEvent::ChannelOpen { .. } | PeerEvent::ChannelMessage { .. } => {}
            PeerEvent::Chat(text) => self.emit(SessionEvent::Chat { from: peer, text }),
            PeerEvent::ChatRejected(e) => self.emit(SessionEvent::ChatRejected {
                from: peer,
                reason: e.to_string(),
            }),
            PeerEvent::File(event) => self.emit(SessionEvent::File { peer, event }),
            PeerEvent::KeyframeRequested => {
                self.keyframe_due = true;
                self.emit(SessionEvent::KeyframeRequested);
            }
            PeerEvent::ScreenKeyframeRequested => self.screen_keyframe_due = true,
            PeerEvent::BitrateEstimate(bps) => {
                self.links[i].bitrate = Some(bps);
                self.update_bitrate();
            }
            PeerEvent::E2ee(event) => {
                if let E2eeEvent::Aborted { reason, by_remote } = event {
                    // Said once, in words; the "not started" warning would only mislead now.
                    self.links[i].e2ee_warned = true;
                    let whose = if by_remote {
                        "the other side found that our key"
                    } else {
                        "the other side's key"
                    };
                    self.warn(format!(
                        "end-to-end encryption with {peer} stopped: {whose} failed its commitment \
                         check ({}); someone may be in the middle of this call, and no media is \
                         sent or shown on that connection",
                        reason.name()
                    ));
                }
                self.emit(SessionEvent::E2ee { peer, event });
            }
            PeerEvent::Stats(mut stats) => {
                // This connection's: our frames sent on it, theirs decoded.
                let link = &self.links[i];
                stats.frames_encoded = link.frames_sent;
                stats.frames_decoded = link.frames_decoded;
                let silent_remote = link.peer.e2ee_enabled()
                    && link.peer.e2ee_sas().is_none()
                    && link
                        .connected_at
                        .is_some_and(|t| now - t >= E2EE_AGREEMENT_WARNING);
                if silent_remote && !link.e2ee_warned {
                    self.links[i].e2ee_warned = true;
                    self.warn(format!(
                        "{peer} has not started end-to-end encryption: no media is sent to or \
                         shown from them until they do"
                    ));
                }
                self.emit(SessionEvent::Stats { peer, stats });
            }
            PeerEvent::Frame(frame) => self.handle_frame(i, frame),
        }
    }

    fn handle_frame(&mut self, i: usize, frame: EncodedFrame) {
        let from = self.links[i].remote();
        // A screen from someone who may not share one now (only clinicians, unless the doctor
        // lets everyone) is not handed over, as the pages do not show it.
        let clinician = matches!(
            self.links[i].who.role,
            ParticipantRole::Doctor | ParticipantRole::Clinician
        );
        if frame.source == VideoSource::Screen && !clinician && !self.guests_share_screen {
            return;
        }
        if self.config.receive == ReceiveMode::Decoded
            && let TrackKind::Video(codec) = frame.kind
        {
            let link = &mut self.links[i];
            let gate = match frame.source {
                VideoSource::Camera => &mut link.gate,
                VideoSource::Screen => &mut link.screen_gate,
            };
            if !gate.admit(codec, &frame) {
                tracing::debug!(source = ?frame.source, "a frame that cannot be decoded: waiting for a keyframe");
                self.request_keyframe_of(from, frame.source, self.now);
                return;
            }
        }
        self.queue.push_back(CallOutput::Frame { from, frame });
    }

    /// The decoder turned a frame of `from`'s camera or screen into a picture: frames that
    /// follow can be decoded.
    pub fn video_decoded(&mut self, from: Uuid, source: VideoSource) {
        if let Some(i) = self.link_index(from) {
            let link = &mut self.links[i];
            link.frames_decoded += 1;
            match source {
                VideoSource::Camera => link.gate.decodable = true,
                VideoSource::Screen => link.screen_gate.decodable = true,
            }
        }
        self.frames_decoded += 1;
    }

    /// The decoder refused a frame of `from`'s camera or screen: wait for a keyframe, and ask
    /// for one now.
    pub fn video_undecodable(&mut self, from: Uuid, source: VideoSource, now: Instant) {
        if let Some(i) = self.link_index(from) {
            let link = &mut self.links[i];
            match source {
                VideoSource::Camera => link.gate.decodable = false,
                VideoSource::Screen => link.screen_gate.decodable = false,
            }
            link.last_keyframe_request = None;
        }
        self.request_keyframe_of(from, source, now);
    }

    /// Ask `from` for a keyframe of its camera or its screen (merged as below).
    fn request_keyframe_of(&mut self, from: Uuid, source: VideoSource, now: Instant) {
        match source {
            VideoSource::Camera => self.request_keyframe_from(from, now),
            VideoSource::Screen => {
                if let Some(i) = self.link_index(from)
                    && let Err(e) = self.links[i].peer.request_screen_keyframe()
                {
                    tracing::debug!(error = %e, "screen keyframe request failed");
                }
            }
        }
    }

    /// Whether this participant may share a screen now: a clinician always, anyone else while
    /// the doctor allows it.
    pub fn may_share_screen(&self) -> bool {
        matches!(
            self.role,
            Some(ParticipantRole::Doctor | ParticipantRole::Clinician)
        ) || self.guests_share_screen
    }

    /// The doctor's choice changed: a guest's share under way stops when it is taken back.
    fn set_guests_share_screen(&mut self, allowed: bool) {
        self.guests_share_screen = allowed;
        if self.screen_shared && !self.may_share_screen() {
            self.warn("the doctor no longer lets everyone share a screen: sharing stopped");
            self.share_screen(false);
        }
    }

    /// Share a screen with everyone in the call (true), or stop (false): every connection, and
    /// every one made while it is shared, gets a send-only video section of its own for it
    /// (negotiated by the connection's next offer). Frames go with [`Call::write_screen`]. A
    /// guest who may not share now ([`Call::may_share_screen`]) is told so and shares nothing.
    pub fn share_screen(&mut self, on: bool) {
        if on && !self.may_share_screen() {
            self.warn("only clinicians may share a screen, unless the doctor lets everyone");
            return;
        }
        self.screen_shared = on;
        self.screen_keyframe_due = on;
        if let Some(link) = &mut self.recorder {
            link.peer.share_screen(on);
            link.offer_due = link.peer.needs_negotiation();
        }
        for i in 0..self.links.len() {
            self.links[i].peer.share_screen(on);
            if self.links[i].peer.needs_negotiation() && self.links[i].offer_at.is_none() {
                self.links[i].offer_at = Some(self.now);
            }
        }
    }

    /// Whether a screen is shared now.
    pub fn screen_shared(&self) -> bool {
        self.screen_shared
    }

    /// Whether the next screen frame should be a keyframe (sharing began, or someone asked).
    pub fn screen_keyframe_due(&self) -> bool {
        self.screen_keyframe_due
    }

    /// Send an encoded frame of the shared screen (in the camera's codec) to every participant
    /// whose connection has the screen's section negotiated and, while recording, to the
    /// recorder (a track of its own).
    pub fn write_screen(
        &mut self,
        now: Instant,
        codec: VideoCodec,
        data: &[u8],
    ) -> Result<(), PeerError> {
        self.now = self.now.max(now);
        // This frame was made a keyframe if one was due.
        self.screen_keyframe_due = false;
        let rtp_time = ((now - self.started).as_micros() as u64 * 9 / 100) & 0xffff_ffff;
        for link in self.links.iter_mut().filter(|l| l.peer.is_connected()) {
            let ready = link.peer.screen_ready() && link.peer.video_codec() == Some(codec);
            // A connection whose screen section just became ready starts with a keyframe.
            if ready && !link.screen_was_ready {
                self.screen_keyframe_due = true;
            }
            link.screen_was_ready = ready;
            if !ready {
                continue;
            }
            let remote = link.remote();
            if let Err(e) = link.peer.write_screen(now, rtp_time, codec, data) {
                tracing::debug!(error = %e, %remote, "a screen frame not sent on one connection");
            }
        }
        // The recorder's copy of the screen never ends the call: a frame it cannot take (its
        // section renegotiating) is dropped.
        if let Some(link) = &mut self.recorder
            && let Err(e) = link.write_video(now, rtp_time, codec, VideoSource::Screen, data)
        {
            tracing::debug!(error = %e, "a screen frame not sent to the recorder");
        }
        Ok(())
    }

    /// Ask every participant for a keyframe (merged per connection, as below).
    pub fn request_keyframe(&mut self, now: Instant) {
        for remote in self.links.iter().map(|l| l.remote()).collect::<Vec<_>>() {
            self.request_keyframe_from(remote, now);
        }
    }

    /// Ask `from` for a keyframe, unless we did less than 250 ms ago.
    pub fn request_keyframe_from(&mut self, from: Uuid, now: Instant) {
        self.now = self.now.max(now);
        let Some(i) = self.link_index(from) else {
            return;
        };
        let link = &mut self.links[i];
        if link
            .last_keyframe_request
            .is_some_and(|last| now.saturating_duration_since(last) < KEYFRAME_REQUEST_INTERVAL)
        {
            return;
        }
        link.last_keyframe_request = Some(now);
        if let Err(e) = link.peer.request_keyframe() {
            tracing::debug!(error = %e, "keyframe request failed");
        }
    }

    /// Whether the next video frame should be a keyframe (a connection came up, or someone
    /// asked).
    pub fn keyframe_due(&self) -> bool {
        self.keyframe_due
    }

    /// The session encoded a video frame (a keyframe if one was due).
    pub fn video_encoded(&mut self) {
        self.keyframe_due = false;
        self.frames_encoded += 1;
    }

    /// Send the camera's frames without pacing on every connection, or paced again (audio only,
    /// see `Peer::set_camera_unpaced`).
    pub fn set_camera_unpaced(&mut self, unpaced: bool) {
        for link in &mut self.links {
            link.peer.set_camera_unpaced(unpaced);
        }
    }

    /// Send each datagram of the next video frame written ([`Call::write_video`]) `copies`
    /// times on every connection (a picture in audio only, see `Peer::copy_next_video_frame`).
    pub fn copy_next_video_frame(&mut self, copies: u8) {
        for link in &mut self.links {
            link.peer.copy_next_video_frame(copies);
        }
    }

    /// Send an encoded video frame to every participant media flows with (whose connection
    /// negotiated this codec) and, while recording, to the recorder. Nothing is sent before a
    /// connection is up.
    pub fn write_video(
        &mut self,
        now: Instant,
        codec: VideoCodec,
        data: &[u8],
    ) -> Result<(), PeerError> {
        self.now = self.now.max(now);
        let rtp_time = ((now - self.started).as_micros() as u64 * 9 / 100) & 0xffff_ffff;
        let mut sent = false;
        for link in self.links.iter_mut().filter(|l| l.peer.is_connected()) {
            // A connection without video, or with another codec, gets none of this one.
            if link.peer.video_codec() != Some(codec) {
                continue;
            }
            // One connection that cannot take a frame does not stop the others.
            let remote = link.remote();
            if let Err(e) = link.peer.write_video(now, rtp_time, codec, data) {
                tracing::debug!(error = %e, %remote, "a video frame not sent on one connection");
                continue;
            }
            link.frames_sent += 1;
            sent = true;
        }
        if sent && let Some(link) = &mut self.recorder {
            survivable(link.write_video(now, rtp_time, codec, VideoSource::Camera, data))?;
        }
        Ok(())
    }

    /// A packet of silence (`samples` long) the encoder said need not be sent (DTX): the RTP
    /// clock moves on as if it had been, so receivers see a gap in time, not a jump in delay.
    pub fn skip_audio(&mut self, samples: usize) {
        if self.is_connected() {
            self.audio_rtp = (self.audio_rtp + samples as u64) & 0xffff_ffff;
        }
    }

    /// Send a packet of Opus (20 ms, or 40 or 60 in audio only) to every participant media flows
    /// with and, while recording, to the recorder. The next packet's RTP time is this one's
    /// plus the samples it holds (20 ms for what does not say).
    pub fn write_audio(&mut self, now: Instant, packet: &[u8]) -> Result<(), PeerError> {
        self.now = self.now.max(now);
        if !self.is_connected() {
            return Ok(());
        }
        for link in self.links.iter_mut().filter(|l| l.peer.is_connected()) {
            // One connection that cannot take audio (none negotiated) does not stop the others.
            let remote = link.remote();
            if let Err(e) = link.peer.write_audio(now, self.audio_rtp, packet) {
                tracing::debug!(error = %e, %remote, "an audio packet not sent on one connection");
            }
        }
        if let Some(link) = &mut self.recorder {
            survivable(link.write_audio(now, self.audio_rtp, packet))?;
        }
        let samples = consult_codec::opus::packet_samples(packet)
            .unwrap_or(consult_codec::opus::FRAME_SAMPLES);
        self.audio_rtp = (self.audio_rtp + samples as u64) & 0xffff_ffff;
        Ok(())
    }
}

/// The encoder's target, from the configured `target` and the bandwidth estimates of the
/// connections media flows on (`None`: none yet). One encoder feeds every connection, so it
/// follows the lowest estimate, each clamped to a tenth to twice the target; and the upload of
/// all of them together stays within twice the target — each sender's bitrate adapts to how
/// many receive it. `None` until a connection has an estimate.
fn encoder_bitrate(target: u32, estimates: &[Option<u64>]) -> Option<u32> {
    let floor = target / 10;
    let lowest = estimates
        .iter()
        .flatten()
        .map(|bps| {
            u32::try_from(*bps)
                .unwrap_or(u32::MAX)
                .clamp(floor, target.saturating_mul(2))
        })
        .min()?;
    let receivers = u32::try_from(estimates.len().max(1)).unwrap_or(u32::MAX);
    let share = (target.saturating_mul(2) / receivers).max(floor);
    Some(lowest.min(share))
}

impl LocalCandidates {
    /// Those in `self` that `earlier` did not have.
    fn new_since(&self, earlier: &Self) -> Self {
        Self {
            host: self
                .host
                .iter()
                .filter(|a| !earlier.host.contains(a))
                .copied()
                .collect(),
            reflexive: self
                .reflexive
                .iter()
                .filter(|a| !earlier.reflexive.contains(a))
                .copied()
                .collect(),
            relayed: self
                .relayed
                .iter()
                .filter(|a| !earlier.relayed.contains(a))
                .copied()
                .collect(),
            relay_only: self.relay_only,
        }
    }

    /// Whether every candidate `earlier` had is still here.
    fn keeps_all_of(&self, earlier: &Self) -> bool {
        earlier.new_since(self).is_empty()
    }

    fn is_empty(&self) -> bool {
        self.host.is_empty() && self.reflexive.is_empty() && self.relayed.is_empty()
    }

    /// As str0m candidates: host and server-reflexive (unless relay-only), and relayed.
    fn to_candidates(&self) -> Vec<consult_peer::str0m::Candidate> {
        use consult_peer::str0m::Candidate;
        let mut candidates = Vec::new();
        if !self.relay_only {
            candidates.extend(
                self.host
                    .iter()
                    .filter_map(|a| Candidate::host(*a, "udp").ok()),
            );
            candidates.extend(self.reflexive.iter().filter_map(|(mapped, base)| {
                Candidate::server_reflexive(*mapped, *base, "udp").ok()
            }));
        }
        candidates.extend(
            self.relayed
                .iter()
                .filter_map(|(relayed, local)| Candidate::relayed(*relayed, *local, "udp").ok()),
        );
        candidates
    }

    /// Add our candidates to a connection: host and server-reflexive (unless relay-only), and
    /// relayed. Returns their SDP lines, to trickle.
    fn offer(&self, peer: &mut Peer) -> Result<Vec<String>, PeerError> {
        Ok(self
            .to_candidates()
            .into_iter()
            .filter_map(|candidate| peer.add_local_candidate(candidate))
            .collect())
    }
}

fn candidate_message(to: Uuid, line: String) -> ClientMessage {
    ClientMessage::Candidate {
        to,
        candidate: Some(IceCandidate {
            candidate: line,
            sdp_mid: None,
            sdp_m_line_index: Some(0),
            username_fragment: None,
        }),
    }
}

/// A media frame that could not be protected is dropped with a log line; the call goes on.
fn survivable(result: Result<(), PeerError>) -> Result<(), PeerError> {
    match result {
        Err(PeerError::E2ee(e)) => {
            tracing::warn!(error = %e, "dropped a frame that could not be protected");
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod group_tests;
