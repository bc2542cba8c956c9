//! How the data channels get through a lossy path.
//!
//! str0m runs sctp-proto with its defaults: a retransmission timeout of at least one second
//! (three at first), and no knob to change it. On a lossy path the congestion window shrinks
//! to a few packets, too few for three later SACKs to report a loss, so nearly every loss waits
//! for that timeout and the window starts again from one packet: at 10 % loss a file moved
//! about 20 KiB/s, at 3 % about 100 KiB/s, on a 2 ms round trip.
//!
//! SCTP cannot be tuned from outside str0m, so below it: while the remote reports loss on our
//! media, every datagram that carries SCTP (DTLS application data) is sent more than once, so the
//! loss SCTP sees falls from 10 % to about 0.1 % (three copies) and it keeps its window. The
//! remote's DTLS drops the copies it does not need (replay protection; SCTP ignores duplicate
//! TSNs in any case), so this needs nothing from the other side, browsers included. The copies
//! cost bandwidth, so while they are on, file data is paced: with its copies, at most one and a
//! half times the send bandwidth estimate. That estimate comes from media alone (SCTP packets
//! carry no transport-wide sequence numbers, so bandwidth estimation never sees them) and rises
//! only by probing ([`crate::PeerConfig::desired_bitrate_bps`], off by default), so on a clear
//! path it is below what the path carries; on a capped one it falls with the cap, and files fall
//! with it. Copies go a few milliseconds apart, so a burst of loss takes fewer of them together.
//!
//! Only DTLS 1.2 records are recognised (str0m's DTLS); under DTLS 1.3's unified header (first
//! byte 0x20–0x3f) nothing would be copied.
//!
//! ```
//! use consult_peer::redundancy::{DataRedundancy, is_sctp_datagram};
//! use std::time::Instant;
//!
//! let now = Instant::now();
//! let mut redundancy = DataRedundancy::new(now);
//! assert_eq!(redundancy.copies(), 1);
//! assert_eq!(redundancy.file_allowance(now), usize::MAX);
//! // The remote reports 10 % loss, and the bandwidth estimate is 1 Mbit/s.
//! redundancy.on_stats(Some(0.10), Some(1_000_000));
//! assert_eq!(redundancy.copies(), 3);
//! // File data now gets at most 1.5 times the estimate between its three copies.
//! assert_eq!(redundancy.file_pace(), Some(1_000_000.0 / 8.0 * 1.5 / 3.0));
//! assert!(is_sctp_datagram(&[23, 0xfe, 0xfd]));
//! assert!(!is_sctp_datagram(&[0x80, 0x60]));
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Loss (fraction) from which SCTP datagrams go twice: 3 % then becomes about 0.1 %.
pub const TWO_COPIES_FROM_LOSS: f32 = 0.02;
/// Loss from which they go three times: 10 % then becomes 0.1 %.
pub const THREE_COPIES_FROM_LOSS: f32 = 0.06;
/// Loss from which they go four times: 20 % then becomes 0.16 %.
pub const FOUR_COPIES_FROM_LOSS: f32 = 0.18;
/// File data, copies included, may use this many times the send bandwidth estimate while copies
/// are on (see the module documentation for why more than once).
pub const FILE_SHARE_OF_ESTIMATE: f64 = 1.5;
/// File data is never paced below this (bytes per second), so a transfer always moves.
pub const MIN_FILE_BYTES_PER_SECOND: f64 = 4.0 * 1024.0;
/// Receiver reports whose loss the decision looks at: each covers about a second and a few
/// dozen packets, so one alone swings between 2 % and 13 % on a 10 % link; the worst of the last
/// few decides (quick to add copies, slow to drop them).
pub const LOSS_REPORTS_CONSIDERED: usize = 5;
/// Time between the copies of one datagram.
pub const COPY_SPACING: Duration = Duration::from_millis(3);
/// SCTP datagrams up to this size always go at least twice.
pub const SMALL_DATAGRAM_BYTES: usize = 300;
/// Bandwidth assumed before the first estimate, bits per second.
pub const ASSUMED_ESTIMATE_BPS: u64 = 1_000_000;
/// Most file bytes the pacing lets through at once (one 16 KiB chunk and its header fit).
pub const FILE_BURST_BYTES: f64 = 20.0 * 1024.0;

/// Time between the copies of a picture's datagram ([`crate::Peer::copy_next_video_frame`]):
/// longer than a capped link's queue takes to take in a small keyframe, so that its tail drop
/// does not take a packet and its copy together.
pub const PICTURE_COPY_SPACING: Duration = Duration::from_millis(60);

/// The SSRC of an SRTP (RTP) datagram, `None` for anything else (RTCP, DTLS, STUN): RFC 7983's
/// first byte 128–191, a payload type outside RTCP's 64–95 (second byte 192–223).
pub fn rtp_ssrc(datagram: &[u8]) -> Option<u32> {
    let (first, second) = (*datagram.first()?, *datagram.get(1)?);
    if !(128..=191).contains(&first) || (192..=223).contains(&second) {
        return None;
    }
    let ssrc: [u8; 4] = datagram.get(8..12)?.try_into().ok()?;
    Some(u32::from_be_bytes(ssrc))
}

