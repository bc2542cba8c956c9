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
