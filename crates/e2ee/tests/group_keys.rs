//! Group calls key every pair of participants on its own (a full mesh: one schedule per pair,
//! over that pair's key channel). These tests hold the properties the group needs, with an
//! attacker who keeps every key they were ever given:
//! - someone who left opens nothing the others send after they left;
//! - someone who joined opens nothing sent before they joined;
//! - a key message from someone who left is refused by everyone who remains;
//! - every pair has its own code.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use consult_e2ee::schedule::{E2eeError, KeySchedule, Rejection, ScheduleConfig, ScheduleOutput};
use consult_e2ee::{Fingerprint, MediaFormat};
use rand::rngs::OsRng;

/// A DTLS fingerprint of a connection between two participants (different for every pair).
fn fingerprint(owner: &str, other: &str) -> Fingerprint {
    let mut bytes = [0u8; 32];
    for (i, b) in format!("{owner}->{other}").bytes().enumerate() {
        bytes[i % 32] ^= b;
    }
    Fingerprint::new("sha-256", bytes.to_vec())
}

/// Every participant's schedule with each other participant, by (holder, other).
#[derive(Default)]
struct Mesh {
    schedules: HashMap<(&'static str, &'static str), KeySchedule>,
}

impl Mesh {
    /// Connect `a` and `b`: a schedule on each side, keys agreed over a perfect channel.
    fn connect(&mut self, now: Instant, a: &'static str, b: &'static str) {
        let mut sa = KeySchedule::new(ScheduleConfig::default(), a);
        let mut sb = KeySchedule::new(ScheduleConfig::default(), b);
        sa.connect(now, &mut OsRng, b, fingerprint(a, b), fingerprint(b, a));
        sb.connect(now, &mut OsRng, a, fingerprint(b, a), fingerprint(a, b));
        self.schedules.insert((a, b), sa);
        self.schedules.insert((b, a), sb);
        self.shuttle(now, a, b);
        assert!(self.get(a, b).sas().is_some(), "{a} and {b} agreed keys");
        assert_eq!(self.get(a, b).sas(), self.get(b, a).sas());
    }

    fn get(&mut self, holder: &'static str, other: &'static str) -> &mut KeySchedule {
        self.schedules
            .get_mut(&(holder, other))
            .expect("a schedule for this pair")
    }

