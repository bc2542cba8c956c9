//! A moving test pattern and a tone: what a kiosk sends when it has no camera or microphone, and
//! what tests send so the far side can check it received real, changing pictures and sound.

use super::VideoFrame;

/// Colour bars with a bright square that moves one step per frame.
#[derive(Debug, Clone)]
pub struct TestPattern {
    width: u32,
    height: u32,
    frame: u64,
}

impl TestPattern {
    /// A pattern of this size (even dimensions).
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width: width & !1,
            height: height & !1,
            frame: 0,
        }
    }

    /// The next frame.
    pub fn next_frame(&mut self) -> VideoFrame {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut frame = VideoFrame::black(self.width, self.height);
        let bars = [235u8, 210, 170, 145, 106, 81, 41, 16];
        let (y_plane, chroma) = frame.data.split_at_mut(w * h);
        for row in 0..h {
            for col in 0..w {
                y_plane[row * w + col] = bars[col * bars.len() / w];
            }
        }
        let (u_plane, v_plane) = chroma.split_at_mut(w * h / 4);
        for i in 0..w * h / 4 {
            let col = (i % (w / 2)) * 2;
            u_plane[i] = 64 + (col * 128 / w) as u8;
            v_plane[i] = 192 - (col * 128 / w) as u8;
        }
        let size = (h / 6).max(2);
        let step = (self.frame as usize * 4) % (w.saturating_sub(size).max(1));
        let top = (h - size) / 2;
        for row in top..top + size {
            for col in step..step + size {
                y_plane[row * w + col] = 255;
            }
        }
        self.frame += 1;
        frame
    }
}

/// A sine tone as 20 ms frames of 48 kHz mono PCM.
#[derive(Debug, Clone)]
pub struct Tone {
    frequency: f32,
    sample: u64,
}

impl Tone {
    /// A tone of `frequency` Hz.
    pub fn new(frequency: f32) -> Self {
        Self {
            frequency,
            sample: 0,
        }
    }

    /// The next 960 samples.
    pub fn next_frame(&mut self) -> Vec<i16> {
        (0..super::opus::FRAME_SAMPLES)
            .map(|_| {
                let t = self.sample as f32 / super::opus::SAMPLE_RATE as f32;
                self.sample += 1;
                ((t * self.frequency * std::f32::consts::TAU).sin() * 8000.0) as i16
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{video_decoder, video_encoder};
    use consult_proto::media::VideoCodec;

    #[test]
    fn pattern_frames_differ_and_are_well_formed() {
        let mut pattern = TestPattern::new(320, 240);
        let a = pattern.next_frame();
        let b = pattern.next_frame();
        a.validate().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn h264_and_vp8_round_trip_a_moving_pattern() {
        for codec in [VideoCodec::H264, VideoCodec::Vp8] {
            let mut pattern = TestPattern::new(320, 240);
            let mut encoder = video_encoder(codec, 320, 240, 500_000, 30.0).unwrap();
            let mut decoder = video_decoder(codec).unwrap();
            let mut decoded = 0;
            for i in 0..30 {
                let frame = pattern.next_frame();
                if let Some(encoded) = encoder.encode(&frame, i == 0).unwrap() {
                    assert_eq!(encoded.keyframe, i == 0, "{codec:?} frame {i}");
                    if let Some(picture) = decoder.decode(&encoded.data).unwrap() {
                        assert_eq!((picture.width, picture.height), (320, 240));
                        // Lossy, but the moving square must be roughly where it was.
                        let diff: u64 = picture
                            .data
                            .iter()
                            .zip(&frame.data)
                            .map(|(a, b)| a.abs_diff(*b) as u64)
                            .sum();
                        assert!(
                            diff / (picture.data.len() as u64) < 12,
                            "{codec:?}: mean error {}",
                            diff / picture.data.len() as u64
                        );
                        decoded += 1;
                    }
                }
            }
            assert!(decoded >= 28, "{codec:?}: {decoded} frames decoded");
            encoder.set_bitrate(200_000).unwrap();
            assert!(
                encoder
                    .encode(&pattern.next_frame(), true)
                    .unwrap()
                    .unwrap()
                    .keyframe
            );
        }
    }

    #[test]
    fn decoders_reject_garbage_without_panicking() {
        for codec in [VideoCodec::H264, VideoCodec::Vp8] {
            let mut decoder = video_decoder(codec).unwrap();
            for garbage in [
                vec![0u8; 3],
                vec![0xff; 200],
                vec![0, 0, 0, 1, 0x65, 1, 2, 3],
            ] {
                let _ = decoder.decode(&garbage);
            }
        }
        let mut encoder = video_encoder(VideoCodec::Vp8, 64, 64, 100_000, 30.0).unwrap();
        assert!(encoder.encode(&VideoFrame::black(32, 32), false).is_err());
        assert!(encoder
            .encode(
                &VideoFrame {
                    width: 64,
                    height: 64,
                    data: vec![0; 10]
                },
                false
            )
            .is_err());
    }

    #[test]
    fn opus_round_trips_a_tone() {
        let mut tone = Tone::new(440.0);
        let mut encoder = crate::opus::OpusEncoder::new(32_000).unwrap();
        let mut decoder = crate::opus::OpusDecoder::new().unwrap();
        let mut energy = 0f64;
        for _ in 0..10 {
            let packet = encoder.encode(&tone.next_frame()).unwrap();
            let pcm = decoder.decode(&packet).unwrap();
            assert_eq!(pcm.len(), 960);
            energy += pcm.iter().map(|s| (*s as f64).powi(2)).sum::<f64>();
        }
        assert!(energy > 1e9, "the tone came through ({energy})");
        assert!(encoder.encode(&[0; 100]).is_err());
        assert!(decoder.decode(&[0xff, 0xff, 0xff]).is_err() || decoder.decode(&[]).is_ok());
    }
}
