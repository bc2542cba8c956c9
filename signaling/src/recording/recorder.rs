//! The recorder: a receive-only participant built on the media core.
//!
//! It takes a place in the consultation's room like anyone else (everyone sees it in the
//! participant list), answers each participant's send-only offer with its own peer connection
//! and UDP socket, and writes every encoded frame as it arrives — never decoding, never
//! sending media. Frames are batched into records and sealed into the vault every
//! `recording.chunk_interval` on a writer thread, so a crash loses at most one interval. With
//! end-to-end encryption the frames stay SFrame ciphertext: the recorder holds no key.

use super::candidates;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use consult_peer::{
    EncodedFrame, Output, Peer, PeerConfig, PeerEvent, RemoteDescriptionOutcome, TrackKind,
    VideoCodec, VideoSource,
};
use consult_proto::signal::{
    IceCandidate, ParticipantRole, SdpKind, ServerMessage, SessionDescription,
};
use consult_vault::recording::{Codec, EpochKey, Frame, Record, RecordBatch, Track, TrackRole};
use consult_vault::RecordingWriter;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::rows::{self, RecordingStatus};
use super::StopReason;
use crate::audit::{Action, Actor};
use crate::signal::hub::{Identity, Outbound, RoomInfo};
use crate::state::AppState;

/// Seal a chunk early once this much is batched.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// How often the recorder reads its sockets and runs its peers' timers. Most of what a
/// recording costs the service is fixed per tick and peer (waking, polling str0m, its timers):
/// 20 ms cost 27 % less CPU than 10 ms (`consult load --recorded`). Nothing a receive-only peer
/// does needs finer timing: repair requests and reports go at most 20 ms later, and Chromium's
/// estimate of its path to the recorder stayed above what it sent (1.5–1.7 Mbit/s for
/// 0.48 sent, against 1.3–3.0 at 10 ms).
const RECEIVE_EVERY: Duration = Duration::from_millis(20);
/// Most datagrams read from one socket per tick (a 1080p keyframe burst is a few hundred; the
/// rest waits in the socket for the next tick), so one busy sender cannot hold the others up.
const MAX_DATAGRAMS_PER_TICK: usize = 512;

/// The first receive tick of a recorder starting at `now`: the next multiple of
/// [`RECEIVE_EVERY`] since the first recorder of the process started, so that all recorders tick
/// together.
fn aligned_tick_start(now: Instant) -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| now);
    let period = RECEIVE_EVERY.as_nanos();
    let since = now.saturating_duration_since(epoch).as_nanos();
    u64::try_from(since.div_ceil(period) * period)
        .ok()
        .and_then(|offset| epoch.checked_add(Duration::from_nanos(offset)))
        .unwrap_or(now)
}

/// Ask a sender for a keyframe at most this often while waiting for one.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

enum Sealing {
    Append(Vec<u8>),
    Finish(Vec<u8>),
}

/// What the writer thread did.
struct Sealed {
    chunks: u64,
    finished: bool,
}

/// The writer thread: seals and syncs each batch where it lies (no copy), hands the emptied
/// buffer back for the next batch (`recycled`), and reports the first storage failure.
fn spawn_writer(
    mut writer: RecordingWriter,
    failures: mpsc::UnboundedSender<String>,
) -> (
    std::sync::mpsc::Sender<Sealing>,
    std::sync::mpsc::Receiver<Vec<u8>>,
    std::thread::JoinHandle<Sealed>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<Sealing>();
    let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
    let handle = std::thread::spawn(move || {
        let mut sealed = Sealed {
            chunks: 0,
            finished: false,
        };
        for job in rx {
            let (result, finished) = match job {
                Sealing::Append(mut batch) => {
                    let result = writer.append_in_place(&mut batch);
                    let _ = recycle.send(batch);
                    (result, false)
                }
                Sealing::Finish(batch) => (writer.finish(&batch), true),
            };
            if let Err(e) = result {
                let _ = failures.send(e.to_string());
                break;
            }
            sealed.chunks = writer.chunks();
            if finished {
                sealed.finished = true;
                break;
            }
        }
        sealed
    });
    (tx, recycled, handle)
}

