//! End-to-end encryption between sans-IO peers on a simulated link: real H.264 frames protected
//! with SFrame, keys agreed over the peer-to-peer channel, and a middle that terminates DTLS on
//! both sides: with its own certificates (as a service rewriting fingerprints would) it is caught
//! by the key commitments and nothing flows; holding the ends' own certificates it relays the
//! call and sees only ciphertext, and what it changes is refused.

use std::time::Duration;

use consult_codec::{pattern::TestPattern, video_decoder, video_encoder, VideoDecoder};
use consult_e2ee::wire::AbortReason;
use consult_e2ee::{E2eeEvent, Rejection, Sas, ScheduleConfig};
use consult_peer::file_transfer::FileEvent;
use consult_peer::simulated::{Link, Side, SimulatedCall};
use consult_peer::{DtlsCert, E2eeSetup, PeerConfig, PeerEvent, TrackKind, VideoCodec};

fn config(local: &str, remote: &str, codec: VideoCodec, schedule: ScheduleConfig) -> PeerConfig {
    PeerConfig {
        video_codecs: vec![codec],
        e2ee: Some(E2eeSetup {
            local_id: local.into(),
            remote_id: remote.into(),
            schedule,
        }),
        ..PeerConfig::default()
    }
}

fn plain(codec: VideoCodec) -> PeerConfig {
    PeerConfig {
        video_codecs: vec![codec],
        ..PeerConfig::default()
    }
}

fn sas(side: &Side) -> Option<Sas> {
    side.events.iter().rev().find_map(|(_, e)| match e {
        PeerEvent::E2ee(E2eeEvent::SasReady(sas)) => Some(*sas),
        _ => None,
    })
}

/// Decodes the video frames a side received since the last call; counts pictures and errors.
struct Receiver {
    decoder: Box<dyn VideoDecoder>,
    seen: usize,
    decoded: u64,
    errors: u64,
    frames: u64,
}

impl Receiver {
    fn new(codec: VideoCodec) -> Self {
        Self {
            decoder: video_decoder(codec).unwrap(),
            seen: 0,
            decoded: 0,
            errors: 0,
            frames: 0,
        }
    }

    /// New video frames of `side` (also returned, for relaying).
    fn take(&mut self, side: &Side) -> Vec<consult_peer::EncodedFrame> {
        let frames: Vec<_> = side.events[self.seen..]
            .iter()
            .filter_map(|(_, e)| match e {
                PeerEvent::Frame(f) if matches!(f.kind, TrackKind::Video(_)) => Some(f.clone()),
                _ => None,
            })
            .collect();
        self.seen = side.events.len();
        for frame in &frames {
            self.frames += 1;
            match self.decoder.decode(&frame.data) {
                Ok(Some(picture)) => {
                    assert_eq!((picture.width, picture.height), (320, 240));
                    self.decoded += 1;
                }
                Ok(None) => {}
                Err(_) => self.errors += 1,
            }
        }
        frames
    }
}

