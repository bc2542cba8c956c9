//! Sealed media streams in an S3 bucket (any S3-compatible store: Garage, AWS, …), through the
//! `object_store` crate.
//!
//! Objects cannot be appended to, so a recording's stream is a sequence of parts:
//! `<prefix><recording id>/<part number, 10 digits>`, one object per [`MediaAppender::sync`] —
//! the vault syncs after every sealed chunk. What a crash leaves is every part uploaded, so
//! everything up to the last sealed chunk; a part is uploaded whole or not at all (an S3 PUT is
//! atomic). Reading lists the parts, checks they run from 0 without a gap, and streams them in
//! order, one part in memory at a time.
//!
//! The vault's interface is blocking; this store runs its requests on a small runtime of its
//! own, so it can be called from any thread. Every request has a time limit
//! ([`ObjectStorageConfig::timeout`]), and so has a write or read of one part, retries included:
//! a store that stops answering fails the write (the recorder stops and says so) instead of
//! holding it. Listing and removing take as many requests as there are pages of parts.

use std::future::Future;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};
use uuid::Uuid;

use crate::store::{MediaAppender, MediaStore};
use crate::VaultError;

/// Where and how to reach the bucket.
#[derive(Clone)]
pub struct ObjectStorageConfig {
    /// The S3 endpoint, e.g. `http://127.0.0.1:3900` (none: AWS for `region`).
    pub endpoint: Option<String>,
    /// The bucket.
    pub bucket: String,
    /// The region (Garage's default is `garage`).
    pub region: String,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// Prepended to every object name (e.g. `media/`).
    pub prefix: String,
    /// Allow an `http://` endpoint (a store on loopback or a private network).
    pub allow_http: bool,
    /// The longest a request may take, retries included.
    pub timeout: Duration,
}

impl std::fmt::Debug for ObjectStorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("ObjectStorageConfig")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("prefix", &self.prefix)
            .field("allow_http", &self.allow_http)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The runtime the requests run on, shut down without waiting when the store goes (it may be
/// dropped inside another runtime).
struct Background(Option<tokio::runtime::Runtime>);

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The result of a request started on the store's runtime, to wait for later.
struct Pending<T>(std::sync::mpsc::Receiver<Result<T, VaultError>>);

impl<T> Pending<T> {
    fn wait(self) -> Result<T, VaultError> {
        self.0
            .recv()
            .map_err(|_| storage_error("the object store's request was dropped"))?
    }
}

impl Background {
    /// Start `future` on the store's runtime; [`Pending::wait`] for it from any thread.
    fn start<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T, VaultError>> + Send + 'static,
    ) -> Pending<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        match &self.0 {
            Some(runtime) => {
                runtime.spawn(async move {
                    let _ = tx.send(future.await);
                });
            }
            None => {
                let _ = tx.send(Err(storage_error("the object store is shut down")));
            }
        }
        Pending(rx)
    }

    /// Run `future` on the store's runtime and wait for it, from any thread.
    fn run<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T, VaultError>> + Send + 'static,
    ) -> Result<T, VaultError> {
        self.start(future).wait()
    }
}

fn storage_error(what: impl std::fmt::Display) -> VaultError {
    VaultError::Io(io::Error::other(format!("object storage: {what}")))
}

fn object_error(e: object_store::Error) -> VaultError {
    // Its message names the request and the store's answer (never the credentials: requests
    // are signed, not carrying the secret); the innermost cause says what went wrong.
    let mut innermost = None;
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        innermost = Some(cause.to_string());
        source = cause.source();
    }
    match innermost {
        Some(cause) if !e.to_string().contains(&cause) => storage_error(format!("{e}: {cause}")),
        _ => storage_error(e),
    }
}

/// A recording's media as parts of an S3 bucket (see the module documentation).
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    timeout: Duration,
    background: Arc<Background>,
}

