//! A recording's sealed stream as read back from storage (a damaged, truncated or forged file):
//! the chunk reader never panics and never yields a chunk that did not authenticate.
#![no_main]
use std::io::Cursor;

use consult_vault::chunks::{ChunkReader, ChunkWriter, StreamEnd};
use consult_vault::keys::DataKey;
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    let recording = Uuid::from_u128(0x5eed);
    let key = DataKey::from_bytes([9; 32]);
    // The input as a stream.
    if let Ok(mut reader) = ChunkReader::new(Cursor::new(data), recording, &key) {
        for _ in 0..64 {
            match reader.next_chunk() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let _ = reader.end();
    }
    // The input as plaintext: sealed, then a byte flipped anywhere, the stream never reads
    // back whole: some chunk fails, or the stream ends unfinished.
    let mut writer = ChunkWriter::new(Vec::new(), recording, &key).expect("a writer");
    writer.append(data).expect("a chunk");
    writer.finish(&[]).expect("the final chunk");
    let mut sealed = writer.get_mut().clone();
    assert_eq!(
        read_whole(&sealed, recording, &key),
        Some(vec![data.to_vec(), Vec::new()])
    );
    let at = usize::from(data.first().copied().unwrap_or(0)) % sealed.len();
    sealed[at] ^= 0x01;
    assert_eq!(
        read_whole(&sealed, recording, &key),
        None,
        "a flipped byte at {at} passed unnoticed"
    );
});

/// Every chunk of a stream that reads to its authenticated end, or `None`.
fn read_whole(stream: &[u8], recording: Uuid, key: &DataKey) -> Option<Vec<Vec<u8>>> {
    let mut reader = ChunkReader::new(Cursor::new(stream), recording, key).ok()?;
    let mut chunks = Vec::new();
    while let Some(chunk) = reader.next_chunk().ok()? {
        chunks.push(chunk);
    }
    matches!(reader.end(), Some(StreamEnd::Complete { .. })).then_some(chunks)
}
