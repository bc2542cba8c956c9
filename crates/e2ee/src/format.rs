//! Frame formats: which bytes of an Opus, VP8 or H.264 frame stay in the clear (as SFrame
//! metadata, authenticated) so that RTP packetizers and depacketizers keep working, and where
//! the SFrame header, ciphertext and tag go. The layout is specified in the crate docs.
//!
//! ```
//! use consult_e2ee::format::{protect, ProtectedFrame};
//! use consult_e2ee::sframe::{BaseKey, ReceiverKey, SenderKey, Suite};
//! use consult_e2ee::MediaFormat;
//!
//! let base = BaseKey::new(vec![1; 16]);
//! let sender = SenderKey::new(Suite::Aes128Gcm, 7, &base).unwrap();
//! let receiver = ReceiverKey::new(Suite::Aes128Gcm, 7, &base).unwrap();
//! // An H.264 access unit: SPS, PPS, IDR slice.
//! let frame = [0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80,
//!              0, 0, 0, 1, 0x65, 0x88, 0x84, 0x00, 0x33, 0xff, 0xfe, 0xf6, 0xf0, 0xfe];
//! let sealed = protect(MediaFormat::H264, &sender, 0, &frame).unwrap();
//! assert_eq!(&sealed[..16], &frame[..16]); // SPS and PPS stay readable for the depacketizer
//! let parsed = ProtectedFrame::parse(MediaFormat::H264, &sealed).unwrap();
//! assert_eq!(parsed.kid(), 7);
//! assert_eq!(parsed.open(&receiver).unwrap(), frame);
//! ```

use std::ops::Range;

use crate::sframe::{Header, ReceiverKey, SenderKey, SframeError, TAG_LEN};

/// Bytes of a slice NAL unit after its header byte that stay in the clear: enough for
/// `first_mb_in_slice`, `slice_type` and `pic_parameter_set_id`, which receivers (Chromium's
/// depacketizer) parse before the decrypting transform runs.
pub const H264_CLEAR_SLICE_BYTES: usize = 6;
/// Clear bytes at the start of a VP8 keyframe: frame tag, start code, width and height.
pub const VP8_KEYFRAME_CLEAR_BYTES: usize = 10;
/// Clear bytes at the start of a VP8 delta frame: the frame tag.
pub const VP8_DELTA_CLEAR_BYTES: usize = 3;
/// The high bit of the trailer byte that ends every protected H.264 NAL unit; its low bits
/// carry the unit's clear length, which the receiver cannot infer when a unit is shorter than
/// its usual clear part (the SFrame header or tag then follow the clear bytes directly).
pub(crate) const H264_TRAILER: u8 = 0x80;

/// What kind of frame is protected, which decides what stays in the clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaFormat {
    /// An Opus packet: all encrypted.
    Opus,
    /// A VP8 frame: the frame tag (and for keyframes the start code and size) in the clear.
    Vp8,
    /// An H.264 access unit in Annex-B: parameter sets, NAL headers and slice-header starts in
    /// the clear, with emulation prevention on the ciphertext.
    H264,
    /// A data-channel message (chat, file frame): all encrypted.
    Data,
}

impl MediaFormat {
    /// Lower-case name, as in the test vectors.
    pub fn name(self) -> &'static str {
        match self {
            MediaFormat::Opus => "opus",
            MediaFormat::Vp8 => "vp8",
            MediaFormat::H264 => "h264",
            MediaFormat::Data => "data",
        }
    }
}

