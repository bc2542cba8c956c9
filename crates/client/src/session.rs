//! The tokio driver: joins a consultation through the signaling service and runs a `Call`
//! on real UDP sockets and TURN relays, with real codecs. Every decision about the call
//! (negotiation, ICE restart, keyframes, the recorder link) is the sans-IO `Call`'s; this
//! loop owns the WebSocket (and its reconnection, by `SignalLink`), the sockets, the encoders
//! and decoders and the timers. One task owns everything (`&mut self`, no locks); the
//! [`Session`] handle talks to it with messages and hands out [`SessionEvent`]s.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use consult_proto::signal::{ClientMessage, ServerMessage};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::call::{Call, CallConfig, CallEnd, CallOutput, LocalCandidates};
pub use crate::events::{ReceiveMode, SessionEvent};
use crate::net::{default_ips, Datagram, GatherError, Gathered, Network};
use crate::reconnect::{GaveUp, SignalLink};
use crate::relay::TlsRoots;
use crate::video_ladder::{Step, VideoLadder, STILL_EVERY};
use consult_api_client::{ApiClient, ApiError, Credentials, PatientPlace, SignalConnection};
use consult_codec::opus::{
    is_dtx, packet_samples as opus_packet_samples, OpusDecoder, OpusEncoder,
    DEFAULT_EXPECTED_LOSS_PERCENT, FRAME_SAMPLES,
};
use consult_codec::{
    video_decoder, video_encoder, CodecError, EncodedVideo, VideoDecoder, VideoEncoder, VideoFrame,
};
use consult_e2ee::ScheduleConfig;
use consult_peer::{EncodedFrame, Peer, PeerConfig, PeerError, TrackKind, VideoCodec, VideoSource};
use consult_proto::api::IceServers;

/// Frames from a camera come a little early or late: within this, a frame counts as on time for
/// the ladder's step.
const FRAME_SLACK: Duration = Duration::from_millis(5);

/// Most 20 ms frames concealed for one gap in a sender's audio (a second).
const MAX_CONCEALED_FRAMES: u64 = 50;

/// Opus's bitrate for the voice.
const AUDIO_BITRATE_BPS: i32 = 32_000;
/// Opus's bitrate in audio only (a link too weak for video).
const AUDIO_ONLY_AUDIO_BITRATE_BPS: i32 = 16_000;

/// In audio only, 20 ms frames of voice per packet: a packet's headers on the wire (IP, UDP, RTP
/// and its extensions, the SRTP tag) are 69 bytes, more than the 40 of 20 ms of voice at 16
/// kbit/s; two frames a packet take the voice from 43 to about 30 kbit/s on the wire, room that a
/// link too weak for video needs for the picture every few seconds.
const AUDIO_ONLY_FRAMES_PER_PACKET: usize = 2;

/// In audio only, the first picture this long after the step (then one every [`STILL_EVERY`]).
const FIRST_PICTURE_AFTER: Duration = Duration::from_secs(1);

/// In audio only, how long a picture is sent again after it (camera frames of it, a few bytes each).
const STILL_REPEAT: Duration = Duration::from_millis(800);
/// Copies of each datagram of a picture in audio only: at a fifth of packets lost, a packet is
/// then lost 4 % of the time, and a two-packet keyframe arrives whole 92 % of the time, not 64 %.
const PICTURE_COPIES: u8 = 2;
/// What the session sends when the application gives it raw frames.
#[derive(Debug, Clone, Copy)]
pub struct VideoSendConfig {
    /// Width of the frames the application will send.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Frames per second.
    pub fps: f32,
    /// Starting bitrate; bandwidth estimation adapts it between a tenth and twice this.
    pub bitrate_bps: u32,
}

impl Default for VideoSendConfig {
    fn default() -> Self {
        Self {
            width: 640,
            height: 480,
            fps: 30.0,
            bitrate_bps: 800_000,
        }
    }
}

/// How a session is set up.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Who joins.
    pub credentials: Credentials,
    /// The WebRTC peer (tracks, codecs, limits).
    pub peer: PeerConfig,
    /// Decoded or encoded media out.
    pub receive: ReceiveMode,
    /// Raw video the application sends.
    pub video: VideoSendConfig,
    /// Local addresses to gather host candidates on (one UDP socket each). Empty: loopback
    /// and every non-loopback IPv4 interface.
    pub bind_ips: Vec<IpAddr>,
    /// Restart ICE when the connection stays down this long.
    pub ice_restart_after: Duration,
    /// A polite peer waits this long for the other side's offer before offering itself, which
    /// avoids needless glare with browsers.
    pub polite_offer_delay: Duration,
    /// Use the STUN and TURN servers the service hands out (`GET /api/v1/ice-servers`).
    pub use_service_ice_servers: bool,
    /// Force relay candidates only (`None`: follow the service's policy).
    pub relay_only: Option<bool>,
    /// End-to-end encryption (SFrame): `None` follows the consultation (the service says
    /// whether it is end-to-end encrypted); `Some(false)` never agrees keys — a participant
    /// that receives only ciphertext, for tests.
    pub e2ee: Option<bool>,
    /// Key-schedule timers and limits.
    pub e2ee_schedule: ScheduleConfig,
    /// Certificates (PEM) a `turns:` relay may chain to besides the Mozilla roots and the
    /// system's (`SSL_CERT_FILE`, `SSL_CERT_DIR`): a private CA.
    pub extra_ca_pem: Option<Vec<u8>>,
}

impl SessionConfig {
    /// Defaults for these credentials.
    pub fn new(credentials: Credentials) -> Self {
        Self {
            credentials,
            peer: PeerConfig::default(),
            receive: ReceiveMode::Decoded,
            video: VideoSendConfig::default(),
            bind_ips: Vec::new(),
            ice_restart_after: Duration::from_secs(5),
            polite_offer_delay: Duration::from_millis(1500),
            use_service_ice_servers: true,
            relay_only: None,
            e2ee: None,
            e2ee_schedule: ScheduleConfig::default(),
            extra_ca_pem: None,
        }
    }
}

/// How often our interfaces are looked at for a changed address.
const INTERFACE_POLL: Duration = Duration::from_millis(500);

