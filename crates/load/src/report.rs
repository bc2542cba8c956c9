//! What a run found: every figure, as the JSON file holds it. The terminal table ([`crate::table`])
//! and the HTML report ([`crate::html`]) are views of this one structure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::Plan;

/// The whole report of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Version of this format.
    pub format: u32,
    /// When the run started (RFC 3339, UTC).
    pub started_at: String,
    /// Seconds from the start to the end of the run, teardown included.
    pub elapsed_secs: f64,
    /// The service's base URL.
    pub target: String,
    /// What was asked for.
    pub plan: Plan,
    /// How the run ended.
    pub outcome: Outcome,
    /// Why, in words, when it did not complete.
    pub message: Option<String>,
    /// How many consultations got how far.
    pub counts: Counts,
    /// Failures by cause.
    pub failures: BTreeMap<FailureCause, u64>,
    /// Up to 50 failures with their messages, in order.
    pub failure_examples: Vec<Failure>,
    /// Distributions of every measured figure.
    pub figures: Figures,
    /// Media counters summed over every receiver.
    pub media: MediaTotals,
    /// One point a second.
    pub timeline: Vec<TimelinePoint>,
    /// What the service said about itself, and whether it agrees with what we saw.
    pub service: ServiceReport,
    /// The generator's own CPU and memory.
    pub generator: ProcessUsage,
    /// The thresholds the user gave, and whether they held.
    pub thresholds: Vec<ThresholdResult>,
    /// Every consultation, one row each.
    pub consultations: Vec<ConsultationRow>,
}

/// Current version of the report format.
pub const REPORT_FORMAT: u32 = 1;

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every consultation ran its course (some may have failed).
    Completed,
    /// Cut short by the user (Ctrl-C).
    Interrupted,
    /// Stopped early: the service became unreachable, or nobody could sign in.
    Aborted,
}

/// Counts of consultations by how far they got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Asked for.
    pub planned: u64,
    /// Started (a clinician signed in and began creating it).
    pub started: u64,
    /// Created on the service.
    pub created: u64,
    /// The patient was admitted.
    pub admitted: u64,
    /// Both peers connected (ICE and DTLS); in a signaling-only run, equal to admitted.
    pub connected: u64,
    /// Both sides received a first intact remote frame (media runs).
    pub first_frame: u64,
    /// Ran until the end of the run without failing.
    pub succeeded: u64,
    /// Failed (see `failures`).
    pub failed: u64,
    /// Ended on the service at teardown (`POST /consultations/{id}/end` answered).
    pub ended: u64,
    /// Created but could not be ended (the service was gone).
    pub not_ended: u64,
    /// Clinicians signed in.
    pub signed_in: u64,
    /// Successful signaling joins we made (clinicians and patients).
    pub joins: u64,
}

/// Why a consultation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCause {
    /// The clinician could not sign in.
    SignIn,
    /// Creating the consultation, the invite, the waiting room, admission or the signaling
    /// connection failed.
    Signaling,
    /// ICE found no working candidate pair in time.
    Ice,
    /// ICE connected but the DTLS handshake did not complete in time.
    Dtls,
    /// Connected, but no intact remote frame arrived in time.
    MediaTimeout,
}

impl FailureCause {
    /// Every cause, in report order.
    pub const ALL: [FailureCause; 5] = [
        FailureCause::SignIn,
        FailureCause::Signaling,
        FailureCause::Ice,
        FailureCause::Dtls,
        FailureCause::MediaTimeout,
    ];

    /// The name used in the JSON file and the reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCause::SignIn => "sign_in",
            FailureCause::Signaling => "signaling",
            FailureCause::Ice => "ice",
            FailureCause::Dtls => "dtls",
            FailureCause::MediaTimeout => "media_timeout",
        }
    }
}

/// One failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Which consultation (0-based, in join order).
    pub consultation: usize,
    /// Why.
    pub cause: FailureCause,
    /// What happened, in words.
    pub message: String,
    /// Seconds since the start of the run.
    pub at_secs: f64,
}

/// Percentiles of one figure.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    /// The unit of every value ("ms", "%", "kbit/s").
    pub unit: String,
    /// How many samples.
    pub count: u64,
    /// Smallest.
    pub min: Option<f64>,
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
    /// Mean.
    pub mean: Option<f64>,
    /// Every sample, for plots.
    pub samples: Vec<f64>,
}

