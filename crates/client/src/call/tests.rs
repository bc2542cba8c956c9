//! The call's decisions on a virtual clock: two [`Call`]s, a pretend signaling service that
//! forwards descriptions and candidates, and a network that can be cut per direction. Real
//! str0m peers, real DTLS and SRTP; no sockets, no sleeping — minutes of call run in
//! milliseconds.

use std::collections::BTreeMap;

use consult_e2ee::recording_key::RecordingKeyPair;
use consult_e2ee::E2eeEvent;
use consult_proto::api::ConsultationMode;
use consult_proto::signal::{
    ConsultationSummary, LeaveReason, Peer as Participant, SignalErrorCode as ErrorCode,
};

use super::*;

const DOCTOR: Uuid = Uuid::from_u128(0xd0c);
const PATIENT: Uuid = Uuid::from_u128(0xba7);
const RECORDER: Uuid = Uuid::from_u128(0x5ec);

fn vp8_only() -> PeerConfig {
    PeerConfig {
        video_codecs: vec![VideoCodec::Vp8],
        ..PeerConfig::default()
    }
}

fn config() -> CallConfig {
    CallConfig {
        peer: vp8_only(),
        receive: ReceiveMode::Decoded,
        ice_restart_after: Duration::from_secs(5),
        polite_offer_delay: Duration::from_millis(1500),
        e2ee: None,
        e2ee_schedule: ScheduleConfig::default(),
        video_bitrate_bps: 800_000,
    }
}

/// A synthetic VP8 frame: the first byte's low bit clear marks a keyframe.
fn vp8_frame(keyframe: bool) -> Vec<u8> {
    let mut frame = vec![0x5a; 1200];
    frame[0] = if keyframe { 0x10 } else { 0x11 };
    frame
}

/// One participant: its call and everything it said and did, stamped with virtual time.
struct Side {
    id: Uuid,
    addr: SocketAddr,
    call: Call,
    timeout: Instant,
    events: Vec<(Duration, SessionEvent)>,
    signals: Vec<(Duration, ClientMessage)>,
    frames: Vec<(Duration, EncodedFrame)>,
    bitrates: Vec<u32>,
}

impl Side {
    fn new(id: Uuid, addr: SocketAddr, config: CallConfig, now: Instant) -> Self {
        let candidates = LocalCandidates {
            host: vec![addr],
            ..LocalCandidates::default()
        };
        Self {
            id,
            addr,
            call: Call::new(config, candidates, now),
            timeout: now,
            events: Vec::new(),
            signals: Vec::new(),
            frames: Vec::new(),
            bitrates: Vec::new(),
        }
    }

    fn count(&self, what: impl Fn(&SessionEvent) -> bool) -> usize {
        self.events.iter().filter(|(_, e)| what(e)).count()
    }

    fn first(&self, what: impl Fn(&SessionEvent) -> bool) -> Option<Duration> {
        self.events.iter().find(|(_, e)| what(e)).map(|(t, _)| *t)
    }

    fn warnings(&self, containing: &str) -> Vec<Duration> {
        self.events
            .iter()
            .filter_map(|(t, e)| match e {
                SessionEvent::Warning(w) if w.contains(containing) => Some(*t),
                _ => None,
            })
            .collect()
    }

    /// Descriptions this side sent to `to`, with their time.
    fn descriptions_to(&self, to: Uuid) -> Vec<(Duration, SessionDescription)> {
        self.signals
            .iter()
            .filter_map(|(t, m)| match m {
                ClientMessage::Description {
                    to: dest,
                    description,
                } if *dest == to => Some((*t, description.clone())),
                _ => None,
            })
            .collect()
    }

    fn offers_to(&self, to: Uuid) -> Vec<(Duration, String)> {
        self.descriptions_to(to)
            .into_iter()
            .filter(|(_, d)| d.kind == SdpKind::Offer)
            .map(|(t, d)| (t, d.sdp))
            .collect()
    }

    fn connected(&self) -> usize {
        self.count(|e| matches!(e, SessionEvent::Connected { .. }))
    }
}

enum Delivery {
    Datagram {
        to_doctor: bool,
        source: SocketAddr,
        destination: SocketAddr,
        contents: Vec<u8>,
    },
    Signal {
        to_doctor: bool,
        message: ServerMessage,
    },
}

/// A doctor (impolite) and a patient (polite) on a virtual clock.
struct Clinic {
    start: Instant,
    now: Instant,
    doctor: Side,
    patient: Side,
    in_flight: BTreeMap<(Instant, u64), Delivery>,
    seq: u64,
    /// Datagrams doctor → patient get through.
    to_patient_up: bool,
    /// Datagrams patient → doctor get through.
    to_doctor_up: bool,
    /// How long the service takes to forward a message.
    signaling_delay: Duration,
    network_delay: Duration,
}

fn summary(e2ee: bool) -> ConsultationSummary {
    ConsultationSummary {
        id: Uuid::from_u128(1),
        doctor_name: "Dr Ada Lovelace".into(),
        mode: ConsultationMode::LiveOnly,
        e2ee,
        guests_share_screen: false,
    }
}

fn joined(id: Uuid, doctor: bool, e2ee: bool, peers: Vec<Participant>) -> ServerMessage {
    ServerMessage::Joined {
        participant_id: id,
        role: if doctor {
            ParticipantRole::Doctor
        } else {
            ParticipantRole::Patient
        },
        consultation: summary(e2ee),
        admitted: doctor,
        resumed: false,
        polite: !doctor,
        heartbeat_interval_ms: 20_000,
        peers,
    }
}

/// A participant as a service from before group consultations announces it: no politeness per
/// pair, so `joined.polite` decides toward the doctor (and the doctor is impolite).
fn participant(id: Uuid, role: ParticipantRole) -> Participant {
    Participant {
        participant_id: id,
        role,
        name: format!("{role:?}"),
        polite: false,
    }
}

