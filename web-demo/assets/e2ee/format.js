// @ts-check
/**
 * Frame formats: which bytes of an Opus, VP8 or H.264 frame (or a data-channel message) stay in
 * the clear, as SFrame metadata, so that RTP packetizers and depacketizers keep working; and
 * where the SFrame header, ciphertext and tag go. Byte for byte the format of
 * `crates/e2ee/src/format.rs` (the reference; its crate docs specify it):
 *
 * - `opus`, `data`: `header ‖ ciphertext ‖ tag`, no metadata.
 * - `vp8`: the first 10 bytes of a keyframe (bit 0 of byte 0 is 0) or 3 of a delta frame stay
 *   in the clear and are the metadata: `clear ‖ header ‖ ciphertext ‖ tag`.
 * - `h264` (Annex-B): units split at start codes; SPS, PPS, AUD, end of sequence/stream and
 *   filler (types 7–12) wholly clear; slices (1–5) keep their header byte and 6 more bytes clear,
 *   other units their header byte; the rest of each unit is its piece. The pieces, concatenated,
 *   are the plaintext; `header ‖ ciphertext ‖ tag` is cut back into pieces of the same lengths
 *   (header before the first, tag after the last), each escaped against start-code emulation and
 *   ended with the trailer byte `0x80 | clear length`. Metadata: per unit `u8 protected ‖ u32 clear length ‖ clear ‖
 *   (u32 piece length)`.
 */

import { concat } from "./bytes.js";
import { decodeHeader, TAG_BYTES } from "./sframe.js";

/** @typedef {import('./sframe.js').SFrameKey} SFrameKey */

/** @typedef {"opus" | "vp8" | "h264" | "data"} MediaFormat */

/** Slice bytes after the NAL header byte that stay clear (first_mb_in_slice, slice_type, pps_id). */
export const H264_CLEAR_SLICE_BYTES = 6;
/** Clear bytes at the start of a VP8 keyframe: frame tag, start code, width and height. */
export const VP8_KEYFRAME_CLEAR_BYTES = 10;
/** Clear bytes at the start of a VP8 delta frame: the frame tag. */
export const VP8_DELTA_CLEAR_BYTES = 3;
/**
 * High bit of the trailer byte that ends every protected H.264 NAL unit; its low bits carry the
 * unit's clear length, which a receiver cannot infer when a unit is shorter than its usual clear
 * part (the SFrame header or tag then follow the clear bytes directly).
 */
const H264_TRAILER = 0x80;

/**
 * Why a frame could not be protected or parsed: `truncated` (too short for its format),
 * `malformed` (H.264 that is not Annex-B, or a protected unit without a valid trailer),
 * `no-protected-unit` (H.264 with nothing to encrypt).
 */
export class FormatError extends Error {
  /**
   * @param {"truncated" | "malformed" | "no-protected-unit"} reason
   * @param {string} message
   */
  constructor(reason, message) {
    super(message);
    this.name = "FormatError";
    this.reason = reason;
  }
}

/**
 * Whether the VP8 frame starting with this byte is a keyframe (RFC 6386 frame tag: bit 0 is the
 * inverse keyframe flag).
 * @param {number} firstByte
 */
export function isVp8Keyframe(firstByte) {
  return (firstByte & 1) === 0;
}

/** @param {number} firstByte */
function vp8ClearLength(firstByte) {
  return isVp8Keyframe(firstByte) ? VP8_KEYFRAME_CLEAR_BYTES : VP8_DELTA_CLEAR_BYTES;
}

/**
 * Protect `frame` with `key` under counter `ctr`.
 * @param {MediaFormat} format
 * @param {SFrameKey} key
 * @param {bigint} ctr
 * @param {Uint8Array} frame
 * @returns {Promise<Uint8Array>}
 */
export async function protectFrame(format, key, ctr, frame) {
  switch (format) {
    case "opus":
    case "data":
      return key.seal(ctr, new Uint8Array(0), frame);
    case "vp8": {
      if (frame.length === 0) throw new FormatError("truncated", "empty VP8 frame");
      const clear = vp8ClearLength(frame[0]);
      if (frame.length < clear) throw new FormatError("truncated", "VP8 frame shorter than its clear prefix");
      const metadata = frame.subarray(0, clear);
      return concat(metadata, await key.seal(ctr, metadata, frame.subarray(clear)));
    }
    case "h264":
      return protectH264(key, ctr, frame);
  }
}

