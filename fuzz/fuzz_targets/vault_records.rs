//! The records inside a recording's chunks (tracks, frames, notes, wrapped keys), as the export
//! reads them, then muxed into WebM or Matroska (VP8 and H.264 headers, Opus): never a panic.
#![no_main]
use std::collections::BTreeMap;
use std::io::Cursor;

use consult_vault::matroska;
use consult_vault::recording::{Record, RecordingContents};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(records) = Record::decode_all(data) else {
        return;
    };
    let mut contents = RecordingContents {
        tracks: BTreeMap::new(),
        complete: true,
        ..Default::default()
    };
    for record in records {
        match record {
            Record::Track(t) => {
                contents.tracks.insert(t.id, t);
            }
            Record::Frame(f) if contents.tracks.contains_key(&f.track) => contents.frames.push(f),
            Record::Frame(_) => return,
            Record::Note { at_us, text } => contents.notes.push((at_us, text)),
            Record::EpochKey(key) => contents.epoch_keys.push(key),
        }
    }
    contents.frames.sort_by_key(|f| f.at_us);
    let _ = matroska::export(&contents, Cursor::new(Vec::new()));
});