#[test]
fn an_e2ee_call_protects_video_chat_and_files_and_both_sides_show_the_same_sas() {
    let codec = VideoCodec::H264;
    let a = config("doctor", "patient", codec, ScheduleConfig::default());
    let b = config("patient", "doctor", codec, ScheduleConfig::default());
    let link = Link {
        loss: 0.0,
        delay: Duration::from_millis(20),
    };
    let mut call = SimulatedCall::new(a, b, link, 3);
    call.negotiate().unwrap();
    assert!(call
        .run_until(Duration::from_secs(10), |c| c.a.peer.e2ee_ready()
            && c.b.peer.e2ee_ready())
        .unwrap());
    let (sas_a, sas_b) = (sas(&call.a), sas(&call.b));
    assert!(sas_a.is_some());
    assert_eq!(sas_a, sas_b, "both people see the same string");
    assert_eq!(call.a.peer.e2ee_sas(), sas_a);

    let mut camera = VideoSource::new(codec, u64::MAX);
    let mut receiver = Receiver::new(codec);
    let start = call.elapsed();
    call.a.peer.send_chat("Bonjour, docteur").unwrap();
    let file = vec![0x5a; 100_000];
    call.b
        .peer
        .offer_file("scan.pdf", "application/pdf", file.clone())
        .unwrap();
    while call.elapsed() < start + Duration::from_secs(3) {
        camera.tick(&mut call);
        call.step().unwrap();
        for (_, event) in &call.a.events {
            if let PeerEvent::File(FileEvent::Offered { offer }) = event {
                let id = offer.id;
                let _ = call.a.peer.accept_file(id);
            }
        }
        receiver.take(&call.b);
    }
    let sent = camera.sent;
    assert!(
        receiver.decoded >= sent * 8 / 10,
        "{} of {sent} decoded",
        receiver.decoded
    );
    assert_eq!(receiver.errors, 0);
    assert!(call
        .b
        .events
        .iter()
        .any(|(_, e)| matches!(e, PeerEvent::Chat(t) if t == "Bonjour, docteur")));
    assert!(call.a.events.iter().any(
        |(_, e)| matches!(e, PeerEvent::File(FileEvent::Received { data, .. }) if *data == file)
    ));
    let a = call.a.peer.e2ee_stats().unwrap();
    let b = call.b.peer.e2ee_stats().unwrap();
    assert!(a.protected >= sent, "every frame and message protected");
    assert!(b.opened >= receiver.frames);
    assert!(
        b.rejected.is_empty() && a.rejected.is_empty(),
        "{a:?} {b:?}"
    );
}

/// The doctor's camera: a moving pattern encoded at 30 fps, sent by side `a` of a call.
struct VideoSource {
    codec: VideoCodec,
    pattern: TestPattern,
    encoder: Box<dyn consult_codec::VideoEncoder>,
    next: Option<std::time::Instant>,
    sent: u64,
    /// A keyframe every this many frames (the first frame always is one).
    keyframe_every: u64,
}

impl VideoSource {
    fn new(codec: VideoCodec, keyframe_every: u64) -> Self {
        Self {
            codec,
            pattern: TestPattern::new(320, 240),
            encoder: video_encoder(codec, 320, 240, 400_000, 30.0).unwrap(),
            next: None,
            sent: 0,
            keyframe_every,
        }
    }

    /// Send a frame from `call.a` if one is due; the encoded bytes.
    fn tick(&mut self, call: &mut SimulatedCall) -> Option<Vec<u8>> {
        let next = *self.next.get_or_insert(call.now());
        if call.now() < next {
            return None;
        }
        self.next = Some(next + Duration::from_millis(33));
        let keyframe = self.sent.is_multiple_of(self.keyframe_every);
        let encoded = self
            .encoder
            .encode(&self.pattern.next_frame(), keyframe)
            .unwrap();
        let rtp_time = self.sent * 3000;
        self.sent += 1;
        let encoded = encoded?;
        let now = call.now();
        call.a
            .peer
            .write_video(now, rtp_time, self.codec, &encoded.data)
            .unwrap();
        Some(encoded.data)
    }
}

/// The doctor and the patient each connected to a middle of the service's making — its own
/// peers, with no end-to-end keys — which relays key messages unchanged between them. `left.a`
/// is the doctor, `right.a` the patient, `left.b` and `right.b` the middle.
struct MiddleCall {
    left: SimulatedCall,
    right: SimulatedCall,
    seen_left: usize,
    seen_right: usize,
}

fn certificate() -> DtlsCert {
    consult_peer::str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .expect("a DTLS certificate")
}

impl MiddleCall {
    /// Connected through a middle with certificates of its own: each end sees the middle's
    /// fingerprint where the other end's should be.
    fn with_own_certificates(codec: VideoCodec, seed: u64) -> Self {
        let doctor = config("doctor", "patient", codec, ScheduleConfig::default());
        let patient = config("patient", "doctor", codec, ScheduleConfig::default());
        Self::connected(doctor, plain(codec), patient, plain(codec), seed)
    }

