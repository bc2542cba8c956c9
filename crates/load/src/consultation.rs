//! One consultation of a run: a clinician and a patient, both native peers, through the real
//! service — create, invite, waiting room, admission, media, teardown — measured at each step.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consult_api_client::{ApiClient, ApiError, Credentials, SignalConnection};
use consult_client::codec::opus::OpusDecoder;
use consult_client::codec::{video_decoder, EncodedVideo, VideoDecoder};
use consult_client::peer::{EncodedFrame, PeerConfig, Stats, TrackKind, VideoCodec};
use consult_client::session::{ReceiveMode, Session, SessionConfig, SessionError, SessionEvent};
use consult_proto::api::{ConsultationMode, CreateConsultationRequest, InviteKind};
use consult_proto::signal::{ClientMessage, RecordingState, ServerMessage};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::live::{LiveState, Side};
use crate::media::MediaLoop;
use crate::plan::{Plan, VIDEO_FPS};
use crate::report::{ConsultationRow, Failure, FailureCause, ReceiverRow};
use crate::stamp::{nal_units, stamp_frame, verify_frame, Stamp, Verdict};

/// Everything a consultation task shares with the run.
pub(crate) struct Shared {
    pub plan: Plan,
    pub service: ApiClient,
    pub media: Arc<MediaLoop>,
    pub epoch: Instant,
    /// When every consultation hangs up.
    pub end_at: tokio::time::Instant,
    /// The user stopped the run (Ctrl-C): hang up now.
    pub interrupted: CancellationToken,
    /// The run gave up (the service stopped answering): fail and hang up now.
    pub aborted: CancellationToken,
    /// Why the run gave up, and when.
    pub abort_reason: Mutex<Option<(String, Instant)>>,
    pub live: Arc<Mutex<LiveState>>,
    pub bind_ip: Option<IpAddr>,
}

impl Shared {
    fn secs(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.epoch).as_secs_f64()
    }

    pub(crate) fn live(&self) -> std::sync::MutexGuard<'_, LiveState> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a finished consultation hands back.
pub(crate) struct Outcome {
    pub row: ConsultationRow,
    pub samples: Samples,
    /// Successful signaling joins it made.
    pub joins: u64,
}

/// Raw samples for the run's distributions.
#[derive(Default)]
pub(crate) struct Samples {
    pub rtt_ms: Vec<f64>,
    pub jitter_ms: Vec<f64>,
    pub frame_delay_ms: Vec<f64>,
}

/// A failure, and when it happened (teardown comes later).
struct Failed(FailureCause, String, Instant);

impl Failed {
    fn now(cause: FailureCause, message: String) -> Self {
        Self(cause, message, Instant::now())
    }
}

fn signaling(e: impl std::fmt::Display) -> Failed {
    Failed::now(FailureCause::Signaling, e.to_string())
}

/// Run consultation `index` with a signed-in clinician's token.
pub(crate) async fn run(
    shared: Arc<Shared>,
    index: usize,
    token: String,
    sign_in_ms: f64,
) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome {
        row: ConsultationRow {
            index,
            sign_in_ms: Some(sign_in_ms),
            started_at_secs: shared.secs(started),
            ..Default::default()
        },
        samples: Samples::default(),
        joins: 0,
    };
    shared.live().started += 1;
    let created = shared
        .service
        .create_consultation(
            &token,
            &CreateConsultationRequest {
                title: Some(format!("Load test {index}")),
                e2ee: Some(shared.plan.e2ee),
                mode: Some(if shared.plan.recorded {
                    ConsultationMode::Recorded
                } else {
                    ConsultationMode::LiveOnly
                }),
                scheduled_at: None,
            },
        )
        .await
        .and_then(|consultation| match consultation.invite_url {
            Some(invite) => Ok((consultation.id, invite)),
            None => Err(ApiError::Protocol {
                url: shared.service.base_url().to_owned(),
                reason: "no invite link in the answer".into(),
            }),
        });
    let result = match created {
        Err(e) => Err(signaling(format!("creating the consultation: {e}"))),
        Ok((id, invite)) => {
            outcome.row.id = Some(id);
            shared.live().created += 1;
            if shared.plan.signaling_only {
                signaling_only(&shared, &mut outcome, &token, id, &invite).await
            } else {
                with_media(&shared, &mut outcome, &token, id, &invite).await
            }
        }
    };
    if let Err(Failed(cause, message, at)) = result {
        let failure = Failure {
            consultation: index,
            cause,
            message,
            at_secs: shared.secs(at),
        };
        shared.live().fail(&failure);
        outcome.row.failure = Some(failure);
    }
    if let Some(id) = outcome.row.id {
        outcome.row.ended = shared.service.end(&token, id).await.is_ok();
    }
    shared.live().finished(outcome.row.failure.is_none());
    outcome
}

/// Wait until the run's end, an interruption or an abort.
async fn hold(shared: &Shared) {
    tokio::select! {
        _ = tokio::time::sleep_until(shared.end_at) => {}
        _ = shared.interrupted.cancelled() => {}
        _ = shared.aborted.cancelled() => {}
    }
}

fn stopping(shared: &Shared) -> bool {
    shared.interrupted.is_cancelled() || shared.aborted.is_cancelled()
}

