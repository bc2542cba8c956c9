//! A man in the middle that grinds its key so that both legs of the call show the same short
//! authentication string, against a SAS cut to 8 bits so that the odds can be counted.
//!
//! The middle (the signaling service, say, swapping SDP) runs one leg with the doctor (A) and
//! one with the patient (B). It finishes leg B first, so it knows the string B shows; then it
//! needs a key for leg A whose string is the same.
//!
//! * **Version 1** (each side sent its key at once, uncommitted): A's key arrives before the
//!   middle must choose its own, so it tries keys until the strings match — about 256 tries for
//!   8 bits. Modelled here with the same transcript and SAS functions the schedule uses.
//! * **Version 2** (this crate): the middle must commit to its key for leg A before A reveals
//!   anything. The real [`KeySchedule`]s run the doctor and the patient. Once A's key is
//!   revealed the middle can still grind a matching key, but revealing it instead of the
//!   committed one gets the agreement stopped ([`AbortReason::CommitmentMismatch`]). Its only
//!   chance is that the committed key happens to match: 1 in 256.
//!
//! Seeds are fixed, and nothing waits on a clock: the counts are the same on every run.

use std::time::Instant;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rand::rngs::StdRng;
use rand::SeedableRng;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::sas::{commitment, transcript_hash, Fingerprint, Sas};
use crate::schedule::{E2eeError, KeySchedule, Rejection, ScheduleConfig, ScheduleOutput};
use crate::wire::{AbortReason, KeyMessage};

/// The SAS cut to 8 bits. 10⁸ is a multiple of 256, so this is exactly uniform.
fn short(sas: Sas) -> u32 {
    sas.value() % 256
}

/// Keys the middle may try per call: with 8 bits, version 1 falls short once in about 10⁷.
const GRIND_BUDGET: usize = 4096;

fn fp(byte: u8) -> Fingerprint {
    Fingerprint::new("sha-256", vec![byte; 32])
}

/// The doctor's, the patient's, and the middle's certificates towards each.
struct Certificates {
    a: Fingerprint,
    b: Fingerprint,
    m_to_a: Fingerprint,
    m_to_b: Fingerprint,
}

fn certificates() -> Certificates {
    Certificates {
        a: fp(0xa1),
        b: fp(0xb2),
        m_to_a: fp(0xee),
        m_to_b: fp(0xef),
    }
}

/// The SAS a leg shows, from its two certificates and keys (either order gives the same).
fn sas_of(fp_x: &Fingerprint, fp_y: &Fingerprint, key_x: &[u8], key_y: &[u8]) -> Sas {
    Sas::from_transcript(&transcript_hash(fp_x, fp_y, key_x, key_y))
}

/// A key, ground until leg A's string matches `target`, or `None` within the budget.
fn grind(rng: &mut StdRng, certs: &Certificates, key_a: &[u8], target: u32) -> Option<PublicKey> {
    (0..GRIND_BUDGET).find_map(|_| {
        let candidate = PublicKey::from(&StaticSecret::random_from_rng(&mut *rng));
        let sas = sas_of(&certs.m_to_a, &certs.a, candidate.as_bytes(), key_a);
        (short(sas) == target).then_some(candidate)
    })
}

/// Every message `x` has queued (its events are skipped).
fn messages(x: &mut KeySchedule) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        match x.poll_output() {
            ScheduleOutput::Send(m) => out.push(m),
            ScheduleOutput::Event(_) => {}
            ScheduleOutput::Timeout(_) => return out,
        }
    }
}

/// Carry messages both ways until both are quiet.
fn exchange(x: &mut KeySchedule, y: &mut KeySchedule, now: Instant, rng: &mut StdRng) {
    loop {
        let (to_y, to_x) = (messages(x), messages(y));
        if to_y.is_empty() && to_x.is_empty() {
            return;
        }
        for m in to_y {
            y.handle_message(now, rng, &m).expect("an honest leg");
        }
        for m in to_x {
            x.handle_message(now, rng, &m).expect("an honest leg");
        }
    }
}

/// Version 1: the middle sees A's key first. Whether grinding made the strings equal.
fn version_1_call(seed: u64) -> bool {
    let mut rng = StdRng::seed_from_u64(seed);
    let certs = certificates();
    let key = |rng: &mut StdRng| PublicKey::from(&StaticSecret::random_from_rng(rng));
    let (key_b, key_m_to_b) = (key(&mut rng), key(&mut rng));
    let target = short(sas_of(
        &certs.m_to_b,
        &certs.b,
        key_m_to_b.as_bytes(),
        key_b.as_bytes(),
    ));
    let key_a = key(&mut rng);
    grind(&mut rng, &certs, key_a.as_bytes(), target).is_some()
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The doctor accepted the middle's key and both people see the same (8-bit) string.
    Fooled,
    /// The doctor accepted it, and the strings differ: the people notice.
    Differ,
    /// The middle revealed a ground key, and the doctor's schedule stopped the agreement.
    Caught,
}

