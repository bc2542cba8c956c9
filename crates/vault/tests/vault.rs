//! The vault's promises, each against real files: what is sealed opens whole, and every kind of
//! damage is an error that names it, never a partial stream presented as whole.

use std::fs;
use std::io::{self, Cursor, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use consult_vault::recording::{
    Codec, EpochKey, Frame, FramesInTimeOrder, Record, RecordBatch, RecordingContents,
    RecordingIndex, TimeOrder, Track, TrackRole, REORDER_MAX_FRAMES,
};
use consult_vault::{
    ChunkReader, ChunkWriter, DataKey, LocalDirectory, MediaAppender, MediaStore, StreamEnd, Vault,
    VaultError,
};
use proptest::prelude::*;
use uuid::Uuid;

const CHUNKS: [&[u8]; 4] = [b"chunk zero", b"chunk one", b"chunk two", b"the end"];

/// A stream of `CHUNKS` (the last one final), and the offsets where each chunk starts.
fn sealed_stream(id: Uuid, key: &DataKey) -> (Vec<u8>, Vec<usize>) {
    let mut writer = ChunkWriter::new(Vec::new(), id, key).unwrap();
    let mut offsets = Vec::new();
    for (i, chunk) in CHUNKS.iter().enumerate() {
        offsets.push(writer.get_mut().len());
        if i + 1 == CHUNKS.len() {
            writer.finish(chunk).unwrap();
        } else {
            writer.append(chunk).unwrap();
        }
    }
    (writer.get_mut().clone(), offsets)
}

/// Every chunk, or the first error, and how the stream ended.
fn read_all(
    bytes: &[u8],
    id: Uuid,
    key: &DataKey,
) -> Result<(Vec<Vec<u8>>, StreamEnd), VaultError> {
    let mut reader = ChunkReader::new(Cursor::new(bytes.to_vec()), id, key)?;
    let mut chunks = Vec::new();
    while let Some(chunk) = reader.next_chunk()? {
        chunks.push(chunk);
    }
    Ok((chunks, reader.end().unwrap()))
}

fn key() -> DataKey {
    DataKey::from_bytes([7; 32])
}

#[test]
fn a_sealed_stream_reads_back_whole() {
    let id = Uuid::new_v4();
    let (bytes, _) = sealed_stream(id, &key());
    let (chunks, end) = read_all(&bytes, id, &key()).unwrap();
    assert_eq!(chunks, CHUNKS.map(<[u8]>::to_vec));
    assert_eq!(end, StreamEnd::Complete { chunks: 4 });
    // Nothing of the plaintext is in the stream.
    for chunk in CHUNKS {
        assert!(!bytes.windows(chunk.len()).any(|w| w == chunk));
    }
}

#[test]
fn a_flipped_byte_names_its_chunk() {
    let id = Uuid::new_v4();
    let (bytes, offsets) = sealed_stream(id, &key());
    for (chunk, offset) in offsets.iter().enumerate() {
        let mut damaged = bytes.clone();
        damaged[offset + 6] ^= 0x01;
        let err = read_all(&damaged, id, &key()).unwrap_err();
        assert!(
            matches!(err, VaultError::Corrupt { chunk: c } if c == chunk as u64),
            "{err}"
        );
    }
}

#[test]
fn a_missing_or_reordered_chunk_is_detected() {
    let id = Uuid::new_v4();
    let (bytes, o) = sealed_stream(id, &key());
    let missing = [&bytes[..o[1]], &bytes[o[2]..]].concat();
    let err = read_all(&missing, id, &key()).unwrap_err();
    assert!(matches!(err, VaultError::Corrupt { chunk: 1 }), "{err}");
    assert!(err.to_string().contains("missing or out of order"));

    let swapped = [
        &bytes[..o[1]],
        &bytes[o[2]..o[3]],
        &bytes[o[1]..o[2]],
        &bytes[o[3]..],
    ]
    .concat();
    assert!(matches!(
        read_all(&swapped, id, &key()),
        Err(VaultError::Corrupt { chunk: 1 })
    ));
}

#[test]
fn a_truncated_stream_is_unfinished_with_every_sealed_chunk_before_the_cut() {
    let id = Uuid::new_v4();
    let (bytes, o) = sealed_stream(id, &key());
    // Cut at a chunk boundary (the final chunk dropped) and in the middle of a chunk.
    let (chunks, end) = read_all(&bytes[..o[3]], id, &key()).unwrap();
    assert_eq!(chunks.len(), 3);
    assert_eq!(
        end,
        StreamEnd::Unfinished {
            chunks: 3,
            torn_bytes: 0
        }
    );
    let (chunks, end) = read_all(&bytes[..o[2] + 7], id, &key()).unwrap();
    assert_eq!(
        chunks,
        CHUNKS[..2].iter().map(|c| c.to_vec()).collect::<Vec<_>>()
    );
    assert_eq!(
        end,
        StreamEnd::Unfinished {
            chunks: 2,
            torn_bytes: 7
        }
    );
}

#[test]
fn an_oversized_chunk_is_refused_either_way_and_the_stream_goes_on() {
    let id = Uuid::from_u128(3);
    let mut writer = ChunkWriter::new(Vec::new(), id, &key()).unwrap();
    let too_big = vec![7u8; consult_vault::chunks::MAX_CHUNK_BYTES + 1];
    assert!(matches!(
        writer.append(&too_big),
        Err(VaultError::ChunkTooLarge(n)) if n == too_big.len()
    ));
    let mut in_place = too_big.clone();
    assert!(matches!(
        writer.append_in_place(&mut in_place),
        Err(VaultError::ChunkTooLarge(_))
    ));
    // Nothing was written or lost: the refused chunk is still the caller's, and the stream
    // goes on from the header.
    assert_eq!(in_place, too_big);
    assert_eq!(writer.get_mut().len(), 32);
    writer.append(b"after").unwrap();
    writer.finish(b"").unwrap();
    let (chunks, end) = read_all(writer.get_mut(), id, &key()).unwrap();
    assert_eq!(chunks, vec![b"after".to_vec(), Vec::new()]);
    assert_eq!(end, StreamEnd::Complete { chunks: 2 });
}

#[test]
fn data_after_the_final_chunk_is_refused() {
    let id = Uuid::new_v4();
    let (mut bytes, o) = sealed_stream(id, &key());
    let first_chunk = bytes[o[0]..o[1]].to_vec();
    bytes.extend_from_slice(&first_chunk);
    assert!(matches!(
        read_all(&bytes, id, &key()),
        Err(VaultError::TrailingData { chunks: 4 })
    ));
}

#[test]
fn a_stream_of_another_recording_or_key_does_not_open() {
    let id = Uuid::new_v4();
    let (bytes, _) = sealed_stream(id, &key());
    assert!(matches!(
        read_all(&bytes, Uuid::new_v4(), &key()),
        Err(VaultError::WrongRecording)
    ));
    assert!(matches!(
        read_all(&bytes, id, &DataKey::from_bytes([8; 32])),
        Err(VaultError::Corrupt { chunk: 0 })
    ));
    assert!(matches!(
        read_all(b"not a vault", id, &key()),
        Err(VaultError::NotAVaultStream)
    ));
    // A header copied onto another recording's chunks: the chunks fail.
    let other = Uuid::new_v4();
    let (other_bytes, _) = sealed_stream(other, &key());
    let spliced = [&bytes[..32], &other_bytes[32..]].concat();
    assert!(matches!(
        read_all(&spliced, id, &key()),
        Err(VaultError::Corrupt { chunk: 0 })
    ));
}

#[test]
fn a_vault_keeps_media_encrypted_and_keys_apart() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path()).unwrap();
    let id = Uuid::new_v4();
    let mut writer = vault.create_recording(id).unwrap();
    writer.append(b"patient says: it hurts here").unwrap();
    writer.finish(b"").unwrap();
    let media = fs::read(dir.path().join("media").join(format!("{id}.cvlt"))).unwrap();
    assert!(!media.windows(8).any(|w| w == b"it hurts"));
    let key_file = dir.path().join("keys").join(format!("{id}.json"));
    assert!(key_file.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let keyring = dir.path().join("keyring.json");
        assert_eq!(
            fs::metadata(keyring).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert_eq!(vault.recordings().unwrap(), vec![id]);
    // Reopened from disk, it still reads.
    drop(vault);
    let vault = Vault::open(dir.path()).unwrap();
    let mut reader = vault.open_recording(id).unwrap();
    assert_eq!(
        reader.next_chunk().unwrap().unwrap(),
        b"patient says: it hurts here"
    );
}

#[test]
fn rotation_rewraps_every_key_and_the_old_kek_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path()).unwrap();
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        let mut w = vault.create_recording(*id).unwrap();
        w.finish(id.as_bytes()).unwrap();
    }
    let media_before = fs::read(dir.path().join("media").join(format!("{}.cvlt", ids[0]))).unwrap();
    let key_file = dir.path().join("keys").join(format!("{}.json", ids[0]));
    let old_wrapped = fs::read(&key_file).unwrap();

    let rotation = vault.rotate_keys().unwrap();
    assert_eq!(rotation.new_version, 2);
    assert_eq!(rotation.rewrapped, 3);
    assert_eq!(rotation.retired, vec![1]);
    // Media untouched; every recording still opens.
    let media_after = fs::read(dir.path().join("media").join(format!("{}.cvlt", ids[0]))).unwrap();
    assert_eq!(media_before, media_after);
    for id in &ids {
        let mut r = vault.open_recording(*id).unwrap();
        assert_eq!(r.next_chunk().unwrap().unwrap(), id.as_bytes());
    }
    // A key file from a backup taken before the rotation names a KEK that no longer exists.
    fs::write(&key_file, old_wrapped).unwrap();
    let err = vault.open_recording(ids[0]).unwrap_err();
    assert!(
        matches!(err, VaultError::KekMissing { version: 1 }),
        "{err}"
    );
    assert!(err.to_string().contains("rotated away"));
}