/// Longest wait for the service to answer one step (a join, a redemption).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait to hand a frame or a command to a session: a session that does not take it in
/// time (it is far behind) loses it rather than stalling the whole consultation.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(50);

/// `step`, failing as `signaling` when it takes longer than [`STEP_TIMEOUT`], and giving up
/// at once when the run stops.
async fn bounded<T, E: std::fmt::Display>(
    shared: &Shared,
    what: &str,
    step: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Failed> {
    tokio::select! {
        result = tokio::time::timeout(STEP_TIMEOUT, step) => match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(signaling(format!("{what}: {e}"))),
            Err(_) => Err(signaling(format!("{what}: no answer within {STEP_TIMEOUT:?}"))),
        },
        _ = shared.interrupted.cancelled() => Err(signaling(format!("{what}: interrupted"))),
        _ = shared.aborted.cancelled() => Err(signaling(format!("{what}: the run was aborted"))),
    }
}

/// Hand something to a session without ever waiting long; whether it was taken.
async fn hand_over(command: impl std::future::Future<Output = Result<(), SessionError>>) -> bool {
    matches!(
        tokio::time::timeout(COMMAND_TIMEOUT, command).await,
        Ok(Ok(()))
    )
}

/// Fail if the run was aborted while this consultation held (recorded when it stopped, before
/// the teardown).
fn check_abort(shared: &Shared) -> Result<(), Failed> {
    if !shared.aborted.is_cancelled() {
        return Ok(());
    }
    let (reason, at) = shared
        .abort_reason
        .lock()
        .ok()
        .and_then(|r| r.clone())
        .unwrap_or_else(|| ("the run was aborted".into(), Instant::now()));
    Err(Failed(FailureCause::Signaling, reason, at))
}

async fn signaling_only(
    shared: &Shared,
    outcome: &mut Outcome,
    token: &str,
    id: Uuid,
    invite: &str,
) -> Result<(), Failed> {
    let opened = Instant::now();
    let name = format!("Load patient {}", outcome.row.index);
    let (api, invite_token) = ApiClient::for_invite(invite)
        .map_err(|e| signaling(format!("redeeming the invite: {e}")))?;
    let place = bounded(
        shared,
        "redeeming the invite",
        api.redeem_invite(&invite_token, &name),
    )
    .await?;
    let patient_credentials = Credentials::Patient {
        invite_url: invite.to_owned(),
        name,
    };
    let mut patient = bounded(
        shared,
        "patient joining",
        api.signal(patient_credentials.join_message(Some(&place))),
    )
    .await?;
    let (participant, heartbeat) = wait_joined(&mut patient).await?;
    outcome.joins += 1;
    shared.live().joins += 1;
    outcome.row.waiting_room_ms = Some(ms(opened.elapsed()));
    let doctor_credentials = Credentials::Clinician {
        base_url: api.base_url().to_owned(),
        token: token.to_owned(),
        consultation_id: id,
    };
    let mut doctor = bounded(
        shared,
        "clinician joining",
        api.signal(doctor_credentials.join_message(None)),
    )
    .await?;
    wait_joined(&mut doctor).await?;
    outcome.joins += 1;
    shared.live().joins += 1;
    let admitting = Instant::now();
    shared
        .service
        .admit(token, id, participant)
        .await
        .map_err(|e| signaling(format!("admitting: {e}")))?;
    loop {
        match recv_within(&mut patient, Duration::from_secs(10)).await? {
            ServerMessage::Admitted { .. } => break,
            ServerMessage::Declined {} | ServerMessage::ConsultationEnded {} => {
                return Err(signaling("turned away instead of admitted"))
            }
            _ => {}
        }
    }
    let admitted = Instant::now();
    outcome.row.admission_ms = Some(ms(admitted - admitting));
    outcome.row.admitted_at_secs = Some(shared.secs(admitted));
    {
        let mut live = shared.live();
        live.admitted += 1;
        live.connected += 1;
        live.admission_ms.push(ms(admitted - admitting));
    }
    let mut ping = tokio::time::interval(heartbeat);
    let held = async {
        loop {
            tokio::select! {
                _ = ping.tick() => {
                    patient.send(&ClientMessage::Ping {}).await.map_err(|e| signaling(format!("patient signaling lost: {e}")))?;
                    doctor.send(&ClientMessage::Ping {}).await.map_err(|e| signaling(format!("clinician signaling lost: {e}")))?;
                }
                message = patient.recv() => {
                    if let Err(e) | Ok(Err(e)) = message.map(|m| ended(&m)) {
                        return Err(signaling(format!("patient: {e}")));
                    }
                }
                message = doctor.recv() => {
                    if let Err(e) | Ok(Err(e)) = message.map(|m| ended(&m)) {
                        return Err(signaling(format!("clinician: {e}")));
                    }
                }
                _ = hold(shared) => return Ok(()),
            }
        }
    };
    let result = held.await.and_then(|()| check_abort(shared));
    shared.live().connected -= 1;
    let _ = patient.send(&ClientMessage::Leave {}).await;
    let _ = doctor.send(&ClientMessage::Leave {}).await;
    patient.close().await;
    doctor.close().await;
    result
}

fn ended(message: &ServerMessage) -> Result<(), ApiError> {
    match message {
        ServerMessage::ConsultationEnded {} => Err(ApiError::Rejected {
            code: "consultation_ended".into(),
            message: "the service ended the consultation".into(),
        }),
        _ => Ok(()),
    }
}