/// Whether an RTP datagram has the marker bit: for video, the last packet of a frame.
pub fn rtp_marker(datagram: &[u8]) -> bool {
    datagram.get(1).is_some_and(|b| b & 0x80 != 0)
}

/// Whether a datagram carries the data channels: a DTLS application-data record (content type
/// 23, RFC 7983 demultiplexing). DTLS handshakes, SRTP and STUN are never copied.
pub fn is_sctp_datagram(datagram: &[u8]) -> bool {
    datagram.first() == Some(&23)
}

/// Copies of each SCTP datagram for a loss the remote reports.
pub fn copies_for_loss(loss: f32) -> u8 {
    if loss >= FOUR_COPIES_FROM_LOSS {
        4
    } else if loss >= THREE_COPIES_FROM_LOSS {
        3
    } else if loss >= TWO_COPIES_FROM_LOSS {
        2
    } else {
        1
    }
}

/// The redundancy one connection applies to its data channels, and the pacing of file data
/// that goes with it.
#[derive(Debug, Clone)]
pub struct DataRedundancy {
    copies: u8,
    recent_loss: VecDeque<f32>,
    /// File bytes per second while paced; `None`: not paced.
    pace: Option<f64>,
    tokens: f64,
    refilled_at: Instant,
}

impl DataRedundancy {
    /// One copy, unpaced, until the remote reports loss.
    pub fn new(now: Instant) -> Self {
        Self {
            copies: 1,
            recent_loss: VecDeque::with_capacity(LOSS_REPORTS_CONSIDERED),
            pace: None,
            tokens: FILE_BURST_BYTES,
            refilled_at: now,
        }
    }

    /// Take the latest statistics: the loss the remote reports on our media (0..1) and the send
    /// bandwidth estimate (bits per second).
    pub fn on_stats(&mut self, egress_loss: Option<f32>, estimated_send_bps: Option<u64>) {
        let Some(loss) = egress_loss.filter(|l| l.is_finite()) else {
            return;
        };
        if self.recent_loss.len() == LOSS_REPORTS_CONSIDERED {
            self.recent_loss.pop_front();
        }
        self.recent_loss.push_back(loss.clamp(0.0, 1.0));
        let worst = self.recent_loss.iter().copied().fold(0.0, f32::max);
        self.copies = copies_for_loss(worst);
        self.pace = (self.copies > 1).then(|| {
            let estimate = estimated_send_bps.unwrap_or(ASSUMED_ESTIMATE_BPS) as f64 / 8.0;
            (estimate * FILE_SHARE_OF_ESTIMATE / f64::from(self.copies))
                .max(MIN_FILE_BYTES_PER_SECOND)
        });
    }

    /// How many times each SCTP datagram is sent.
    pub fn copies(&self) -> u8 {
        self.copies
    }

    /// How many times this SCTP datagram is sent: small ones (SACKs, channel opens, key
    /// messages, chat, file control) always at least twice, since losing one costs SCTP a
    /// timeout of a second or more and a copy costs next to nothing.
    pub fn copies_of(&self, datagram_len: usize) -> u8 {
        if datagram_len <= SMALL_DATAGRAM_BYTES {
            self.copies.max(2)
        } else {
            self.copies
        }
    }

    /// File bytes per second while paced.
    pub fn file_pace(&self) -> Option<f64> {
        self.pace
    }