struct RemotePeer {
    peer: Peer,
    socket: UdpSocket,
    /// The socket's batched-receive state (GRO enabled where the kernel has it).
    socket_state: quinn_udp::UdpSocketState,
    local: SocketAddr,
    next_timeout: Instant,
    /// Remote candidates taken so far (at most [`candidates::MAX_REMOTE_CANDIDATES`]).
    candidates_kept: usize,
}

struct TrackState {
    id: u8,
    codec: Codec,
    /// RTP time and recording time (µs) of the frame the timeline is anchored on.
    anchor: Option<(u64, u64)>,
    waiting_for_keyframe: bool,
    last_keyframe_request: Option<Instant>,
}

struct Recorder {
    state: AppState,
    info: RoomInfo,
    me: Uuid,
    recording_id: Uuid,
    roles: HashMap<Uuid, ParticipantRole>,
    /// The doctor lets everyone share a screen (else only clinicians' screens are kept).
    guests_share_screen: bool,
    peers: HashMap<Uuid, RemotePeer>,
    /// Per sender: their audio, their camera and the screen they share, each a track.
    tracks: HashMap<(Uuid, bool, VideoSource), TrackState>,
    next_track: u8,
    batch: RecordBatch,
    started: Instant,
    frames: u64,
}

/// Join the consultation as its recorder and record until told to stop (or the consultation
/// ends). Returns the task, which has sealed the stream and updated the recording's row when it
/// finishes.
pub fn spawn(
    state: AppState,
    info: RoomInfo,
    me: Uuid,
    recording_id: Uuid,
    writer: RecordingWriter,
    stop: oneshot::Receiver<StopReason>,
) -> tokio::task::JoinHandle<()> {
    let (conn, outbound) = state.hub.connection(256);
    if state
        .hub
        .join(
            info.clone(),
            Identity::Recorder { participant_id: me },
            conn,
            state.clock.now(),
            state.config.signaling.heartbeat_interval.as_millis() as u64,
        )
        .is_err()
    {
        // Another node holds the consultation now; its own recorder records it (this
        // recording is closed as interrupted when that node restores the rooms).
        tracing::warn!(consultation = %info.consultation_id, "no recorder here: the consultation moved to another node");
        return tokio::spawn(async {});
    }
    let recorder = Recorder {
        state: state.clone(),
        guests_share_screen: info.guests_share_screen,
        info,
        me,
        recording_id,
        roles: HashMap::new(),
        peers: HashMap::new(),
        tracks: HashMap::new(),
        next_track: 0,
        batch: RecordBatch::default(),
        started: Instant::now(),
        frames: 0,
    };
    tokio::spawn(recorder.run(recording_id, writer, outbound, stop))
}

enum Ending {
    Stop(StopReason),
    Failed(String),
}