impl Clinic {
    fn new(doctor: CallConfig, patient: CallConfig) -> Self {
        let start = Instant::now();
        Self {
            start,
            now: start,
            doctor: Side::new(
                DOCTOR,
                SocketAddr::from(([127, 0, 0, 1], 10_000)),
                doctor,
                start,
            ),
            patient: Side::new(
                PATIENT,
                SocketAddr::from(([127, 0, 0, 2], 20_000)),
                patient,
                start,
            ),
            in_flight: BTreeMap::new(),
            seq: 0,
            to_patient_up: true,
            to_doctor_up: true,
            signaling_delay: Duration::from_millis(10),
            network_delay: Duration::from_millis(5),
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn side(&mut self, doctor: bool) -> &mut Side {
        if doctor {
            &mut self.doctor
        } else {
            &mut self.patient
        }
    }

    /// The service tells a participant something now.
    fn tell(&mut self, doctor: bool, message: ServerMessage) {
        let now = self.now;
        self.side(doctor).call.handle_signal(now, message).unwrap();
        self.drain();
    }

    /// Both join; the doctor admits the patient (as the service does it: `admitted` to the
    /// patient, `peer_joined` to the doctor).
    fn admit(&mut self, e2ee: bool) {
        self.tell(true, joined(DOCTOR, true, e2ee, vec![]));
        self.admit_patient(e2ee);
    }

    /// The patient joins and is admitted; the doctor (already here) hears of it.
    fn admit_patient(&mut self, e2ee: bool) {
        self.tell(false, joined(PATIENT, false, e2ee, vec![]));
        self.patient_admitted();
        self.tell(
            true,
            ServerMessage::PeerJoined {
                peer: participant(PATIENT, ParticipantRole::Patient),
            },
        );
    }

    /// The service tells the patient they are admitted, with the doctor here.
    fn patient_admitted(&mut self) {
        self.tell(
            false,
            ServerMessage::Admitted {
                peers: vec![participant(DOCTOR, ParticipantRole::Doctor)],
            },
        );
    }

    /// The service tells the doctor the patient is online again (back, or its socket replaced).
    fn patient_back_online(&mut self) {
        self.tell(
            true,
            ServerMessage::PeerPresence {
                participant_id: PATIENT,
                online: true,
            },
        );
    }

    fn push(&mut self, at: Instant, delivery: Delivery) {
        self.seq += 1;
        self.in_flight.insert((at, self.seq), delivery);
    }

    /// Run both calls until they wait, routing what they send.
    fn drain(&mut self) {
        for doctor in [true, false] {
            loop {
                let elapsed = self.elapsed();
                let now = self.now;
                let side = self.side(doctor);
                let (from, other_addr) = (side.id, if doctor { PATIENT } else { DOCTOR });
                match side.call.poll_output().unwrap() {
                    CallOutput::Timeout(at) => {
                        side.timeout = at;
                        break;
                    }
                    CallOutput::Event(event) => side.events.push((elapsed, event)),
                    CallOutput::Frame { frame, .. } => side.frames.push((elapsed, frame)),
                    CallOutput::Bitrate(bps) => side.bitrates.push(bps),
                    CallOutput::Signal(message) => {
                        side.signals.push((elapsed, message.clone()));
                        let forwarded = match message {
                            ClientMessage::Description { to, description } if to == other_addr => {
                                Some(ServerMessage::Description { from, description })
                            }
                            ClientMessage::Candidate { to, candidate } if to == other_addr => {
                                Some(ServerMessage::Candidate { from, candidate })
                            }
                            _ => None,
                        };
                        if let Some(message) = forwarded {
                            let at = now + self.signaling_delay;
                            self.push(
                                at,
                                Delivery::Signal {
                                    to_doctor: !doctor,
                                    message,
                                },
                            );
                        }
                    }
                    CallOutput::Transmit(transmit) => {
                        let up = if doctor {
                            self.to_patient_up
                        } else {
                            self.to_doctor_up
                        };
                        if up {
                            let at = now + self.network_delay;
                            self.push(
                                at,
                                Delivery::Datagram {
                                    to_doctor: !doctor,
                                    source: transmit.source,
                                    destination: transmit.destination,
                                    contents: transmit.contents,
                                },
                            );
                        }
                    }
                }
            }
        }
    }

    /// Advance to the next thing that happens and handle it.
    fn step(&mut self) {
        let next = [self.doctor.timeout, self.patient.timeout]
            .into_iter()
            .chain(self.in_flight.keys().next().map(|(at, _)| *at))
            .min()
            .unwrap_or(self.now);
        self.now = next.max(self.now + Duration::from_micros(100));
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let ((at, _), delivery) = entry.remove_entry();
            match delivery {
                Delivery::Datagram {
                    to_doctor,
                    source,
                    destination,
                    contents,
                } => {
                    let side = self.side(to_doctor);
                    if destination == side.addr {
                        side.call.handle_receive(at, source, destination, &contents);
                    }
                }
                Delivery::Signal { to_doctor, message } => {
                    let now = self.now;
                    self.side(to_doctor)
                        .call
                        .handle_signal(now, message)
                        .unwrap();
                }
            }
        }
        let now = self.now;
        for doctor in [true, false] {
            let side = self.side(doctor);
            if side.timeout <= now {
                side.call.handle_timeout(now).unwrap();
            }
        }
        self.drain();
    }

    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = self.now + limit;
        while self.now < deadline {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    fn run_for(&mut self, duration: Duration) {
        self.run_until(duration, |_| false);
    }

    fn connect(&mut self) {
        self.admit(false);
        assert!(
            self.run_until(Duration::from_secs(10), |c| c.doctor.connected() > 0
                && c.patient.connected() > 0),
            "the call did not connect"
        );
    }

    /// The doctor sends a video frame now.
    fn doctor_sends(&mut self, keyframe: bool) {
        let now = self.now;
        self.doctor
            .call
            .write_video(now, VideoCodec::Vp8, &vp8_frame(keyframe))
            .unwrap();
        self.drain();
    }
}

fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines().find_map(|l| l.strip_prefix("a=ice-ufrag:"))
}

#[test]
fn the_impolite_side_offers_at_once_and_the_polite_side_answers_instead_of_offering() {
    let mut clinic = Clinic::new(config(), config());
    clinic.connect();

    let doctor_offers = clinic.doctor.offers_to(PATIENT);
    assert_eq!(doctor_offers.len(), 1, "one offer from the doctor");
    assert!(
        doctor_offers[0].0 < Duration::from_millis(1),
        "the impolite side offers at once"
    );
    let patient_said = clinic.patient.descriptions_to(DOCTOR);
    assert_eq!(patient_said.len(), 1);
    assert_eq!(patient_said[0].1.kind, SdpKind::Answer);
    // Its pause passes; the answer already settled it: still no offer from the patient.
    clinic.run_for(Duration::from_secs(3));
    assert!(clinic.patient.offers_to(DOCTOR).is_empty());
    // Candidates go after the side's first description, never before (browsers refuse them).
    for side in [&clinic.doctor, &clinic.patient] {
        let first_description = side
            .signals
            .iter()
            .position(|(_, m)| matches!(m, ClientMessage::Description { .. }))
            .unwrap();
        let first_candidate = side
            .signals
            .iter()
            .position(|(_, m)| matches!(m, ClientMessage::Candidate { .. }))
            .unwrap();
        assert!(first_description < first_candidate);
    }
    assert_eq!(
        clinic
            .doctor
            .count(|e| matches!(e, SessionEvent::PeerJoined { .. })),
        1
    );
    assert_eq!(
        clinic
            .patient
            .count(|e| matches!(e, SessionEvent::Admitted)),
        1
    );
}

#[test]
fn a_polite_side_offers_after_its_pause_when_the_other_side_is_silent() {
    let mut clinic = Clinic::new(config(), config());
    // The doctor never learns of the patient (a browser that waits to be offered to).
    clinic.tell(false, joined(PATIENT, false, false, vec![]));
    clinic.patient_admitted();
    clinic.run_for(Duration::from_millis(1400));
    assert!(clinic.patient.offers_to(DOCTOR).is_empty(), "too early");
    clinic.run_for(Duration::from_millis(200));
    let offers = clinic.patient.offers_to(DOCTOR);
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].0, Duration::from_millis(1500));
}

