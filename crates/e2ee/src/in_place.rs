//! Protect and open frames without allocating per frame: [`FrameBuffers`] keeps the scratch space
//! of the frame formats ([`crate::format`]) between frames, a protected frame is written into a
//! buffer the caller reuses, and a received frame is opened where it lies.
//!
//! The wire format is exactly [`crate::format`]'s (`format::protect` and `ProtectedFrame` stay as
//! the straightforward reference; property tests compare the two byte for byte). Opus, VP8 and
//! data frames are copied once on the way out (into the caller's buffer, where they are
//! encrypted) and not at all on the way in. H.264 frames cost one pass over the units each way:
//! the pieces to protect gathered and encrypted in one buffer, then escaped onto the wire; on the
//! way in, unescaped into one buffer, decrypted there, and put back over the received frame.
//!
//! ```
//! use consult_e2ee::in_place::FrameBuffers;
//! use consult_e2ee::sframe::{BaseKey, ReceiverKey, SenderKey, Suite};
//! use consult_e2ee::MediaFormat;
//!
//! let base = BaseKey::new(vec![1; 16]);
//! let sender = SenderKey::new(Suite::Aes128Gcm, 7, &base).unwrap();
//! let receiver = ReceiverKey::new(Suite::Aes128Gcm, 7, &base).unwrap();
//! let (mut outgoing, mut incoming) = (FrameBuffers::default(), FrameBuffers::default());
//! let mut wire = Vec::new();
//! outgoing.protect(MediaFormat::Opus, &sender, 0, b"an opus packet", &mut wire).unwrap();
//! let header = incoming.parse(MediaFormat::Opus, &wire).unwrap();
//! assert_eq!((header.kid, header.ctr), (7, 0));
//! let frame = incoming.open(&receiver, &mut wire).unwrap();
//! assert_eq!(&wire[frame], b"an opus packet");
//! ```

use std::ops::Range;

use crate::format::{
    escape_into, h264_clear_len, protected_unit, push_unit_metadata, split_annexb_into,
    trailing_zeros, unescape_into, vp8_clear_len, FormatError, MediaFormat, NalUnit, H264_TRAILER,
};
use crate::sframe::{Header, ReceiverKey, SenderKey, MAX_HEADER_LEN, TAG_LEN};

/// What [`FrameBuffers::parse`] found, for [`FrameBuffers::open`].
#[derive(Debug, Clone, Copy)]
struct Parsed {
    header: Header,
    /// Length of the frame parsed (`open` must be given the same bytes).
    len: usize,
    /// Opus, VP8 and data: the clear prefix's length. H.264: `None` (the layout is in the
    /// buffers).
    clear: Option<usize>,
}

/// Scratch space for protecting and opening frames, kept between frames (one per direction of a
/// connection, or one per key schedule). Frames of any format may go through the same buffers.
#[derive(Debug, Default)]
pub struct FrameBuffers {
    units: Vec<NalUnit>,
    /// H.264, per unit: its clear bytes' length and, if protected, its piece's plaintext length
    /// (going out) or where its escaped piece ends in the received frame (coming in).
    plan: Vec<(usize, Option<usize>)>,
    metadata: Vec<u8>,
    /// H.264: the pieces to protect, gathered (going out); the received pieces unescaped, in
    /// order — header, ciphertext, tag (coming in).
    pieces: Vec<u8>,
    parsed: Option<Parsed>,
}

impl FrameBuffers {
    /// Protect `frame` of `format` with `key` and counter `ctr`, replacing the contents of `out`
    /// with the protected frame (in its allocation, once it has grown to the frames' size).
    pub fn protect(
        &mut self,
        format: MediaFormat,
        key: &SenderKey,
        ctr: u64,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), FormatError> {
        match format {
            MediaFormat::Opus | MediaFormat::Data => key.seal(ctr, &[], frame, out)?,
            MediaFormat::Vp8 => {
                let first = *frame.first().ok_or(FormatError::Truncated)?;
                let clear = vp8_clear_len(first);
                if frame.len() < clear {
                    return Err(FormatError::Truncated);
                }
                key.seal(ctr, &frame[..clear], &frame[clear..], out)?;
            }
            MediaFormat::H264 => self.protect_h264(key, ctr, frame, out)?,
        }
        Ok(())
    }

