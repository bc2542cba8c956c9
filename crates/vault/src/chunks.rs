//! The sealed chunk stream: how a recording's bytes sit in storage.
//!
//! ```text
//! header   "CONSULT-VAULT" 0 0 1 (16 bytes) | recording id (16 bytes)        in the clear
//! chunk 0  length (u32, big-endian) | AES-256-GCM ciphertext and tag
//! chunk 1  ...
//! chunk n  the final chunk
//! ```
//!
//! Chunk `i` is sealed with the recording's data key, nonce `0u32 ‖ i (u64)`, and associated data
//! `header ‖ i (u64) ‖ final (u8)`. So a chunk moved to another place, another recording, or
//! dropped from the middle fails authentication; a stream cut short lacks its final chunk; and
//! bytes after the final chunk are refused. A writer that dies leaves every chunk it sealed
//! before readable: [`ChunkReader`] reports such a stream as [`StreamEnd::Unfinished`], never as
//! whole.

use std::io::{self, Read, Write};

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, AES_256_GCM};
use uuid::Uuid;

use crate::keys::DataKey;
use crate::VaultError;

/// The magic and format version at the start of every stream.
pub const MAGIC: &[u8; 16] = b"CONSULT-VAULT\0\0\x01";

/// Bytes of the stream header.
pub const HEADER_LEN: usize = 32;

/// Bytes of the authentication tag after each chunk's ciphertext.
pub const TAG_LEN: usize = 16;

/// The largest chunk accepted (plaintext), so a corrupt length cannot make a reader allocate
/// gigabytes.
pub const MAX_CHUNK_BYTES: usize = 16 * 1024 * 1024;

fn header(recording: Uuid) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..16].copy_from_slice(MAGIC);
    header[16..].copy_from_slice(recording.as_bytes());
    header
}

fn nonce(index: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn aad(header: &[u8; HEADER_LEN], index: u64, last: bool) -> [u8; HEADER_LEN + 9] {
    let mut aad = [0u8; HEADER_LEN + 9];
    aad[..HEADER_LEN].copy_from_slice(header);
    aad[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&index.to_be_bytes());
    aad[HEADER_LEN + 8] = u8::from(last);
    aad
}

fn aead_key(key: &DataKey) -> Result<LessSafeKey, VaultError> {
    let unbound = ring::aead::UnboundKey::new(&AES_256_GCM, key.as_bytes())
        .map_err(|_| VaultError::Crypto("AES-256-GCM key setup"))?;
    Ok(LessSafeKey::new(unbound))
}

/// Writes a sealed chunk stream. Each [`ChunkWriter::append`] seals one chunk and writes it in
/// one `write_all`; [`ChunkWriter::finish`] seals the final chunk.
pub struct ChunkWriter<W: Write> {
    out: W,
    key: LessSafeKey,
    header: [u8; HEADER_LEN],
    next_index: u64,
    finished: bool,
    /// Reused buffer for [`ChunkWriter::append`]'s copy: plaintext, then ciphertext and tag.
    buf: Vec<u8>,
}

impl<W: Write> std::fmt::Debug for ChunkWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkWriter")
            .field("next_index", &self.next_index)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<W: Write> ChunkWriter<W> {
    /// Start a stream for `recording` on `out` (empty), writing its header.
    pub fn new(mut out: W, recording: Uuid, key: &DataKey) -> Result<Self, VaultError> {
        let header = header(recording);
        out.write_all(&header)?;
        Ok(Self {
            out,
            key: aead_key(key)?,
            header,
            next_index: 0,
            finished: false,
            buf: Vec::new(),
        })
    }

    /// Seal `plaintext` as the next chunk.
    pub fn append(&mut self, plaintext: &[u8]) -> Result<(), VaultError> {
        self.seal(plaintext, false)
    }

    /// Seal the plaintext in `chunk` as the next chunk where it lies (no copy: the tag is
    /// appended in its spare capacity), write it, and clear `chunk` for the next one, its
    /// allocation kept. What a producer that builds each chunk in a buffer of its own uses
    /// ([`crate::recording::RecordBatch`]): the plaintext is never copied on its way to `out`.
    pub fn append_in_place(&mut self, chunk: &mut Vec<u8>) -> Result<(), VaultError> {
        self.seal_in_place(chunk, false)
    }

    /// Seal `plaintext` (may be empty) as the final chunk; nothing can follow.
    pub fn finish(&mut self, plaintext: &[u8]) -> Result<(), VaultError> {
        self.seal(plaintext, true)?;
        self.out.flush()?;
        Ok(())
    }

    /// Chunks sealed so far.
    pub fn chunks(&self) -> u64 {
        self.next_index
    }

    /// Whether the final chunk is written.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The underlying writer (to sync it).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    fn seal_in_place(&mut self, chunk: &mut Vec<u8>, last: bool) -> Result<(), VaultError> {
        if self.finished {
            return Err(VaultError::Finished);
        }
        if chunk.len() > MAX_CHUNK_BYTES {
            return Err(VaultError::ChunkTooLarge(chunk.len()));
        }
        let index = self.next_index;
        let aad = aad(&self.header, index, last);
        let prefix = ((chunk.len() + TAG_LEN) as u32).to_be_bytes();
        let sealed =
            self.key
                .seal_in_place_separate_tag(nonce(index), Aad::from(&aad[..]), &mut chunk[..]);
        let tag = match sealed {
            Ok(tag) => tag,
            Err(_) => {
                // Never leave plaintext looking like a sealed chunk, nor ciphertext behind.
                chunk.clear();
                return Err(VaultError::Crypto("AES-256-GCM seal"));
            }
        };
        chunk.extend_from_slice(tag.as_ref());
        let written = write_all_vectored(&mut self.out, &prefix, chunk);
        chunk.clear();
        written?;
        self.next_index += 1;
        self.finished = last;
        Ok(())
    }

    /// Seal a copy of `plaintext` (in the writer's own buffer, kept between chunks).
    fn seal(&mut self, plaintext: &[u8], last: bool) -> Result<(), VaultError> {
        if plaintext.len() > MAX_CHUNK_BYTES {
            return Err(VaultError::ChunkTooLarge(plaintext.len()));
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(plaintext);
        let sealed = self.seal_in_place(&mut buf, last);
        self.buf = buf;
        sealed
    }
}

/// Write `head` then `body` in as few calls as the writer allows (one `writev` for a file).
fn write_all_vectored(out: &mut impl Write, head: &[u8], body: &[u8]) -> io::Result<()> {
    let (mut head, mut body) = (head, body);
    while !head.is_empty() {
        match out.write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(body)]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) if n < head.len() => head = &head[n..],
            Ok(n) => {
                body = &body[n - head.len()..];
                head = &[];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.write_all(body)
}

/// How a stream ended, once [`ChunkReader::next_chunk`] returned `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The final chunk was read: the stream is whole.
    Complete {
        /// Chunks in the stream.
        chunks: u64,
    },
    /// The stream stops without a final chunk (the writer died, or it was cut). Every chunk
    /// returned was authentic; `torn_bytes` bytes of a partly written chunk follow them.
    Unfinished {
        /// Authentic chunks read.
        chunks: u64,
        /// Bytes after the last whole chunk.
        torn_bytes: u64,
    },
}