#[test]
fn another_keyring_or_a_tampered_key_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path()).unwrap();
    let id = Uuid::new_v4();
    vault.create_recording(id).unwrap().finish(b"x").unwrap();
    drop(vault);
    // The operator's other keyring (a fresh one) has a version 1 too, but not this one.
    fs::remove_file(dir.path().join("keyring.json")).unwrap();
    let vault = Vault::open(dir.path()).unwrap();
    assert!(matches!(
        vault.open_recording(id),
        Err(VaultError::KeyUnwrap { .. })
    ));
    // A wrapped key moved to another recording's name does not open there either.
    let other = Uuid::new_v4();
    fs::copy(
        dir.path().join("keys").join(format!("{id}.json")),
        dir.path().join("keys").join(format!("{other}.json")),
    )
    .unwrap();
    assert!(matches!(
        vault.data_key(other),
        Err(VaultError::KeyUnwrap { .. })
    ));
}

#[test]
fn shredding_makes_every_copy_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path()).unwrap();
    let id = Uuid::new_v4();
    vault
        .create_recording(id)
        .unwrap()
        .finish(b"secret")
        .unwrap();
    let media_path = dir.path().join("media").join(format!("{id}.cvlt"));
    let backup = fs::read(&media_path).unwrap();
    vault.shred(id).unwrap();
    assert!(vault.is_shredded(id));
    assert!(!media_path.exists());
    let err = vault.open_recording(id).unwrap_err();
    assert!(matches!(err, VaultError::Shredded { .. }), "{err}");
    // The backup copy of the media, restored, still does not open: the key is gone.
    fs::write(&media_path, backup).unwrap();
    assert!(matches!(
        vault.open_recording(id),
        Err(VaultError::Shredded { .. })
    ));
    assert!(vault.recordings().unwrap().is_empty());
}

