//! Frame stamps: every H.264 frame a load peer sends carries an SEI message (user data
//! unregistered, which decoders ignore) naming the stream, a frame counter, the send time and a
//! hash of the frame's other NAL units. The receiver checks the hash and the counter, so loss and
//! corruption are counted, not guessed.
//!
//! The stamp's payload is ASCII text with no zero bytes, so it never needs H.264 emulation
//! prevention, and the hash covers NAL unit bodies (not start codes), so it survives
//! packetisation, which may rewrite start codes.
//!
//! ```
//! use consult_load::stamp::{stamp_frame, verify_frame, Stamp, Verdict};
//!
//! // An access unit: one IDR slice.
//! let frame = [0, 0, 0, 1, 0x65, 0x88, 0x84, 0x00, 0x21];
//! let stamp = Stamp { stream: 7, counter: 42, sent_micros: 1_000 };
//! let stamped = stamp_frame(&frame, &stamp);
//! assert_eq!(verify_frame(&stamped), Verdict::Intact(stamp));
//!
//! let mut damaged = stamped.clone();
//! let last = damaged.len() - 1;
//! damaged[last] ^= 1;
//! assert!(matches!(verify_frame(&damaged), Verdict::Corrupt(_)));
//! assert_eq!(verify_frame(&frame), Verdict::Unstamped);
//! ```

use sha2::{Digest, Sha256};

/// Identifies our SEI messages (a random UUID, fixed for the format).
const STAMP_UUID: [u8; 16] = [
    0x6c, 0x6f, 0x61, 0x64, 0x2d, 0x63, 0x6f, 0x6e, 0x73, 0x75, 0x6c, 0x74, 0x2d, 0x76, 0x31, 0x21,
];

/// NAL unit type of SEI.
const NAL_SEI: u8 = 6;
/// SEI payload type: user data unregistered.
const SEI_USER_DATA_UNREGISTERED: u8 = 5;

/// What a stamp says about a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Which sender (unique within a run).
    pub stream: u32,
    /// The sender's frame counter, from 0.
    pub counter: u64,
    /// When it was sent, microseconds since the run's epoch.
    pub sent_micros: u64,
}

/// What the receiver made of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The stamp is there and the hash matches.
    Intact(Stamp),
    /// The stamp is there but the frame does not match its hash, or the stamp is unreadable.
    Corrupt(String),
    /// No stamp at all.
    Unstamped,
}