    /// Connected through a middle that presents each end the other end's own certificate (it
    /// stole them, or it sits behind DTLS), with keys agreed through it.
    fn agreed(codec: VideoCodec, seed: u64) -> Self {
        let (doctor_certificate, patient_certificate) = (certificate(), certificate());
        let with = |config: PeerConfig, certificate: &DtlsCert| PeerConfig {
            dtls_certificate: Some(certificate.clone()),
            ..config
        };
        let doctor = config("doctor", "patient", codec, ScheduleConfig::default());
        let patient = config("patient", "doctor", codec, ScheduleConfig::default());
        let call = Self::connected(
            with(doctor, &doctor_certificate),
            with(plain(codec), &patient_certificate),
            with(patient, &patient_certificate),
            with(plain(codec), &doctor_certificate),
            seed,
        );
        call.until_agreed()
    }

    fn connected(
        doctor: PeerConfig,
        middle_to_doctor: PeerConfig,
        patient: PeerConfig,
        middle_to_patient: PeerConfig,
        seed: u64,
    ) -> Self {
        let mut call = Self {
            left: SimulatedCall::new(doctor, middle_to_doctor, Link::perfect(), seed),
            right: SimulatedCall::new(patient, middle_to_patient, Link::perfect(), seed + 1),
            seen_left: 0,
            seen_right: 0,
        };
        call.left.negotiate().unwrap();
        call.right.negotiate().unwrap();
        call
    }

    fn until_agreed(mut self) -> Self {
        let call = &mut self;
        while !(call.left.a.peer.e2ee_ready() && call.right.a.peer.e2ee_ready()) {
            assert!(
                call.left.elapsed() < Duration::from_secs(10),
                "keys were not agreed through the middle"
            );
            call.step();
        }
        self
    }

    /// Step whichever call is behind (so the two virtual clocks stay together) and relay.
    fn step(&mut self) {
        if self.left.elapsed() <= self.right.elapsed() {
            self.left.step().unwrap();
        } else {
            self.right.step().unwrap();
        }
        relay_messages(&mut self.left.b, &mut self.seen_left, &mut self.right.b);
        relay_messages(&mut self.right.b, &mut self.seen_right, &mut self.left.b);
    }

    /// The middle sends a frame on to the patient.
    fn forward(&mut self, rtp_time: u64, codec: VideoCodec, data: &[u8]) {
        let now = self.right.now();
        self.right
            .b
            .peer
            .write_video(now, rtp_time, codec, data)
            .unwrap();
    }
}

/// Relay channel messages from one middle peer to the other, as a malicious service would.
fn relay_messages(from: &mut Side, seen: &mut usize, to: &mut Side) {
    let messages: Vec<_> = from.events[*seen..]
        .iter()
        .filter_map(|(_, e)| match e {
            PeerEvent::ChannelMessage {
                label,
                binary,
                data,
            } => Some((label.clone(), *binary, data.clone())),
            _ => None,
        })
        .collect();
    *seen = from.events.len();
    for (label, binary, data) in messages {
        to.peer.write_channel(&label, binary, &data).unwrap();
    }
}

/// Why a side's key agreement stopped, if it did.
fn aborted(side: &Side) -> Option<(AbortReason, bool)> {
    side.events.iter().find_map(|(_, e)| match e {
        PeerEvent::E2ee(E2eeEvent::Aborted { reason, by_remote }) => Some((*reason, *by_remote)),
        _ => None,
    })
}

#[test]
fn a_middle_with_its_own_certificates_is_caught_by_the_commitments_and_nothing_flows() {
    let codec = VideoCodec::H264;
    let mut call = MiddleCall::with_own_certificates(codec, 1);
    let mut camera = VideoSource::new(codec, u64::MAX);
    let (mut middle, mut patient) = (Receiver::new(codec), Receiver::new(codec));
    let start = call.left.elapsed();
    while call.left.elapsed() < start + Duration::from_secs(3) {
        camera.tick(&mut call.left);
        call.step();
        for frame in middle.take(&call.left.b) {
            call.forward(frame.rtp_time, codec, &frame.data);
        }
        patient.take(&call.right.a);
    }
    for (who, side) in [("doctor", &call.left.a), ("patient", &call.right.a)] {
        let (reason, _) = aborted(side).unwrap_or_else(|| panic!("the {who} did not stop"));
        assert_eq!(reason, AbortReason::CommitmentMismatch, "{who}");
        assert_eq!(sas(side), None, "the {who} was shown no code");
        assert!(!side.peer.e2ee_ready());
    }
    let doctor = call.left.a.peer.e2ee_stats().unwrap();
    assert_eq!(doctor.protected, 0, "no key, nothing protected");
    assert!(
        doctor.dropped_without_key > 0,
        "frames dropped, never sent in the clear"
    );
    assert_eq!(
        (middle.frames, patient.decoded),
        (0, 0),
        "nothing reached the middle or the patient"
    );
}