/// Why a frame could not be protected or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Too short for its format (a truncated frame).
    #[error("frame too short for its format")]
    Truncated,
    /// An H.264 frame that is not Annex-B, or whose protected units are malformed.
    #[error("malformed H.264 frame: {0}")]
    MalformedH264(&'static str),
    /// An H.264 frame with nothing to protect (no slice or other protected unit).
    #[error("H.264 frame has no unit to protect")]
    NoProtectedUnit,
    /// SFrame refused.
    #[error(transparent)]
    Sframe(#[from] SframeError),
}

pub(crate) fn vp8_clear_len(first_byte: u8) -> usize {
    if first_byte & 1 == 0 {
        VP8_KEYFRAME_CLEAR_BYTES
    } else {
        VP8_DELTA_CLEAR_BYTES
    }
}

/// Protect `frame` with `key` and counter `ctr`.
pub fn protect(
    format: MediaFormat,
    key: &SenderKey,
    ctr: u64,
    frame: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::with_capacity(frame.len() + 40);
    match format {
        MediaFormat::Opus | MediaFormat::Data => key.seal(ctr, &[], frame, &mut out)?,
        MediaFormat::Vp8 => {
            let first = *frame.first().ok_or(FormatError::Truncated)?;
            let clear = vp8_clear_len(first);
            if frame.len() < clear {
                return Err(FormatError::Truncated);
            }
            key.seal(ctr, &frame[..clear], &frame[clear..], &mut out)?;
        }
        MediaFormat::H264 => protect_h264(key, ctr, frame, &mut out)?,
    }
    Ok(out)
}

/// A received protected frame, parsed: its SFrame header tells which key opens it.
#[derive(Debug)]
pub struct ProtectedFrame<'a> {
    header: Header,
    metadata: Vec<u8>,
    sframe: std::borrow::Cow<'a, [u8]>,
    h264: Option<H264Layout<'a>>,
}

impl<'a> ProtectedFrame<'a> {
    /// Parse a protected frame of `format`.
    pub fn parse(format: MediaFormat, data: &'a [u8]) -> Result<Self, FormatError> {
        match format {
            MediaFormat::Opus | MediaFormat::Data => Self::simple(data, 0),
            MediaFormat::Vp8 => {
                let first = *data.first().ok_or(FormatError::Truncated)?;
                Self::simple(data, vp8_clear_len(first))
            }
            MediaFormat::H264 => parse_h264(data),
        }
    }

    fn simple(data: &'a [u8], clear: usize) -> Result<Self, FormatError> {
        if data.len() <= clear {
            return Err(FormatError::Truncated);
        }
        let (metadata, sframe) = data.split_at(clear);
        let header = Header::parse(sframe).map_err(|_| FormatError::Truncated)?;
        if sframe.len() < header.len + TAG_LEN {
            return Err(FormatError::Truncated);
        }
        Ok(Self {
            header,
            metadata: metadata.to_vec(),
            sframe: std::borrow::Cow::Borrowed(sframe),
            h264: None,
        })
    }

    /// The KID in the SFrame header.
    pub fn kid(&self) -> u64 {
        self.header.kid
    }

    /// The CTR in the SFrame header.
    pub fn ctr(&self) -> u64 {
        self.header.ctr
    }

    /// Decrypt and authenticate with `key`; the original frame.
    pub fn open(&self, key: &ReceiverKey) -> Result<Vec<u8>, FormatError> {
        // `metadata ‖ plaintext`: for Opus, VP8 and data the metadata is the clear prefix, so
        // this is the frame itself.
        let mut opened = Vec::with_capacity(self.metadata.len() + self.sframe.len());
        key.open_into(&self.metadata, &self.sframe, &mut opened)?;
        match &self.h264 {
            None => Ok(opened),
            Some(layout) => layout.rebuild(&opened[self.metadata.len()..]),
        }
    }
}

/// `00 00 01`, the end of every start code: its searcher is built once, not per frame.
static START_CODE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(&[0, 0, 1]));
/// `00 00`, after which emulation prevention may escape the next byte.
static ZERO_PAIR: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(&[0, 0]));
/// `00 00 03`, an emulation-prevention escape.
static ESCAPE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(&[0, 0, 3]));

/// Where each NAL unit of an Annex-B frame lies: the bytes before it (start code) and the unit.
#[derive(Debug, Clone)]
pub(crate) struct NalUnit {
    /// The start code (with any zero bytes before it) preceding the unit.
    pub(crate) lead: Range<usize>,
    /// The unit, header byte first.
    pub(crate) unit: Range<usize>,
}

/// Split an Annex-B access unit at its start codes.
fn split_annexb(frame: &[u8]) -> Result<Vec<NalUnit>, FormatError> {
    let mut units = Vec::new();
    split_annexb_into(frame, &mut units)?;
    Ok(units)
}

/// [`split_annexb`] into `units` (cleared first), reusing its allocation.
pub(crate) fn split_annexb_into(frame: &[u8], units: &mut Vec<NalUnit>) -> Result<(), FormatError> {
    units_at(frame, START_CODE.find_iter(frame), units)
}

