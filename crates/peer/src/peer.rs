//! The sans-IO peer: one WebRTC session on str0m plus Consult's chat and file channels.
//!
//! Nothing here opens a socket, spawns a task or reads the clock: datagrams and time come in
//! through [`Peer::handle_receive`] and [`Peer::handle_timeout`], and everything goes out through
//! [`Peer::poll_output`] — datagrams to send, [`PeerEvent`]s, and when to call again. After every
//! input, drain `poll_output` until it returns [`Output::Timeout`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, KeyframeRequestKind, MediaKind, MediaTime, Mid};
use str0m::net::Protocol;
use str0m::{Candidate, Event, IceConnectionState, Rtc, RtcConfig};
use uuid::Uuid;

pub use consult_proto::media::VideoCodec;
/// A DTLS certificate and its private key (str0m's), for [`PeerConfig::dtls_certificate`].
pub use str0m::config::DtlsCert;

use consult_e2ee::wire::E2EE_CHANNEL_LABEL;
use consult_e2ee::{
    E2eeError, E2eeEvent, E2eeStats, Fingerprint, KeySchedule, MediaFormat, Rejection,
    ScheduleConfig, ScheduleOutput,
};

use crate::chat::{self, ChatError, CHAT_CHANNEL_LABEL, DEFAULT_MAX_CHAT_BYTES};
use crate::file_transfer::{
    FileError, FileEvent, FileTransfers, Frame, Limits, CHUNK_BYTES, CHUNK_HEADER_BYTES,
    FILE_CHANNEL_LABEL,
};
use crate::redundancy::{self, DataRedundancy};

/// How a peer is set up.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Send and receive audio (Opus).
    pub audio: bool,
    /// Send and receive video.
    pub video: bool,
    /// Video codecs in order of preference; the remote side's preference wins when it offers.
    pub video_codecs: Vec<VideoCodec>,
    /// Largest chat message.
    pub chat_max_bytes: usize,
    /// File transfer limits.
    pub file_limits: Limits,
    /// Most file bytes let queue on the data channel (STACK-NOTES: larger queues are slower).
    pub max_buffered_bytes: usize,
    /// How often to emit [`PeerEvent::Stats`].
    pub stats_interval: Duration,
    /// Starting point of bandwidth estimation.
    pub initial_bitrate_bps: u64,
    /// What bandwidth estimation tries to discover by probing; `None`: no probing, so the
    /// estimate never rises above [`Self::initial_bitrate_bps`]. Off by default: with probing on,
    /// the simulated 10 % loss test saw a corrupt H.264 frame reach the decoder in about half
    /// its runs (str0m's padding under loss; not yet understood).
    pub desired_bitrate_bps: Option<u64>,
    /// Estimate the bandwidth out (from the remote's transport-wide feedback) and pace what is
    /// sent by it. Off for a peer that never sends media, such as the service's recorder: the
    /// estimate would go unused. The feedback this peer sends the remote about what it receives
    /// goes out either way.
    pub estimate_bandwidth: bool,
    /// Offer the chat and file channels (and E2EE's key channel). Off for a link that only
    /// carries media, such as the one to the service's recorder: no SCTP association to run.
    pub data_channels: bool,
    /// Perfect negotiation: a polite peer gives way when both offer at once.
    pub polite: bool,
    /// End-to-end encryption (SFrame) with this remote participant; `None`: off.
    pub e2ee: Option<E2eeSetup>,
    /// The DTLS certificate to present (an integrator that keeps one identity across calls);
    /// `None`: a fresh one for this peer.
    pub dtls_certificate: Option<DtlsCert>,
    /// On a path where the remote reports loss, send the data channels' datagrams more than
    /// once and pace file data so media keeps priority (see [`crate::redundancy`]).
    pub data_redundancy: bool,
}

/// End-to-end encryption for one connection: who we are, who the remote is (participant ids
/// from the signaling service), and the key schedule's timers.
#[derive(Debug, Clone)]
pub struct E2eeSetup {
    /// Our participant id.
    pub local_id: String,
    /// The remote participant's id: key messages from anyone else are refused.
    pub remote_id: String,
    /// Epoch timers and limits.
    pub schedule: ScheduleConfig,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            audio: true,
            video: true,
            video_codecs: vec![VideoCodec::H264, VideoCodec::Vp8],
            chat_max_bytes: DEFAULT_MAX_CHAT_BYTES,
            file_limits: Limits::default(),
            max_buffered_bytes: 64 * 1024,
            stats_interval: Duration::from_secs(1),
            initial_bitrate_bps: 600_000,
            desired_bitrate_bps: None,
            estimate_bandwidth: true,
            data_channels: true,
            polite: false,
            e2ee: None,
            dtls_certificate: None,
            data_redundancy: true,
        }
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Local address (a host candidate, or a TURN relay address) to send from.
    pub source: SocketAddr,
    /// Where to.
    pub destination: SocketAddr,
    /// The bytes.
    pub contents: Vec<u8>,
}

/// What [`Peer::poll_output`] produces.
#[derive(Debug)]
pub enum Output {
    /// Send this datagram.
    Transmit(Transmit),
    /// Something happened.
    Event(PeerEvent),
    /// Call [`Peer::handle_timeout`] at this time (or earlier, with a datagram).
    Timeout(Instant),
}

/// Which kind of media a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackKind {
    /// Opus audio.
    Audio,
    /// Video.
    Video(VideoCodec),
}

/// Which of a participant's videos a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum VideoSource {
    /// The camera (and every audio frame).
    #[default]
    Camera,
    /// A shared screen: a video section whose media stream is not the camera's (see
    /// [`SCREEN_STREAM_ID`]).
    Screen,
}

/// The media stream id (`a=msid`) of a shared screen's section. The pages send a screen in a
/// section of no stream (`a=msid:- …`), the native peer under this id; cameras are always in a
/// stream of their own (with their microphone in the pages).
pub const SCREEN_STREAM_ID: &str = "consult-screen";

/// Most datagrams to hand to [`Peer::handle_receive`] between two drains of
/// [`Peer::poll_output`]. str0m asks for a drain after every input, but what a DTLS datagram
/// carries is only queued until the next poll (its DTLS layer holds at most 30 datagrams and
/// refuses more), so a batch read from a socket is cheaper handed over together: the
/// data-channel layer (SCTP) then walks its queue and answers once for the batch instead of
/// once a datagram. STUN and media are handled as they come either way.
pub const RECEIVE_BATCH: usize = 16;

/// The mids of the video sections of a remote SDP that carry a shared screen: those whose
/// `a=msid` names no stream (`-`) or [`SCREEN_STREAM_ID`], as the web pages decide it too.
fn remote_screen_mids(sdp: &str) -> Vec<Mid> {
    sdp.split("\nm=")
        .skip(1)
        .filter(|section| section.starts_with("video "))
        .filter_map(|section| {
            let lines = || section.lines().map(str::trim_end);
            let stream = lines().find_map(|l| l.strip_prefix("a=msid:"))?;
            let stream = stream.split_whitespace().next()?;
            let screen = stream == "-" || stream == SCREEN_STREAM_ID;
            let mid = lines().find_map(|l| l.strip_prefix("a=mid:"))?;
            screen.then(|| Mid::from(mid))
        })
        .collect()
}

/// A video send stream's retransmission cache: what NACKs can still be answered from (1,024
/// packets over 3 s, queued resends cleared once they pass half of what is sent). Setting it
/// empties it.
fn set_video_rtx_cache(stream: &mut str0m::rtp::StreamTx) {
    stream.set_rtx_cache(1024, Duration::from_secs(3), Some(0.5));
}

/// Give a video section's send stream its retransmission cache, unless `done` already; whether
/// it is done now.
fn configure_video_stream(rtc: &mut Rtc, mid: Mid, done: bool) -> bool {
    if done {
        return true;
    }
    match rtc.direct_api().stream_tx_by_mid(mid, None) {
        Some(stream) => {
            set_video_rtx_cache(stream);
            true
        }
        None => false,
    }
}

