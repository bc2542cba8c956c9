//! Signed checkpoints of the audit chain, so that a history rewritten by someone who can write
//! the database — every hash recomputed, which [`crate::audit::verify`] alone cannot tell — is
//! still found.
//!
//! A checkpoint is a [`Head`]: the chain's last sequence number and hash, signed with Ed25519
//! (ring) under a key kept outside the database (`DATA_DIR/keys/audit/`, owner-only). The
//! service stores one in `audit_checkpoints` every `audit.checkpoint_interval` when the chain
//! grew, and logs it; `consult audit head` prints one for an external witness to keep.
//! [`verify_against`] checks a kept head against the chain: a chain shorter than the head was
//! truncated, an entry at the head's position with another hash was rewritten. Each head carries
//! its public key, so a witness needs nothing else; keys rotate (`consult audit rotate-key`),
//! old public keys stay to verify old checkpoints, old private keys are destroyed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A signed head of the audit chain.
///
/// ```
/// use consult_signaling::audit_checkpoints::Head;
///
/// let line = "consult-audit-head/v1 seq=0 hash=00 key=AA== sig=AA==";
/// let head: Head = line.parse().unwrap();
/// assert_eq!(head.seq, 0);
/// assert_eq!(head.to_string(), line);
/// assert!("consult-audit-head/v1 seq=x".parse::<Head>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The last entry's sequence number (0 for an empty chain).
    pub seq: i64,
    /// Its hash (hex).
    pub hash: String,
    /// The Ed25519 public key that signed it.
    pub public_key: Vec<u8>,
    /// The signature over [`Head::message`].
    pub signature: Vec<u8>,
}

const HEAD_PREFIX: &str = "consult-audit-head/v1";

impl Head {
    /// What is signed: a domain label, the sequence number and the hash.
    fn message(seq: i64, hash: &str) -> Vec<u8> {
        let mut message = format!("{HEAD_PREFIX}\0").into_bytes();
        message.extend(seq.to_be_bytes());
        message.extend(hash.as_bytes());
        message
    }

    /// Whether the signature is the key's, over this sequence number and hash.
    pub fn signature_holds(&self) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(&Self::message(self.seq, &self.hash), &self.signature)
            .is_ok()
    }
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{HEAD_PREFIX} seq={} hash={} key={} sig={}",
            self.seq,
            self.hash,
            STANDARD.encode(&self.public_key),
            STANDARD.encode(&self.signature)
        )
    }
}

/// A head line that is not one.
#[derive(Debug, thiserror::Error)]
#[error("not an audit head (expected `{HEAD_PREFIX} seq=N hash=HEX key=B64 sig=B64`)")]
pub struct MalformedHead;

impl FromStr for Head {
    type Err = MalformedHead;

    fn from_str(line: &str) -> Result<Self, MalformedHead> {
        let mut parts = line.split_whitespace();
        if parts.next() != Some(HEAD_PREFIX) {
            return Err(MalformedHead);
        }
        let mut field = |name: &str| {
            parts
                .next()
                .and_then(|p| p.strip_prefix(name))
                .and_then(|p| p.strip_prefix('='))
                .ok_or(MalformedHead)
        };
        let seq = field("seq")?.parse().map_err(|_| MalformedHead)?;
        let hash = field("hash")?.to_owned();
        let public_key = STANDARD.decode(field("key")?).map_err(|_| MalformedHead)?;
        let signature = STANDARD.decode(field("sig")?).map_err(|_| MalformedHead)?;
        if parts.next().is_some() || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(MalformedHead);
        }
        Ok(Self {
            seq,
            hash,
            public_key,
            signature,
        })
    }
}

/// Why the signing keys could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key directory.
    #[error("audit signing keys: {0}")]
    Io(#[from] std::io::Error),
    /// A key file that is not a key.
    #[error("audit signing key {0} is malformed")]
    Malformed(PathBuf),
}

/// The audit signing key (the newest version) and every public key there has been.
pub struct AuditSigner {
    key: Ed25519KeyPair,
    public_keys: BTreeMap<u32, Vec<u8>>,
}

fn key_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("keys").join("audit")
}

