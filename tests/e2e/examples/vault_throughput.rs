//! Vault write throughput to S3 object storage against the local directory, in one run:
//!
//! ```text
//! vault_throughput [--nodes 3] [--mib 64]
//! ```
//!
//! Garage (`scripts/garage.sh`, `--nodes` nodes in as many zones, replication factor
//! min(nodes, 3)) on loopback; for each chunk size (1 MiB, and 64 KiB — about one second of a
//! call's media), `--mib` MiB sealed and made durable chunk by chunk (the vault fsyncs each chunk
//! on a local directory and uploads it as one object on S3), then read back whole. Prints MiB/s.

use std::time::Instant;

use consult_e2e::garage::Garage;
use consult_vault::object::ObjectStorage;
use consult_vault::Vault;
use uuid::Uuid;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Write `total` bytes in `chunk`-byte chunks, then read them back: MiB/s each way.
fn measure(vault: &Vault, chunk: usize, total: usize) -> (f64, f64) {
    let id = Uuid::new_v4();
    let data = vec![0x5a; chunk];
    let started = Instant::now();
    let mut writer = vault.create_recording(id).expect("a recording");
    for _ in 0..total / chunk - 1 {
        writer.append(&data).expect("append");
    }
    writer.finish(&data).expect("finish");
    let write = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut reader = vault.open_recording(id).expect("open");
    let mut read = 0;
    while let Some(chunk) = reader.next_chunk().expect("chunk") {
        read += chunk.len();
    }
    assert_eq!(read, total);
    let read_s = started.elapsed().as_secs_f64();
    vault.shred(id).expect("shred");
    let mib = total as f64 / (1024.0 * 1024.0);
    (mib / write, mib / read_s)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let nodes = arg(&args, "--nodes", 3);
    let total = arg(&args, "--mib", 64) * 1024 * 1024;
    let garage = Garage::start(nodes);
    let local_dir = tempfile::tempdir().expect("temp dir");
    let local = Vault::open(local_dir.path()).expect("local vault");
    let keys = tempfile::tempdir().expect("temp dir");
    let media = ObjectStorage::new(&garage.config()).expect("object storage");
    media.check().expect("the bucket answers");
    let s3 = Vault::with_media_store(keys.path(), Box::new(media)).expect("S3 vault");
    println!("| chunk | local write | S3 write ({nodes} Garage nodes) | local read | S3 read |");
    println!("|---|---|---|---|---|");
    for chunk in [1024 * 1024, 64 * 1024] {
        let (lw, lr) = measure(&local, chunk, total);
        let (sw, sr) = measure(&s3, chunk, total);
        println!(
            "| {} KiB | {lw:.0} MiB/s | {sw:.0} MiB/s | {lr:.0} MiB/s | {sr:.0} MiB/s |",
            chunk / 1024
        );
    }
}
