//! Harness for end-to-end tests: a real signaling service on loopback with a signed-in doctor,
//! or a whole deployment of several nodes ([`deployment`]).

pub mod deployment;
pub mod garage;

use std::sync::Arc;
use std::time::Duration;

use consult_client::api::{ApiClient, ClinicianLogin};
use consult_client::peer::file_transfer::FileEvent;
use consult_client::session::{Session, SessionConfig, SessionEvent};
use consult_client::Credentials;
use consult_proto::api::{Consultation, CreateConsultationRequest};
use consult_signaling::accounts;
use consult_signaling::clock::SystemClock;
use consult_signaling::config::Config;
use consult_signaling::server::{self, RunningServer};

/// A running service and a signed-in doctor.
pub struct Clinic {
    /// The service.
    pub server: RunningServer,
    /// Its base URL.
    pub base: String,
    /// The doctor's bearer token.
    pub token: String,
    /// The typed client of its API.
    pub api: ApiClient,
    /// The doctor's sign-in details.
    pub login: ClinicianLogin,
    _dir: tempfile::TempDir,
}

impl Clinic {
    /// Start a service on 127.0.0.1 and sign the demo doctor in.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Like [`Clinic::start`], with configuration changes.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            bind: "127.0.0.1:0".parse().expect("address"),
            data_dir: dir.path().to_path_buf(),
            log: "warn".into(),
            ..Config::default()
        };
        tweak(&mut config);
        let server = server::start(config, Arc::new(SystemClock))
            .await
            .expect("service starts");
        let state = &server.state;
        let creds = accounts::seed_demo_doctor(
            &state.pool,
            &state.audit,
            &state.sealing_key,
            state.clock.now(),
            None,
            &server.url,
        )
        .await
        .expect("demo doctor");
        let login = ClinicianLogin {
            email: creds.email,
            password: creds.password,
            totp_secret: creds.totp_secret,
        };
        let api = ApiClient::new(&server.url).expect("http client");
        let token = api.sign_in(&login).await.expect("the demo doctor signs in");
        Self {
            base: server.url.clone(),
            token,
            server,
            api,
            login,
            _dir: dir,
        }
    }

    /// Stop the service at once (as a killed process stops) and hand back its data directory,
    /// kept while the handle lives.
    pub async fn stop_keeping_data(self) -> tempfile::TempDir {
        self.server.stop_now().await;
        self._dir
    }

    /// Create a consultation; returns it and its invite link.
    pub async fn consultation(&self) -> (Consultation, String) {
        self.consultation_with(CreateConsultationRequest {
            title: Some("e2e".into()),
            ..Default::default()
        })
        .await
    }

    /// Create a consultation from this request; returns it and its invite link.
    pub async fn consultation_with(
        &self,
        request: CreateConsultationRequest,
    ) -> (Consultation, String) {
        let consultation = self
            .api
            .create_consultation(&self.token, &request)
            .await
            .expect("create");
        let invite = consultation.invite_url.clone().expect("invite");
        (consultation, invite)
    }

    /// A native patient ("Kiosk 3") through the invite, then the doctor, joining `consultation`
    /// with [`config`] sessions; returns (patient, doctor).
    pub async fn patient_and_doctor(
        &self,
        consultation: &Consultation,
        invite: String,
    ) -> (Session, Session) {
        let patient = Session::start(config(Credentials::Patient {
            invite_url: invite,
            name: "Kiosk 3".into(),
        }))
        .await
        .expect("patient session");
        let doctor = Session::start(config(Credentials::Clinician {
            base_url: self.base.clone(),
            token: self.token.clone(),
            consultation_id: consultation.id,
        }))
        .await
        .expect("doctor session");
        (patient, doctor)
    }

    /// Wait until someone waits (up to 30 s: over an emulated lossy link the patient's TCP and
    /// WebSocket handshakes alone can take seconds), then admit them.
    pub async fn admit_first_waiting(&self, consultation: &Consultation) {
        for _ in 0..600 {
            let waiting = self
                .api
                .waiting_room(&self.token)
                .await
                .expect("waiting room");
            if let Some(patient) = waiting.first() {
                self.api
                    .admit(&self.token, consultation.id, patient.participant_id)
                    .await
                    .expect("admit");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nobody came to the waiting room");
    }
}

/// What a session reported, for assertions.
#[derive(Default)]
pub struct Seen {
    /// `Joined` arrived.
    pub joined: bool,
    /// `Admitted` arrived.
    pub admitted: bool,
    /// `Connected` arrived.
    pub connected: bool,
    /// Decoded video frames.
    pub video: usize,
    /// Decoded audio frames.
    pub audio: usize,
    /// Chat messages, in order.
    pub chats: Vec<String>,
    /// The file last offered.
    pub offered: Option<uuid::Uuid>,
    /// The bytes of the file last received whole.
    pub received: Option<Vec<u8>>,
    /// A file was sent whole.
    pub sent: bool,
    /// Warnings, in order.
    pub warnings: Vec<String>,
    /// The latest statistics.
    pub stats: Option<consult_client::peer::Stats>,
    /// The short authentication string, once keys were agreed.
    pub sas: Option<String>,
    /// The latest recording state.
    pub recording: Option<consult_proto::signal::RecordingState>,
    /// When the last video frame was decoded.
    pub last_video_at: Option<std::time::Instant>,
    /// The longest time between two decoded video frames.
    pub longest_video_gap: Duration,
    /// Decoded video frames per sender (a group call has several).
    pub video_from: std::collections::HashMap<uuid::Uuid, usize>,
    /// Decoded audio frames per sender.
    pub audio_from: std::collections::HashMap<uuid::Uuid, usize>,
    /// The short authentication string agreed with each participant.
    pub sas_with: std::collections::HashMap<uuid::Uuid, String>,
    /// Decoded frames of shared screens, per sender.
    pub screen_from: std::collections::HashMap<uuid::Uuid, usize>,
    /// Decoded video frames per frame size (width, height).
    pub sizes: std::collections::BTreeMap<(u32, u32), usize>,
}

/// Note one session event.
pub fn record(seen: &mut Seen, event: SessionEvent) {
    match event {
        SessionEvent::Joined { .. } => seen.joined = true,
        SessionEvent::Admitted => seen.admitted = true,
        SessionEvent::Connected { .. } => seen.connected = true,
        SessionEvent::Video {
            frame,
            from,
            source: consult_client::peer::VideoSource::Screen,
            ..
        } => {
            assert!(frame.width > 0 && frame.height > 0);
            *seen.screen_from.entry(from).or_default() += 1;
        }
        SessionEvent::Video { frame, from, .. } => {
            *seen.sizes.entry((frame.width, frame.height)).or_default() += 1;
            seen.video += 1;
            *seen.video_from.entry(from).or_default() += 1;
            let now = std::time::Instant::now();
            if let Some(last) = seen.last_video_at {
                seen.longest_video_gap = seen.longest_video_gap.max(now - last);
            }
            seen.last_video_at = Some(now);
        }
        SessionEvent::Audio { samples, from } => {
            assert_eq!(samples.len(), 960);
            seen.audio += 1;
            *seen.audio_from.entry(from).or_default() += 1;
        }
        SessionEvent::Chat { text, .. } => seen.chats.push(text),
        SessionEvent::File {
            event: FileEvent::Offered { offer },
            ..
        } => seen.offered = Some(offer.id),
        SessionEvent::File {
            event: FileEvent::Received { data, .. },
            ..
        } => seen.received = Some(data),
        SessionEvent::File {
            event: FileEvent::Sent { .. },
            ..
        } => seen.sent = true,
        SessionEvent::Warning(w) => seen.warnings.push(w),
        SessionEvent::Stats { stats, .. } => seen.stats = Some(stats),
        SessionEvent::Recording(state) => seen.recording = Some(state),
        SessionEvent::E2ee {
            peer,
            event: consult_e2ee::E2eeEvent::SasReady(sas),
        } => {
            seen.sas = Some(sas.to_string());
            seen.sas_with.insert(peer, sas.to_string());
        }
        _ => {}
    }
}

/// Collect a session's events for `window`.
pub async fn pump(session: &mut Session, seen: &mut Seen, window: Duration) {
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, session.next_event()).await {
        record(seen, event);
    }
}