/// Version 2, against the real schedules. `reveal_ground`: when the committed key does not
/// match, reveal a ground one instead (and be caught) rather than the committed one.
fn version_2_call(seed: u64, reveal_ground: bool) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let now = Instant::now();
    let certs = certificates();
    let config = ScheduleConfig::default();

    // Leg B, to completion: the middle plays the doctor honestly and learns B's string.
    let mut b = KeySchedule::new(config.clone(), "patient");
    let mut m_b = KeySchedule::new(config.clone(), "doctor");
    b.connect(
        now,
        &mut rng,
        "doctor",
        certs.b.clone(),
        certs.m_to_b.clone(),
    );
    m_b.connect(
        now,
        &mut rng,
        "patient",
        certs.m_to_b.clone(),
        certs.b.clone(),
    );
    exchange(&mut b, &mut m_b, now, &mut rng);
    let target = short(b.sas().expect("leg B agreed"));

    // Leg A: the doctor commits; the middle must commit before it sees the doctor's key.
    let mut a = KeySchedule::new(config, "doctor");
    a.connect(
        now,
        &mut rng,
        "patient",
        certs.a.clone(),
        certs.m_to_a.clone(),
    );
    let a_commit = messages(&mut a);
    assert!(
        a_commit.len() == 1 && a_commit[0].contains(r#""type":"commit""#),
        "the doctor sends only its commitment first: {a_commit:?}"
    );
    let committed = StaticSecret::random_from_rng(&mut rng);
    let committed = PublicKey::from(&committed);
    let commit = KeyMessage::Commit {
        participant: "patient".into(),
        commitment: BASE64.encode(commitment(
            "patient",
            &certs.m_to_a,
            &certs.a,
            committed.as_bytes(),
        )),
    };
    a.handle_message(now, &mut rng, &commit.encode())
        .expect("a well-formed commitment");
    let revealed = messages(&mut a);
    let [hello] = revealed.as_slice() else {
        panic!("the doctor reveals once the middle committed: {revealed:?}");
    };
    let Ok(KeyMessage::Hello { public_key, .. }) = KeyMessage::decode(hello) else {
        panic!("a hello: {hello}");
    };
    let key_a = BASE64.decode(public_key).expect("base64");

    let committed_sas = sas_of(&certs.m_to_a, &certs.a, committed.as_bytes(), &key_a);
    let matches = short(committed_sas) == target;
    let reveal = if !matches && reveal_ground {
        grind(&mut rng, &certs, &key_a, target).expect("a ground key within the budget")
    } else {
        committed
    };
    let hello = KeyMessage::Hello {
        participant: "patient".into(),
        public_key: BASE64.encode(reveal.as_bytes()),
    };
    match a.handle_message(now, &mut rng, &hello.encode()) {
        Ok(()) => {
            assert_eq!(reveal, committed, "only the committed key is accepted");
            let shown = a.sas().expect("leg A agreed");
            assert_eq!(shown, committed_sas);
            if short(shown) == target {
                Outcome::Fooled
            } else {
                Outcome::Differ
            }
        }
        Err(E2eeError::Rejected(Rejection::CommitmentMismatch)) => {
            assert_eq!(a.aborted(), Some(AbortReason::CommitmentMismatch));
            assert!(a.sas().is_none() && !a.can_send() && !a.can_receive());
            Outcome::Caught
        }
        Err(other) => panic!("unexpected refusal: {other}"),
    }
}

#[test]
fn a_grinding_middle_wins_almost_always_against_version_1_and_once_in_256_against_commitments() {
    const VERSION_1_CALLS: u64 = 256;
    let fooled_v1 = (0..VERSION_1_CALLS)
        .filter(|seed| version_1_call(*seed))
        .count();

    const VERSION_2_CALLS: u64 = 2560;
    // In the first calls the middle reveals a ground key whenever its committed one does not
    // match (each is caught); in the rest it reveals the committed key (the strings differ).
    const GROUND_REVEALS: u64 = 64;
    let outcomes: Vec<Outcome> = (0..VERSION_2_CALLS)
        .map(|seed| version_2_call(1_000_000 + seed, seed < GROUND_REVEALS))
        .collect();
    let count = |o: Outcome| outcomes.iter().filter(|x| **x == o).count();
    let (fooled_v2, differ, caught) = (
        count(Outcome::Fooled),
        count(Outcome::Differ),
        count(Outcome::Caught),
    );
    println!(
        "8-bit SAS, grinding middle (up to {GRIND_BUDGET} keys per call): version 1 fooled \
         {fooled_v1}/{VERSION_1_CALLS} calls; version 2 (committed) fooled {fooled_v2}/{VERSION_2_CALLS} \
         (expected {:.1}), strings differed in {differ}, ground reveals caught {caught}",
        VERSION_2_CALLS as f64 / 256.0
    );

    // Version 1: a miss needs 4096 misses in a row, (255/256)^4096 ≈ 1e-7 per call.
    assert!(
        fooled_v1 as u64 >= VERSION_1_CALLS - 2,
        "version 1 is ground almost always: {fooled_v1}/{VERSION_1_CALLS}"
    );
    // Version 2: Binomial(2560, 1/256) has mean 10 and standard deviation 3.2; 26 or more
    // happens with probability below 1e-4, none at all with about 5e-5.
    assert!(
        (1..=26).contains(&fooled_v2),
        "version 2 is fooled about once in 256 calls: {fooled_v2}/{VERSION_2_CALLS}"
    );
    let (grinding, honest) = outcomes.split_at(GROUND_REVEALS as usize);
    assert!(
        grinding.iter().all(|o| *o != Outcome::Differ) && caught > 0,
        "every ground reveal is caught: {grinding:?}"
    );
    assert!(
        honest.iter().all(|o| *o != Outcome::Caught),
        "the committed key is always accepted"
    );
}