    /// Carry key messages between the two ends of a pair until both are quiet.
    fn shuttle(&mut self, now: Instant, a: &'static str, b: &'static str) {
        loop {
            let mut moved = false;
            for (from, to) in [(a, b), (b, a)] {
                while let ScheduleOutput::Send(text) = self.get(from, to).poll_output() {
                    self.get(to, from)
                        .handle_message(now, &mut OsRng, &text)
                        .expect("a key message between the pair is accepted");
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// `from` protects a video frame for `to` (on their connection).
    fn send(&mut self, now: Instant, from: &'static str, to: &'static str, n: u8) -> Vec<u8> {
        let frame = [n; 200];
        let sealed = self
            .get(from, to)
            .protect(now, MediaFormat::Vp8, &frame)
            .expect("keys are agreed");
        let opened = self
            .get(to, from)
            .unprotect(now, MediaFormat::Vp8, &sealed)
            .expect("the receiver opens it");
        assert_eq!(opened, frame);
        sealed
    }
}

/// Whether any of `keys` (an attacker's schedules) opens `sealed`, and how they refused.
fn opened_by_any(keys: &mut [KeySchedule], now: Instant, sealed: &[u8]) -> (bool, Vec<Rejection>) {
    let mut refusals = Vec::new();
    for schedule in keys.iter_mut() {
        match schedule.unprotect(now, MediaFormat::Vp8, sealed) {
            Ok(_) => return (true, refusals),
            Err(E2eeError::Rejected(reason)) => refusals.push(reason),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    (false, refusals)
}

#[test]
fn who_left_opens_nothing_sent_after_and_who_joined_nothing_sent_before() {
    let mut now = Instant::now();
    let mut mesh = Mesh::default();
    let people = ["doctor", "patient", "interpreter", "family"];
    for (i, a) in people.iter().enumerate() {
        for b in &people[i + 1..] {
            mesh.connect(now, a, b);
        }
    }
    // Six pairs, six different codes.
    let mut codes: Vec<String> = Vec::new();
    for (i, a) in people.iter().enumerate() {
        for b in &people[i + 1..] {
            codes.push(mesh.get(a, b).sas().expect("agreed").to_string());
        }
    }
    codes.sort();
    codes.dedup();
    assert_eq!(codes.len(), 6, "a code per pair: {codes:?}");

    // Before anyone leaves, the family member opens what is sent to them, and nothing sent
    // between the others.
    // (A frame for the family, sealed and not yet opened: the control that the family's keys
    // below do open what was meant for them.)
    let to_family = mesh
        .get("doctor", "family")
        .protect(now, MediaFormat::Vp8, &[1; 200])
        .expect("keys are agreed");
    let doctor_to_patient_before = mesh.send(now, "doctor", "patient", 2);
    let mut family_keys: Vec<KeySchedule> = ["doctor", "patient", "interpreter"]
        .iter()
        .map(|other| {
            mesh.schedules
                .remove(&("family", *other))
                .expect("the family's schedule")
        })
        .collect();
    assert!(
        opened_by_any(&mut family_keys, now, &to_family).0,
        "the control"
    );
    assert!(!opened_by_any(&mut family_keys, now, &doctor_to_patient_before).0);

    // The family member leaves. The others forget their schedules with them; the family keeps
    // everything it had (an attacker would).
    let mut forgotten = Vec::new();
    for other in ["doctor", "patient", "interpreter"] {
        let mut gone = mesh
            .schedules
            .remove(&(other, "family"))
            .expect("a schedule with the family");
        gone.disconnect(now);
        forgotten.push(gone);
    }
    // What the others send each other afterwards, in the epoch they had and after a rotation.
    now += Duration::from_secs(1);
    let mut after = Vec::new();
    for (from, to) in [
        ("doctor", "patient"),
        ("patient", "doctor"),
        ("doctor", "interpreter"),
        ("interpreter", "patient"),
    ] {
        after.push(mesh.send(now, from, to, 3));
        mesh.get(from, to).rotate(now, &mut OsRng);
        mesh.shuttle(now, from, to);
        now += Duration::from_millis(100);
        mesh.get(from, to).handle_timeout(now, &mut OsRng);
        mesh.get(to, from).handle_timeout(now, &mut OsRng);
        mesh.shuttle(now, from, to);
        after.push(mesh.send(now, from, to, 4));
    }
    for sealed in &after {
        let (opened, refusals) = opened_by_any(&mut family_keys, now, sealed);
        assert!(!opened, "the one who left opened a later frame");
        assert!(
            refusals
                .iter()
                .all(|r| matches!(r, Rejection::UnknownKid | Rejection::Tampered)),
            "{refusals:?}"
        );
    }

    // A key message from the one who left, for a new epoch of their old pair: refused by
    // whoever remains, on any of their schedules (none is with the family any more).
    family_keys[0].rotate(now, &mut OsRng);
    now += Duration::from_millis(100);
    family_keys[0].handle_timeout(now, &mut OsRng);
    let mut late = Vec::new();
    while let ScheduleOutput::Send(text) = family_keys[0].poll_output() {
        late.push(text);
    }
    assert!(
        !late.is_empty(),
        "the family's schedule announces a new epoch"
    );
    for text in &late {
        // Even the remaining side of the family's own pair, whose connection ended (the pages
        // and the native client drop it), installs no key from it: at most it holds the
        // message for a connection that does not exist.
        for schedule in &mut forgotten {
            let _ = schedule.handle_message(now, &mut OsRng, text);
            assert!(!schedule.can_receive(), "a key installed from who left");
            while let output = schedule.poll_output()
                && !matches!(output, ScheduleOutput::Timeout(_))
            {
                assert!(
                    !matches!(
                        output,
                        ScheduleOutput::Event(
                            consult_e2ee::schedule::E2eeEvent::ReceiveKeyInstalled { .. }
                        )
                    ),
                    "a key installed from who left"
                );
            }
        }
        for holder in ["doctor", "patient", "interpreter"] {
            for other in ["doctor", "patient", "interpreter"] {
                if holder == other {
                    continue;
                }
                let refused = mesh
                    .get(holder, other)
                    .handle_message(now, &mut OsRng, text)
                    .expect_err("a key message from someone who left");
                assert!(
                    matches!(
                        refused,
                        E2eeError::Rejected(Rejection::KeyFromStranger | Rejection::KeyMalformed)
                    ),
                    "{holder} with {other}: {refused:?}"
                );
            }
        }
    }

    // Someone joins: a new carer, keyed with everyone from now on.
    for other in ["doctor", "patient", "interpreter"] {
        mesh.connect(now, other, "carer");
    }
    let mut carer_keys: Vec<KeySchedule> = ["doctor", "patient", "interpreter"]
        .iter()
        .map(|other| mesh.schedules.remove(&("carer", *other)).expect("carer"))
        .collect();
    // Nothing sent before they joined opens with what they were given.
    for sealed in after.iter().chain([&doctor_to_patient_before]) {
        assert!(
            !opened_by_any(&mut carer_keys, now, sealed).0,
            "the one who joined opened an earlier frame"
        );
    }
}
