//! Peak memory of a recording export against the recording's length: the streamed export the
//! service uses (`recording::export`: an index pass, a planning pass and a writing pass, each
//! holding one chunk and a few seconds of frames) beside the whole-recording reference
//! (`RecordingContents::read` then `matroska::export`, how exports were made before), each in
//! its own process so each peak is its own. Bounded: it writes two synthetic recordings of the
//! given length into a temporary vault, exports each way, prints a table, and removes it all.
//!
//! ```text
//! cargo run --release -p consult-signaling --example export_memory -- --minutes 1
//! cargo run --release -p consult-signaling --example export_memory -- --minutes 60
//! ```
//!
//! A recording here is what a 1:1 call sends: two VP8 video tracks at 30 frames a second
//! (2.5 KiB a frame, a 12 KiB keyframe every 3 s: about 650 kbit/s each) and two Opus tracks at
//! 50 packets a second, the audio stamped up to 60 ms behind the video in record order (as a
//! jitter buffer delivers it), sealed in 1 MiB chunks. The zero-knowledge one holds the same
//! frames SFrame-protected under per-sender keys wrapped to a clinician's recording key.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use consult_e2ee::format::protect;
use consult_e2ee::recording_key::{EpochKeyBinding, RecordingKeyPair};
use consult_e2ee::sframe::{BaseKey, SenderKey, Suite};
use consult_e2ee::MediaFormat;
use consult_signaling::recording::export;
use consult_signaling::recording::rows::{RecordingRow, RecordingStatus};
use consult_vault::matroska;
use consult_vault::recording::{
    Codec, EpochKey, Frame, Record, RecordBatch, RecordingContents, Track, TrackRole,
};
use consult_vault::Vault;
use rand::SeedableRng;
use uuid::Uuid;

/// Chunk size the recorder seals at.
const CHUNK_BYTES: usize = 1024 * 1024;
/// The clinician's key is drawn from this seed in every process.
const KEY_SEED: u64 = 0x0c0_5017;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        return child(&args[1..]);
    }
    let minutes: u64 = match args.as_slice() {
        [] => 1,
        [flag, n] if flag == "--minutes" => n.parse().context("--minutes takes a number")?,
        _ => bail!("usage: export_memory [--minutes N]"),
    };
    if !(1..=180).contains(&minutes) {
        bail!("--minutes must be between 1 and 180");
    }
    let dir = tempfile::tempdir()?;
    let vault = Vault::open(dir.path())?;
    let clinician = clinician_key();
    let plain = Uuid::new_v4();
    let sealed = Uuid::new_v4();
    let started = Instant::now();
    let plain_bytes = write_recording(&vault, plain, minutes, None)?;
    let sealed_bytes = write_recording(&vault, sealed, minutes, Some(&clinician))?;
    drop(vault);
    println!(
        "{minutes} min recordings written in {:.1} s: {:.0} MiB plain, {:.0} MiB zero-knowledge",
        started.elapsed().as_secs_f64(),
        mib(plain_bytes),
        mib(sealed_bytes)
    );
    println!(
        "{:<34} {:>10} {:>10} {:>8} {:>14}",
        "export", "frames", "file MiB", "secs", "peak RSS MiB"
    );
    let runs = [
        ("streamed", plain, "plain"),
        ("whole-recording reference", plain, "plain"),
        ("streamed", sealed, "zero-knowledge"),
    ];
    for (mode, id, kind) in runs {
        let out = dir.path().join(format!("{id}-{}.webm", mode.len()));
        let report = Command::new(std::env::current_exe()?)
            .arg("--child")
            .arg(mode)
            .arg(dir.path())
            .arg(id.to_string())
            .arg(kind)
            .arg(&out)
            .output()?;
        if !report.status.success() {
            bail!(
                "the {mode} export failed: {}",
                String::from_utf8_lossy(&report.stderr)
            );
        }
        print!(
            "{:<34} {}",
            format!("{mode} ({kind})"),
            String::from_utf8_lossy(&report.stdout)
        );
        std::fs::remove_file(&out)?;
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn clinician_key() -> RecordingKeyPair {
    RecordingKeyPair::generate(&mut rand::rngs::StdRng::seed_from_u64(KEY_SEED))
}

/// One export in this process: prints frames, file size, seconds and the peak resident set.
fn child(args: &[String]) -> anyhow::Result<()> {
    let [mode, dir, id, kind, out] = args else {
        bail!("a child takes a mode, a vault directory, a recording id, a kind and a file");
    };
    let vault = Vault::open(Path::new(dir))?;
    let id: Uuid = id.parse()?;
    let zero_knowledge = kind == "zero-knowledge";
    let row = RecordingRow {
        id,
        consultation_id: Uuid::new_v4(),
        state: RecordingStatus::Complete,
        zero_knowledge,
        started_at: time::OffsetDateTime::now_utc(),
        ended_at: None,
        retain_until: time::OffsetDateTime::now_utc(),
        chunks: 0,
        bytes: 0,
        note: None,
        continues: None,
    };
    let file = BufWriter::new(std::fs::File::create(PathBuf::from(out))?);
    let started = Instant::now();
    let frames = match mode.as_str() {
        "streamed" => {
            let key = zero_knowledge.then(clinician_key);
            export::export(&vault, &row, &[], key.as_ref(), file)?
                .summary
                .frames
        }
        "whole-recording reference" => {
            let contents = RecordingContents::read(vault.open_recording(id)?, false)?;
            matroska::export(&contents, file)?.frames
        }
        other => bail!("unknown mode {other}"),
    };
    let secs = started.elapsed().as_secs_f64();
    let size = std::fs::metadata(out)?.len();
    println!(
        "{frames:>10} {:>10.0} {secs:>8.1} {:>14.0}",
        mib(size),
        peak_rss_kib()? as f64 / 1024.0
    );
    Ok(())
}

/// The process's peak resident set (VmHWM), KiB.
fn peak_rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")
}

