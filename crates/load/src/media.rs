//! Pre-encoded media: a test pattern and a tone are encoded once per run, and every peer loops
//! the same frames, so the generator's CPU goes to networking, not encoding.

use std::collections::HashSet;
use std::sync::Arc;

use consult_client::codec::opus::OpusEncoder;
use consult_client::codec::pattern::{TestPattern, Tone};
use consult_client::codec::{video_encoder, CodecError};
use consult_client::peer::VideoCodec;
use rand::{Rng, SeedableRng};

use crate::plan::{VideoProfile, VIDEO_FPS};

/// Seconds of video in the loop (one keyframe at its start).
const VIDEO_LOOP_SECS: u32 = 2;
/// Amplitude of the sensor grain added to the pattern's luma.
const GRAIN: i8 = 10;
/// Seconds of audio in the loop.
const AUDIO_LOOP_SECS: u32 = 1;

/// One pre-encoded video frame.
#[derive(Debug, Clone)]
pub struct LoopFrame {
    /// Annex-B H.264.
    pub data: Vec<u8>,
    /// Whether an IDR frame.
    pub keyframe: bool,
}

/// The frames every peer loops.
#[derive(Debug, Default)]
pub struct MediaLoop {
    /// Video, starting with a keyframe (empty when video is off).
    pub video: Vec<LoopFrame>,
    /// Opus packets of 20 ms (empty when audio is off).
    pub audio: Vec<Vec<u8>>,
    /// Hashes of the audio packets, to recognise them intact on arrival.
    audio_hashes: HashSet<u64>,
}

impl MediaLoop {
    /// Encode the loops for a profile.
    ///
    /// ```
    /// use consult_load::media::MediaLoop;
    /// use consult_load::plan::VideoProfile;
    ///
    /// let media = MediaLoop::encode(VideoProfile::Off, true, 1).unwrap();
    /// assert!(media.video.is_empty());
    /// assert_eq!(media.audio.len(), 50);
    /// assert!(media.is_audio_packet(&media.audio[3]));
    /// assert!(!media.is_audio_packet(b"not opus"));
    /// ```
    pub fn encode(video: VideoProfile, audio: bool, seed: u64) -> Result<Arc<Self>, CodecError> {
        let mut media = MediaLoop::default();
        if let Some((width, height, bitrate)) = video.dimensions() {
            let mut encoder =
                video_encoder(VideoCodec::H264, width, height, bitrate, VIDEO_FPS as f32)?;
            let mut pattern = TestPattern::new(width, height);
            // The bare pattern compresses to a fraction of a real camera's bitrate: grain on
            // the luma, as a camera sensor has, brings the encoder up to its target.
            let mut grain = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let luma = (width * height) as usize;
            for i in 0..VIDEO_LOOP_SECS * VIDEO_FPS {
                let mut frame = pattern.next_frame();
                for pixel in &mut frame.data[..luma] {
                    *pixel = pixel.saturating_add_signed(grain.gen_range(-GRAIN..=GRAIN));
                }
                if let Some(encoded) = encoder.encode(&frame, i == 0)? {
                    media.video.push(LoopFrame {
                        data: encoded.data,
                        keyframe: encoded.keyframe,
                    });
                }
            }
            if !media.video.first().is_some_and(|f| f.keyframe) {
                return Err(CodecError::InvalidFrame(
                    "the encoder did not start the loop with a keyframe".into(),
                ));
            }
        }
        if audio {
            let mut encoder = OpusEncoder::new(32_000)?;
            let mut tone = Tone::new(440.0);
            for _ in 0..AUDIO_LOOP_SECS * 50 {
                media.audio.push(encoder.encode(&tone.next_frame())?);
            }
            media.audio_hashes = media.audio.iter().map(|p| packet_hash(p)).collect();
        }
        Ok(Arc::new(media))
    }

    /// Whether `packet` is, byte for byte, one of the audio packets of the loop.
    pub fn is_audio_packet(&self, packet: &[u8]) -> bool {
        self.audio_hashes.contains(&packet_hash(packet))
    }

    /// The bitrate of the video loop, bits per second.
    pub fn video_bitrate(&self) -> u64 {
        let bytes: usize = self.video.iter().map(|f| f.data.len()).sum();
        (bytes as u64 * 8 * VIDEO_FPS as u64) / self.video.len().max(1) as u64
    }
}

fn packet_hash(packet: &[u8]) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(packet);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stamp::{nal_units, stamp_frame, verify_frame, Stamp, Verdict};

    #[test]
    fn the_360p_loop_starts_with_a_keyframe_and_every_frame_stamps_and_verifies() {
        let media = MediaLoop::encode(VideoProfile::P360, false, 1).unwrap();
        assert_eq!(media.video.len(), 60);
        assert!(media.video[0].keyframe);
        for (i, frame) in media.video.iter().enumerate() {
            assert!(!nal_units(&frame.data).is_empty());
            let stamp = Stamp {
                stream: 1,
                counter: i as u64,
                sent_micros: 0,
            };
            assert_eq!(
                verify_frame(&stamp_frame(&frame.data, &stamp)),
                Verdict::Intact(stamp)
            );
        }
        // Near the 600 kbit/s target, like a real camera's stream.
        let bps = media.video_bitrate();
        assert!((400_000..900_000).contains(&bps), "{bps} bit/s");
    }

    #[test]
    fn stamped_frames_still_decode() {
        let media = MediaLoop::encode(VideoProfile::P360, false, 1).unwrap();
        let mut decoder = consult_client::codec::video_decoder(VideoCodec::H264).unwrap();
        let mut pictures = 0;
        for (i, frame) in media.video.iter().enumerate() {
            let stamp = Stamp {
                stream: 2,
                counter: i as u64,
                sent_micros: 0,
            };
            if let Some(picture) = decoder.decode(&stamp_frame(&frame.data, &stamp)).unwrap() {
                assert_eq!((picture.width, picture.height), (640, 360));
                pictures += 1;
            }
        }
        assert_eq!(pictures, media.video.len());
    }
}
