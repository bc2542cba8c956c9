//! Consult's vault: encrypted storage for recordings.
//!
//! * **Envelope encryption.** Each recording gets a random AES-256-GCM data key. Its media is an
//!   append-only stream of sealed chunks ([`chunks`]) whose authenticated data carries the chunk
//!   index and a final-chunk flag, so truncation, reordering and substitution are detected and a
//!   crash keeps everything up to the last sealed chunk readable.
//! * **Versioned key-encryption keys.** Data keys are wrapped by the current KEK of the keyring
//!   ([`keys::Keyring`], `keyring.json` in the vault directory). [`Vault::rotate_keys`] re-wraps
//!   every data key under a new version and retires the old ones, without re-encrypting media.
//! * **Crypto-shredding.** [`Vault::shred`] destroys a recording's wrapped key: every copy of its
//!   media is unreadable once no copy of that key is left (Consult's backups keep the keys in a
//!   snapshot of their own that the next backup replaces and deletes).
//! * **Storage backends.** Media goes through [`store::MediaStore`]; the local directory is the
//!   default. Wrapped keys stay in the vault directory (`keys/`), apart from the media, so a
//!   backup of the media alone opens nothing.
//! * **Recordings.** [`recording`] is the record format the recorder writes into chunks (tracks,
//!   frames, notes); [`matroska`] turns it into a playable WebM or Matroska file.
//!
//! ```
//! use consult_vault::{Vault, StreamEnd};
//! # fn main() -> Result<(), consult_vault::VaultError> {
//! let dir = tempfile::tempdir()?;
//! let vault = Vault::open(dir.path())?;
//! let id = uuid::Uuid::new_v4();
//! let mut writer = vault.create_recording(id)?;
//! writer.append(b"first second of media")?;
//! writer.finish(b"")?;
//!
//! let mut reader = vault.open_recording(id)?;
//! assert_eq!(reader.next_chunk()?.as_deref(), Some(&b"first second of media"[..]));
//! assert_eq!(reader.next_chunk()?.as_deref(), Some(&b""[..]));
//! assert_eq!(reader.next_chunk()?, None);
//! assert_eq!(reader.end(), Some(StreamEnd::Complete { chunks: 2 }));
//!
//! vault.shred(id)?;
//! assert!(matches!(vault.open_recording(id), Err(consult_vault::VaultError::Shredded { .. })));
//! # Ok(()) }
//! ```

pub mod chunks;
pub mod documents;
pub mod keys;
pub mod matroska;
#[cfg(feature = "object-storage")]
pub mod object;
pub mod recording;
pub mod store;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use uuid::Uuid;

pub use chunks::{ChunkReader, ChunkWriter, StreamEnd};
pub use documents::SealedDocument;
pub use keys::{DataKey, Keyring, SigningKey, WrappedKey};
pub use store::{LocalDirectory, MediaAppender, MediaStore};

/// What can go wrong in the vault. Messages name what is wrong, for operators.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Reading or writing storage failed (including a full disk).
    #[error("storage: {0}")]
    Io(#[from] io::Error),
    /// A cryptographic operation failed unexpectedly.
    #[error("cryptography failed: {0}")]
    Crypto(&'static str),
    /// The keyring file is unreadable or inconsistent.
    #[error("keyring: {0}")]
    BadKeyring(String),
    /// The KEK version that wraps this key is not in the keyring (rotated away, or another
    /// keyring).
    #[error("the key-encryption key version {version} is not in this keyring (rotated away, or the wrong keyring)")]
    KekMissing {
        /// The missing version.
        version: u32,
    },
    /// The wrapped data key does not open with this keyring (tampered, or the wrong keyring).
    #[error("the data key of recording {recording} does not open with this keyring (tampered, or the wrong keyring)")]
    KeyUnwrap {
        /// The recording.
        recording: Uuid,
    },
    /// The recording's key was destroyed: its media can never be read again.
    #[error("recording {recording} was shredded: its key is destroyed and its media unreadable")]
    Shredded {
        /// The recording.
        recording: Uuid,
    },
    /// The recording's media stream is not in storage.
    #[error("the media of recording {recording} is missing from storage")]
    MediaMissing {
        /// The recording.
        recording: Uuid,
    },
    /// The stream does not start with the vault header.
    #[error("not a vault stream (bad header)")]
    NotAVaultStream,
    /// The stream belongs to another recording.
    #[error("the stream belongs to another recording")]
    WrongRecording,
    /// A chunk failed authentication: altered, or a chunk before it is missing or out of order.
    #[error(
        "chunk {chunk} fails authentication: it was altered, or a chunk is missing or out of order"
    )]
    Corrupt {
        /// Index of the chunk.
        chunk: u64,
    },
    /// Bytes follow the final chunk.
    #[error("data follows the final chunk (after {chunks} chunks)")]
    TrailingData {
        /// Chunks before the extra data.
        chunks: u64,
    },
    /// The stream ends without its final chunk.
    #[error("the stream is truncated: it ends after chunk {chunks} without its final chunk")]
    Truncated {
        /// Authentic chunks before the end.
        chunks: u64,
    },
    /// A write after the final chunk.
    #[error("the stream is finished")]
    Finished,
    /// A chunk over [`chunks::MAX_CHUNK_BYTES`].
    #[error("a chunk of {0} bytes is over the limit")]
    ChunkTooLarge(usize),
    /// Another process holds the vault (key rotation needs it to itself).
    #[error("the vault is in use by another process (stop the service first)")]
    InUse,
    /// A record inside a chunk does not parse.
    #[error("malformed recording record: {0}")]
    Malformed(String),
}