#[test]
fn on_glare_the_polite_side_gives_way_and_the_call_connects() {
    let mut clinic = Clinic::new(
        config(),
        CallConfig {
            polite_offer_delay: Duration::ZERO,
            ..config()
        },
    );
    clinic.signaling_delay = Duration::from_millis(40);
    clinic.connect();

    // Both offered before either offer arrived.
    assert_eq!(
        clinic.doctor.offers_to(PATIENT)[0].0,
        clinic.patient.offers_to(DOCTOR)[0].0
    );
    clinic.run_for(Duration::from_secs(1));
    let kinds = |side: &Side, to| -> Vec<SdpKind> {
        side.descriptions_to(to)
            .iter()
            .map(|(_, d)| d.kind)
            .collect()
    };
    // The polite patient gave way: it answered the doctor's offer (then offered what its own
    // offer had and the answer lacked). The impolite doctor ignored the patient's first offer
    // and answered only the later ones.
    let patient = kinds(&clinic.patient, DOCTOR);
    let doctor = kinds(&clinic.doctor, PATIENT);
    assert_eq!(
        patient[..2],
        [SdpKind::Offer, SdpKind::Answer],
        "{patient:?}"
    );
    assert_eq!(doctor[0], SdpKind::Offer);
    let patient_offers = patient.iter().filter(|k| **k == SdpKind::Offer).count();
    let doctor_answers = doctor.iter().filter(|k| **k == SdpKind::Answer).count();
    assert_eq!(
        doctor_answers,
        patient_offers - 1,
        "doctor {doctor:?}, patient {patient:?}"
    );
    assert!(clinic.doctor.call.is_connected() && clinic.patient.call.is_connected());
}

#[test]
fn a_connection_that_stays_down_is_restarted_and_comes_back() {
    let mut clinic = Clinic::new(config(), config());
    clinic.connect();
    let first_offer = clinic.doctor.offers_to(PATIENT)[0].1.clone();

    clinic.to_patient_up = false;
    clinic.to_doctor_up = false;
    assert!(clinic.run_until(Duration::from_secs(30), |c| c
        .doctor
        .count(|e| matches!(e, SessionEvent::Disconnected { .. }))
        > 0));
    let down_at = clinic
        .doctor
        .first(|e| matches!(e, SessionEvent::Disconnected { .. }))
        .unwrap();
    clinic.run_for(Duration::from_millis(4900));
    assert_eq!(
        clinic.doctor.offers_to(PATIENT).len(),
        1,
        "no restart before 5 s down"
    );
    // While the network stays down, it tries again every 5 s (not on every wake).
    clinic.run_for(Duration::from_millis(5200));
    let offers = clinic.doctor.offers_to(PATIENT);
    assert_eq!(offers.len(), 3, "{offers:?}");
    assert_eq!(offers[1].0, down_at + Duration::from_secs(5));
    assert_eq!(offers[2].0, down_at + Duration::from_secs(10));
    assert_ne!(
        ice_ufrag(&offers[1].1),
        ice_ufrag(&first_offer),
        "new ICE credentials"
    );
    assert_ne!(ice_ufrag(&offers[2].1), ice_ufrag(&offers[1].1));
    assert_eq!(
        clinic.doctor.warnings("restarting ICE"),
        vec![offers[1].0, offers[2].0]
    );

    clinic.to_patient_up = true;
    clinic.to_doctor_up = true;
    // ICE comes back on the restarted agent (DTLS never went down, so that is the reconnection).
    let ice_up = |side: &Side| side.count(|e| matches!(e, SessionEvent::IceConnected { .. }));
    let before = (ice_up(&clinic.doctor), ice_up(&clinic.patient));
    assert!(
        clinic.run_until(Duration::from_secs(15), |c| ice_up(&c.doctor) > before.0
            && ice_up(&c.patient) > before.1),
        "the call came back after the restart"
    );
    assert!(clinic.doctor.call.is_connected());
    // And media flows again.
    let frames = clinic.patient.frames.len();
    clinic.doctor_sends(true);
    clinic.run_for(Duration::from_millis(100));
    assert_eq!(clinic.patient.frames.len(), frames + 1);
}

#[test]
fn a_connection_that_comes_back_by_itself_is_not_restarted() {
    let mut clinic = Clinic::new(config(), config());
    clinic.connect();
    clinic.to_patient_up = false;
    clinic.to_doctor_up = false;
    assert!(clinic.run_until(Duration::from_secs(30), |c| c
        .doctor
        .count(|e| matches!(e, SessionEvent::Disconnected { .. }))
        > 0));
    clinic.to_patient_up = true;
    clinic.to_doctor_up = true;
    let ice_up = clinic
        .doctor
        .count(|e| matches!(e, SessionEvent::IceConnected { .. }));
    assert!(clinic.run_until(Duration::from_secs(4), |c| c
        .doctor
        .count(|e| matches!(e, SessionEvent::IceConnected { .. }))
        > ice_up));
    clinic.run_for(Duration::from_secs(10));
    assert_eq!(clinic.doctor.offers_to(PATIENT).len(), 1, "no ICE restart");
    assert!(clinic.doctor.warnings("restarting ICE").is_empty());
}

