//! Opus with libopus: 48 kHz mono, 20 ms frames, VoIP mode with in-band FEC and DTX (in
//! silence the encoder makes packets of two bytes or less that need not be sent: [`is_dtx`]).

use super::CodecError;

/// Samples in one 20 ms frame at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;
/// Opus RTP clock rate.
pub const SAMPLE_RATE: u32 = 48_000;

/// Opus encoder for one 20 ms mono frame at a time.
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

    /// Encode exactly [`FRAME_SAMPLES`] samples.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Vec<u8>, CodecError> {
        if pcm.len() != FRAME_SAMPLES {
            return Err(CodecError::InvalidFrame(format!(
                "{} samples, expected {FRAME_SAMPLES} (20 ms)",
                pcm.len()
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

    /// The 20 ms lost just before `packet`, rebuilt from the in-band FEC data `packet` carries
    /// (or concealed, when it carries none).
    pub fn decode_lost_before(&mut self, packet: &[u8]) -> Result<Vec<i16>, CodecError> {
        let n = self
            .decoder
            .decode(packet, &mut self.buffer[..FRAME_SAMPLES], true)
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
}