/// The versions in the key directory with a file of this suffix.
fn versions(dir: &Path, suffix: &str) -> Result<Vec<u32>, KeyError> {
    let mut found = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let name = entry?.file_name();
                let name = name.to_string_lossy();
                if let Some(v) = name
                    .strip_prefix("signing-")
                    .and_then(|rest| rest.strip_suffix(suffix))
                    .and_then(|v| v.parse().ok())
                {
                    found.push(v);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    found.sort_unstable();
    Ok(found)
}

fn new_key(dir: &Path, version: u32) -> Result<(), KeyError> {
    std::fs::create_dir_all(dir)?;
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| KeyError::Malformed(dir.to_path_buf()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| KeyError::Malformed(dir.to_path_buf()))?;
    crate::server::write_private(
        &dir.join(format!("signing-{version}.pk8")),
        STANDARD.encode(pkcs8.as_ref()).as_bytes(),
    )?;
    std::fs::write(
        dir.join(format!("signing-{version}.pub")),
        STANDARD.encode(pair.public_key().as_ref()),
    )?;
    Ok(())
}

/// Every public audit key of this data directory, by version.
pub fn public_keys(data_dir: &Path) -> Result<BTreeMap<u32, Vec<u8>>, KeyError> {
    let dir = key_dir(data_dir);
    versions(&dir, ".pub")?
        .into_iter()
        .map(|v| {
            let path = dir.join(format!("signing-{v}.pub"));
            let text = std::fs::read_to_string(&path)?;
            let key = STANDARD
                .decode(text.trim())
                .map_err(|_| KeyError::Malformed(path))?;
            Ok((v, key))
        })
        .collect()
}

impl AuditSigner {
    /// The newest key of `DATA_DIR/keys/audit/`, created on first use.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, KeyError> {
        let dir = key_dir(data_dir);
        let version = match versions(&dir, ".pk8")?.last() {
            Some(v) => *v,
            None => {
                new_key(&dir, 1)?;
                1
            }
        };
        let path = dir.join(format!("signing-{version}.pk8"));
        let text = std::fs::read_to_string(&path)?;
        let pkcs8 = STANDARD
            .decode(text.trim())
            .map_err(|_| KeyError::Malformed(path.clone()))?;
        let key = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| KeyError::Malformed(path))?;
        Ok(Self {
            key,
            public_keys: public_keys(data_dir)?,
        })
    }

    /// A new key version; the old private keys are destroyed, their public keys kept. Returns
    /// the new version.
    pub fn rotate(data_dir: &Path) -> Result<u32, KeyError> {
        let dir = key_dir(data_dir);
        let version = versions(&dir, ".pub")?.last().copied().unwrap_or(0) + 1;
        new_key(&dir, version)?;
        for old in versions(&dir, ".pk8")?
            .into_iter()
            .filter(|v| *v != version)
        {
            std::fs::remove_file(dir.join(format!("signing-{old}.pk8")))?;
        }
        Ok(version)
    }

    /// Sign a head.
    pub fn sign(&self, seq: i64, hash: &str) -> Head {
        Head {
            seq,
            hash: hash.to_owned(),
            public_key: self.key.public_key().as_ref().to_vec(),
            signature: self.key.sign(&Head::message(seq, hash)).as_ref().to_vec(),
        }
    }

    /// Whether `key` is one of this data directory's audit keys.
    pub fn knows(&self, key: &[u8]) -> bool {
        self.public_keys.values().any(|k| k == key)
    }
}

/// The chain's last sequence number and hash (`0` and the genesis hash when empty).
pub async fn chain_head(pool: &crate::db::Db) -> anyhow::Result<(i64, String)> {
    let row = crate::db::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(pool)
        .await?;
    Ok(match row {
        Some(row) => (row.get(0), row.get(1)),
        None => (0, crate::audit::GENESIS_HASH.to_owned()),
    })
}

/// Sign the chain's head now and store it as a checkpoint (once per head); the head.
pub async fn checkpoint(pool: &crate::db::Db, signer: &AuditSigner) -> anyhow::Result<Head> {
    let (seq, hash) = chain_head(pool).await?;
    let head = signer.sign(seq, &hash);
    crate::db::query(
        "INSERT INTO audit_checkpoints (seq, hash, public_key, signature, at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING",
    )
    .bind(seq)
    .bind(&hash)
    .bind(STANDARD.encode(&head.public_key))
    .bind(STANDARD.encode(&head.signature))
    .bind(OffsetDateTime::now_utc().format(&Rfc3339)?)
    .execute(pool)
    .await?;
    Ok(head)
}

/// How a chain disagrees with a signed head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadMismatch {
    /// The head's signature is not its key's.
    #[error("the head's signature does not hold")]
    BadSignature,
    /// The head was signed with a key this data directory never had.
    #[error("the head was signed with a key that is not one of this service's audit keys")]
    UnknownKey,
    /// The chain is shorter than the head.
    #[error(
        "the chain ends at entry {have}, before the head's entry {want}: history was truncated"
    )]
    Truncated {
        /// The chain's last entry.
        have: i64,
        /// The head's.
        want: i64,
    },
    /// The entry at the head's position is not the one signed.
    #[error("entry {seq} is not the one signed: history was rewritten")]
    Rewritten {
        /// The entry.
        seq: i64,
    },
}