#[test]
fn video_waits_for_a_keyframe_and_asks_for_one_at_most_every_250_ms() {
    let mut clinic = Clinic::new(config(), config());
    clinic.connect();
    let requested = |c: &Clinic| {
        c.doctor
            .count(|e| matches!(e, SessionEvent::KeyframeRequested))
    };

    // Delta frames before any keyframe cannot be decoded: none reach the decoder, and the
    // patient asks for a keyframe — once for a burst of 5 frames in 200 ms.
    for _ in 0..5 {
        clinic.doctor_sends(false);
        clinic.run_for(Duration::from_millis(40));
    }
    clinic.run_for(Duration::from_millis(30));
    assert!(clinic.patient.frames.is_empty());
    assert_eq!(requested(&clinic), 1);
    assert!(
        clinic.doctor.call.keyframe_due(),
        "a request makes the next frame a keyframe"
    );
    // 250 ms after the first request, the next undecodable frame asks again.
    clinic.run_for(Duration::from_millis(50));
    clinic.doctor_sends(false);
    clinic.run_for(Duration::from_millis(30));
    assert_eq!(requested(&clinic), 2);

    // A keyframe opens the gate; the frames that follow pass while decoding succeeds.
    clinic.doctor_sends(true);
    clinic.run_for(Duration::from_millis(30));
    assert_eq!(clinic.patient.frames.len(), 1);
    assert!(clinic.patient.frames[0].1.keyframe);
    clinic
        .patient
        .call
        .video_decoded(DOCTOR, VideoSource::Camera);
    clinic.doctor_sends(false);
    clinic.run_for(Duration::from_millis(30));
    assert_eq!(clinic.patient.frames.len(), 2);

    // A decode error closes it again and asks at once, inside the 250 ms.
    let now = clinic.now;
    clinic
        .patient
        .call
        .video_undecodable(DOCTOR, VideoSource::Camera, now);
    clinic.drain();
    clinic.doctor_sends(false);
    clinic.run_for(Duration::from_millis(30));
    assert_eq!(
        clinic.patient.frames.len(),
        2,
        "no delta frame after a decode error"
    );
    assert_eq!(requested(&clinic), 3);
    clinic.doctor_sends(true);
    clinic.run_for(Duration::from_millis(30));
    assert_eq!(clinic.patient.frames.len(), 3);
}

/// A call whose patient is handed frames as they came (no decoder gating).
fn patient_receiving_encoded() -> Clinic {
    Clinic::new(
        config(),
        CallConfig {
            receive: ReceiveMode::Encoded,
            ..config()
        },
    )
}

#[test]
fn encoded_mode_hands_over_every_frame_and_audio_is_never_gated() {
    let mut clinic = patient_receiving_encoded();
    clinic.connect();
    clinic.doctor_sends(false);
    let now = clinic.now;
    clinic.doctor.call.write_audio(now, &[0xfc; 60]).unwrap();
    clinic.drain();
    clinic.run_for(Duration::from_millis(50));
    let kinds: Vec<_> = clinic.patient.frames.iter().map(|(_, f)| f.kind).collect();
    assert!(kinds.contains(&TrackKind::Video(VideoCodec::Vp8)));
    assert!(kinds.contains(&TrackKind::Audio));
    assert_eq!(
        clinic
            .doctor
            .count(|e| matches!(e, SessionEvent::KeyframeRequested)),
        0
    );
}

#[test]
fn nothing_is_sent_before_the_connection_is_up() {
    let mut clinic = Clinic::new(config(), config());
    clinic.admit(false);
    // Not connected yet: writing is a no-op, not an error.
    assert!(!clinic.doctor.call.is_connected());
    assert_eq!(clinic.doctor.call.video_codec(), None);
    let now = clinic.now;
    clinic
        .doctor
        .call
        .write_video(now, VideoCodec::Vp8, &vp8_frame(true))
        .unwrap();
    clinic.doctor.call.write_audio(now, &[0xfc; 60]).unwrap();
    assert!(clinic.run_until(Duration::from_secs(10), |c| c.patient.connected() > 0));
    clinic.run_for(Duration::from_millis(100));
    assert!(clinic.patient.frames.is_empty());
    assert_eq!(clinic.doctor.call.video_codec(), Some(VideoCodec::Vp8));
}

#[test]
fn a_keyframe_is_due_when_connected_and_after_a_frame_is_encoded_it_is_not() {
    let mut clinic = Clinic::new(config(), config());
    clinic.connect();
    assert!(clinic.doctor.call.keyframe_due());
    clinic.doctor.call.video_encoded();
    assert!(!clinic.doctor.call.keyframe_due());
}

#[test]
fn bandwidth_estimates_are_clamped_to_a_tenth_and_twice_the_target() {
    let one = |bps| encoder_bitrate(800_000, &[Some(bps)]);
    assert_eq!(
        [1_000, 500_000, 10_000_000, u64::MAX].map(one),
        [
            Some(80_000),
            Some(500_000),
            Some(1_600_000),
            Some(1_600_000)
        ]
    );
    assert_eq!(encoder_bitrate(800_000, &[None]), None);
}

#[test]
fn a_sender_follows_its_weakest_receiver_and_shares_its_upload_among_them() {
    // Three receivers with plenty of room: the upload of all three stays within twice the
    // target.
    let plenty = Some(5_000_000);
    assert_eq!(
        encoder_bitrate(800_000, &[plenty, plenty, plenty]),
        Some(533_333)
    );
    // One weak receiver sets the pace for everyone (one encoder feeds them all).
    assert_eq!(
        encoder_bitrate(800_000, &[plenty, Some(200_000), None]),
        Some(200_000)
    );
    // Never below a tenth of the target, however many.
    assert_eq!(
        encoder_bitrate(800_000, &[plenty; 40].map(|e| e)),
        Some(80_000)
    );
}