/// At most this many escapes are noted by [`split_annexb_noting_escapes`]; one more means more.
pub(crate) const MAX_NOTED_ESCAPES: usize = 64;

/// [`split_annexb_into`], noting in `escapes` where `00 00 03` starts (escapes, in a protected
/// frame), in order, up to one more than [`MAX_NOTED_ESCAPES`]: one search for `00 00` finds
/// both, as each follows a run of two zeros or more.
pub(crate) fn split_annexb_noting_escapes(
    frame: &[u8],
    units: &mut Vec<NalUnit>,
    escapes: &mut Vec<usize>,
) -> Result<(), FormatError> {
    escapes.clear();
    let mut at = 0;
    let start_codes = std::iter::from_fn(|| loop {
        let run = at + ZERO_PAIR.find(frame.get(at..)?)?;
        let mut end = run + 2;
        while frame.get(end) == Some(&0) {
            end += 1;
        }
        at = end + 1;
        match frame.get(end) {
            Some(1) => return Some(end - 2),
            Some(3) if escapes.len() <= MAX_NOTED_ESCAPES => escapes.push(end - 2),
            _ => {}
        }
    });
    units_at(frame, start_codes, units)
}

/// The units of `frame` from where each `00 00 01` starts, in order, into `units` (cleared
/// first).
fn units_at(
    frame: &[u8],
    start_codes: impl Iterator<Item = usize>,
    units: &mut Vec<NalUnit>,
) -> Result<(), FormatError> {
    units.clear();
    // Each start code: its first zero, and the first byte after `00 00 01`.
    let mut previous: Option<(usize, usize)> = None;
    for i in start_codes {
        let mut start = i;
        while start > 0 && frame[start - 1] == 0 {
            start -= 1;
        }
        match previous {
            None if start != 0 => {
                return Err(FormatError::MalformedH264(
                    "does not start with a start code",
                ));
            }
            None => {}
            Some((lead_start, unit_start)) => {
                if start <= unit_start {
                    return Err(FormatError::MalformedH264("empty NAL unit"));
                }
                units.push(NalUnit {
                    lead: lead_start..unit_start,
                    unit: unit_start..start,
                });
            }
        }
        previous = Some((start, i + 3));
    }
    let Some((lead_start, unit_start)) = previous else {
        return Err(FormatError::MalformedH264(
            "does not start with a start code",
        ));
    };
    if frame.len() <= unit_start {
        return Err(FormatError::MalformedH264("empty NAL unit"));
    }
    units.push(NalUnit {
        lead: lead_start..unit_start,
        unit: unit_start..frame.len(),
    });
    Ok(())
}

/// How many leading bytes of a NAL unit stay clear, or `None` if the whole unit does.
pub(crate) fn h264_clear_len(header: u8) -> Option<usize> {
    match header & 0x1f {
        // SPS, PPS, access unit delimiter, end of sequence, end of stream, filler.
        7..=12 => None,
        // Slices: the header byte and the start of the slice header.
        1..=5 => Some(1 + H264_CLEAR_SLICE_BYTES),
        _ => Some(1),
    }
}

pub(crate) fn trailing_zeros(bytes: &[u8]) -> usize {
    bytes.iter().rev().take_while(|b| **b == 0).count().min(2)
}

/// Emulation prevention: insert `03` after `00 00` when the next byte is `00`–`03`. `zeros` is
/// the number of zero bytes just before `bytes` (at most 2 matter); the same count after them, to
/// escape what follows as one stream with them.
pub(crate) fn escape_into(mut zeros: usize, bytes: &[u8], out: &mut Vec<u8>) -> usize {
    out.reserve(bytes.len() + bytes.len() / 128 + 2);
    let mut i = 0;
    loop {
        // Byte by byte while zeros are behind us (the ones before, or a pair just found)...
        while zeros > 0 && i < bytes.len() {
            let b = bytes[i];
            if zeros >= 2 && b <= 3 {
                out.push(3);
                zeros = 0;
            }
            out.push(b);
            zeros = if b == 0 { zeros + 1 } else { 0 };
            i += 1;
        }
        if i >= bytes.len() {
            return zeros;
        }
        // ...then everything up to the next `00 00` in one go (ciphertext has one in 64 KiB).
        match ZERO_PAIR.find(&bytes[i..]) {
            None => {
                out.extend_from_slice(&bytes[i..]);
                return usize::from(bytes.last() == Some(&0));
            }
            Some(k) => {
                out.extend_from_slice(&bytes[i..i + k + 2]);
                i += k + 2;
                zeros = 2;
            }
        }
    }
}

