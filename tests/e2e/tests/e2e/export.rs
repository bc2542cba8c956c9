//! Recordings exported with real encoders and checked with real tools: frames from openh264,
//! libvpx and libopus, as the recorder stores them, muxed by the vault's exporter, then read by
//! Debian's ffprobe (streams, duration) and decoded frame by frame by ffmpeg.

use std::process::Command;

use consult_client::codec::opus::OpusEncoder;
use consult_client::codec::pattern::{TestPattern, Tone};
use consult_client::codec::video_encoder;
use consult_client::peer::VideoCodec;
use consult_vault::matroska::{self, Container};
use consult_vault::recording::{Codec, Frame, RecordingContents, Track, TrackRole};
use uuid::Uuid;

const SECONDS: u64 = 3;

/// Three seconds of a doctor's and a patient's audio and video, 30 fps and 20 ms Opus packets,
/// with their arrival jitter, as the recorder would have stored them.
fn recording(video: VideoCodec) -> RecordingContents {
    let mut contents = RecordingContents {
        complete: true,
        ..RecordingContents::default()
    };
    let codec = match video {
        VideoCodec::H264 => Codec::H264,
        VideoCodec::Vp8 => Codec::Vp8,
    };
    for (n, role) in [TrackRole::Doctor, TrackRole::Patient]
        .into_iter()
        .enumerate()
    {
        let participant = Uuid::new_v4();
        let (video_track, audio_track) = (2 * n as u8, 2 * n as u8 + 1);
        for (id, codec) in [(video_track, codec), (audio_track, Codec::Opus)] {
            contents.tracks.insert(
                id,
                Track {
                    id,
                    codec,
                    role,
                    participant,
                    protected: false,
                    screen: false,
                },
            );
        }
        let mut encoder = video_encoder(video, 320, 240, 300_000, 30.0).unwrap();
        let mut pattern = TestPattern::new(320, 240);
        for i in 0..SECONDS * 30 {
            let frame = pattern.next_frame();
            if let Some(encoded) = encoder.encode(&frame, i == 0).unwrap() {
                contents.frames.push(Frame {
                    track: video_track,
                    at_us: i * 33_333 + (i * 7919) % 3000,
                    keyframe: encoded.keyframe,
                    data: encoded.data,
                });
            }
        }
        let mut opus = OpusEncoder::new(32_000).unwrap();
        let mut tone = Tone::new(440.0 * (n + 1) as f32);
        for i in 0..SECONDS * 50 {
            contents.frames.push(Frame {
                track: audio_track,
                at_us: i * 20_000 + (i * 104_729) % 2000,
                keyframe: false,
                data: opus.encode(&tone.next_frame()).unwrap(),
            });
        }
    }
    contents.frames.sort_by_key(|f| f.at_us);
    contents
}

/// ffprobe's streams (type, codec) and duration in seconds; and ffmpeg decoding every frame.
fn probe(path: &std::path::Path) -> (Vec<(String, String)>, f64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name",
        ])
        .args(["-show_entries", "format=duration", "-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe (Debian's ffmpeg package) must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let streams = info["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["codec_type"].as_str().unwrap().to_owned(),
                s["codec_name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let duration = info["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let decoded = Command::new("ffmpeg")
        .args(["-v", "error", "-xerror", "-i"])
        .arg(path)
        // Keep the input time base: the null muxer's guessed 1/fps base can merge frames
        // recorded 47 ms apart into one timestamp and complain (ffmpeg 5.1).
        .args(["-enc_time_base", "-1", "-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        decoded.status.success(),
        "{}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    assert!(
        decoded.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    (streams, duration)
}

fn export_and_check(video: VideoCodec, container: Container, codec_name: &str) {
    let contents = recording(video);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("call.{}", container.extension()));
    let summary = matroska::export(&contents, std::fs::File::create(&path).unwrap()).unwrap();
    assert_eq!(summary.container, container);
    assert_eq!(summary.tracks, 4);
    assert_eq!(summary.skipped_frames, 0);
    let (mut streams, duration) = probe(&path);
    streams.sort();
    let expected = |t: &str, c: &str| (t.to_owned(), c.to_owned());
    assert_eq!(
        streams,
        [
            expected("audio", "opus"),
            expected("audio", "opus"),
            expected("video", codec_name),
            expected("video", codec_name),
        ]
    );
    assert!(
        (duration - SECONDS as f64).abs() < 0.3,
        "duration {duration} s"
    );
}

#[test]
fn vp8_and_opus_export_to_webm_that_plays() {
    export_and_check(VideoCodec::Vp8, Container::WebM, "vp8");
}

#[test]
fn h264_and_opus_export_to_matroska_that_plays() {
    export_and_check(VideoCodec::H264, Container::Matroska, "h264");
}