    fn protect_h264(
        &mut self,
        key: &SenderKey,
        ctr: u64,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), FormatError> {
        split_annexb_into(frame, &mut self.units)?;
        self.metadata.clear();
        self.pieces.clear();
        self.plan.clear();
        let (mut first, mut last) = (None, None);
        for (n, u) in self.units.iter().enumerate() {
            let unit = &frame[u.unit.clone()];
            match h264_clear_len(unit[0]) {
                None => {
                    push_unit_metadata(&mut self.metadata, unit, None);
                    self.plan.push((unit.len(), None));
                }
                Some(clear) => {
                    let clear = clear.min(unit.len());
                    let piece = &unit[clear..];
                    push_unit_metadata(&mut self.metadata, &unit[..clear], Some(piece.len()));
                    self.pieces.extend_from_slice(piece);
                    self.plan.push((clear, Some(piece.len())));
                    first.get_or_insert(n);
                    last = Some(n);
                }
            }
        }
        let (Some(first), Some(last)) = (first, last) else {
            return Err(FormatError::NoProtectedUnit);
        };
        let mut header = [0u8; MAX_HEADER_LEN];
        let header_len = key.header(ctr, &mut header);
        let header = &header[..header_len];
        let tag = key.seal_detached(ctr, header, &self.metadata, &mut self.pieces)?;

        // The wire: each unit's lead and clear bytes, then its piece escaped with the header
        // before the first and the tag after the last, then the trailer.
        out.clear();
        out.reserve(frame.len() + header_len + TAG_LEN + frame.len() / 128 + 2 * self.units.len());
        let mut cursor = 0; // into `pieces`
        for (n, u) in self.units.iter().enumerate() {
            out.extend_from_slice(&frame[u.lead.clone()]);
            let unit = &frame[u.unit.clone()];
            let (clear, piece_len) = self.plan[n];
            out.extend_from_slice(&unit[..clear]);
            let Some(piece_len) = piece_len else {
                continue;
            };
            let mut zeros = trailing_zeros(&unit[..clear]);
            if n == first {
                zeros = escape_into(zeros, header, out);
            }
            zeros = escape_into(zeros, &self.pieces[cursor..cursor + piece_len], out);
            cursor += piece_len;
            if n == last {
                escape_into(zeros, &tag, out);
            }
            // `clear` is at most 1 + H264_CLEAR_SLICE_BYTES, well within the low seven bits.
            out.push(H264_TRAILER | clear as u8);
        }
        Ok(())
    }

    /// Read the SFrame header of a protected frame of `format` (which key opens it, and its
    /// counter), keeping what [`FrameBuffers::open`] needs. Nothing is decrypted yet.
    pub fn parse(&mut self, format: MediaFormat, data: &[u8]) -> Result<Header, FormatError> {
        self.parsed = None;
        let (header, clear) = match format {
            MediaFormat::Opus | MediaFormat::Data => (parse_simple(data, 0)?, Some(0)),
            MediaFormat::Vp8 => {
                let first = *data.first().ok_or(FormatError::Truncated)?;
                let clear = vp8_clear_len(first);
                (parse_simple(data, clear)?, Some(clear))
            }
            MediaFormat::H264 => (self.parse_h264(data)?, None),
        };
        self.parsed = Some(Parsed {
            header,
            len: data.len(),
            clear,
        });
        Ok(header)
    }

