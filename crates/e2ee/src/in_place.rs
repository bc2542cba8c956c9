//! Protect and open frames without allocating per frame: [`FrameBuffers`] keeps the scratch space
//! of the frame formats ([`crate::format`]) between frames, a protected frame is written into a
//! buffer the caller reuses, and a received frame is opened where it lies.
//!
//! The wire format is exactly [`crate::format`]'s (`format::protect` and `ProtectedFrame` stay as
//! the straightforward reference; property tests compare the two byte for byte). Opus, VP8 and
//! data frames are copied once on the way out (into the caller's buffer, where they are
//! encrypted) and not at all on the way in.
//!
//! H.264 frames are encrypted as one message whose pieces lie apart on the wire (each unit keeps
//! its start code and clear bytes), and the AEAD wants them together. Going out, the frame is
//! copied once onto the wire with its pieces side by side, sealed there, and every piece after
//! the first moved up to its place; then the sealed bytes are searched for what emulation
//! prevention would escape (`00 00` and a byte up to `03`: about one frame in 400 at 10 KiB),
//! and only such a frame is written again, escaped. The header is written escaped from the
//! start: a media stream's KID holds `00 00 01`. Coming in, one search for `00 00` finds the
//! start codes and the escapes; a frame with no escape after its header (almost every one) has
//! its pieces moved together, is opened there, and its pieces moved back apart; one with
//! escapes is unescaped into a buffer of its own and opened there.
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
    escape_into, h264_clear_len, needs_escape, protected_unit, push_unit_metadata,
    split_annexb_into, split_annexb_noting_escapes, trailing_zeros, unescape_into, vp8_clear_len,
    FormatError, MediaFormat, NalUnit, H264_TRAILER, MAX_NOTED_ESCAPES,
};
use crate::sframe::{Header, ReceiverKey, SenderKey, MAX_HEADER_LEN, TAG_LEN};

/// What [`FrameBuffers::parse`] found, for [`FrameBuffers::open`].
#[derive(Debug, Clone, Copy)]
struct Parsed {
    header: Header,
    /// Length of the frame parsed (`open` must be given the same bytes).
    len: usize,
    layout: Layout,
}

/// Where the protected bytes of a parsed frame are.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// Opus, VP8 and data: after a clear prefix of this length, in one stretch.
    Prefix(usize),
    /// H.264 without escapes after the header: in the received frame, each unit's piece between
    /// its clear bytes and its trailer (the units and their clear lengths in the buffers), the
    /// first starting with the header, escaped.
    H264InPlace {
        /// The header's bytes (unescaped).
        header: [u8; MAX_HEADER_LEN],
        /// The header's length on the wire, escaped.
        wire_len: usize,
    },
    /// H.264 with escapes: unescaped into the buffers' `pieces`.
    H264Unescaped,
}

/// Scratch space for protecting and opening frames, kept between frames (one per direction of a
/// connection, or one per key schedule). Frames of any format may go through the same buffers.
#[derive(Debug, Default)]
pub struct FrameBuffers {
    units: Vec<NalUnit>,
    /// H.264, per unit: its clear bytes' length and, if protected, its piece's plaintext length.
    plan: Vec<(usize, Option<usize>)>,
    metadata: Vec<u8>,
    /// H.264: the pieces to protect, gathered, when a frame must be escaped (going out); the
    /// received pieces unescaped, in order — header, ciphertext, tag — or, for a frame opened
    /// in place, the bytes between its pieces (coming in).
    pieces: Vec<u8>,
    /// H.264 coming in: where the frame holds `00 00 03`, noted as it is split.
    escapes: Vec<usize>,
    parsed: Option<Parsed>,
}