/// Relay-only, after no relay could be used: how long until asking the servers again.
const REGATHER_PAUSE: Duration = Duration::from_secs(5);

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Signaling failed.
    #[error(transparent)]
    Signal(#[from] ApiError),
    /// The peer refused.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// A codec failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Sockets.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// No candidates could be gathered (relay-only and no relay could be used).
    #[error(transparent)]
    Network(#[from] GatherError),
    /// [`SessionConfig::extra_ca_pem`] holds no usable certificate.
    #[error("extra CA certificates: {0}")]
    Certificates(String),
    /// The session task is gone.
    #[error("the session has ended")]
    Ended,
}

enum Command {
    Video(VideoFrame),
    ShareScreen(bool),
    Screen(VideoFrame),
    EncodedVideo(EncodedVideo),
    Audio(Vec<i16>),
    EncodedAudio(Vec<u8>),
    RequestKeyframe,
    Chat(String, oneshot::Sender<Result<(), PeerError>>),
    OfferFile(
        String,
        String,
        Vec<u8>,
        oneshot::Sender<Result<Vec<Uuid>, PeerError>>,
    ),
    AcceptFile(Uuid, oneshot::Sender<Result<(), PeerError>>),
    RejectFile(Uuid, oneshot::Sender<Result<(), PeerError>>),
    CancelFile(Uuid, oneshot::Sender<Result<(), PeerError>>),
    RotateKeys,
    Consent(bool),
    Leave,
}

/// A running session. Dropping it leaves the consultation.
pub struct Session {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<SessionEvent>,
    task: tokio::task::JoinHandle<Result<(), SessionError>>,
    local_addrs: Vec<SocketAddr>,
}

impl Session {
    /// Join: redeem the invite (patient), connect to signaling, bind sockets, start the task.
    pub async fn start(config: SessionConfig) -> Result<Self, SessionError> {
        let (api, patient) = match &config.credentials {
            Credentials::Patient { invite_url, name } => {
                let (api, invite) = ApiClient::for_invite(invite_url)?;
                let place = api.redeem_invite(&invite, name).await?;
                (api, Some(place))
            }
            Credentials::Clinician { base_url, .. } => (ApiClient::new(base_url)?, None),
        };
        let bearer = match (&config.credentials, &patient) {
            (Credentials::Clinician { token, .. }, _) => Some(token.clone()),
            (_, Some(place)) => Some(place.participant_token.clone()),
            _ => None,
        };
        let ice = match (config.use_service_ice_servers, &bearer) {
            (true, Some(bearer)) => Some(api.ice_servers(bearer).await?),
            _ => None,
        };
        let relay_only = config.relay_only.unwrap_or_else(|| {
            ice.as_ref().is_some_and(|i| {
                i.ice_transport_policy == consult_proto::api::IceTransportPolicy::Relay
            })
        });
        let join = config.credentials.join_message(patient.as_ref());
        let signal = api.signal(join.clone()).await?;
        let ips = if config.bind_ips.is_empty() {
            default_ips()
        } else {
            config.bind_ips.clone()
        };
        let (datagrams_tx, datagrams_rx) = mpsc::channel(1024);
        let tls = TlsRoots::new(config.extra_ca_pem.as_deref())
            .map_err(|e| SessionError::Certificates(e.to_string()))?;
        let (mut net, mut gathered) =
            Network::new(&ips, ice, relay_only, tls, datagrams_tx).await?;
        // Relay-only, a connection has nothing to offer until a relay is allocated: wait for the
        // first one (or for every one to fail). Otherwise relays are trickled as they come.
        while relay_only && !net.has_relay() {
            if let Some(e) = net.no_relay() {
                return Err(e.into());
            }
            if let Some(found) = gathered.recv().await {
                net.absorb(found);
            }
        }
        let local_addrs = net.local_addrs();
        let (commands_tx, commands_rx) = mpsc::channel(64);
        let (events_tx, events_rx) = mpsc::channel(1024);
        let candidates = net.candidates();
        let io = Io {
            api,
            join,
            patient,
            signal,
            net,
            gathered,
            bearer: bearer.filter(|_| config.use_service_ice_servers),
        };
        let runner = Runner::new(config, io, candidates, events_tx)?;
        let task = tokio::spawn(runner.run(commands_rx, datagrams_rx));
        Ok(Self {
            commands: commands_tx,
            events: events_rx,
            task,
            local_addrs,
        })
    }

    /// The local UDP addresses (host candidates).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The next event; `None` when the session is over.
    pub async fn next_event(&mut self) -> Option<SessionEvent> {
        self.events.recv().await
    }

    async fn command(&self, command: Command) -> Result<(), SessionError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| SessionError::Ended)
    }

    /// Send a raw I420 frame; the session encodes it with the negotiated codec.
    pub async fn send_video(&self, frame: VideoFrame) -> Result<(), SessionError> {
        frame.validate()?;
        self.command(Command::Video(frame)).await
    }

    /// Share a screen with everyone in the call (true), or stop (false): each connection gets a
    /// video section of its own for it, after the camera's. Send its frames with
    /// [`Session::send_screen`]; the others receive them as [`SessionEvent::Video`] with
    /// [`VideoSource::Screen`](consult_peer::VideoSource::Screen).
    pub async fn share_screen(&self, on: bool) -> Result<(), SessionError> {
        self.command(Command::ShareScreen(on)).await
    }

    /// Send a raw I420 frame of the shared screen (see [`Session::share_screen`]); the session
    /// encodes it with the camera's codec, in an encoder of its own. Frames sent while the
    /// screen is not shared are dropped.
    pub async fn send_screen(&self, frame: VideoFrame) -> Result<(), SessionError> {
        frame.validate()?;
        self.command(Command::Screen(frame)).await
    }

    /// Send a frame the application encoded itself (its codec must be the negotiated one).
    pub async fn send_encoded_video(&self, frame: EncodedVideo) -> Result<(), SessionError> {
        self.command(Command::EncodedVideo(frame)).await
    }

    /// Send 20 ms of 48 kHz mono PCM (960 samples); the session encodes it with Opus.
    pub async fn send_audio(&self, pcm: Vec<i16>) -> Result<(), SessionError> {
        if pcm.len() != FRAME_SAMPLES {
            return Err(CodecError::InvalidFrame(format!(
                "{} samples, expected {FRAME_SAMPLES}",
                pcm.len()
            ))
            .into());
        }
        self.command(Command::Audio(pcm)).await
    }

    /// Send an Opus packet the application encoded itself (20 ms, 48 kHz).
    pub async fn send_encoded_audio(&self, packet: Vec<u8>) -> Result<(), SessionError> {
        self.command(Command::EncodedAudio(packet)).await
    }

    /// Ask the remote for a keyframe (the session does it itself when it decodes; in
    /// [`ReceiveMode::Encoded`] the application decides, e.g. after a gap). Requests closer
    /// than 250 ms apart are merged.
    pub async fn request_keyframe(&self) -> Result<(), SessionError> {
        self.command(Command::RequestKeyframe).await
    }

    /// Send a chat message to everyone in the call.
    pub async fn send_chat(&self, text: &str) -> Result<(), SessionError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Chat(text.to_owned(), tx)).await?;
        Ok(rx.await.map_err(|_| SessionError::Ended)??)
    }

    /// Offer a file to everyone in the call: one transfer per participant, whose ids are
    /// returned; progress and the results arrive as [`SessionEvent::File`].
    pub async fn offer_file(
        &self,
        name: &str,
        mime: &str,
        data: Vec<u8>,
    ) -> Result<Vec<Uuid>, SessionError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::OfferFile(
            name.to_owned(),
            mime.to_owned(),
            data,
            tx,
        ))
        .await?;
        Ok(rx.await.map_err(|_| SessionError::Ended)??)
    }

    /// Accept an offered file.
    pub async fn accept_file(&self, id: Uuid) -> Result<(), SessionError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::AcceptFile(id, tx)).await?;
        Ok(rx.await.map_err(|_| SessionError::Ended)??)
    }

    /// Decline an offered file.
    pub async fn reject_file(&self, id: Uuid) -> Result<(), SessionError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::RejectFile(id, tx)).await?;
        Ok(rx.await.map_err(|_| SessionError::Ended)??)
    }

    /// Cancel a transfer.
    pub async fn cancel_file(&self, id: Uuid) -> Result<(), SessionError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::CancelFile(id, tx)).await?;
        Ok(rx.await.map_err(|_| SessionError::Ended)??)
    }

    /// Start a new end-to-end key epoch now (the schedule also rotates on join, leave, a timer
    /// and counter limits).
    pub async fn rotate_e2ee_keys(&self) -> Result<(), SessionError> {
        self.command(Command::RotateKeys).await
    }

    /// Patient: answer the recording question (`true`: agree to be recorded; `false`: refuse,
    /// or withdraw a consent given). The service answers every participant with a
    /// [`SessionEvent::Recording`].
    pub async fn consent_to_recording(&self, recording: bool) -> Result<(), SessionError> {
        self.command(Command::Consent(recording)).await
    }

    /// Hang up and wait for the task to finish; a task that has not finished within 5 s (busy
    /// reconnecting to a service that is gone, say) is stopped, so nothing is left running.
    pub async fn leave(mut self) -> Result<(), SessionError> {
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.commands.send(Command::Leave)).await;
        match tokio::time::timeout(Duration::from_secs(5), &mut self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Ok(()),
            Err(_) => {
                self.task.abort();
                Ok(())
            }
        }
    }
}