async fn recv_within(
    connection: &mut SignalConnection,
    timeout: Duration,
) -> Result<ServerMessage, Failed> {
    match tokio::time::timeout(timeout, connection.recv()).await {
        Ok(Ok(message)) => Ok(message),
        Ok(Err(e)) => Err(signaling(e)),
        Err(_) => Err(signaling(format!(
            "no answer from signaling within {timeout:?}"
        ))),
    }
}

async fn wait_joined(connection: &mut SignalConnection) -> Result<(Uuid, Duration), Failed> {
    loop {
        match recv_within(connection, Duration::from_secs(10)).await? {
            ServerMessage::Joined {
                participant_id,
                heartbeat_interval_ms,
                ..
            } => {
                return Ok((
                    participant_id,
                    Duration::from_millis(heartbeat_interval_ms.max(1000)),
                ))
            }
            ServerMessage::Error { code, message, .. } => {
                return Err(signaling(format!("join refused: {code:?}: {message}")))
            }
            _ => {}
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn session_config(shared: &Shared, credentials: Credentials) -> SessionConfig {
    let mut config = SessionConfig::new(credentials);
    config.receive = ReceiveMode::Encoded;
    config.peer = PeerConfig {
        audio: shared.plan.audio,
        video: shared.plan.video.dimensions().is_some(),
        video_codecs: vec![VideoCodec::H264],
        ..PeerConfig::default()
    };
    if let Some(ip) = shared.bind_ip {
        config.bind_ips = vec![ip];
    }
    config
}

/// Who takes part in a consultation, by participant id: their stream and side.
type Roster = HashMap<Uuid, (u32, Side)>;

/// One participant of the call: its session, what it sends, and what it receives from each
/// other participant.
struct Peer {
    side: Side,
    session: Session,
    sender: Sender,
    /// By sender: created on their first frame or statistics.
    receivers: HashMap<Uuid, Receiver>,
    /// How many others are in the call (one receiver each, once media flows).
    others: usize,
    decode: bool,
    /// Our participant id, from `joined`.
    id: Option<Uuid>,
    admitted_at: Option<Instant>,
    negotiating_since: Option<Instant>,
    ice_connected: bool,
    connected_with: HashSet<Uuid>,
    /// When media flowed with every other participant.
    connected_at: Option<Instant>,
    recording: Option<RecordingState>,
    consent_due: bool,
    ended: Option<String>,
}

struct Sender {
    stream: u32,
    counter: u64,
    position: usize,
    audio_position: usize,
    video_sent: u64,
    audio_sent: u64,
}

impl Sender {
    fn new(stream: u32, audio_phase: usize) -> Self {
        Self {
            stream,
            counter: 0,
            position: 0,
            audio_position: audio_phase,
            video_sent: 0,
            audio_sent: 0,
        }
    }

    fn next_video(&mut self, media: &MediaLoop, epoch: Instant) -> Option<EncodedVideo> {
        if media.video.is_empty() {
            return None;
        }
        let frame = &media.video[self.position % media.video.len()];
        self.position += 1;
        let stamp = Stamp {
            stream: self.stream,
            counter: self.counter,
            sent_micros: epoch.elapsed().as_micros() as u64,
        };
        self.counter += 1;
        self.video_sent += 1;
        Some(EncodedVideo {
            codec: VideoCodec::H264,
            data: stamp_frame(&frame.data, &stamp),
            keyframe: frame.keyframe,
        })
    }

    /// The last video frame was not sent after all: the next one takes its place.
    fn take_back_video(&mut self) {
        self.counter = self.counter.saturating_sub(1);
        self.video_sent = self.video_sent.saturating_sub(1);
        self.position = self.position.saturating_sub(1);
    }

    /// The last audio packet was not sent after all.
    fn take_back_audio(&mut self) {
        self.audio_position = self.audio_position.saturating_sub(1);
        self.audio_sent = self.audio_sent.saturating_sub(1);
    }

    fn next_audio(&mut self, media: &MediaLoop) -> Option<Vec<u8>> {
        let packet = media
            .audio
            .get(self.audio_position % media.audio.len().max(1))?;
        self.audio_position += 1;
        self.audio_sent += 1;
        Some(packet.clone())
    }
}

/// A picture interval longer than this is a freeze (WebRTC's rule with a nominal frame rate:
/// the larger of three frame intervals and one interval plus 150 ms).
fn freeze_threshold() -> Duration {
    let interval = Duration::from_secs_f64(1.0 / VIDEO_FPS as f64);
    (interval * 3).max(interval + Duration::from_millis(150))
}

struct Receiver {
    expected_stream: u32,
    next_counter: Option<u64>,
    waiting_for_keyframe: bool,
    wants_keyframe: bool,
    last_shown: Option<Instant>,
    frozen: Duration,
    first_frame_at: Option<Instant>,
    row: ReceiverRow,
    video_decoder: Option<Box<dyn VideoDecoder>>,
    audio_decoder: Option<OpusDecoder>,
    receive_kbps: Vec<f64>,
    frame_delays: Vec<f64>,
    rtt_ms: Vec<f64>,
    jitter_ms: Vec<f64>,
    loss_percent: Vec<f64>,
    last_intact: Option<Instant>,
}

impl Receiver {
    fn new(label: String, expected_stream: u32, decode: bool) -> Self {
        Self {
            expected_stream,
            next_counter: None,
            waiting_for_keyframe: true,
            wants_keyframe: false,
            last_shown: None,
            frozen: Duration::ZERO,
            first_frame_at: None,
            row: ReceiverRow {
                side: label,
                ..Default::default()
            },
            video_decoder: decode
                .then(|| video_decoder(VideoCodec::H264).ok())
                .flatten(),
            audio_decoder: decode.then(|| OpusDecoder::new().ok()).flatten(),
            receive_kbps: Vec::new(),
            frame_delays: Vec::new(),
            rtt_ms: Vec::new(),
            jitter_ms: Vec::new(),
            loss_percent: Vec::new(),
            last_intact: None,
        }
    }

    fn on_frame(&mut self, frame: EncodedFrame, media: &MediaLoop, epoch: Instant, video: bool) {
        let now = Instant::now();
        match frame.kind {
            TrackKind::Audio => {
                if media.is_audio_packet(&frame.data) {
                    self.row.counts.audio_packets_intact += 1;
                    self.last_intact = Some(now);
                    if !video {
                        self.first_frame_at.get_or_insert(now);
                    }
                    if let Some(decoder) = &mut self.audio_decoder
                        && decoder.decode(&frame.data).is_err()
                    {
                        self.row.counts.decode_errors += 1;
                    }
                } else {
                    self.row.counts.audio_packets_corrupt += 1;
                }
            }
            TrackKind::Video(_) => self.on_video(frame, epoch, now),
        }
    }

    fn on_video(&mut self, frame: EncodedFrame, epoch: Instant, now: Instant) {
        let stamp = match verify_frame(&frame.data) {
            Verdict::Intact(stamp) if stamp.stream == self.expected_stream => stamp,
            Verdict::Intact(_) | Verdict::Corrupt(_) | Verdict::Unstamped => {
                self.row.counts.video_frames_corrupt += 1;
                self.waiting_for_keyframe = true;
                self.wants_keyframe = true;
                return;
            }
        };
        self.row.counts.video_frames_intact += 1;
        self.last_intact = Some(now);
        let keyframe = frame.keyframe || nal_units(&frame.data).iter().any(|u| u[0] & 0x1f == 5);
        match self.next_counter {
            Some(next) if stamp.counter > next => {
                self.row.counts.video_frames_missing += stamp.counter - next;
                self.waiting_for_keyframe = true;
            }
            Some(next) if stamp.counter < next => {
                // Late, after its successors: it was counted missing then.
                self.row.counts.video_frames_missing =
                    self.row.counts.video_frames_missing.saturating_sub(1);
                return;
            }
            _ => {}
        }
        if !frame.contiguous {
            self.waiting_for_keyframe = true;
        }
        self.next_counter = Some(stamp.counter + 1);
        let sent = epoch + Duration::from_micros(stamp.sent_micros);
        self.frame_delays
            .push(ms(now.saturating_duration_since(sent)));
        if self.waiting_for_keyframe && !keyframe {
            self.wants_keyframe = true;
            return;
        }
        self.waiting_for_keyframe = false;
        if let Some(decoder) = &mut self.video_decoder {
            match decoder.decode(&frame.data) {
                Ok(Some(_)) => self.row.counts.video_frames_decoded += 1,
                Ok(None) => {}
                Err(_) => {
                    self.row.counts.decode_errors += 1;
                    self.waiting_for_keyframe = true;
                    self.wants_keyframe = true;
                }
            }
        }
        self.shown(now);
    }

    fn shown(&mut self, now: Instant) {
        self.first_frame_at.get_or_insert(now);
        if let Some(last) = self.last_shown {
            let gap = now - last;
            if gap > freeze_threshold() {
                self.frozen += gap;
            }
        }
        self.last_shown = Some(now);
    }

    /// How long since the last intact frame or packet (none before the first).
    fn silent_for(&self, now: Instant) -> Option<Duration> {
        self.last_intact.map(|at| now.saturating_duration_since(at))
    }

    fn on_stats(&mut self, stats: &Stats, samples: &mut Samples) {
        if let Some(rtt) = stats.rtt {
            samples.rtt_ms.push(ms(rtt));
            self.rtt_ms.push(ms(rtt));
        }
        if let Some(jitter) = stats.video_jitter {
            samples.jitter_ms.push(jitter * 1000.0);
            self.jitter_ms.push(jitter * 1000.0);
        }
        // Each report covers the interval since the last: the call's loss is their mean.
        if let Some(loss) = stats.ingress_loss {
            self.loss_percent.push(f64::from(loss) * 100.0);
        }
        if stats.receive_bps > 0 || !self.receive_kbps.is_empty() {
            self.receive_kbps.push(stats.receive_bps as f64 / 1000.0);
        }
    }

    fn finish(&mut self, video: bool, now: Instant, samples: &mut Samples) -> ReceiverRow {
        if let (true, Some(last)) = (video, self.last_shown) {
            let gap = now - last;
            if gap > freeze_threshold() {
                self.frozen += gap;
            }
        }
        let mut row = self.row.clone();
        if video && self.first_frame_at.is_some() {
            row.frozen_ms = Some(ms(self.frozen));
        }
        row.received_kbps = (!self.receive_kbps.is_empty())
            .then(|| self.receive_kbps.iter().sum::<f64>() / self.receive_kbps.len() as f64);
        row.frame_delay_ms = median(&mut self.frame_delays.clone());
        row.rtt_ms = median(&mut self.rtt_ms);
        row.jitter_ms = mean(&self.jitter_ms);
        row.packet_loss_percent = mean(&self.loss_percent);
        samples.frame_delay_ms.append(&mut self.frame_delays);
        row
    }
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

impl Peer {
    /// The receiver of `from`'s media: the row is named by the receiving side in a 1:1 call,
    /// and by both sides in a group.
    fn receiver_of(&mut self, from: Uuid, roster: &Roster) -> Option<&mut Receiver> {
        let &(stream, sender) = roster.get(&from)?;
        let label = if self.others == 1 {
            self.side.as_str().to_owned()
        } else {
            format!("{} from {}", self.side.as_str(), sender.as_str())
        };
        let decode = self.decode;
        Some(
            self.receivers
                .entry(from)
                .or_insert_with(|| Receiver::new(label, stream, decode)),
        )
    }

    /// When this participant had an intact frame from every other one, if it has.
    fn first_frames_at(&self) -> Option<Instant> {
        if self.receivers.len() < self.others {
            return None;
        }
        self.receivers
            .values()
            .map(|r| r.first_frame_at)
            .try_fold(None::<Instant>, |latest, at| {
                at.map(|at| Some(latest.map_or(at, |l| l.max(at))))
            })
            .flatten()
    }

    fn on_event(
        &mut self,
        event: SessionEvent,
        shared: &Shared,
        samples: &mut Samples,
        roster: &Roster,
    ) {
        match event {
            SessionEvent::Joined { participant_id, .. } => self.id = Some(participant_id),
            SessionEvent::PeerJoined { .. } => {
                self.negotiating_since.get_or_insert(Instant::now());
            }
            SessionEvent::Admitted => {
                self.admitted_at.get_or_insert(Instant::now());
            }
            SessionEvent::IceConnected { .. } => self.ice_connected = true,
            SessionEvent::Connected { peer } => {
                self.ice_connected = true;
                self.connected_with.insert(peer);
                if self.connected_with.len() >= self.others {
                    self.connected_at.get_or_insert(Instant::now());
                }
            }
            SessionEvent::EncodedFrame { from, frame } => {
                let video = shared.plan.video.dimensions().is_some();
                if let Some(receiver) = self.receiver_of(from, roster) {
                    receiver.on_frame(frame, &shared.media, shared.epoch, video);
                }
            }
            SessionEvent::KeyframeRequested => self.sender.position = 0,
            SessionEvent::Stats { peer, stats } => {
                let stream = self.sender.stream;
                if let Some(receiver) = self.receiver_of(peer, roster) {
                    receiver.on_stats(&stats, samples);
                    shared.live().receiver_stats(
                        stream,
                        receiver.expected_stream,
                        stats.receive_bps,
                        stats.ingress_loss,
                    );
                }
            }
            SessionEvent::Recording(state) => {
                self.consent_due = state == RecordingState::AwaitingConsent
                    && self.side != Side::Clinician
                    && shared.plan.recorded;
                self.recording = Some(state);
            }
            SessionEvent::Warning(w) if w.starts_with("signaling lost") => {
                shared.live().reconnects += 1;
            }
            SessionEvent::Warning(w) if w.starts_with("session ended") => {
                self.ended = Some(w);
            }
            SessionEvent::Ended => {
                self.ended
                    .get_or_insert_with(|| "the service ended the consultation".into());
            }
            SessionEvent::PeerLeft { .. } => {
                self.ended = Some("another participant left".into());
            }
            SessionEvent::Declined => {
                self.ended = Some("turned away".into());
            }
            _ => {}
        }
    }
}

async fn start_session(
    shared: &Shared,
    side: Side,
    credentials: Credentials,
    stream: u32,
    decode: bool,
    audio_phase: usize,
) -> Result<Peer, Failed> {
    let what = format!("{} joining", side.as_str());
    // No candidate can be gathered (relay only, and no TURN server can be used): an ICE
    // failure, whose reason names every server, not a signaling one.
    let start = async {
        match Session::start(session_config(shared, credentials)).await {
            Ok(session) => Ok(Ok(session)),
            Err(SessionError::Network(e)) => {
                Ok(Err(Failed::now(FailureCause::Ice, format!("{what}: {e}"))))
            }
            Err(other) => Err(other),
        }
    };
    let session = bounded(shared, &what, start).await??;
    Ok(Peer {
        side,
        session,
        sender: Sender::new(stream, audio_phase),
        receivers: HashMap::new(),
        others: shared.plan.participants.saturating_sub(1).max(1),
        decode,
        id: None,
        admitted_at: None,
        negotiating_since: None,
        ice_connected: false,
        connected_with: HashSet::new(),
        connected_at: None,
        recording: None,
        consent_due: false,
        ended: None,
    })
}

/// The next event of any participant's session: (whose, what).
async fn next_event(peers: &mut [Peer]) -> (usize, Option<SessionEvent>) {
    let waiting = peers
        .iter_mut()
        .enumerate()
        .map(|(i, p)| Box::pin(async move { (i, p.session.next_event().await) }));
    let (next, _, _) = futures_util::future::select_all(waiting).await;
    next
}

/// Until `until`: take every session's events, and send media once everyone is connected with
/// everyone. `done` says when to stop early. With `stall_after`, a receiver that gets no intact
/// frame for that long fails the consultation (`media_timeout`).
async fn drive(
    shared: &Shared,
    peers: &mut [Peer],
    roster: &Roster,
    samples: &mut Samples,
    until: tokio::time::Instant,
    stall_after: Option<Duration>,
    mut done: impl FnMut(&[Peer]) -> bool,
) -> Result<(), Failed> {
    let mut video_tick = tokio::time::interval(Duration::from_secs_f64(1.0 / VIDEO_FPS as f64));
    video_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut audio_tick = tokio::time::interval(Duration::from_millis(20));
    audio_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let media = shared.media.clone();
    loop {
        if done(peers) {
            return Ok(());
        }
        for peer in peers.iter_mut() {
            if peer.consent_due && hand_over(peer.session.consent_to_recording(true)).await {
                peer.consent_due = false;
            }
        }
        if let Some(limit) = stall_after {
            for peer in peers.iter() {
                for receiver in peer.receivers.values() {
                    let silent = receiver.silent_for(Instant::now());
                    if let Some(silent) = silent.filter(|s| *s > limit) {
                        return Err(Failed::now(
                            FailureCause::MediaTimeout,
                            format!(
                                "media stopped: the {} received no intact frame for {:.1} s",
                                receiver.row.side,
                                silent.as_secs_f64()
                            ),
                        ));
                    }
                }
            }
        }
        for peer in peers.iter() {
            if let Some(why) = &peer.ended {
                return Err(signaling(format!("{}: {why}", peer.side.as_str())));
            }
        }
        let sending = peers.iter().all(|p| p.connected_at.is_some());
        tokio::select! {
            (i, event) = next_event(peers) => match event {
                Some(event) => peers[i].on_event(event, shared, samples, roster),
                None => gone(&mut peers[i]),
            },
            _ = video_tick.tick(), if sending && !media.video.is_empty() => {
                for peer in peers.iter_mut() {
                    if let Some(frame) = peer.sender.next_video(&media, shared.epoch)
                        && !hand_over(peer.session.send_encoded_video(frame)).await {
                            peer.sender.take_back_video();
                            shared.live().sends_dropped += 1;
                        }
                    // Every receiver's flag is taken (one request asks every sender).
                    let mut wants = false;
                    for receiver in peer.receivers.values_mut() {
                        wants |= std::mem::take(&mut receiver.wants_keyframe);
                    }
                    if wants && hand_over(peer.session.request_keyframe()).await {
                        shared.live().keyframe_requests += 1;
                    }
                }
            }
            _ = audio_tick.tick(), if sending && !media.audio.is_empty() => {
                for peer in peers.iter_mut() {
                    if let Some(packet) = peer.sender.next_audio(&media)
                        && !hand_over(peer.session.send_encoded_audio(packet)).await {
                            peer.sender.take_back_audio();
                            shared.live().sends_dropped += 1;
                        }
                }
            }
            _ = tokio::time::sleep_until(until) => return Ok(()),
            _ = shared.interrupted.cancelled() => return Ok(()),
            _ = shared.aborted.cancelled() => return Ok(()),
        }
    }
}

/// The session's task is over; keep the first reason it gave.
fn gone(peer: &mut Peer) {
    peer.ended.get_or_insert_with(|| "the session ended".into());
}

/// The links of the consultation's guests: the patient link first, then a named invite per
/// further participant (an interpreter, then companions), with each one's side.
async fn guest_links(
    shared: &Shared,
    token: &str,
    id: Uuid,
    invite: &str,
) -> Result<Vec<(String, Side)>, Failed> {
    let mut links = vec![(invite.to_owned(), Side::Patient)];
    for n in 2..shared.plan.participants {
        let (kind, side) = if n == 2 {
            (InviteKind::Interpreter, Side::Interpreter)
        } else {
            (InviteKind::Companion, Side::Companion)
        };
        let issued = bounded(
            shared,
            "inviting another participant",
            shared
                .service
                .issue_invite(token, id, kind, &format!("Load {} {n}", side.as_str())),
        )
        .await?;
        links.push((issued.invite_url, side));
    }
    Ok(links)
}

async fn with_media(
    shared: &Shared,
    outcome: &mut Outcome,
    token: &str,
    id: Uuid,
    invite: &str,
) -> Result<(), Failed> {
    let index = outcome.row.index;
    let decode = index < shared.plan.decode;
    let n = shared.plan.participants.max(2);
    // Stream numbers: the clinician's first, then each guest's.
    let streams: Vec<u32> = (0..n).map(|k| (n * index + k) as u32).collect();
    let links = guest_links(shared, token, id, invite).await?;
    let mut samples = Samples::default();
    let mut roster = Roster::new();
    let mut peers: Vec<Peer> = Vec::new();
    let result = async {
        // The first guest (the patient) is in the waiting room before the clinician joins.
        let opened = Instant::now();
        let (link, side) = &links[0];
        let mut patient = start_session(
            shared,
            *side,
            Credentials::Patient {
                invite_url: link.clone(),
                name: format!("Load patient {index}"),
            },
            streams[1],
            decode,
            index * 7,
        )
        .await?;
        let participant = waiting(shared, &mut patient, &mut samples, &roster).await?;
        roster.insert(participant, (streams[1], *side));
        peers.push(patient);
        outcome.joins += 1;
        shared.live().joins += 1;
        outcome.row.waiting_room_ms = Some(ms(opened.elapsed()));
        let doctor = start_session(
            shared,
            Side::Clinician,
            Credentials::Clinician {
                base_url: shared.service.base_url().to_owned(),
                token: token.to_owned(),
                consultation_id: id,
            },
            streams[0],
            decode,
            index * 7 + 25,
        )
        .await?;
        peers.insert(0, doctor);
        outcome.joins += 1;
        shared.live().joins += 1;
        media_call(
            shared,
            outcome,
            &mut peers,
            &mut roster,
            &links,
            &streams,
            token,
            id,
            participant,
            &mut samples,
        )
        .await
        .and_then(|()| check_abort(shared))
    }
    .await;
    let now = Instant::now();
    let video = shared.plan.video.dimensions().is_some();
    // What each receiver could have received is what its sender sent.
    let sent: HashMap<u32, (u64, u64)> = peers
        .iter()
        .map(|p| (p.sender.stream, (p.sender.video_sent, p.sender.audio_sent)))
        .collect();
    let mut rows = Vec::new();
    // Patient first, then the clinician, then the other guests (as the 1:1 report has it).
    let order: Vec<usize> = match peers.len() {
        0 | 1 => (0..peers.len()).collect(),
        len => [1, 0].into_iter().chain(2..len).collect(),
    };
    for i in order {
        let peer = &mut peers[i];
        let mut senders: Vec<&mut Receiver> = peer.receivers.values_mut().collect();
        senders.sort_by_key(|r| r.expected_stream);
        for receiver in senders {
            let mut row = receiver.finish(video, now, &mut samples);
            if let Some((video_sent, audio_sent)) = sent.get(&receiver.expected_stream) {
                row.counts.video_frames_sent = *video_sent;
                row.counts.audio_packets_sent = *audio_sent;
            }
            rows.push(row);
        }
    }
    outcome.row.receivers = rows;
    outcome.row.recording = peers
        .iter()
        .find(|p| p.side == Side::Patient)
        .and_then(|p| p.recording)
        .map(|s| format!("{s:?}").to_lowercase());
    outcome.samples = samples;
    {
        let mut live = shared.live();
        if outcome.row.connect_ms.is_some() {
            live.connected -= 1;
        }
        live.forget_receivers(&streams);
    }
    futures_util::future::join_all(peers.into_iter().map(|p| p.session.leave())).await;
    result
}

/// Until the guest is in the waiting room; their participant id.
async fn waiting(
    shared: &Shared,
    guest: &mut Peer,
    samples: &mut Samples,
    roster: &Roster,
) -> Result<Uuid, Failed> {
    let side = guest.side.as_str();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), guest.session.next_event()).await {
            Ok(Some(SessionEvent::Joined { participant_id, .. })) => {
                guest.id = Some(participant_id);
                return Ok(participant_id);
            }
            Ok(Some(SessionEvent::Warning(w))) if w.starts_with("session ended") => {
                return Err(signaling(format!("{side}: {w}")))
            }
            Ok(Some(other)) => guest.on_event(other, shared, samples, roster),
            Ok(None) => {
                return Err(signaling(format!(
                    "{side}: the session ended before joining"
                )))
            }
            Err(_) => {
                return Err(signaling(format!(
                    "{side}: no answer from signaling within 10 s"
                )))
            }
        }
    }
}

/// Admit `participant` (the guest `peers[guest]`) and wait until they are in: the time from
/// the admit request, and when.
#[allow(clippy::too_many_arguments)]
async fn admit(
    shared: &Shared,
    peers: &mut [Peer],
    roster: &Roster,
    samples: &mut Samples,
    guest: usize,
    token: &str,
    id: Uuid,
    participant: Uuid,
) -> Result<(Duration, Instant), Failed> {
    let admitting = Instant::now();
    shared
        .service
        .admit(token, id, participant)
        .await
        .map_err(|e: ApiError| signaling(format!("admitting: {e}")))?;
    // Every session's events are taken as they come, so every moment is measured when it
    // happens, not when someone gets round to looking.
    let admit_by = tokio::time::Instant::now() + Duration::from_secs(10);
    drive(shared, peers, roster, samples, admit_by, None, |p| {
        p[guest].admitted_at.is_some()
    })
    .await?;
    let Some(admitted_at) = peers[guest].admitted_at else {
        return Err(signaling(format!(
            "{}: not admitted within 10 s of the admit request",
            peers[guest].side.as_str()
        )));
    };
    let admission = admitted_at - admitting;
    let mut live = shared.live();
    // The consultation counts as admitted once (its first guest); every guest's admission is
    // a sample.
    if guest == 1 {
        live.admitted += 1;
    }
    live.admission_ms.push(ms(admission));
    Ok((admission, admitted_at))
}

#[allow(clippy::too_many_arguments)]
async fn media_call(
    shared: &Shared,
    outcome: &mut Outcome,
    peers: &mut Vec<Peer>,
    roster: &mut Roster,
    links: &[(String, Side)],
    streams: &[u32],
    token: &str,
    id: Uuid,
    patient: Uuid,
    samples: &mut Samples,
) -> Result<(), Failed> {
    let (admission, mut admitted_at) =
        admit(shared, peers, roster, samples, 1, token, id, patient).await?;
    if stopping(shared) {
        return Ok(());
    }
    outcome.row.admission_ms = Some(ms(admission));
    outcome.row.admitted_at_secs = Some(shared.secs(admitted_at));
    // Further guests: each through their own named invite, waiting, admitted on their own.
    let index = outcome.row.index;
    for (k, (link, side)) in links.iter().enumerate().skip(1) {
        let mut guest = start_session(
            shared,
            *side,
            Credentials::Patient {
                invite_url: link.clone(),
                name: String::new(),
            },
            streams[k + 1],
            index < shared.plan.decode,
            index * 7 + 50 * k,
        )
        .await?;
        let participant = waiting(shared, &mut guest, samples, roster).await?;
        roster.insert(participant, (streams[k + 1], *side));
        peers.push(guest);
        outcome.joins += 1;
        shared.live().joins += 1;
        let guest = peers.len() - 1;
        (_, admitted_at) = admit(
            shared,
            peers,
            roster,
            samples,
            guest,
            token,
            id,
            participant,
        )
        .await?;
        if stopping(shared) {
            return Ok(());
        }
    }
    // The clinician's id, from its `joined` (taken with its other events, maybe not yet),
    // completes the roster; then every participant has a receiver for every other (reported
    // even if nothing arrives).
    let joined_by = tokio::time::Instant::now() + Duration::from_secs(10);
    drive(shared, peers, roster, samples, joined_by, None, |p| {
        p[0].id.is_some()
    })
    .await?;
    if stopping(shared) {
        return Ok(());
    }
    let Some(doctor) = peers[0].id else {
        return Err(signaling(
            "clinician: joined, but its participant id never came",
        ));
    };
    roster.insert(doctor, (streams[0], Side::Clinician));
    let everyone: Vec<Uuid> = roster.keys().copied().collect();
    for peer in peers.iter_mut() {
        for id in &everyone {
            if Some(*id) != peer.id {
                peer.receiver_of(*id, roster);
            }
        }
    }
    // Connecting is measured from the last admission: before it, not everyone was there to
    // connect with.
    for peer in peers.iter_mut() {
        peer.negotiating_since = Some(
            peer.negotiating_since
                .map_or(admitted_at, |since| since.max(admitted_at)),
        );
    }
    let connect_by = tokio::time::Instant::now() + shared.plan.connect_timeout;
    drive(shared, peers, roster, samples, connect_by, None, |p| {
        p.iter().all(|peer| peer.connected_at.is_some())
    })
    .await?;
    if stopping(shared) {
        return Ok(());
    }
    if peers.iter().any(|p| p.connected_at.is_none()) {
        let ice = peers.iter().all(|p| p.ice_connected);
        let waited = shared.plan.connect_timeout;
        return Err(if ice {
            Failed::now(
                FailureCause::Dtls,
                format!("ICE connected but DTLS did not complete within {waited:?} of admission"),
            )
        } else {
            Failed::now(
                FailureCause::Ice,
                format!("no working ICE candidate pair within {waited:?} of admission"),
            )
        });
    }
    let connect = peers
        .iter()
        .filter_map(|p| {
            let at = p.connected_at?;
            Some(at - p.negotiating_since.unwrap_or(admitted_at).min(at))
        })
        .max()
        .unwrap_or_default();
    outcome.row.connect_ms = Some(ms(connect));
    {
        let mut live = shared.live();
        live.connected += 1;
        live.connect_ms.push(ms(connect));
    }
    let media_by = tokio::time::Instant::now() + shared.plan.media_timeout;
    drive(shared, peers, roster, samples, media_by, None, |p| {
        p.iter().all(|peer| peer.first_frames_at().is_some())
    })
    .await?;
    if stopping(shared) {
        return Ok(());
    }
    let firsts: Option<Vec<Instant>> = peers.iter().map(Peer::first_frames_at).collect();
    let Some(last_first) = firsts.and_then(|f| f.into_iter().max()) else {
        let got: Vec<String> = peers
            .iter()
            .map(|p| {
                let intact: u64 = p
                    .receivers
                    .values()
                    .map(|r| r.row.counts.video_frames_intact + r.row.counts.audio_packets_intact)
                    .sum();
                format!("{} got {intact}", p.side.as_str())
            })
            .collect();
        return Err(Failed::now(
            FailureCause::MediaTimeout,
            format!(
                "connected, but not an intact frame from every other participant within {:?} ({})",
                shared.plan.media_timeout,
                got.join(", "),
            ),
        ));
    };
    // From the last admission to the moment everyone had a frame from everyone else.
    let first_frame = ms(last_first - admitted_at.min(last_first));
    outcome.row.first_frame_ms = Some(first_frame);
    {
        let mut live = shared.live();
        live.first_frame += 1;
        live.first_frame_ms.push(first_frame);
    }
    // Hold until the run ends.
    let stall = Some(shared.plan.media_timeout);
    drive(shared, peers, roster, samples, shared.end_at, stall, |_| {
        false
    })
    .await
}