#[test]
fn a_remote_that_never_agrees_keys_is_reported_once_after_10_s() {
    let mut clinic = Clinic::new(
        config(),
        CallConfig {
            // A participant that never agrees keys.
            e2ee: Some(false),
            ..config()
        },
    );
    clinic.admit(true);
    assert!(clinic.run_until(Duration::from_secs(10), |c| c.doctor.connected() > 0));
    let connected_at = clinic
        .doctor
        .first(|e| matches!(e, SessionEvent::Connected { .. }))
        .unwrap();
    clinic.run_for(Duration::from_secs(30));
    let warnings = clinic
        .doctor
        .warnings("has not started end-to-end encryption");
    assert_eq!(warnings.len(), 1, "said once");
    let after = warnings[0] - connected_at;
    assert!(
        after >= E2EE_AGREEMENT_WARNING && after < E2EE_AGREEMENT_WARNING + Duration::from_secs(2),
        "said {after:?} after connecting"
    );
    assert!(clinic.patient.warnings("end-to-end").is_empty());
}

#[test]
fn when_both_agree_keys_nobody_is_warned_and_both_see_the_same_sas() {
    let mut clinic = Clinic::new(config(), config());
    clinic.admit(true);
    let sas = |side: &Side| {
        side.events.iter().find_map(|(_, e)| match e {
            SessionEvent::E2ee {
                event: E2eeEvent::SasReady(sas),
                ..
            } => Some(sas.to_string()),
            _ => None,
        })
    };
    assert!(
        clinic.run_until(Duration::from_secs(15), |c| sas(&c.doctor).is_some()
            && sas(&c.patient).is_some())
    );
    assert_eq!(sas(&clinic.doctor), sas(&clinic.patient));
    clinic.run_for(Duration::from_secs(15));
    assert!(clinic.doctor.warnings("end-to-end").is_empty());
    assert!(clinic.patient.warnings("end-to-end").is_empty());
}

#[test]
fn when_the_other_side_leaves_the_call_forgets_it_and_a_new_one_connects() {
    let mut clinic = Clinic::new(config(), config());
    clinic.connect();
    clinic.tell(
        true,
        ServerMessage::PeerLeft {
            participant_id: PATIENT,
            reason: LeaveReason::Left,
        },
    );
    assert_eq!(
        clinic
            .doctor
            .count(|e| matches!(e, SessionEvent::PeerLeft { .. })),
        1
    );
    assert!(!clinic.doctor.call.is_connected());
    // Nothing more goes to the one who left: no offers, no ICE restart.
    clinic.run_for(Duration::from_secs(20));
    assert_eq!(clinic.doctor.offers_to(PATIENT).len(), 1);
    assert!(clinic.doctor.warnings("restarting ICE").is_empty());
    // A stranger's descriptions are not for this call.
    let signals = clinic.doctor.signals.len();
    let stranger = clinic.patient.offers_to(DOCTOR);
    assert!(stranger.is_empty());
    clinic.tell(
        true,
        ServerMessage::Description {
            from: Uuid::from_u128(0xbad),
            description: SessionDescription {
                kind: SdpKind::Offer,
                sdp: "v=0".into(),
            },
        },
    );
    assert_eq!(clinic.doctor.signals.len(), signals);

    // The patient comes back: a fresh connection, offered at once, connects.
    let patient = Side::new(PATIENT, clinic.patient.addr, config(), clinic.now);
    clinic.patient = patient;
    clinic.admit_patient(false);
    let connected = clinic.doctor.connected();
    assert!(
        clinic.run_until(Duration::from_secs(10), |c| c.doctor.connected()
            > connected
            && c.patient.connected() > 0)
    );
    assert_eq!(clinic.doctor.offers_to(PATIENT).len(), 2);
}

#[test]
fn a_bad_remote_description_is_reported_and_the_call_goes_on() {
    let mut clinic = Clinic::new(config(), config());
    clinic.connect();
    clinic.tell(
        true,
        ServerMessage::Description {
            from: PATIENT,
            description: SessionDescription {
                kind: SdpKind::Offer,
                sdp: "not an sdp".into(),
            },
        },
    );
    assert_eq!(
        clinic.doctor.warnings("remote description refused").len(),
        1
    );
    clinic.tell(
        true,
        ServerMessage::Candidate {
            from: PATIENT,
            candidate: Some(IceCandidate {
                candidate: "candidate:garbage".into(),
                sdp_mid: None,
                sdp_m_line_index: Some(0),
                username_fragment: None,
            }),
        },
    );
    assert_eq!(
        clinic.doctor.warnings("ignored a remote candidate").len(),
        1
    );
    let frames = clinic.patient.frames.len();
    clinic.doctor_sends(true);
    clinic.run_for(Duration::from_millis(50));
    assert_eq!(clinic.patient.frames.len(), frames + 1, "media still flows");
    assert!(clinic.doctor.call.end().is_none());
}

#[test]
fn declined_ended_replaced_and_fatal_errors_end_the_call_and_others_do_not() {
    let cases = [
        (ServerMessage::Declined {}, Some(CallEnd::Finished)),
        (ServerMessage::ConsultationEnded {}, Some(CallEnd::Finished)),
        (ServerMessage::Replaced {}, Some(CallEnd::Finished)),
        (
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
                fatal: false,
            },
            None,
        ),
        (
            ServerMessage::Error {
                code: ErrorCode::Unauthorized,
                message: "who are you".into(),
                fatal: true,
            },
            Some(CallEnd::Rejected {
                code: ErrorCode::Unauthorized.as_str().into(),
                message: "who are you".into(),
            }),
        ),
    ];
    for (message, end) in cases {
        let mut clinic = Clinic::new(config(), config());
        clinic.tell(false, joined(PATIENT, false, false, vec![]));
        clinic.tell(false, message.clone());
        assert_eq!(clinic.patient.call.end(), end.as_ref(), "{message:?}");
    }
}

/// The recorder: a participant that is present while the consultation is recorded.
fn recording(recording_key: Option<String>) -> ServerMessage {
    ServerMessage::Recording {
        state: RecordingState::Recording,
        reasons: vec!["all_patients_consented".into()],
        retention_days: Some(30),
        zero_knowledge: recording_key.is_some(),
        problem: None,
        recording_id: Some(Uuid::from_u128(0x4ec)),
        recording_key,
    }
}