/// Reads and opens a sealed chunk stream, chunk by chunk.
pub struct ChunkReader<R: Read> {
    input: R,
    key: LessSafeKey,
    header: [u8; HEADER_LEN],
    next_index: u64,
    end: Option<StreamEnd>,
}

impl<R: Read> std::fmt::Debug for ChunkReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkReader")
            .field("next_index", &self.next_index)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

/// Read as much of `buf` as there is; the number of bytes read (short only at end of input).
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl<R: Read> ChunkReader<R> {
    /// Open a stream that must belong to `recording`.
    pub fn new(mut input: R, recording: Uuid, key: &DataKey) -> Result<Self, VaultError> {
        let mut found = [0u8; HEADER_LEN];
        let n = read_full(&mut input, &mut found)?;
        if n < HEADER_LEN || &found[..16] != MAGIC {
            return Err(VaultError::NotAVaultStream);
        }
        let expected = header(recording);
        if found != expected {
            return Err(VaultError::WrongRecording);
        }
        Ok(Self {
            input,
            key: aead_key(key)?,
            header: expected,
            next_index: 0,
            end: None,
        })
    }

    /// The next chunk's plaintext, or `None` at the end of the stream (see
    /// [`ChunkReader::end`]). A chunk that fails authentication is an error naming it.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, VaultError> {
        if let Some(StreamEnd::Complete { .. }) = self.end {
            let mut probe = [0u8; 1];
            return match read_full(&mut self.input, &mut probe)? {
                0 => Ok(None),
                _ => Err(VaultError::TrailingData {
                    chunks: self.next_index,
                }),
            };
        }
        if self.end.is_some() {
            return Ok(None);
        }
        let index = self.next_index;
        let mut len = [0u8; 4];
        let got = read_full(&mut self.input, &mut len)?;
        if got < 4 {
            self.end = Some(StreamEnd::Unfinished {
                chunks: index,
                torn_bytes: got as u64,
            });
            return Ok(None);
        }
        let len = u32::from_be_bytes(len) as usize;
        if !(TAG_LEN..=MAX_CHUNK_BYTES + TAG_LEN).contains(&len) {
            return Err(VaultError::Corrupt { chunk: index });
        }
        let mut sealed = vec![0u8; len];
        let got = read_full(&mut self.input, &mut sealed)?;
        if got < len {
            self.end = Some(StreamEnd::Unfinished {
                chunks: index,
                torn_bytes: 4 + got as u64,
            });
            return Ok(None);
        }
        let (body, tag) = sealed.split_at_mut(len - TAG_LEN);
        let tag = Tag::try_from(&*tag).map_err(|_| VaultError::Corrupt { chunk: index })?;
        // The final flag is authenticated: try "not final" first (every chunk but one).
        for last in [false, true] {
            let aad = aad(&self.header, index, last);
            let mut attempt = body.to_vec();
            if self
                .key
                .open_in_place_separate_tag(
                    nonce(index),
                    Aad::from(&aad[..]),
                    tag,
                    &mut attempt,
                    0..,
                )
                .is_ok()
            {
                self.next_index += 1;
                if last {
                    self.end = Some(StreamEnd::Complete {
                        chunks: self.next_index,
                    });
                }
                return Ok(Some(attempt));
            }
        }
        Err(VaultError::Corrupt { chunk: index })
    }

    /// How the stream ended, once [`ChunkReader::next_chunk`] returned `None`.
    pub fn end(&self) -> Option<StreamEnd> {
        self.end
    }
}