#[test]
fn a_writer_that_dies_leaves_every_sealed_chunk_readable() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path()).unwrap();
    let id = Uuid::new_v4();
    let mut writer = vault.create_recording(id).unwrap();
    writer.append(b"one").unwrap();
    writer.append(b"two").unwrap();
    drop(writer); // no final chunk: the process died
                  // And half a chunk was being written when it died.
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("media").join(format!("{id}.cvlt")))
        .unwrap();
    file.write_all(&[0, 0, 0, 40, 1, 2, 3]).unwrap();
    let mut reader = vault.open_recording(id).unwrap();
    assert_eq!(reader.next_chunk().unwrap().unwrap(), b"one");
    assert_eq!(reader.next_chunk().unwrap().unwrap(), b"two");
    assert_eq!(reader.next_chunk().unwrap(), None);
    assert_eq!(
        reader.end(),
        Some(StreamEnd::Unfinished {
            chunks: 2,
            torn_bytes: 7
        })
    );
}

/// A store whose disk fills up after `room` bytes.
#[derive(Debug)]
struct FillingStore {
    inner: LocalDirectory,
    room: Arc<AtomicUsize>,
}

struct FillingAppender {
    inner: Box<dyn MediaAppender>,
    room: Arc<AtomicUsize>,
}

impl Write for FillingAppender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.room.load(Ordering::SeqCst);
        if buf.len() > room {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "No space left on device",
            ));
        }
        self.room.fetch_sub(buf.len(), Ordering::SeqCst);
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl MediaAppender for FillingAppender {
    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }
}