impl Distribution {
    /// Percentiles (nearest rank) of `samples`.
    ///
    /// ```
    /// use consult_load::report::Distribution;
    ///
    /// let d = Distribution::of("ms", (1..=100).map(f64::from).collect());
    /// assert_eq!((d.p50, d.p95, d.p99, d.max), (Some(50.0), Some(95.0), Some(99.0), Some(100.0)));
    /// assert_eq!(Distribution::of("ms", vec![]).p50, None);
    /// ```
    pub fn of(unit: &str, mut samples: Vec<f64>) -> Self {
        samples.retain(|s| s.is_finite());
        samples.sort_by(f64::total_cmp);
        let rank = |p: f64| -> Option<f64> {
            if samples.is_empty() {
                return None;
            }
            let index = ((p / 100.0) * samples.len() as f64).ceil() as usize;
            samples.get(index.clamp(1, samples.len()) - 1).copied()
        };
        let mean =
            (!samples.is_empty()).then(|| samples.iter().sum::<f64>() / samples.len() as f64);
        Self {
            unit: unit.to_owned(),
            count: samples.len() as u64,
            min: samples.first().copied(),
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: samples.last().copied(),
            mean,
            samples,
        }
    }
}

/// Every measured figure. Latencies are per consultation; media figures are per receiver (two
/// per consultation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Clinician sign-in (`POST /auth/login`), per clinician.
    pub sign_in_ms: Distribution,
    /// Patient: opening the invite link to being in the waiting room.
    pub waiting_room_ms: Distribution,
    /// Admission: the clinician's admit request to the patient being told.
    pub admission_ms: Distribution,
    /// ICE and DTLS: negotiation start to connected, the slower of the two peers.
    pub connect_ms: Distribution,
    /// Admission to the first intact remote frame, the later of the two sides.
    pub first_frame_ms: Distribution,
    /// Packet loss each receiver saw (RTCP), in percent.
    pub packet_loss_percent: Distribution,
    /// Video frames sent but never received intact, per receiver, in percent.
    pub frame_loss_percent: Distribution,
    /// Interarrival jitter of received video.
    pub jitter_ms: Distribution,
    /// Round-trip time on the selected candidate pair.
    pub rtt_ms: Distribution,
    /// Mean received bitrate while connected.
    pub received_kbps: Distribution,
    /// One-way delay of video frames (sender and receiver share this process's clock).
    pub frame_delay_ms: Distribution,
    /// Time each receiver's video was frozen (no new picture to show).
    pub frozen_ms: Distribution,
}

impl Figures {
    /// The name of every figure, as in the JSON file and the reports.
    pub const NAMES: [&'static str; 12] = [
        "sign_in_ms",
        "waiting_room_ms",
        "admission_ms",
        "connect_ms",
        "first_frame_ms",
        "packet_loss_percent",
        "frame_loss_percent",
        "jitter_ms",
        "rtt_ms",
        "received_kbps",
        "frame_delay_ms",
        "frozen_ms",
    ];

    /// Every figure with its name, in [`Figures::NAMES`] order.
    pub fn named(&self) -> [(&'static str, &Distribution); 12] {
        [
            ("sign_in_ms", &self.sign_in_ms),
            ("waiting_room_ms", &self.waiting_room_ms),
            ("admission_ms", &self.admission_ms),
            ("connect_ms", &self.connect_ms),
            ("first_frame_ms", &self.first_frame_ms),
            ("packet_loss_percent", &self.packet_loss_percent),
            ("frame_loss_percent", &self.frame_loss_percent),
            ("jitter_ms", &self.jitter_ms),
            ("rtt_ms", &self.rtt_ms),
            ("received_kbps", &self.received_kbps),
            ("frame_delay_ms", &self.frame_delay_ms),
            ("frozen_ms", &self.frozen_ms),
        ]
    }

    /// What a figure means, in words, for the reports.
    pub fn describe(name: &str) -> &'static str {
        match name {
            "sign_in_ms" => "Clinician sign-in (password and TOTP), per clinician",
            "waiting_room_ms" => "Patient: opening the invite link to being in the waiting room",
            "admission_ms" => "Admission: the clinician's admit request to the patient being told",
            "connect_ms" => "ICE + DTLS: negotiation start to connected (slower peer)",
            "first_frame_ms" => "Admission to first intact remote frame (later side)",
            "packet_loss_percent" => "Packet loss seen by each receiver (RTCP)",
            "frame_loss_percent" => "Video frames sent but not received intact, per receiver",
            "jitter_ms" => "Interarrival jitter of received video",
            "rtt_ms" => "Round-trip time on the selected candidate pair",
            "received_kbps" => "Mean received bitrate per receiver",
            "frame_delay_ms" => "One-way video frame delay, sender to receiver",
            "frozen_ms" => "Frozen-video time per receiver",
            _ => "",
        }
    }
}