impl std::fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStorage")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl ObjectStorage {
    /// A store for `config` (no request is made yet: see [`ObjectStorage::check`]).
    pub fn new(config: &ObjectStorageConfig) -> Result<Self, VaultError> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(&config.secret_access_key)
            // Path-style addressing: what self-hosted stores serve.
            .with_virtual_hosted_style_request(false)
            // (`allow_http` lives in the client options: set there, not overwritten by them.)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(config.allow_http)
                    .with_timeout(config.timeout)
                    .with_connect_timeout(config.timeout.min(Duration::from_secs(5))),
            )
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: config.timeout,
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder.build().map_err(object_error)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("consult-object-storage")
            .enable_all()
            .build()?;
        Ok(Self {
            store: Arc::new(store),
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            background: Arc::new(Background(Some(runtime))),
        })
    }

    /// Check the bucket answers and takes writes: write, read back and delete a small object.
    pub fn check(&self) -> Result<(), VaultError> {
        let store = Arc::clone(&self.store);
        let path = ObjectPath::from(format!("{}.consult-check-{}", self.prefix, Uuid::new_v4()));
        let timeout = self.timeout;
        self.background.run(async move {
            let probe = async {
                store
                    .put(&path, PutPayload::from_static(b"consult"))
                    .await?;
                let read = store.get(&path).await?.bytes().await?;
                store.delete(&path).await?;
                Ok::<_, object_store::Error>(read)
            };
            match tokio::time::timeout(timeout, probe).await {
                Ok(Ok(read)) if read.as_ref() == b"consult" => Ok(()),
                Ok(Ok(_)) => Err(storage_error(
                    "the bucket returned other bytes than written",
                )),
                Ok(Err(e)) => Err(object_error(e)),
                Err(_) => Err(storage_error(format!("no answer within {timeout:?}"))),
            }
        })
    }

    fn part_prefix(&self, recording: Uuid) -> ObjectPath {
        ObjectPath::from(format!("{}{recording}", self.prefix))
    }

    /// The recording's parts, in order, with their sizes; an error if one is missing.
    fn parts(&self, recording: Uuid) -> Result<Vec<(ObjectPath, u64)>, VaultError> {
        let store = Arc::clone(&self.store);
        let prefix = self.part_prefix(recording);
        // Each page of the listing is a request of its own, bounded by the client's limits.
        let mut listed = self.background.run(async move {
            store
                .list(Some(&prefix))
                .try_collect::<Vec<_>>()
                .await
                .map_err(object_error)
        })?;
        listed.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
        let mut parts = Vec::with_capacity(listed.len());
        for (expected, object) in listed.into_iter().enumerate() {
            let number = object
                .location
                .filename()
                .and_then(|name| name.parse::<usize>().ok());
            if number != Some(expected) {
                return Err(VaultError::Malformed(format!(
                    "the media of recording {recording} in object storage lacks part {expected} \
                     (found {})",
                    object.location
                )));
            }
            parts.push((object.location, object.size));
        }
        Ok(parts)
    }
}

fn part_name(prefix: &ObjectPath, number: u64) -> ObjectPath {
    prefix.child(format!("{number:010}"))
}

impl MediaStore for ObjectStorage {
    fn create(&self, recording: Uuid) -> Result<Box<dyn MediaAppender>, VaultError> {
        if !self.parts(recording)?.is_empty() {
            return Err(VaultError::Io(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("recording {recording} already has media in object storage"),
            )));
        }
        Ok(Box::new(PartAppender {
            store: Arc::clone(&self.store),
            background: Arc::clone(&self.background),
            prefix: self.part_prefix(recording),
            next: 0,
            pending: Vec::new(),
            timeout: self.timeout,
        }))
    }

    fn open(&self, recording: Uuid) -> Result<Box<dyn Read + Send>, VaultError> {
        let parts = self.parts(recording)?;
        if parts.is_empty() {
            return Err(VaultError::MediaMissing { recording });
        }
        Ok(Box::new(PartReader {
            store: Arc::clone(&self.store),
            background: Arc::clone(&self.background),
            parts: parts.into_iter().map(|(path, _)| path).collect(),
            next: 0,
            ahead: std::collections::VecDeque::new(),
            current: io::Cursor::new(Vec::new()),
            failed: None,
            timeout: self.timeout,
        }))
    }

    fn remove(&self, recording: Uuid) -> Result<(), VaultError> {
        let store = Arc::clone(&self.store);
        let prefix = self.part_prefix(recording);
        // One DELETE per part, eight at a time: each a small request within the client's
        // limits, however many parts (a batch of many in one DeleteObjects can outlast them).
        self.background.run(async move {
            let listed: Vec<_> = store
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(object_error)?;
            futures_util::stream::iter(listed)
                .map(|object| {
                    let store = Arc::clone(&store);
                    async move { store.delete(&object.location).await }
                })
                .buffer_unordered(8)
                .try_collect::<Vec<_>>()
                .await
                .map(|_| ())
                .map_err(object_error)
        })
    }

    fn size(&self, recording: Uuid) -> Result<Option<u64>, VaultError> {
        let parts = self.parts(recording)?;
        Ok((!parts.is_empty()).then(|| parts.iter().map(|(_, size)| size).sum()))
    }
}