/**
 * A received protected frame, parsed: its KID says which key opens it.
 * @typedef {object} ParsedFrame
 * @property {bigint} kid
 * @property {bigint} ctr
 * @property {Uint8Array} metadata
 * @property {Uint8Array} sframe `header ‖ ciphertext ‖ tag`
 * @property {(plaintext: Uint8Array) => Uint8Array} rebuild The original frame from the plaintext.
 */

/**
 * Parse a protected frame of `format` (throws {@link FormatError}).
 * @param {MediaFormat} format
 * @param {Uint8Array} data
 * @returns {ParsedFrame}
 */
export function parseProtected(format, data) {
  switch (format) {
    case "opus":
    case "data":
      return parseSimple(data, 0);
    case "vp8":
      if (data.length === 0) throw new FormatError("truncated", "empty VP8 frame");
      return parseSimple(data, vp8ClearLength(data[0]));
    case "h264":
      return parseH264(data);
  }
}

/**
 * Open a parsed frame with its key: the original frame (throws `SFrameError` or
 * {@link FormatError}).
 * @param {ParsedFrame} parsed
 * @param {SFrameKey} key
 */
export async function openFrame(parsed, key) {
  const { plaintext } = await key.open(parsed.metadata, parsed.sframe);
  return parsed.rebuild(plaintext);
}

/**
 * `clear ‖ header ‖ ciphertext ‖ tag`.
 * @param {Uint8Array} data
 * @param {number} clear
 * @returns {ParsedFrame}
 */
function parseSimple(data, clear) {
  if (data.length <= clear) throw new FormatError("truncated", "frame shorter than its clear prefix and header");
  const metadata = data.subarray(0, clear);
  const sframe = data.subarray(clear);
  const header = headerOf(sframe);
  if (sframe.length < header.length + TAG_BYTES) throw new FormatError("truncated", "frame shorter than header and tag");
  return {
    kid: header.kid,
    ctr: header.ctr,
    metadata,
    sframe,
    rebuild: (plaintext) => concat(metadata, plaintext),
  };
}

/**
 * The SFrame header at the start of `bytes`; a missing or cut header is a truncated frame.
 * @param {Uint8Array} bytes
 */
function headerOf(bytes) {
  try {
    return decodeHeader(bytes);
  } catch {
    throw new FormatError("truncated", "SFrame header missing or cut");
  }
}

// -------------------------------------------------------------------------------------------------
// H.264
// -------------------------------------------------------------------------------------------------

/**
 * One NAL unit of an Annex-B frame: where its start code (with any zero bytes before it) begins,
 * and where the unit (header byte first) begins and ends.
 * @typedef {{ lead: number, start: number, end: number }} NalUnit
 */

/**
 * Split an Annex-B access unit at its start codes (`00 00 01`; zero bytes before one belong to it).
 * @param {Uint8Array} frame
 * @returns {NalUnit[]}
 */
export function splitAnnexB(frame) {
  /** @type {[number, number][]} (first zero of the start code, first byte after 00 00 01) */
  const codes = [];
  let i = 0;
  while (i + 2 < frame.length) {
    if (frame[i] === 0 && frame[i + 1] === 0 && frame[i + 2] === 1) {
      let start = i;
      while (start > 0 && frame[start - 1] === 0) start -= 1;
      codes.push([start, i + 3]);
      i += 3;
    } else {
      i += 1;
    }
  }
  if (codes.length === 0 || codes[0][0] !== 0) throw new FormatError("malformed", "H.264 frame does not start with a start code");
  /** @type {NalUnit[]} */
  const units = [];
  for (let n = 0; n < codes.length; n++) {
    const [lead, start] = codes[n];
    const end = n + 1 < codes.length ? codes[n + 1][0] : frame.length;
    if (end <= start) throw new FormatError("malformed", "empty NAL unit");
    units.push({ lead, start, end });
  }
  return units;
}

