//! Where sealed media streams live. The vault only ever hands a store ciphertext.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::VaultError;

/// An append-only sink for one recording's sealed stream.
pub trait MediaAppender: Write + Send {
    /// Make everything written so far durable (fsync for files).
    fn sync(&mut self) -> io::Result<()>;
}

/// Storage for sealed media streams, one per recording. The local directory is the default;
/// object storage is another implementation of this trait.
pub trait MediaStore: Send + Sync + std::fmt::Debug {
    /// Create the (empty) stream of a new recording; an existing one is an error.
    fn create(&self, recording: Uuid) -> Result<Box<dyn MediaAppender>, VaultError>;
    /// Read a recording's stream from the start.
    fn open(&self, recording: Uuid) -> Result<Box<dyn Read + Send>, VaultError>;
    /// Delete a recording's stream (missing is fine).
    fn remove(&self, recording: Uuid) -> Result<(), VaultError>;
    /// Size in bytes of a recording's stream, if it exists.
    fn size(&self, recording: Uuid) -> Result<Option<u64>, VaultError>;
}

/// Streams as files `<dir>/<recording id>.cvlt`.
#[derive(Debug, Clone)]
pub struct LocalDirectory {
    dir: PathBuf,
}

impl LocalDirectory {
    /// Use (and create) `dir`.
    pub fn new(dir: &Path) -> Result<Self, VaultError> {
        fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The file of a recording's stream.
    pub fn path_of(&self, recording: Uuid) -> PathBuf {
        self.dir.join(format!("{recording}.cvlt"))
    }
}

struct FileAppender(File);

impl Write for FileAppender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl MediaAppender for FileAppender {
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl MediaStore for LocalDirectory {
    fn create(&self, recording: Uuid) -> Result<Box<dyn MediaAppender>, VaultError> {
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(self.path_of(recording))?;
        Ok(Box::new(FileAppender(file)))
    }

    fn open(&self, recording: Uuid) -> Result<Box<dyn Read + Send>, VaultError> {
        match File::open(self.path_of(recording)) {
            Ok(file) => Ok(Box::new(BufReader::with_capacity(256 * 1024, file))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(VaultError::MediaMissing { recording })
            }
            Err(e) => Err(e.into()),
        }
    }

    fn remove(&self, recording: Uuid) -> Result<(), VaultError> {
        match fs::remove_file(self.path_of(recording)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn size(&self, recording: Uuid) -> Result<Option<u64>, VaultError> {
        match fs::metadata(self.path_of(recording)) {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