/// Write `bytes` to `path` so that a crash leaves the old or the new content, never a mix:
/// a temporary file in the same directory, fsync, rename, fsync of the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], private: bool) -> Result<(), VaultError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = private;
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// What [`Vault::rotate_keys`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The new current KEK version.
    pub new_version: u32,
    /// Data keys re-wrapped under it.
    pub rewrapped: usize,
    /// KEK versions destroyed.
    pub retired: Vec<u32>,
}

/// A recording being written: a sealed chunk stream that syncs every chunk.
pub struct RecordingWriter {
    chunks: ChunkWriter<Box<dyn MediaAppender>>,
}

impl std::fmt::Debug for RecordingWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingWriter")
            .field("chunks", &self.chunks)
            .finish()
    }
}

impl RecordingWriter {
    /// Seal `plaintext` as the next chunk and make it durable.
    pub fn append(&mut self, plaintext: &[u8]) -> Result<(), VaultError> {
        self.chunks.append(plaintext)?;
        self.chunks.get_mut().sync()?;
        Ok(())
    }

    /// Seal the plaintext in `chunk` as the next chunk where it lies, make it durable, and clear
    /// `chunk` for the next (see [`ChunkWriter::append_in_place`]).
    pub fn append_in_place(&mut self, chunk: &mut Vec<u8>) -> Result<(), VaultError> {
        self.chunks.append_in_place(chunk)?;
        self.chunks.get_mut().sync()?;
        Ok(())
    }

    /// Seal the final chunk and make the stream durable.
    pub fn finish(&mut self, plaintext: &[u8]) -> Result<(), VaultError> {
        self.chunks.finish(plaintext)?;
        self.chunks.get_mut().sync()?;
        Ok(())
    }

    /// Chunks sealed so far.
    pub fn chunks(&self) -> u64 {
        self.chunks.chunks()
    }
}

/// The vault: a keyring, wrapped data keys, and a media store.
#[derive(Debug)]
pub struct Vault {
    /// Held for the vault's life: shared by users, exclusive for key rotation.
    _lock: File,
    keys_dir: PathBuf,
    keyring: Mutex<Keyring>,
    media: Box<dyn MediaStore>,
}

impl Vault {
    /// Open (creating on first use) the vault in `dir`: `keyring.json`, `keys/` and, as the
    /// media store, `media/`. Several processes may use a vault at once (a shared lock), but
    /// not while one rotates its keys.
    pub fn open(dir: &Path) -> Result<Self, VaultError> {
        let media = LocalDirectory::new(&dir.join("media"))?;
        Self::with_media_store(dir, Box::new(media))
    }

    /// Open the vault in `dir` for key rotation: refused with [`VaultError::InUse`] while any
    /// other process (the service) has it open, since it keeps the keyring in memory.
    pub fn open_exclusive(dir: &Path) -> Result<Self, VaultError> {
        let media = LocalDirectory::new(&dir.join("media"))?;
        Self::opened(dir, Box::new(media), true)
    }

    /// Open the vault in `dir`, keeping media in `media`.
    pub fn with_media_store(dir: &Path, media: Box<dyn MediaStore>) -> Result<Self, VaultError> {
        Self::opened(dir, media, false)
    }