/// A VP8 frame of `len` bytes (a keyframe header when `key`).
fn vp8(key: bool, len: usize, n: u64) -> Vec<u8> {
    let mut frame = if key {
        vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01]
    } else {
        vec![0x11, 0x02, 0x00]
    };
    frame.resize(len, (n % 251) as u8);
    frame
}

/// Write a synthetic 1:1 recording of `minutes`; zero-knowledge when `clinician` is given.
/// Returns the sealed size.
fn write_recording(
    vault: &Vault,
    id: Uuid,
    minutes: u64,
    clinician: Option<&RecordingKeyPair>,
) -> anyhow::Result<u64> {
    let mut writer = vault.create_recording(id)?;
    let mut batch = RecordBatch::default();
    let people = [
        (Uuid::new_v4(), TrackRole::Doctor),
        (Uuid::new_v4(), TrackRole::Patient),
    ];
    let mut senders = Vec::new();
    for (n, (participant, role)) in people.iter().enumerate() {
        for (offset, codec) in [(0u8, Codec::Vp8), (2, Codec::Opus)] {
            batch.push(&Record::Track(Track {
                id: n as u8 + offset,
                codec,
                role: *role,
                participant: *participant,
                protected: clinician.is_some(),
                screen: false,
            }));
        }
        let kid = 0x100 + n as u64;
        let base = BaseKey::new(vec![0x40 + n as u8; 16]);
        if let Some(clinician) = clinician {
            let binding = EpochKeyBinding {
                recording: *id.as_bytes(),
                sender: *participant.as_bytes(),
                kid,
                suite: Suite::Aes128Gcm,
            };
            let wrapped = binding.wrap(&clinician.public(), &base, &mut rand::rngs::OsRng)?;
            batch.push(&Record::EpochKey(EpochKey {
                sender: *participant,
                kid,
                suite: Suite::Aes128Gcm.id(),
                wrapped,
            }));
        }
        senders.push(SenderKey::new(Suite::Aes128Gcm, kid, &base)?);
    }
    let mut counters = [0u64; 4];
    let mut push =
        |batch: &mut RecordBatch, track: u8, at_us: u64, keyframe: bool, data: Vec<u8>| {
            let sender = usize::from(track % 2);
            let data = if clinician.is_some() {
                let format = if track < 2 {
                    MediaFormat::Vp8
                } else {
                    MediaFormat::Opus
                };
                let ctr = &mut counters[usize::from(track)];
                *ctr += 1;
                // Audio and video of a sender share a key, so their counters must not meet.
                let ctr = *ctr + if track < 2 { 0 } else { 1 << 40 };
                protect(format, &senders[sender], ctr, &data)?
            } else {
                data
            };
            batch.push(&Record::Frame(Frame {
                track,
                at_us,
                keyframe,
                data,
            }));
            anyhow::Ok(())
        };
    let end_us = minutes * 60_000_000;
    // Video every 33.3 ms; audio every 20 ms, delivered up to 60 ms late.
    let (mut video_n, mut audio_n) = (0u64, 0u64);
    loop {
        let video_at = video_n * 100_000 / 3;
        let audio_at = audio_n * 20_000;
        if video_at >= end_us && audio_at >= end_us {
            break;
        }
        if video_at <= audio_at + 60_000 && video_at < end_us {
            let key = video_n % 90 == 0;
            let len = if key { 12 * 1024 } else { 2560 };
            for track in 0..2u8 {
                push(&mut batch, track, video_at, key, vp8(key, len, video_n))?;
            }
            video_n += 1;
        } else {
            for track in 2..4u8 {
                push(&mut batch, track, audio_at, false, vec![0x78; 120])?;
            }
            audio_n += 1;
        }
        if batch.len() >= CHUNK_BYTES {
            writer.append(&batch.take())?;
        }
    }
    writer.finish(&batch.take())?;
    let size = vault
        .media_size(id)?
        .context("the recording has no media")?;
    std::io::stdout().flush()?;
    Ok(size)
}