#[test]
fn a_middle_holding_both_certificates_relays_the_call_and_decodes_nothing() {
    // Behind DTLS (the ends' own certificates), the middle relays key messages unchanged: the
    // keys are agreed end to end and both see the same code, but it holds no key. It also
    // decodes every frame it relays, with real decoders.
    let codec = VideoCodec::H264;
    let mut call = MiddleCall::agreed(codec, 1);
    let (doctor_sas, patient_sas) = (sas(&call.left.a).unwrap(), sas(&call.right.a).unwrap());
    assert_eq!(doctor_sas, patient_sas, "an honest agreement, relayed");
    assert_eq!(
        (aborted(&call.left.a), aborted(&call.right.a)),
        (None, None)
    );
    let mut camera = VideoSource::new(codec, u64::MAX);
    let (mut middle, mut patient) = (Receiver::new(codec), Receiver::new(codec));
    let secret = "Diagnosis: confidential";
    call.left.a.peer.send_chat(secret).unwrap();
    let start = call.left.elapsed();
    while call.left.elapsed() < start + Duration::from_secs(3) {
        camera.tick(&mut call.left);
        call.step();
        for frame in middle.take(&call.left.b) {
            call.forward(frame.rtp_time, codec, &frame.data);
        }
        patient.take(&call.right.a);
    }
    let sent = camera.sent;
    println!(
        "middle: {} frames received, {} decoded, {} errors; patient: {} decoded of {sent} sent",
        middle.frames, middle.decoded, middle.errors, patient.decoded
    );
    assert!(middle.frames >= sent * 8 / 10, "the middle saw the media");
    assert_eq!(middle.decoded, 0, "the middle decoded a frame");
    // The chat reached the middle as a binary SFrame message it cannot read.
    let middle_chat: Vec<_> = call
        .left
        .b
        .events
        .iter()
        .filter(|(_, e)| matches!(e, PeerEvent::Chat(_) | PeerEvent::ChatRejected(_)))
        .map(|(_, e)| format!("{e:?}"))
        .collect();
    assert_eq!(middle_chat.len(), 1, "{middle_chat:?}");
    assert!(middle_chat[0].contains("NotText") && !middle_chat[0].contains(secret));
    assert!(
        patient.decoded >= sent * 7 / 10,
        "the call itself worked through the middle: {} of {sent}",
        patient.decoded
    );
}