/**
 * How many leading bytes of a NAL unit stay clear, or null if the whole unit does.
 * @param {number} header The NAL header byte.
 */
function h264ClearLength(header) {
  const type = header & 0x1f;
  if (type >= 7 && type <= 12) return null; // SPS, PPS, AUD, end of sequence/stream, filler
  if (type >= 1 && type <= 5) return 1 + H264_CLEAR_SLICE_BYTES; // slices
  return 1;
}

/**
 * Zero bytes at the end of `bytes`, at most 2 (all that matters for emulation prevention).
 * @param {Uint8Array} bytes
 */
function trailingZeros(bytes) {
  let n = 0;
  for (let i = bytes.length - 1; i >= 0 && bytes[i] === 0 && n < 2; i--) n += 1;
  return n;
}

/**
 * Emulation prevention: insert `03` after `00 00` when the next byte is `00`–`03`. `zeros`: the
 * zero bytes just before `bytes` (the end of the unit's clear part).
 * @param {number} zeros
 * @param {Uint8Array} bytes
 * @param {ByteWriter} out
 */
function escapeInto(zeros, bytes, out) {
  for (const b of bytes) {
    if (zeros >= 2 && b <= 3) {
      out.u8(3);
      zeros = 0;
    }
    out.u8(b);
    zeros = b === 0 ? zeros + 1 : 0;
  }
}

/**
 * Undo {@link escapeInto}.
 * @param {number} zeros
 * @param {Uint8Array} bytes
 */
function unescape(zeros, bytes) {
  const out = new Uint8Array(bytes.length);
  let n = 0;
  for (const b of bytes) {
    if (zeros >= 2 && b === 3) {
      zeros = 0;
      continue;
    }
    out[n++] = b;
    zeros = b === 0 ? zeros + 1 : 0;
  }
  return out.subarray(0, n);
}

/**
 * A growing byte buffer (the H.264 metadata and output).
 */
class ByteWriter {
  /** @param {number} capacity */
  constructor(capacity) {
    this.bytes = new Uint8Array(Math.max(16, capacity));
    this.length = 0;
  }

  /**
   * @private
   * @param {number} more
   */
  reserve(more) {
    if (this.length + more <= this.bytes.length) return;
    const grown = new Uint8Array(Math.max(this.bytes.length * 2, this.length + more));
    grown.set(this.bytes.subarray(0, this.length));
    this.bytes = grown;
  }

  /** @param {number} value */
  u8(value) {
    this.reserve(1);
    this.bytes[this.length++] = value;
  }

  /** @param {number} value */
  u32(value) {
    this.reserve(4);
    new DataView(this.bytes.buffer).setUint32(this.length, value);
    this.length += 4;
  }

  /** @param {Uint8Array} data */
  append(data) {
    this.reserve(data.length);
    this.bytes.set(data, this.length);
    this.length += data.length;
  }

  finish() {
    return this.bytes.subarray(0, this.length);
  }
}

/**
 * One unit's part of the metadata.
 * @param {ByteWriter} metadata
 * @param {Uint8Array} clear
 * @param {number | null} pieceLength null for a wholly clear unit.
 */
function pushUnitMetadata(metadata, clear, pieceLength) {
  metadata.u8(pieceLength === null ? 0 : 1);
  metadata.u32(clear.length);
  metadata.append(clear);
  if (pieceLength !== null) metadata.u32(pieceLength);
}

/**
 * @param {SFrameKey} key
 * @param {bigint} ctr
 * @param {Uint8Array} frame
 */