impl MediaStore for FillingStore {
    fn create(&self, recording: Uuid) -> Result<Box<dyn MediaAppender>, VaultError> {
        Ok(Box::new(FillingAppender {
            inner: self.inner.create(recording)?,
            room: self.room.clone(),
        }))
    }
    fn open(&self, recording: Uuid) -> Result<Box<dyn io::Read + Send>, VaultError> {
        self.inner.open(recording)
    }
    fn remove(&self, recording: Uuid) -> Result<(), VaultError> {
        self.inner.remove(recording)
    }
    fn size(&self, recording: Uuid) -> Result<Option<u64>, VaultError> {
        self.inner.size(recording)
    }
}

#[test]
fn a_full_disk_is_an_error_and_what_was_sealed_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let store = FillingStore {
        inner: LocalDirectory::new(&dir.path().join("media")).unwrap(),
        room: Arc::new(AtomicUsize::new(32 + 2 * (4 + 100 + 16))),
    };
    let vault = Vault::with_media_store(dir.path(), Box::new(store)).unwrap();
    let id = Uuid::new_v4();
    let mut writer = vault.create_recording(id).unwrap();
    writer.append(&[1; 100]).unwrap();
    writer.append(&[2; 100]).unwrap();
    let err = writer.append(&[3; 100]).unwrap_err();
    assert!(
        matches!(&err, VaultError::Io(e) if e.kind() == io::ErrorKind::StorageFull),
        "{err}"
    );
    let mut reader = vault.open_recording(id).unwrap();
    assert_eq!(reader.next_chunk().unwrap().unwrap(), [1; 100]);
    assert_eq!(reader.next_chunk().unwrap().unwrap(), [2; 100]);
    assert_eq!(reader.next_chunk().unwrap(), None);
    assert_eq!(
        reader.end(),
        Some(StreamEnd::Unfinished {
            chunks: 2,
            torn_bytes: 0
        })
    );
}

