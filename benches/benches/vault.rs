//! Vault write throughput, side by side with the AES-256-GCM it is built on.
//!
//! `cargo bench -p consult-benches --bench vault`
//!
//! * `vault/chunks/N`: `ChunkWriter::append` of N-byte chunks into memory — length prefix,
//!   AES-256-GCM with the chunk index and final flag in the associated data, one write per chunk.
//!   The recorder seals one chunk per second of media (a 1:1 call is ~0.1–0.3 MB per second).
//! * `vault/chunks_in_place/N`: the same with `ChunkWriter::append_in_place`, as the recorder
//!   seals: the chunk is built in a buffer of the producer's (untimed: the recorder encodes its
//!   records there anyway), sealed where it lies and written into memory.
//! * `vault/file/N`: the same through `Vault` into a real file with an fsync per chunk, as the
//!   recorder writes.
//! * `vault/aes_256_gcm/N`: ring's AES-256-GCM seal of the same number of bytes in place: the
//!   ceiling the vault can approach on this machine (STACK-NOTES: 1.8 GB/s).

use consult_vault::{ChunkWriter, DataKey, Vault};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use uuid::Uuid;

const SIZES: [usize; 2] = [64 * 1024, 1024 * 1024];

fn vault(c: &mut Criterion) {
    let mut group = c.benchmark_group("vault");
    let key = DataKey::from_bytes([9; 32]);
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let chunk = vec![0x5au8; size];
        group.bench_with_input(BenchmarkId::new("chunks", size), &chunk, |b, chunk| {
            let mut out = Vec::with_capacity(size * 2);
            let mut writer = ChunkWriter::new(std::io::Cursor::new(&mut out), Uuid::new_v4(), &key)
                .expect("writer");
            b.iter(|| {
                writer.get_mut().set_position(32);
                writer.append(chunk).expect("append");
            });
        });
        group.bench_with_input(
            BenchmarkId::new("chunks_in_place", size),
            &chunk,
            |b, chunk| {
                let mut out = Vec::with_capacity(size * 2);
                let mut writer =
                    ChunkWriter::new(std::io::Cursor::new(&mut out), Uuid::new_v4(), &key)
                        .expect("writer");
                b.iter_batched_ref(
                    || {
                        let mut buffer = Vec::with_capacity(size + 16);
                        buffer.extend_from_slice(chunk);
                        buffer
                    },
                    |buffer| {
                        writer.get_mut().set_position(32);
                        writer.append_in_place(buffer).expect("append");
                    },
                    BatchSize::LargeInput,
                );
            },
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let vault = Vault::open(dir.path()).expect("vault");
        group.bench_with_input(BenchmarkId::new("file", size), &chunk, |b, chunk| {
            // A fresh recording per sample, shredded after it: the disk holds one sample at most.
            b.iter_custom(|iters| {
                let id = Uuid::new_v4();
                let mut writer = vault.create_recording(id).expect("recording");
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    writer.append(chunk).expect("append");
                }
                let elapsed = start.elapsed();
                vault.shred(id).expect("shred");
                elapsed
            });
        });
    }
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[9; 32]).expect("key"));
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("aes_256_gcm", size), &size, |b, &size| {
            let mut buf = vec![0x5au8; size];
            let mut counter = 0u64;
            b.iter(|| {
                counter += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&counter.to_be_bytes());
                key.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&[0u8; 41][..]),
                    &mut buf,
                )
                .expect("seal")
            });
        });
    }
    group.finish();
}

criterion_group!(benches, vault);
criterion_main!(benches);
