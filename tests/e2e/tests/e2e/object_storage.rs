//! The vault on object storage, against a real S3 server: Garage (`scripts/garage.sh`, built by
//! the test command) on loopback. The same promises as on a local directory — what is sealed
//! opens whole, a crash keeps everything up to the last sealed chunk, shredding removes the
//! media — and the store's own faults: a part missing, a store that does not answer, wrong
//! credentials.

use std::time::Instant;

use consult_e2e::garage::Garage;
use consult_vault::object::{ObjectStorage, ObjectStorageConfig};
use consult_vault::{MediaStore, StreamEnd, Vault, VaultError};
use uuid::Uuid;

fn vault_on(config: &ObjectStorageConfig) -> (tempfile::TempDir, Vault) {
    let keys = tempfile::tempdir().unwrap();
    let media = ObjectStorage::new(config).unwrap();
    media.check().unwrap();
    let vault = Vault::with_media_store(keys.path(), Box::new(media)).unwrap();
    (keys, vault)
}

fn read_chunks(vault: &Vault, id: Uuid) -> Result<Vec<Vec<u8>>, VaultError> {
    let mut reader = vault.open_recording(id)?;
    let mut chunks = Vec::new();
    while let Some(chunk) = reader.next_chunk()? {
        chunks.push(chunk);
    }
    Ok(chunks)
}

#[test]
fn recordings_on_garage_open_whole_survive_a_crash_and_are_shredded() {
    let garage = Garage::start(1);
    let config = garage.config();
    let (_keys, vault) = vault_on(&config);

    // Whole: every chunk back, in order, the stream finished.
    let id = Uuid::new_v4();
    let mut writer = vault.create_recording(id).unwrap();
    let chunks: Vec<Vec<u8>> = (0..20u8)
        .map(|i| vec![i; 10_000 + usize::from(i)])
        .collect();
    for chunk in &chunks[..19] {
        writer.append(chunk).unwrap();
    }
    writer.finish(&chunks[19]).unwrap();
    assert_eq!(read_chunks(&vault, id).unwrap(), chunks);
    let size = vault.media_size(id).unwrap().unwrap();
    assert!(size > 20 * 10_000, "{size} bytes");
    // A second stream for the same recording is refused, and the first still opens.
    assert!(vault.create_recording(id).is_err());
    assert_eq!(read_chunks(&vault, id).unwrap(), chunks);

    // A crash: the writer gone without its final chunk. Every sealed chunk reads back, and the
    // stream says it is truncated (never whole).
    let crashed = Uuid::new_v4();
    let mut writer = vault.create_recording(crashed).unwrap();
    for chunk in &chunks[..5] {
        writer.append(chunk).unwrap();
    }
    drop(writer);
    let mut reader = vault.open_recording(crashed).unwrap();
    for chunk in &chunks[..5] {
        assert_eq!(&reader.next_chunk().unwrap().unwrap(), chunk);
    }
    assert_eq!(reader.next_chunk().unwrap(), None);
    assert!(matches!(
        reader.end(),
        Some(StreamEnd::Unfinished { chunks: 5, .. })
    ));

    // Shredded: the key destroyed and every part removed.
    vault.shred(id).unwrap();
    assert!(matches!(
        vault.open_recording(id),
        Err(VaultError::Shredded { .. })
    ));
    let store = ObjectStorage::new(&config).unwrap();
    assert_eq!(store.size(id).unwrap(), None, "no part left");
    assert!(matches!(
        store.open(id),
        Err(VaultError::MediaMissing { .. })
    ));
}

#[test]
fn a_missing_part_is_an_error_never_a_shorter_stream() {
    let garage = Garage::start(1);
    let config = garage.config();
    let (_keys, vault) = vault_on(&config);
    let id = Uuid::new_v4();
    let mut writer = vault.create_recording(id).unwrap();
    for i in 0..4u8 {
        writer.append(&[i; 1000]).unwrap();
    }
    writer.finish(b"end").unwrap();
    // Part 2 (the second chunk) deleted behind the vault's back.
    let raw = object_store_client(&config);
    raw.delete(&format!("{}{id}/0000000002", config.prefix));
    let err = match vault.open_recording(id) {
        Ok(mut reader) => loop {
            match reader.next_chunk() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("a stream with a part missing read as whole"),
                Err(e) => break e,
            }
        },
        Err(e) => e,
    };
    assert!(err.to_string().contains("lacks part 2"), "{err}");
}

#[test]
fn a_store_that_does_not_answer_or_refuses_the_key_fails_in_bounded_time() {
    let garage = Garage::start(1);
    let config = garage.config();

    // Wrong credentials: refused, and said so.
    let wrong = ObjectStorageConfig {
        secret_access_key: "0".repeat(64),
        ..config.clone()
    };
    let err = ObjectStorage::new(&wrong).unwrap().check().unwrap_err();
    assert!(err.to_string().contains("object storage"), "{err}");

    // A recording in progress when the store stops answering: the next sealed chunk fails
    // within the time limit (retries included), and what was sealed before stays readable once
    // the store is back.
    let (_keys, vault) = vault_on(&config);
    let id = Uuid::new_v4();
    let mut writer = vault.create_recording(id).unwrap();
    writer.append(b"before the outage").unwrap();
    garage.stop(1);
    let started = Instant::now();
    assert!(writer.append(b"during the outage").is_err());
    let took = started.elapsed();
    assert!(
        took < config.timeout * 3,
        "the failed write took {took:?} with a limit of {:?}",
        config.timeout
    );
    assert!(
        vault
            .open_recording(id)
            .and_then(|mut r| r.next_chunk())
            .is_err(),
        "nothing reads while the store is down"
    );
    garage.restart(1);

    // A store that takes connections and answers nothing (frozen): the write fails within the
    // time limit all the same, and the recording reads back once the store answers again.
    let hung = Uuid::new_v4();
    let mut writer = vault.create_recording(hung).unwrap();
    writer.append(b"before the hang").unwrap();
    garage.pause(1);
    let started = Instant::now();
    let failed = writer.append(b"during the hang");
    let took = started.elapsed();
    garage.resume(1);
    assert!(failed.is_err(), "a write to a store that does not answer");
    assert!(
        took < config.timeout * 3,
        "the failed write took {took:?} with a limit of {:?}",
        config.timeout
    );
    let mut reader = vault.open_recording(hung).unwrap();
    assert_eq!(reader.next_chunk().unwrap().unwrap(), b"before the hang");

    let mut reader = vault.open_recording(id).unwrap();
    assert_eq!(reader.next_chunk().unwrap().unwrap(), b"before the outage");
    assert_eq!(reader.next_chunk().unwrap(), None);
    assert!(matches!(
        reader.end(),
        Some(StreamEnd::Unfinished { chunks: 1, .. })
    ));
}

/// A raw S3 client of the same bucket, to play the part of damage behind the vault's back.
struct RawClient(ObjectStorageConfig);

fn object_store_client(config: &ObjectStorageConfig) -> RawClient {
    RawClient(config.clone())
}

impl RawClient {
    fn delete(&self, key: &str) {
        use object_store::ObjectStore as _;
        let c = &self.0;
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(c.endpoint.clone().unwrap())
            .with_bucket_name(&c.bucket)
            .with_region(&c.region)
            .with_access_key_id(&c.access_key_id)
            .with_secret_access_key(&c.secret_access_key)
            .with_allow_http(true)
            .build()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(store.delete(&object_store::path::Path::from(key)))
            .unwrap();
    }
}