/// Whether [`escape_into`] would change `bytes` (with no zeros before them): whether they hold
/// `00 00` and then a byte up to `03`. Each run of zeros is found at its start, so a run of
/// three or more is found too.
pub(crate) fn needs_escape(bytes: &[u8]) -> bool {
    ZERO_PAIR
        .find_iter(bytes)
        .any(|at| bytes.get(at + 2).is_some_and(|&b| b <= 3))
}

/// Undo [`escape_into`]: drop each `03` that follows `00 00`.
fn unescape(zeros: usize, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    unescape_into(zeros, bytes, &mut out);
    out
}

/// [`unescape`], appending to `out`.
pub(crate) fn unescape_into(mut zeros: usize, bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len());
    let mut i = 0;
    // Byte by byte while zeros from the clear part are still behind us...
    while i < bytes.len() && zeros > 0 {
        let b = bytes[i];
        i += 1;
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    // ...then copy the stretches between `00 00 03`, leaving out each `03`.
    let rest = &bytes[i..];
    let mut from = 0;
    for at in ESCAPE.find_iter(rest) {
        out.extend_from_slice(&rest[from..at + 2]);
        from = at + 3;
    }
    out.extend_from_slice(&rest[from..]);
}

/// A received protected NAL unit: its clear length (from its trailer byte, checked against the
/// unit and what its type keeps clear) and the unit without the trailer.
pub(crate) fn protected_unit(unit: &[u8], max_clear: usize) -> Result<(usize, &[u8]), FormatError> {
    let Some((&trailer, body)) = unit.split_last() else {
        return Err(FormatError::MalformedH264("empty NAL unit"));
    };
    let clear = usize::from(trailer & !H264_TRAILER);
    if trailer & H264_TRAILER == 0 || clear == 0 || clear > max_clear || clear > body.len() {
        return Err(FormatError::MalformedH264(
            "protected unit without a valid trailer",
        ));
    }
    Ok((clear, body))
}