/// An encoded frame that arrived.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    /// Audio or video, and the codec.
    pub kind: TrackKind,
    /// For video: the camera or a shared screen.
    pub source: VideoSource,
    /// RTP time (90 kHz for video, 48 kHz for audio).
    pub rtp_time: u64,
    /// Whether a keyframe (video).
    pub keyframe: bool,
    /// False if packets were lost before this frame: decoders should wait for a keyframe.
    pub contiguous: bool,
    /// The frame (Annex-B for H.264, a raw VP8 frame, an Opus packet).
    pub data: Vec<u8>,
}

/// Connection statistics, for integrators and quality indicators.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Round-trip time on the selected candidate pair.
    pub rtt: Option<Duration>,
    /// Fraction of our packets the remote reports lost (0..1).
    pub egress_loss: Option<f32>,
    /// Fraction of the remote's packets we lost (0..1).
    pub ingress_loss: Option<f32>,
    /// Interarrival jitter of received video, in seconds.
    pub video_jitter: Option<f64>,
    /// Bytes received and sent at this moment.
    pub bytes_received: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Receive bitrate since the previous stats, bits per second.
    pub receive_bps: u64,
    /// Send bitrate since the previous stats, bits per second.
    pub send_bps: u64,
    /// The part of it that is media (audio, video, a shared screen; not data channels).
    pub media_send_bps: u64,
    /// Whether a file is going out on this connection (chunks still to put on the channel).
    pub sending_file: bool,
    /// Bandwidth estimate for sending, bits per second.
    pub estimated_send_bps: Option<u64>,
    /// Selected candidate pair: local and remote address.
    pub selected_pair: Option<(SocketAddr, SocketAddr)>,
    /// NACKs we received for our video.
    pub nacks_received: u64,
    /// PLIs we received.
    pub plis_received: u64,
    /// Video frames encoded by the session (filled in by [`crate::session::Session`]).
    pub frames_encoded: u64,
    /// Video frames decoded by the session (filled in by [`crate::session::Session`]).
    pub frames_decoded: u64,
    /// End-to-end encryption counters (frames protected, opened, refused by reason), when on.
    pub e2ee: Option<E2eeStats>,
}

/// What happened.
#[derive(Debug, Clone)]
pub enum PeerEvent {
    /// ICE state changed.
    IceState(IceConnectionState),
    /// ICE and DTLS are up: media and data can flow.
    Connected,
    /// The connection dropped (ICE disconnected); restart ICE if it does not come back.
    Disconnected,
    /// The chat or file channel is open.
    ChannelOpen {
        /// Its label.
        label: String,
    },
    /// A chat message.
    Chat(String),
    /// A chat message was refused (too long, not text). The call goes on.
    ChatRejected(ChatError),
    /// File transfer progress, offers, results.
    File(FileEvent),
    /// An encoded frame arrived.
    Frame(EncodedFrame),
    /// The remote asked for a keyframe: encode the next video frame as one.
    KeyframeRequested,
    /// The remote asks for a keyframe of the shared screen.
    ScreenKeyframeRequested,
    /// Periodic statistics.
    Stats(Stats),
    /// The send bandwidth estimate changed: adapt the encoder's bitrate.
    BitrateEstimate(u64),
    /// End-to-end encryption: the SAS to show, keys switched or installed.
    E2ee(E2eeEvent),
    /// A message on a channel this peer does not handle itself (for example the key channel
    /// when end-to-end encryption is off): for relays and custom protocols.
    ChannelMessage {
        /// The channel's label.
        label: String,
        /// Binary or text.
        binary: bool,
        /// The message.
        data: Vec<u8>,
    },
}