#[test]
fn recording_contents_come_back_in_time_order_and_unfinished_ones_only_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path()).unwrap();
    let id = Uuid::new_v4();
    let participant = Uuid::new_v4();
    let mut writer = vault.create_recording(id).unwrap();
    let mut batch = RecordBatch::default();
    for (track, codec) in [(0, Codec::Opus), (1, Codec::Vp8)] {
        batch.push(&Record::Track(Track {
            id: track,
            codec,
            role: TrackRole::Patient,
            participant,
            protected: false,
            screen: false,
        }));
    }
    for (track, at_us) in [(1, 40_000), (0, 20_000), (0, 40_000), (1, 0)] {
        batch.push(&Record::Frame(Frame {
            track,
            at_us,
            keyframe: at_us == 0,
            data: vec![track; 3],
        }));
    }
    batch.push(&Record::Note {
        at_us: 50_000,
        text: "consent withdrawn".into(),
    });
    writer.append(&batch.take()).unwrap();

    let contents = RecordingContents::read(vault.open_recording(id).unwrap(), true).unwrap();
    assert!(!contents.complete);
    let times: Vec<u64> = contents.frames.iter().map(|f| f.at_us).collect();
    assert_eq!(times, [0, 20_000, 40_000, 40_000]);
    assert_eq!(contents.notes, [(50_000, "consent withdrawn".to_string())]);
    let err = RecordingContents::read(vault.open_recording(id).unwrap(), false).unwrap_err();
    assert!(matches!(err, VaultError::Truncated { chunks: 1 }), "{err}");
}

#[test]
fn malformed_records_are_errors() {
    assert!(matches!(
        Record::decode_all(&[9]),
        Err(VaultError::Malformed(_))
    ));
    assert!(matches!(
        Record::decode_all(&[2, 0, 1, 0, 0]),
        Err(VaultError::Malformed(_))
    ));
    let mut frame = Vec::new();
    Record::Frame(Frame {
        track: 0,
        at_us: 1,
        keyframe: false,
        data: vec![1; 10],
    })
    .encode(&mut frame);
    frame.truncate(frame.len() - 1);
    assert!(matches!(
        Record::decode_all(&frame),
        Err(VaultError::Malformed(_))
    ));
}

fn any_record() -> impl Strategy<Value = Record> {
    prop_oneof![
        (
            any::<u8>(),
            0u8..3,
            any::<bool>(),
            any::<bool>(),
            any::<[u8; 16]>(),
            any::<bool>()
        )
            .prop_map(|(id, c, doctor, protected, p, screen)| {
                Record::Track(Track {
                    id,
                    codec: [Codec::Opus, Codec::Vp8, Codec::H264][c as usize],
                    role: if doctor {
                        TrackRole::Doctor
                    } else {
                        TrackRole::Patient
                    },
                    participant: Uuid::from_bytes(p),
                    protected,
                    screen,
                })
            }),
        (
            any::<u8>(),
            any::<u64>(),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(track, at_us, keyframe, data)| Record::Frame(Frame {
                track,
                at_us,
                keyframe,
                data
            })),
        (any::<u64>(), "\\PC{0,40}").prop_map(|(at_us, text)| Record::Note { at_us, text }),
        (
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..80)
        )
            .prop_map(|(sender, kid, suite, wrapped)| {
                Record::EpochKey(EpochKey {
                    sender: Uuid::from_bytes(sender),
                    kid,
                    suite,
                    wrapped,
                })
            },),
    ]
}