impl Recorder {
    async fn run(
        mut self,
        recording_id: Uuid,
        writer: RecordingWriter,
        mut outbound: mpsc::Receiver<Outbound>,
        mut stop: oneshot::Receiver<StopReason>,
    ) {
        let (failures_tx, mut failures) = mpsc::unbounded_channel();
        let (sealing, recycled, sealer) = spawn_writer(writer, failures_tx);
        let mut seal_tick = tokio::time::interval(self.state.config.recording.chunk_interval);
        seal_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The sockets are read on a tick, everything that arrived since at once: a recorder
        // needs no lower latency than this, and waking for each datagram (a few hundred a
        // second per call) was most of what a recording cost the service (perf: the kernel's
        // task switching ahead of everything else). Every recorder ticks at the same instants
        // (`aligned_tick_start`): the runtime wakes once for all of them, not once each.
        let mut receive_tick =
            tokio::time::interval_at(aligned_tick_start(Instant::now()).into(), RECEIVE_EVERY);
        receive_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let ending = loop {
            tokio::select! {
                message = outbound.recv() => match message {
                    Some(Outbound::Message(ServerMessage::ConsultationEnded {}))
                    | Some(Outbound::Close | Outbound::GoingAway)
                    | None => break Ending::Stop(StopReason::Ended),
                    Some(Outbound::Message(message)) => self.handle_signal(message).await,
                },
                // The peers' timers (reports, repair requests, keep-alives, handshake retries)
                // run on the same tick: none needs finer timing than the tick's, and sleeping
                // until each peer's own next timeout woke the task several times between ticks.
                _ = receive_tick.tick() => {
                    self.receive();
                    self.run_timers(Instant::now());
                }
                _ = seal_tick.tick() => {
                    if !self.batch.is_empty() && sealing.send(Sealing::Append(self.batch.take_reusing(recycled.try_recv().ok()))).is_err() {
                        // The writer stopped: its failure arrives on `failures`.
                    }
                }
                Some(problem) = failures.recv() => break Ending::Failed(problem),
                reason = &mut stop => break Ending::Stop(reason.unwrap_or(StopReason::Ended)),
            }
            self.drain();
            if self.batch.len() >= MAX_BATCH_BYTES {
                let _ = sealing.send(Sealing::Append(
                    self.batch.take_reusing(recycled.try_recv().ok()),
                ));
            }
        };
        self.peers.clear();
        if let Ending::Stop(StopReason::ConsentWithdrawn) = ending {
            self.batch.push(&Record::Note {
                at_us: self.started.elapsed().as_micros() as u64,
                text: "consent withdrawn: recording stopped".into(),
            });
        }
        if !matches!(ending, Ending::Failed(_)) {
            let _ = sealing.send(Sealing::Finish(self.batch.take()));
        }
        drop(sealing);
        let sealed = tokio::task::spawn_blocking(move || sealer.join())
            .await
            .ok()
            .and_then(Result::ok);
        // A failure reported while finishing counts too.
        let ending = match failures.try_recv() {
            Ok(problem) => Ending::Failed(problem),
            Err(_) => ending,
        };
        let state = self.state.clone();
        let consultation_id = self.info.consultation_id;
        if let Some(departure) = state.hub.leave(consultation_id, self.me)
            && let Err(e) = crate::invites::depart(&state, &departure).await
        {
            tracing::error!(
                error = format!("{e:#}"),
                "could not record the recorder leaving"
            );
        }
        let (status, note) = match &ending {
            Ending::Stop(StopReason::Ended) => (RecordingStatus::Complete, None),
            Ending::Stop(StopReason::ConsentWithdrawn) => (
                RecordingStatus::Withdrawn,
                Some("the patient withdrew consent; recording stopped".to_owned()),
            ),
            Ending::Failed(problem) => (
                RecordingStatus::Failed,
                Some(format!(
                    "storage failed while recording ({problem}); kept up to the last sealed chunk"
                )),
            ),
        };
        let (chunks, finished) = sealed.map_or((0, false), |s| (s.chunks, s.finished));
        // What storage holds, torn bytes of a failed write included (a listing on object
        // storage: off the async workers, which a store that hangs must not hold).
        let vault = state.recordings.vault.clone();
        let size = tokio::task::spawn_blocking(move || vault.media_size(recording_id)).await;
        let bytes = match size {
            Ok(Ok(size)) => size.unwrap_or(0),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not size a recording");
                0
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not size a recording");
                0
            }
        };
        let now = state.clock.now();
        if let Err(e) = rows::finish(
            &state.writer,
            recording_id,
            status,
            now,
            chunks,
            bytes,
            note.as_deref(),
        )
        .await
        {
            tracing::error!(
                error = format!("{e:#}"),
                "could not close a recording's row"
            );
        }
        state
            .audit
            .record_or_log(
                now,
                &Actor::System,
                Action::RecordingStopped,
                Some(consultation_id),
                json!({ "recording_id": recording_id, "state": status, "chunks": chunks,
                        "bytes": bytes, "frames": self.frames, "sealed_whole": finished }),
            )
            .await;
        if let Ending::Failed(problem) = ending {
            super::recorder_failed(&state, consultation_id, &problem).await;
        }
    }

    async fn handle_signal(&mut self, message: ServerMessage) {
        match message {
            ServerMessage::Joined {
                peers,
                consultation,
                ..
            } => {
                for peer in peers {
                    self.roles.insert(peer.participant_id, peer.role);
                }
                self.guests_share_screen = consultation.guests_share_screen;
            }
            ServerMessage::ScreenSharing { guests_allowed } => {
                self.guests_share_screen = guests_allowed;
            }
            ServerMessage::PeerJoined { peer } => {
                self.roles.insert(peer.participant_id, peer.role);
            }
            ServerMessage::RecordingKey {
                from,
                recording_id,
                kid,
                suite,
                wrapped,
            } if recording_id == self.recording_id => {
                use base64::Engine as _;
                match base64::engine::general_purpose::STANDARD.decode(wrapped) {
                    Ok(wrapped) => self.batch.push(&Record::EpochKey(EpochKey {
                        sender: from,
                        kid,
                        suite,
                        wrapped,
                    })),
                    Err(_) => tracing::warn!("recorder got a wrapped key that is not base64"),
                }
            }
            ServerMessage::PeerLeft { participant_id, .. } => {
                self.peers.remove(&participant_id);
            }
            ServerMessage::Description { from, description }
                if description.kind == SdpKind::Offer =>
            {
                if let Err(e) = self.answer(from, &description.sdp).await {
                    tracing::warn!(error = %e, "recorder could not answer an offer");
                }
            }
            ServerMessage::Candidate {
                from,
                candidate: Some(candidate),
            } => {
                if let Some(remote) = self.peers.get_mut(&from) {
                    let policy = &self.state.recordings.candidates;
                    match policy.check_line(&candidate.candidate, remote.candidates_kept) {
                        Ok(()) => match remote.peer.add_remote_candidate(&candidate.candidate) {
                            Ok(()) => remote.candidates_kept += 1,
                            Err(e) => tracing::debug!(error = %e, "recorder ignored a candidate"),
                        },
                        Err(refusal) => refused_candidate(&self.state, refusal),
                    }
                }
            }
            _ => {}
        }
    }

    fn relay(&self, to: Uuid, message: ServerMessage) {
        if let Err(code) = self
            .state
            .hub
            .relay(self.info.consultation_id, self.me, to, message)
        {
            tracing::debug!(code = code.as_str(), "recorder message not relayed");
        }
    }

    /// A participant offers its media: answer with a fresh receive-only connection (or apply it
    /// to the existing one, for an ICE restart).
    async fn answer(&mut self, from: Uuid, sdp: &str) -> anyhow::Result<()> {
        if matches!(
            self.roles.get(&from),
            None | Some(ParticipantRole::Recorder)
        ) {
            anyhow::bail!("an offer from someone who is not a participant here");
        }
        // Candidates in the offer itself go through the same policy as trickled ones.
        let policy = self.state.recordings.candidates.clone();
        if let Some(remote) = self.peers.get_mut(&from) {
            let (sdp, refused) = policy.filter_sdp(sdp, &mut remote.candidates_kept);
            for refusal in refused {
                refused_candidate(&self.state, refusal);
            }
            if let Ok(RemoteDescriptionOutcome::Answer(answer)) =
                remote.peer.handle_remote_offer(&sdp)
            {
                self.send_answer(from, answer, None);
                return Ok(());
            }
            // The participant started a new connection: follow with a new one.
            self.peers.remove(&from);
        }
        // A plain non-blocking socket, not the runtime's: it is read on the tick only, and a
        // socket registered with the runtime woke it at the first datagram after every read
        // (one wake per socket per tick, most of what a recording still cost).
        let socket = UdpSocket::bind(SocketAddr::new(self.state.recordings.media_address, 0))?;
        // Non-blocking, with GRO where the kernel has it.
        let socket_state = quinn_udp::UdpSocketState::new((&socket).into())?;
        let local = socket.local_addr()?;
        let now = Instant::now();
        let mut peer = Peer::new(
            PeerConfig {
                video_codecs: vec![VideoCodec::Vp8, VideoCodec::H264],
                polite: true,
                e2ee: None,
                // It only receives media: no estimate of a path out it never uses, no channels.
                estimate_bandwidth: false,
                data_channels: false,
                ..PeerConfig::default()
            },
            now,
        );
        let candidate = peer.add_host_candidate(local)?;
        let mut candidates_kept = 0;
        let (sdp, refused) = policy.filter_sdp(sdp, &mut candidates_kept);
        for refusal in refused {
            refused_candidate(&self.state, refusal);
        }
        let RemoteDescriptionOutcome::Answer(answer) = peer.handle_remote_offer(&sdp)? else {
            anyhow::bail!("the offer produced no answer");
        };
        self.peers.insert(
            from,
            RemotePeer {
                peer,
                socket,
                socket_state,
                local,
                next_timeout: now,
                candidates_kept,
            },
        );
        self.send_answer(from, answer, candidate);
        Ok(())
    }

    fn send_answer(&self, to: Uuid, sdp: String, candidate: Option<String>) {
        self.relay(
            to,
            ServerMessage::Description {
                from: self.me,
                description: SessionDescription {
                    kind: SdpKind::Answer,
                    sdp,
                },
            },
        );
        if let Some(line) = candidate {
            self.relay(
                to,
                ServerMessage::Candidate {
                    from: self.me,
                    candidate: Some(IceCandidate {
                        candidate: line,
                        sdp_mid: None,
                        sdp_m_line_index: Some(0),
                        username_fragment: None,
                    }),
                },
            );
        }
    }

    /// Read every datagram waiting on each peer's socket and hand it to the peer. Nothing from
    /// an address the recorder may not pair with: no peer-reflexive candidate from there, no
    /// answer sent there.
    ///
    /// The datagrams waiting on a socket are read in batches (`recvmmsg`, and GRO where the
    /// kernel coalesces), usually one call per socket per tick: a batch that leaves slots empty
    /// found the socket drained.
    fn receive(&mut self) {
        let policy = &self.state.recordings.candidates;
        let now = Instant::now();
        consult_udp::with_thread_slots(|slots| {
            for remote in self.peers.values_mut() {
                let mut read = 0;
                while read < MAX_DATAGRAMS_PER_TICK {
                    let peer = &mut remote.peer;
                    let local = remote.local;
                    let batch =
                        slots.read(&remote.socket_state, &remote.socket, |source, datagram| {
                            if !policy.allows(source.ip()) {
                                return;
                            }
                            if let Err(e) = peer.handle_receive(now, source, local, datagram) {
                                tracing::debug!(error = %e, "recorder dropped a datagram");
                            }
                        });
                    match batch {
                        Ok((datagrams, more)) => {
                            read += datagrams;
                            if !more {
                                break;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "recorder socket read failed");
                            break;
                        }
                    }
                }
            }
        });
    }

    /// Run the timers of every peer whose next timeout has come.
    fn run_timers(&mut self, now: Instant) {
        for remote in self.peers.values_mut() {
            if remote.next_timeout <= now
                && let Err(e) = remote.peer.handle_timeout(now)
            {
                tracing::debug!(error = %e, "recorder peer timeout failed");
            }
        }
    }

    /// Run every peer until it waits for time or input: send its datagrams, record its frames.
    fn drain(&mut self) {
        let ids: Vec<Uuid> = self.peers.keys().copied().collect();
        for id in ids {
            while let Some(remote) = self.peers.get_mut(&id) {
                match remote.peer.poll_output() {
                    Ok(Output::Timeout(at)) => {
                        remote.next_timeout = at;
                        break;
                    }
                    Ok(Output::Transmit(t)) => {
                        let _ = remote.socket.send_to(&t.contents, t.destination);
                    }
                    Ok(Output::Event(PeerEvent::Frame(frame))) => self.record(id, frame),
                    Ok(Output::Event(PeerEvent::Connected)) => {
                        let _ = remote.peer.request_keyframe();
                    }
                    Ok(Output::Event(_)) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "recorder peer failed; dropping it");
                        self.peers.remove(&id);
                        break;
                    }
                }
            }
        }
    }

    fn record(&mut self, from: Uuid, frame: EncodedFrame) {
        let codec = match frame.kind {
            TrackKind::Audio => Codec::Opus,
            TrackKind::Video(VideoCodec::Vp8) => Codec::Vp8,
            TrackKind::Video(VideoCodec::H264) => Codec::H264,
        };
        let role = match self.roles.get(&from) {
            Some(ParticipantRole::Doctor) => TrackRole::Doctor,
            Some(ParticipantRole::Patient) => TrackRole::Patient,
            Some(ParticipantRole::Clinician) => TrackRole::Clinician,
            Some(ParticipantRole::Interpreter) => TrackRole::Interpreter,
            Some(ParticipantRole::Companion) => TrackRole::Companion,
            Some(ParticipantRole::Recorder) | None => return,
        };
        let screen = codec.is_video() && frame.source == VideoSource::Screen;
        // A screen from someone who may not share one now is not kept (the pages do not show
        // it either).
        let clinician = matches!(role, TrackRole::Doctor | TrackRole::Clinician);
        if screen && !clinician && !self.guests_share_screen {
            return;
        }
        let source = if screen {
            VideoSource::Screen
        } else {
            VideoSource::Camera
        };
        let key = (from, codec.is_video(), source);
        let needs_track = self.tracks.get(&key).is_none_or(|t| t.codec != codec);
        if needs_track {
            // Track ids never wrap: a sender who keeps changing codecs could otherwise declare
            // another participant's track id again and have their frames read under it.
            let Some(next) = self.next_track.checked_add(1) else {
                tracing::warn!(participant = %from, "too many tracks in one recording; frame dropped");
                return;
            };
            let id = self.next_track;
            self.next_track = next;
            self.batch.push(&Record::Track(Track {
                id,
                codec,
                role,
                participant: from,
                protected: self.info.e2ee,
                screen,
            }));
            self.tracks.insert(
                key,
                TrackState {
                    id,
                    codec,
                    anchor: None,
                    waiting_for_keyframe: codec.is_video(),
                    last_keyframe_request: None,
                },
            );
        }
        let Some(track) = self.tracks.get_mut(&key) else {
            return;
        };
        if codec.is_video() {
            if !frame.contiguous && !frame.keyframe {
                track.waiting_for_keyframe = true;
            }
            if track.waiting_for_keyframe {
                if !frame.keyframe {
                    let due = track
                        .last_keyframe_request
                        .is_none_or(|at| at.elapsed() >= KEYFRAME_REQUEST_INTERVAL);
                    if due {
                        track.last_keyframe_request = Some(Instant::now());
                        if let Some(remote) = self.peers.get_mut(&from) {
                            let _ = if screen {
                                remote.peer.request_screen_keyframe()
                            } else {
                                remote.peer.request_keyframe()
                            };
                        }
                    }
                    return;
                }
                track.waiting_for_keyframe = false;
            }
        }
        // Frame times follow the sender's RTP clock from an anchor at arrival, re-anchored if
        // they drift more than a second from arrival (a sender restart, a long gap).
        let arrival = self.started.elapsed().as_micros() as u64;
        let clock: i128 = if codec.is_video() { 90_000 } else { 48_000 };
        let at_us = match track.anchor {
            Some((rtp0, at0)) => {
                let t = i128::from(at0)
                    + (i128::from(frame.rtp_time) - i128::from(rtp0)) * 1_000_000 / clock;
                if t < 0 || (t - i128::from(arrival)).abs() > 1_000_000 {
                    track.anchor = Some((frame.rtp_time, arrival));
                    arrival
                } else {
                    t as u64
                }
            }
            None => {
                track.anchor = Some((frame.rtp_time, arrival));
                arrival
            }
        };
        self.batch.push(&Record::Frame(Frame {
            track: track.id,
            at_us,
            keyframe: frame.keyframe,
            data: frame.data,
        }));
        self.frames += 1;
    }
}

/// Count (and log) a candidate the recorder refused.
fn refused_candidate(state: &AppState, refusal: candidates::Refusal) {
    state
        .metrics
        .recorder_candidates_refused
        .with_label_values(&[refusal.as_str()])
        .inc();
    tracing::debug!(reason = refusal.as_str(), "recorder refused a candidate");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorders_started_at_different_times_tick_together() {
        let first = Instant::now();
        let start = aligned_tick_start(first);
        for later in [1, 3_333, 9_999, 10_000, 10_001, 123_456_789] {
            let now = first + Duration::from_micros(later);
            let tick = aligned_tick_start(now);
            assert!(tick >= now && tick - now < RECEIVE_EVERY, "{later} µs");
            let apart = tick.duration_since(start).as_nanos();
            assert_eq!(apart % RECEIVE_EVERY.as_nanos(), 0, "{later} µs");
        }
    }
}
