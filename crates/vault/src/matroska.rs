//! Export of a recording's frames to a playable file: WebM when every video track is VP8,
//! Matroska when one is H.264 (WebM allows only VP8/VP9/AV1). Audio is Opus.
//!
//! A small EBML writer of the elements players need — EBML header, Segment with Info (and its
//! duration), Tracks (with the codec private data: OpusHead, avcC), one-second Clusters of
//! SimpleBlocks, and Cues at the video keyframes — since the `webm` crate wraps the C++ libwebm
//! and muxes no H.264.

use std::collections::BTreeMap;
use std::io::Write;

use crate::recording::{Codec, Frame, RecordingContents, Track, TrackRole};
use crate::VaultError;
use uuid::Uuid;

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
pub fn container_for(tracks: &BTreeMap<u8, Track>) -> Container {
    if tracks.values().any(|t| t.codec == Codec::H264) {
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
                            next = (i64::from(last) + i64::from(r.se()?)).rem_euclid(256) as i32;
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
              // In u64, so no field of a hostile SPS overflows; no level allows a side past 2048
              // macroblocks.
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_units = u64::from(r.ue()?) + 1;
    if width_mbs > MAX_SIDE_MBS || height_units > MAX_SIDE_MBS {
        return None;
    }
    let frame_mbs_only = u64::from(r.bit()?);
    if frame_mbs_only == 0 {
        r.bit()?;
    }
    r.bit()?; // direct_8x8_inference
    let (mut crop_x, mut crop_y) = (0u64, 0u64);
    if r.bit()? == 1 {
        let mut side = || r.ue().map(u64::from);
        let (left, right, top, bottom) = (side()?, side()?, side()?, side()?);
        let (unit_x, unit_y) = match chroma_format {
            0 => (1, 2 - frame_mbs_only),
            1 => (2, 2 * (2 - frame_mbs_only)),
            2 => (2, 2 - frame_mbs_only),
            _ => (1, 2 - frame_mbs_only),
        };
        crop_x = unit_x * (left + right);
        crop_y = unit_y * (top + bottom);
    }
    let width = u32::try_from((width_mbs * 16).checked_sub(crop_x)?).ok()?;
    let height =
        u32::try_from((height_units * 16 * (2 - frame_mbs_only)).checked_sub(crop_y)?).ok()?;
    Some((width, height))
}

/// The largest picture side an SPS may declare, in macroblocks (32,768 pixels).
const MAX_SIDE_MBS: u64 = 2048;

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

/// How the file describes a track: from its first usable frame.
#[derive(Debug, Clone)]
struct Description {
    codec_private: Vec<u8>,
    dimensions: Option<(u32, u32)>,
    channels: u8,
}

impl Description {
    /// From `frame`, the first usable one of a track of `codec`.
    fn of(codec: Codec, frame: &[u8]) -> Result<Self, VaultError> {
        Ok(match codec {
            Codec::Opus => {
                let stereo = frame.first().is_some_and(|toc| toc & 0x04 != 0);
                let channels = if stereo { 2 } else { 1 };
                Self {
                    codec_private: opus_head(channels),
                    dimensions: None,
                    channels,
                }
            }
            Codec::Vp8 => Self {
                codec_private: Vec::new(),
                dimensions: Some(vp8_dimensions(frame)?),
                channels: 0,
            },
            Codec::H264 => {
                let (avcc, w, h) = avc_config(frame)?;
                Self {
                    codec_private: avcc,
                    dimensions: Some((w, h)),
                    channels: 0,
                }
            }
        })
    }
}

/// A track of the file.
#[derive(Debug, Clone)]
struct PlannedTrack {
    id: u8,
    codec: Codec,
    role: TrackRole,
    /// Who sent it.
    participant: Uuid,
    /// Their name, when the export was given one ([`MuxPlan::name_participants`]).
    name: Option<String>,
    /// A shared screen (not the camera).
    screen: bool,
    number: u64,
    description: Description,
}

fn role_name(role: TrackRole) -> &'static str {
    role.name()
}

/// Which frames of a stream in time order the file keeps. Both passes of an export (the
/// [`MuxPlan`] scan and the [`write`]) apply it, so they agree frame for frame.
#[derive(Debug, Default)]
struct Selection {
    /// The latest time taken so far: an earlier frame is out of order and left out.
    latest_us: Option<u64>,
    /// Video tracks whose first keyframe has been seen.
    started: Vec<u8>,
}

