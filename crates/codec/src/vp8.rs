//! VP8 with libvpx (through `env-libvpx-sys`, whose bindings match Debian's libvpx and need no
//! code generation): one-pass CBR, real-time deadline, error resilient, runtime bitrate changes
//! and forced keyframes — the parts a WebRTC sender needs.

use std::mem::MaybeUninit;
use std::os::raw::c_int;
use std::ptr;

use vpx_sys as vpx;

use super::{CodecError, EncodedVideo, VideoDecoder, VideoEncoder, VideoFrame};
use consult_proto::media::VideoCodec;

fn check(codec: &'static str, result: vpx::vpx_codec_err_t) -> Result<(), CodecError> {
    if result == vpx::vpx_codec_err_t::VPX_CODEC_OK {
        Ok(())
    } else {
        Err(CodecError::library(codec, format!("{result:?}")))
    }
}

/// VP8 encoder.
pub struct Vp8Encoder {
    // Boxed: libvpx keeps a pointer to the configuration inside the context, and both must not
    // move after initialisation.
    ctx: Box<vpx::vpx_codec_ctx_t>,
    cfg: Box<vpx::vpx_codec_enc_cfg_t>,
    pts: i64,
    frame_duration: u64,
    width: u32,
    height: u32,
}

// The context is used by one thread at a time through `&mut self`.
unsafe impl Send for Vp8Encoder {}

impl Vp8Encoder {
    /// An encoder for `width`×`height` at `bitrate_bps` and `fps`.
    pub fn new(width: u32, height: u32, bitrate_bps: u32, fps: f32) -> Result<Self, CodecError> {
        let probe = VideoFrame::black(width, height);
        probe.validate()?;
        // SAFETY: config_default fills the whole struct; zeroed is a valid starting point for a
        // plain C struct of integers and pointers.
        let mut cfg: Box<vpx::vpx_codec_enc_cfg_t> =
            Box::new(unsafe { MaybeUninit::zeroed().assume_init() });
        check("vp8", unsafe {
            vpx::vpx_codec_enc_config_default(vpx::vpx_codec_vp8_cx(), &mut *cfg, 0)
        })?;
        cfg.g_w = width;
        cfg.g_h = height;
        // Millisecond time base.
        cfg.g_timebase = vpx::vpx_rational { num: 1, den: 1000 };
        cfg.rc_target_bitrate = (bitrate_bps / 1000).max(50);
        cfg.g_threads = 1;
        cfg.g_lag_in_frames = 0;
        cfg.g_pass = vpx::vpx_enc_pass::VPX_RC_ONE_PASS;
        cfg.rc_end_usage = vpx::vpx_rc_mode::VPX_CBR;
        cfg.g_error_resilient = vpx::VPX_ERROR_RESILIENT_DEFAULT;
        cfg.rc_dropframe_thresh = 0;
        cfg.kf_max_dist = 3000;
        let mut ctx: Box<vpx::vpx_codec_ctx_t> =
            Box::new(unsafe { MaybeUninit::zeroed().assume_init() });
        // SAFETY: ctx and cfg are boxed (stable addresses) and outlive the context.
        check("vp8", unsafe {
            vpx::vpx_codec_enc_init_ver(
                &mut *ctx,
                vpx::vpx_codec_vp8_cx(),
                &*cfg,
                0,
                vpx::VPX_ENCODER_ABI_VERSION as c_int,
            )
        })?;
        // Fastest real-time speed: a consultation needs latency, not archival quality.
        let speed: c_int = -8;
        check("vp8", unsafe {
            vpx::vpx_codec_control_(
                &mut *ctx,
                vpx::vp8e_enc_control_id::VP8E_SET_CPUUSED as c_int,
                speed,
            )
        })?;
        let frame_duration = (1000.0 / fps.max(1.0)).round() as u64;
        Ok(Self {
            ctx,
            cfg,
            pts: 0,
            frame_duration,
            width,
            height,
        })
    }
}

