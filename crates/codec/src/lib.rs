//! Real codecs for the Consult media core: Opus (libopus), H.264 (OpenH264) and VP8 (libvpx),
//! with raw frames in and out — 20 ms of 48 kHz mono PCM for audio, I420 for video — plus a moving
//! test pattern and a tone for kiosks and tests.
//!
//! This is the only Consult crate that links C codec libraries (Debian: `libopus-dev`,
//! `libvpx-dev`, `pkg-config`, and `nasm` for OpenH264's assembly). The signaling service never
//! depends on it: its recorder stores encoded frames as they arrive.
//!
//! ```
//! use consult_codec::pattern::TestPattern;
//! use consult_codec::{video_decoder, video_encoder, VideoCodec};
//!
//! let mut pattern = TestPattern::new(320, 240);
//! let mut encoder = video_encoder(VideoCodec::H264, 320, 240, 300_000, 30.0).unwrap();
//! let mut decoder = video_decoder(VideoCodec::H264).unwrap();
//! let encoded = encoder.encode(&pattern.next_frame(), true).unwrap().unwrap();
//! assert!(encoded.keyframe);
//! let decoded = decoder.decode(&encoded.data).unwrap().unwrap();
//! assert_eq!((decoded.width, decoded.height), (320, 240));
//! ```

pub mod h264;
pub mod opus;
pub mod pattern;
pub mod vp8;

pub use consult_proto::media::VideoCodec;

/// Why a codec call failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The encoder or decoder library reported an error.
    #[error("{codec}: {message}")]
    Library {
        /// Which codec.
        codec: &'static str,
        /// What it said.
        message: String,
    },
    /// The frame has the wrong size or shape.
    #[error("invalid frame: {0}")]
    InvalidFrame(String),
}

impl CodecError {
    pub(crate) fn library(codec: &'static str, message: impl ToString) -> Self {
        Self::Library {
            codec,
            message: message.to_string(),
        }
    }
}

/// A raw video frame in I420: the Y plane, then U, then V, tightly packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoFrame {
    /// Width in pixels (even).
    pub width: u32,
    /// Height in pixels (even).
    pub height: u32,
    /// `width * height * 3 / 2` bytes.
    pub data: Vec<u8>,
}

impl VideoFrame {
    /// A black frame.
    pub fn black(width: u32, height: u32) -> Self {
        let luma = (width * height) as usize;
        let mut data = vec![16u8; luma];
        data.resize(luma * 3 / 2, 128);
        Self {
            width,
            height,
            data,
        }
    }

    /// Check dimensions and length.
    pub fn validate(&self) -> Result<(), CodecError> {
        if self.width == 0 || self.height == 0 || self.width % 2 == 1 || self.height % 2 == 1 {
            return Err(CodecError::InvalidFrame(format!(
                "{}x{} is not a positive even size",
                self.width, self.height
            )));
        }
        let expected = (self.width * self.height) as usize * 3 / 2;
        if self.data.len() != expected {
            return Err(CodecError::InvalidFrame(format!(
                "{} bytes for {}x{}, expected {expected}",
                self.data.len(),
                self.width,
                self.height
            )));
        }
        Ok(())
    }

    /// The three planes.
    pub fn planes(&self) -> (&[u8], &[u8], &[u8]) {
        let luma = (self.width * self.height) as usize;
        let chroma = luma / 4;
        (
            &self.data[..luma],
            &self.data[luma..luma + chroma],
            &self.data[luma + chroma..],
        )
    }

    /// This frame made `factor` times smaller each way (each pixel the average of a
    /// `factor`×`factor` block), its size rounded down to even and at least 2×2. A factor of 0
    /// or 1, or a frame that does not [`validate`](Self::validate), comes back as it is.
    ///
    /// ```
    /// use consult_codec::VideoFrame;
    /// let frame = VideoFrame::black(320, 240);
    /// let small = frame.downscaled(4);
    /// assert_eq!((small.width, small.height), (80, 60));
    /// assert!(small.validate().is_ok());
    /// ```
    pub fn downscaled(&self, factor: u32) -> VideoFrame {
        if factor <= 1 || self.validate().is_err() {
            return self.clone();
        }
        let even_at_least_2 = |n: u32| ((n / factor) & !1).max(2);
        let (width, height) = (even_at_least_2(self.width), even_at_least_2(self.height));
        let mut data = Vec::with_capacity((width * height) as usize * 3 / 2);
        let (y, u, v) = self.planes();
        let planes = [
            (y, self.width, self.height, width, height),
            (u, self.width / 2, self.height / 2, width / 2, height / 2),
            (v, self.width / 2, self.height / 2, width / 2, height / 2),
        ];
        for (plane, in_w, in_h, out_w, out_h) in planes {
            let (in_w, in_h) = (in_w as usize, in_h as usize);
            let f = factor as usize;
            for oy in 0..out_h as usize {
                for ox in 0..out_w as usize {
                    // The block, clipped to the plane (a 2×2 floor can reach past a tiny one).
                    let (x0, y0) = ((ox * f).min(in_w - 1), (oy * f).min(in_h - 1));
                    let (x1, y1) = ((x0 + f).min(in_w), (y0 + f).min(in_h));
                    let mut sum = 0u32;
                    for row in y0..y1 {
                        for &p in &plane[row * in_w + x0..row * in_w + x1] {
                            sum += u32::from(p);
                        }
                    }
                    let count = ((x1 - x0) * (y1 - y0)) as u32;
                    data.push((sum / count.max(1)) as u8);
                }
            }
        }
        VideoFrame {
            width,
            height,
            data,
        }
    }