impl Selection {
    /// Whether `frame` is in time order (not earlier than the latest taken): every frame passes
    /// here first, whatever its track.
    fn in_order(&mut self, frame: &Frame) -> bool {
        if self.latest_us.is_some_and(|latest| frame.at_us < latest) {
            return false;
        }
        self.latest_us = Some(frame.at_us);
        true
    }

    /// Whether a frame in order of a track of `codec` the file has goes into the file: video
    /// starts at its first keyframe that describes the track (dimensions, SPS and PPS), so one
    /// sender's malformed keyframe costs that track its frames up to the next good one, never
    /// the whole export.
    fn starts_or_continues(&mut self, frame: &Frame, codec: Codec) -> bool {
        if codec.is_video() && !self.started.contains(&frame.track) {
            if !frame.keyframe || Description::of(codec, &frame.data).is_err() {
                return false;
            }
            self.started.push(frame.track);
        }
        true
    }
}

/// What a streaming export must know before its first byte, from a first pass over the frames:
/// the tracks the file has (each described by its first usable frame), where time starts, and
/// the duration. [`write`] then streams the same frames a second time.
#[derive(Debug, Clone)]
pub struct MuxPlan {
    container: Container,
    tracks: Vec<PlannedTrack>,
    origin_us: u64,
    duration_ms: u64,
    frames: usize,
    skipped_frames: usize,
}

impl MuxPlan {
    /// Name each track after the person who sent it ("Ines Interpreter (interpreter) video"),
    /// for the participants `names` knows; the others keep their role alone ("patient video").
    /// Control characters are left out of a name.
    pub fn name_participants(&mut self, names: &std::collections::HashMap<Uuid, String>) {
        for track in &mut self.tracks {
            track.name = names.get(&track.participant).map(|name| {
                name.chars()
                    .filter(|c| !c.is_control())
                    .take(120)
                    .collect::<String>()
            });
        }
    }

    /// Scan `frames` (in time order; already opened: no track may be SFrame-protected) of a
    /// recording with `tracks`. Video starts at its first keyframe that describes it; a track
    /// with no usable frame is left out; so are frames out of time order.
    pub fn scan(
        tracks: &BTreeMap<u8, Track>,
        frames: impl IntoIterator<Item = Result<Frame, VaultError>>,
    ) -> Result<Self, VaultError> {
        if let Some(t) = tracks.values().find(|t| t.protected) {
            return Err(VaultError::Malformed(format!(
                "track {} is end-to-end encrypted: open its frames with the clinician's key first",
                t.id
            )));
        }
        #[derive(Default)]
        struct Seen {
            first_us: Option<u64>,
            described: Option<Description>,
            last_us: u64,
            kept: usize,
        }
        let mut seen: BTreeMap<u8, Seen> = BTreeMap::new();
        let mut selection = Selection::default();
        let mut total = 0usize;
        for frame in frames {
            let frame = frame?;
            total += 1;
            if !selection.in_order(&frame) {
                continue;
            }
            let Some(track) = tracks.get(&frame.track) else {
                continue;
            };
            let entry = seen.entry(track.id).or_default();
            entry.first_us.get_or_insert(frame.at_us);
            if !selection.starts_or_continues(&frame, track.codec) {
                continue;
            }
            if entry.described.is_none() {
                entry.described = Some(Description::of(track.codec, &frame.data)?);
            }
            entry.last_us = frame.at_us;
            entry.kept += 1;
        }
        let mut planned = Vec::new();
        let (mut origin_us, mut frames) = (None::<u64>, 0usize);
        for track in tracks.values() {
            let Some(Seen {
                first_us: Some(first_us),
                described: Some(description),
                kept,
                ..
            }) = seen.get(&track.id)
            else {
                continue;
            };
            origin_us = Some(origin_us.map_or(*first_us, |o: u64| o.min(*first_us)));
            frames += kept;
            planned.push(PlannedTrack {
                id: track.id,
                codec: track.codec,
                role: track.role,
                participant: track.participant,
                name: None,
                screen: track.screen,
                number: planned.len() as u64 + 1,
                description: description.clone(),
            });
        }
        let origin_us = origin_us.unwrap_or(0);
        let duration_ms = planned
            .iter()
            .filter_map(|t| {
                let last = seen.get(&t.id)?.last_us;
                Some(last.saturating_sub(origin_us) / 1000 + frame_ms(t.codec.is_video()))
            })
            .max()
            .unwrap_or(0);
        Ok(Self {
            container: container_for(tracks),
            tracks: planned,
            origin_us,
            duration_ms,
            frames,
            skipped_frames: total - frames,
        })
    }