/// A session on loopback sending 320x240 video.
pub fn config(credentials: Credentials) -> SessionConfig {
    let mut config = SessionConfig::new(credentials);
    config.bind_ips = vec!["127.0.0.1".parse().unwrap()];
    config.video.width = 320;
    config.video.height = 240;
    config.video.bitrate_bps = 300_000;
    config
}

/// Send a moving pattern (every third 5 ms tick) and a tone (every second) both ways for
/// `secs`, collecting events.
pub async fn media_both_ways(
    patient: &mut Session,
    doctor: &mut Session,
    p: &mut Seen,
    d: &mut Seen,
    secs: u64,
) {
    media_both_ways_for(patient, doctor, p, d, Duration::from_secs(secs)).await
}

/// [`media_both_ways`] for any length of time.
pub async fn media_both_ways_for(
    patient: &mut Session,
    doctor: &mut Session,
    p: &mut Seen,
    d: &mut Seen,
    length: Duration,
) {
    let (mut pattern_p, mut pattern_d) = (
        consult_client::codec::pattern::TestPattern::new(320, 240),
        consult_client::codec::pattern::TestPattern::new(320, 240),
    );
    let (mut tone_p, mut tone_d) = (
        consult_client::codec::pattern::Tone::new(440.0),
        consult_client::codec::pattern::Tone::new(660.0),
    );
    let started = std::time::Instant::now();
    let mut tick = 0u64;
    while started.elapsed() < length {
        if tick.is_multiple_of(3) {
            patient.send_video(pattern_p.next_frame()).await.unwrap();
            doctor.send_video(pattern_d.next_frame()).await.unwrap();
        }
        if tick.is_multiple_of(2) {
            patient.send_audio(tone_p.next_frame()).await.unwrap();
            doctor.send_audio(tone_d.next_frame()).await.unwrap();
        }
        tick += 1;
        pump(patient, p, Duration::from_millis(5)).await;
        pump(doctor, d, Duration::from_millis(5)).await;
    }
    for seen in [&*p, &*d] {
        assert!(
            seen.sizes.keys().all(|size| *size == (320, 240)),
            "only 320x240 was sent: {:?}",
            seen.sizes
        );
    }
}