proptest! {
    #[test]
    fn records_round_trip(records in proptest::collection::vec(any_record(), 0..20)) {
        let mut batch = RecordBatch::default();
        for record in &records {
            batch.push(record);
        }
        prop_assert_eq!(Record::decode_all(&batch.take()).unwrap(), records);
    }

    /// Sealing in place writes the very bytes sealing from a slice writes, for any chunks, and
    /// reads back; its buffer comes back empty for the next chunk, allocation kept.
    #[test]
    fn sealing_in_place_equals_sealing_a_copy_byte_for_byte(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..12),
        last in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let id = Uuid::from_u128(7);
        let mut copied = ChunkWriter::new(Vec::new(), id, &key()).unwrap();
        let mut in_place = ChunkWriter::new(Vec::new(), id, &key()).unwrap();
        let mut buffer = Vec::new();
        for chunk in &chunks {
            copied.append(chunk).unwrap();
            buffer.extend_from_slice(chunk);
            in_place.append_in_place(&mut buffer).unwrap();
            prop_assert!(buffer.is_empty());
        }
        copied.finish(&last).unwrap();
        in_place.finish(&last).unwrap();
        prop_assert_eq!(in_place.get_mut().clone(), copied.get_mut().clone());
        let (read, end) = read_all(in_place.get_mut(), id, &key()).unwrap();
        let mut expected = chunks.clone();
        expected.push(last);
        prop_assert_eq!(read, expected);
        prop_assert_eq!(end, StreamEnd::Complete { chunks: chunks.len() as u64 + 1 });
        // Nothing after the final chunk, in place either.
        buffer.extend_from_slice(b"more");
        prop_assert!(matches!(in_place.append_in_place(&mut buffer), Err(VaultError::Finished)));
    }

    #[test]
    fn no_flipped_bit_reads_as_whole(position in 32usize..200, bit in 0u8..8) {
        let id = Uuid::from_u128(1);
        let (mut bytes, _) = sealed_stream(id, &key());
        let position = position % bytes.len();
        bytes[position] ^= 1 << bit;
        // Either an error, or (a length made longer) a stream reported as unfinished: never whole.
        let whole = matches!(read_all(&bytes, id, &key()), Ok((_, StreamEnd::Complete { .. })));
        prop_assert!(!whole);
    }
}

#[test]
fn key_rotation_needs_the_vault_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    let service = Vault::open(dir.path()).unwrap();
    let export_tool = Vault::open(dir.path()).unwrap();
    assert!(matches!(
        Vault::open_exclusive(dir.path()),
        Err(VaultError::InUse)
    ));
    drop((service, export_tool));
    let rotating = Vault::open_exclusive(dir.path()).unwrap();
    assert!(matches!(Vault::open(dir.path()), Err(VaultError::InUse)));
    assert_eq!(rotating.rotate_keys().unwrap().new_version, 2);
}

/// A finished recording of one VP8 track whose frames are recorded at `times`, one chunk per
/// `per_chunk` frames.
fn recording_at(times: &[u64], per_chunk: usize) -> (tempfile::TempDir, Vault, Uuid) {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path()).unwrap();
    let id = Uuid::new_v4();
    let mut writer = vault.create_recording(id).unwrap();
    let mut batch = RecordBatch::default();
    batch.push(&Record::Track(Track {
        id: 0,
        codec: Codec::Vp8,
        role: TrackRole::Doctor,
        participant: Uuid::new_v4(),
        protected: false,
        screen: false,
    }));
    for (n, at_us) in times.iter().enumerate() {
        batch.push(&Record::Frame(Frame {
            track: 0,
            at_us: *at_us,
            keyframe: false,
            data: (n as u32).to_be_bytes().to_vec(),
        }));
        if (n + 1) % per_chunk == 0 {
            writer.append(&batch.take()).unwrap();
        }
    }
    writer.finish(&batch.take()).unwrap();
    (dir, vault, id)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Frames recorded up to two seconds out of time order (what the recorder's re-anchoring
    /// allows) stream out exactly as a stable sort of the whole recording puts them, whatever
    /// the chunking, and the index agrees on counts and the last time.
    #[test]
    fn streamed_frames_come_in_the_order_of_a_whole_sort(
        jitter in proptest::collection::vec(0u64..2_000_000, 1..400),
        per_chunk in 1usize..50,
    ) {
        // Frame n arrives at n·20 ms and is stamped up to 2 s earlier (never below 0).
        let times: Vec<u64> = jitter
            .iter()
            .enumerate()
            .map(|(n, j)| (n as u64 * 20_000).saturating_sub(*j))
            .collect();
        let (_dir, vault, id) = recording_at(&times, per_chunk);
        let whole = RecordingContents::read(vault.open_recording(id).unwrap(), false).unwrap();
        let mut streamed = FramesInTimeOrder::new(vault.open_recording(id).unwrap());
        let frames: Vec<Frame> = streamed.by_ref().map(Result::unwrap).collect();
        prop_assert_eq!(&frames, &whole.frames);
        prop_assert_eq!(streamed.late(), 0);
        let index = RecordingIndex::read(vault.open_recording(id).unwrap(), false).unwrap();
        prop_assert_eq!(index.frames(), times.len() as u64);
        prop_assert_eq!(index.last_frame_us, times.iter().max().copied());
        prop_assert!(index.complete);
    }
}