    fn parse_h264(&mut self, data: &[u8]) -> Result<Header, FormatError> {
        split_annexb_into(data, &mut self.units)?;
        self.pieces.clear();
        self.plan.clear();
        let mut protected = 0;
        for u in &self.units {
            let unit = &data[u.unit.clone()];
            match h264_clear_len(unit[0]) {
                None => self.plan.push((unit.len(), None)),
                Some(max_clear) => {
                    let (clear, body) = protected_unit(unit, max_clear)?;
                    unescape_into(
                        trailing_zeros(&body[..clear]),
                        &body[clear..],
                        &mut self.pieces,
                    );
                    // For now where this piece ends among the unescaped pieces.
                    self.plan.push((clear, Some(self.pieces.len())));
                    protected += 1;
                }
            }
        }
        if protected == 0 {
            return Err(FormatError::NoProtectedUnit);
        }
        let header = Header::parse(&self.pieces).map_err(|_| FormatError::Truncated)?;
        if self.pieces.len() < header.len + TAG_LEN {
            return Err(FormatError::Truncated);
        }
        // Each piece's plaintext length: its share of `header ‖ ciphertext ‖ tag` less the
        // header (first piece) and the tag (last); the metadata as the sender made it.
        let ciphertext_end = self.pieces.len() - TAG_LEN;
        self.metadata.clear();
        let mut start = 0;
        for (n, u) in self.units.iter().enumerate() {
            let (clear, piece_end) = self.plan[n];
            let unit = &data[u.unit.clone()];
            let piece_len = match piece_end {
                None => None,
                Some(end) => {
                    let from = start.max(header.len);
                    let to = end.min(ciphertext_end);
                    if to < from {
                        return Err(FormatError::Truncated);
                    }
                    start = end;
                    Some(to - from)
                }
            };
            self.plan[n].1 = piece_len;
            push_unit_metadata(&mut self.metadata, &unit[..clear], piece_len);
        }
        Ok(header)
    }

    /// Decrypt and authenticate the frame [`FrameBuffers::parse`] just read, with `key`, where it
    /// lies in `data` (the same bytes); where the original frame now is within `data`. On an
    /// error `data` may be partly decrypted or moved: drop it.
    pub fn open(
        &mut self,
        key: &ReceiverKey,
        data: &mut [u8],
    ) -> Result<Range<usize>, FormatError> {
        let parsed = self
            .parsed
            .take()
            .filter(|p| p.len == data.len())
            .ok_or(FormatError::Truncated)?;
        match parsed.clear {
            Some(clear) => {
                let (metadata, sframe) = data.split_at_mut(clear);
                let plaintext = key.open_in_place(metadata, sframe)?;
                // `metadata ‖ header ‖ plaintext`: the clear prefix moves up to the plaintext.
                let header_len = plaintext.start;
                data.copy_within(..clear, header_len);
                Ok(header_len..clear + plaintext.end)
            }
            None => self.open_h264(parsed.header, key, data),
        }
    }

    fn open_h264(
        &mut self,
        header: Header,
        key: &ReceiverKey,
        data: &mut [u8],
    ) -> Result<Range<usize>, FormatError> {
        let (head, body) = self.pieces.split_at_mut(header.len);
        let len = key.open_detached(head, &self.metadata, body)?;
        let plaintext = &body[..len];
        // Put the frame back over the received one, front to back: each unit comes back no longer
        // than it arrived (no header, tag, escapes or trailer), so nothing is overwritten before
        // it is read.
        let mut written = 0;
        let mut cursor = 0;
        for (n, u) in self.units.iter().enumerate() {
            let (clear, piece_len) = self.plan[n];
            let lead = u.lead.clone();
            data.copy_within(lead.clone(), written);
            written += lead.len();
            data.copy_within(u.unit.start..u.unit.start + clear, written);
            written += clear;
            if let Some(len) = piece_len {
                let piece = plaintext
                    .get(cursor..cursor + len)
                    .ok_or(FormatError::MalformedH264("pieces do not add up"))?;
                data[written..written + len].copy_from_slice(piece);
                written += len;
                cursor += len;
            }
        }
        Ok(0..written)
    }
}