    /// File bytes that may go onto the channel now (`usize::MAX` while unpaced).
    pub fn file_allowance(&mut self, now: Instant) -> usize {
        let Some(pace) = self.pace else {
            return usize::MAX;
        };
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * pace).min(FILE_BURST_BYTES);
        self.refilled_at = now;
        self.tokens as usize
    }

    /// File bytes just written.
    pub fn spend(&mut self, bytes: usize) {
        if self.pace.is_some() {
            self.tokens = (self.tokens - bytes as f64).max(0.0);
        }
    }

    /// When, at `now` or later, `bytes` more will be allowed (`None` while unpaced or if they
    /// already are).
    pub fn allowance_at(&self, now: Instant, bytes: usize) -> Option<Instant> {
        let pace = self.pace?;
        let since = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        let tokens = (self.tokens + since * pace).min(FILE_BURST_BYTES);
        let missing = bytes as f64 - tokens;
        // A millisecond more, so rounding never wakes us a hair too early, again and again.
        (missing > 0.0).then(|| {
            now.max(self.refilled_at)
                + Duration::from_secs_f64(missing / pace)
                + Duration::from_millis(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rtp_datagrams_have_an_ssrc_and_the_marker_is_read_from_them() {
        // Version 2, marker, payload type 96, sequence 1, timestamp 2, SSRC 0x01020304.
        let mut rtp = vec![0x80, 0x80 | 96, 0, 1, 0, 0, 0, 2, 1, 2, 3, 4, 0xaa];
        assert_eq!(rtp_ssrc(&rtp), Some(0x0102_0304));
        assert!(rtp_marker(&rtp));
        rtp[1] = 96;
        assert!(!rtp_marker(&rtp));
        // RTCP (a receiver report, 201), DTLS, STUN and short datagrams have none.
        let rtcp = [0x81, 201, 0, 7, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(rtp_ssrc(&rtcp), None);
        assert_eq!(rtp_ssrc(&[23, 0xfe, 0xfd, 0, 0, 0, 0, 0, 1, 2, 3, 4]), None);
        assert_eq!(
            rtp_ssrc(&[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4]),
            None
        );
        assert_eq!(rtp_ssrc(&rtp[..11]), None);
        assert_eq!(rtp_ssrc(&[]), None);
    }

    #[test]
    fn copies_grow_with_loss_at_once_and_drop_back_after_a_few_clean_reports() {
        let mut r = DataRedundancy::new(Instant::now());
        for (loss, copies) in [
            (0.0, 1),
            (0.019, 1),
            (0.03, 2),
            (0.10, 3),
            (0.25, 4),
            (0.0, 4),
        ] {
            r.on_stats(Some(loss), Some(2_000_000));
            assert_eq!(r.copies(), copies, "loss {loss}");
            assert_eq!(r.file_pace().is_some(), copies > 1);
        }
        // A 10 % link reports between 2 % and 13 % second by second: the copies stay.
        for loss in [0.02, 0.13, 0.04, 0.06, 0.08, 0.02, 0.11, 0.05] {
            r.on_stats(Some(loss), None);
        }
        assert_eq!(r.copies(), 3);
        for _ in 0..LOSS_REPORTS_CONSIDERED {
            r.on_stats(Some(0.0), None);
        }
        assert_eq!(r.copies(), 1);
        assert_eq!(r.file_pace(), None);
    }

    #[test]
    fn no_report_keeps_the_last_decision_and_nonsense_is_ignored() {
        let mut r = DataRedundancy::new(Instant::now());
        r.on_stats(Some(0.10), None);
        r.on_stats(None, Some(1));
        r.on_stats(Some(f32::NAN), Some(1));
        assert_eq!(r.copies(), 3);
        assert_eq!(
            r.file_pace(),
            Some(ASSUMED_ESTIMATE_BPS as f64 / 8.0 * FILE_SHARE_OF_ESTIMATE / 3.0)
        );
    }

    #[test]
    fn pacing_gives_files_a_share_of_the_estimate_and_never_stops_them() {
        let start = Instant::now();
        let mut r = DataRedundancy::new(start);
        r.on_stats(Some(0.10), Some(300_000));
        let pace = r.file_pace().unwrap();
        assert!((pace - 300_000.0 / 8.0 * FILE_SHARE_OF_ESTIMATE / 3.0).abs() < 1.0);
        // Spend the burst, then a hundred seconds of allowance, chunk by chunk.
        let mut sent = 0usize;
        let mut now = start;
        let burst = r.file_allowance(now);
        r.spend(burst);
        while now < start + Duration::from_secs(100) {
            let allowed = r.file_allowance(now);
            if allowed >= 16 * 1024 {
                r.spend(16 * 1024);
                sent += 16 * 1024;
            } else {
                now = r.allowance_at(now, 16 * 1024).unwrap();
            }
        }
        let rate = sent as f64 / 100.0;
        assert!(
            rate <= pace * 1.05 && rate >= pace * 0.8,
            "{rate} vs {pace}"
        );
        // A tiny estimate still lets files move.
        r.on_stats(Some(0.5), Some(1_000));
        assert_eq!(r.file_pace(), Some(MIN_FILE_BYTES_PER_SECOND));
    }

    #[test]
    fn the_wake_up_for_paced_data_is_never_in_the_past() {
        let start = Instant::now();
        let mut r = DataRedundancy::new(start);
        r.on_stats(Some(0.10), Some(600_000));
        let burst = r.file_allowance(start);
        r.spend(burst);
        // Long after the last refill (nothing asked for an allowance since): a chunk is due now.
        let later = start + Duration::from_secs(60);
        assert_eq!(r.allowance_at(later, 16 * 1024), None);
        // Right after spending: later than now, by the time the pace needs.
        let at = r.allowance_at(start, 16 * 1024).unwrap();
        assert!(at > start);
    }

    #[test]
    fn only_dtls_application_data_is_copied() {
        assert!(is_sctp_datagram(&[23, 0xfe, 0xfd, 0, 1]));
        for first in [0u8, 1, 20, 21, 22, 0x80, 0x90, 0xbf] {
            assert!(!is_sctp_datagram(&[first, 0xfe]), "{first}");
        }
        assert!(!is_sctp_datagram(&[]));
    }
}