    /// The container the file will be.
    pub fn container(&self) -> Container {
        self.container
    }

    /// What [`write`] will write: tracks, frames and duration.
    pub fn summary(&self) -> ExportSummary {
        ExportSummary {
            container: self.container,
            tracks: self.tracks.len(),
            frames: self.frames,
            skipped_frames: self.skipped_frames,
            duration_ms: self.duration_ms,
        }
    }

    fn track(&self, id: u8) -> Option<&PlannedTrack> {
        self.tracks.iter().find(|t| t.id == id)
    }
}

/// The length a frame covers at the end of the file: a 30 fps video frame, a 20 ms Opus packet.
fn frame_ms(video: bool) -> u64 {
    if video {
        33
    } else {
        20
    }
}

/// Write `contents` (frames already opened: no track may be SFrame-protected) as one file with
/// every track, times relative to the first frame. Holds the whole recording: see [`MuxPlan`]
/// and [`write`] for the streaming export.
pub fn export<W: Write>(contents: &RecordingContents, out: W) -> Result<ExportSummary, VaultError> {
    let frames = || contents.frames.iter().cloned().map(Ok);
    let plan = MuxPlan::scan(&contents.tracks, frames())?;
    write(&plan, frames(), out)
}

/// Stream `frames` — the same frames, in the same order, that `plan` scanned — into `out` as
/// one file. Nothing is held but the current cluster (about a second) and the cue list (a few
/// bytes per video keyframe); nothing seeks: the Segment's size is written as unknown (allowed
/// by EBML for streamed files; players find its end at the end of the file), and the duration
/// comes from the plan. Frames that differ from the plan's count are an error (the recording
/// changed between the passes).
pub fn write<W: Write>(
    plan: &MuxPlan,
    frames: impl IntoIterator<Item = Result<Frame, VaultError>>,
    mut out: W,
) -> Result<ExportSummary, VaultError> {
    let mut head = Vec::new();
    put_master(&mut head, id::EBML, |e| {
        put_uint(e, id::EBML_VERSION, 1);
        put_uint(e, id::EBML_READ_VERSION, 1);
        put_uint(e, id::EBML_MAX_ID_LENGTH, 4);
        put_uint(e, id::EBML_MAX_SIZE_LENGTH, 8);
        let (doc, version) = match plan.container {
            Container::WebM => ("webm", 4),
            Container::Matroska => ("matroska", 4),
        };
        put_element(e, id::DOC_TYPE, doc.as_bytes());
        put_uint(e, id::DOC_TYPE_VERSION, version);
        put_uint(e, id::DOC_TYPE_READ_VERSION, 2);
    });
    put_id(&mut head, id::SEGMENT);
    head.extend_from_slice(&UNKNOWN_SIZE);
    let segment_start = head.len() as u64;

    put_master(&mut head, id::INFO, |info| {
        put_uint(info, id::TIMECODE_SCALE, 1_000_000);
        put_element(info, id::MUXING_APP, b"consult-vault");
        put_element(info, id::WRITING_APP, b"consult recording export");
        put_float(info, id::DURATION, plan.duration_ms as f64);
    });
    put_master(&mut head, id::TRACKS, |tracks| {
        for t in &plan.tracks {
            put_master(tracks, id::TRACK_ENTRY, |e| put_track_entry(e, t));
        }
    });
    out.write_all(&head)?;
    let mut position = head.len() as u64;

    // Clusters of about a second; a video keyframe starts a new one after half a second.
    let mut selection = Selection::default();
    let mut cues: Vec<(u64, u64, u64)> = Vec::new();
    let mut cluster: Vec<u8> = Vec::new();
    let mut cluster_time: Option<u64> = None;
    let (mut written, mut skipped) = (0usize, 0usize);
    let flush = |cluster: &mut Vec<u8>,
                 cluster_time: &mut Option<u64>,
                 out: &mut W,
                 position: &mut u64|
     -> Result<(), VaultError> {
        if let Some(time) = cluster_time.take() {
            let mut timecode = Vec::new();
            put_uint(&mut timecode, id::TIMECODE, time);
            let mut element = Vec::with_capacity(16);
            put_id(&mut element, id::CLUSTER);
            put_size(&mut element, (timecode.len() + cluster.len()) as u64);
            element.extend_from_slice(&timecode);
            out.write_all(&element)?;
            out.write_all(cluster)?;
            *position += (element.len() + cluster.len()) as u64;
            cluster.clear();
        }
        Ok(())
    };
    for frame in frames {
        let frame = frame?;
        let in_order = selection.in_order(&frame);
        let Some(t) = plan.track(frame.track).filter(|_| in_order) else {
            skipped += 1;
            continue;
        };
        let video = t.codec.is_video();
        if !selection.starts_or_continues(&frame, t.codec) {
            skipped += 1;
            continue;
        }
        let ms = frame.at_us.saturating_sub(plan.origin_us) / 1000;
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
            cues.push((ms, t.number, position - segment_start));
        }
        let converted;
        let payload = match t.codec {
            Codec::H264 => {
                converted = length_prefixed(&frame.data);
                &converted
            }
            _ => &frame.data,
        };
        put_id(&mut cluster, id::SIMPLE_BLOCK);
        let mut block_head = Vec::with_capacity(4);
        put_size(&mut block_head, t.number);
        block_head.extend_from_slice(&((ms - start) as i16).to_be_bytes());
        block_head.push(if !video || frame.keyframe { 0x80 } else { 0 });
        put_size(&mut cluster, (block_head.len() + payload.len()) as u64);
        cluster.extend_from_slice(&block_head);
        cluster.extend_from_slice(payload);
        written += 1;
    }
    flush(&mut cluster, &mut cluster_time, &mut out, &mut position)?;
    if written != plan.frames {
        return Err(VaultError::Malformed(format!(
            "the recording changed while it was exported ({written} frames written, {} planned)",
            plan.frames
        )));
    }

    if !cues.is_empty() {
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
        out.write_all(&cue_bytes)?;
    }
    out.flush()?;
    Ok(ExportSummary {
        skipped_frames: skipped,
        ..plan.summary()
    })
}

