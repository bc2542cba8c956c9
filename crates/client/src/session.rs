//! The tokio driver: joins a consultation through the signaling service and runs a [`Peer`] on
//! real UDP sockets, with perfect negotiation, trickled candidates, ICE restart, codecs, chat and
//! files. One task owns everything (`&mut self`, no locks); the [`Session`] handle talks to it
//! with messages and hands out [`SessionEvent`]s.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consult_proto::signal::{
    ClientMessage, IceCandidate, ParticipantRole, RecordingState, SdpKind, ServerMessage,
    SessionDescription,
};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::reconnect::{GaveUp, SignalLink};
use crate::recorder_link::{RecorderLink, RecordingTarget};
use consult_api_client::{ApiClient, ApiError, Credentials, PatientPlace, SignalConnection};
use consult_codec::opus::{OpusDecoder, OpusEncoder, FRAME_SAMPLES};
use consult_codec::{
    video_decoder, video_encoder, CodecError, EncodedVideo, VideoDecoder, VideoEncoder, VideoFrame,
};
use consult_e2ee::{E2eeEvent, ScheduleConfig};
use consult_peer::file_transfer::FileEvent;
use consult_peer::{
    E2eeSetup, EncodedFrame, Output, Peer, PeerConfig, PeerError, PeerEvent,
    RemoteDescriptionOutcome, Stats, TrackKind, VideoCodec,
};

/// How received media is handed to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReceiveMode {
    /// Decode: [`SessionEvent::Video`] (I420) and [`SessionEvent::Audio`] (PCM).
    #[default]
    Decoded,
    /// Hand over encoded frames as they arrive: [`SessionEvent::EncodedFrame`].
    Encoded,
}

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
        }
    }
}

/// What happened in the consultation.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// In the consultation; a patient waits until [`SessionEvent::Admitted`].
    Joined {
        /// Our participant id.
        participant_id: Uuid,
        /// Whether already admitted.
        admitted: bool,
        /// The doctor's name.
        doctor_name: String,
    },
    /// The doctor let us in.
    Admitted,
    /// The doctor turned us away; the session ends.
    Declined,
    /// The other participant is here; media negotiation starts.
    PeerJoined {
        /// Their name.
        name: String,
    },
    /// The other participant left for good.
    PeerLeft,
    /// ICE found a working candidate pair; the DTLS handshake follows (then [`SessionEvent::Connected`]).
    IceConnected,
    /// Media and data flow.
    Connected,
    /// The connection dropped; an ICE restart follows if it does not come back.
    Disconnected,
    /// A decoded video frame.
    Video {
        /// The picture (I420).
        frame: VideoFrame,
        /// The codec it arrived in.
        codec: VideoCodec,
    },
    /// 20 ms of decoded 48 kHz mono audio.
    Audio(Vec<i16>),
    /// An encoded frame (in [`ReceiveMode::Encoded`]).
    EncodedFrame(EncodedFrame),
    /// The remote asked for a keyframe. The session handles it for raw frames it encodes; an
    /// application sending its own encoded video ([`Session::send_encoded_video`]) should send
    /// a keyframe next.
    KeyframeRequested,
    /// A chat message.
    Chat(String),
    /// An incoming chat message was refused (too long, not text).
    ChatRejected(String),
    /// File transfer offers, progress and results.
    File(FileEvent),
    /// Connection statistics, once a second.
    Stats(Stats),
    /// End-to-end encryption: the SAS to show the person ([`E2eeEvent::SasReady`]), keys
    /// switched or installed.
    E2ee(E2eeEvent),
    /// Whether the consultation is recorded now (show it to the person). While it is, the
    /// session also sends its media to the recorder.
    Recording(RecordingState),
    /// The consultation ended; the session is over.
    Ended,
    /// Something went wrong that the call survives (a bad datagram, a decode error).
    Warning(String),
}

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
    /// The session task is gone.
    #[error("the session has ended")]
    Ended,
}

