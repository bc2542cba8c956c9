//! Export of a recording's frames to a playable file: WebM when every video track is VP8,
//! Matroska when one is H.264 (WebM allows only VP8/VP9/AV1). Audio is Opus.
//!
//! A small EBML writer of the elements players need — EBML header, Segment with Info (and its
//! duration), Tracks (with the codec private data: OpusHead, avcC), one-second Clusters of
//! SimpleBlocks, and Cues at the video keyframes — since the `webm` crate wraps the C++ libwebm
//! and muxes no H.264.

use std::io::{Seek, SeekFrom, Write};

use crate::recording::{Codec, RecordingContents, Track, TrackRole};
use crate::VaultError;

/// Which container the export is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// WebM: VP8 and Opus only.
    WebM,
    /// Matroska: used when a video track is H.264.
    Matroska,
}

impl Container {
    /// The file extension that fits.
    pub fn extension(self) -> &'static str {
        match self {
            Self::WebM => "webm",
            Self::Matroska => "mkv",
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    /// The container.
    pub container: Container,
    /// Tracks written (tracks without a decodable frame are left out).
    pub tracks: usize,
    /// Frames written.
    pub frames: usize,
    /// Frames left out: video before its track's first keyframe.
    pub skipped_frames: usize,
    /// Milliseconds from the first to the end of the last frame.
    pub duration_ms: u64,
}

/// The container that fits a recording's tracks.
pub fn container_for(contents: &RecordingContents) -> Container {
    if contents.tracks.values().any(|t| t.codec == Codec::H264) {
        Container::Matroska
    } else {
        Container::WebM
    }
}

mod id {
    pub const EBML: u32 = 0x1A45_DFA3;
    pub const EBML_VERSION: u32 = 0x4286;
    pub const EBML_READ_VERSION: u32 = 0x42F7;
    pub const EBML_MAX_ID_LENGTH: u32 = 0x42F2;
    pub const EBML_MAX_SIZE_LENGTH: u32 = 0x42F3;
    pub const DOC_TYPE: u32 = 0x4282;
    pub const DOC_TYPE_VERSION: u32 = 0x4287;
    pub const DOC_TYPE_READ_VERSION: u32 = 0x4285;
    pub const SEGMENT: u32 = 0x1853_8067;
    pub const INFO: u32 = 0x1549_A966;
    pub const TIMECODE_SCALE: u32 = 0x2A_D7B1;
    pub const DURATION: u32 = 0x4489;
    pub const MUXING_APP: u32 = 0x4D80;
    pub const WRITING_APP: u32 = 0x5741;
    pub const TRACKS: u32 = 0x1654_AE6B;
    pub const TRACK_ENTRY: u32 = 0xAE;
    pub const TRACK_NUMBER: u32 = 0xD7;
    pub const TRACK_UID: u32 = 0x73C5;
    pub const TRACK_TYPE: u32 = 0x83;
    pub const FLAG_LACING: u32 = 0x9C;
    pub const NAME: u32 = 0x536E;
    pub const CODEC_ID: u32 = 0x86;
    pub const CODEC_PRIVATE: u32 = 0x63A2;
    pub const VIDEO: u32 = 0xE0;
    pub const PIXEL_WIDTH: u32 = 0xB0;
    pub const PIXEL_HEIGHT: u32 = 0xBA;
    pub const AUDIO: u32 = 0xE1;
    pub const SAMPLING_FREQUENCY: u32 = 0xB5;
    pub const CHANNELS: u32 = 0x9F;
    pub const CLUSTER: u32 = 0x1F43_B675;
    pub const TIMECODE: u32 = 0xE7;
    pub const SIMPLE_BLOCK: u32 = 0xA3;
    pub const CUES: u32 = 0x1C53_BB6B;
    pub const CUE_POINT: u32 = 0xBB;
    pub const CUE_TIME: u32 = 0xB3;
    pub const CUE_TRACK_POSITIONS: u32 = 0xB7;
    pub const CUE_TRACK: u32 = 0xF7;
    pub const CUE_CLUSTER_POSITION: u32 = 0xF1;
}

fn put_id(out: &mut Vec<u8>, id: u32) {
    let bytes = id.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.extend_from_slice(&bytes[skip..]);
}

fn put_size(out: &mut Vec<u8>, size: u64) {
    let mut len = 1;
    while len < 8 && size >= (1u64 << (7 * len)) - 1 {
        len += 1;
    }
    let marked = size | (1u64 << (7 * len));
    out.extend_from_slice(&marked.to_be_bytes()[8 - len..]);
}

fn put_element(out: &mut Vec<u8>, id: u32, payload: &[u8]) {
    put_id(out, id);
    put_size(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

fn put_uint(out: &mut Vec<u8>, id: u32, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(7);
    put_element(out, id, &bytes[skip..]);
}

fn put_float(out: &mut Vec<u8>, id: u32, value: f64) {
    put_element(out, id, &value.to_be_bytes());
}

fn put_master(out: &mut Vec<u8>, id: u32, build: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    build(&mut inner);
    put_element(out, id, &inner);
}

/// NAL units of an Annex-B access unit, without start codes.
fn annex_b_units(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut units = Vec::new();
    for (n, start) in starts.iter().enumerate() {
        let mut end = starts.get(n + 1).map_or(data.len(), |next| next - 3);
        while end > *start && data[end - 1] == 0 {
            end -= 1;
        }
        if end > *start {
            units.push(&data[*start..end]);
        }
    }
    units
}

/// Annex-B to the length-prefixed form Matroska stores.
fn length_prefixed(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    for unit in annex_b_units(data) {
        out.extend_from_slice(&(unit.len() as u32).to_be_bytes());
        out.extend_from_slice(unit);
    }
    out
}

/// Reads Exp-Golomb coded fields of an SPS (emulation prevention removed first).
struct BitReader {
    bytes: Vec<u8>,
    bit: usize,
}

impl BitReader {
    fn new(nal: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(nal.len());
        let mut zeros = 0;
        for &b in nal {
            if zeros >= 2 && b == 3 {
                zeros = 0;
                continue;
            }
            zeros = if b == 0 { zeros + 1 } else { 0 };
            bytes.push(b);
        }
        Self { bytes, bit: 0 }
    }

    fn bit(&mut self) -> Option<u32> {
        let byte = *self.bytes.get(self.bit / 8)?;
        let value = (byte >> (7 - self.bit % 8)) & 1;
        self.bit += 1;
        Some(u32::from(value))
    }

    fn bits(&mut self, n: usize) -> Option<u32> {
        (0..n).try_fold(0, |acc, _| Some((acc << 1) | self.bit()?))
    }

    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some((1u32 << zeros) - 1 + self.bits(zeros)?)
    }

    fn se(&mut self) -> Option<i32> {
        let k = self.ue()?;
        Some(if k % 2 == 1 {
            k.div_ceil(2) as i32
        } else {
            -((k / 2) as i32)
        })
    }
}

/// Width and height from an H.264 SPS (ITU-T H.264 7.3.2.1.1), cropping applied.
fn sps_dimensions(sps: &[u8]) -> Option<(u32, u32)> {
    let mut r = BitReader::new(sps.get(1..)?);
    let profile = r.bits(8)?;
    r.bits(16)?; // constraint flags, level
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format = 1;
    if [100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135].contains(&profile) {
        chroma_format = r.ue()?;
        if chroma_format == 3 {
            r.bit()?;
        }
        r.ue()?; // bit_depth_luma
        r.ue()?; // bit_depth_chroma
        r.bit()?; // qpprime_y_zero_transform_bypass
        if r.bit()? == 1 {
            let lists = if chroma_format == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i32, 8i32);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256) % 256;
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            for _ in 0..r.ue()? {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed
    let width_mbs = r.ue()? + 1;
    let height_units = r.ue()? + 1;
    let frame_mbs_only = r.bit()?;
    if frame_mbs_only == 0 {
        r.bit()?;
    }
    r.bit()?; // direct_8x8_inference
    let (mut crop_x, mut crop_y) = (0, 0);
    if r.bit()? == 1 {
        let (left, right, top, bottom) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
        let (unit_x, unit_y) = match chroma_format {
            0 => (1, 2 - frame_mbs_only),
            1 => (2, 2 * (2 - frame_mbs_only)),
            2 => (2, 2 - frame_mbs_only),
            _ => (1, 2 - frame_mbs_only),
        };
        crop_x = unit_x * (left + right);
        crop_y = unit_y * (top + bottom);
    }
    let width = (width_mbs * 16).checked_sub(crop_x)?;
    let height = (height_units * 16 * (2 - frame_mbs_only)).checked_sub(crop_y)?;
    Some((width, height))
}

/// The avcC record (ISO/IEC 14496-15) and dimensions from a keyframe's SPS and PPS.
fn avc_config(keyframe: &[u8]) -> Result<(Vec<u8>, u32, u32), VaultError> {
    let units = annex_b_units(keyframe);
    let sps = units
        .iter()
        .find(|u| u[0] & 0x1f == 7)
        .ok_or_else(|| VaultError::Malformed("an H.264 keyframe without an SPS".into()))?;
    let pps = units
        .iter()
        .find(|u| u[0] & 0x1f == 8)
        .ok_or_else(|| VaultError::Malformed("an H.264 keyframe without a PPS".into()))?;
    if sps.len() < 4 {
        return Err(VaultError::Malformed("an H.264 SPS too short".into()));
    }
    let (width, height) = sps_dimensions(sps)
        .ok_or_else(|| VaultError::Malformed("an H.264 SPS that does not parse".into()))?;
    let mut avcc = vec![1, sps[1], sps[2], sps[3], 0xFF, 0xE1];
    avcc.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    avcc.extend_from_slice(sps);
    avcc.push(1);
    avcc.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    avcc.extend_from_slice(pps);
    Ok((avcc, width, height))
}

/// Width and height from a VP8 keyframe header (RFC 6386 9.1).
fn vp8_dimensions(keyframe: &[u8]) -> Result<(u32, u32), VaultError> {
    match keyframe {
        [_, _, _, 0x9d, 0x01, 0x2a, w0, w1, h0, h1, ..] => Ok((
            u32::from(u16::from_le_bytes([*w0, *w1]) & 0x3fff),
            u32::from(u16::from_le_bytes([*h0, *h1]) & 0x3fff),
        )),
        _ => Err(VaultError::Malformed(
            "a VP8 keyframe without its start code".into(),
        )),
    }
}

/// OpusHead (RFC 7845 5.1) for `channels`, no pre-skip, mapping family 0.
fn opus_head(channels: u8) -> Vec<u8> {
    let mut head = b"OpusHead".to_vec();
    head.push(1);
    head.push(channels);
    head.extend_from_slice(&0u16.to_le_bytes());
    head.extend_from_slice(&48_000u32.to_le_bytes());
    head.extend_from_slice(&0i16.to_le_bytes());
    head.push(0);
    head
}

struct TrackOut<'a> {
    track: &'a Track,
    number: u64,
    codec_private: Vec<u8>,
    dimensions: Option<(u32, u32)>,
    channels: u8,
}

fn role_name(role: TrackRole) -> &'static str {
    match role {
        TrackRole::Doctor => "doctor",
        TrackRole::Patient => "patient",
    }
}

/// Write `contents` (frames already opened: no track may be SFrame-protected) as one file with
/// every track, times relative to the first frame.
pub fn export<W: Write + Seek>(
    contents: &RecordingContents,
    mut out: W,
) -> Result<ExportSummary, VaultError> {
    if let Some(t) = contents.tracks.values().find(|t| t.protected) {
        return Err(VaultError::Malformed(format!(
            "track {} is end-to-end encrypted: open its frames with the clinician's key first",
            t.id
        )));
    }
    let container = container_for(contents);
    // Describe each track from its first usable frame; video starts at its first keyframe.
    let mut outs: Vec<TrackOut> = Vec::new();
    for track in contents.tracks.values() {
        let first = contents
            .frames
            .iter()
            .find(|f| f.track == track.id && (f.keyframe || !track.codec.is_video()));
        let Some(first) = first else { continue };
        let (codec_private, dimensions, channels) = match track.codec {
            Codec::Opus => {
                let stereo = first.data.first().is_some_and(|toc| toc & 0x04 != 0);
                let channels = if stereo { 2 } else { 1 };
                (opus_head(channels), None, channels)
            }
            Codec::Vp8 => (Vec::new(), Some(vp8_dimensions(&first.data)?), 0),
            Codec::H264 => {
                let (avcc, w, h) = avc_config(&first.data)?;
                (avcc, Some((w, h)), 0)
            }
        };
        outs.push(TrackOut {
            track,
            number: outs.len() as u64 + 1,
            codec_private,
            dimensions,
            channels,
        });
    }
    let number_of = |id: u8| outs.iter().find(|o| o.track.id == id);

    let mut head = Vec::new();
    put_master(&mut head, id::EBML, |e| {
        put_uint(e, id::EBML_VERSION, 1);
        put_uint(e, id::EBML_READ_VERSION, 1);
        put_uint(e, id::EBML_MAX_ID_LENGTH, 4);
        put_uint(e, id::EBML_MAX_SIZE_LENGTH, 8);
        let (doc, version) = match container {
            Container::WebM => ("webm", 4),
            Container::Matroska => ("matroska", 4),
        };
        put_element(e, id::DOC_TYPE, doc.as_bytes());
        put_uint(e, id::DOC_TYPE_VERSION, version);
        put_uint(e, id::DOC_TYPE_READ_VERSION, 2);
    });
    put_id(&mut head, id::SEGMENT);
    let segment_size_at = head.len() as u64;
    head.extend_from_slice(&[0x01, 0, 0, 0, 0, 0, 0, 0]);
    let segment_start = head.len() as u64;

    let mut info = Vec::new();
    put_uint(&mut info, id::TIMECODE_SCALE, 1_000_000);
    put_element(&mut info, id::MUXING_APP, b"consult-vault");
    put_element(&mut info, id::WRITING_APP, b"consult recording export");
    put_id(&mut info, id::DURATION);
    put_size(&mut info, 8);
    let duration_in_info = info.len() as u64;
    info.extend_from_slice(&0f64.to_be_bytes());
    put_id(&mut head, id::INFO);
    put_size(&mut head, info.len() as u64);
    let duration_at = head.len() as u64 + duration_in_info;
    head.extend_from_slice(&info);

    put_master(&mut head, id::TRACKS, |tracks| {
        for o in &outs {
            put_master(tracks, id::TRACK_ENTRY, |e| {
                put_uint(e, id::TRACK_NUMBER, o.number);
                put_uint(e, id::TRACK_UID, o.number);
                put_uint(e, id::FLAG_LACING, 0);
                let kind = if o.track.codec.is_video() {
                    "video"
                } else {
                    "audio"
                };
                put_element(
                    e,
                    id::NAME,
                    format!("{} {kind}", role_name(o.track.role)).as_bytes(),
                );
                let codec_id = match o.track.codec {
                    Codec::Opus => "A_OPUS",
                    Codec::Vp8 => "V_VP8",
                    Codec::H264 => "V_MPEG4/ISO/AVC",
                };
                put_element(e, id::CODEC_ID, codec_id.as_bytes());
                if !o.codec_private.is_empty() {
                    put_element(e, id::CODEC_PRIVATE, &o.codec_private);
                }
                if let Some((w, h)) = o.dimensions {
                    put_uint(e, id::TRACK_TYPE, 1);
                    put_master(e, id::VIDEO, |v| {
                        put_uint(v, id::PIXEL_WIDTH, u64::from(w));
                        put_uint(v, id::PIXEL_HEIGHT, u64::from(h));
                    });
                } else {
                    put_uint(e, id::TRACK_TYPE, 2);
                    put_master(e, id::AUDIO, |a| {
                        put_float(a, id::SAMPLING_FREQUENCY, 48_000.0);
                        put_uint(a, id::CHANNELS, u64::from(o.channels));
                    });
                }
            });
        }
    });
    out.write_all(&head)?;
    let mut position = head.len() as u64;

    // Clusters of about a second; a video keyframe starts a new one after half a second.
    let origin_us = contents
        .frames
        .iter()
        .filter(|f| number_of(f.track).is_some())
        .map(|f| f.at_us)
        .min()
        .unwrap_or(0);
    let mut started: Vec<u8> = Vec::new();
    let mut cues: Vec<(u64, u64, u64)> = Vec::new();
    let mut cluster: Vec<u8> = Vec::new();
    let mut cluster_time: Option<u64> = None;
    let (mut frames, mut skipped, mut last_ms) = (0usize, 0usize, 0u64);
    let flush = |cluster: &mut Vec<u8>,
                 cluster_time: &mut Option<u64>,
                 out: &mut W,
                 position: &mut u64|
     -> Result<(), VaultError> {
        if let Some(time) = cluster_time.take() {
            let mut element = Vec::with_capacity(cluster.len() + 16);
            put_id(&mut element, id::CLUSTER);
            let mut body = Vec::new();
            put_uint(&mut body, id::TIMECODE, time);
            body.append(cluster);
            put_size(&mut element, body.len() as u64);
            element.extend_from_slice(&body);
            out.write_all(&element)?;
            *position += element.len() as u64;
        }
        Ok(())
    };
    for frame in &contents.frames {
        let Some(o) = number_of(frame.track) else {
            skipped += 1;
            continue;
        };
        let video = o.track.codec.is_video();
        if video && !started.contains(&frame.track) {
            if !frame.keyframe {
                skipped += 1;
                continue;
            }
            started.push(frame.track);
        }
        let ms = (frame.at_us - origin_us) / 1000;
        let new_cluster = match cluster_time {
            None => true,
            Some(start) => ms - start >= 1000 || (video && frame.keyframe && ms - start >= 500),
        };
        if new_cluster {
            flush(&mut cluster, &mut cluster_time, &mut out, &mut position)?;
            cluster_time = Some(ms);
        }
        let start = cluster_time.unwrap_or(ms);
        if video && frame.keyframe {
            cues.push((ms, o.number, position - segment_start));
        }
        let payload = match o.track.codec {
            Codec::H264 => length_prefixed(&frame.data),
            _ => frame.data.clone(),
        };
        let mut block = Vec::with_capacity(payload.len() + 4);
        put_size(&mut block, o.number);
        block.extend_from_slice(&((ms - start) as i16).to_be_bytes());
        block.push(if !video || frame.keyframe { 0x80 } else { 0 });
        block.extend_from_slice(&payload);
        put_element(&mut cluster, id::SIMPLE_BLOCK, &block);
        frames += 1;
        last_ms = last_ms.max(ms + if video { 33 } else { 20 });
    }
    flush(&mut cluster, &mut cluster_time, &mut out, &mut position)?;

    let mut cue_bytes = Vec::new();
    put_master(&mut cue_bytes, id::CUES, |c| {
        for (time, track, cluster) in &cues {
            put_master(c, id::CUE_POINT, |p| {
                put_uint(p, id::CUE_TIME, *time);
                put_master(p, id::CUE_TRACK_POSITIONS, |t| {
                    put_uint(t, id::CUE_TRACK, *track);
                    put_uint(t, id::CUE_CLUSTER_POSITION, *cluster);
                });
            });
        }
    });
    if !cues.is_empty() {
        out.write_all(&cue_bytes)?;
        position += cue_bytes.len() as u64;
    }

    // Patch the segment size and the duration.
    let segment_size = position - segment_start;
    let mut size = [0u8; 8];
    size.copy_from_slice(&(segment_size | (1u64 << 56)).to_be_bytes());
    out.seek(SeekFrom::Start(segment_size_at))?;
    out.write_all(&size)?;
    out.seek(SeekFrom::Start(duration_at))?;
    out.write_all(&(last_ms as f64).to_be_bytes())?;
    out.seek(SeekFrom::End(0))?;
    out.flush()?;
    Ok(ExportSummary {
        container,
        tracks: outs.len(),
        frames,
        skipped_frames: skipped,
        duration_ms: last_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_the_shortest_vint() {
        let mut out = Vec::new();
        put_size(&mut out, 5);
        put_size(&mut out, 126);
        put_size(&mut out, 127);
        put_size(&mut out, 300);
        assert_eq!(out, [0x85, 0xFE, 0x40, 0x7F, 0x41, 0x2C]);
    }

    #[test]
    fn annex_b_becomes_length_prefixed() {
        let au = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 9, 9,
        ];
        assert_eq!(
            length_prefixed(&au),
            [0, 0, 0, 3, 0x67, 1, 2, 0, 0, 0, 2, 0x68, 3, 0, 0, 0, 3, 0x65, 9, 9]
        );
    }

    #[test]
    fn sps_dimensions_of_a_640x480_and_a_cropped_1920x1080_stream() {
        // Constrained baseline 640x480 (x264/openh264 style) and a High 1920x1080 SPS with
        // 8 lines of cropping.
        let sps_640 = [0x67, 0x42, 0xc0, 0x1e, 0xda, 0x02, 0x80, 0xf6, 0x84, 0x00];
        assert_eq!(sps_dimensions(&sps_640), Some((640, 480)));
        let sps_1080 = [
            0x67, 0x64, 0x00, 0x28, 0xac, 0xd9, 0x40, 0x78, 0x02, 0x27, 0xe5, 0x84, 0x00,
        ];
        assert_eq!(sps_dimensions(&sps_1080), Some((1920, 1080)));
    }
}