/// The NAL units of an Annex-B byte stream (without start codes).
pub fn nal_units(annex_b: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= annex_b.len() {
        if annex_b[i] == 0 && annex_b[i + 1] == 0 && annex_b[i + 2] == 1 {
            starts.push((i, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut units = Vec::with_capacity(starts.len());
    for (n, &(_, body)) in starts.iter().enumerate() {
        let mut end = starts.get(n + 1).map_or(annex_b.len(), |&(code, _)| code);
        // A four-byte start code's leading zero belongs to the start code, not the unit.
        while end > body && annex_b[end - 1] == 0 {
            end -= 1;
        }
        if end > body {
            units.push(&annex_b[body..end]);
        }
    }
    units
}

fn is_stamp(unit: &[u8]) -> bool {
    unit.len() > 3
        && unit[0] & 0x1f == NAL_SEI
        && unit[1] == SEI_USER_DATA_UNREGISTERED
        && unit.get(3..19) == Some(&STAMP_UUID[..])
}

fn hash_units<'a>(units: impl Iterator<Item = &'a [u8]>) -> String {
    let mut hasher = Sha256::new();
    for unit in units {
        hasher.update((unit.len() as u32).to_be_bytes());
        hasher.update(unit);
    }
    hex::encode(&hasher.finalize()[..12])
}

/// The frame with a stamp inserted before its first slice (where the standard puts SEI).
pub fn stamp_frame(annex_b: &[u8], stamp: &Stamp) -> Vec<u8> {
    // A stamp already in the frame (or a unit that looks like one) is replaced, not kept: the
    // receiver reads the first stamp and hashes every other unit.
    let units: Vec<&[u8]> = nal_units(annex_b)
        .into_iter()
        .filter(|u| !is_stamp(u))
        .collect();
    let hash = hash_units(units.iter().copied());
    let text = format!(
        "{}:{}:{}:{}",
        stamp.stream, stamp.counter, stamp.sent_micros, hash
    );
    let mut sei = vec![NAL_SEI, SEI_USER_DATA_UNREGISTERED, (16 + text.len()) as u8];
    sei.extend_from_slice(&STAMP_UUID);
    sei.extend_from_slice(text.as_bytes());
    sei.push(0x80); // rbsp trailing bits
    let mut out = Vec::with_capacity(annex_b.len() + sei.len() + 8);
    let mut stamped = false;
    for unit in units {
        let is_slice = matches!(unit[0] & 0x1f, 1..=5);
        if is_slice && !stamped {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(&sei);
            stamped = true;
        }
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(unit);
    }
    if !stamped {
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(&sei);
    }
    out
}

/// Check a received frame's stamp against its contents.
pub fn verify_frame(annex_b: &[u8]) -> Verdict {
    let units = nal_units(annex_b);
    let Some(sei) = units.iter().find(|u| is_stamp(u)) else {
        return Verdict::Unstamped;
    };
    let size = sei[2] as usize;
    let Some(text) = sei
        .get(19..3 + size)
        .and_then(|t| std::str::from_utf8(t).ok())
    else {
        return Verdict::Corrupt("stamp cut short".into());
    };
    let fields: Vec<&str> = text.split(':').collect();
    let parsed = match fields.as_slice() {
        [stream, counter, sent, hash] => stream
            .parse()
            .ok()
            .zip(counter.parse().ok())
            .zip(sent.parse().ok())
            .map(|((stream, counter), sent_micros)| {
                (
                    Stamp {
                        stream,
                        counter,
                        sent_micros,
                    },
                    *hash,
                )
            }),
        _ => None,
    };
    let Some((stamp, hash)) = parsed else {
        return Verdict::Corrupt(format!("unreadable stamp {text:?}"));
    };
    let actual = hash_units(units.iter().copied().filter(|u| !is_stamp(u)));
    if actual == hash {
        Verdict::Intact(stamp)
    } else {
        Verdict::Corrupt(format!(
            "frame {} of stream {}: hash {actual}, stamped {hash}",
            stamp.counter, stamp.stream
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_already_in_the_frame_is_replaced_even_a_broken_one() {
        // Found by fuzzing: a frame carrying a unit that looks like a stamp, cut short, before
        // its slice. Stamped again, it verifies as the new stamp.
        let mut frame = vec![0, 0, 0, 1, 0x67, 0x42, 0x00, 0x1e];
        frame.extend_from_slice(&[0, 0, 0, 1, NAL_SEI, SEI_USER_DATA_UNREGISTERED, 7]);
        frame.extend_from_slice(&STAMP_UUID);
        frame.extend_from_slice(&[0, 0, 0, 1, 0x65, 0x88, 0x80]);
        assert!(matches!(verify_frame(&frame), Verdict::Corrupt(_)));
        let stamp = Stamp {
            stream: 3,
            counter: 9,
            sent_micros: 42,
        };
        let once = stamp_frame(&frame, &stamp);
        assert_eq!(verify_frame(&once), Verdict::Intact(stamp));
        let again = Stamp {
            counter: 10,
            ..stamp
        };
        let twice = stamp_frame(&once, &again);
        assert_eq!(verify_frame(&twice), Verdict::Intact(again));
        assert_eq!(
            nal_units(&twice).iter().filter(|u| is_stamp(u)).count(),
            1,
            "one stamp"
        );
    }

    #[test]
    fn stamp_goes_after_parameter_sets_and_before_the_first_slice() {
        let frame = [
            0, 0, 0, 1, 0x67, 0x42, 0x00, 0x1e, // SPS
            0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80, // PPS
            0, 0, 1, 0x65, 0x88, 0x80, // IDR slice, three-byte start code
        ];
        let stamp = Stamp {
            stream: 1,
            counter: 0,
            sent_micros: 5,
        };
        let stamped = stamp_frame(&frame, &stamp);
        let types: Vec<u8> = nal_units(&stamped).iter().map(|u| u[0] & 0x1f).collect();
        assert_eq!(types, vec![7, 8, 6, 5]);
        assert_eq!(verify_frame(&stamped), Verdict::Intact(stamp));
    }

    #[test]
    fn start_code_rewriting_does_not_break_the_hash() {
        let frame = [0, 0, 0, 1, 0x41, 0x9a, 0x00, 0x10];
        let stamp = Stamp {
            stream: 3,
            counter: 9,
            sent_micros: 1,
        };
        let stamped = stamp_frame(&frame, &stamp);
        // A depacketiser that writes three-byte start codes.
        let rewritten: Vec<u8> = nal_units(&stamped)
            .iter()
            .flat_map(|u| [&[0u8, 0, 1][..], u].concat())
            .collect();
        assert_eq!(verify_frame(&rewritten), Verdict::Intact(stamp));
    }

    #[test]
    fn missing_units_and_bad_stamps_are_corrupt() {
        let frame = [0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x65, 0x88, 0x80];
        let stamped = stamp_frame(
            &frame,
            &Stamp {
                stream: 1,
                counter: 2,
                sent_micros: 3,
            },
        );
        // Drop the SPS.
        let without_sps: Vec<u8> = nal_units(&stamped)
            .iter()
            .filter(|u| u[0] & 0x1f != 7)
            .flat_map(|u| [&[0u8, 0, 0, 1][..], u].concat())
            .collect();
        assert!(matches!(verify_frame(&without_sps), Verdict::Corrupt(_)));
        // A stamp whose text is not ours.
        let mut garbled = stamped.clone();
        let at = stamped
            .windows(2)
            .position(|w| w == b"1:")
            .expect("stamp text");
        garbled[at] = b'x';
        assert!(matches!(verify_frame(&garbled), Verdict::Corrupt(m) if m.contains("unreadable")));
        assert_eq!(verify_frame(&[]), Verdict::Unstamped);
        assert_eq!(verify_frame(&[0, 0, 1]), Verdict::Unstamped);
    }
}