/// Frame and packet counts of one receiver, or summed over receivers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaCounts {
    /// Video frames the other side sent.
    pub video_frames_sent: u64,
    /// Video frames that arrived with their stamp and hash intact.
    pub video_frames_intact: u64,
    /// Video frames whose stamp or hash did not match.
    pub video_frames_corrupt: u64,
    /// Video frames missing (gaps in the frame counter).
    pub video_frames_missing: u64,
    /// Video frames decoded by a real decoder (receivers in the first `--decode` consultations).
    pub video_frames_decoded: u64,
    /// Decoder errors.
    pub decode_errors: u64,
    /// Audio packets the other side sent.
    pub audio_packets_sent: u64,
    /// Audio packets that arrived intact (byte for byte one of the packets sent).
    pub audio_packets_intact: u64,
    /// Audio packets that matched none.
    pub audio_packets_corrupt: u64,
}

impl std::ops::AddAssign<&MediaCounts> for MediaCounts {
    fn add_assign(&mut self, other: &MediaCounts) {
        self.video_frames_sent += other.video_frames_sent;
        self.video_frames_intact += other.video_frames_intact;
        self.video_frames_corrupt += other.video_frames_corrupt;
        self.video_frames_missing += other.video_frames_missing;
        self.video_frames_decoded += other.video_frames_decoded;
        self.decode_errors += other.decode_errors;
        self.audio_packets_sent += other.audio_packets_sent;
        self.audio_packets_intact += other.audio_packets_intact;
        self.audio_packets_corrupt += other.audio_packets_corrupt;
    }
}

/// Media counters, summed over every receiver.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaTotals {
    /// Frames and packets, summed over every receiver (flat in the JSON file).
    #[serde(flatten)]
    pub counts: MediaCounts,
    /// Keyframes receivers asked for.
    pub keyframe_requests: u64,
    /// Times a session lost its signaling connection and reconnected.
    pub signaling_reconnects: u64,
    /// Frames and packets a session did not take in time and the generator skipped: the
    /// generator itself is overloaded, and its figures understate the service.
    pub sends_dropped: u64,
}

/// The state of the run at one second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// Seconds since the start.
    pub t_secs: f64,
    /// Consultations joined so far (patient admitted).
    pub joined: u64,
    /// Consultations connected now.
    pub active: u64,
    /// Failures so far.
    pub failed: u64,
    /// Received bitrate over every receiver, kbit/s.
    pub received_kbps: f64,
    /// Mean packet loss over receivers reporting, percent.
    pub packet_loss_percent: Option<f64>,
    /// The service's `consult_active_consultations` (minus what it had before the run).
    pub service_active_consultations: Option<i64>,
    /// The service's `consult_joins_total` (minus what it had before the run).
    pub service_joins: Option<u64>,
    /// The service's CPU use over the last second, percent of one core.
    pub service_cpu_percent: Option<f64>,
    /// The service's resident memory, MiB.
    pub service_rss_mib: Option<f64>,
    /// The generator's CPU use over the last second, percent of one core.
    pub generator_cpu_percent: Option<f64>,
    /// `/healthz` answer time, ms (none: no answer).
    pub healthz_ms: Option<f64>,
}

