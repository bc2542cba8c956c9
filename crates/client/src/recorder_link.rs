//! A session's send-only connection to the consultation's recorder (a participant with role
//! `recorder`, present only while the consultation is recorded with consent).
//!
//! The session offers; the recorder answers and never sends media. The same encoded frames as
//! the call go to it. When the recording is zero-knowledge (the consultation is end-to-end
//! encrypted), every frame is SFrame-protected under a key of this link's own, which is wrapped
//! to the clinician's recording key (HPKE) and sent to the service as a `recording_key`
//! message before its first use: the recorder stores ciphertext it cannot open.

use std::time::Instant;

use base64::Engine as _;
use consult_e2ee::format::protect;
use consult_e2ee::recording_key::{EpochKeyBinding, RecordingPublicKey};
use consult_e2ee::sframe::{BaseKey, SenderKey, Suite};
use consult_e2ee::MediaFormat;
use consult_proto::signal::ClientMessage;
use rand::RngCore;
use uuid::Uuid;

use consult_peer::{Peer, PeerConfig, PeerError, TrackKind, VideoCodec, VideoSource};

/// The recording a session is asked to send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordingTarget {
    /// The recording's id.
    pub recording_id: Uuid,
    /// Zero-knowledge: the clinician's recording public key (base64).
    pub recording_key: Option<String>,
}

/// Protection of a zero-knowledge recorder link: one epoch key for the link's life.
struct Protection {
    key: SenderKey,
    counter: u64,
}

pub(crate) struct RecorderLink {
    /// The recorder's participant id.
    pub recorder: Uuid,
    pub peer: Peer,
    pub next_timeout: Instant,
    /// A new offer is due (the shared screen's section comes or goes).
    pub offer_due: bool,
    protection: Option<Protection>,
}

impl RecorderLink {
    /// A new link to `recorder`; with a zero-knowledge target, also the `recording_key`
    /// message to send before the offer.
    pub fn new(
        recorder: Uuid,
        me: Uuid,
        target: &RecordingTarget,
        config: &PeerConfig,
        now: Instant,
    ) -> Result<(Self, Option<ClientMessage>), consult_e2ee::recording_key::RecordingKeyError> {
        let peer = Peer::new(
            PeerConfig {
                polite: false,
                e2ee: None,
                // Media only, as the browser's link: nothing to chat with or send files to.
                data_channels: false,
                ..config.clone()
            },
            now,
        );
        let (protection, message) = match &target.recording_key {
            None => (None, None),
            Some(key) => {
                let public = RecordingPublicKey::from_base64(key)?;
                let suite = Suite::Aes128Gcm;
                let mut rng = rand::rngs::OsRng;
                let mut base = vec![0u8; suite.base_key_len()];
                rng.fill_bytes(&mut base);
                let base = BaseKey::new(base);
                let tag = u64::from(rng.next_u32() % 255 + 1);
                let kid = (tag << 24) | 1;
                let binding = EpochKeyBinding {
                    recording: *target.recording_id.as_bytes(),
                    sender: *me.as_bytes(),
                    kid,
                    suite,
                };
                let wrapped = binding.wrap(&public, &base, &mut rng)?;
                let key = SenderKey::new(suite, kid, &base)
                    .map_err(|_| consult_e2ee::recording_key::RecordingKeyError::Seal)?;
                let message = ClientMessage::RecordingKey {
                    recording_id: target.recording_id,
                    kid,
                    suite: suite.id(),
                    wrapped: base64::engine::general_purpose::STANDARD.encode(wrapped),
                };
                (Some(Protection { key, counter: 0 }), Some(message))
            }
        };
        Ok((
            Self {
                recorder,
                peer,
                next_timeout: now,
                offer_due: false,
                protection,
            },
            message,
        ))
    }

    /// The frame as it goes to the recorder: protected when zero-knowledge.
    fn prepare(&mut self, kind: TrackKind, frame: &[u8]) -> Option<Vec<u8>> {
        let Some(protection) = &mut self.protection else {
            return Some(frame.to_vec());
        };
        let format = match kind {
            TrackKind::Audio => MediaFormat::Opus,
            TrackKind::Video(VideoCodec::Vp8) => MediaFormat::Vp8,
            TrackKind::Video(VideoCodec::H264) => MediaFormat::H264,
        };
        let protected = protect(format, &protection.key, protection.counter, frame).ok()?;
        protection.counter += 1;
        Some(protected)
    }

    /// Send a video frame the call encoded, of the camera or the shared screen, if this link
    /// negotiated the same codec (and, for the screen, its section).
    pub fn write_video(
        &mut self,
        now: Instant,
        rtp_time: u64,
        codec: VideoCodec,
        source: VideoSource,
        frame: &[u8],
    ) -> Result<(), PeerError> {
        let screen = source == VideoSource::Screen;
        if !self.peer.is_connected()
            || (screen && !self.peer.screen_ready())
            || self.peer.video_codec() != Some(codec)
        {
            return Ok(());
        }
        let Some(frame) = self.prepare(TrackKind::Video(codec), frame) else {
            return Ok(());
        };
        if screen {
            self.peer.write_screen(now, rtp_time, codec, &frame)
        } else {
            self.peer.write_video(now, rtp_time, codec, &frame)
        }
    }

    /// Send an Opus packet the call encoded.
    pub fn write_audio(
        &mut self,
        now: Instant,
        rtp_time: u64,
        packet: &[u8],
    ) -> Result<(), PeerError> {
        if !self.peer.is_connected() {
            return Ok(());
        }
        match self.prepare(TrackKind::Audio, packet) {
            Some(packet) => self.peer.write_audio(now, rtp_time, &packet),
            None => Ok(()),
        }
    }
}
