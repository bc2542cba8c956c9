//! Opus with libopus: 48 kHz mono, packets of 20 ms (40 or 60 ms where a link is too weak for
//! the headers of 50 packets a second), VoIP mode with in-band FEC and DTX (in silence the
//! encoder makes packets of two bytes or less that need not be sent: [`is_dtx`]).

use super::CodecError;

/// Samples in one 20 ms frame at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;
/// Opus RTP clock rate.
pub const SAMPLE_RATE: u32 = 48_000;

/// Opus encoder for one packet of 20, 40 or 60 ms of mono at a time.
pub struct OpusEncoder {
    encoder: opus::Encoder,
    buffer: Vec<u8>,
}

/// The loss in-band FEC protects against before any receiver report came in, per cent.
pub const DEFAULT_EXPECTED_LOSS_PERCENT: u8 = 5;

impl OpusEncoder {
    /// An encoder at `bitrate_bps`.
    pub fn new(bitrate_bps: i32) -> Result<Self, CodecError> {
        let mut encoder =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)
                .map_err(|e| CodecError::library("opus", e))?;
        encoder
            .set_bitrate(opus::Bitrate::Bits(bitrate_bps))
            .map_err(|e| CodecError::library("opus", e))?;
        encoder
            .set_inband_fec(true)
            .map_err(|e| CodecError::library("opus", e))?;
        encoder
            .set_dtx(true)
            .map_err(|e| CodecError::library("opus", e))?;
        let mut encoder = Self {
            encoder,
            buffer: vec![0; 4000],
        };
        // In-band FEC carries anything only when some loss is expected: assume a little until
        // the receiver's reports say how much (`set_expected_loss`).
        encoder.set_expected_loss(DEFAULT_EXPECTED_LOSS_PERCENT)?;
        Ok(encoder)
    }

    /// Change the bitrate (libopus's `OPUS_SET_BITRATE`), from the next frame on.
    pub fn set_bitrate(&mut self, bitrate_bps: i32) -> Result<(), CodecError> {
        self.encoder
            .set_bitrate(opus::Bitrate::Bits(bitrate_bps))
            .map_err(|e| CodecError::library("opus", e))
    }

    /// The packet loss to protect against with in-band FEC, per cent (libopus's
    /// `OPUS_SET_PACKET_LOSS_PERC`; 0 turns the FEC data off, more spends more bits on it).
    pub fn set_expected_loss(&mut self, percent: u8) -> Result<(), CodecError> {
        self.encoder
            .set_packet_loss_perc(i32::from(percent.min(100)))
            .map_err(|e| CodecError::library("opus", e))
    }

    /// Encode one packet of [`FRAME_SAMPLES`] samples (20 ms), or two or three times that (40
    /// or 60 ms: fewer packets, so fewer headers, for the same sound).
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Vec<u8>, CodecError> {
        if !matches!(pcm.len() / FRAME_SAMPLES, 1..=3) || !pcm.len().is_multiple_of(FRAME_SAMPLES) {
            return Err(CodecError::InvalidFrame(format!(
                "{} samples, expected {FRAME_SAMPLES}, {} or {} (20, 40 or 60 ms)",
                pcm.len(),
                2 * FRAME_SAMPLES,
                3 * FRAME_SAMPLES
            )));
        }
        let n = self
            .encoder
            .encode(pcm, &mut self.buffer)
            .map_err(|e| CodecError::library("opus", e))?;
        Ok(self.buffer[..n].to_vec())
    }
}

/// Whether an encoded packet is discontinuous transmission (silence): two bytes or less, which
/// libopus says need not be sent. The receiver conceals the gap, and the encoder still sends a
/// real packet every 400 ms of silence to keep the comfort noise going.
pub fn is_dtx(packet: &[u8]) -> bool {
    packet.len() <= 2
}

/// The samples at 48 kHz a packet holds (from its table of contents, RFC 6716 3.1), or
/// `None` for what is not an Opus packet.
pub fn packet_samples(packet: &[u8]) -> Option<usize> {
    opus::packet::get_nb_samples(packet, SAMPLE_RATE).ok()
}

/// Opus decoder to 48 kHz mono.
pub struct OpusDecoder {
    decoder: opus::Decoder,
    buffer: Vec<i16>,
}

