//! SFrame protect + unprotect throughput, side by side with the AES-GCM it is built on, in one
//! group.
//!
//! `cargo bench -p consult-benches --bench e2ee`
//!
//! * `sframe/opus/N`: a whole frame encrypted (the audio and data format):
//!   `KeySchedule::protect_into` a buffer kept between frames, then `unprotect_in_place` — header,
//!   HKDF-derived key, AES-128-GCM, the replay window; the sender's frame is left as it was.
//! * `sframe/h264/N`: an H.264 access unit (SPS, PPS, two slices) with its clear parts,
//!   emulation prevention and metadata.
//! * `sframe/aes_128_gcm/N`: ring's AES-128-GCM seal + open of the same number of bytes, the
//!   frame copied once into the buffer sealed (as SFrame must: the sender keeps its frame): the
//!   ceiling SFrame can approach on this machine (STACK-NOTES: OpenSSL 1.9 GB/s per operation).

use std::time::Instant;

use consult_e2ee::Fingerprint;
use consult_e2ee::{KeySchedule, MediaFormat, ScheduleConfig, ScheduleOutput};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::rngs::OsRng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};

/// Two schedules with keys agreed.
fn agreed_pair() -> (KeySchedule, KeySchedule) {
    let now = Instant::now();
    let mut a = KeySchedule::new(ScheduleConfig::default(), "a");
    let mut b = KeySchedule::new(ScheduleConfig::default(), "b");
    let (fa, fb) = (
        Fingerprint::new("sha-256", vec![1; 32]),
        Fingerprint::new("sha-256", vec![2; 32]),
    );
    a.connect(now, &mut OsRng, "b", fa.clone(), fb.clone());
    b.connect(now, &mut OsRng, "a", fb, fa);
    for _ in 0..4 {
        while let ScheduleOutput::Send(m) = a.poll_output() {
            b.handle_message(now, &mut OsRng, &m).expect("key message");
        }
        while let ScheduleOutput::Send(m) = b.poll_output() {
            a.handle_message(now, &mut OsRng, &m).expect("key message");
        }
    }
    assert!(a.can_send() && b.can_receive());
    (a, b)
}

fn h264_frame(size: usize) -> Vec<u8> {
    let mut frame = vec![0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40];
    frame.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
    let slice = (size - frame.len()) / 2 - 4;
    for header in [0x65u8, 0x41] {
        frame.extend_from_slice(&[0, 0, 1, header]);
        frame.extend((1..slice as u32).map(|i| (i * 13 % 250 + 4) as u8));
    }
    frame
}

fn sframe(c: &mut Criterion) {
    let mut group = c.benchmark_group("sframe");
    for size in [1024usize, 10 * 1024] {
        group.throughput(Throughput::Bytes(size as u64));
        for (name, format, frame) in [
            ("opus", MediaFormat::Opus, vec![0x5au8; size]),
            ("h264", MediaFormat::H264, h264_frame(size)),
        ] {
            let (mut a, mut b) = agreed_pair();
            let now = Instant::now();
            let mut wire = Vec::new();
            group.bench_with_input(BenchmarkId::new(name, size), &frame, |bench, frame| {
                bench.iter(|| {
                    a.protect_into(now, format, frame, &mut wire)
                        .expect("protect");
                    b.unprotect_in_place(now, format, &mut wire)
                        .expect("unprotect")
                        .len()
                })
            });
        }
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7; 16]).expect("key"));
        let data = vec![0x5au8; size];
        let mut buffer = Vec::with_capacity(size + 16);
        group.bench_with_input(
            BenchmarkId::new("aes_128_gcm", size),
            &data,
            |bench, data| {
                let mut ctr = 0u64;
                bench.iter(|| {
                    ctr += 1;
                    let mut nonce = [0u8; 12];
                    nonce[4..].copy_from_slice(&ctr.to_be_bytes());
                    buffer.clear();
                    buffer.extend_from_slice(data);
                    key.seal_in_place_append_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&[0u8; 8]),
                        &mut buffer,
                    )
                    .expect("seal");
                    key.open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&[0u8; 8]),
                        &mut buffer,
                    )
                    .expect("open")
                    .len()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, sframe);
criterion_main!(benches);