/// An EBML size of 8 bytes, all ones: unknown (the Segment of a streamed file).
const UNKNOWN_SIZE: [u8; 8] = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];

fn put_track_entry(e: &mut Vec<u8>, t: &PlannedTrack) {
    put_uint(e, id::TRACK_NUMBER, t.number);
    put_uint(e, id::TRACK_UID, t.number);
    put_uint(e, id::FLAG_LACING, 0);
    let kind = match (t.codec.is_video(), t.screen) {
        (true, true) => "screen",
        (true, false) => "video",
        (false, _) => "audio",
    };
    let name = match &t.name {
        Some(name) => format!("{name} ({}) {kind}", role_name(t.role)),
        None => format!("{} {kind}", role_name(t.role)),
    };
    put_element(e, id::NAME, name.as_bytes());
    let codec_id = match t.codec {
        Codec::Opus => "A_OPUS",
        Codec::Vp8 => "V_VP8",
        Codec::H264 => "V_MPEG4/ISO/AVC",
    };
    put_element(e, id::CODEC_ID, codec_id.as_bytes());
    if !t.description.codec_private.is_empty() {
        put_element(e, id::CODEC_PRIVATE, &t.description.codec_private);
    }
    if let Some((w, h)) = t.description.dimensions {
        put_uint(e, id::TRACK_TYPE, 1);
        put_master(e, id::VIDEO, |v| {
            put_uint(v, id::PIXEL_WIDTH, u64::from(w));
            put_uint(v, id::PIXEL_HEIGHT, u64::from(h));
        });
    } else {
        put_uint(e, id::TRACK_TYPE, 2);
        put_master(e, id::AUDIO, |a| {
            put_float(a, id::SAMPLING_FREQUENCY, 48_000.0);
            put_uint(a, id::CHANNELS, u64::from(t.description.channels));
        });
    }
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
    fn a_write_whose_frames_differ_from_its_plan_is_an_error() {
        let track = Track {
            id: 0,
            codec: Codec::Opus,
            role: TrackRole::Patient,
            participant: uuid::Uuid::nil(),
            protected: false,
            screen: false,
        };
        let tracks = BTreeMap::from([(0, track)]);
        let frame = |at_us| Frame {
            track: 0,
            at_us,
            keyframe: false,
            data: vec![0x78, 1, 2],
        };
        let frames = [frame(0), frame(20_000), frame(40_000)];
        let plan = MuxPlan::scan(&tracks, frames.iter().cloned().map(Ok)).unwrap();
        assert_eq!((plan.summary().frames, plan.summary().duration_ms), (3, 60));
        let err = write(&plan, frames[..2].iter().cloned().map(Ok), Vec::new()).unwrap_err();
        assert!(
            err.to_string().contains("changed while it was exported"),
            "{err}"
        );
        let mut file = Vec::new();
        assert_eq!(
            write(&plan, frames.iter().cloned().map(Ok), &mut file).unwrap(),
            plan.summary()
        );
        // The Segment's size is unknown (streamed), the duration known.
        assert!(file
            .windows(12)
            .any(|w| w[..4] == [0x18, 0x53, 0x80, 0x67] && w[4..] == UNKNOWN_SIZE));
    }

    #[test]
    fn a_malformed_keyframe_costs_its_track_frames_up_to_the_next_good_one_not_the_export() {
        let track = |id, codec| Track {
            id,
            codec,
            role: TrackRole::Patient,
            participant: uuid::Uuid::nil(),
            protected: false,
            screen: false,
        };
        let contents = RecordingContents {
            tracks: BTreeMap::from([(0, track(0, Codec::Vp8)), (1, track(1, Codec::Opus))]),
            frames: (0..30u64)
                .flat_map(|n| {
                    // Frame 0 claims to be a keyframe but has no VP8 start code; 10 and 20 are good.
                    let video = match n {
                        0 => vec![0x10, 0x02, 0x00, 1, 2, 3, 4, 5, 6, 7],
                        10 | 20 => vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 64, 0, 48, 0],
                        _ => vec![0x11, 0x02, 0x00, 9],
                    };
                    [
                        Frame {
                            track: 0,
                            at_us: n * 33_000,
                            keyframe: n % 10 == 0,
                            data: video,
                        },
                        Frame {
                            track: 1,
                            at_us: n * 33_000 + 1,
                            keyframe: false,
                            data: vec![0x78, 1],
                        },
                    ]
                })
                .collect(),
            complete: true,
            ..Default::default()
        };
        let summary = export(&contents, Vec::new()).unwrap();
        assert_eq!(
            (summary.tracks, summary.frames, summary.skipped_frames),
            (2, 50, 10)
        );
    }

    /// An SPS of the baseline profile with the given picture size fields (exp-Golomb coded).
    fn baseline_sps(width_mbs_minus1: u32, height_units_minus1: u32, crop: [u32; 4]) -> Vec<u8> {
        let mut bits: Vec<u8> = Vec::new();
        let ue = |bits: &mut Vec<u8>, v: u32| {
            let coded = u64::from(v) + 1;
            let len = 64 - coded.leading_zeros();
            bits.extend(std::iter::repeat_n(0, len as usize - 1));
            bits.extend((0..len).rev().map(|i| ((coded >> i) & 1) as u8));
        };
        for v in [0, 0, 2, 0] {
            ue(&mut bits, v); // sps id, log2_max_frame_num, poc type 2, max_num_ref_frames
        }
        bits.push(0); // gaps allowed
        ue(&mut bits, width_mbs_minus1);
        ue(&mut bits, height_units_minus1);
        bits.extend([1, 1, 1]); // frame_mbs_only, direct_8x8, cropping
        for c in crop {
            ue(&mut bits, c);
        }
        bits.push(1);
        let mut sps = vec![0x67, 66, 0, 30];
        sps.extend(bits.chunks(8).map(|byte| {
            byte.iter()
                .enumerate()
                .fold(0u8, |acc, (i, b)| acc | (b << (7 - i)))
        }));
        sps
    }

    #[test]
    fn an_sps_past_any_level_or_cropped_past_its_size_has_no_dimensions_and_no_panic() {
        assert_eq!(
            sps_dimensions(&baseline_sps(39, 29, [0; 4])),
            Some((640, 480))
        );
        assert_eq!(
            sps_dimensions(&baseline_sps(u32::MAX - 1, 29, [0; 4])),
            None
        );
        assert_eq!(
            sps_dimensions(&baseline_sps(39, u32::MAX - 1, [0; 4])),
            None
        );
        assert_eq!(
            sps_dimensions(&baseline_sps(39, 29, [u32::MAX - 1, u32::MAX - 1, 0, 0])),
            None
        );
        assert_eq!(
            sps_dimensions(&baseline_sps(39, 29, [8, 8, 0, 4])),
            Some((608, 472))
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