struct Runner {
    config: SessionConfig,
    /// The service, for reconnecting.
    api: ApiClient,
    join: ClientMessage,
    _patient: Option<PatientPlace>,
    signal: Option<SignalConnection>,
    /// The sockets and TURN allocations (their reader tasks end with the session).
    net: Network,
    /// Relays and mapped addresses as the background gathering finds them.
    gathered: mpsc::Receiver<Gathered>,
    /// Relay-only and no relay could be used: gather again then.
    regather_at: Option<Instant>,
    /// The token that fetches ICE servers, and when to fetch them again: TURN credentials are
    /// renewed at three quarters of their lifetime, before the relay refuses them.
    bearer: Option<String>,
    renew_at: Option<Instant>,
    /// A renewal's request under way.
    renewal: Option<tokio::task::JoinHandle<Result<IceServers, ApiError>>>,
    events: mpsc::Sender<SessionEvent>,
    /// Every decision about the call (negotiation, ICE restart, keyframes, the recorder).
    call: Call,
    call_timeout: Instant,
    /// The encoder of `send_video` frames, with the frame size it was made for.
    video_encoder: Option<(Box<dyn VideoEncoder>, (u32, u32))>,
    /// The bitrate the call last asked video to be sent at (kept for a new encoder).
    video_bitrate: Option<u32>,
    /// The encoder of the shared screen, with the frame size it was made for.
    screen_encoder: Option<(Box<dyn VideoEncoder>, (u32, u32))>,
    audio_encoder: OpusEncoder,
    /// Voice not encoded yet: in audio only, the first frame of a packet of two.
    pending_audio: Vec<i16>,
    /// Each sender's decoders (their state is per stream).
    audio_decoders: HashMap<Uuid, OpusDecoder>,
    /// The RTP time of each sender's last audio packet and the samples it held (a gap after
    /// them is lost sound to rebuild).
    last_audio_rtp: HashMap<Uuid, (u64, u64)>,
    /// The loss each participant reports of our packets; audio FEC follows the worst.
    egress_loss: HashMap<Uuid, f32>,
    /// The loss audio FEC protects against now, per cent.
    expected_loss: u8,
    /// Whether a file is going out to each participant.
    sending_file: HashMap<Uuid, bool>,
    /// The media we send each participant, bits per second (their connection's last statistics;
    /// a file going alongside does not count).
    send_bps: HashMap<Uuid, u64>,
    /// The step our camera's video goes out at, and when it was last decided.
    video_ladder: VideoLadder,
    ladder_sampled_at: Instant,
    /// When the last camera frame was encoded (frames between steps' intervals are skipped); in
    /// audio only, the last picture.
    video_sent_at: Option<Instant>,
    /// In audio only: the last picture, sent again until the instant with it.
    still: Option<(VideoFrame, Instant)>,
    video_decoders: HashMap<(Uuid, VideoSource), (VideoCodec, Box<dyn VideoDecoder>)>,
    /// When to re-establish signaling while media goes on peer to peer, and what to send then.
    link: SignalLink,
    /// The reconnection attempt under way (its own task, so a service that does not answer
    /// never stalls the media).
    attempt: Option<Attempt>,
}