enum Command {
    Video(VideoFrame),
    EncodedVideo(EncodedVideo),
    Audio(Vec<i16>),
    EncodedAudio(Vec<u8>),
    RequestKeyframe,
    Chat(String, oneshot::Sender<Result<(), PeerError>>),
    OfferFile(
        String,
        String,
        Vec<u8>,
        oneshot::Sender<Result<Uuid, PeerError>>,
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
        let ice = match (config.use_service_ice_servers, bearer) {
            (true, Some(bearer)) => Some(api.ice_servers(&bearer).await?),
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
        let mut sockets = Vec::new();
        let mut readers = Vec::new();
        for ip in ips {
            let socket = Arc::new(UdpSocket::bind(SocketAddr::new(ip, 0)).await?);
            let local = socket.local_addr()?;
            readers.push(tokio::spawn(read_socket(
                socket.clone(),
                local,
                datagrams_tx.clone(),
            )));
            sockets.push((local, socket));
        }
        let local_addrs = sockets.iter().map(|(a, _)| *a).collect();
        let mut relays = Vec::new();
        let mut reflexive = Vec::new();
        if let Some(ice) = &ice {
            for server in &ice.ice_servers {
                for url in &server.urls {
                    match (turn_address(url), &server.username, &server.credential) {
                        (Some(address), Some(username), Some(password)) => {
                            match Relay::allocate(
                                &address,
                                username,
                                password,
                                datagrams_tx.clone(),
                            )
                            .await
                            {
                                Ok(relay) => relays.push(relay),
                                Err(e) => {
                                    tracing::warn!(error = %e, server = %address, "TURN allocation failed")
                                }
                            }
                        }
                        _ => {
                            if let (Some(address), false) = (stun_address(url), relay_only) {
                                if let Some((local, socket)) = sockets.first() {
                                    match stun_binding(socket, &address).await {
                                        Ok(mapped) if mapped != *local => {
                                            reflexive.push((mapped, *local))
                                        }
                                        Ok(_) => {}
                                        Err(e) => {
                                            tracing::debug!(error = %e, "STUN binding failed")
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let (commands_tx, commands_rx) = mpsc::channel(64);
        let (events_tx, events_rx) = mpsc::channel(1024);
        let mut runner = Runner::new(config, api, join, patient, signal, sockets, events_tx)?;
        runner.relays = relays;
        runner.reflexive = reflexive;
        runner.relay_only = relay_only;
        runner.readers = AbortOnDrop(readers);
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

    /// Send a chat message.
    pub async fn send_chat(&self, text: &str) -> Result<(), SessionError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Chat(text.to_owned(), tx)).await?;
        Ok(rx.await.map_err(|_| SessionError::Ended)??)
    }

    /// Offer a file; progress and the result arrive as [`SessionEvent::File`].
    pub async fn offer_file(
        &self,
        name: &str,
        mime: &str,
        data: Vec<u8>,
    ) -> Result<Uuid, SessionError> {
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

fn default_ips() -> Vec<IpAddr> {
    let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
    if let Ok(interfaces) = if_addrs::get_if_addrs() {
        ips.extend(
            interfaces
                .into_iter()
                .filter(|i| !i.is_loopback() && i.ip().is_ipv4())
                .map(|i| i.ip()),
        );
    }
    ips
}

struct Datagram {
    local: SocketAddr,
    source: SocketAddr,
    at: Instant,
    bytes: Vec<u8>,
}

async fn read_socket(socket: Arc<UdpSocket>, local: SocketAddr, tx: mpsc::Sender<Datagram>) {
    let mut buffer = vec![0u8; 2048];
    loop {
        match socket.recv_from(&mut buffer).await {
            Ok((n, source)) => {
                let datagram = Datagram {
                    local,
                    source,
                    at: Instant::now(),
                    bytes: buffer[..n].to_vec(),
                };
                if tx.send(datagram).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // ICMP port unreachable and the like surface here on some systems; keep reading.
                tracing::debug!(error = %e, "udp receive error");
                if tx.is_closed() {
                    return;
                }
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
    sockets: Vec<(SocketAddr, Arc<UdpSocket>)>,
    relays: Vec<Relay>,
    reflexive: Vec<(SocketAddr, SocketAddr)>,
    relay_only: bool,
    events: mpsc::Sender<SessionEvent>,
    peer: Option<Peer>,
    /// File transfers of a connection that ended, resumed by the next one.
    parked_files: Option<consult_peer::file_transfer::FileTransfers>,
    remote: Option<Uuid>,
    pending_candidates: Vec<String>,
    polite: bool,
    admitted: bool,
    heartbeat: Duration,
    next_timeout: Instant,
    offer_at: Option<Instant>,
    down_since: Option<Instant>,
    started: Instant,
    video_encoder: Option<Box<dyn VideoEncoder>>,
    force_keyframe: bool,
    audio_encoder: OpusEncoder,
    audio_decoder: OpusDecoder,
    video_decoder: Option<(VideoCodec, Box<dyn VideoDecoder>)>,
    waiting_for_keyframe: bool,
    last_keyframe_request: Instant,
    audio_rtp: u64,
    frames_encoded: u64,
    frames_decoded: u64,
    /// Our participant id, once joined.
    local_id: Option<Uuid>,
    /// Whether this consultation is end-to-end encrypted.
    e2ee: bool,
    /// When the current connection came up, to notice a remote that never agrees keys.
    connected_at: Option<Instant>,
    e2ee_warned: bool,
    /// The consultation's recorder, when one is present.
    recorder_id: Option<Uuid>,
    /// The recording being made, from the last `recording` message.
    recording: Option<RecordingTarget>,
    /// The send-only connection to the recorder.
    recorder: Option<RecorderLink>,
    /// When to re-establish signaling while media goes on peer to peer, and what to send then.
    link: SignalLink,
    /// The reconnection attempt under way (its own task, so a service that does not answer
    /// never stalls the media).
    attempt: Option<Attempt>,
    /// The socket readers: they end with the session, even when its task is aborted.
    readers: AbortOnDrop,
}

/// Tasks that end when their owner is dropped.
#[derive(Default)]
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A reconnection attempt's task, aborted when the session ends.
struct Attempt(tokio::task::JoinHandle<Result<SignalConnection, ApiError>>);

impl Drop for Attempt {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long after connecting the remote may take to start key agreement before we say so.
const E2EE_AGREEMENT_WARNING: Duration = Duration::from_secs(10);

impl Runner {
    fn new(
        config: SessionConfig,
        api: ApiClient,
        join: ClientMessage,
        patient: Option<PatientPlace>,
        signal: SignalConnection,
        sockets: Vec<(SocketAddr, Arc<UdpSocket>)>,
        events: mpsc::Sender<SessionEvent>,
    ) -> Result<Self, SessionError> {
        let now = Instant::now();
        Ok(Self {
            config,
            api,
            join,
            _patient: patient,
            signal: Some(signal),
            sockets,
            relays: Vec::new(),
            reflexive: Vec::new(),
            relay_only: false,
            events,
            peer: None,
            parked_files: None,
            remote: None,
            pending_candidates: Vec::new(),
            polite: false,
            admitted: false,
            heartbeat: Duration::from_secs(15),
            next_timeout: now + Duration::from_secs(3600),
            offer_at: None,
            down_since: None,
            started: now,
            video_encoder: None,
            force_keyframe: true,
            audio_encoder: OpusEncoder::new(32_000)?,
            audio_decoder: OpusDecoder::new()?,
            video_decoder: None,
            waiting_for_keyframe: true,
            last_keyframe_request: now,
            audio_rtp: 0,
            frames_encoded: 0,
            frames_decoded: 0,
            local_id: None,
            e2ee: false,
            connected_at: None,
            e2ee_warned: false,
            recorder_id: None,
            recording: None,
            recorder: None,
            link: SignalLink::new(),
            attempt: None,
            readers: AbortOnDrop::default(),
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
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        loop {
            let wake = self.next_wake();
            tokio::select! {
                attempt = reconnect_attempt(&mut self.attempt) => self.reconnect_attempted(attempt).await?,
                message = recv_signal(&mut self.signal) => {
                    match message {
                        Ok(message) => {
                            if !self.handle_signal(message).await? {
                                return Ok(());
                            }
                            if heartbeat.period() != self.heartbeat {
                                heartbeat = tokio::time::interval(self.heartbeat);
                            }
                        }
                        Err(e) => self.start_reconnect(&e.to_string()).await?,
                    }
                }
                Some(datagram) = datagrams.recv() => {
                    let for_recorder = self.recorder.as_mut().filter(|link| {
                        link.peer.accepts(datagram.source, datagram.local, &datagram.bytes)
                    });
                    if let Some(link) = for_recorder {
                        if let Err(e) = link.peer.handle_receive(datagram.at, datagram.source, datagram.local, &datagram.bytes) {
                            tracing::debug!(error = %e, "recorder link dropped a datagram");
                        }
                    } else if let Some(peer) = &mut self.peer {
                        if let Err(e) = peer.handle_receive(datagram.at, datagram.source, datagram.local, &datagram.bytes) {
                            tracing::debug!(error = %e, "dropped a datagram");
                        }
                    }
                }
                command = commands.recv() => {
                    match command {
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
                    }
                }
                _ = heartbeat.tick() => {
                    if let Some(signal) = &mut self.signal {
                        if let Err(e) = signal.send(&ClientMessage::Ping {}).await {
                            self.start_reconnect(&e.to_string()).await?;
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if let Some(peer) = &mut self.peer {
                        peer.handle_timeout(now)?;
                    }
                    if let Some(link) = self.recorder.as_mut().filter(|l| l.next_timeout <= now) {
                        if let Err(e) = link.peer.handle_timeout(now) {
                            tracing::warn!(error = %e, "recorder link failed; dropping it");
                            self.recorder = None;
                        }
                    }
                    if self.link.handle_timeout(now) {
                        let (api, join) = (self.api.clone(), self.join.clone());
                        self.attempt = Some(Attempt(tokio::spawn(async move {
                            tokio::time::timeout(Duration::from_secs(2), api.signal(join))
                                .await
                                .unwrap_or(Err(ApiError::Closed))
                        })));
                    }
                    if self.offer_at.is_some_and(|at| at <= now) {
                        self.offer_at = None;
                        self.make_offer().await?;
                    }
                    if self.down_since.is_some_and(|since| now - since >= self.config.ice_restart_after) {
                        self.down_since = Some(now);
                        self.restart_ice().await?;
                    }
                }
            }
            self.drain_peer().await?;
        }
    }

    fn next_wake(&self) -> Instant {
        let mut wake = self.next_timeout;
        if let Some(link) = &self.recorder {
            wake = wake.min(link.next_timeout);
        }
        if let Some(at) = self.offer_at {
            wake = wake.min(at);
        }
        if let Some(at) = self.link.poll_timeout() {
            wake = wake.min(at);
        }
        if let Some(since) = self.down_since {
            wake = wake.min(since + self.config.ice_restart_after);
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

    /// Handle a signaling message; false when the session is over.
    async fn handle_signal(&mut self, message: ServerMessage) -> Result<bool, SessionError> {
        match message {
            ServerMessage::Joined {
                participant_id,
                admitted,
                polite,
                heartbeat_interval_ms,
                peers,
                consultation,
                ..
            } => {
                self.link.joined();
                self.polite = polite;
                self.admitted = admitted;
                self.local_id = Some(participant_id);
                self.e2ee = self.config.e2ee.unwrap_or(consultation.e2ee);
                self.heartbeat = Duration::from_millis(heartbeat_interval_ms.max(1000));
                emit(
                    &self.events,
                    SessionEvent::Joined {
                        participant_id,
                        admitted,
                        doctor_name: consultation.doctor_name,
                    },
                )
                .await;
                self.note_recorder(&peers);
                if let Some(peer) = peers
                    .into_iter()
                    .find(|p| p.role != ParticipantRole::Recorder)
                {
                    self.start_peer(peer.participant_id, peer.name).await?;
                }
                self.start_recorder_link().await?;
            }
            ServerMessage::Admitted { peers } => {
                self.admitted = true;
                emit(&self.events, SessionEvent::Admitted).await;
                self.note_recorder(&peers);
                if let Some(peer) = peers
                    .into_iter()
                    .find(|p| p.role != ParticipantRole::Recorder)
                {
                    self.start_peer(peer.participant_id, peer.name).await?;
                }
                self.start_recorder_link().await?;
            }
            // The service's recorder: a send-only connection of its own, beside the call.
            ServerMessage::PeerJoined { peer } if peer.role == ParticipantRole::Recorder => {
                self.recorder_id = Some(peer.participant_id);
                self.start_recorder_link().await?;
            }
            ServerMessage::PeerLeft { participant_id, .. }
                if self.recorder_id == Some(participant_id) =>
            {
                self.recorder_id = None;
                self.recorder = None;
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
                emit(&self.events, SessionEvent::Recording(state)).await;
                self.start_recorder_link().await?;
            }
            ServerMessage::Description { from, description }
                if Some(from) == self.recorder_id && description.kind == SdpKind::Answer =>
            {
                if let Some(link) = &mut self.recorder {
                    if let Err(e) = link.peer.handle_remote_answer(&description.sdp) {
                        tracing::warn!(error = %e, "the recorder's answer does not fit; dropping the link");
                        self.recorder = None;
                    }
                }
            }
            ServerMessage::Candidate {
                from,
                candidate: Some(candidate),
            } if Some(from) == self.recorder_id => {
                if let Some(link) = &mut self.recorder {
                    if let Err(e) = link.peer.add_remote_candidate(&candidate.candidate) {
                        tracing::debug!(error = %e, "ignored a recorder candidate");
                    }
                }
            }

            ServerMessage::PeerJoined { peer } => {
                self.start_peer(peer.participant_id, peer.name).await?;
            }
            ServerMessage::PeerLeft { participant_id, .. }
                if self.remote == Some(participant_id) =>
            {
                if let Some(peer) = &mut self.peer {
                    peer.remote_gone();
                }
                self.drain_peer().await?;
                self.peer = None;
                self.remote = None;
                emit(&self.events, SessionEvent::PeerLeft).await;
            }
            ServerMessage::Description { from, description } if Some(from) == self.remote => {
                self.handle_description(description).await?;
            }
            ServerMessage::Candidate { from, candidate } if Some(from) == self.remote => {
                if let (Some(peer), Some(candidate)) = (&mut self.peer, candidate) {
                    if let Err(e) = peer.add_remote_candidate(&candidate.candidate) {
                        emit(
                            &self.events,
                            SessionEvent::Warning(format!("ignored a remote candidate: {e}")),
                        )
                        .await;
                    }
                }
            }
            ServerMessage::Declined {} => {
                emit(&self.events, SessionEvent::Declined).await;
                return Ok(false);
            }
            ServerMessage::ConsultationEnded {} => {
                emit(&self.events, SessionEvent::Ended).await;
                return Ok(false);
            }
            ServerMessage::Replaced {} => {
                emit(
                    &self.events,
                    SessionEvent::Warning("another connection took this place".into()),
                )
                .await;
                return Ok(false);
            }
            ServerMessage::Error {
                code,
                message,
                fatal,
            } => {
                emit(
                    &self.events,
                    SessionEvent::Warning(format!("{}: {message}", code.as_str())),
                )
                .await;
                if fatal {
                    return Err(ApiError::Rejected {
                        code: code.as_str().into(),
                        message,
                    }
                    .into());
                }
            }
            _ => {}
        }
        Ok(true)
    }

    fn note_recorder(&mut self, peers: &[consult_proto::signal::Peer]) {
        if let Some(recorder) = peers.iter().find(|p| p.role == ParticipantRole::Recorder) {
            self.recorder_id = Some(recorder.participant_id);
        }
    }

    /// A (new) remote participant: a fresh peer connection, host candidates, and an offer
    /// (right away if impolite, after a short wait if polite).
    async fn start_peer(&mut self, remote: Uuid, name: String) -> Result<(), SessionError> {
        // Transfers of the previous connection (to this or an earlier peer) resume on the new one.
        if let Some(old) = &mut self.peer {
            self.parked_files = Some(old.take_file_transfers());
            self.drain_peer().await?;
        }
        let now = Instant::now();
        let e2ee = match (self.e2ee, self.local_id) {
            (true, Some(local)) => Some(E2eeSetup {
                local_id: local.to_string(),
                remote_id: remote.to_string(),
                schedule: self.config.e2ee_schedule.clone(),
            }),
            _ => None,
        };
        let mut peer = Peer::new(
            PeerConfig {
                polite: self.polite,
                e2ee,
                ..self.config.peer.clone()
            },
            now,
        );
        self.connected_at = None;
        self.e2ee_warned = false;
        if let Some(files) = self.parked_files.take() {
            peer.adopt_file_transfers(files);
        }
        let candidates = self.local_candidates(&mut peer)?;
        self.peer = Some(peer);
        self.remote = Some(remote);
        self.video_encoder = None;
        self.video_decoder = None;
        self.force_keyframe = true;
        self.waiting_for_keyframe = true;
        self.next_timeout = now;
        emit(&self.events, SessionEvent::PeerJoined { name }).await;
        // Browsers refuse candidates before a remote description: they go after our first
        // offer or answer.
        self.pending_candidates = candidates;
        self.offer_at = Some(if self.polite {
            now + self.config.polite_offer_delay
        } else {
            now
        });
        Ok(())
    }

    /// Send a description, then any candidates held back until now.
    async fn send_description(&mut self, kind: SdpKind, sdp: String) -> Result<(), SessionError> {
        let Some(to) = self.remote else { return Ok(()) };
        self.send_signal(ClientMessage::Description {
            to,
            description: SessionDescription { kind, sdp },
        })
        .await?;
        for line in std::mem::take(&mut self.pending_candidates) {
            let candidate = IceCandidate {
                candidate: line,
                sdp_mid: None,
                sdp_m_line_index: Some(0),
                username_fragment: None,
            };
            self.send_signal(ClientMessage::Candidate {
                to,
                candidate: Some(candidate),
            })
            .await?;
        }
        Ok(())
    }

    async fn make_offer(&mut self) -> Result<(), SessionError> {
        let Some(peer) = &mut self.peer else {
            return Ok(());
        };
        if let Some(sdp) = peer.create_offer()? {
            self.send_description(SdpKind::Offer, sdp).await?;
        }
        Ok(())
    }

    async fn restart_ice(&mut self) -> Result<(), SessionError> {
        emit(
            &self.events,
            SessionEvent::Warning("connection down: restarting ICE".into()),
        )
        .await;
        let Some(peer) = &mut self.peer else {
            return Ok(());
        };
        if let Some(sdp) = peer.restart_ice()? {
            self.send_description(SdpKind::Offer, sdp).await?;
        }
        Ok(())
    }

    async fn handle_description(
        &mut self,
        description: SessionDescription,
    ) -> Result<(), SessionError> {
        let Some(peer) = &mut self.peer else {
            return Ok(());
        };
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
                self.offer_at = None;
                self.send_description(SdpKind::Answer, sdp).await?;
            }
            Ok(RemoteDescriptionOutcome::Applied) => {}
            Ok(RemoteDescriptionOutcome::IgnoredGlare) => return Ok(()),
            Err(e) => {
                // A bad or incompatible SDP: say so and keep the session.
                emit(
                    &self.events,
                    SessionEvent::Warning(format!("remote description refused: {e}")),
                )
                .await;
                return Ok(());
            }
        }
        if self.peer.as_ref().is_some_and(Peer::needs_negotiation) {
            self.offer_at = Some(Instant::now() + Duration::from_millis(50));
        }
        Ok(())
    }

    fn handle_command(&mut self, command: Command) -> Result<(), SessionError> {
        let now = Instant::now();
        let rtp_90k =
            |started: Instant| ((now - started).as_micros() as u64 * 9 / 100) & 0xffff_ffff;
        match command {
            Command::Video(frame) => {
                let Some(peer) = &mut self.peer else {
                    return Ok(());
                };
                if !peer.is_connected() {
                    return Ok(());
                }
                let Some(codec) = peer.video_codec() else {
                    return Ok(());
                };
                if self
                    .video_encoder
                    .as_ref()
                    .is_none_or(|e| e.codec() != codec)
                {
                    let v = self.config.video;
                    self.video_encoder = Some(video_encoder(
                        codec,
                        frame.width,
                        frame.height,
                        v.bitrate_bps,
                        v.fps,
                    )?);
                    self.force_keyframe = true;
                }
                if let Some(encoder) = &mut self.video_encoder {
                    if let Some(encoded) = encoder.encode(&frame, self.force_keyframe)? {
                        self.force_keyframe = false;
                        self.frames_encoded += 1;
                        survivable(peer.write_video(
                            now,
                            rtp_90k(self.started),
                            codec,
                            &encoded.data,
                        ))?;
                        if let Some(link) = &mut self.recorder {
                            survivable(link.write_video(
                                now,
                                rtp_90k(self.started),
                                codec,
                                &encoded.data,
                            ))?;
                        }
                    }
                }
            }
            Command::EncodedVideo(encoded) => {
                if let Some(peer) = &mut self.peer {
                    if peer.is_connected() {
                        survivable(peer.write_video(
                            now,
                            rtp_90k(self.started),
                            encoded.codec,
                            &encoded.data,
                        ))?;
                        if let Some(link) = &mut self.recorder {
                            survivable(link.write_video(
                                now,
                                rtp_90k(self.started),
                                encoded.codec,
                                &encoded.data,
                            ))?;
                        }
                    }
                }
            }
            Command::Audio(pcm) => {
                let Some(peer) = &mut self.peer else {
                    return Ok(());
                };
                if !peer.is_connected() {
                    return Ok(());
                }
                let packet = self.audio_encoder.encode(&pcm)?;
                survivable(peer.write_audio(now, self.audio_rtp, &packet))?;
                if let Some(link) = &mut self.recorder {
                    survivable(link.write_audio(now, self.audio_rtp, &packet))?;
                }
                self.audio_rtp = (self.audio_rtp + FRAME_SAMPLES as u64) & 0xffff_ffff;
            }
            Command::EncodedAudio(packet) => {
                let Some(peer) = &mut self.peer else {
                    return Ok(());
                };
                if !peer.is_connected() {
                    return Ok(());
                }
                survivable(peer.write_audio(now, self.audio_rtp, &packet))?;
                if let Some(link) = &mut self.recorder {
                    survivable(link.write_audio(now, self.audio_rtp, &packet))?;
                }
                self.audio_rtp = (self.audio_rtp + FRAME_SAMPLES as u64) & 0xffff_ffff;
            }
            Command::RequestKeyframe => self.request_keyframe(),
            Command::Chat(text, reply) => {
                let result = self
                    .peer
                    .as_mut()
                    .ok_or(PeerError::ChannelNotOpen("chat"))
                    .and_then(|p| p.send_chat(&text));
                let _ = reply.send(result);
            }
            Command::OfferFile(name, mime, data, reply) => {
                let result = self
                    .peer
                    .as_mut()
                    .ok_or(PeerError::ChannelNotOpen("file"))
                    .and_then(|p| p.offer_file(&name, &mime, data));
                let _ = reply.send(result);
            }
            Command::AcceptFile(id, reply) => {
                let result = self
                    .peer
                    .as_mut()
                    .ok_or(PeerError::ChannelNotOpen("file"))
                    .and_then(|p| p.accept_file(id));
                let _ = reply.send(result);
            }
            Command::RejectFile(id, reply) => {
                let result = self
                    .peer
                    .as_mut()
                    .ok_or(PeerError::ChannelNotOpen("file"))
                    .and_then(|p| p.reject_file(id));
                let _ = reply.send(result);
            }
            Command::CancelFile(id, reply) => {
                let result = self
                    .peer
                    .as_mut()
                    .ok_or(PeerError::ChannelNotOpen("file"))
                    .and_then(|p| p.cancel_file(id));
                let _ = reply.send(result);
            }
            Command::RotateKeys => {
                if let Some(peer) = &mut self.peer {
                    peer.e2ee_rotate();
                }
            }
            Command::Consent(_) | Command::Leave => {}
        }
        Ok(())
    }

    /// Send what the peer (and the recorder link) want sent, and turn the peer's events into
    /// session events.
    async fn drain_peer(&mut self) -> Result<(), SessionError> {
        self.drain_recorder();
        loop {
            let Some(peer) = &mut self.peer else {
                return Ok(());
            };
            match peer.poll_output()? {
                Output::Timeout(at) => {
                    self.next_timeout = at;
                    return Ok(());
                }
                Output::Transmit(transmit) => self.transmit(transmit),
                Output::Event(event) => self.handle_peer_event(event).await?,
            }
        }
    }

    /// Send one datagram from a local candidate address.
    fn transmit(&self, transmit: consult_peer::Transmit) {
        if let Some(relay) = self.relays.iter().find(|r| r.relayed == transmit.source) {
            relay.send(transmit.contents, transmit.destination);
        } else if let Some((_, socket)) = self
            .sockets
            .iter()
            .find(|(addr, _)| *addr == transmit.source)
        {
            if let Err(e) = socket.try_send_to(&transmit.contents, transmit.destination) {
                tracing::debug!(error = %e, "udp send failed");
            }
        }
    }

    /// Run the recorder link until it waits: send its datagrams; it has no events we use.
    fn drain_recorder(&mut self) {
        loop {
            let Some(link) = &mut self.recorder else {
                return;
            };
            match link.peer.poll_output() {
                Ok(Output::Timeout(at)) => {
                    link.next_timeout = at;
                    return;
                }
                Ok(Output::Transmit(transmit)) => self.transmit(transmit),
                Ok(Output::Event(_)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "recorder link failed; dropping it");
                    self.recorder = None;
                    return;
                }
            }
        }
    }

    /// Local candidates for a new connection: host and server-reflexive (unless relay-only),
    /// and relayed.
    fn local_candidates(&self, peer: &mut Peer) -> Result<Vec<String>, SessionError> {
        let mut candidates = Vec::new();
        if !self.relay_only {
            for (addr, _) in &self.sockets {
                if let Some(line) = peer.add_host_candidate(*addr)? {
                    candidates.push(line);
                }
            }
            for (mapped, base) in &self.reflexive {
                if let Ok(candidate) =
                    consult_peer::str0m::Candidate::server_reflexive(*mapped, *base, "udp")
                {
                    candidates.extend(peer.add_local_candidate(candidate));
                }
            }
        }
        for relay in &self.relays {
            if let Ok(candidate) =
                consult_peer::str0m::Candidate::relayed(relay.relayed, relay.local, "udp")
            {
                candidates.extend(peer.add_local_candidate(candidate));
            }
        }
        Ok(candidates)
    }

    /// Offer the recorder a send-only connection, if one is present, we are admitted, and the
    /// consultation is being recorded; with a zero-knowledge recording, the wrapped key first.
    async fn start_recorder_link(&mut self) -> Result<(), SessionError> {
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
            match RecorderLink::new(recorder, me, &target, &self.config.peer, Instant::now()) {
                Ok(made) => made,
                Err(e) => {
                    emit(
                        &self.events,
                        SessionEvent::Warning(format!("not sending to the recorder: {e}")),
                    )
                    .await;
                    return Ok(());
                }
            };
        if let Some(message) = key_message {
            self.send_signal(message).await?;
        }
        let candidates = self.local_candidates(&mut link.peer)?;
        let Some(offer) = link.peer.create_offer()? else {
            return Ok(());
        };
        self.recorder = Some(link);
        self.send_signal(ClientMessage::Description {
            to: recorder,
            description: SessionDescription {
                kind: SdpKind::Offer,
                sdp: offer,
            },
        })
        .await?;
        for line in candidates {
            self.send_signal(ClientMessage::Candidate {
                to: recorder,
                candidate: Some(IceCandidate {
                    candidate: line,
                    sdp_mid: None,
                    sdp_m_line_index: Some(0),
                    username_fragment: None,
                }),
            })
            .await?;
        }
        Ok(())
    }

    async fn handle_peer_event(&mut self, event: PeerEvent) -> Result<(), SessionError> {
        match event {
            PeerEvent::Connected => {
                self.down_since = None;
                self.connected_at.get_or_insert(Instant::now());
                self.force_keyframe = true;
                emit(&self.events, SessionEvent::Connected).await;
            }
            PeerEvent::Disconnected => {
                self.down_since.get_or_insert(Instant::now());
                emit(&self.events, SessionEvent::Disconnected).await;
            }
            PeerEvent::IceState(state) => {
                if matches!(
                    state,
                    consult_peer::str0m::IceConnectionState::Connected
                        | consult_peer::str0m::IceConnectionState::Completed
                ) {
                    self.down_since = None;
                    emit(&self.events, SessionEvent::IceConnected).await;
                }
            }
            PeerEvent::ChannelOpen { .. } | PeerEvent::ChannelMessage { .. } => {}
            PeerEvent::Chat(text) => emit(&self.events, SessionEvent::Chat(text)).await,
            PeerEvent::ChatRejected(e) => {
                emit(&self.events, SessionEvent::ChatRejected(e.to_string())).await
            }
            PeerEvent::File(event) => emit(&self.events, SessionEvent::File(event)).await,
            PeerEvent::KeyframeRequested => {
                self.force_keyframe = true;
                emit(&self.events, SessionEvent::KeyframeRequested).await;
            }
            PeerEvent::BitrateEstimate(bps) => {
                if let Some(encoder) = &mut self.video_encoder {
                    let target = self.config.video.bitrate_bps;
                    let bps = (bps as u32).clamp(target / 10, target.saturating_mul(2));
                    if let Err(e) = encoder.set_bitrate(bps) {
                        tracing::debug!(error = %e, "could not adapt the bitrate");
                    }
                }
            }
            PeerEvent::E2ee(event) => emit(&self.events, SessionEvent::E2ee(event)).await,
            PeerEvent::Stats(mut stats) => {
                stats.frames_encoded = self.frames_encoded;
                stats.frames_decoded = self.frames_decoded;
                let silent_remote = self
                    .peer
                    .as_ref()
                    .is_some_and(|p| p.e2ee_enabled() && p.e2ee_sas().is_none())
                    && self
                        .connected_at
                        .is_some_and(|t| t.elapsed() >= E2EE_AGREEMENT_WARNING);
                if silent_remote && !self.e2ee_warned {
                    self.e2ee_warned = true;
                    emit(
                        &self.events,
                        SessionEvent::Warning(
                            "the other side has not started end-to-end encryption: no media is sent or shown until it does".into(),
                        ),
                    )
                    .await;
                }
                emit(&self.events, SessionEvent::Stats(stats)).await
            }
            PeerEvent::Frame(frame) => self.handle_frame(frame).await?,
        }
        Ok(())
    }

    async fn handle_frame(&mut self, frame: EncodedFrame) -> Result<(), SessionError> {
        if self.config.receive == ReceiveMode::Encoded {
            emit(&self.events, SessionEvent::EncodedFrame(frame)).await;
            return Ok(());
        }
        match frame.kind {
            TrackKind::Audio => match self.audio_decoder.decode(&frame.data) {
                Ok(pcm) => emit(&self.events, SessionEvent::Audio(pcm)).await,
                Err(e) => {
                    emit(
                        &self.events,
                        SessionEvent::Warning(format!("audio decode: {e}")),
                    )
                    .await
                }
            },
            TrackKind::Video(codec) => {
                if self.video_decoder.as_ref().is_none_or(|(c, _)| *c != codec) {
                    self.video_decoder = Some((codec, video_decoder(codec)?));
                    self.waiting_for_keyframe = true;
                }
                if !frame.contiguous && !frame.keyframe {
                    self.waiting_for_keyframe = true;
                }
                if self.waiting_for_keyframe && !frame.keyframe {
                    self.request_keyframe();
                    return Ok(());
                }
                let Some((_, decoder)) = &mut self.video_decoder else {
                    return Ok(());
                };
                match decoder.decode(&frame.data) {
                    Ok(Some(picture)) => {
                        self.waiting_for_keyframe = false;
                        self.frames_decoded += 1;
                        emit(
                            &self.events,
                            SessionEvent::Video {
                                frame: picture,
                                codec,
                            },
                        )
                        .await;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.waiting_for_keyframe = true;
                        self.last_keyframe_request = Instant::now() - Duration::from_secs(1);
                        self.request_keyframe();
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

    /// Ask for a keyframe, at most every 250 ms (a lost request is repeated).
    fn request_keyframe(&mut self) {
        let now = Instant::now();
        if now - self.last_keyframe_request < Duration::from_millis(250) {
            return;
        }
        self.last_keyframe_request = now;
        if let Some(peer) = &mut self.peer {
            if let Err(e) = peer.request_keyframe() {
                tracing::debug!(error = %e, "keyframe request failed");
            }
        }
    }
}

/// `host:port` of a `turn:` URL over UDP (`turns:` and TCP are not supported by this client).
fn turn_address(url: &str) -> Option<String> {
    let rest = url.strip_prefix("turn:")?;
    let (address, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !query.is_empty() && query != "transport=udp" {
        return None;
    }
    Some(if address.contains(':') {
        address.to_owned()
    } else {
        format!("{address}:3478")
    })
}

/// `host:port` of a `stun:` URL.
fn stun_address(url: &str) -> Option<String> {
    let address = url.strip_prefix("stun:")?;
    Some(if address.contains(':') {
        address.to_owned()
    } else {
        format!("{address}:3478")
    })
}

/// Ask a STUN server for our mapped address, from the socket the candidates use.
async fn stun_binding(socket: &UdpSocket, server: &str) -> Result<SocketAddr, SessionError> {
    // A separate socket would see a different mapping; instead, use a throwaway TURN client on a
    // temporary socket bound to the same IP, which is what matters for a NAT's address mapping.
    let local = socket.local_addr()?;
    let probe = UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await?;
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: server.to_owned(),
        turn_serv_addr: String::new(),
        username: String::new(),
        password: String::new(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(probe),
        vnet: None,
    })
    .await
    .map_err(|e| SessionError::Io(std::io::Error::other(e.to_string())))?;
    client
        .listen()
        .await
        .map_err(|e| SessionError::Io(std::io::Error::other(e.to_string())))?;
    let mapped = tokio::time::timeout(Duration::from_secs(3), client.send_binding_request())
        .await
        .map_err(|_| SessionError::Io(std::io::Error::other("STUN timeout")))?
        .map_err(|e| SessionError::Io(std::io::Error::other(e.to_string())))?;
    let _ = client.close().await;
    Ok(SocketAddr::new(mapped.ip(), local.port()))
}

/// A TURN allocation: the relayed address peers send to, and a task that sends through it.
struct Relay {
    relayed: SocketAddr,
    local: SocketAddr,
    outgoing: mpsc::UnboundedSender<(Vec<u8>, SocketAddr)>,
    _client: Arc<turn::client::Client>,
}

impl Relay {
    /// Allocate on `server` with TURN REST credentials; received datagrams go to `datagrams`.
    async fn allocate(
        server: &str,
        username: &str,
        password: &str,
        datagrams: mpsc::Sender<Datagram>,
    ) -> Result<Self, SessionError> {
        use webrtc_util::Conn;
        let io = |e: String| SessionError::Io(std::io::Error::other(e));
        let server_addr: SocketAddr = tokio::net::lookup_host(server)
            .await?
            .next()
            .ok_or_else(|| io(format!("cannot resolve {server}")))?;
        let bind_ip: IpAddr = if server_addr.ip().is_loopback() {
            server_addr.ip()
        } else {
            IpAddr::from([0, 0, 0, 0])
        };
        let socket = UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await?;
        let local = socket.local_addr()?;
        let client = turn::client::Client::new(turn::client::ClientConfig {
            stun_serv_addr: server_addr.to_string(),
            turn_serv_addr: server_addr.to_string(),
            username: username.to_owned(),
            password: password.to_owned(),
            realm: String::new(),
            software: "consult-client".into(),
            rto_in_ms: 0,
            conn: Arc::new(socket),
            vnet: None,
        })
        .await
        .map_err(|e| io(e.to_string()))?;
        client.listen().await.map_err(|e| io(e.to_string()))?;
        let relay_conn = tokio::time::timeout(Duration::from_secs(5), client.allocate())
            .await
            .map_err(|_| io(format!("TURN allocation on {server} timed out")))?
            .map_err(|e| io(e.to_string()))?;
        let relayed = relay_conn.local_addr().map_err(|e| io(e.to_string()))?;
        let relay_conn: Arc<dyn Conn + Send + Sync> = Arc::new(relay_conn);
        let reader = relay_conn.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 2048];
            while let Ok((n, source)) = reader.recv_from(&mut buffer).await {
                let datagram = Datagram {
                    local: relayed,
                    source,
                    at: Instant::now(),
                    bytes: buffer[..n].to_vec(),
                };
                if datagrams.send(datagram).await.is_err() {
                    return;
                }
            }
        });
        // Sending through TURN may wait for a permission round trip: a task keeps the order and
        // keeps the session loop free.
        let (outgoing, mut queue) = mpsc::unbounded_channel::<(Vec<u8>, SocketAddr)>();
        tokio::spawn(async move {
            while let Some((bytes, destination)) = queue.recv().await {
                if let Err(e) = relay_conn.send_to(&bytes, destination).await {
                    tracing::debug!(error = %e, "TURN send failed");
                }
            }
        });
        Ok(Self {
            relayed,
            local,
            outgoing,
            _client: Arc::new(client),
        })
    }

    fn send(&self, bytes: Vec<u8>, destination: SocketAddr) {
        let _ = self.outgoing.send((bytes, destination));
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

/// Hand an event to the application (borrowing only the sender, so the runner need not be
/// `Sync` across the await).
async fn emit(events: &mpsc::Sender<SessionEvent>, event: SessionEvent) {
    let _ = events.send(event).await;
}

/// The outcome of the reconnection attempt under way; pending while there is none.
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