/// Write `bytes` just before `end` in `out`, and move `end` to their start (a wire written
/// from its end).
fn put_before(out: &mut [u8], end: &mut usize, bytes: &[u8]) {
    out[*end - bytes.len()..*end].copy_from_slice(bytes);
    *end -= bytes.len();
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
        self.plan.clear();
        let (mut first, mut last) = (None, None);
        let (mut pieces_len, mut protected) = (0, 0);
        for (n, u) in self.units.iter().enumerate() {
            let unit = &frame[u.unit.clone()];
            match h264_clear_len(unit[0]) {
                None => {
                    push_unit_metadata(&mut self.metadata, unit, None);
                    self.plan.push((unit.len(), None));
                }
                Some(clear) => {
                    let clear = clear.min(unit.len());
                    let piece_len = unit.len() - clear;
                    push_unit_metadata(&mut self.metadata, &unit[..clear], Some(piece_len));
                    self.plan.push((clear, Some(piece_len)));
                    pieces_len += piece_len;
                    protected += 1;
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

        // Staged: the frame up to the first piece as on the wire, the header escaped (a media
        // KID holds `00 00`), then every piece side by side, sealed where they lie.
        let first_piece = self.units[first].unit.start + self.plan[first].0;
        out.clear();
        out.reserve(frame.len() + 2 * MAX_HEADER_LEN + TAG_LEN + protected + frame.len() / 64);
        out.extend_from_slice(&frame[..first_piece]);
        let clear_zeros = trailing_zeros(&frame[self.units[first].unit.start..first_piece]);
        let header_zeros = escape_into(clear_zeros, header, out);
        let sealed_from = out.len();
        let wire_len = frame.len() + (sealed_from - first_piece) + TAG_LEN + protected;
        for (u, &(clear, piece)) in self.units[first..=last]
            .iter()
            .zip(&self.plan[first..=last])
        {
            if piece.is_some() {
                out.extend_from_slice(&frame[u.unit.start + clear..u.unit.end]);
            }
        }
        let tag = key.seal_detached(ctr, header, &self.metadata, &mut out[sealed_from..])?;

        // Spread, from the end of the wire back: the units after the last piece, then each piece
        // after the first moved up to its place with what precedes it written from the frame. A
        // piece only ever moves up (what lies between pieces is added), so none is overwritten
        // before it moves. Each protected unit is checked for bytes that need escaping.
        out.resize(wire_len, 0);
        let mut end = wire_len;
        let mut staged_end = sealed_from + pieces_len;
        let mut escape = false;
        for n in (first..self.units.len()).rev() {
            let u = &self.units[n];
            let (clear, piece) = self.plan[n];
            let Some(piece_len) = piece else {
                put_before(out, &mut end, &frame[u.unit.clone()]);
                put_before(out, &mut end, &frame[u.lead.clone()]);
                continue;
            };
            // `clear` is at most 1 + H264_CLEAR_SLICE_BYTES, well within the low seven bits.
            put_before(out, &mut end, &[H264_TRAILER | clear as u8]);
            let escaped_end = end;
            if n == last {
                put_before(out, &mut end, &tag);
            }
            let clear_bytes = &frame[u.unit.start..u.unit.start + clear];
            let zeros = trailing_zeros(clear_bytes);
            if n == first {
                // In place already: the frame before it, its clear bytes, the header, the piece
                // (checked from the zeros the escaped header ends with).
                debug_assert_eq!(end, sealed_from + piece_len);
                escape |= needs_escape(&out[sealed_from - header_zeros..escaped_end]);
                break;
            }
            out.copy_within(staged_end - piece_len..staged_end, end - piece_len);
            end -= piece_len;
            staged_end -= piece_len;
            put_before(out, &mut end, clear_bytes);
            escape |= needs_escape(&out[end + clear - zeros..escaped_end]);
            put_before(out, &mut end, &frame[u.lead.clone()]);
        }
        if escape {
            // Rare: sealed again into `pieces` (the same key, counter and bytes give the same
            // ciphertext and tag) and written out escaped.
            self.pieces.clear();
            for (u, &(clear, piece)) in self.units.iter().zip(&self.plan) {
                if piece.is_some() {
                    self.pieces
                        .extend_from_slice(&frame[u.unit.start + clear..u.unit.end]);
                }
            }
            let tag = key.seal_detached(ctr, header, &self.metadata, &mut self.pieces)?;
            self.write_escaped(frame, header, &tag, first, last, out);
        }
        Ok(())
    }

    /// The wire of an H.264 frame whose sealed pieces are in `pieces`: each unit's lead and
    /// clear bytes, then its piece escaped, with the header before the first and the tag after
    /// the last, then the trailer.
    fn write_escaped(
        &self,
        frame: &[u8],
        header: &[u8],
        tag: &[u8],
        first: usize,
        last: usize,
        out: &mut Vec<u8>,
    ) {
        out.clear();
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
                escape_into(zeros, tag, out);
            }
            out.push(H264_TRAILER | clear as u8);
        }
    }

    /// Read the SFrame header of a protected frame of `format` (which key opens it, and its
    /// counter), keeping what [`FrameBuffers::open`] needs. Nothing is decrypted yet.
    pub fn parse(&mut self, format: MediaFormat, data: &[u8]) -> Result<Header, FormatError> {
        self.parsed = None;
        let (header, layout) = match format {
            MediaFormat::Opus | MediaFormat::Data => (parse_simple(data, 0)?, Layout::Prefix(0)),
            MediaFormat::Vp8 => {
                let first = *data.first().ok_or(FormatError::Truncated)?;
                let clear = vp8_clear_len(first);
                (parse_simple(data, clear)?, Layout::Prefix(clear))
            }
            MediaFormat::H264 => self.parse_h264(data)?,
        };
        self.parsed = Some(Parsed {
            header,
            len: data.len(),
            layout,
        });
        Ok(header)
    }

    fn parse_h264(&mut self, data: &[u8]) -> Result<(Header, Layout), FormatError> {
        split_annexb_noting_escapes(data, &mut self.units, &mut self.escapes)?;
        self.plan.clear();
        // Each unit's clear length and, if protected, its piece's length on the wire; the header
        // (escaped at the start of the first piece); whether any piece holds an escape after it
        // (the escapes noted in order, so each unit skips those before it).
        let (mut first, mut last) = (None, None);
        let mut head = None;
        let mut escaped = self.escapes.len() > MAX_NOTED_ESCAPES;
        let mut escapes = self.escapes.iter().copied().peekable();
        for (n, u) in self.units.iter().enumerate() {
            let unit = &data[u.unit.clone()];
            match h264_clear_len(unit[0]) {
                None => self.plan.push((unit.len(), None)),
                Some(max_clear) => {
                    let (clear, body) = protected_unit(unit, max_clear)?;
                    let zeros = trailing_zeros(&body[..clear]);
                    let mut from = clear - zeros;
                    if first.is_none() {
                        match read_wire_header(zeros, &body[clear..]) {
                            Some(h) => {
                                from = clear + h.wire_len - h.zeros.min(2);
                                head = Some(h);
                            }
                            None => escaped = true,
                        }
                    }
                    let (from, to) = (u.unit.start + from, u.unit.start + body.len());
                    while escapes.next_if(|&at| at < from).is_some() {}
                    escaped = escaped || escapes.peek().is_some_and(|&at| at + 3 <= to);
                    self.plan.push((clear, Some(body.len() - clear)));
                    first.get_or_insert(n);
                    last = Some(n);
                }
            }
        }
        let (Some(first), Some(last)) = (first, last) else {
            return Err(FormatError::NoProtectedUnit);
        };
        // Opened in place when nothing after the header is escaped, and the tag lies whole in
        // the last piece; otherwise (escapes in the ciphertext, tiny units) the pieces are
        // unescaped into a buffer first.
        if let (false, Some(h)) = (escaped, head) {
            let piece_len = |n: usize| self.plan[n].1.unwrap_or(0);
            let needed = h.wire_len + if first == last { TAG_LEN } else { 0 };
            if piece_len(first) >= needed && piece_len(last) >= TAG_LEN {
                for (n, entry) in self.plan.iter_mut().enumerate() {
                    if let Some(len) = &mut entry.1 {
                        *len -= if n == first { h.wire_len } else { 0 };
                        *len -= if n == last { TAG_LEN } else { 0 };
                    }
                }
                self.push_metadata(data);
                let layout = Layout::H264InPlace {
                    header: h.bytes,
                    wire_len: h.wire_len,
                };
                return Ok((h.header, layout));
            }
        }
        self.unescape_pieces(data)
            .map(|h| (h, Layout::H264Unescaped))
    }

    /// Every unit's metadata, from the plan.
    fn push_metadata(&mut self, data: &[u8]) {
        self.metadata.clear();
        for (u, &(clear, piece_len)) in self.units.iter().zip(&self.plan) {
            push_unit_metadata(
                &mut self.metadata,
                &data[u.unit.start..u.unit.start + clear],
                piece_len,
            );
        }
    }

    /// The received pieces unescaped into `pieces`, in order; the header they start with.
    fn unescape_pieces(&mut self, data: &[u8]) -> Result<Header, FormatError> {
        self.pieces.clear();
        for (u, entry) in self.units.iter().zip(&mut self.plan) {
            if entry.1.is_some() {
                let body = &data[u.unit.start..u.unit.end - 1];
                let clear = entry.0;
                unescape_into(
                    trailing_zeros(&body[..clear]),
                    &body[clear..],
                    &mut self.pieces,
                );
                // For now where this piece ends among the unescaped pieces.
                entry.1 = Some(self.pieces.len());
            }
        }
        let header = Header::parse(&self.pieces).map_err(|_| FormatError::Truncated)?;
        if self.pieces.len() < header.len + TAG_LEN {
            return Err(FormatError::Truncated);
        }
        // Each piece's plaintext length: its share of `header ‖ ciphertext ‖ tag` less the
        // header (first piece) and the tag (last); the metadata as the sender made it.
        let ciphertext_end = self.pieces.len() - TAG_LEN;
        let mut start = 0;
        for entry in &mut self.plan {
            if let Some(end) = entry.1 {
                let from = start.max(header.len);
                let to = end.min(ciphertext_end);
                if to < from {
                    return Err(FormatError::Truncated);
                }
                start = end;
                entry.1 = Some(to - from);
            }
        }
        self.push_metadata(data);
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
        match parsed.layout {
            Layout::Prefix(clear) => {
                let (metadata, sframe) = data.split_at_mut(clear);
                let plaintext = key.open_in_place(metadata, sframe)?;
                // `metadata ‖ header ‖ plaintext`: the clear prefix moves up to the plaintext.
                let header_len = plaintext.start;
                data.copy_within(..clear, header_len);
                Ok(header_len..clear + plaintext.end)
            }
            Layout::H264InPlace { header, wire_len } => {
                self.open_h264_in_place(&header[..parsed.header.len], wire_len, key, data)
            }
            Layout::H264Unescaped => self.open_h264_unescaped(parsed.header, key, data),
        }
    }

    /// Where protected unit `n`'s piece lies in the received frame: from the end of its clear
    /// bytes to its trailer.
    fn piece_on_wire(&self, n: usize) -> Range<usize> {
        let u = &self.units[n];
        u.unit.start + self.plan[n].0..u.unit.end - 1
    }

    /// Open an H.264 frame without escapes where it lies: its pieces moved down together after
    /// the first (what lay between them kept aside), opened there, moved back up apart.
    fn open_h264_in_place(
        &mut self,
        header: &[u8],
        header_wire_len: usize,
        key: &ReceiverKey,
        data: &mut [u8],
    ) -> Result<Range<usize>, FormatError> {
        let protected = || (0..self.units.len()).filter(|&n| self.plan[n].1.is_some());
        let (Some(first), Some(last)) = (protected().next(), protected().next_back()) else {
            return Err(FormatError::NoProtectedUnit);
        };
        // Gathered: each later piece moved down to the end of the one before; what lay between
        // them (from after a trailer to the end of the next clear bytes) kept in `pieces`.
        self.pieces.clear();
        let first_piece = self.piece_on_wire(first);
        let (mut gathered, mut previous_end) = (first_piece.end, first_piece.end);
        for n in protected().skip(1) {
            let p = self.piece_on_wire(n);
            self.pieces
                .extend_from_slice(&data[previous_end + 1..p.start]);
            data.copy_within(p.clone(), gathered);
            gathered += p.len();
            previous_end = p.end;
        }
        let ciphertext = &mut data[first_piece.start + header_wire_len..gathered];
        let plaintext_len = key.open_detached(header, &self.metadata, ciphertext)?;

        // Spread, from the end back: the units after the last piece move down to follow it,
        // each later piece moves up to its place with what came before it put back, and the
        // frame before the first piece moves up over the header.
        let plaintext_start = first_piece.start + header_wire_len;
        let tail = previous_end + 1..data.len();
        let frame_end = plaintext_start + plaintext_len + self.pieces.len() + tail.len();
        let mut end = frame_end - tail.len();
        data.copy_within(tail, end);
        let mut plaintext_end = plaintext_start + plaintext_len;
        let mut between_end = self.pieces.len();
        let mut next_start = None;
        for n in (first..=last).rev().filter(|&n| self.plan[n].1.is_some()) {
            let p = self.piece_on_wire(n);
            if let Some(next_start) = next_start {
                // What lay between this piece's trailer and the next piece.
                let between = next_start - (p.end + 1);
                put_before(
                    data,
                    &mut end,
                    &self.pieces[between_end - between..between_end],
                );
                between_end -= between;
            }
            if n == first {
                break;
            }
            let len = self.plan[n].1.unwrap_or(0);
            data.copy_within(plaintext_end - len..plaintext_end, end - len);
            end -= len;
            plaintext_end -= len;
            next_start = Some(p.start);
        }
        debug_assert_eq!(end, plaintext_end);
        data.copy_within(..first_piece.start, header_wire_len);
        Ok(header_wire_len..frame_end)
    }

    /// Open an H.264 frame whose pieces were unescaped into `pieces`: decrypted there, and put
    /// back over the received frame.
    fn open_h264_unescaped(
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

/// The SFrame header at the start of an H.264 frame's first piece, as [`unescape_into`] reads it.
#[derive(Debug, Clone, Copy)]
struct WireHeader {
    header: Header,
    /// Its bytes, unescaped (the first `header.len`).
    bytes: [u8; MAX_HEADER_LEN],
    /// How many bytes of the piece it takes, escapes included.
    wire_len: usize,
    /// How many zero bytes end it (what follows is escaped with them before it).
    zeros: usize,
}

/// Read the header escaped at the start of `piece`, after `zeros` zero bytes of clear; `None`
/// if the piece ends first or it is malformed.
fn read_wire_header(mut zeros: usize, piece: &[u8]) -> Option<WireHeader> {
    let mut bytes = [0u8; MAX_HEADER_LEN];
    // After each unescaped byte: where it ends in the piece, and the zeros then behind.
    let mut ends = [(0usize, 0usize); MAX_HEADER_LEN];
    let mut n = 0;
    for (i, &b) in piece.iter().enumerate() {
        if n == MAX_HEADER_LEN {
            break;
        }
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        bytes[n] = b;
        ends[n] = (i + 1, zeros);
        n += 1;
    }
    let header = Header::parse(&bytes[..n]).ok()?;
    let (wire_len, zeros) = ends[header.len - 1];
    Some(WireHeader {
        header,
        bytes,
        wire_len,
        zeros,
    })
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
        // H.264 frames opened in place, and those unescaped first (escapes, or tiny units).
        let (mut in_place, mut unescaped) = (0, 0);
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
            match incoming.parsed.map(|p| p.layout) {
                Some(Layout::H264InPlace { .. }) => in_place += 1,
                Some(Layout::H264Unescaped) => unescaped += 1,
                _ => {}
            }
            let mut received = wire.clone();
            let opened = incoming.open(&receiver, &mut received).unwrap();
            assert_eq!(&received[opened], &frame[..], "round {round} {format:?}");
            let parsed = ProtectedFrame::parse(format, &wire).unwrap();
            assert_eq!(parsed.open(&receiver).unwrap(), frame);
        }
        // Both ways were taken, often (the frames are thick with zeros, escapes are common).
        assert!(
            in_place >= 100 && unescaped >= 1,
            "{in_place} in place, {unescaped} unescaped"
        );
    }

    /// One search for `00 00` splits a frame as the search for start codes does, and notes
    /// every `00 00 03` in order (up to one more than the most it keeps).
    #[test]
    fn splitting_notes_every_escape_and_finds_the_same_units() {
        let mut rng = StdRng::seed_from_u64(23);
        let base = BaseKey::new(vec![6; 16]);
        let sender = SenderKey::new(Suite::Aes128Gcm, 0x1234_0001, &base).unwrap();
        let (mut units, mut noted_units, mut escapes) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..600u64 {
            let frame = random_h264(&mut rng);
            let mut data = protect(MediaFormat::H264, &sender, round, &frame).unwrap_or(frame);
            if round % 3 == 0 && !data.is_empty() {
                let at = rng.gen_range(0..data.len());
                data.insert(at, [0, 1, 3][rng.gen_range(0..3)]);
            }
            let split = crate::format::split_annexb_into(&data, &mut units);
            let noted = split_annexb_noting_escapes(&data, &mut noted_units, &mut escapes);
            assert_eq!(noted, split, "round {round}");
            if split.is_ok() {
                let unit_ranges = |u: &[NalUnit]| {
                    u.iter()
                        .map(|u| (u.lead.clone(), u.unit.clone()))
                        .collect::<Vec<_>>()
                };
                assert_eq!(
                    unit_ranges(&noted_units),
                    unit_ranges(&units),
                    "round {round}"
                );
            }
            let every: Vec<usize> = memchr::memmem::find_iter(&data, &[0, 0, 3])
                .take(MAX_NOTED_ESCAPES + 1)
                .collect();
            if split.is_ok() {
                assert_eq!(escapes, every, "round {round}");
            }
        }
    }

    /// Escapes in units left clear (a parameter set) do not stop a frame opening in place; more
    /// than are noted send it the unescaped way; both open as the reference does.
    #[test]
    fn escapes_outside_the_pieces_and_too_many_escapes() {
        let base = BaseKey::new(vec![8; 16]);
        let sender = SenderKey::new(Suite::Aes128Gcm, 5, &base).unwrap();
        let receiver = ReceiverKey::new(Suite::Aes128Gcm, 5, &base).unwrap();
        let mut buffers = FrameBuffers::default();
        for (escapes, in_place) in [(10, true), (MAX_NOTED_ESCAPES + 1, false)] {
            let mut frame = vec![0, 0, 0, 1, 0x67, 0x42];
            for _ in 0..escapes {
                frame.extend_from_slice(&[0, 0, 3, 1, 0x42]);
            }
            frame.extend_from_slice(&[0, 0, 1, 0x65]);
            frame.extend((1..500u32).map(|i| (i * 7 % 250 + 4) as u8));
            let mut wire = protect(MediaFormat::H264, &sender, 1, &frame).unwrap();
            buffers.parse(MediaFormat::H264, &wire).unwrap();
            assert_eq!(
                matches!(
                    buffers.parsed.map(|p| p.layout),
                    Some(Layout::H264InPlace { .. })
                ),
                in_place,
                "{escapes} escapes"
            );
            let opened = buffers.open(&receiver, &mut wire).unwrap();
            assert_eq!(&wire[opened], &frame[..]);
        }
    }

    /// A media stream's KID holds `00 00 01` (`kid(tag, STREAM_MEDIA, epoch)`), so every
    /// header is escaped on the wire: such frames are still written and opened in place.
    #[test]
    fn headers_escaped_on_the_wire_still_open_in_place() {
        let kid = crate::schedule::kid(0x1234, crate::schedule::STREAM_MEDIA, 1);
        let base = BaseKey::new(vec![4; 16]);
        let sender = SenderKey::new(Suite::Aes128Gcm, kid, &base).unwrap();
        let receiver = ReceiverKey::new(Suite::Aes128Gcm, kid, &base).unwrap();
        let mut frame = vec![
            0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80,
        ];
        for header in [0x65u8, 0x41] {
            frame.extend_from_slice(&[0, 0, 1, header]);
            frame.extend((1..2000u32).map(|i| (i * 13 % 250 + 4) as u8));
        }
        let (mut outgoing, mut incoming) = (FrameBuffers::default(), FrameBuffers::default());
        let mut wire = Vec::new();
        let mut in_place = 0;
        for ctr in 0..200 {
            outgoing
                .protect(MediaFormat::H264, &sender, ctr, &frame, &mut wire)
                .unwrap();
            assert_eq!(
                wire,
                protect(MediaFormat::H264, &sender, ctr, &frame).unwrap()
            );
            assert!(
                wire.windows(4).any(|w| w == [0, 0, 3, 1]),
                "the header is escaped"
            );
            incoming.parse(MediaFormat::H264, &wire).unwrap();
            if matches!(
                incoming.parsed.map(|p| p.layout),
                Some(Layout::H264InPlace { .. })
            ) {
                in_place += 1;
            }
            let opened = incoming.open(&receiver, &mut wire).unwrap();
            assert_eq!(&wire[opened], &frame[..], "ctr {ctr}");
        }
        // All but the rare frame whose ciphertext needs escaping too.
        assert!(in_place >= 195, "{in_place} of 200 in place");
    }

    /// Ciphertext that emulation prevention must escape (one frame in a few hundred at these
    /// sizes, found by trying counters): written again escaped going out, unescaped coming in,
    /// byte for byte as the reference does.
    #[test]
    fn sealed_bytes_that_need_escaping_match_the_reference() {
        let mut rng = StdRng::seed_from_u64(22);
        let base = BaseKey::new(vec![9; 16]);
        let sender = SenderKey::new(Suite::Aes128Gcm, 3, &base).unwrap();
        let receiver = ReceiverKey::new(Suite::Aes128Gcm, 3, &base).unwrap();
        // SPS, then two slices of random bytes, escaped as an encoder would.
        let mut frame = vec![0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f];
        for header in [0x65u8, 0x41] {
            frame.extend_from_slice(&[0, 0, 1, header]);
            for _ in 0..24 * 1024 {
                let b = rng.gen_range(0..=255u8);
                let n = frame.len();
                if b <= 3 && frame[n - 1] == 0 && frame[n - 2] == 0 {
                    frame.push(3);
                }
                frame.push(b);
            }
            frame.push(0x80);
        }
        let (mut outgoing, mut incoming) = (FrameBuffers::default(), FrameBuffers::default());
        let (mut wire, mut escaped) = (Vec::new(), 0);
        for ctr in 0..5000u64 {
            outgoing
                .protect(MediaFormat::H264, &sender, ctr, &frame, &mut wire)
                .unwrap();
            assert_eq!(
                wire,
                protect(MediaFormat::H264, &sender, ctr, &frame).unwrap(),
                "ctr {ctr}"
            );
            let unescaped_len = frame.len() + Header::encode(3, ctr).len() + TAG_LEN + 2;
            let needed = wire.len() > unescaped_len;
            incoming.parse(MediaFormat::H264, &wire).unwrap();
            assert_eq!(
                matches!(
                    incoming.parsed.map(|p| p.layout),
                    Some(Layout::H264Unescaped)
                ),
                needed,
                "ctr {ctr}"
            );
            let opened = incoming.open(&receiver, &mut wire).unwrap();
            assert_eq!(&wire[opened], &frame[..], "ctr {ctr}");
            escaped += usize::from(needed);
            if escaped == 8 {
                return;
            }
        }
        panic!("only {escaped} frames needed escaping");
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