    fn opened(dir: &Path, media: Box<dyn MediaStore>, exclusive: bool) -> Result<Self, VaultError> {
        fs::create_dir_all(dir.join("keys"))?;
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(".lock"))?;
        let locked = if exclusive {
            lock.try_lock()
        } else {
            lock.try_lock_shared()
        };
        match locked {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(VaultError::InUse),
            Err(fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        let keyring = Keyring::open_or_create(&dir.join("keyring.json"))?;
        Ok(Self {
            _lock: lock,
            keys_dir: dir.join("keys"),
            keyring: Mutex::new(keyring),
            media,
        })
    }

    fn keyring(&self) -> std::sync::MutexGuard<'_, Keyring> {
        self.keyring.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key_path(&self, recording: Uuid) -> PathBuf {
        self.keys_dir.join(format!("{recording}.json"))
    }

    fn store_wrapped(&self, wrapped: &WrappedKey) -> Result<(), VaultError> {
        let text =
            serde_json::to_vec_pretty(wrapped).map_err(|e| VaultError::Malformed(e.to_string()))?;
        write_atomically(&self.key_path(wrapped.recording), &text, true)
    }

    fn load_wrapped(&self, recording: Uuid) -> Result<WrappedKey, VaultError> {
        let text = match fs::read(self.key_path(recording)) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VaultError::Shredded { recording })
            }
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&text).map_err(|_| VaultError::KeyUnwrap { recording })
    }

    /// The data key of a recording (for tools that must open it, such as export).
    pub fn data_key(&self, recording: Uuid) -> Result<DataKey, VaultError> {
        let wrapped = self.load_wrapped(recording)?;
        self.keyring().unwrap(recording, &wrapped)
    }

    /// Start a new recording: a fresh data key, wrapped and stored before any media is written.
    /// A recording that has media already is refused before its key is touched.
    pub fn create_recording(&self, recording: Uuid) -> Result<RecordingWriter, VaultError> {
        let key = DataKey::generate()?;
        let wrapped = self.keyring().wrap(recording, &key)?;
        let out = self.media.create(recording)?;
        self.store_wrapped(&wrapped)?;
        let mut chunks = ChunkWriter::new(out, recording, &key)?;
        chunks.get_mut().sync()?;
        Ok(RecordingWriter { chunks })
    }

    /// Read a recording's chunks. [`VaultError::Shredded`] if its key is destroyed.
    pub fn open_recording(
        &self,
        recording: Uuid,
    ) -> Result<ChunkReader<Box<dyn Read + Send>>, VaultError> {
        let key = self.data_key(recording)?;
        let input = self.media.open(recording)?;
        ChunkReader::new(input, recording, &key)
    }

    /// Whether a recording's key has been destroyed (or never existed).
    pub fn is_shredded(&self, recording: Uuid) -> bool {
        !self.key_path(recording).exists()
    }

    /// Size of a recording's sealed media in storage.
    pub fn media_size(&self, recording: Uuid) -> Result<Option<u64>, VaultError> {
        self.media.size(recording)
    }

    /// Every recording with a key in the vault.
    pub fn recordings(&self) -> Result<Vec<Uuid>, VaultError> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.keys_dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name
                .strip_suffix(".json")
                .and_then(|s| Uuid::parse_str(s).ok())
            {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Crypto-shredding: overwrite and delete the recording's wrapped key, then delete its
    /// media. Every copy of the media is unreadable once no copy of the wrapped key is left.
    pub fn shred(&self, recording: Uuid) -> Result<(), VaultError> {
        let path = self.key_path(recording);
        if let Ok(meta) = fs::metadata(&path) {
            let mut file = OpenOptions::new().write(true).open(&path)?;
            file.write_all(&vec![0u8; meta.len() as usize])?;
            file.sync_all()?;
            fs::remove_file(&path)?;
            File::open(&self.keys_dir)?.sync_all()?;
        }
        self.media.remove(recording)
    }

    /// Seal a small document (at most [`documents::MAX_DOCUMENT_BYTES`]) as `id`, under a
    /// fresh data key wrapped by the current KEK, for storage elsewhere.
    pub fn seal_document(&self, id: Uuid, plaintext: &[u8]) -> Result<SealedDocument, VaultError> {
        let key = DataKey::generate()?;
        let wrapped = self.keyring().wrap(id, &key)?;
        documents::seal(id, &key, wrapped, plaintext)
    }

    /// Open the document sealed as `id`: [`VaultError::KeyUnwrap`] if its key does not open
    /// with this keyring, [`VaultError::Corrupt`] if the ciphertext was altered or is another
    /// document's.
    pub fn open_document(
        &self,
        id: Uuid,
        sealed: &SealedDocument,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, VaultError> {
        let key = self.keyring().unwrap(id, &sealed.key)?;
        documents::open(id, &key, sealed)
    }

    /// The current signing key, made with `make` (which returns its id, private key and public
    /// key) if the keyring has none yet. Nodes sharing the vault agree: the first to get here
    /// makes it, under a lock, and the others read it from the keyring file.
    pub fn ensure_signing_key(
        &self,
        make: impl FnOnce() -> Result<(String, zeroize::Zeroizing<Vec<u8>>, String), VaultError>,
    ) -> Result<SigningKey, VaultError> {
        let mut keyring = self.keyring();
        if let Some(key) = keyring.current_signing_key() {
            return Ok(key.clone());
        }
        let lock = self.signing_lock()?;
        lock.lock()?;
        keyring.reload_signing_keys()?;
        if keyring.current_signing_key().is_none() {
            let (id, private, public) = make()?;
            keyring.add_signing_key(&id, &private, &public)?;
        }
        keyring
            .current_signing_key()
            .cloned()
            .ok_or(VaultError::Crypto("no current signing key"))
    }

    /// Make a new current signing key with `make`; the old one is retired (its private key
    /// destroyed, its public key kept). Needs the vault to itself ([`Vault::open_exclusive`]),
    /// as services keep the current key in memory.
    pub fn rotate_signing_key(
        &self,
        make: impl FnOnce() -> Result<(String, zeroize::Zeroizing<Vec<u8>>, String), VaultError>,
    ) -> Result<SigningKey, VaultError> {
        let mut keyring = self.keyring();
        let lock = self.signing_lock()?;
        lock.lock()?;
        keyring.reload_signing_keys()?;
        let (id, private, public) = make()?;
        keyring.add_signing_key(&id, &private, &public)?;
        keyring
            .current_signing_key()
            .cloned()
            .ok_or(VaultError::Crypto("no current signing key"))
    }

    /// Every signing key, oldest first, as the keyring file has them now.
    pub fn signing_keys(&self) -> Result<Vec<SigningKey>, VaultError> {
        let mut keyring = self.keyring();
        keyring.reload_signing_keys()?;
        Ok(keyring.signing_keys().to_vec())
    }

    fn signing_lock(&self) -> Result<File, VaultError> {
        let dir = self.keys_dir.parent().unwrap_or(Path::new("."));
        Ok(OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(".signing.lock"))?)
    }

    /// The current KEK version.
    pub fn kek_version(&self) -> u32 {
        self.keyring().current_version()
    }

    /// Add a KEK version, re-wrap every data key under it, then destroy the old versions.
    /// Media is not touched. If this stops half-way, the old versions are still in the
    /// keyring and running it again completes it.
    pub fn rotate_keys(&self) -> Result<Rotation, VaultError> {
        self.rotate_keys_with(|_| Ok(0))
    }

    /// [`Vault::rotate_keys`], re-wrapping also the keys of documents kept elsewhere: `also`
    /// gets a re-wrapping function (id and sealed document in, the same document under the
    /// new KEK out) and returns how many it re-wrapped; the old versions are destroyed only
    /// after it succeeds.
    pub fn rotate_keys_with(
        &self,
        also: impl FnOnce(
            &dyn Fn(Uuid, &SealedDocument) -> Result<SealedDocument, VaultError>,
        ) -> Result<usize, VaultError>,
    ) -> Result<Rotation, VaultError> {
        let mut keyring = self.keyring();
        let new_version = keyring.add_version()?;
        let mut rewrapped = 0;
        for recording in self.recordings()? {
            let wrapped = self.load_wrapped(recording)?;
            if wrapped.kek_version == new_version {
                continue;
            }
            let key = keyring.unwrap(recording, &wrapped)?;
            self.store_wrapped(&keyring.wrap(recording, &key)?)?;
            rewrapped += 1;
        }
        let rewrap = |id: Uuid, sealed: &SealedDocument| -> Result<SealedDocument, VaultError> {
            if sealed.key.kek_version == new_version {
                return Ok(sealed.clone());
            }
            let key = keyring.unwrap(id, &sealed.key)?;
            Ok(SealedDocument {
                key: keyring.wrap(id, &key)?,
                ..sealed.clone()
            })
        };
        rewrapped += also(&rewrap)?;
        let retired = keyring.retire_old_versions()?;
        Ok(Rotation {
            new_version,
            rewrapped,
            retired,
        })
    }
}