/// What the service reported about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// Joins the service counted during the run (`consult_joins_total`, every role).
    pub joins: Option<u64>,
    /// Joins we made: clinicians and patients (the service's in-process recorder does not
    /// join through the WebSocket and is not counted).
    pub expected_joins: u64,
    /// The service's active consultations at the middle of the hold, and ours at that moment.
    pub active_at_hold: Option<(i64, u64)>,
    /// Whether `/metrics` agrees with what the generator saw (joins, active consultations).
    pub metrics_agree: Option<bool>,
    /// Why not, when it does not.
    pub disagreement: Option<String>,
    /// CPU seconds the service used during the run.
    pub cpu_secs: Option<f64>,
    /// Security alerts the service raised during the run (`consult_alerts_raised_total`): a
    /// normal load raises none.
    #[serde(default)]
    pub alerts_raised: Option<u64>,
    /// Peak resident memory seen, MiB.
    pub peak_rss_mib: Option<f64>,
    /// Resident memory once every clinician had signed in, before the first consultation, MiB.
    pub baseline_rss_mib: Option<f64>,
    /// Resident memory before the first sign-in, MiB: with [`Self::baseline_rss_mib`], what
    /// the sign-ins (Argon2) cost the service.
    #[serde(default)]
    pub rss_before_sign_in_mib: Option<f64>,
    /// CPU (percent of one core) per connected consultation during the hold.
    pub cpu_percent_per_consultation: Option<f64>,
    /// Extra resident memory per connected consultation at the peak, MiB.
    pub rss_mib_per_consultation: Option<f64>,
    /// `/healthz` answer times during the run.
    pub healthz_ms: Distribution,
    /// Probes that got no answer.
    pub healthz_failures: u64,
    /// A service the generator started: error lines and panics in its log.
    pub log: Option<ServiceLog>,
    /// A service the generator started: its process id (gone once the run is over).
    pub pid: Option<u32>,
}

/// What a self-started service's log showed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceLog {
    /// Where the log is.
    pub path: String,
    /// Lines at ERROR level.
    pub errors: u64,
    /// Panics.
    pub panics: u64,
    /// The first few of them.
    pub examples: Vec<String>,
}

/// A process's CPU and memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessUsage {
    /// CPU seconds used during the run.
    pub cpu_secs: f64,
    /// Mean CPU over the run, percent of one core.
    pub cpu_percent: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mib: f64,
}

/// A threshold and whether the run kept it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdResult {
    /// The option that set it (`max_failures`, `max_p95_join_ms`).
    pub name: String,
    /// The limit.
    pub limit: f64,
    /// What was measured (none: nothing to measure).
    pub measured: Option<f64>,
    /// Whether the run kept it.
    pub passed: bool,
}

/// One consultation's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConsultationRow {
    /// 0-based, in join order.
    pub index: usize,
    /// Its id on the service, once created.
    pub id: Option<uuid::Uuid>,
    /// Seconds since the start when it started.
    pub started_at_secs: f64,
    /// Seconds since the start when the patient was admitted.
    pub admitted_at_secs: Option<f64>,
    /// Sign-in of its clinician, ms.
    pub sign_in_ms: Option<f64>,
    /// Invite to waiting room, ms.
    pub waiting_room_ms: Option<f64>,
    /// Admission, ms.
    pub admission_ms: Option<f64>,
    /// ICE + DTLS, ms.
    pub connect_ms: Option<f64>,
    /// Admission to first frame, ms.
    pub first_frame_ms: Option<f64>,
    /// Failure, if any.
    pub failure: Option<Failure>,
    /// The recording state the patient last saw (recorded runs).
    pub recording: Option<String>,
    /// Ended on the service at teardown.
    pub ended: bool,
    /// The two receivers: patient then clinician.
    pub receivers: Vec<ReceiverRow>,
}

/// One receiver's media figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReceiverRow {
    /// "patient" or "clinician".
    pub side: String,
    /// Frames and packets (flat in the JSON file).
    #[serde(flatten)]
    pub counts: MediaCounts,
    /// Last RTCP packet loss, percent.
    pub packet_loss_percent: Option<f64>,
    /// Mean video jitter, ms.
    pub jitter_ms: Option<f64>,
    /// Median RTT, ms.
    pub rtt_ms: Option<f64>,
    /// Mean received bitrate, kbit/s.
    pub received_kbps: Option<f64>,
    /// Median one-way frame delay, ms.
    pub frame_delay_ms: Option<f64>,
    /// Frozen time, ms.
    pub frozen_ms: Option<f64>,
}

/// The name of an outcome, as in the JSON file.
pub fn outcome_str(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Completed => "completed",
        Outcome::Interrupted => "interrupted",
        Outcome::Aborted => "aborted",
    }
}

/// How the terminal table and the HTML report write numbers.
pub mod text {
    /// What stands for a figure that was not measured.
    pub const DASH: &str = "–";

    /// A number with one decimal (a dash when not finite).
    pub fn num(v: f64) -> String {
        if v.is_finite() {
            format!("{v:.1}")
        } else {
            DASH.to_owned()
        }
    }

    /// A number with one decimal, or a dash.
    pub fn opt(v: Option<f64>) -> String {
        v.map_or_else(|| DASH.to_owned(), num)
    }
}