/// A reconnection attempt's task, aborted when the session ends.
struct Attempt(tokio::task::JoinHandle<Result<SignalConnection, ApiError>>);

impl Drop for Attempt {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the session's run loop owns besides the call.
struct Io {
    api: ApiClient,
    join: ClientMessage,
    patient: Option<PatientPlace>,
    signal: SignalConnection,
    net: Network,
    gathered: mpsc::Receiver<Gathered>,
    /// The token that fetches ICE servers (to renew TURN credentials).
    bearer: Option<String>,
}

impl Runner {
    fn new(
        config: SessionConfig,
        io: Io,
        candidates: LocalCandidates,
        events: mpsc::Sender<SessionEvent>,
    ) -> Result<Self, SessionError> {
        let now = Instant::now();
        let call = Call::new(
            CallConfig {
                peer: config.peer.clone(),
                receive: config.receive,
                ice_restart_after: config.ice_restart_after,
                polite_offer_delay: config.polite_offer_delay,
                e2ee: config.e2ee,
                e2ee_schedule: config.e2ee_schedule.clone(),
                video_bitrate_bps: config.video.bitrate_bps,
            },
            candidates,
            now,
        );
        let renew_at = renewal_due(&io.net, now);
        Ok(Self {
            config,
            api: io.api,
            join: io.join,
            _patient: io.patient,
            signal: Some(io.signal),
            net: io.net,
            gathered: io.gathered,
            regather_at: None,
            renew_at,
            bearer: io.bearer,
            renewal: None,
            events,
            call,
            call_timeout: now,
            video_encoder: None,
            video_bitrate: None,
            screen_encoder: None,
            audio_encoder: OpusEncoder::new(AUDIO_BITRATE_BPS)?,
            audio_decoders: HashMap::new(),
            last_audio_rtp: HashMap::new(),
            pending_audio: Vec::with_capacity(AUDIO_ONLY_FRAMES_PER_PACKET * FRAME_SAMPLES),
            egress_loss: HashMap::new(),
            send_bps: HashMap::new(),
            sending_file: HashMap::new(),
            video_ladder: VideoLadder::new(Instant::now()),
            ladder_sampled_at: Instant::now(),
            video_sent_at: None,
            still: None,
            expected_loss: DEFAULT_EXPECTED_LOSS_PERCENT,
            video_decoders: HashMap::new(),
            link: SignalLink::new(),
            attempt: None,
        })
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut datagrams: mpsc::Receiver<Datagram>,
    ) -> Result<(), SessionError> {
        let result = self.run_loop(&mut commands, &mut datagrams).await;
        if let Some(signal) = self.signal.take() {
            signal.close().await;
        }
        if let Err(e) = &result {
            emit(
                &self.events,
                SessionEvent::Warning(format!("session ended: {e}")),
            )
            .await;
        }
        result
    }