impl VideoEncoder for Vp8Encoder {
    fn encode(
        &mut self,
        frame: &VideoFrame,
        force_keyframe: bool,
    ) -> Result<Option<EncodedVideo>, CodecError> {
        frame.validate()?;
        if frame.width != self.width || frame.height != self.height {
            return Err(CodecError::InvalidFrame(format!(
                "{}x{} frame for a {}x{} encoder",
                frame.width, frame.height, self.width, self.height
            )));
        }
        let mut image = MaybeUninit::<vpx::vpx_image_t>::zeroed();
        // SAFETY: the image only borrows `frame.data` (packed I420 of the checked size) for the
        // duration of the encode call; libvpx does not write through it.
        let wrapped = unsafe {
            vpx::vpx_img_wrap(
                image.as_mut_ptr(),
                vpx::vpx_img_fmt::VPX_IMG_FMT_I420,
                frame.width,
                frame.height,
                1,
                frame.data.as_ptr() as *mut u8,
            )
        };
        if wrapped.is_null() {
            return Err(CodecError::library("vp8", "could not wrap the frame"));
        }
        let flags = if force_keyframe {
            vpx::VPX_EFLAG_FORCE_KF as i64
        } else {
            0
        };
        check("vp8", unsafe {
            vpx::vpx_codec_encode(
                &mut *self.ctx,
                wrapped,
                self.pts,
                self.frame_duration as _,
                flags as _,
                vpx::VPX_DL_REALTIME as _,
            )
        })?;
        self.pts += self.frame_duration as i64;
        let mut out: Option<EncodedVideo> = None;
        let mut iter: vpx::vpx_codec_iter_t = ptr::null();
        loop {
            // SAFETY: the packet is valid until the next get_cx_data/encode call; we copy it out.
            let packet = unsafe { vpx::vpx_codec_get_cx_data(&mut *self.ctx, &mut iter) };
            if packet.is_null() {
                break;
            }
            let packet = unsafe { &*packet };
            if packet.kind != vpx::vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                continue;
            }
            let frame = unsafe { packet.data.frame };
            let bytes =
                unsafe { std::slice::from_raw_parts(frame.buf as *const u8, frame.sz as usize) };
            let keyframe = frame.flags & vpx::VPX_FRAME_IS_KEY != 0;
            match &mut out {
                Some(existing) => {
                    existing.data.extend_from_slice(bytes);
                    existing.keyframe |= keyframe;
                }
                None => {
                    out = Some(EncodedVideo {
                        codec: VideoCodec::Vp8,
                        data: bytes.to_vec(),
                        keyframe,
                    })
                }
            }
        }
        Ok(out)
    }

    fn set_bitrate(&mut self, bps: u32) -> Result<(), CodecError> {
        self.cfg.rc_target_bitrate = (bps / 1000).max(50);
        // SAFETY: ctx was initialised with this very (boxed) configuration.
        check("vp8", unsafe {
            vpx::vpx_codec_enc_config_set(&mut *self.ctx, &*self.cfg)
        })
    }

    fn codec(&self) -> VideoCodec {
        VideoCodec::Vp8
    }
}

impl Drop for Vp8Encoder {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { vpx::vpx_codec_destroy(&mut *self.ctx) };
    }
}

/// VP8 decoder.
pub struct Vp8Decoder {
    ctx: Box<vpx::vpx_codec_ctx_t>,
}

// See the encoder.
unsafe impl Send for Vp8Decoder {}

impl Vp8Decoder {
    /// A decoder.
    pub fn new() -> Result<Self, CodecError> {
        let mut ctx: Box<vpx::vpx_codec_ctx_t> =
            Box::new(unsafe { MaybeUninit::zeroed().assume_init() });
        // SAFETY: a null configuration lets libvpx choose; ctx is boxed.
        check("vp8", unsafe {
            vpx::vpx_codec_dec_init_ver(
                &mut *ctx,
                vpx::vpx_codec_vp8_dx(),
                ptr::null(),
                0,
                vpx::VPX_DECODER_ABI_VERSION as c_int,
            )
        })?;
        Ok(Self { ctx })
    }
}

impl VideoDecoder for Vp8Decoder {
    fn decode(&mut self, data: &[u8]) -> Result<Option<VideoFrame>, CodecError> {
        if data.is_empty() {
            return Err(CodecError::InvalidFrame("empty VP8 frame".into()));
        }
        // SAFETY: data is a valid slice for the call.
        check("vp8", unsafe {
            vpx::vpx_codec_decode(
                &mut *self.ctx,
                data.as_ptr(),
                data.len() as _,
                ptr::null_mut(),
                0,
            )
        })?;
        let mut iter: vpx::vpx_codec_iter_t = ptr::null();
        let mut last = None;
        loop {
            // SAFETY: the image is valid until the next decode call; we copy it out.
            let image = unsafe { vpx::vpx_codec_get_frame(&mut *self.ctx, &mut iter) };
            if image.is_null() {
                break;
            }
            let image = unsafe { &*image };
            let (w, h) = (image.d_w, image.d_h);
            let plane = |i: usize, rows: u32| {
                let stride = image.stride[i] as usize;
                // SAFETY: libvpx guarantees `rows` rows of `stride` bytes in each plane.
                (
                    unsafe { std::slice::from_raw_parts(image.planes[i], stride * rows as usize) },
                    stride,
                )
            };
            last = Some(VideoFrame::from_strided(
                w,
                h,
                [
                    plane(0, h),
                    plane(1, h.div_ceil(2)),
                    plane(2, h.div_ceil(2)),
                ],
            ));
        }
        Ok(last)
    }
}

impl Drop for Vp8Decoder {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { vpx::vpx_codec_destroy(&mut *self.ctx) };
    }
}
