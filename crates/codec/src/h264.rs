//! H.264 with OpenH264: constrained baseline, Annex-B out, single-threaded, real-time rate control.

use openh264::decoder::{Decoder, DecoderConfig};
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, RateControlMode, UsageType,
};
use openh264::formats::{YUVSlices, YUVSource};
use openh264::OpenH264API;

use super::{CodecError, EncodedVideo, VideoDecoder, VideoEncoder, VideoFrame};
use consult_proto::media::VideoCodec;

/// H.264 encoder.
pub struct H264Encoder {
    encoder: Encoder,
}

// The OpenH264 encoder is owned by one thread at a time; it holds no thread-affine state.
unsafe impl Send for H264Encoder {}

impl H264Encoder {
    /// An encoder for `width`×`height` at `bitrate_bps` and up to `fps`.
    pub fn new(_width: u32, _height: u32, bitrate_bps: u32, fps: f32) -> Result<Self, CodecError> {
        let config = EncoderConfig::new()
            .bitrate(BitRate::from_bps(bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(fps))
            .rate_control_mode(RateControlMode::Bitrate)
            .usage_type(UsageType::CameraVideoRealTime)
            // Rate control only holds the bitrate when it may skip frames (skips yield `None`).
            .skip_frames(true);
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| CodecError::library("openh264", e))?;
        Ok(Self { encoder })
    }
}

impl VideoEncoder for H264Encoder {
    fn encode(
        &mut self,
        frame: &VideoFrame,
        force_keyframe: bool,
    ) -> Result<Option<EncodedVideo>, CodecError> {
        frame.validate()?;
        if force_keyframe {
            self.encoder.force_intra_frame();
        }
        let (y, u, v) = frame.planes();
        let (w, h) = (frame.width as usize, frame.height as usize);
        let source = YUVSlices::new((y, u, v), (w, h), (w, w / 2, w / 2));
        let bitstream = self
            .encoder
            .encode(&source)
            .map_err(|e| CodecError::library("openh264", e))?;
        let frame_type = bitstream.frame_type();
        if matches!(frame_type, FrameType::Skip | FrameType::Invalid) {
            return Ok(None);
        }
        let data = bitstream.to_vec();
        if data.is_empty() {
            return Ok(None);
        }
        Ok(Some(EncodedVideo {
            codec: VideoCodec::H264,
            data,
            keyframe: matches!(frame_type, FrameType::IDR | FrameType::I),
        }))
    }

    fn set_bitrate(&mut self, bps: u32) -> Result<(), CodecError> {
        let mut info = openh264_sys2::SBitrateInfo {
            iLayer: openh264_sys2::SPATIAL_LAYER_ALL,
            iBitrate: bps.min(i32::MAX as u32) as i32,
        };
        // SAFETY: the encoder is initialised; set_option reads an SBitrateInfo for these options.
        let status = unsafe {
            let api = self.encoder.raw_api();
            let max = api.set_option(
                openh264_sys2::ENCODER_OPTION_MAX_BITRATE,
                (&raw mut info).cast(),
            );
            let target = api.set_option(
                openh264_sys2::ENCODER_OPTION_BITRATE,
                (&raw mut info).cast(),
            );
            max.max(target)
        };
        if status != 0 {
            return Err(CodecError::library(
                "openh264",
                format!("set bitrate failed ({status})"),
            ));
        }
        Ok(())
    }

    fn codec(&self) -> VideoCodec {
        VideoCodec::H264
    }
}

/// H.264 decoder.
pub struct H264Decoder {
    decoder: Decoder,
}

// See the encoder.
unsafe impl Send for H264Decoder {}

impl H264Decoder {
    /// A decoder.
    pub fn new() -> Result<Self, CodecError> {
        let decoder = Decoder::with_api_config(OpenH264API::from_source(), DecoderConfig::new())
            .map_err(|e| CodecError::library("openh264", e))?;
        Ok(Self { decoder })
    }
}

impl VideoDecoder for H264Decoder {
    fn decode(&mut self, data: &[u8]) -> Result<Option<VideoFrame>, CodecError> {
        let Some(picture) = self
            .decoder
            .decode(data)
            .map_err(|e| CodecError::library("openh264", e))?
        else {
            return Ok(None);
        };
        let (w, h) = picture.dimensions();
        let (ys, us, vs) = picture.strides();
        Ok(Some(VideoFrame::from_strided(
            w as u32,
            h as u32,
            [(picture.y(), ys), (picture.u(), us), (picture.v(), vs)],
        )))
    }
}