    async fn run_loop(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        datagrams: &mut mpsc::Receiver<Datagram>,
    ) -> Result<(), SessionError> {
        let mut heartbeat = tokio::time::interval(self.call.heartbeat());
        // Our addresses are watched when the application left them to us: a new or lost
        // address restarts ICE at once.
        let watch_interfaces = self.config.bind_ips.is_empty();
        let mut interfaces = tokio::time::interval(INTERFACE_POLL);
        interfaces.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.drain_call().await?;
            match self.call.end() {
                Some(CallEnd::Finished) => return Ok(()),
                Some(CallEnd::Rejected { code, message }) => {
                    return Err(ApiError::Rejected {
                        code: code.clone(),
                        message: message.clone(),
                    }
                    .into())
                }
                None => {}
            }
            if heartbeat.period() != self.call.heartbeat() {
                heartbeat = tokio::time::interval(self.call.heartbeat());
            }
            let wake = self.next_wake();
            tokio::select! {
                attempt = reconnect_attempt(&mut self.attempt) => self.reconnect_attempted(attempt).await?,
                message = recv_signal(&mut self.signal) => match message {
                    Ok(message) => {
                        if matches!(message, ServerMessage::Joined { .. }) {
                            self.link.joined();
                        }
                        self.call.handle_signal(Instant::now(), message)?;
                    }
                    Err(e) => self.start_reconnect(&e.to_string()).await?,
                },
                Some(datagram) = datagrams.recv() => {
                    self.call.handle_receive(datagram.at, datagram.source, datagram.local, &datagram.bytes);
                    // What else has arrived, up to a batch, before the call is drained: the
                    // data channels then answer once for the batch.
                    for _ in 1..consult_peer::RECEIVE_BATCH {
                        let Ok(datagram) = datagrams.try_recv() else { break };
                        self.call.handle_receive(datagram.at, datagram.source, datagram.local, &datagram.bytes);
                    }
                }
                Some(found) = self.gathered.recv() => {
                    if self.net.absorb(found) {
                        self.call.set_local_candidates(Instant::now(), self.net.candidates())?;
                    }
                    if let Some(e) = self.net.no_relay() && self.regather_at.is_none() {
                        emit(&self.events, SessionEvent::Warning(format!("{e}; trying again shortly"))).await;
                        self.regather_at = Some(Instant::now() + REGATHER_PAUSE);
                    }
                }
                renewed = renewal_done(&mut self.renewal) => {
                    self.renewal = None;
                    match renewed {
                        Ok(ice) => {
                            tracing::info!(ttl_secs = ice.ttl_secs, "TURN credentials renewed");
                            self.net.renew(ice);
                            self.renew_at = renewal_due(&self.net, Instant::now());
                        }
                        Err(e) => {
                            emit(&self.events, SessionEvent::Warning(format!("could not renew the TURN credentials ({e}); trying again shortly"))).await;
                            self.renew_at = Some(Instant::now() + REGATHER_PAUSE);
                        }
                    }
                }
                _ = interfaces.tick(), if watch_interfaces || self.regather_at.is_some() || self.renew_at.is_some() => {
                    let now = Instant::now();
                    if let (Some(at), Some(bearer)) = (self.renew_at, &self.bearer)
                        && at <= now
                        && self.renewal.is_none()
                    {
                        self.renew_at = None;
                        let (api, bearer) = (self.api.clone(), bearer.clone());
                        self.renewal = Some(tokio::spawn(async move { api.ice_servers(&bearer).await }));
                    }
                    let before = self.net.local_addrs();
                    if watch_interfaces && self.net.refresh(&default_ips()).await {
                        self.regather_at = None;
                        self.call.set_local_candidates(now, self.net.candidates())?;
                        // An address we had is gone: so is every connection from it, the
                        // signaling one too (its messages would wait for a TCP timeout), and
                        // the ICE restart's offer goes on the new one.
                        let after = self.net.local_addrs();
                        if before.iter().any(|a| !after.iter().any(|b| b.ip() == a.ip())) {
                            self.start_reconnect("our network changed").await?;
                        }
                    } else if self.regather_at.is_some_and(|at| at <= now) {
                        self.regather_at = None;
                        self.net.regather();
                    }
                }
                command = commands.recv() => match command {
                    None | Some(Command::Leave) => {
                        if let Some(signal) = &mut self.signal {
                            let _ = signal.send(&ClientMessage::Leave {}).await;
                        }
                        return Ok(());
                    }
                    Some(Command::Consent(recording)) => {
                        self.send_signal(ClientMessage::Consent { recording }).await?;
                    }
                    Some(command) => self.handle_command(command)?,
                },
                _ = heartbeat.tick() => {
                    if let Some(signal) = &mut self.signal
                        && let Err(e) = signal.send(&ClientMessage::Ping {}).await {
                            self.start_reconnect(&e.to_string()).await?;
                        }
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    self.call.handle_timeout(now)?;
                    if self.link.handle_timeout(now) {
                        let (api, join) = (self.api.clone(), self.join.clone());
                        self.attempt = Some(Attempt(tokio::spawn(async move {
                            tokio::time::timeout(Duration::from_secs(2), api.signal(join))
                                .await
                                .unwrap_or(Err(ApiError::Closed))
                        })));
                    }
                }
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let mut wake = self.call_timeout;
        if let Some(at) = self.link.poll_timeout() {
            wake = wake.min(at);
        }
        wake.max(Instant::now())
    }

    /// Signaling dropped: retry with back-off from the run loop (the policy is
    /// [`SignalLink`]), so media, timers and commands go on meanwhile.
    async fn start_reconnect(&mut self, why: &str) -> Result<(), SessionError> {
        self.signal = None;
        match self.link.lost(Instant::now()) {
            Err(GaveUp) => Err(ApiError::Closed.into()),
            Ok(false) => Ok(()),
            Ok(true) => {
                emit(
                    &self.events,
                    SessionEvent::Warning(format!("signaling lost ({why}); reconnecting")),
                )
                .await;
                Ok(())
            }
        }
    }

    async fn reconnect_attempted(
        &mut self,
        attempt: Result<SignalConnection, ApiError>,
    ) -> Result<(), SessionError> {
        self.attempt = None;
        match attempt {
            Ok(mut signal) => {
                let unsent = self.link.reconnected();
                for (i, message) in unsent.iter().enumerate() {
                    if let Err(e) = signal.send(message).await {
                        for message in &unsent[i..] {
                            self.link.queue(message.clone());
                        }
                        return self.start_reconnect(&e.to_string()).await;
                    }
                }
                self.signal = Some(signal);
                Ok(())
            }
            Err(_) => match self.link.attempt_failed(Instant::now()) {
                Ok(()) => Ok(()),
                Err(GaveUp) => Err(ApiError::Closed.into()),
            },
        }
    }

    async fn send_signal(&mut self, message: ClientMessage) -> Result<(), SessionError> {
        match &mut self.signal {
            Some(signal) => {
                if let Err(e) = signal.send(&message).await {
                    self.link.queue(message);
                    self.start_reconnect(&e.to_string()).await?;
                }
                Ok(())
            }
            None if !self.link.is_up() => {
                self.link.queue(message);
                Ok(())
            }
            None => Err(ApiError::Closed.into()),
        }
    }

    /// Do what the call decided: send, tell the application, decode, adapt the encoder.
    async fn drain_call(&mut self) -> Result<(), SessionError> {
        loop {
            let output = self.call.poll_output()?;
            // Datagrams are gathered for one batched send: out before anything that may wait.
            if !matches!(output, CallOutput::Transmit(_)) {
                self.net.flush();
            }
            match output {
                CallOutput::Signal(message) => self.send_signal(message).await?,
                CallOutput::Transmit(transmit) => self.net.transmit(transmit),
                CallOutput::Event(event) => {
                    if let SessionEvent::PeerLeft { participant_id } = &event {
                        self.forget_decoders(*participant_id);
                        self.egress_loss.remove(participant_id);
                        self.send_bps.remove(participant_id);
                        self.sending_file.remove(participant_id);
                    }
                    if let SessionEvent::Stats { peer, stats } = &event {
                        self.send_bps.insert(*peer, stats.media_send_bps);
                        self.sending_file.insert(*peer, stats.sending_file);
                        if let Some(loss) = stats.egress_loss {
                            self.protect_audio_against(*peer, loss);
                        }
                    }
                    let stats_came = matches!(event, SessionEvent::Stats { .. });
                    emit(&self.events, event).await;
                    if stats_came {
                        self.step_video().await;
                    }
                }
                CallOutput::Frame { from, frame } => self.handle_frame(from, frame).await?,
                CallOutput::Bitrate(bps) => {
                    self.video_bitrate = Some(bps);
                    let bps = bps.min(self.video_ladder.step().max_bps());
                    if let Some((encoder, _)) = &mut self.video_encoder
                        && let Err(e) = encoder.set_bitrate(bps)
                    {
                        tracing::debug!(error = %e, "could not adapt the bitrate");
                    }
                }
                CallOutput::Timeout(at) => {
                    self.call_timeout = at;
                    return Ok(());
                }
            }
        }
    }

    fn handle_command(&mut self, command: Command) -> Result<(), SessionError> {
        let now = Instant::now();
        match command {
            Command::Video(frame) => {
                let Some(codec) = self.call.video_codec() else {
                    return Ok(());
                };
                // The ladder's step: frames closer together than it allows wait for the next,
                // at its size. In audio only, a picture (a keyframe) every few seconds, and the
                // same picture again for a moment after it: those repeats cost a few bytes each
                // and push it through a receiver that still waits on a frame lost before (str0m
                // gives up on one only after ten later frames).
                let step = self.video_ladder.step();
                let (frame, mut force_keyframe) = if step == Step::AudioOnly {
                    let due = self.video_sent_at.is_none_or(|at| {
                        now.saturating_duration_since(at) + FRAME_SLACK >= STILL_EVERY
                    });
                    match (&self.still, due) {
                        (_, true) => {
                            let picture = frame.downscaled(step.scale_down_by());
                            self.still = Some((picture.clone(), now + STILL_REPEAT));
                            (picture, true)
                        }
                        (Some((picture, until)), false) if now < *until => (picture.clone(), false),
                        _ => return Ok(()),
                    }
                } else {
                    self.still = None;
                    if self.video_sent_at.is_some_and(|at| {
                        now.saturating_duration_since(at) + FRAME_SLACK < step.min_frame_interval()
                    }) {
                        return Ok(());
                    }
                    let frame = match step.scale_down_by() {
                        1 => frame,
                        by => frame.downscaled(by),
                    };
                    (frame, false)
                };
                force_keyframe |= self.call.keyframe_due();
                // A new codec, or frames of a new size (a camera or a source that changed its
                // resolution): a new encoder, starting with a keyframe.
                let size = (frame.width, frame.height);
                if self
                    .video_encoder
                    .as_ref()
                    .is_none_or(|(e, made_for)| e.codec() != codec || *made_for != size)
                {
                    let v = self.config.video;
                    let bitrate = self
                        .video_bitrate
                        .unwrap_or(v.bitrate_bps)
                        .min(step.max_bps());
                    let encoder = video_encoder(codec, frame.width, frame.height, bitrate, v.fps)?;
                    self.video_encoder = Some((encoder, size));
                    force_keyframe = true;
                }
                if let Some((encoder, _)) = &mut self.video_encoder
                    && let Some(encoded) = encoder.encode(&frame, force_keyframe)?
                {
                    if step != Step::AudioOnly || force_keyframe {
                        self.video_sent_at = Some(now);
                    }
                    // The picture of audio only goes twice: the link is too weak for video, it
                    // loses packets, and a keyframe is whole only if every packet arrives.
                    if step == Step::AudioOnly && encoded.keyframe {
                        tracing::debug!(bytes = encoded.data.len(), "audio only: a picture");
                        self.call.copy_next_video_frame(PICTURE_COPIES);
                    }
                    self.call.video_encoded();
                    self.call.write_video(now, codec, &encoded.data)?;
                }
            }
            Command::ShareScreen(on) => {
                self.call.share_screen(on);
                if !on {
                    self.screen_encoder = None;
                }
            }
            Command::Screen(frame) => {
                let Some(codec) = self.call.video_codec() else {
                    return Ok(());
                };
                if !self.call.screen_shared() {
                    return Ok(());
                }
                let mut force_keyframe = self.call.screen_keyframe_due();
                let size = (frame.width, frame.height);
                if self
                    .screen_encoder
                    .as_ref()
                    .is_none_or(|(e, made_for)| e.codec() != codec || *made_for != size)
                {
                    let v = self.config.video;
                    let encoder =
                        video_encoder(codec, frame.width, frame.height, v.bitrate_bps, v.fps)?;
                    self.screen_encoder = Some((encoder, size));
                    force_keyframe = true;
                }
                if let Some((encoder, _)) = &mut self.screen_encoder
                    && let Some(encoded) = encoder.encode(&frame, force_keyframe)?
                {
                    self.call.write_screen(now, codec, &encoded.data)?;
                }
            }
            Command::EncodedVideo(encoded) => {
                self.call.write_video(now, encoded.codec, &encoded.data)?;
            }
            Command::Audio(pcm) => {
                if self.call.is_connected() {
                    // A packet every 20 ms, or of two frames in audio only (the first waits).
                    let frames = match self.video_ladder.step() {
                        Step::AudioOnly => AUDIO_ONLY_FRAMES_PER_PACKET,
                        _ => 1,
                    };
                    self.pending_audio.extend_from_slice(&pcm);
                    if self.pending_audio.len() < frames * FRAME_SAMPLES {
                        return Ok(());
                    }
                    let samples = self.pending_audio.len();
                    let encoded = self.audio_encoder.encode(&self.pending_audio);
                    self.pending_audio.clear();
                    let packet = encoded?;
                    // Silence (DTX) is not sent, but its time passes: the receivers conceal the gap.
                    if is_dtx(&packet) {
                        self.call.skip_audio(samples);
                    } else {
                        self.call.write_audio(now, &packet)?;
                    }
                }
            }
            Command::EncodedAudio(packet) => self.call.write_audio(now, &packet)?,
            Command::RequestKeyframe => self.call.request_keyframe(now),
            Command::Chat(text, reply) => {
                let _ = reply.send(self.for_everyone("chat", |p| p.send_chat(&text)).map(drop));
            }
            Command::OfferFile(name, mime, data, reply) => {
                let _ = reply
                    .send(self.for_everyone("file", |p| p.offer_file(&name, &mime, data.clone())));
            }
            Command::AcceptFile(id, reply) => {
                let _ = reply.send(self.on_transfer(|p| p.accept_file(id)));
            }
            Command::RejectFile(id, reply) => {
                let _ = reply.send(self.on_transfer(|p| p.reject_file(id)));
            }
            Command::CancelFile(id, reply) => {
                let _ = reply.send(self.on_transfer(|p| p.cancel_file(id)));
            }
            Command::RotateKeys => {
                for (_, peer) in self.call.peers_mut() {
                    peer.e2ee_rotate();
                }
            }
            Command::Consent(_) | Command::Leave => {}
        }
        Ok(())
    }

    /// Do `what` on the data channel `channel` of every connection media flows on: a chat
    /// message or a file goes to everyone in the call. The results of those it reached; an
    /// error when it reached nobody (the first error, or the channel not open).
    fn for_everyone<T>(
        &mut self,
        channel: &'static str,
        mut what: impl FnMut(&mut Peer) -> Result<T, PeerError>,
    ) -> Result<Vec<T>, PeerError> {
        let connected = self.call.connected_peers();
        let mut done = Vec::new();
        let mut first_error = None;
        for (remote, peer) in self.call.peers_mut() {
            if !connected.contains(&remote) {
                continue;
            }
            match what(peer) {
                Ok(result) => done.push(result),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match (done.is_empty(), first_error) {
            (true, Some(e)) => Err(e),
            (true, None) => Err(PeerError::ChannelNotOpen(channel)),
            (false, _) => Ok(done),
        }
    }

    /// Do `what` on the connection that holds the file transfer it names (the first that does
    /// not refuse it). When none takes it: the error of the connection that knew the transfer,
    /// if one did (not "unknown transfer" from another connection that never had it).
    fn on_transfer(
        &mut self,
        mut what: impl FnMut(&mut Peer) -> Result<(), PeerError>,
    ) -> Result<(), PeerError> {
        let mut refusal = None;
        for (_, peer) in self.call.peers_mut() {
            match what(peer) {
                Ok(()) => return Ok(()),
                Err(PeerError::File(consult_peer::file_transfer::FileError::UnknownTransfer)) => {
                    refusal.get_or_insert(PeerError::File(
                        consult_peer::file_transfer::FileError::UnknownTransfer,
                    ));
                }
                Err(e) => refusal = Some(e),
            }
        }
        Err(refusal.unwrap_or(PeerError::ChannelNotOpen("file")))
    }

    /// Decode a frame the call let through (or hand it over as it is), with the decoders of
    /// its sender.
    async fn handle_frame(&mut self, from: Uuid, frame: EncodedFrame) -> Result<(), SessionError> {
        if self.config.receive == ReceiveMode::Encoded {
            emit(&self.events, SessionEvent::EncodedFrame { from, frame }).await;
            return Ok(());
        }
        match frame.kind {
            TrackKind::Audio => {
                let samples = opus_packet_samples(&frame.data).unwrap_or(FRAME_SAMPLES) as u64;
                let previous = self.last_audio_rtp.get(&from).copied();
                let Some((concealed_frames, rebuilt_samples)) =
                    audio_gap(previous, frame.rtp_time, samples)
                else {
                    return Ok(());
                };
                self.last_audio_rtp.insert(from, (frame.rtp_time, samples));
                let decoder = self.audio_decoder(from)?;
                let mut concealed = Vec::new();
                for _ in 0..concealed_frames {
                    if let Ok(samples) = decoder.conceal() {
                        concealed.push(samples);
                    }
                }
                let rebuilt = if rebuilt_samples > 0 {
                    decoder
                        .decode_lost_before(&frame.data, rebuilt_samples as usize)
                        .ok()
                } else {
                    None
                };
                let decoded = decoder.decode(&frame.data);
                for samples in concealed {
                    emit(&self.events, SessionEvent::AudioConcealed { from, samples }).await;
                }
                if let Some(samples) = rebuilt {
                    emit(&self.events, SessionEvent::Audio { from, samples }).await;
                }
                match decoded {
                    Ok(samples) => emit(&self.events, SessionEvent::Audio { from, samples }).await,
                    Err(e) => {
                        emit(
                            &self.events,
                            SessionEvent::Warning(format!("audio decode: {e}")),
                        )
                        .await
                    }
                }
            }
            TrackKind::Video(codec) => {
                let key = (from, frame.source);
                if self
                    .video_decoders
                    .get(&key)
                    .is_none_or(|(c, _)| *c != codec)
                {
                    self.video_decoders
                        .insert(key, (codec, video_decoder(codec)?));
                }
                let Some((_, decoder)) = self.video_decoders.get_mut(&key) else {
                    return Ok(());
                };
                match decoder.decode(&frame.data) {
                    Ok(Some(picture)) => {
                        self.call.video_decoded(from, frame.source);
                        emit(
                            &self.events,
                            SessionEvent::Video {
                                from,
                                frame: picture,
                                codec,
                                source: frame.source,
                            },
                        )
                        .await;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.call
                            .video_undecodable(from, frame.source, Instant::now());
                        emit(
                            &self.events,
                            SessionEvent::Warning(format!("video decode: {e}")),
                        )
                        .await;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Runner {
    /// `peer` reports losing this fraction of our packets: in-band FEC protects against the
    /// worst loss any participant reports (rounded up, at least the default, at most 30 %).
    fn protect_audio_against(&mut self, peer: Uuid, loss: f32) {
        self.egress_loss.insert(peer, loss);
        let worst = self.egress_loss.values().fold(0.0f32, |a, b| a.max(*b));
        let percent = ((worst * 100.0).ceil() as u8).clamp(DEFAULT_EXPECTED_LOSS_PERCENT, 30);
        if percent != self.expected_loss {
            match self.audio_encoder.set_expected_loss(percent) {
                Ok(()) => self.expected_loss = percent,
                Err(e) => tracing::debug!(error = %e, "could not set the expected audio loss"),
            }
        }
    }

    /// Once a second (on the connections' statistics): the video ladder's decision from the
    /// lowest send bandwidth estimate, what we send, and the worst loss any participant reports.
    async fn step_video(&mut self) {
        let now = Instant::now();
        if now.saturating_duration_since(self.ladder_sampled_at) < Duration::from_millis(900) {
            return;
        }
        self.ladder_sampled_at = now;
        let before = self.video_ladder.step();
        let worst = self.egress_loss.values().copied().reduce(f32::max);
        let sending = self.send_bps.values().copied().max();
        // A file going out fills the queues the estimate watches (it sees media only): then the
        // estimate says nothing about what video could have, and stepping video down would not
        // give it back. Loss still steps video down.
        let estimate = match self.sending_file.values().any(|s| *s) {
            true => None,
            false => self.call.lowest_send_estimate(),
        };
        let step = self.video_ladder.update(now, estimate, sending, worst);
        if step != before {
            tracing::info!(step = step.name(), ?estimate, ?sending, loss = ?worst, "video step");
            if let (Some((encoder, _)), Some(bps)) = (&mut self.video_encoder, self.video_bitrate)
                && let Err(e) = encoder.set_bitrate(bps.min(step.max_bps()))
            {
                tracing::debug!(error = %e, "could not adapt the bitrate");
            }
            // In audio only the link is too weak for video, and a voice takes most of what is
            // left (at 20 ms a packet, headers are half of it): Opus at half the rate (wideband
            // speech stays clear) leaves room for the picture every few seconds.
            let audio_only = step == Step::AudioOnly;
            if (before == Step::AudioOnly) != audio_only {
                let audio_bps = match audio_only {
                    true => AUDIO_ONLY_AUDIO_BITRATE_BPS,
                    false => AUDIO_BITRATE_BPS,
                };
                if let Err(e) = self.audio_encoder.set_bitrate(audio_bps) {
                    tracing::debug!(error = %e, "could not change the audio bitrate");
                }
                // The picture every few seconds goes at once, not at the fallen estimate.
                self.call.set_camera_unpaced(audio_only);
                // The first a second after the step (once what the step let out of the pacer has
                // drained), so the others see a picture soon after the video stopped.
                if audio_only {
                    self.video_sent_at = now.checked_sub(STILL_EVERY - FIRST_PICTURE_AFTER);
                }
            }
            emit(&self.events, SessionEvent::VideoStep { step }).await;
        }
    }

    /// The Opus decoder of `from`'s audio.
    fn audio_decoder(&mut self, from: Uuid) -> Result<&mut OpusDecoder, SessionError> {
        Ok(match self.audio_decoders.entry(from) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => entry.insert(OpusDecoder::new()?),
        })
    }

    /// Forget the decoders of participants who left.
    fn forget_decoders(&mut self, gone: Uuid) {
        self.audio_decoders.remove(&gone);
        self.last_audio_rtp.remove(&gone);
        self.video_decoders.retain(|(from, _), _| *from != gone);
    }
}

/// Hand an event to the application (borrowing only the sender, so the runner need not be
/// `Sync` across the await).
async fn emit(events: &mpsc::Sender<SessionEvent>, event: SessionEvent) {
    let _ = events.send(event).await;
}

/// The outcome of the reconnection attempt under way; pending while there is none.
/// When to renew the TURN credentials fetched now: at three quarters of their lifetime (at
/// least a second from now), when any TURN server is in use.
fn renewal_due(net: &Network, now: Instant) -> Option<Instant> {
    let ttl = net.credential_ttl().filter(|_| net.uses_turn())?;
    Some(now + (ttl * 3 / 4).max(Duration::from_secs(1)))
}

async fn renewal_done(
    renewal: &mut Option<tokio::task::JoinHandle<Result<IceServers, ApiError>>>,
) -> Result<IceServers, ApiError> {
    match renewal {
        Some(task) => task.await.unwrap_or(Err(ApiError::Closed)),
        None => std::future::pending().await,
    }
}

async fn reconnect_attempt(attempt: &mut Option<Attempt>) -> Result<SignalConnection, ApiError> {
    match attempt {
        Some(Attempt(task)) => task.await.unwrap_or(Err(ApiError::Closed)),
        None => std::future::pending().await,
    }
}

async fn recv_signal(signal: &mut Option<SignalConnection>) -> Result<ServerMessage, ApiError> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// What to make of an audio packet holding `samples` at `rtp_time`, after the sender's last one
/// (`previous`: its RTP time and the samples it held). `None`: it is not after the last one (it
/// came too late, or again), and is dropped. Otherwise the sound that did not come before it
/// (lost, or silence the sender did not send): as much as the packet holds is rebuilt from the
/// in-band FEC data it carries (the samples, second), what came before that cannot be and is
/// concealed 20 ms at a time, at most a second's worth (the frames, first).
fn audio_gap(previous: Option<(u64, u64)>, rtp_time: u64, samples: u64) -> Option<(u64, u64)> {
    if previous.is_some_and(|(last, _)| rtp_time <= last) {
        return None;
    }
    let missing = previous.map_or(0, |(last, held)| {
        rtp_time.saturating_sub(last.saturating_add(held))
    });
    let rebuilt = missing.min(samples);
    let concealed = ((missing - rebuilt) / FRAME_SAMPLES as u64).min(MAX_CONCEALED_FRAMES);
    Some((concealed, rebuilt))
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: u64 = FRAME_SAMPLES as u64;

    #[test]
    fn audio_packets_in_a_row_leave_no_gap_whatever_they_hold() {
        assert_eq!(audio_gap(None, 1_000, F), Some((0, 0)));
        assert_eq!(audio_gap(Some((1_000, F)), 1_000 + F, 2 * F), Some((0, 0)));
        assert_eq!(
            audio_gap(Some((1_000, 2 * F)), 1_000 + 2 * F, F),
            Some((0, 0))
        );
    }

    #[test]
    fn a_lost_packet_is_rebuilt_as_far_as_the_next_one_holds_and_the_rest_concealed() {
        // One 40 ms packet lost between two of 40 ms: all of it rebuilt.
        assert_eq!(audio_gap(Some((0, 2 * F)), 4 * F, 2 * F), Some((0, 2 * F)));
        // Back to 20 ms after a lost 40 ms packet: 20 ms rebuilt, 20 ms concealed.
        assert_eq!(audio_gap(Some((0, 2 * F)), 4 * F, F), Some((1, F)));
        // Three 20 ms packets lost: two concealed, the last rebuilt.
        assert_eq!(audio_gap(Some((0, F)), 4 * F, F), Some((2, F)));
    }

    #[test]
    fn late_repeated_or_wild_timestamps_never_run_away() {
        // Late or repeated: dropped.
        assert_eq!(audio_gap(Some((10 * F, F)), 10 * F, F), None);
        assert_eq!(audio_gap(Some((10 * F, F)), 3 * F, F), None);
        // Overlapping what the last one held (a sender whose clock is off): nothing missing.
        assert_eq!(audio_gap(Some((10 * F, 3 * F)), 11 * F, F), Some((0, 0)));
        // A jump of hours, or to the end of the clock: a second concealed at most.
        assert_eq!(
            audio_gap(Some((0, F)), u64::MAX, F),
            Some((MAX_CONCEALED_FRAMES, F))
        );
        assert_eq!(
            audio_gap(Some((u64::MAX - 1, u64::MAX)), u64::MAX, F),
            Some((0, 0))
        );
        // A gap that is no whole number of frames: what is left under 20 ms is not concealed.
        assert_eq!(audio_gap(Some((0, F)), F + 1_000, F), Some((0, 960)));
    }
}