/// The metadata of an H.264 frame: every unit's clear bytes and piece length, so that moving
/// bytes between units, or between clear and encrypted, fails authentication.
pub(crate) fn push_unit_metadata(metadata: &mut Vec<u8>, clear: &[u8], piece_len: Option<usize>) {
    metadata.push(u8::from(piece_len.is_some()));
    metadata.extend_from_slice(&(clear.len() as u32).to_be_bytes());
    metadata.extend_from_slice(clear);
    if let Some(len) = piece_len {
        metadata.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

fn protect_h264(
    key: &SenderKey,
    ctr: u64,
    frame: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FormatError> {
    let units = split_annexb(frame)?;
    let mut metadata = Vec::with_capacity(64);
    let mut plaintext = Vec::with_capacity(frame.len());
    // Per unit: clear length, and the piece length if protected.
    let mut plan = Vec::with_capacity(units.len());
    for u in &units {
        let unit = &frame[u.unit.clone()];
        match h264_clear_len(unit[0]) {
            None => {
                push_unit_metadata(&mut metadata, unit, None);
                plan.push((unit.len(), None));
            }
            Some(clear) => {
                let clear = clear.min(unit.len());
                let piece = &unit[clear..];
                push_unit_metadata(&mut metadata, &unit[..clear], Some(piece.len()));
                plaintext.extend_from_slice(piece);
                plan.push((clear, Some(piece.len())));
            }
        }
    }
    let protected: Vec<usize> = (0..plan.len()).filter(|i| plan[*i].1.is_some()).collect();
    let (Some(&first), Some(&last)) = (protected.first(), protected.last()) else {
        return Err(FormatError::NoProtectedUnit);
    };
    let mut sealed = Vec::with_capacity(metadata.len() + plaintext.len() + 32);
    key.seal(ctr, &metadata, &plaintext, &mut sealed)?;
    let sealed = &sealed[metadata.len()..];
    let header_len = Header::parse(sealed)?.len;
    let tag_len = key.suite().tag_len();

    out.clear();
    let mut cursor = 0; // into `sealed`
    for (n, u) in units.iter().enumerate() {
        out.extend_from_slice(&frame[u.lead.clone()]);
        let unit = &frame[u.unit.clone()];
        let (clear, piece_len) = plan[n];
        out.extend_from_slice(&unit[..clear]);
        let Some(piece_len) = piece_len else {
            continue;
        };
        let mut take = piece_len;
        if n == first {
            take += header_len;
        }
        if n == last {
            take += tag_len;
        }
        escape_into(
            trailing_zeros(&unit[..clear]),
            &sealed[cursor..cursor + take],
            out,
        );
        cursor += take;
        // `clear` is at most 1 + H264_CLEAR_SLICE_BYTES, well within the low seven bits.
        out.push(H264_TRAILER | clear as u8);
    }
    Ok(())
}

/// A parsed protected H.264 frame: how to put the decrypted pieces back.
#[derive(Debug)]
struct H264Layout<'a> {
    data: &'a [u8],
    /// Per unit: bytes before it, its clear bytes, and its piece's plaintext length if protected.
    units: Vec<(Range<usize>, Range<usize>, Option<usize>)>,
}

impl H264Layout<'_> {
    fn rebuild(&self, plaintext: &[u8]) -> Result<Vec<u8>, FormatError> {
        let mut out = Vec::with_capacity(self.data.len());
        let mut cursor = 0;
        for (lead, clear, piece) in &self.units {
            out.extend_from_slice(&self.data[lead.clone()]);
            out.extend_from_slice(&self.data[clear.clone()]);
            if let Some(len) = piece {
                let piece = plaintext
                    .get(cursor..cursor + len)
                    .ok_or(FormatError::MalformedH264("pieces do not add up"))?;
                out.extend_from_slice(piece);
                cursor += len;
            }
        }
        Ok(out)
    }
}

fn parse_h264(data: &[u8]) -> Result<ProtectedFrame<'_>, FormatError> {
    let units = split_annexb(data)?;
    let mut pieces = Vec::new(); // (unit index, unescaped bytes)
    let mut clears = Vec::with_capacity(units.len());
    for (n, u) in units.iter().enumerate() {
        let unit = &data[u.unit.clone()];
        match h264_clear_len(unit[0]) {
            None => clears.push(u.unit.clone()),
            Some(max_clear) => {
                let (clear, body) = protected_unit(unit, max_clear)?;
                clears.push(u.unit.start..u.unit.start + clear);
                pieces.push((n, unescape(trailing_zeros(&body[..clear]), &body[clear..])));
            }
        }
    }
    if pieces.is_empty() {
        return Err(FormatError::NoProtectedUnit);
    }
    let mut sealed = Vec::with_capacity(data.len());
    for (_, piece) in &pieces {
        sealed.extend_from_slice(piece);
    }
    let header = Header::parse(&sealed).map_err(|_| FormatError::Truncated)?;
    let last = pieces.len() - 1;
    let mut piece_lens = Vec::with_capacity(pieces.len());
    for (i, (_, piece)) in pieces.iter().enumerate() {
        let mut overhead = 0;
        if i == 0 {
            overhead += header.len;
        }
        if i == last {
            overhead += TAG_LEN;
        }
        let len = piece
            .len()
            .checked_sub(overhead)
            .ok_or(FormatError::Truncated)?;
        piece_lens.push(len);
    }
    let mut metadata = Vec::with_capacity(64);
    let mut layout = Vec::with_capacity(units.len());
    let mut next_piece = 0;
    for (n, u) in units.iter().enumerate() {
        let clear = clears[n].clone();
        let piece_len = match pieces.get(next_piece) {
            Some((idx, _)) if *idx == n => {
                next_piece += 1;
                Some(piece_lens[next_piece - 1])
            }
            _ => None,
        };
        push_unit_metadata(&mut metadata, &data[clear.clone()], piece_len);
        layout.push((u.lead.clone(), clear, piece_len));
    }
    Ok(ProtectedFrame {
        header,
        metadata,
        sframe: std::borrow::Cow::Owned(sealed),
        h264: Some(H264Layout {
            data,
            units: layout,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sframe::{BaseKey, Suite};

    fn keys(kid: u64) -> (SenderKey, ReceiverKey) {
        let base = BaseKey::new((0..16).collect());
        (
            SenderKey::new(Suite::Aes128Gcm, kid, &base).unwrap(),
            ReceiverKey::new(Suite::Aes128Gcm, kid, &base).unwrap(),
        )
    }

    fn roundtrip(format: MediaFormat, frame: &[u8]) -> Vec<u8> {
        let (s, r) = keys(0x1234_0001);
        let sealed = protect(format, &s, 5, frame).unwrap();
        let parsed = ProtectedFrame::parse(format, &sealed).unwrap();
        assert_eq!((parsed.kid(), parsed.ctr()), (0x1234_0001, 5));
        assert_eq!(parsed.open(&r).unwrap(), frame);
        sealed
    }

    fn has_start_code(bytes: &[u8]) -> bool {
        bytes.windows(3).any(|w| w == [0, 0, 1])
    }

    #[test]
    fn vp8_keeps_the_frame_tag_and_keyframe_size_in_the_clear() {
        let key = [
            0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01, 9, 9, 9, 9,
        ];
        let sealed = roundtrip(MediaFormat::Vp8, &key);
        assert_eq!(&sealed[..10], &key[..10]);
        let delta = [0x31, 0x04, 0x00, 5, 5, 5, 5, 5];
        let sealed = roundtrip(MediaFormat::Vp8, &delta);
        assert_eq!(&sealed[..3], &delta[..3]);
        assert_ne!(&sealed[3..8], &delta[3..8]);
    }

    #[test]
    fn opus_and_data_are_wholly_encrypted() {
        let sealed = roundtrip(MediaFormat::Opus, b"\xfc opus payload");
        assert!(!sealed.windows(5).any(|w| w == b"opus "));
        roundtrip(MediaFormat::Data, b"\x00hello");
    }

    #[test]
    fn h264_keeps_parameter_sets_and_slice_headers_and_escapes_the_ciphertext() {
        // SPS, PPS and three slices, one of them ending its clear part with zeros, one tiny.
        let mut frame = vec![0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40];
        frame.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
        frame.extend_from_slice(&[0, 0, 1, 0x65, 0xb8, 0x00, 0x00, 0x03, 0x00, 0x00]);
        frame.extend((0..3000).map(|i| if i % 7 == 3 { 0 } else { (i % 5 + 4) as u8 }));
        frame.extend_from_slice(&[0, 0, 1, 0x41, 0x9a]);
        frame.extend_from_slice(&[0, 0, 1, 0x41, 0x9a, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        for ctr in 0..200 {
            let (s, r) = keys(ctr);
            let sealed = protect(MediaFormat::H264, &s, ctr, &frame).unwrap();
            assert!(sealed.starts_with(&frame[..19]), "SPS and PPS in the clear");
            let units = split_annexb(&sealed).unwrap();
            assert_eq!(units.len(), 5, "no start code emulated in ciphertext");
            for u in &units {
                let unit = &sealed[u.unit.clone()];
                assert!(!has_start_code(unit));
                assert_ne!(*unit.last().unwrap(), 0, "no unit ends in zero");
            }
            assert_eq!(
                &sealed[u_start(&units, 2)..][..7],
                &frame[22..29],
                "slice header start in the clear"
            );
            let parsed = ProtectedFrame::parse(MediaFormat::H264, &sealed).unwrap();
            assert_eq!(parsed.open(&r).unwrap(), frame);
        }
    }

    /// The definition, byte by byte, that the fast versions must match.
    fn escape_slowly(mut zeros: usize, bytes: &[u8]) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        for &b in bytes {
            if zeros >= 2 && b <= 3 {
                out.push(3);
                zeros = 0;
            }
            out.push(b);
            zeros = if b == 0 { (zeros + 1).min(2) } else { 0 };
        }
        (out, zeros)
    }

    #[test]
    fn escaping_matches_its_definition_and_round_trips() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for case in 0..3000 {
            // Zero-heavy inputs, where emulation prevention has work to do.
            let len = rng.gen_range(0..64);
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    *[0u8, 0, 0, 1, 2, 3, 4, 0x80]
                        .get(rng.gen_range(0..8))
                        .unwrap()
                })
                .collect();
            let zeros = case % 3;
            let mut fast = Vec::new();
            let after = escape_into(zeros, &bytes, &mut fast);
            assert_eq!(
                (fast.clone(), after),
                escape_slowly(zeros, &bytes),
                "{bytes:?} after {zeros} zeros"
            );
            // Escaped in two pieces, the zeros carried across: the same bytes.
            let cut = rng.gen_range(0..=bytes.len());
            let mut pieces = Vec::new();
            let carried = escape_into(zeros, &bytes[..cut], &mut pieces);
            escape_into(carried, &bytes[cut..], &mut pieces);
            assert_eq!(pieces, fast, "{bytes:?} cut at {cut}");
            assert_eq!(
                unescape(zeros, &fast),
                bytes,
                "{bytes:?} after {zeros} zeros"
            );
            let mut framed = vec![0; zeros];
            framed.extend_from_slice(&fast);
            assert!(!framed
                .windows(3)
                .any(|w| w[0] == 0 && w[1] == 0 && w[2] <= 2));
        }
    }

    #[test]
    fn h264_units_shorter_than_their_clear_part_round_trip() {
        // Tiny slices (an all-skip P slice of a still scene) first, last and alone.
        let (s, r) = keys(3);
        for frame in [
            vec![0, 0, 0, 1, 0x41, 0x9a, 0x02],
            vec![
                0, 0, 1, 0x41, 0x9a, 0, 0, 1, 0x41, 0x9a, 1, 2, 3, 4, 5, 6, 7, 8,
            ],
            vec![0, 0, 1, 0x65, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 1, 0x41, 0x9a],
            vec![0, 0, 1, 0x06, 0x05, 0, 0, 1, 0x41],
        ] {
            let sealed = protect(MediaFormat::H264, &s, 1, &frame).unwrap();
            let parsed = ProtectedFrame::parse(MediaFormat::H264, &sealed).unwrap();
            assert_eq!(parsed.open(&r).unwrap(), frame);
        }
    }

    fn u_start(units: &[NalUnit], n: usize) -> usize {
        units[n].unit.start
    }

    #[test]
    fn h264_bytes_moved_between_units_fail_authentication() {
        let mut frame = vec![0, 0, 0, 1, 0x65];
        frame.extend(1..=100u8);
        frame.extend_from_slice(&[0, 0, 1, 0x41]);
        frame.extend(1..=100u8);
        let (s, r) = keys(1);
        let sealed = protect(MediaFormat::H264, &s, 0, &frame).unwrap();
        // Move the start code of the second unit four bytes later.
        let units = split_annexb(&sealed).unwrap();
        let at = units[1].lead.start;
        let mut moved = sealed.clone();
        let code: Vec<u8> = moved.drain(at..at + 3).collect();
        moved.splice(at + 4..at + 4, code);
        if let Ok(parsed) = ProtectedFrame::parse(MediaFormat::H264, &moved) {
            assert!(parsed.open(&r).is_err());
        }
    }

    #[test]
    fn malformed_frames_are_refused() {
        let (s, r) = keys(1);
        assert_eq!(
            protect(MediaFormat::H264, &s, 0, &[0x65, 1, 2]).unwrap_err(),
            FormatError::MalformedH264("does not start with a start code")
        );
        assert_eq!(
            protect(MediaFormat::H264, &s, 0, &[0, 0, 1, 0x67, 1, 2]).unwrap_err(),
            FormatError::NoProtectedUnit
        );
        assert_eq!(
            protect(MediaFormat::Vp8, &s, 0, &[0x10, 2]).unwrap_err(),
            FormatError::Truncated
        );
        let sealed = protect(MediaFormat::Opus, &s, 0, b"opus").unwrap();
        for cut in 0..sealed.len() {
            let parsed = ProtectedFrame::parse(MediaFormat::Opus, &sealed[..cut]);
            assert!(
                parsed.is_err() || parsed.unwrap().open(&r).is_err(),
                "cut {cut}"
            );
        }
        let h264 = protect(
            MediaFormat::H264,
            &s,
            0,
            &[0, 0, 1, 0x65, 9, 9, 9, 9, 9, 9, 9, 9],
        )
        .unwrap();
        for cut in 0..h264.len() {
            let parsed = ProtectedFrame::parse(MediaFormat::H264, &h264[..cut]);
            assert!(
                parsed.is_err() || parsed.unwrap().open(&r).is_err(),
                "cut {cut}"
            );
        }
    }
}