/// Collects what is written; each sync uploads it as the next part.
struct PartAppender {
    store: Arc<dyn ObjectStore>,
    background: Arc<Background>,
    prefix: ObjectPath,
    next: u64,
    pending: Vec<u8>,
    timeout: Duration,
}

impl Write for PartAppender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl MediaAppender for PartAppender {
    fn sync(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let store = Arc::clone(&self.store);
        let path = part_name(&self.prefix, self.next);
        let payload = PutPayload::from(std::mem::take(&mut self.pending));
        let timeout = self.timeout;
        let kept = payload.clone();
        let uploaded = self.background.run(async move {
            match tokio::time::timeout(timeout, store.put(&path, payload)).await {
                Ok(put) => put.map(|_| ()).map_err(object_error),
                Err(_) => Err(storage_error(format!("no answer within {timeout:?}"))),
            }
        });
        match uploaded {
            Ok(()) => {
                self.next += 1;
                Ok(())
            }
            Err(e) => {
                // Kept for a retry of the same part: nothing after it was written.
                for bytes in kept.iter() {
                    self.pending.extend_from_slice(bytes);
                }
                Err(io::Error::other(e.to_string()))
            }
        }
    }
}

/// Parts fetched ahead of the one being read: a part is one chunk (about a second of a call),
/// so reading one part at a time would wait a round trip per second of media.
const READ_AHEAD: usize = 8;

/// Streams the parts in order, [`READ_AHEAD`] fetched ahead.
struct PartReader {
    store: Arc<dyn ObjectStore>,
    background: Arc<Background>,
    parts: Vec<ObjectPath>,
    next: usize,
    ahead: std::collections::VecDeque<Pending<Vec<u8>>>,
    current: io::Cursor<Vec<u8>>,
    timeout: Duration,
    /// Why a part could not be read, once one could not.
    failed: Option<String>,
}

impl PartReader {
    fn fetch_ahead(&mut self) {
        while self.ahead.len() < READ_AHEAD {
            let Some(path) = self.parts.get(self.next).cloned() else {
                return;
            };
            self.next += 1;
            let store = Arc::clone(&self.store);
            let timeout = self.timeout;
            self.ahead.push_back(self.background.start(async move {
                let get = async { store.get(&path).await?.bytes().await };
                match tokio::time::timeout(timeout, get).await {
                    Ok(got) => got.map(|bytes| bytes.to_vec()).map_err(object_error),
                    Err(_) => Err(storage_error(format!("no answer within {timeout:?}"))),
                }
            }));
        }
    }
}

impl Read for PartReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            if let Some(failed) = &self.failed {
                // A part that could not be read stops the stream for good: the parts after it
                // must not follow as if it had been there.
                return Err(io::Error::other(failed.clone()));
            }
            self.fetch_ahead();
            let Some(pending) = self.ahead.pop_front() else {
                return Ok(0);
            };
            match pending.wait() {
                Ok(bytes) => self.current = io::Cursor::new(bytes),
                Err(e) => {
                    self.failed = Some(e.to_string());
                    self.ahead.clear();
                    return Err(io::Error::other(e.to_string()));
                }
            }
        }
    }
}