/// Check the chain against a signed head (from a witness, or a stored checkpoint). The chain's
/// own links are [`crate::audit::verify`]'s job.
pub async fn verify_against(
    pool: &crate::db::Db,
    known_keys: &BTreeMap<u32, Vec<u8>>,
    head: &Head,
) -> anyhow::Result<Result<(), HeadMismatch>> {
    if !head.signature_holds() {
        return Ok(Err(HeadMismatch::BadSignature));
    }
    if !known_keys.values().any(|k| *k == head.public_key) {
        return Ok(Err(HeadMismatch::UnknownKey));
    }
    if head.seq == 0 {
        return Ok(Ok(()));
    }
    let (have, _) = chain_head(pool).await?;
    if have < head.seq {
        return Ok(Err(HeadMismatch::Truncated {
            have,
            want: head.seq,
        }));
    }
    let hash: Option<String> = crate::db::query_scalar("SELECT hash FROM audit_log WHERE seq = $1")
        .bind(head.seq)
        .fetch_optional(pool)
        .await?;
    if hash.as_deref() != Some(head.hash.as_str()) {
        return Ok(Err(HeadMismatch::Rewritten { seq: head.seq }));
    }
    Ok(Ok(()))
}

/// Check every stored checkpoint against the chain; `Ok(n)`: all `n` hold.
pub async fn verify_checkpoints(
    pool: &crate::db::Db,
    known_keys: &BTreeMap<u32, Vec<u8>>,
) -> anyhow::Result<Result<usize, (i64, HeadMismatch)>> {
    let rows = crate::db::query(
        "SELECT seq, hash, public_key, signature FROM audit_checkpoints ORDER BY seq",
    )
    .fetch_all(pool)
    .await?;
    for row in &rows {
        let seq: i64 = row.get(0);
        let decode = |i: usize| STANDARD.decode(row.get::<String, _>(i)).unwrap_or_default();
        let head = Head {
            seq,
            hash: row.get(1),
            public_key: decode(2),
            signature: decode(3),
        };
        if let Err(mismatch) = verify_against(pool, known_keys, &head).await? {
            return Ok(Err((seq, mismatch)));
        }
    }
    Ok(Ok(rows.len()))
}