fn not_recording() -> ServerMessage {
    ServerMessage::Recording {
        state: RecordingState::Withdrawn,
        reasons: vec!["consent_withdrawn".into()],
        retention_days: None,
        zero_knowledge: false,
        problem: None,
        recording_id: None,
        recording_key: None,
    }
}

fn recorder_joined() -> ServerMessage {
    ServerMessage::PeerJoined {
        peer: participant(RECORDER, ParticipantRole::Recorder),
    }
}

#[test]
fn the_recorder_is_offered_a_link_only_once_admitted_and_recording() {
    let mut clinic = Clinic::new(config(), config());
    clinic.tell(false, joined(PATIENT, false, false, vec![]));
    clinic.tell(false, recorder_joined());
    clinic.tell(false, recording(None));
    assert!(
        clinic.patient.offers_to(RECORDER).is_empty(),
        "not while waiting"
    );
    assert_eq!(
        clinic
            .patient
            .count(|e| matches!(e, SessionEvent::Recording(RecordingState::Recording))),
        1
    );

    clinic.patient_admitted();
    let offers = clinic.patient.offers_to(RECORDER);
    assert_eq!(offers.len(), 1, "offered once admitted");
    assert!(offers[0].1.contains("a=sendonly") || offers[0].1.contains("a=sendrecv"));
    assert!(clinic
        .patient
        .signals
        .iter()
        .any(|(_, m)| matches!(m, ClientMessage::Candidate { to, .. } if *to == RECORDER)));
    // Not zero-knowledge: no wrapped key.
    assert!(!clinic
        .patient
        .signals
        .iter()
        .any(|(_, m)| matches!(m, ClientMessage::RecordingKey { .. })));
    // The same recording again changes nothing.
    clinic.tell(false, recording(None));
    assert_eq!(clinic.patient.offers_to(RECORDER).len(), 1);

    // Recording stops: the link goes; it starts again: a new link.
    clinic.tell(false, not_recording());
    clinic.tell(false, recording(None));
    assert_eq!(clinic.patient.offers_to(RECORDER).len(), 2);
    // The recorder leaves: the link goes, and so does its recording; a recorder that joins
    // gets a link once the service says what it records.
    clinic.tell(
        false,
        ServerMessage::PeerLeft {
            participant_id: RECORDER,
            reason: LeaveReason::Left,
        },
    );
    clinic.tell(false, recorder_joined());
    assert_eq!(clinic.patient.offers_to(RECORDER).len(), 2);
    clinic.tell(false, recording(None));
    assert_eq!(clinic.patient.offers_to(RECORDER).len(), 3);
    // None of this went to the doctor's connection.
    assert!(clinic
        .patient
        .offers_to(RECORDER)
        .iter()
        .all(|(_, sdp)| !sdp.is_empty()));
}

#[test]
fn a_zero_knowledge_recording_gets_the_wrapped_key_before_the_offer() {
    let key = RecordingKeyPair::generate(&mut rand::rngs::OsRng);
    let mut clinic = Clinic::new(config(), config());
    clinic.tell(true, joined(DOCTOR, true, true, vec![]));
    clinic.tell(true, recorder_joined());
    clinic.tell(true, recording(Some(key.public().to_base64())));
    let to_recorder: Vec<_> = clinic
        .doctor
        .signals
        .iter()
        .map(|(_, m)| m)
        .filter(|m| match m {
            ClientMessage::RecordingKey { .. } => true,
            ClientMessage::Description { to, .. } | ClientMessage::Candidate { to, .. } => {
                *to == RECORDER
            }
            _ => false,
        })
        .collect();
    assert!(matches!(
        to_recorder[0],
        ClientMessage::RecordingKey { recording_id, .. } if *recording_id == Uuid::from_u128(0x4ec)
    ));
    assert!(matches!(to_recorder[1], ClientMessage::Description { .. }));
    assert_eq!(
        to_recorder
            .iter()
            .filter(|m| matches!(m, ClientMessage::RecordingKey { .. }))
            .count(),
        1
    );
}

#[test]
fn after_a_failover_the_new_recorder_gets_one_link_for_the_new_recording() {
    // The node holding the call died with its recorder: the doctor is back on another node,
    // whose `joined` lists no recorder yet; then its recorder joins and the service says what
    // it records. One offer to the new recorder, with the new recording's key only — never a
    // link (or a key) for the recording that ended with the old node.
    let key = RecordingKeyPair::generate(&mut rand::rngs::OsRng);
    let mut clinic = Clinic::new(config(), config());
    clinic.connect();
    clinic.tell(true, recorder_joined());
    clinic.tell(true, recording(Some(key.public().to_base64())));
    assert_eq!(clinic.doctor.offers_to(RECORDER).len(), 1);
    let before = clinic.doctor.signals.len();

    clinic.tell(true, doctor_back_with_the_patient());
    let new_recorder = Uuid::from_u128(0x5ec2);
    let new_recording = Uuid::from_u128(0x4ec2);
    clinic.tell(
        true,
        ServerMessage::PeerJoined {
            peer: participant(new_recorder, ParticipantRole::Recorder),
        },
    );
    assert!(
        clinic.doctor.offers_to(new_recorder).is_empty(),
        "nothing until the service says what it records"
    );
    let mut announced = recording(Some(key.public().to_base64()));
    if let ServerMessage::Recording { recording_id, .. } = &mut announced {
        *recording_id = Some(new_recording);
    }
    clinic.tell(true, announced);
    let after: Vec<_> = clinic.doctor.signals[before..]
        .iter()
        .map(|(_, m)| m)
        .collect();
    let keys: Vec<Uuid> = after
        .iter()
        .filter_map(|m| match m {
            ClientMessage::RecordingKey { recording_id, .. } => Some(*recording_id),
            _ => None,
        })
        .collect();
    assert_eq!(keys, [new_recording], "the new recording's key, once");
    assert_eq!(clinic.doctor.offers_to(new_recorder).len(), 1);
    assert_eq!(
        clinic.doctor.offers_to(RECORDER).len(),
        1,
        "nothing more to the recorder that died"
    );
    assert!(clinic.doctor.call.is_connected(), "the call itself stays");
}