#[test]
fn a_frame_later_than_the_reorder_window_is_dropped_and_counted_not_misplaced() {
    // 0 s, 6 s, then 0.5 s: by the time 0.5 s arrives, 0 s went out (6 s is more than the
    // window after it) — 0.5 s still fits before 6 s, which waits; a frame at 0.2 s after
    // 0.5 s went out is late.
    let mut order = TimeOrder::default();
    let frame = |at_us| Frame {
        track: 0,
        at_us,
        keyframe: false,
        data: Vec::new(),
    };
    order.push(frame(0));
    order.push(frame(6_000_000));
    assert_eq!(order.pop(false).map(|f| f.at_us), Some(0));
    assert_eq!(order.pop(false), None);
    order.push(frame(500_000));
    order.push(frame(12_000_000));
    assert_eq!(order.pop(false).map(|f| f.at_us), Some(500_000));
    order.push(frame(200_000));
    assert_eq!(order.late(), 1);
    let rest: Vec<u64> = std::iter::from_fn(|| order.pop(true))
        .map(|f| f.at_us)
        .collect();
    assert_eq!(rest, [6_000_000, 12_000_000]);
}

#[test]
fn the_reorder_window_holds_a_bounded_number_of_frames_whatever_the_times() {
    // Every frame at the same time: nothing is ever "a window later", yet frames go out once
    // the cap is reached, in record order.
    let mut order = TimeOrder::default();
    let mut out = Vec::new();
    for n in 0..(REORDER_MAX_FRAMES as u32 + 100) {
        order.push(Frame {
            track: 0,
            at_us: 7,
            keyframe: false,
            data: n.to_be_bytes().to_vec(),
        });
        while let Some(f) = order.pop(false) {
            out.push(f);
        }
    }
    assert_eq!(out.len(), 100);
    assert_eq!(out[0].data, 0u32.to_be_bytes());
    assert_eq!(out[99].data, 99u32.to_be_bytes());
}

#[test]
fn a_streamed_frame_of_an_undeclared_track_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Vault::open(dir.path()).unwrap();
    let id = Uuid::new_v4();
    let mut writer = vault.create_recording(id).unwrap();
    let mut batch = RecordBatch::default();
    batch.push(&Record::Frame(Frame {
        track: 3,
        at_us: 0,
        keyframe: true,
        data: vec![1],
    }));
    writer.finish(&batch.take()).unwrap();
    let mut streamed = FramesInTimeOrder::new(vault.open_recording(id).unwrap());
    let err = streamed.next().unwrap().unwrap_err();
    assert!(err.to_string().contains("undeclared track 3"), "{err}");
    assert!(streamed.next().is_none());
    let err = RecordingIndex::read(vault.open_recording(id).unwrap(), false).unwrap_err();
    assert!(err.to_string().contains("undeclared track 3"), "{err}");
}