/// Store and log a checkpoint every `interval` while the chain grows.
pub fn spawn_checkpoint_job(
    pool: crate::db::Db,
    signer: std::sync::Arc<AuditSigner>,
    interval: std::time::Duration,
) {
    tokio::spawn(async move {
        let mut last = None;
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            match chain_head(&pool).await {
                // Nothing new, or nothing yet.
                Ok((seq, _)) if Some(seq) == last || seq == 0 => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the audit chain's head");
                    continue;
                }
            }
            match checkpoint(&pool, &signer).await {
                Ok(head) => {
                    last = Some(head.seq);
                    tracing::info!(head = %head, "audit checkpoint");
                }
                Err(e) => tracing::warn!(error = %e, "could not store an audit checkpoint"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{entry_hash, Action, Actor, AuditLog};

    async fn chain(entries: usize) -> (tempfile::TempDir, crate::db::Db) {
        let dir = tempfile::tempdir().unwrap();
        let pool = crate::db::open(dir.path(), None).await.unwrap();
        append(&pool, entries).await;
        (dir, pool)
    }

    async fn append(pool: &crate::db::Db, entries: usize) {
        let log = AuditLog::new(pool.clone());
        for i in 0..entries {
            log.record(
                OffsetDateTime::now_utc(),
                &Actor::System,
                Action::SignIn,
                None,
                serde_json::json!({ "i": i }),
            )
            .await
            .unwrap();
        }
    }

    /// What someone who can write the database does: edit entry `seq`, recompute every hash
    /// from there, so that the chain's own links hold again.
    async fn rewrite_with_recomputed_hashes(pool: &crate::db::Db, seq: i64) {
        for trigger in ["audit_log_no_update", "audit_log_no_delete"] {
            crate::db::query(&format!("DROP TRIGGER {trigger}"))
                .execute(pool)
                .await
                .unwrap();
        }
        crate::db::query("UPDATE audit_log SET detail = '{\"i\":\"forged\"}' WHERE seq = $1")
            .bind(seq)
            .execute(pool)
            .await
            .unwrap();
        let rows = crate::db::query(
            "SELECT seq, at, actor, action, consultation_id, detail, prev_hash FROM audit_log
             WHERE seq >= $1 ORDER BY seq",
        )
        .bind(seq)
        .fetch_all(pool)
        .await
        .unwrap();
        let mut prev: String = rows[0].get(6);
        for row in rows {
            let consultation: Option<String> = row.get(4);
            let hash = entry_hash(
                row.get(0),
                row.get(1),
                row.get(2),
                row.get(3),
                consultation.as_deref(),
                row.get(5),
                &prev,
            );
            crate::db::query("UPDATE audit_log SET prev_hash = $1, hash = $2 WHERE seq = $3")
                .bind(&prev)
                .bind(&hash)
                .bind(row.get::<i64, _>(0))
                .execute(pool)
                .await
                .unwrap();
            prev = hash;
        }
    }

    #[tokio::test]
    async fn a_rewritten_history_with_recomputed_hashes_is_found() {
        let (dir, pool) = chain(5).await;
        let signer = AuditSigner::load_or_create(dir.path()).unwrap();
        let witness = checkpoint(&pool, &signer).await.unwrap();
        assert_eq!(witness.seq, 5);
        append(&pool, 2).await;
        let keys = public_keys(dir.path()).unwrap();
        assert_eq!(
            verify_against(&pool, &keys, &witness).await.unwrap(),
            Ok(())
        );

        rewrite_with_recomputed_hashes(&pool, 3).await;
        assert_eq!(
            crate::audit::verify(&pool).await.unwrap().unwrap(),
            7,
            "the chain's own links hold again"
        );
        assert_eq!(
            verify_against(&pool, &keys, &witness).await.unwrap(),
            Err(HeadMismatch::Rewritten { seq: 5 })
        );
        // The stored checkpoint finds it too, without a witness.
        assert_eq!(
            verify_checkpoints(&pool, &keys).await.unwrap(),
            Err((5, HeadMismatch::Rewritten { seq: 5 }))
        );
    }

    #[tokio::test]
    async fn a_truncated_history_is_found() {
        let (dir, pool) = chain(6).await;
        let signer = AuditSigner::load_or_create(dir.path()).unwrap();
        let witness = checkpoint(&pool, &signer).await.unwrap();
        crate::db::query("DROP TRIGGER audit_log_no_delete")
            .execute(&pool)
            .await
            .unwrap();
        crate::db::query("DELETE FROM audit_log WHERE seq > 4")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(crate::audit::verify(&pool).await.unwrap().unwrap(), 4);
        let keys = public_keys(dir.path()).unwrap();
        assert_eq!(
            verify_against(&pool, &keys, &witness).await.unwrap(),
            Err(HeadMismatch::Truncated { have: 4, want: 6 })
        );
    }

    #[tokio::test]
    async fn forged_and_foreign_heads_are_refused_and_rotated_keys_still_verify() {
        let (dir, pool) = chain(3).await;
        let signer = AuditSigner::load_or_create(dir.path()).unwrap();
        let head = checkpoint(&pool, &signer).await.unwrap();
        let keys = public_keys(dir.path()).unwrap();
        // A head whose hash was changed after signing.
        let mut forged = head.clone();
        forged.hash = "ab".repeat(32);
        assert_eq!(
            verify_against(&pool, &keys, &forged).await.unwrap(),
            Err(HeadMismatch::BadSignature)
        );
        // A head signed by another service's key.
        let elsewhere = tempfile::tempdir().unwrap();
        let stranger = AuditSigner::load_or_create(elsewhere.path()).unwrap();
        let (seq, hash) = chain_head(&pool).await.unwrap();
        assert_eq!(
            verify_against(&pool, &keys, &stranger.sign(seq, &hash))
                .await
                .unwrap(),
            Err(HeadMismatch::UnknownKey)
        );
        // A head's text survives a round trip; a mangled one does not parse.
        assert_eq!(head.to_string().parse::<Head>().unwrap(), head);
        assert!(head
            .to_string()
            .replace("seq=", "seq=x")
            .parse::<Head>()
            .is_err());

        // Rotation: new heads under the new key, the old head still verifies, the old private
        // key is gone.
        assert_eq!(AuditSigner::rotate(dir.path()).unwrap(), 2);
        assert!(!dir.path().join("keys/audit/signing-1.pk8").exists());
        append(&pool, 1).await;
        let rotated = AuditSigner::load_or_create(dir.path()).unwrap();
        let newer = checkpoint(&pool, &rotated).await.unwrap();
        assert_ne!(newer.public_key, head.public_key);
        let keys = public_keys(dir.path()).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(verify_against(&pool, &keys, &head).await.unwrap(), Ok(()));
        assert_eq!(verify_checkpoints(&pool, &keys).await.unwrap(), Ok(2));
        assert!(rotated.knows(&head.public_key));
    }
}