#[test]
fn a_bad_recording_key_is_reported_and_nothing_goes_to_the_recorder() {
    let mut clinic = Clinic::new(config(), config());
    clinic.tell(true, joined(DOCTOR, true, true, vec![]));
    clinic.tell(true, recorder_joined());
    clinic.tell(true, recording(Some("not a key".into())));
    assert_eq!(
        clinic.doctor.warnings("not sending to the recorder").len(),
        1
    );
    assert!(clinic.doctor.offers_to(RECORDER).is_empty());
    assert!(!clinic
        .doctor
        .signals
        .iter()
        .any(|(_, m)| matches!(m, ClientMessage::RecordingKey { .. })));
}

#[test]
fn the_heartbeat_follows_the_service_with_a_floor_of_one_second() {
    let mut call = Call::new(config(), LocalCandidates::default(), Instant::now());
    assert_eq!(call.heartbeat(), DEFAULT_HEARTBEAT);
    let mut message = joined(DOCTOR, true, false, vec![]);
    if let ServerMessage::Joined {
        heartbeat_interval_ms,
        ..
    } = &mut message
    {
        *heartbeat_interval_ms = 10;
    }
    call.handle_signal(Instant::now(), message).unwrap();
    assert_eq!(call.heartbeat(), Duration::from_secs(1));
}

#[test]
fn the_keyframe_gate_follows_codec_changes_and_losses() {
    let frame = |keyframe, contiguous| EncodedFrame {
        kind: TrackKind::Video(VideoCodec::Vp8),
        source: VideoSource::Camera,
        rtp_time: 0,
        keyframe,
        contiguous,
        data: Vec::new(),
    };
    let mut gate = KeyframeGate::default();
    assert!(
        !gate.admit(VideoCodec::Vp8, &frame(false, true)),
        "nothing before a keyframe"
    );
    assert!(gate.admit(VideoCodec::Vp8, &frame(true, true)));
    gate.decodable = true;
    assert!(gate.admit(VideoCodec::Vp8, &frame(false, true)));
    assert!(
        !gate.admit(VideoCodec::Vp8, &frame(false, false)),
        "a gap closes it"
    );
    assert!(
        !gate.admit(VideoCodec::Vp8, &frame(false, true)),
        "and it stays closed"
    );
    assert!(gate.admit(VideoCodec::Vp8, &frame(true, false)));
    gate.decodable = true;
    assert!(
        !gate.admit(VideoCodec::H264, &frame(false, true)),
        "a new codec closes it"
    );
}

/// The doctor's `joined` after a signaling reconnect: the place resumed, the patient there.
fn doctor_back_with_the_patient() -> ServerMessage {
    let mut back = joined(
        DOCTOR,
        true,
        false,
        vec![participant(PATIENT, ParticipantRole::Patient)],
    );
    if let ServerMessage::Joined { resumed, .. } = &mut back {
        *resumed = true;
    }
    back
}

#[test]
fn back_on_signaling_with_the_same_peer_the_connection_stays() {
    // A signaling reconnect, or the service restarted: both sides are told `joined` again, the
    // other still among their peers. Nobody offers anew, the connection stays up, and video
    // still arrives.
    let mut clinic = Clinic::new(config(), config());
    clinic.connect();
    let offers = (
        clinic.doctor.offers_to(PATIENT).len(),
        clinic.patient.offers_to(DOCTOR).len(),
    );
    let connected = (clinic.doctor.connected(), clinic.patient.connected());
    clinic.tell(true, doctor_back_with_the_patient());
    let mut back = joined(
        PATIENT,
        false,
        false,
        vec![participant(DOCTOR, ParticipantRole::Doctor)],
    );
    if let ServerMessage::Joined {
        resumed, admitted, ..
    } = &mut back
    {
        (*resumed, *admitted) = (true, true);
    }
    clinic.tell(false, back);
    clinic.run_for(Duration::from_secs(5));
    assert_eq!(
        (
            clinic.doctor.offers_to(PATIENT).len(),
            clinic.patient.offers_to(DOCTOR).len()
        ),
        offers,
        "no new negotiation"
    );
    assert_eq!(
        (clinic.doctor.connected(), clinic.patient.connected()),
        connected,
        "no new connection"
    );
    assert!(clinic.doctor.call.is_connected() && clinic.patient.call.is_connected());
    let frames = clinic.patient.frames.len();
    clinic.doctor_sends(true);
    assert!(
        clinic.run_until(Duration::from_secs(2), |c| c.patient.frames.len() > frames),
        "video still arrives on the same connection"
    );

    // A different peer in `joined` (the other side's place was lost meanwhile) does start anew.
    let stranger = Uuid::from_u128(0x5eed);
    clinic.tell(
        true,
        joined(
            DOCTOR,
            true,
            false,
            vec![participant(stranger, ParticipantRole::Patient)],
        ),
    );
    clinic.run_for(Duration::from_secs(1));
    assert_eq!(
        clinic.doctor.offers_to(stranger).len(),
        1,
        "a fresh offer to the new peer"
    );
}

#[test]
fn back_on_signaling_before_the_connection_came_up_negotiation_starts_again() {
    // The doctor's offer went out, then signaling dropped and the offer was lost with it: a
    // `joined` that lists the same peer must not keep a connection stuck half-negotiated.
    let mut clinic = Clinic::new(config(), config());
    clinic.admit(false);
    assert!(clinic.run_until(Duration::from_secs(1), |c| !c
        .doctor
        .offers_to(PATIENT)
        .is_empty()));
    let first = clinic.doctor.offers_to(PATIENT);
    assert!(!clinic.doctor.call.is_connected());
    clinic.tell(true, doctor_back_with_the_patient());
    clinic.run_for(Duration::from_millis(50));
    let offers = clinic.doctor.offers_to(PATIENT);
    assert_eq!(offers.len(), first.len() + 1, "a fresh offer");
    assert_ne!(
        ice_ufrag(&offers[offers.len() - 1].1),
        ice_ufrag(&first[first.len() - 1].1),
        "from a new peer connection"
    );

    // A new place (another participant id for this side) starts anew too, even when connected.
    let mut clinic = Clinic::new(config(), config());
    clinic.connect();
    let offers = clinic.doctor.offers_to(PATIENT).len();
    clinic.tell(
        true,
        joined(
            Uuid::from_u128(0xd0c2),
            true,
            false,
            vec![participant(PATIENT, ParticipantRole::Patient)],
        ),
    );
    clinic.run_for(Duration::from_millis(50));
    assert_eq!(clinic.doctor.offers_to(PATIENT).len(), offers + 1);
}