async function protectH264(key, ctr, frame) {
  const units = splitAnnexB(frame);
  const metadata = new ByteWriter(64 + 16 * units.length);
  /** @type {Uint8Array[]} */
  const pieces = [];
  /** @type {{ clear: number, piece: number | null }[]} */
  const plan = [];
  for (const u of units) {
    const unit = frame.subarray(u.start, u.end);
    const clearLength = h264ClearLength(unit[0]);
    if (clearLength === null) {
      pushUnitMetadata(metadata, unit, null);
      plan.push({ clear: unit.length, piece: null });
    } else {
      const clear = Math.min(clearLength, unit.length);
      const piece = unit.subarray(clear);
      pushUnitMetadata(metadata, unit.subarray(0, clear), piece.length);
      pieces.push(piece);
      plan.push({ clear, piece: piece.length });
    }
  }
  const protectedUnits = plan.flatMap((p, n) => (p.piece === null ? [] : [n]));
  if (protectedUnits.length === 0) throw new FormatError("no-protected-unit", "H.264 frame has no unit to protect");
  const first = protectedUnits[0];
  const last = protectedUnits[protectedUnits.length - 1];
  const sealed = await key.seal(ctr, metadata.finish(), concat(...pieces));
  const headerLength = decodeHeader(sealed).length;

  // Escaping adds at most one byte in three; the writer grows if a frame needs more anyway.
  const out = new ByteWriter(frame.length + (frame.length >> 3) + 2 * units.length + 64);
  let cursor = 0;
  for (let n = 0; n < units.length; n++) {
    const u = units[n];
    out.append(frame.subarray(u.lead, u.start));
    const { clear, piece } = plan[n];
    const clearBytes = frame.subarray(u.start, u.start + clear);
    out.append(clearBytes);
    if (piece === null) continue;
    let take = piece;
    if (n === first) take += headerLength;
    if (n === last) take += TAG_BYTES;
    escapeInto(trailingZeros(clearBytes), sealed.subarray(cursor, cursor + take), out);
    cursor += take;
    out.u8(H264_TRAILER | clear);
  }
  return out.finish();
}

/**
 * @param {Uint8Array} data
 * @returns {ParsedFrame}
 */
function parseH264(data) {
  const units = splitAnnexB(data);
  /** @type {{ unit: number, bytes: Uint8Array }[]} */
  const pieces = [];
  /** @type {{ start: number, end: number }[]} */
  const clears = [];
  for (let n = 0; n < units.length; n++) {
    const u = units[n];
    const unit = data.subarray(u.start, u.end);
    const clearLength = h264ClearLength(unit[0]);
    if (clearLength === null) {
      clears.push({ start: u.start, end: u.end });
      continue;
    }
    const trailer = unit[unit.length - 1];
    const body = unit.subarray(0, unit.length - 1);
    const clear = trailer & ~H264_TRAILER & 0xff;
    if ((trailer & H264_TRAILER) === 0 || clear === 0 || clear > clearLength || clear > body.length) {
      throw new FormatError("malformed", "protected unit without a valid trailer");
    }
    clears.push({ start: u.start, end: u.start + clear });
    pieces.push({ unit: n, bytes: unescape(trailingZeros(body.subarray(0, clear)), body.subarray(clear)) });
  }
  if (pieces.length === 0) throw new FormatError("no-protected-unit", "H.264 frame has no protected unit");
  const sframe = concat(...pieces.map((p) => p.bytes));
  const header = headerOf(sframe);
  const lastPiece = pieces.length - 1;
  /** @type {Map<number, number>} unit index → the piece's plaintext length */
  const pieceLengths = new Map();
  pieces.forEach((p, i) => {
    const overhead = (i === 0 ? header.length : 0) + (i === lastPiece ? TAG_BYTES : 0);
    const length = p.bytes.length - overhead;
    if (length < 0) throw new FormatError("truncated", "protected unit shorter than its header or tag");
    pieceLengths.set(p.unit, length);
  });
  const metadata = new ByteWriter(64 + 16 * units.length);
  for (let n = 0; n < units.length; n++) {
    pushUnitMetadata(metadata, data.subarray(clears[n].start, clears[n].end), pieceLengths.get(n) ?? null);
  }
  return {
    kid: header.kid,
    ctr: header.ctr,
    metadata: metadata.finish(),
    sframe,
    rebuild(plaintext) {
      /** @type {Uint8Array[]} */
      const parts = [];
      let cursor = 0;
      for (let n = 0; n < units.length; n++) {
        parts.push(data.subarray(units[n].lead, units[n].start), data.subarray(clears[n].start, clears[n].end));
        const length = pieceLengths.get(n);
        if (length === undefined) continue;
        if (cursor + length > plaintext.length) throw new FormatError("malformed", "pieces do not add up");
        parts.push(plaintext.subarray(cursor, cursor + length));
        cursor += length;
      }
      return concat(...parts);
    },
  };
}