#[test]
fn frames_tampered_replayed_truncated_or_forged_in_the_middle_are_refused_and_the_call_goes_on() {
    // The same middle as above, now changing what it relays. Periodic keyframes let the
    // picture recover after a refused frame.
    let codec = VideoCodec::H264;
    let mut call = MiddleCall::agreed(codec, 5);
    let forger = consult_e2ee::sframe::SenderKey::new(
        consult_e2ee::Suite::Aes128Gcm,
        0x0bad_0001,
        &consult_e2ee::sframe::BaseKey::new(vec![9; 16]),
    )
    .unwrap();
    let mut camera = VideoSource::new(codec, 15);
    let (mut middle, mut patient) = (Receiver::new(codec), Receiver::new(codec));
    let mut relayed = 0u64;
    let mut previous: Option<Vec<u8>> = None;
    let mut sent_frames = std::collections::HashSet::new();
    let mut delivered = 0u64;
    let start = call.left.elapsed();
    while call.left.elapsed() < start + Duration::from_secs(4) {
        if let Some(data) = camera.tick(&mut call.left) {
            sent_frames.insert(data);
        }
        call.step();
        for frame in middle.take(&call.left.b) {
            relayed += 1;
            let mut data = frame.data.clone();
            // One frame in ten is interfered with, in turn tampered, truncated, forged, replayed.
            let interference = relayed.is_multiple_of(10).then_some(relayed / 10 % 4);
            match interference {
                Some(0) => {
                    let at = data.len() - 20;
                    data[at] ^= 0x01; // tampered
                }
                Some(1) => data.truncate(12), // truncated (start code, NAL header, a few bytes)
                Some(2) => {
                    // forged under a key nobody announced
                    let fake = [0, 0, 0, 1, 0x65, 1, 2, 3, 4, 5, 6, 7, 8, 9];
                    data = consult_e2ee::format::protect(
                        consult_e2ee::MediaFormat::H264,
                        &forger,
                        relayed,
                        &fake,
                    )
                    .unwrap();
                }
                Some(_) => {
                    // replayed: the previous frame again, after this one
                    if let Some(old) = previous.clone() {
                        call.forward(frame.rtp_time, codec, &data);
                        data = old;
                    }
                }
                _ => {}
            }
            previous = Some(frame.data.clone());
            call.forward(frame.rtp_time + 1, codec, &data);
        }
        for frame in patient.take(&call.right.a) {
            delivered += 1;
            assert!(
                sent_frames.contains(&frame.data),
                "a frame the doctor never sent reached the patient's decoder"
            );
        }
    }
    let stats = call.right.a.peer.e2ee_stats().unwrap();
    let sent = camera.sent;
    println!(
        "patient refused {:?}; decoded {} of {sent}",
        stats.rejected, patient.decoded
    );
    for reason in [
        Rejection::Tampered,
        Rejection::Truncated,
        Rejection::UnknownKid,
        Rejection::Replayed,
    ] {
        assert!(
            stats.rejected(reason) > 0,
            "{reason:?} not counted: {stats:?}"
        );
    }
    assert_eq!(delivered, stats.opened, "only opened frames are delivered");
    assert!(
        patient.decoded >= sent / 2,
        "the call went on: {} of {sent} decoded",
        patient.decoded
    );
    assert_eq!(middle.decoded, 0);
}

#[test]
fn keys_rotating_on_a_timer_and_on_request_leave_no_video_gap() {
    let codec = VideoCodec::Vp8;
    let schedule = ScheduleConfig {
        rotate_every: Duration::from_secs(2),
        ..ScheduleConfig::default()
    };
    let a = config("doctor", "patient", codec, schedule.clone());
    let b = config("patient", "doctor", codec, schedule);
    let link = Link {
        loss: 0.0,
        delay: Duration::from_millis(40),
    };
    let mut call = SimulatedCall::new(a, b, link, 11);
    call.negotiate().unwrap();
    assert!(call
        .run_until(Duration::from_secs(10), |c| c.a.peer.e2ee_ready()
            && c.b.peer.e2ee_ready())
        .unwrap());
    let mut camera = VideoSource::new(codec, u64::MAX);
    let mut receiver = Receiver::new(codec);
    let start = call.elapsed();
    let mut last_decoded_at = start;
    let mut longest_gap = Duration::ZERO;
    let mut rotated_on_request = false;
    while call.elapsed() < start + Duration::from_secs(7) {
        camera.tick(&mut call);
        if !rotated_on_request && call.elapsed() > start + Duration::from_secs(3) {
            call.a.peer.e2ee_rotate();
            rotated_on_request = true;
        }
        call.step().unwrap();
        let before = receiver.decoded;
        receiver.take(&call.b);
        if receiver.decoded > before {
            longest_gap = longest_gap.max(call.elapsed() - last_decoded_at);
            last_decoded_at = call.elapsed();
        }
    }
    let stats = call.a.peer.e2ee_stats().unwrap();
    let sent = camera.sent;
    println!(
        "rotation: {} epochs, longest gap between decoded frames {longest_gap:?}, {} of {sent} decoded",
        stats.send_epoch, receiver.decoded
    );
    assert!(
        stats.send_epoch >= 4,
        "timer and request rotations: {stats:?}"
    );
    assert!(
        longest_gap < Duration::from_secs(1),
        "video gap {longest_gap:?}"
    );
    assert_eq!(receiver.errors, 0);
    let b = call.b.peer.e2ee_stats().unwrap();
    assert!(b.rejected.is_empty(), "{b:?}");
}