/// The header of an Opus, VP8 or data frame, after its `clear` prefix.
fn parse_simple(data: &[u8], clear: usize) -> Result<Header, FormatError> {
    if data.len() <= clear {
        return Err(FormatError::Truncated);
    }
    let header = Header::parse(&data[clear..]).map_err(|_| FormatError::Truncated)?;
    if data.len() - clear < header.len + TAG_LEN {
        return Err(FormatError::Truncated);
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, RngCore, SeedableRng};

    use super::*;
    use crate::format::{protect, ProtectedFrame};
    use crate::sframe::{BaseKey, Suite};

    /// A random Annex-B access unit: start codes of three and four bytes, parameter sets, slices,
    /// SEI and tiny units, and bodies thick with zeros (the bytes emulation prevention is about).
    fn random_h264(rng: &mut StdRng) -> Vec<u8> {
        let mut frame = Vec::new();
        for _ in 0..rng.gen_range(1..6) {
            frame.extend_from_slice(if rng.gen_bool(0.5) {
                &[0, 0, 0, 1]
            } else {
                &[0, 0, 1]
            });
            let nal_type = [1u8, 5, 6, 7, 8, 9, 1, 5, 2, 20][rng.gen_range(0..10)];
            frame.push(0x60 | nal_type);
            for _ in 0..rng.gen_range(0..3000) {
                let b = match rng.gen_range(0..6) {
                    0 | 1 => 0,
                    2 => rng.gen_range(1..4),
                    _ => rng.gen_range(4..=255),
                };
                // Never a start code inside a unit (the encoder escapes them).
                let n = frame.len();
                if b <= 3 && n >= 2 && frame[n - 1] == 0 && frame[n - 2] == 0 {
                    frame.push(3);
                }
                frame.push(b);
            }
            // A unit never ends in zero (those would belong to the next start code).
            if frame.last() == Some(&0) {
                frame.push(0x80);
            }
        }
        frame
    }

    fn random_frame(rng: &mut StdRng, format: MediaFormat) -> Vec<u8> {
        match format {
            MediaFormat::H264 => random_h264(rng),
            MediaFormat::Vp8 => {
                let mut f = vec![0u8; rng.gen_range(10..12_000)];
                rng.fill_bytes(&mut f);
                f
            }
            MediaFormat::Opus | MediaFormat::Data => {
                let mut f = vec![0u8; rng.gen_range(0..4000)];
                rng.fill_bytes(&mut f);
                f
            }
        }
    }

    const FORMATS: [MediaFormat; 4] = [
        MediaFormat::Opus,
        MediaFormat::Vp8,
        MediaFormat::H264,
        MediaFormat::Data,
    ];

    #[test]
    fn in_place_equals_the_reference_format_byte_for_byte_both_ways() {
        let mut rng = StdRng::seed_from_u64(20);
        let (mut outgoing, mut incoming) = (FrameBuffers::default(), FrameBuffers::default());
        let mut wire = Vec::new();
        for round in 0..800 {
            let format = FORMATS[round % 4];
            let suite = [Suite::Aes128Gcm, Suite::Aes256Gcm][round / 4 % 2];
            let mut base = vec![0u8; suite.base_key_len()];
            rng.fill_bytes(&mut base);
            let base = BaseKey::new(base);
            let kid = rng.next_u64() >> rng.gen_range(0..64);
            let ctr = rng.next_u64() >> rng.gen_range(0..64);
            let sender = SenderKey::new(suite, kid, &base).unwrap();
            let receiver = ReceiverKey::new(suite, kid, &base).unwrap();
            let frame = random_frame(&mut rng, format);

            let reference = protect(format, &sender, ctr, &frame);
            let fast = outgoing.protect(format, &sender, ctr, &frame, &mut wire);
            match reference {
                Ok(reference) => {
                    fast.unwrap();
                    assert_eq!(wire, reference, "round {round} {format:?}");
                }
                Err(e) => {
                    assert_eq!(fast.unwrap_err(), e, "round {round}");
                    continue;
                }
            }
            // Opened in place, as the reference opens it.
            let header = incoming.parse(format, &wire).unwrap();
            assert_eq!((header.kid, header.ctr), (kid, ctr));
            let mut received = wire.clone();
            let opened = incoming.open(&receiver, &mut received).unwrap();
            assert_eq!(&received[opened], &frame[..], "round {round} {format:?}");
            let parsed = ProtectedFrame::parse(format, &wire).unwrap();
            assert_eq!(parsed.open(&receiver).unwrap(), frame);
        }
    }

    /// The reference's verdict on damaged bytes: opened (to what), or refused.
    fn reference_open(format: MediaFormat, key: &ReceiverKey, data: &[u8]) -> Option<Vec<u8>> {
        ProtectedFrame::parse(format, data).ok()?.open(key).ok()
    }

    fn fast_open(
        buffers: &mut FrameBuffers,
        format: MediaFormat,
        key: &ReceiverKey,
        data: &[u8],
    ) -> Option<Vec<u8>> {
        buffers.parse(format, data).ok()?;
        let mut data = data.to_vec();
        let range = buffers.open(key, &mut data).ok()?;
        Some(data[range].to_vec())
    }

    #[test]
    fn damaged_frames_get_the_reference_verdict() {
        let mut rng = StdRng::seed_from_u64(21);
        let base = BaseKey::new(vec![5; 16]);
        let sender = SenderKey::new(Suite::Aes128Gcm, 77, &base).unwrap();
        let receiver = ReceiverKey::new(Suite::Aes128Gcm, 77, &base).unwrap();
        let mut incoming = FrameBuffers::default();
        for round in 0..1500 {
            let format = FORMATS[round % 4];
            let frame = random_frame(&mut rng, format);
            let Ok(wire) = protect(format, &sender, round as u64, &frame) else {
                continue;
            };
            let mut damaged = wire.clone();
            match rng.gen_range(0..5) {
                // A bit flipped anywhere.
                0 | 1 => {
                    let at = rng.gen_range(0..damaged.len());
                    damaged[at] ^= 1 << rng.gen_range(0..8);
                }
                // Cut anywhere.
                2 => damaged.truncate(rng.gen_range(0..wire.len())),
                // A byte inserted or removed (a start code moved, an escape lost).
                3 => {
                    let at = rng.gen_range(0..damaged.len());
                    damaged.insert(at, [0, 1, 3][rng.gen_range(0..3)]);
                }
                _ => {
                    let at = rng.gen_range(0..damaged.len());
                    damaged.remove(at);
                }
            }
            let verdict = fast_open(&mut incoming, format, &receiver, &damaged);
            assert_eq!(
                verdict,
                reference_open(format, &receiver, &damaged),
                "round {round} {format:?}"
            );
            // Whatever opens is the frame that was sent, never something else.
            if let Some(opened) = verdict {
                assert_eq!(opened, frame, "round {round} {format:?}");
            }
        }
    }

    #[test]
    fn open_needs_the_bytes_just_parsed() {
        let base = BaseKey::new(vec![5; 16]);
        let sender = SenderKey::new(Suite::Aes128Gcm, 1, &base).unwrap();
        let receiver = ReceiverKey::new(Suite::Aes128Gcm, 1, &base).unwrap();
        let mut buffers = FrameBuffers::default();
        let mut wire = Vec::new();
        buffers
            .protect(MediaFormat::Opus, &sender, 0, b"first", &mut wire)
            .unwrap();
        // Nothing parsed: refused.
        assert!(buffers.open(&receiver, &mut wire.clone()).is_err());
        buffers.parse(MediaFormat::Opus, &wire).unwrap();
        // Other bytes than those parsed: refused.
        assert!(buffers.open(&receiver, &mut wire[1..].to_vec()).is_err());
        // And what was parsed is spent by an attempt.
        assert!(buffers.open(&receiver, &mut wire.clone()).is_err());
        buffers.parse(MediaFormat::Opus, &wire).unwrap();
        let range = buffers.open(&receiver, &mut wire).unwrap();
        assert_eq!(&wire[range], b"first");
    }
}
