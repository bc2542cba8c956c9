//! What a run does: how many consultations, how fast they join, for how long, with what media.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The video each peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoProfile {
    /// No video.
    Off,
    /// 640x360, 30 fps, about 600 kbit/s.
    #[serde(rename = "360p")]
    P360,
    /// 1280x720, 30 fps, about 1.5 Mbit/s.
    #[serde(rename = "720p")]
    P720,
}

impl VideoProfile {
    /// Width, height and target bitrate, or `None` when off.
    pub fn dimensions(self) -> Option<(u32, u32, u32)> {
        match self {
            VideoProfile::Off => None,
            VideoProfile::P360 => Some((640, 360, 600_000)),
            VideoProfile::P720 => Some((1280, 720, 1_500_000)),
        }
    }

    /// The name on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            VideoProfile::Off => "off",
            VideoProfile::P360 => "360p",
            VideoProfile::P720 => "720p",
        }
    }
}

impl std::str::FromStr for VideoProfile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(VideoProfile::Off),
            "360p" => Ok(VideoProfile::P360),
            "720p" => Ok(VideoProfile::P720),
            other => Err(format!(
                "unknown video profile {other:?}: use off, 360p or 720p"
            )),
        }
    }
}

/// Frames per second of every video profile.
pub const VIDEO_FPS: u32 = 30;

/// A run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Consultations to run at once.
    pub consultations: usize,
    /// Consultations started per second during ramp-up (on average; the seed jitters the gaps).
    pub ramp_per_sec: f64,
    /// How long every consultation is held together once the ramp-up is over.
    #[serde(with = "secs")]
    pub duration: Duration,
    /// Video sent by each peer.
    pub video: VideoProfile,
    /// Whether each peer sends audio.
    pub audio: bool,
    /// End-to-end encryption (SFrame) on the consultations.
    pub e2ee: bool,
    /// Recorded consultations (the patient consents), instead of live-only.
    pub recorded: bool,
    /// No media at all: clinicians and patients join and are admitted through signaling only.
    pub signaling_only: bool,
    /// Receivers in this many consultations also decode every frame with a real decoder.
    pub decode: usize,
    /// Seed of every random choice (join gaps, patterns' phases), so a run can be repeated.
    pub seed: u64,
    /// A consultation that is not connected this long after admission fails (ICE or DTLS).
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    /// A connected consultation with no intact remote frame this long after connecting fails.
    #[serde(with = "secs")]
    pub media_timeout: Duration,
    /// People in each consultation, the clinician included (2 to 4): a patient through the
    /// patient link, then an interpreter and a companion through named invites.
    #[serde(default = "two")]
    pub participants: usize,
}

fn two() -> usize {
    2
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            consultations: 5,
            ramp_per_sec: 2.0,
            duration: Duration::from_secs(10),
            video: VideoProfile::P360,
            audio: true,
            e2ee: false,
            recorded: false,
            signaling_only: false,
            decode: 1,
            seed: 1,
            connect_timeout: Duration::from_secs(15),
            media_timeout: Duration::from_secs(10),
            participants: 2,
        }
    }
}

impl Plan {
    /// Whether peers exchange media.
    pub fn has_media(&self) -> bool {
        !self.signaling_only
    }

    /// Time the ramp-up takes on average.
    pub fn ramp_duration(&self) -> Duration {
        Duration::from_secs_f64(self.consultations as f64 / self.ramp_per_sec.max(0.001))
    }
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}