/// Why a call was refused.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// str0m refused (malformed SDP, unsupported codecs, a state error).
    #[error("webrtc: {0}")]
    Rtc(#[from] str0m::RtcError),
    /// The SDP text could not be parsed.
    #[error("invalid SDP: {0}")]
    Sdp(#[from] str0m::error::SdpError),
    /// A candidate line could not be parsed.
    #[error("invalid ICE candidate: {0}")]
    Candidate(String),
    /// The datagram is not STUN, DTLS, RTP or RTCP.
    #[error("unrecognised datagram: {0}")]
    Datagram(String),
    /// An answer arrived without an offer of ours.
    #[error("an answer arrived but no offer is pending")]
    UnexpectedAnswer,
    /// No common codec for a track, or the track is not negotiated yet.
    #[error("{0} is not negotiated")]
    NotNegotiated(&'static str),
    /// The chat or file channel is not open yet.
    #[error("the {0} channel is not open")]
    ChannelNotOpen(&'static str),
    /// The data channel is full; try again after [`PeerEvent`]s show progress.
    #[error("the data channel is full")]
    ChannelFull,
    /// A chat message was refused.
    #[error(transparent)]
    Chat(#[from] ChatError),
    /// A file call was refused.
    #[error(transparent)]
    File(#[from] FileError),
    /// End-to-end encryption refused (keys not agreed yet for chat or files, or a frame of ours
    /// that cannot be protected). Media frames without a key are dropped, not errors.
    #[error("end-to-end encryption: {0}")]
    E2ee(#[from] E2eeError),
}

/// What to do after a remote description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteDescriptionOutcome {
    /// Send this answer.
    Answer(String),
    /// The answer to our offer was applied.
    Applied,
    /// Ignored: both sides offered and this side is impolite; the remote will roll back.
    IgnoredGlare,
}

/// One WebRTC session.
pub struct Peer {
    rtc: Rtc,
    config: PeerConfig,
    /// Our offer waiting for its answer, and its SDP (to send again if it may have been lost).
    pending_offer: Option<(SdpPendingOffer, String)>,
    /// Mids and channels in an offer not yet answered.
    offered_audio: Option<Mid>,
    offered_video: Option<Mid>,
    channels_offered: bool,
    audio_mid: Option<Mid>,
    video_mid: Option<Mid>,
    /// Whether this side wants to share a screen (a send-only video section of its own).
    screen_wanted: bool,
    /// The screen's section, once negotiated (kept when sharing stops, and reused).
    screen_mid: Option<Mid>,
    /// The screen's section in an offer not yet answered.
    offered_screen: Option<Mid>,
    /// The direction the screen's section has, as last negotiated.
    screen_direction: Direction,
    /// The direction the pending offer gives the screen's section (applied with its answer).
    offered_screen_direction: Option<Direction>,
    /// The remote's sections that carry a shared screen ([`remote_screen_mids`]).
    remote_screens: Vec<Mid>,
    /// The section the remote's screen last arrived on (where its keyframe requests go).
    screen_rx_mid: Option<Mid>,
    /// The m-line video last arrived on: where keyframe requests go. A remote that
    /// renegotiated with new transceivers sends on a later m-line than the first one, and a
    /// request on the first would never reach its encoder.
    video_rx_mid: Option<Mid>,
    /// Channel to send chat on: the latest open one with the label.
    chat: Option<ChannelId>,
    /// Channel to send file frames on.
    file: Option<ChannelId>,
    /// Copies of SCTP datagrams and the pacing of file data on a lossy path.
    redundancy: DataRedundancy,
    /// Media bytes sent so far, per section (from str0m's egress statistics), and their sum at
    /// the previous [`Stats`].
    media_bytes_sent: std::collections::HashMap<Mid, u64>,
    media_bytes_at_stats: u64,
    /// Copies of datagrams still to send (SCTP, and a picture's), soonest first.
    copies_to_send: VecDeque<(Instant, Transmit)>,
    /// Copies of each datagram of the next camera frame written ([`Peer::copy_next_video_frame`]).
    next_frame_copies: u8,
    /// The frame being copied: its copies per datagram, and the camera stream's SSRC; until the
    /// datagram with the RTP marker bit (the frame's last).
    copying_frame: Option<(u8, u32)>,
    /// Every open channel per label: after glare both sides may have created one, and data is
    /// accepted on any of them.
    chat_ids: Vec<ChannelId>,
    file_ids: Vec<ChannelId>,
    files: FileTransfers,
    events: VecDeque<PeerEvent>,
    stats: Stats,
    last_stats_at: Option<Instant>,
    /// DTLS finished (SRTP keys set); stays true across ICE restarts.
    dtls_up: bool,
    /// See [`Peer::path_source`].
    path_source: Option<SocketAddr>,
    /// ICE has a working pair.
    ice_up: bool,
    video_stream_configured: bool,
    screen_stream_configured: bool,
    /// The latest time handed in, for work done while draining outputs.
    now: Instant,
    /// End-to-end encryption, when on.
    e2ee: Option<E2ee>,
    /// The last frame protected for sending (its allocation reused frame after frame).
    protected: Vec<u8>,
    /// The camera's frames skip the pacer ([`Peer::set_camera_unpaced`]).
    camera_unpaced: bool,
    /// Open channels this peer does not handle itself, by label.
    other_channels: Vec<(ChannelId, String)>,
}

/// The key schedule and the `consult-e2ee` channels of one connection.
struct E2ee {
    remote_id: String,
    schedule: KeySchedule,
    /// Every open key channel (after glare both sides may have created one).
    channels: Vec<ChannelId>,
    /// Key agreement started on this connection.
    connected: bool,
    /// When the schedule wants [`KeySchedule::handle_timeout`].
    timeout: Option<Instant>,
}

fn format_of(kind: TrackKind) -> MediaFormat {
    match kind {
        TrackKind::Audio => MediaFormat::Opus,
        TrackKind::Video(VideoCodec::H264) => MediaFormat::H264,
        TrackKind::Video(VideoCodec::Vp8) => MediaFormat::Vp8,
    }
}

/// The bytes to send for `frame`: itself without end-to-end encryption; with it, protected into
/// `buffer` (kept between frames), or `None` (dropped, counted) while no key is agreed — media
/// never goes out unprotected.
fn protect_frame<'a>(
    e2ee: &mut Option<E2ee>,
    buffer: &'a mut Vec<u8>,
    now: Instant,
    kind: TrackKind,
    frame: &'a [u8],
) -> Result<Option<&'a [u8]>, PeerError> {
    let Some(e2ee) = e2ee else {
        return Ok(Some(frame));
    };
    match e2ee
        .schedule
        .protect_into(now, format_of(kind), frame, buffer)
    {
        Ok(()) => Ok(Some(&buffer[..])),
        Err(E2eeError::NoSendKey) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn codec_of(codec: Codec) -> Option<TrackKind> {
    match codec {
        Codec::Opus => Some(TrackKind::Audio),
        Codec::H264 => Some(TrackKind::Video(VideoCodec::H264)),
        Codec::Vp8 => Some(TrackKind::Video(VideoCodec::Vp8)),
        _ => None,
    }
}

impl Peer {
    /// A new peer; `now` starts its clock.
    pub fn new(config: PeerConfig, now: Instant) -> Self {
        let mut rtc_config = RtcConfig::new()
            .clear_codecs()
            .set_stats_interval(Some(config.stats_interval))
            .enable_bwe(
                config
                    .estimate_bandwidth
                    .then(|| Bitrate::bps(config.initial_bitrate_bps)),
            )
            // Our own limit (max_buffered_bytes) bounds file chunks; the SCTP buffer is larger so
            // that small control messages always fit behind them.
            .set_sctp_max_buffered_amount(config.max_buffered_bytes * 4)
            // Give up on an unrecoverable frame after ~10 frames instead of 30 (a second at
            // 30 fps): the receiver then asks for a keyframe sooner, which is a shorter freeze.
            .set_reordering_size_video(10);
        if let Some(certificate) = config.dtls_certificate.clone() {
            rtc_config = rtc_config.set_dtls_cert(certificate);
        }
        if config.audio {
            rtc_config = rtc_config.enable_opus(true, false);
        }
        if config.video {
            for codec in &config.video_codecs {
                rtc_config = match codec {
                    VideoCodec::H264 => rtc_config.enable_h264(true),
                    VideoCodec::Vp8 => rtc_config.enable_vp8(true),
                };
            }
        }
        let files = FileTransfers::new(config.file_limits);
        let e2ee = config.e2ee.as_ref().map(|setup| E2ee {
            remote_id: setup.remote_id.clone(),
            schedule: KeySchedule::new(setup.schedule.clone(), &setup.local_id),
            channels: Vec::new(),
            connected: false,
            timeout: None,
        });
        let redundancy = DataRedundancy::new(now);
        let mut rtc = rtc_config.build(now);
        if let Some(desired) = config
            .desired_bitrate_bps
            .filter(|_| config.estimate_bandwidth)
        {
            rtc.bwe().set_bitrate(Bitrate::ZERO, Bitrate::bps(desired));
        }
        Self {
            rtc,
            config,
            pending_offer: None,
            offered_audio: None,
            offered_video: None,
            channels_offered: false,
            audio_mid: None,
            video_mid: None,
            screen_wanted: false,
            screen_mid: None,
            offered_screen: None,
            screen_direction: Direction::Inactive,
            offered_screen_direction: None,
            remote_screens: Vec::new(),
            screen_rx_mid: None,
            video_rx_mid: None,
            chat: None,
            file: None,
            redundancy,
            copies_to_send: VecDeque::new(),
            next_frame_copies: 1,
            copying_frame: None,
            media_bytes_sent: std::collections::HashMap::new(),
            media_bytes_at_stats: 0,
            chat_ids: Vec::new(),
            file_ids: Vec::new(),
            files,
            events: VecDeque::new(),
            stats: Stats::default(),
            last_stats_at: None,
            dtls_up: false,
            path_source: None,
            ice_up: false,
            video_stream_configured: false,
            screen_stream_configured: false,
            now,
            e2ee,
            protected: Vec::new(),
            camera_unpaced: false,
            other_channels: Vec::new(),
        }
    }

    /// Whether end-to-end encryption is on for this connection.
    pub fn e2ee_enabled(&self) -> bool {
        self.e2ee.is_some()
    }

    /// The short authentication string to show, once keys are agreed.
    pub fn e2ee_sas(&self) -> Option<consult_e2ee::Sas> {
        self.e2ee.as_ref()?.schedule.sas()
    }

    /// Whether our frames go out protected now, and the remote's keys are installed.
    pub fn e2ee_ready(&self) -> bool {
        self.e2ee
            .as_ref()
            .is_some_and(|e| e.schedule.can_send() && e.schedule.can_receive())
    }

    /// End-to-end encryption counters.
    pub fn e2ee_stats(&self) -> Option<E2eeStats> {
        self.e2ee.as_ref().map(|e| e.schedule.stats().clone())
    }

    /// Start a new key epoch now (the schedule also rotates by itself).
    pub fn e2ee_rotate(&mut self) {
        let now = self.now;
        if let Some(e2ee) = &mut self.e2ee {
            e2ee.schedule.rotate(now, &mut rand::rngs::OsRng);
        }
    }

    /// Whether ICE and DTLS are up.
    pub fn is_connected(&self) -> bool {
        self.dtls_up && self.ice_up
    }

    /// The local address the connection's path sends from: the source of the last DTLS, RTP or
    /// RTCP datagram sent (str0m sends those only on the nominated pair; STUN checks go on every
    /// pair). Current to the packet, where [`Stats::selected_pair`] is a second old at most.
    pub fn path_source(&self) -> Option<SocketAddr> {
        self.path_source
    }

    /// This side's role in perfect negotiation.
    pub fn is_polite(&self) -> bool {
        self.config.polite
    }

    /// Change the role in perfect negotiation (it is assigned by the signaling service).
    pub fn set_polite(&mut self, polite: bool) {
        self.config.polite = polite;
    }

    /// Add a local candidate; returns its `candidate:` line to trickle to the remote.
    pub fn add_local_candidate(&mut self, candidate: Candidate) -> Option<String> {
        self.rtc
            .add_local_candidate(candidate)
            .map(|c| c.to_sdp_string())
    }

    /// Add a host candidate for a local UDP socket address.
    pub fn add_host_candidate(&mut self, addr: SocketAddr) -> Result<Option<String>, PeerError> {
        let candidate =
            Candidate::host(addr, "udp").map_err(|e| PeerError::Candidate(e.to_string()))?;
        Ok(self.add_local_candidate(candidate))
    }

    /// Add a trickled remote candidate (`candidate:...`, with or without `a=`); an empty line
    /// (end of candidates) is accepted and ignored.
    pub fn add_remote_candidate(&mut self, line: &str) -> Result<(), PeerError> {
        let line = line.trim().trim_start_matches("a=");
        if line.is_empty() {
            return Ok(());
        }
        let candidate =
            Candidate::from_sdp_string(line).map_err(|e| PeerError::Candidate(e.to_string()))?;
        self.rtc.add_remote_candidate(candidate);
        Ok(())
    }

    /// Whether an offer from this side is needed: tracks or channels we want are not negotiated.
    pub fn needs_negotiation(&self) -> bool {
        if self.pending_offer.is_some() {
            return false;
        }
        (self.config.audio && self.audio_mid.is_none())
            || (self.config.video && self.video_mid.is_none())
            || (self.config.data_channels && self.chat.is_none() && !self.channels_offered)
            || self.screen_direction != self.wanted_screen_direction()
    }

    fn wanted_screen_direction(&self) -> Direction {
        if self.screen_wanted {
            Direction::SendOnly
        } else {
            Direction::Inactive
        }
    }

    /// Share a screen (true) or stop (false): a send-only video section of its own, after the
    /// camera's, made on the next offer ([`Peer::needs_negotiation`] says when one is due) and
    /// set inactive when sharing stops. Frames go with [`Peer::write_screen`].
    pub fn share_screen(&mut self, on: bool) {
        self.screen_wanted = on;
    }

    /// Whether a screen can be sent now (its section is negotiated and sending).
    pub fn screen_ready(&self) -> bool {
        self.screen_wanted
            && self.screen_mid.is_some()
            && self.screen_direction == Direction::SendOnly
    }

    /// Make an offer with whatever is not negotiated yet (tracks, the chat and file channels).
    /// `None` if nothing needs negotiating or an offer is already pending.
    pub fn create_offer(&mut self) -> Result<Option<String>, PeerError> {
        if self.pending_offer.is_some() {
            return Ok(None);
        }
        let screen = self.wanted_screen_direction();
        let mut api = self.rtc.sdp_api();
        if self.config.audio && self.audio_mid.is_none() {
            self.offered_audio =
                Some(api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None));
        }
        if self.config.video && self.video_mid.is_none() {
            self.offered_video =
                Some(api.add_media(MediaKind::Video, Direction::SendRecv, None, None, None));
        }
        if self.screen_direction != screen {
            match self.screen_mid {
                Some(mid) => {
                    api.set_direction(mid, screen);
                    self.offered_screen_direction = Some(screen);
                }
                None if screen == Direction::SendOnly => {
                    self.offered_screen = Some(api.add_media(
                        MediaKind::Video,
                        Direction::SendOnly,
                        Some(SCREEN_STREAM_ID.into()),
                        None,
                        None,
                    ));
                    self.offered_screen_direction = Some(screen);
                }
                None => {}
            }
        }
        if self.config.data_channels
            && self.chat.is_none()
            && self.file.is_none()
            && !self.channels_offered
        {
            api.add_channel_with_config(ChannelConfig {
                label: CHAT_CHANNEL_LABEL.into(),
                ..ChannelConfig::default()
            });
            api.add_channel_with_config(ChannelConfig {
                label: FILE_CHANNEL_LABEL.into(),
                ..ChannelConfig::default()
            });
            if self.e2ee.is_some() {
                api.add_channel_with_config(ChannelConfig {
                    label: E2EE_CHANNEL_LABEL.into(),
                    ..ChannelConfig::default()
                });
            }
            self.channels_offered = true;
        }
        // Changes live in this `SdpApi`: apply them on it.
        let Some((offer, pending)) = api.apply() else {
            return Ok(None);
        };
        let sdp = offer.to_sdp_string();
        self.pending_offer = Some((pending, sdp.clone()));
        Ok(Some(sdp))
    }

    /// Restart ICE (after the connection failed): returns the offer to send.
    pub fn restart_ice(&mut self) -> Result<Option<String>, PeerError> {
        self.rollback();
        let mut api = self.rtc.sdp_api();
        api.ice_restart(true);
        let Some((offer, pending)) = api.apply() else {
            return Ok(None);
        };
        let sdp = offer.to_sdp_string();
        self.pending_offer = Some((pending, sdp.clone()));
        Ok(Some(sdp))
    }

    /// Forget a local candidate whose address is gone (an interface went down or changed its
    /// address); whether it was one of ours.
    pub fn invalidate_local_candidate(&mut self, candidate: &Candidate) -> bool {
        self.rtc.direct_api().invalidate_candidate(candidate)
    }

    /// Our offer still waiting for its answer, if any: to send again when it may have been lost
    /// (the other side's signaling came back, or ours did). A second answer to it is refused
    /// with [`PeerError::UnexpectedAnswer`] and changes nothing.
    pub fn pending_offer_sdp(&self) -> Option<&str> {
        self.pending_offer.as_ref().map(|(_, sdp)| sdp.as_str())
    }

    fn rollback(&mut self) {
        self.pending_offer = None;
        self.offered_audio = None;
        self.offered_video = None;
        self.offered_screen = None;
        self.offered_screen_direction = None;
        if self.chat.is_none() {
            self.channels_offered = false;
        }
    }

    /// Apply a remote offer or answer (perfect negotiation: an impolite peer with a pending offer
    /// ignores a colliding offer; a polite one rolls its own back).
    pub fn handle_remote_offer(
        &mut self,
        sdp: &str,
    ) -> Result<RemoteDescriptionOutcome, PeerError> {
        let offer = SdpOffer::from_sdp_string(sdp)?;
        if self.pending_offer.is_some() {
            if !self.config.polite {
                return Ok(RemoteDescriptionOutcome::IgnoredGlare);
            }
            self.rollback();
        }
        let answer = self.rtc.sdp_api().accept_offer(offer)?;
        self.remote_screens = remote_screen_mids(sdp);
        Ok(RemoteDescriptionOutcome::Answer(answer.to_sdp_string()))
    }

    /// Apply the remote answer to our pending offer.
    pub fn handle_remote_answer(
        &mut self,
        sdp: &str,
    ) -> Result<RemoteDescriptionOutcome, PeerError> {
        let answer = SdpAnswer::from_sdp_string(sdp)?;
        let (pending, _) = self
            .pending_offer
            .take()
            .ok_or(PeerError::UnexpectedAnswer)?;
        self.rtc.sdp_api().accept_answer(pending, answer)?;
        self.remote_screens = remote_screen_mids(sdp);
        if let Some(mid) = self.offered_screen.take() {
            self.screen_mid = Some(mid);
        }
        // What the answered offer said, not what is wanted now: a change made while the offer
        // was out still needs an offer of its own.
        if let Some(direction) = self.offered_screen_direction.take() {
            self.screen_direction = direction;
        }
        if let Some(mid) = self.offered_audio.take() {
            self.audio_mid = Some(mid);
        }
        if let Some(mid) = self.offered_video.take() {
            self.video_mid = Some(mid);
        }
        Ok(RemoteDescriptionOutcome::Applied)
    }

    /// The remote rolled back its offer (nothing to do on our side but forget nothing).
    pub fn handle_remote_rollback(&mut self) {}

    /// A datagram arrived on a local socket (or through a TURN relay) at `now`.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), PeerError> {
        self.now = self.now.max(now);
        let receive = str0m::net::Receive::new(Protocol::Udp, source, destination, bytes)
            .map_err(|e| PeerError::Datagram(e.to_string()))?;
        self.rtc.handle_input(str0m::Input::Receive(now, receive))?;
        Ok(())
    }

    /// Whether a datagram that arrived on a local socket belongs to this peer's connection
    /// (for several peers sharing sockets).
    pub fn accepts(&self, source: SocketAddr, destination: SocketAddr, bytes: &[u8]) -> bool {
        match str0m::net::Receive::new(Protocol::Udp, source, destination, bytes) {
            Ok(receive) => self.rtc.accepts(&str0m::Input::Receive(self.now, receive)),
            Err(_) => false,
        }
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), PeerError> {
        self.now = self.now.max(now);
        self.rtc.handle_input(str0m::Input::Timeout(now))?;
        if let Some(e2ee) = &mut self.e2ee
            && e2ee.timeout.is_some_and(|at| now >= at)
        {
            e2ee.schedule.handle_timeout(now, &mut rand::rngs::OsRng);
        }
        Ok(())
    }

    /// The next thing to do. Drain until [`Output::Timeout`] after every input (or after at most
    /// [`RECEIVE_BATCH`] datagrams).
    pub fn poll_output(&mut self) -> Result<Output, PeerError> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(Output::Event(event));
            }
            if self
                .copies_to_send
                .front()
                .is_some_and(|(at, _)| *at <= self.now)
                && let Some((_, copy)) = self.copies_to_send.pop_front()
            {
                return Ok(Output::Transmit(copy));
            }
            match self.rtc.poll_output()? {
                str0m::Output::Transmit(t) => {
                    let transmit = Transmit {
                        source: t.source,
                        destination: t.destination,
                        contents: t.contents.into(),
                    };
                    // STUN (first byte 0–3) goes on every candidate pair; the rest on the path.
                    if transmit.contents.first().is_some_and(|b| *b > 3) {
                        self.path_source = Some(transmit.source);
                    }
                    if self.config.data_redundancy
                        && redundancy::is_sctp_datagram(&transmit.contents)
                    {
                        // Spaced a little, so a burst of loss takes fewer of them together.
                        for n in 1..self.redundancy.copies_of(transmit.contents.len()) {
                            let at = self.now + redundancy::COPY_SPACING * u32::from(n);
                            self.queue_copy(at, transmit.clone());
                        }
                    } else if let Some((copies, ssrc)) = self.copying_frame
                        && redundancy::rtp_ssrc(&transmit.contents) == Some(ssrc)
                    {
                        // A picture's packets: spaced so that a queue overflowing at a tight cap
                        // (tail drop) does not take a packet and its copy together.
                        for n in 1..copies {
                            let at = self.now + redundancy::PICTURE_COPY_SPACING * u32::from(n);
                            self.queue_copy(at, transmit.clone());
                        }
                        if redundancy::rtp_marker(&transmit.contents) {
                            self.copying_frame = None;
                        }
                    }
                    return Ok(Output::Transmit(transmit));
                }
                str0m::Output::Event(event) => self.handle_event(event),
                str0m::Output::Timeout(at) => {
                    // Before sleeping, move key messages and file frames onto their channels
                    // if there is room; that makes more output.
                    if self.pump_e2ee()? | self.pump_files()? {
                        continue;
                    }
                    let at = match self.e2ee.as_ref().and_then(|e| e.timeout) {
                        Some(e2ee_at) => at.min(e2ee_at),
                        None => at,
                    };
                    // Paced file data wakes us when its allowance is there, copies when theirs is due.
                    let at = match self.file.is_some() && self.files.has_chunks_to_send() {
                        true => self
                            .redundancy
                            .allowance_at(self.now, CHUNK_BYTES + CHUNK_HEADER_BYTES)
                            .map_or(at, |paced| at.min(paced)),
                        false => at,
                    };
                    let at = match self.copies_to_send.front() {
                        Some((due, _)) => at.min(*due),
                        None => at,
                    };
                    return Ok(Output::Timeout(at));
                }
            }
        }
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Connected => {
                self.dtls_up = true;
                self.ice_up = true;
                self.events.push_back(PeerEvent::Connected);
            }
            Event::IceConnectionStateChange(state) => {
                if state == IceConnectionState::Disconnected {
                    self.ice_up = false;
                    self.events.push_back(PeerEvent::Disconnected);
                } else if matches!(
                    state,
                    IceConnectionState::Connected | IceConnectionState::Completed
                ) {
                    // ICE alone is not "connected": media needs the DTLS-SRTP keys too. After an
                    // ICE restart DTLS is still up, so this is the reconnection.
                    self.ice_up = true;
                }
                self.events.push_back(PeerEvent::IceState(state));
            }
            Event::MediaAdded(added) => match added.kind {
                MediaKind::Audio if self.audio_mid.is_none() => self.audio_mid = Some(added.mid),
                MediaKind::Video if self.video_mid.is_none() => self.video_mid = Some(added.mid),
                _ => {}
            },
            Event::MediaData(data) => {
                let Some(kind) = codec_of(data.params.spec().codec) else {
                    return;
                };
                let keyframe = data.is_keyframe();
                let source = match kind {
                    TrackKind::Video(_) if self.remote_screens.contains(&data.mid) => {
                        VideoSource::Screen
                    }
                    _ => VideoSource::Camera,
                };
                match (kind, source) {
                    (TrackKind::Video(_), VideoSource::Camera) => {
                        self.video_rx_mid = Some(data.mid)
                    }
                    (TrackKind::Video(_), VideoSource::Screen) => {
                        self.screen_rx_mid = Some(data.mid)
                    }
                    _ => {}
                }
                let mut bytes = data.data.to_vec();
                if let Some(e2ee) = &mut self.e2ee {
                    // Opened where it lies. Refused frames (tampered, replayed, unknown key...)
                    // are counted by the schedule and never reach a decoder.
                    match e2ee
                        .schedule
                        .unprotect_in_place(self.now, format_of(kind), &mut bytes)
                    {
                        Ok(frame) => {
                            bytes.truncate(frame.end);
                            bytes.drain(..frame.start);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "dropped a media frame");
                            return;
                        }
                    }
                }
                if matches!(kind, TrackKind::Video(_)) {
                    tracing::trace!(
                        keyframe,
                        contiguous = data.contiguous,
                        bytes = bytes.len(),
                        "video frame received"
                    );
                }
                self.events.push_back(PeerEvent::Frame(EncodedFrame {
                    kind,
                    source,
                    rtp_time: data.time.numer(),
                    keyframe,
                    contiguous: data.contiguous,
                    data: bytes,
                }));
            }
            Event::KeyframeRequest(request) if Some(request.mid) == self.screen_mid => {
                self.events.push_back(PeerEvent::ScreenKeyframeRequested);
            }
            Event::KeyframeRequest(_) => self.events.push_back(PeerEvent::KeyframeRequested),
            Event::ChannelOpen(id, label) => {
                if label == CHAT_CHANNEL_LABEL {
                    self.chat = Some(id);
                    self.chat_ids.push(id);
                } else if label == E2EE_CHANNEL_LABEL && self.e2ee.is_some() {
                    self.e2ee_channel_open(id);
                } else if label != FILE_CHANNEL_LABEL {
                    self.other_channels.push((id, label.clone()));
                } else {
                    self.file = Some(id);
                    self.file_ids.push(id);
                    self.files.channel_opened();
                    if let Some(mut channel) = self.rtc.channel(id) {
                        channel
                            .set_buffered_amount_low_threshold(self.config.max_buffered_bytes / 2);
                    }
                }
                self.events.push_back(PeerEvent::ChannelOpen { label });
            }
            Event::ChannelData(data) => {
                let is_chat = self.chat_ids.contains(&data.id);
                let is_file = self.file_ids.contains(&data.id);
                if self
                    .e2ee
                    .as_ref()
                    .is_some_and(|e| e.channels.contains(&data.id))
                {
                    self.e2ee_message(data.binary, &data.data);
                    return;
                }
                if !is_chat && !is_file {
                    if let Some((_, label)) =
                        self.other_channels.iter().find(|(c, _)| *c == data.id)
                    {
                        self.events.push_back(PeerEvent::ChannelMessage {
                            label: label.clone(),
                            binary: data.binary,
                            data: data.data.to_vec(),
                        });
                    }
                    return;
                }
                let Some((binary, bytes)) = self.open_message(data.binary, &data.data) else {
                    return;
                };
                if is_chat {
                    match chat::decode_incoming(binary, &bytes, self.config.chat_max_bytes) {
                        Ok(text) => self.events.push_back(PeerEvent::Chat(text)),
                        Err(e) => self.events.push_back(PeerEvent::ChatRejected(e)),
                    }
                } else {
                    self.files.handle_frame(Frame::decode(binary, &bytes));
                    self.drain_file_events();
                }
            }
            Event::ChannelClose(id) => {
                if let Some(e2ee) = &mut self.e2ee {
                    e2ee.channels.retain(|c| *c != id);
                }
                self.other_channels.retain(|(c, _)| *c != id);
                if self.file_ids.contains(&id) {
                    self.file_ids.retain(|c| *c != id);
                    self.file = self.file_ids.last().copied();
                    // Transfers are interrupted only when no file channel is left.
                    if self.file.is_none() {
                        self.files.channel_lost();
                        self.drain_file_events();
                    }
                } else if self.chat_ids.contains(&id) {
                    self.chat_ids.retain(|c| *c != id);
                    self.chat = self.chat_ids.last().copied();
                }
            }
            Event::PeerStats(peer) => {
                let now_stats = peer.timestamp;
                let elapsed = self
                    .last_stats_at
                    .map(|t| now_stats.saturating_duration_since(t).as_secs_f64())
                    .filter(|s| *s > 0.0);
                if let Some(secs) = elapsed {
                    self.stats.receive_bps =
                        ((peer.bytes_rx.saturating_sub(self.stats.bytes_received)) as f64 * 8.0
                            / secs) as u64;
                    self.stats.send_bps =
                        ((peer.bytes_tx.saturating_sub(self.stats.bytes_sent)) as f64 * 8.0 / secs)
                            as u64;
                    let media: u64 = self.media_bytes_sent.values().sum();
                    self.stats.media_send_bps =
                        (media.saturating_sub(self.media_bytes_at_stats) as f64 * 8.0 / secs)
                            as u64;
                    self.media_bytes_at_stats = media;
                    self.stats.sending_file = self.files.has_chunks_to_send();
                }
                self.last_stats_at = Some(now_stats);
                self.stats.e2ee = self.e2ee_stats();
                self.stats.bytes_received = peer.bytes_rx;
                self.stats.bytes_sent = peer.bytes_tx;
                self.stats.rtt = peer
                    .selected_candidate_pair
                    .as_ref()
                    .and_then(|p| p.current_round_trip_time)
                    .or(peer.rtt);
                self.stats.egress_loss = peer.egress_loss_fraction;
                self.stats.ingress_loss = peer.ingress_loss_fraction;
                self.stats.estimated_send_bps = peer.bwe_tx.map(|b| b.as_u64());
                if self.config.data_redundancy {
                    self.redundancy
                        .on_stats(self.stats.egress_loss, self.stats.estimated_send_bps);
                }
                self.stats.selected_pair = peer
                    .selected_candidate_pair
                    .as_ref()
                    .map(|p| (p.local.addr, p.remote.addr));
                tracing::debug!(
                    send_bps = self.stats.send_bps,
                    media_send_bps = self.stats.media_send_bps,
                    estimate = ?self.stats.estimated_send_bps,
                    egress_loss = ?self.stats.egress_loss,
                    media_bytes = ?self.media_bytes_sent,
                    nacks = self.stats.nacks_received,
                    "stats"
                );
                self.events.push_back(PeerEvent::Stats(self.stats.clone()));
            }
            Event::MediaIngressStats(ingress) if Some(ingress.mid) == self.video_mid => {
                self.stats.video_jitter = Some(f64::from(ingress.jitter) / 90_000.0);
            }
            Event::MediaEgressStats(egress) => {
                self.media_bytes_sent.insert(egress.mid, egress.bytes);
                if Some(egress.mid) == self.video_mid {
                    self.stats.nacks_received = egress.nacks;
                    self.stats.plis_received = egress.plis;
                }
            }
            Event::EgressBitrateEstimate(estimate) => {
                let bps = match estimate {
                    str0m::bwe::BweKind::Twcc { estimate, .. } => estimate.as_u64(),
                    str0m::bwe::BweKind::Remb { estimate, .. } => estimate.as_u64(),
                    _ => return,
                };
                self.events.push_back(PeerEvent::BitrateEstimate(bps));
            }
            _ => {}
        }
    }

    /// Let retransmissions use up to half of the video bandwidth (str0m's default cap of 15%
    /// starves NACK recovery on a lossy 1:1 link), once the send stream exists.
    fn configure_video_stream(&mut self, mid: Mid) {
        self.video_stream_configured |=
            configure_video_stream(&mut self.rtc, mid, self.video_stream_configured);
    }

    /// A key channel opened: start key agreement on this connection (once) with the DTLS
    /// fingerprints str0m verified.
    fn e2ee_channel_open(&mut self, id: ChannelId) {
        let now = self.now;
        let local = self.rtc.direct_api().local_dtls_fingerprint().clone();
        let remote = self.rtc.direct_api().remote_dtls_fingerprint().cloned();
        let Some(e2ee) = &mut self.e2ee else {
            return;
        };
        e2ee.channels.push(id);
        if e2ee.connected {
            return;
        }
        let Some(remote) = remote else {
            tracing::warn!("key channel open without a remote DTLS fingerprint");
            return;
        };
        e2ee.connected = true;
        let remote_id = e2ee.remote_id.clone();
        e2ee.schedule.connect(
            now,
            &mut rand::rngs::OsRng,
            &remote_id,
            Fingerprint::new(&local.hash_func, local.bytes),
            Fingerprint::new(&remote.hash_func, remote.bytes),
        );
    }

    fn e2ee_message(&mut self, binary: bool, bytes: &[u8]) {
        let now = self.now;
        let Some(e2ee) = &mut self.e2ee else {
            return;
        };
        // Key messages are JSON text; anything else is malformed.
        let result = match (binary, std::str::from_utf8(bytes)) {
            (false, Ok(text)) => e2ee
                .schedule
                .handle_message(now, &mut rand::rngs::OsRng, text),
            _ => Err(e2ee.schedule.note_refused(Rejection::KeyMalformed)),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "refused a key message");
        }
    }

    /// Open a chat or file message: as is without end-to-end encryption; with it, only a
    /// protected one (others are counted and dropped).
    fn open_message<'a>(
        &mut self,
        binary: bool,
        bytes: &'a [u8],
    ) -> Option<(bool, std::borrow::Cow<'a, [u8]>)> {
        let now = self.now;
        let Some(e2ee) = &mut self.e2ee else {
            return Some((binary, std::borrow::Cow::Borrowed(bytes)));
        };
        if !binary {
            e2ee.schedule.note_refused(Rejection::Unprotected);
            return None;
        }
        match e2ee.schedule.unprotect_message(now, bytes) {
            Ok((binary, opened)) => Some((binary, std::borrow::Cow::Owned(opened))),
            Err(e) => {
                tracing::debug!(error = %e, "dropped a data message");
                None
            }
        }
    }

    /// Seal a chat or file message for the wire when end-to-end encryption is on.
    fn seal_message(&mut self, binary: bool, bytes: Vec<u8>) -> Result<(bool, Vec<u8>), PeerError> {
        let now = self.now;
        match &mut self.e2ee {
            None => Ok((binary, bytes)),
            Some(e2ee) => Ok((true, e2ee.schedule.protect_message(now, binary, &bytes)?)),
        }
    }

    /// Move key messages onto the key channel and schedule events into peer events; true if
    /// anything was written.
    fn pump_e2ee(&mut self) -> Result<bool, PeerError> {
        let Some(e2ee) = &mut self.e2ee else {
            return Ok(false);
        };
        let mut wrote = false;
        loop {
            match e2ee.schedule.poll_output() {
                ScheduleOutput::Send(text) => {
                    // Always the earliest key channel still open: when both sides created one
                    // (glare), every message still goes on one channel, so they arrive in the
                    // order they were sent (a reveal never overtakes its commitment).
                    let Some(id) = e2ee.channels.first().copied() else {
                        continue;
                    };
                    if let Some(mut channel) = self.rtc.channel(id) {
                        if !channel.write(false, text.as_bytes())? {
                            tracing::warn!("key channel refused a message");
                        }
                        wrote = true;
                    }
                }
                ScheduleOutput::Event(event) => {
                    if matches!(event, E2eeEvent::SendKeyActive { .. }) {
                        // Frames before the key were dropped: start the picture afresh.
                        self.events.push_back(PeerEvent::KeyframeRequested);
                    }
                    self.events.push_back(PeerEvent::E2ee(event));
                }
                ScheduleOutput::Timeout(at) => {
                    e2ee.timeout = at;
                    break;
                }
            }
        }
        Ok(wrote)
    }

    fn drain_file_events(&mut self) {
        while let Some(event) = self.files.poll_event() {
            self.events.push_back(PeerEvent::File(event));
        }
    }

    /// Move file frames onto the file channel while it has room; true if anything was written.
    fn pump_files(&mut self) -> Result<bool, PeerError> {
        self.drain_file_events();
        let Some(id) = self.file else {
            return Ok(false);
        };
        let max = self.config.max_buffered_bytes;
        let mut wrote = false;
        // Under end-to-end encryption, file frames wait for the keys.
        if self.e2ee.as_ref().is_some_and(|e| !e.schedule.can_send()) {
            return Ok(false);
        }
        loop {
            let Some(mut channel) = self.rtc.channel(id) else {
                return Ok(wrote);
            };
            let space = max
                .saturating_sub(channel.buffered_amount())
                .min(self.redundancy.file_allowance(self.now));
            let Some(frame) = self.files.poll_frame(space) else {
                break;
            };
            let (binary, bytes) = frame.encode();
            let (binary, bytes) = self.seal_message(binary, bytes)?;
            let Some(mut channel) = self.rtc.channel(id) else {
                return Ok(wrote);
            };
            self.redundancy.spend(bytes.len());
            if !channel.write(binary, &bytes)? {
                // The SCTP buffer is four times our limit, so this only happens if a control
                // frame meets a full queue; losing it would desynchronise the transfer.
                tracing::warn!("file channel refused a frame");
                return Err(PeerError::ChannelFull);
            }
            wrote = true;
        }
        self.drain_file_events();
        Ok(wrote)
    }

    /// Send a chat message.
    pub fn send_chat(&mut self, text: &str) -> Result<(), PeerError> {
        chat::check_outgoing(text, self.config.chat_max_bytes)?;
        let id = self.chat.ok_or(PeerError::ChannelNotOpen("chat"))?;
        let (binary, bytes) = self.seal_message(false, text.as_bytes().to_vec())?;
        let mut channel = self
            .rtc
            .channel(id)
            .ok_or(PeerError::ChannelNotOpen("chat"))?;
        if !channel.write(binary, &bytes)? {
            return Err(PeerError::ChannelFull);
        }
        Ok(())
    }

    /// Write a message on an open channel this peer does not handle itself (see
    /// [`PeerEvent::ChannelMessage`]); the latest channel with the label is used.
    pub fn write_channel(
        &mut self,
        label: &str,
        binary: bool,
        data: &[u8],
    ) -> Result<(), PeerError> {
        let id = self
            .other_channels
            .iter()
            .rev()
            .find(|(_, l)| l == label)
            .map(|(id, _)| *id)
            .ok_or(PeerError::ChannelNotOpen("requested"))?;
        let mut channel = self
            .rtc
            .channel(id)
            .ok_or(PeerError::ChannelNotOpen("requested"))?;
        if !channel.write(binary, data)? {
            return Err(PeerError::ChannelFull);
        }
        Ok(())
    }

    /// Offer a file to the remote; progress and the result arrive as [`PeerEvent::File`].
    pub fn offer_file(&mut self, name: &str, mime: &str, data: Vec<u8>) -> Result<Uuid, PeerError> {
        if self.file.is_none() {
            return Err(PeerError::ChannelNotOpen("file"));
        }
        Ok(self.files.offer(name, mime, data)?)
    }

    /// Offer a file again under its id, to resume after a reconnect.
    pub fn resume_file(
        &mut self,
        id: Uuid,
        name: &str,
        mime: &str,
        data: Vec<u8>,
    ) -> Result<Uuid, PeerError> {
        if self.file.is_none() {
            return Err(PeerError::ChannelNotOpen("file"));
        }
        Ok(self.files.offer_with_id(id, name, mime, data)?)
    }

    /// Accept an offered file.
    pub fn accept_file(&mut self, id: Uuid) -> Result<(), PeerError> {
        Ok(self.files.accept(id)?)
    }

    /// Decline an offered file.
    pub fn reject_file(&mut self, id: Uuid) -> Result<(), PeerError> {
        Ok(self.files.reject(id)?)
    }

    /// Cancel a transfer in either direction.
    pub fn cancel_file(&mut self, id: Uuid) -> Result<(), PeerError> {
        Ok(self.files.cancel(id)?)
    }

    /// The remote went away (signaling says it left): interrupt transfers in flight.
    pub fn remote_gone(&mut self) {
        self.files.channel_lost();
        self.drain_file_events();
    }

    /// Hand over the file transfers (with interrupted ones) to carry them to the next connection.
    pub fn take_file_transfers(&mut self) -> FileTransfers {
        self.files.channel_lost();
        self.drain_file_events();
        std::mem::replace(&mut self.files, FileTransfers::new(self.config.file_limits))
    }

    /// Continue the transfers of an earlier connection: interrupted ones resume when this
    /// connection's file channel opens.
    pub fn adopt_file_transfers(&mut self, files: FileTransfers) {
        self.files = files;
    }

    /// The negotiated video codec we send with (the first of ours the remote accepted, in the
    /// remote's order of preference when it offered).
    pub fn video_codec(&mut self) -> Option<VideoCodec> {
        let mid = self.video_mid?;
        let preferred = self.config.video_codecs.clone();
        let writer = self.rtc.writer(mid)?;

        writer
            .payload_params()
            .find_map(|p| match codec_of(p.spec().codec) {
                Some(TrackKind::Video(codec)) if preferred.contains(&codec) => Some(codec),
                _ => None,
            })
    }

    /// Send an encoded video frame (Annex-B H.264 or a VP8 frame) captured at `wallclock`,
    /// with a 90 kHz RTP timestamp.
    pub fn write_video(
        &mut self,
        wallclock: Instant,
        rtp_time: u64,
        codec: VideoCodec,
        frame: &[u8],
    ) -> Result<(), PeerError> {
        let mid = self.video_mid.ok_or(PeerError::NotNegotiated("video"))?;
        self.configure_video_stream(mid);
        if let Some(stream) = self.rtc.direct_api().stream_tx_by_mid(mid, None) {
            stream.set_unpaced(self.camera_unpaced);
        }
        let copies = std::mem::replace(&mut self.next_frame_copies, 1);
        self.write_video_on(mid, wallclock, rtp_time, codec, frame)?;
        if copies > 1
            && let Some(stream) = self.rtc.direct_api().stream_tx_by_mid(mid, None)
        {
            // What waits in the pacer ahead of the picture (sampled at its last update).
            let queue = stream.queue_info().map(|q| {
                (
                    q.byte_size(),
                    q.packet_count(),
                    q.first_unsent()
                        .map(|t| self.now.saturating_duration_since(t)),
                )
            });
            tracing::debug!(bytes = frame.len(), copies, ?queue, "a picture to copy");
            self.copying_frame = Some((copies, *stream.ssrc()));
        }
        Ok(())
    }

    /// Send an encoded frame of the shared screen (see [`Peer::share_screen`]); the codec is
    /// the camera's ([`Peer::video_codec`]). [`PeerError::NotNegotiated`] until the screen's
    /// section is negotiated and sending ([`Peer::screen_ready`]).
    pub fn write_screen(
        &mut self,
        wallclock: Instant,
        rtp_time: u64,
        codec: VideoCodec,
        frame: &[u8],
    ) -> Result<(), PeerError> {
        let mid = self
            .screen_mid
            .filter(|_| self.screen_ready())
            .ok_or(PeerError::NotNegotiated("screen"))?;
        // Retransmissions for the screen too, as for the camera.
        self.screen_stream_configured |=
            configure_video_stream(&mut self.rtc, mid, self.screen_stream_configured);
        self.write_video_on(mid, wallclock, rtp_time, codec, frame)
    }

    /// Send the camera's frames as they come (`true`), as audio goes, or through the pacer
    /// (`false`, the default). For audio only: the link is too weak for video, the bandwidth
    /// estimate has fallen with it (to a few kbit/s under a tight cap), and the pacer, which sends
    /// at that estimate, would hold the one picture every few seconds for seconds; a picture of a
    /// kilobyte or two goes at once instead.
    ///
    /// It takes effect at once: what the pacer holds of the camera goes out now (frames of the
    /// step before, which would otherwise go ahead of the first picture, at the fallen estimate).
    ///
    /// Going unpaced also forgets what the camera sent before: its retransmissions would go
    /// unpaced too, and the remote asks again for the packets of the step before that the
    /// weak link lost (measured at an 80 kbit/s cap: 10–14 KB a second of resends for three
    /// seconds, more than the link carries, which took the pictures and the voice with them).
    pub fn set_camera_unpaced(&mut self, unpaced: bool) {
        self.camera_unpaced = unpaced;
        if let Some(mid) = self.video_mid
            && let Some(stream) = self.rtc.direct_api().stream_tx_by_mid(mid, None)
        {
            stream.set_unpaced(unpaced);
            if unpaced {
                set_video_rtx_cache(stream);
            }
        }
    }

    /// Send every datagram of the next camera frame written `copies` times (at most 4),
    /// [`redundancy::PICTURE_COPY_SPACING`] apart: for the one picture every few seconds of audio
    /// only, which must get through a link too weak for video. The remote's SRTP replay check
    /// drops the copies it does not need, so this needs nothing from the other side.
    pub fn copy_next_video_frame(&mut self, copies: u8) {
        self.next_frame_copies = copies.clamp(1, 4);
    }

    /// A copy to send at `at`, in order of time.
    fn queue_copy(&mut self, at: Instant, transmit: Transmit) {
        let index = self.copies_to_send.partition_point(|(due, _)| *due <= at);
        self.copies_to_send.insert(index, (at, transmit));
    }

    fn write_video_on(
        &mut self,
        mid: Mid,
        wallclock: Instant,
        rtp_time: u64,
        codec: VideoCodec,
        frame: &[u8],
    ) -> Result<(), PeerError> {
        let writer = self
            .rtc
            .writer(mid)
            .ok_or(PeerError::NotNegotiated("video"))?;
        let wanted = match codec {
            VideoCodec::H264 => Codec::H264,
            VideoCodec::Vp8 => Codec::Vp8,
        };
        let pt = writer
            .payload_params()
            .filter(|p| p.spec().codec == wanted)
            // H.264 needs packetization mode 1 (what browsers send and expect).
            .find(|p| wanted != Codec::H264 || p.spec().format.packetization_mode == Some(1))
            .map(|p| p.pt())
            .ok_or(PeerError::NotNegotiated("video codec"))?;
        let Some(frame) = protect_frame(
            &mut self.e2ee,
            &mut self.protected,
            self.now,
            TrackKind::Video(codec),
            frame,
        )?
        else {
            return Ok(());
        };
        let writer = self
            .rtc
            .writer(mid)
            .ok_or(PeerError::NotNegotiated("video"))?;
        writer.write(
            pt,
            wallclock,
            MediaTime::new(rtp_time, Frequency::NINETY_KHZ),
            frame,
        )?;
        Ok(())
    }

    /// Send an Opus packet with a 48 kHz RTP timestamp.
    pub fn write_audio(
        &mut self,
        wallclock: Instant,
        rtp_time: u64,
        packet: &[u8],
    ) -> Result<(), PeerError> {
        let mid = self.audio_mid.ok_or(PeerError::NotNegotiated("audio"))?;
        let writer = self
            .rtc
            .writer(mid)
            .ok_or(PeerError::NotNegotiated("audio"))?;
        let pt = writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
            .ok_or(PeerError::NotNegotiated("audio codec"))?;
        let Some(packet) = protect_frame(
            &mut self.e2ee,
            &mut self.protected,
            self.now,
            TrackKind::Audio,
            packet,
        )?
        else {
            return Ok(());
        };
        let writer = self
            .rtc
            .writer(mid)
            .ok_or(PeerError::NotNegotiated("audio"))?;
        writer.write(
            pt,
            wallclock,
            MediaTime::new(rtp_time, Frequency::FORTY_EIGHT_KHZ),
            packet,
        )?;
        Ok(())
    }

    /// Ask the remote for a video keyframe of its camera (after loss broke decoding).
    pub fn request_keyframe(&mut self) -> Result<(), PeerError> {
        let mid = self
            .video_rx_mid
            .or(self.video_mid)
            .ok_or(PeerError::NotNegotiated("video"))?;
        self.request_keyframe_on(mid)
    }

    /// Ask the remote for a keyframe of the screen it shares.
    pub fn request_screen_keyframe(&mut self) -> Result<(), PeerError> {
        let mid = self
            .screen_rx_mid
            .ok_or(PeerError::NotNegotiated("screen"))?;
        self.request_keyframe_on(mid)
    }

    fn request_keyframe_on(&mut self, mid: Mid) -> Result<(), PeerError> {
        let mut writer = self
            .rtc
            .writer(mid)
            .ok_or(PeerError::NotNegotiated("video"))?;
        if writer.is_request_keyframe_possible(KeyframeRequestKind::Pli) {
            writer.request_keyframe(None, KeyframeRequestKind::Pli)?;
        }
        Ok(())
    }

    /// The latest statistics.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

#[cfg(test)]
mod screen_sections {
    use super::*;

    /// A browser's offer: its camera and microphone in its stream, a screen in no stream, a
    /// receive-only video section (no camera) without a stream at all; a native peer's screen
    /// under [`SCREEN_STREAM_ID`].
    #[test]
    fn a_screen_is_a_video_section_in_no_stream_or_the_screen_stream() {
        let sdp = "v=0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendrecv\r\na=msid:cam-stream mic\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendrecv\r\na=msid:cam-stream cam\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=recvonly\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=sendonly\r\na=msid:- screen\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:4\r\na=sendonly\r\na=msid:consult-screen s2\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:5\r\na=sendonly\r\na=msid:- odd-audio\r\n";
        assert_eq!(
            remote_screen_mids(sdp),
            vec![Mid::from("3"), Mid::from("4")],
            "only video sections, and only those in no stream or the screen stream"
        );
        assert!(remote_screen_mids("garbage").is_empty());
    }
}
