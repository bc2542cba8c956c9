//! The records inside a recording's chunks (tracks, frames, notes, wrapped keys), as the export
//! reads them: put in time order through the streaming reorder window, then planned and muxed
//! into WebM or Matroska (VP8 and H.264 headers, Opus): never a panic. Unless a frame came later
//! than the window allows, the streamed order must equal a stable sort of the whole recording,
//! and the streamed file the whole-recording export.
#![no_main]
use std::collections::BTreeMap;

use consult_vault::matroska::{self, MuxPlan};
use consult_vault::recording::{Record, RecordingContents, TimeOrder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(records) = Record::decode_all(data) else {
        return;
    };
    let mut tracks = BTreeMap::new();
    let mut order = TimeOrder::default();
    let mut streamed = Vec::new();
    let mut recorded = Vec::new();
    for record in records {
        match record {
            Record::Track(t) => {
                tracks.insert(t.id, t);
            }
            Record::Frame(f) if tracks.contains_key(&f.track) => {
                recorded.push(f.clone());
                order.push(f);
                streamed.extend(std::iter::from_fn(|| order.pop(false)));
            }
            Record::Frame(_) => return,
            Record::Note { .. } | Record::EpochKey(_) => {}
        }
    }
    streamed.extend(std::iter::from_fn(|| order.pop(true)));
    let Ok(plan) = MuxPlan::scan(&tracks, streamed.iter().cloned().map(Ok)) else {
        return;
    };
    let mut file = Vec::new();
    let summary = matroska::write(&plan, streamed.iter().cloned().map(Ok), &mut file)
        .expect("a plan's own frames write");
    assert_eq!(summary, plan.summary());
    if order.late() == 0 {
        recorded.sort_by_key(|f| f.at_us);
        assert_eq!(streamed, recorded, "the window's order is a stable sort's");
        let contents = RecordingContents {
            tracks,
            frames: recorded,
            complete: true,
            ..Default::default()
        };
        let mut whole = Vec::new();
        let whole_summary = matroska::export(&contents, &mut whole).expect("the plan passed");
        assert_eq!((whole, whole_summary), (file, summary));
    }
});
