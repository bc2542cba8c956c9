//! What a clinician's recording key meets from outside: a public key registered over the API
//! (base64), a wrapped epoch key a participant sent, a key file: never a panic, and a wrapped
//! key never opens under another binding.
#![no_main]
use consult_e2ee::recording_key::{
    EpochKeyBinding, RecordingKeyFile, RecordingKeyPair, RecordingPublicKey,
};
use consult_e2ee::Suite;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = RecordingPublicKey::from_base64(text);
        if let Ok(file) = RecordingKeyFile::from_json(text) {
            let _ = file.public_key();
        }
    }
    static PAIR: std::sync::OnceLock<RecordingKeyPair> = std::sync::OnceLock::new();
    let pair = PAIR.get_or_init(|| RecordingKeyPair::generate(&mut Seeded(0x5eed)));
    let binding = EpochKeyBinding {
        recording: [1; 16],
        sender: [2; 16],
        kid: 7,
        suite: Suite::Aes128Gcm,
    };
    let _ = pair.unwrap_epoch_key(&binding, data);
});

/// A fixed key for the run (the fuzzer needs determinism, not secrecy): splitmix64.
struct Seeded(u64);

impl consult_e2ee::rand_core::RngCore for Seeded {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), consult_e2ee::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl consult_e2ee::rand_core::CryptoRng for Seeded {}