#[test]
fn a_participant_back_online_before_connecting_is_offered_again_and_a_connected_one_is_not() {
    let mut clinic = Clinic::new(config(), config());
    // The doctor offers to a patient whose page is away: the offer goes nowhere.
    clinic.tell(true, joined(DOCTOR, true, false, vec![]));
    clinic.tell(
        true,
        ServerMessage::PeerJoined {
            peer: participant(PATIENT, ParticipantRole::Patient),
        },
    );
    clinic.run_for(Duration::from_millis(100));
    assert_eq!(clinic.doctor.offers_to(PATIENT).len(), 1);
    // Back within the grace period: a new offer replaces the lost one.
    clinic.patient_back_online();
    let offers = clinic.doctor.offers_to(PATIENT);
    assert_eq!(offers.len(), 2, "offered again");
    assert_ne!(ice_ufrag(&offers[0].1), ice_ufrag(&offers[1].1));

    // Once connected, a blip of theirs changes nothing here.
    let mut clinic = Clinic::new(config(), config());
    clinic.admit(false);
    clinic.connect();
    let before = clinic.doctor.offers_to(PATIENT).len();
    clinic.patient_back_online();
    clinic.run_for(Duration::from_millis(500));
    assert_eq!(clinic.doctor.offers_to(PATIENT).len(), before);
}

/// A connected call in which the doctor shares a screen and its offer is lost on the way to the
/// patient: the offer's SDP, how many offers the doctor had sent, and how many descriptions
/// the patient had.
fn screen_offer_lost() -> (Clinic, String, usize, usize) {
    let mut clinic = Clinic::new(config(), config());
    clinic.connect();
    clinic.run_for(Duration::from_millis(500));
    clinic.doctor.call.share_screen(true);
    clinic.drain();
    clinic.run_until(Duration::from_secs(1), |c| {
        c.in_flight
            .values()
            .any(|d| matches!(d, Delivery::Signal { to_doctor: false, message: ServerMessage::Description { description, .. } } if description.kind == SdpKind::Offer))
    });
    let offers = clinic.doctor.offers_to(PATIENT);
    let offered = offers.len();
    let lost = offers.last().expect("the screen's offer").1.clone();
    clinic.in_flight.retain(|_, d| {
        !matches!(
            d,
            Delivery::Signal {
                to_doctor: false,
                ..
            }
        )
    });
    let answers_before = clinic.patient.descriptions_to(DOCTOR).len();
    clinic.run_for(Duration::from_secs(2));
    assert_eq!(
        clinic.patient.descriptions_to(DOCTOR).len(),
        answers_before,
        "nothing reached the patient"
    );
    (clinic, lost, offered, answers_before)
}

#[test]
fn joined_again_in_the_same_place_our_unanswered_offer_goes_again() {
    let (mut clinic, lost, offered, answers_before) = screen_offer_lost();
    // The doctor's own socket was replaced: joined again, the patient still here.
    let mut again = joined(
        DOCTOR,
        true,
        false,
        vec![participant(PATIENT, ParticipantRole::Patient)],
    );
    if let ServerMessage::Joined { resumed, .. } = &mut again {
        *resumed = true;
    }
    clinic.tell(true, again);
    let offers = clinic.doctor.offers_to(PATIENT);
    assert_eq!(offers.len(), offered + 1, "offered again");
    assert_eq!(offers.last().map(|(_, sdp)| sdp), Some(&lost));
    clinic.run_for(Duration::from_secs(1));
    let answers = clinic.patient.descriptions_to(DOCTOR);
    assert_eq!(answers.len(), answers_before + 1);
    assert_eq!(answers.last().map(|(_, d)| d.kind), Some(SdpKind::Answer));
    assert_eq!(
        clinic.doctor.connected(),
        1,
        "the same connection, never made again"
    );
}

#[test]
fn a_connected_participant_back_online_gets_our_unanswered_offer_again_once() {
    // The doctor shares a screen; its offer goes to the patient's old socket and is lost.
    let (mut clinic, lost, offered, answers_before) = screen_offer_lost();

    // The patient's socket was replaced: the same offer goes again, and is answered.
    clinic.patient_back_online();
    let offers = clinic.doctor.offers_to(PATIENT);
    assert_eq!(offers.len(), offered + 1, "offered again");
    assert_eq!(
        offers.last().map(|(_, sdp)| sdp),
        Some(&lost),
        "the unanswered offer, again"
    );
    clinic.run_for(Duration::from_secs(1));
    let answers = clinic.patient.descriptions_to(DOCTOR);
    assert_eq!(answers.len(), answers_before + 1);
    assert_eq!(answers.last().map(|(_, d)| d.kind), Some(SdpKind::Answer));

    // Answered: nothing is outstanding, so presence again sends nothing; a stray second answer
    // changes nothing and the call goes on.
    let sent = clinic.doctor.offers_to(PATIENT).len();
    clinic.patient_back_online();
    let stray = answers.last().map(|(_, d)| d.clone()).expect("an answer");
    clinic.tell(
        true,
        ServerMessage::Description {
            from: PATIENT,
            description: stray,
        },
    );
    clinic.run_for(Duration::from_secs(1));
    assert_eq!(clinic.doctor.offers_to(PATIENT).len(), sent);
    assert_eq!(
        clinic
            .doctor
            .count(|e| matches!(e, SessionEvent::Disconnected { .. })),
        0
    );
}

#[test]
fn the_audio_clock_moves_on_by_what_each_packet_holds() {
    let mut clinic = patient_receiving_encoded();
    clinic.connect();
    // 20 ms (one CELT frame), 40 ms (two, code 1), a DTX gap of 40 ms, then 20 ms again.
    let step = |clinic: &mut Clinic, packet: &[u8]| {
        let now = clinic.now;
        clinic.doctor.call.write_audio(now, packet).unwrap();
        clinic.drain();
        clinic.run_for(Duration::from_millis(40));
    };
    step(&mut clinic, &[0xfc; 60]);
    step(&mut clinic, &[0xfd; 60]);
    clinic.doctor.call.skip_audio(1920);
    step(&mut clinic, &[0xfc; 60]);
    let times: Vec<u64> = clinic
        .patient
        .frames
        .iter()
        .filter(|(_, f)| f.kind == TrackKind::Audio)
        .map(|(_, f)| f.rtp_time)
        .collect();
    let steps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(steps, [960, 1920 + 1920], "{times:?}");
}