    /// Copy planes with strides (as decoders return them) into a packed frame.
    pub fn from_strided(width: u32, height: u32, planes: [(&[u8], usize); 3]) -> Self {
        let (w, h) = (width as usize, height as usize);
        let mut data = Vec::with_capacity(w * h * 3 / 2);
        for (index, (plane, stride)) in planes.into_iter().enumerate() {
            let (pw, ph) = if index == 0 { (w, h) } else { (w / 2, h / 2) };
            for row in 0..ph {
                let start = row * stride;
                data.extend_from_slice(&plane[start..start + pw]);
            }
        }
        Self {
            width,
            height,
            data,
        }
    }
}

/// An encoded video frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedVideo {
    /// The codec.
    pub codec: VideoCodec,
    /// Annex-B (H.264) or a VP8 frame.
    pub data: Vec<u8>,
    /// Whether a keyframe.
    pub keyframe: bool,
}

/// Encodes raw frames.
pub trait VideoEncoder: Send {
    /// Encode one frame; `None` when the encoder skipped it.
    fn encode(
        &mut self,
        frame: &VideoFrame,
        force_keyframe: bool,
    ) -> Result<Option<EncodedVideo>, CodecError>;
    /// Adapt the target bitrate (bits per second), e.g. to the bandwidth estimate.
    fn set_bitrate(&mut self, bps: u32) -> Result<(), CodecError>;
    /// The codec.
    fn codec(&self) -> VideoCodec;
}

/// Decodes frames.
pub trait VideoDecoder: Send {
    /// Decode one frame; `None` when more data is needed.
    fn decode(&mut self, data: &[u8]) -> Result<Option<VideoFrame>, CodecError>;
}

/// An encoder for `codec`.
pub fn video_encoder(
    codec: VideoCodec,
    width: u32,
    height: u32,
    bitrate_bps: u32,
    fps: f32,
) -> Result<Box<dyn VideoEncoder>, CodecError> {
    Ok(match codec {
        VideoCodec::H264 => Box::new(h264::H264Encoder::new(width, height, bitrate_bps, fps)?),
        VideoCodec::Vp8 => Box::new(vp8::Vp8Encoder::new(width, height, bitrate_bps, fps)?),
    })
}

/// A decoder for `codec`.
pub fn video_decoder(codec: VideoCodec) -> Result<Box<dyn VideoDecoder>, CodecError> {
    Ok(match codec {
        VideoCodec::H264 => Box::new(h264::H264Decoder::new()?),
        VideoCodec::Vp8 => Box::new(vp8::Vp8Decoder::new()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downscaling_averages_blocks_of_every_plane() {
        // 8×4: luma columns 0-3 dark (20), 4-7 bright (220); chroma 60 and 200.
        let (w, h) = (8u32, 4u32);
        let mut data = Vec::new();
        for _ in 0..h {
            for x in 0..w {
                data.push(if x < 4 { 20 } else { 220 });
            }
        }
        data.extend(std::iter::repeat_n(60u8, 8));
        data.extend(std::iter::repeat_n(200u8, 8));
        let frame = VideoFrame {
            width: w,
            height: h,
            data,
        };
        let half = frame.downscaled(2);
        assert_eq!((half.width, half.height), (4, 2));
        assert!(half.validate().is_ok());
        let (y, u, v) = half.planes();
        assert_eq!(y, &[20, 20, 220, 220, 20, 20, 220, 220]);
        assert_eq!((u, v), (&[60, 60][..], &[200, 200][..]));
        // A block of mixed pixels averages them: (20 + 220 + 20 + 20) / 4.
        let mut odd = frame.clone();
        odd.data[1] = 220;
        assert_eq!(odd.downscaled(2).planes().0[0], 70);
    }

    #[test]
    fn tiny_and_invalid_frames_are_safe() {
        let tiny = VideoFrame::black(2, 2).downscaled(4);
        assert_eq!((tiny.width, tiny.height), (2, 2));
        assert!(tiny.validate().is_ok());
        let bad = VideoFrame {
            width: 4,
            height: 4,
            data: vec![0; 5],
        };
        assert_eq!(bad.downscaled(2), bad);
        let same = VideoFrame::black(64, 48);
        assert_eq!(same.downscaled(1), same);
        assert_eq!(same.downscaled(0), same);
    }
}