impl OpusDecoder {
    /// A decoder.
    pub fn new() -> Result<Self, CodecError> {
        let decoder = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)
            .map_err(|e| CodecError::library("opus", e))?;
        Ok(Self {
            decoder,
            buffer: vec![0; 5760],
        })
    }

    /// The `samples` lost just before `packet` (a multiple of 2.5 ms, at most 120 ms), rebuilt
    /// from the in-band FEC data `packet` carries: libopus rebuilds as much as the packet holds
    /// and conceals the rest, or all of it when the packet carries none.
    pub fn decode_lost_before(
        &mut self,
        packet: &[u8],
        samples: usize,
    ) -> Result<Vec<i16>, CodecError> {
        let samples = samples.min(self.buffer.len());
        let n = self
            .decoder
            .decode(packet, &mut self.buffer[..samples], true)
            .map_err(|e| CodecError::library("opus", e))?;
        Ok(self.buffer[..n].to_vec())
    }

    /// 20 ms where nothing came (a lost packet, or silence the sender did not send): libopus's
    /// concealment, comfort noise after DTX.
    pub fn conceal(&mut self) -> Result<Vec<i16>, CodecError> {
        let n = self
            .decoder
            .decode(&[], &mut self.buffer[..FRAME_SAMPLES], false)
            .map_err(|e| CodecError::library("opus", e))?;
        Ok(self.buffer[..n].to_vec())
    }

    /// Decode one packet (an empty packet conceals a lost one: 20 ms, as [`Self::conceal`]).
    /// A packet may hold up to 120 ms: the samples are as many as it holds.
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<i16>, CodecError> {
        if packet.is_empty() {
            return self.conceal();
        }
        let n = self
            .decoder
            .decode(packet, &mut self.buffer, false)
            .map_err(|e| CodecError::library("opus", e))?;
        Ok(self.buffer[..n].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::Tone;

    #[test]
    fn silence_is_mostly_not_sent_and_a_tone_always_is() {
        let mut encoder = OpusEncoder::new(32_000).unwrap();
        let silence = vec![0i16; FRAME_SAMPLES];
        let packets: Vec<Vec<u8>> = (0..100)
            .map(|_| encoder.encode(&silence).unwrap())
            .collect();
        let sent = packets.iter().filter(|p| !is_dtx(p)).count();
        // Two seconds of silence: a few real packets at the start and one every 400 ms.
        assert!(sent <= 15, "{sent} of 100 silent packets need sending");
        assert!(sent >= 4, "comfort noise still goes now and then: {sent}");
        let mut tone = Tone::new(440.0);
        for _ in 0..50 {
            assert!(!is_dtx(&encoder.encode(&tone.next_frame()).unwrap()));
        }
    }

    #[test]
    fn concealment_is_exactly_one_frame() {
        let mut encoder = OpusEncoder::new(32_000).unwrap();
        let mut decoder = OpusDecoder::new().unwrap();
        let mut tone = Tone::new(440.0);
        let packet = encoder.encode(&tone.next_frame()).unwrap();
        assert_eq!(decoder.decode(&packet).unwrap().len(), FRAME_SAMPLES);
        for _ in 0..3 {
            assert_eq!(decoder.conceal().unwrap().len(), FRAME_SAMPLES);
        }
    }

    #[test]
    fn packets_of_40_and_60_ms_decode_to_as_many_samples_and_say_so() {
        let mut encoder = OpusEncoder::new(16_000).unwrap();
        let mut decoder = OpusDecoder::new().unwrap();
        let mut tone = Tone::new(440.0);
        for frames in 1..=3 {
            let pcm: Vec<i16> = (0..frames).flat_map(|_| tone.next_frame()).collect();
            let packet = encoder.encode(&pcm).unwrap();
            assert_eq!(packet_samples(&packet), Some(frames * FRAME_SAMPLES));
            assert_eq!(
                decoder.decode(&packet).unwrap().len(),
                frames * FRAME_SAMPLES
            );
        }
        // Twice as long, not twice the headers: a 40 ms packet is far smaller than two of 20.
        let two: Vec<i16> = (0..2).flat_map(|_| tone.next_frame()).collect();
        let long = encoder.encode(&two).unwrap();
        let short = encoder.encode(&tone.next_frame()).unwrap().len()
            + encoder.encode(&tone.next_frame()).unwrap().len();
        assert!(long.len() < short + 20, "{} against {short}", long.len());
    }

    #[test]
    fn a_lost_40_ms_packet_is_rebuilt_from_the_next_ones_fec() {
        let mut encoder = OpusEncoder::new(16_000).unwrap();
        encoder.set_expected_loss(20).unwrap();
        let mut decoder = OpusDecoder::new().unwrap();
        let mut tone = Tone::new(440.0);
        let mut next = || -> Vec<u8> {
            let pcm: Vec<i16> = (0..2).flat_map(|_| tone.next_frame()).collect();
            encoder.encode(&pcm).unwrap()
        };
        for _ in 0..10 {
            decoder.decode(&next()).unwrap();
        }
        let _lost = next();
        let after = next();
        assert_eq!(
            decoder
                .decode_lost_before(&after, 2 * FRAME_SAMPLES)
                .unwrap()
                .len(),
            2 * FRAME_SAMPLES
        );
        assert_eq!(decoder.decode(&after).unwrap().len(), 2 * FRAME_SAMPLES);
    }

    #[test]
    fn other_lengths_are_refused_and_garbage_has_no_length() {
        let mut encoder = OpusEncoder::new(16_000).unwrap();
        for samples in [0, 480, FRAME_SAMPLES + 1, 4 * FRAME_SAMPLES] {
            assert!(
                matches!(
                    encoder.encode(&vec![0; samples]),
                    Err(CodecError::InvalidFrame(_))
                ),
                "{samples} samples"
            );
        }
        assert_eq!(packet_samples(&[]), None);
        // Code 3 (an arbitrary number of frames) without its frame count byte.
        assert_eq!(packet_samples(&[0x03]), None);
    }
}
