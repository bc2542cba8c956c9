//! The audit trail: an append-only, hash-chained log of every security-relevant event.
//!
//! Each entry stores the SHA-256 of the entry before it (`prev_hash`) and its own `hash` over its
//! fields and `prev_hash`, so editing, inserting or deleting any entry breaks the chain at that
//! point. [`verify`] walks the chain and names the first broken entry. Entries hold ids, names of
//! actions and non-secret details only: never a password, token, code or SDP.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::secrets::hex_sha256;
use crate::write_lane::WriteLane;

/// `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who did something, as the audit log names them (`user:ID`, `participant:ID`,
/// `address:IP`, `anonymous`, `system`, `operator`).
///
/// ```
/// use consult_signaling::audit::Actor;
///
/// assert_eq!(Actor::User(uuid::Uuid::nil()).to_string(), "user:00000000-0000-0000-0000-000000000000");
/// assert_eq!(Actor::Address("192.0.2.1".parse().unwrap()).to_string(), "address:192.0.2.1");
/// assert_eq!(Actor::System.to_string(), "system");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// A signed-in account (a clinician or an administrator).
    User(Uuid),
    /// A patient (or the recorder) by participant id.
    Participant(Uuid),
    /// An unauthenticated client, by address (failed sign-ins, lockouts).
    Address(std::net::IpAddr),
    /// Someone holding an invite link nobody has redeemed yet.
    Anonymous,
    /// The service itself: jobs, start-up, the recorder.
    System,
    /// The operator at the command line.
    Operator,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::User(id) => write!(f, "user:{id}"),
            Actor::Participant(id) => write!(f, "participant:{id}"),
            Actor::Address(ip) => write!(f, "address:{ip}"),
            Actor::Anonymous => f.write_str("anonymous"),
            Actor::System => f.write_str("system"),
            Actor::Operator => f.write_str("operator"),
        }
    }
}

/// What happened. The snake_case name is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// An account was created.
    UserCreated,
    /// An account's password was set from its enrolment link.
    AccountEnrolled,
    /// Successful sign-in.
    SignIn,
    /// Failed sign-in (wrong password, wrong or replayed code, locked).
    SignInFailed,
    /// An account or address was locked after repeated failures.
    SignInLocked,
    /// A second factor was enrolled.
    MfaEnrolled,
    /// A recovery code was used.
    RecoveryCodeUsed,
    /// Sign-out.
    SignOut,
    /// A password was changed (every other session of the account ended).
    PasswordChanged,
    /// A passkey was registered.
    PasskeyRegistered,
    /// A passkey was renamed.
    PasskeyRenamed,
    /// A passkey was removed (every other session of the account ended).
    PasskeyRemoved,
    /// An administrator disabled an account (every session of it ended).
    AccountDisabled,
    /// A consultation was created.
    ConsultationCreated,
    /// A consultation was ended.
    ConsultationEnded,
    /// A patient invite was issued.
    InviteIssued,
    /// A patient invite was revoked.
    InviteRevoked,
    /// A patient invite was redeemed by a device.
    InviteUsed,
    /// A redemption was refused (expired, revoked, in use).
    InviteRefused,
    /// Someone waiting was admitted.
    Admitted,
    /// Someone waiting was declined.
    Declined,
    /// The doctor added a colleague (another clinician account) to a consultation.
    ClinicianAdded,
    /// The doctor took a colleague off a consultation (disconnecting them if in the call).
    ClinicianRemoved,
    /// The doctor removed someone from the call (their invite or place revoked).
    ParticipantRemoved,
    /// The doctor let everyone else share a screen, or took it back.
    ScreenSharingChanged,
    /// A participant connected to the consultation.
    Joined,
    /// A participant left or was disconnected for good.
    Left,
    /// A patient consented to recording, refused, or withdrew consent.
    RecordingConsent,
    /// The policy decided the consultation is recorded (or no longer), with its reasons.
    RecordingDecision,
    /// A recorder started writing a recording.
    RecordingStarted,
    /// A recording stopped (complete, withdrawn, failed, interrupted).
    RecordingStopped,
    /// A recording failed (storage full or broken): the loss is reported to the participants.
    RecordingFailed,
    /// Recordings were listed.
    RecordingListed,
    /// A recording was exported (or an export refused).
    RecordingExported,
    /// A recording was played (or playing refused).
    RecordingPlayed,
    /// A recording was shredded (its key destroyed), by a clinician, an operator or retention.
    RecordingShredded,
    /// An access to a recording was refused by the policy.
    RecordingAccessDenied,
    /// The vault's key-encryption keys were rotated.
    KeysRotated,
    /// A clinician registered (or removed) their recording public key.
    RecordingKeyRegistered,
    /// A detection rule raised a security alert.
    AlertRaised,
    /// An administrator acknowledged a security alert.
    AlertAcknowledged,
    /// A scheduled backup was made.
    BackupCreated,
    /// The installation was restored from a backup (the first entry after the restore).
    BackupRestored,
    /// A restore drill ran (`consult backup drill`), with its outcome.
    BackupDrilled,
    /// A clinician issued a medical certificate.
    CertificateIssued,
    /// A consultation's certificates were shown to a clinician.
    CertificatesViewed,
    /// A patient's invite link fetched their certificates.
    CertificateFetched,
    /// A patient made a presentation (a link or a PDF) disclosing the claims named.
    CertificatePresented,
    /// A presentation did not verify (counted per source, with the reason).
    CertificateVerificationFailed,
    /// A certificate was revoked, with the reason.
    CertificateRevoked,
    /// An attempt on a consultation's certificates by someone not allowed (not its clinician).
    CertificateRefused,
    /// A certificate's sealed content was destroyed (retention).
    CertificateDestroyed,
    /// The certificate issuer's signing key was rotated.
    CertificateKeyRotated,
    /// An operator set a clinician's licence number.
    LicenceNumberSet,
}

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// When, RFC 3339.
    pub at: String,
    /// Who: `user:<id>`, `participant:<id>`, `address:<ip>` or `system`.
    pub actor: String,
    /// What.
    pub action: String,
    /// The consultation concerned, if any.
    pub consultation_id: Option<String>,
    /// Non-secret details.
    pub detail: Value,
    /// Hash of the previous entry.
    pub prev_hash: String,
    /// Hash of this entry.
    pub hash: String,
}

/// Why the chain is not intact.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// An entry's `prev_hash` is not the hash of the entry before it (an entry was removed or
    /// inserted, or the previous one rewritten).
    #[error("entry {seq}: prev_hash does not match the entry before it")]
    BrokenLink {
        /// The first entry that fails.
        seq: i64,
    },
    /// An entry's content does not hash to its stored hash (it was edited).
    #[error("entry {seq}: content does not match its hash (edited)")]
    Tampered {
        /// The first entry that fails.
        seq: i64,
    },
    /// Sequence numbers skip (an entry was deleted).
    #[error("entry {seq}: expected sequence number {expected} (an entry is missing)")]
    Gap {
        /// The first entry that fails.
        seq: i64,
        /// What it should have been.
        expected: i64,
    },
}

impl ChainError {
    /// The first broken entry.
    pub fn seq(&self) -> i64 {
        match self {
            Self::BrokenLink { seq } | Self::Tampered { seq } | Self::Gap { seq, .. } => *seq,
        }
    }
}

/// An entry's fields as stored (the time formatted, the detail serialised).
struct Fields<'a> {
    at: &'a str,
    actor: &'a str,
    action: &'a str,
    consultation_id: Option<&'a str>,
    detail: &'a str,
}

impl Head {
    /// The entry after `prev` with these fields.
    fn after(prev: &Head, fields: &Fields<'_>) -> Head {
        let seq = prev.seq + 1;
        Head {
            seq,
            hash: entry_hash(
                seq,
                fields.at,
                fields.actor,
                fields.action,
                fields.consultation_id,
                fields.detail,
                &prev.hash,
            ),
        }
    }
}

pub(crate) fn entry_hash(
    seq: i64,
    at: &str,
    actor: &str,
    action: &str,
    consultation_id: Option<&str>,
    detail: &str,
    prev_hash: &str,
) -> String {
    // A JSON array is an unambiguous encoding of the fields.
    let canonical =
        serde_json::json!([seq, at, actor, action, consultation_id, detail, prev_hash]).to_string();
    hex_sha256(canonical.as_bytes())
}

/// Appends entries; one writer at a time so the chain stays linear.
///
/// It remembers the chain's head (the last entry it committed), so an append is one statement,
/// not a read of the head and then an insert. The insert itself checks that the head is still
/// that entry (another node, or a tool beside the service, may have appended since): if not, it
/// inserts nothing, and the head is read again.
///
/// A log made [`AuditLog::on_lane`] appends its single entries ([`AuditLog::record`]) on that
/// [`WriteLane`], those that arrive together in one transaction (see [`Appender`]); run a
/// transaction of [`AuditLog::begin`] on the lane yourself.
#[derive(Clone)]
pub struct AuditLog {
    pool: crate::db::Db,
    writer: Arc<Mutex<Option<Head>>>,
    appender: Option<Appender>,
}

/// Appends the single entries of a log on a write lane: whatever is queued when it starts a
/// transaction goes into that one transaction (at most [`Appender::MOST`]), in the order it
/// was queued, and each caller hears once it is committed. Under load that is one `BEGIN` and
/// one `COMMIT` for many entries instead of for each; alone, an entry commits at once. The
/// chain stays linear: the appender holds the log's writer like any transaction.
#[derive(Clone)]
struct Appender {
    queue: tokio::sync::mpsc::UnboundedSender<Queued>,
    /// The lane it runs on, kept running while the log is (the appender's own copy of the log
    /// holds no appender, so this is no cycle).
    _lane: WriteLane,
}

/// One entry to append, as [`AuditLog::record`] was given it.
#[derive(Clone)]
struct NewEntry {
    at: OffsetDateTime,
    actor: Actor,
    action: Action,
    consultation_id: Option<Uuid>,
    detail: Value,
}

/// An entry waiting for the appender, and who to tell.
struct Queued {
    entry: NewEntry,
    done: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
}

impl Appender {
    /// Most entries in one transaction.
    const MOST: usize = 256;

    /// Start appending the entries queued for `log` on `lane`; it runs until the last clone
    /// of the appender is dropped.
    fn start(log: AuditLog, lane: &WriteLane) -> Appender {
        let (queue, mut queued) = tokio::sync::mpsc::unbounded_channel::<Queued>();
        lane.spawn(async move {
            let mut batch = Vec::with_capacity(Self::MOST);
            while queued.recv_many(&mut batch, Self::MOST).await > 0 {
                // Together; or, one entry or a batch that failed, each on its own, so that
                // one entry's failure is its own.
                let together = batch.len() > 1 && log.record_batch(&batch).await.is_ok();
                for Queued { entry, done } in batch.drain(..) {
                    let result = if together {
                        Ok(())
                    } else {
                        log.record_here(entry).await
                    };
                    let _ = done.send(result);
                }
            }
        });
        Appender {
            queue,
            _lane: lane.clone(),
        }
    }
}

/// The last entry of the chain: its sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    seq: i64,
    hash: String,
}

impl AuditLog {
    /// An audit log writing to `pool`.
    pub fn new(pool: crate::db::Db) -> Self {
        Self {
            pool,
            writer: Arc::new(Mutex::new(None)),
            appender: None,
        }
    }

    /// An audit log writing to `pool` whose single entries are appended on `lane`, those
    /// queued together in one transaction. With a lane on the caller's runtime (PostgreSQL,
    /// whose writers run concurrently), each entry is its own transaction, as with
    /// [`AuditLog::new`].
    pub fn on_lane(pool: crate::db::Db, lane: &WriteLane) -> Self {
        let log = Self::new(pool);
        if !lane.has_thread() {
            return log;
        }
        Self {
            appender: Some(Appender::start(log.clone(), lane)),
            ..log
        }
    }

    /// Append one entry where the event has already happened and cannot be undone (a join, a
    /// recorder's end): a failure to audit it is logged as an error rather than returned.
    pub async fn record_or_log(
        &self,
        at: OffsetDateTime,
        actor: &Actor,
        action: Action,
        consultation_id: Option<Uuid>,
        detail: Value,
    ) {
        if let Err(e) = self
            .record(at, actor, action, consultation_id, detail)
            .await
        {
            tracing::error!(
                error = format!("{e:#}"),
                ?action,
                "could not audit an event"
            );
        }
    }

    /// Append one entry. Failures are returned: an event that cannot be audited must not pass
    /// silently. For an entry that records a change to the database, make the change and the
    /// entry in one [`AuditLog::begin`] transaction instead, so neither exists without the other.
    pub async fn record(
        &self,
        at: OffsetDateTime,
        actor: &Actor,
        action: Action,
        consultation_id: Option<Uuid>,
        detail: Value,
    ) -> anyhow::Result<()> {
        let entry = NewEntry {
            at,
            actor: *actor,
            action,
            consultation_id,
            detail,
        };
        let Some(appender) = &self.appender else {
            return self.record_here(entry).await;
        };
        let (done, committed) = tokio::sync::oneshot::channel();
        if let Err(tokio::sync::mpsc::error::SendError(queued)) =
            appender.queue.send(Queued { entry, done })
        {
            // The appender is gone (only when its lane is): append here.
            return self.record_here(queued.entry).await;
        }
        committed.await.map_err(|_| {
            anyhow::anyhow!("the audit appender stopped before the entry was written")
        })?
    }

    /// The entries of `batch`, in one transaction.
    async fn record_batch(&self, batch: &[Queued]) -> anyhow::Result<()> {
        let mut tx = self.begin().await?;
        for Queued { entry, .. } in batch {
            // Cloned: a batch that fails is appended again entry by entry.
            tx.record_entry(entry.clone()).await?;
        }
        tx.commit().await
    }

    /// [`AuditLog::record`], on the caller's runtime.
    async fn record_here(&self, entry: NewEntry) -> anyhow::Result<()> {
        let mut tx = self.begin().await?;
        tx.record_entry(entry).await?;
        tx.commit().await
    }

    /// A write transaction in which changes and the audit entries that record them commit
    /// together or not at all. It holds the log's writer until it ends, so the chain stays
    /// linear: do not call [`AuditLog::record`] while one is open.
    ///
    /// ```no_run
    /// # async fn create(audit: &consult_signaling::audit::AuditLog) -> anyhow::Result<()> {
    /// use consult_signaling::audit::{Action, Actor};
    ///
    /// let mut tx = audit.begin().await?;
    /// consult_signaling::db::query("UPDATE consultations SET title = 'x' WHERE id = 'y'")
    ///     .execute(tx.connection())
    ///     .await?;
    /// let now = time::OffsetDateTime::now_utc();
    /// tx.record(now, &Actor::System, Action::ConsultationCreated, None, serde_json::json!({})).await?;
    /// tx.commit().await // or drop it: neither the change nor the entry is kept
    /// # }
    /// ```
    pub async fn begin(&self) -> anyhow::Result<AuditedTransaction<'_>> {
        let head = self.writer.lock().await;
        let tx = self.pool.begin_write().await?;
        Ok(AuditedTransaction {
            tx,
            appended: None,
            head,
        })
    }
}

/// A database write transaction that also appends audit entries; see [`AuditLog::begin`].
/// Dropped without [`AuditedTransaction::commit`], it rolls back, entries included.
pub struct AuditedTransaction<'a> {
    tx: crate::db::Tx,
    /// The last entry appended in this transaction, the chain's head once it commits.
    appended: Option<Head>,
    /// The log's writer, holding the head as last committed (`None`: read it).
    head: tokio::sync::MutexGuard<'a, Option<Head>>,
}

impl AuditedTransaction<'_> {
    /// The connection to run the change's queries on.
    pub fn connection(&mut self) -> &mut crate::db::Tx {
        &mut self.tx
    }

    /// Append one entry, committed with the rest of the transaction.
    pub async fn record(
        &mut self,
        at: OffsetDateTime,
        actor: &Actor,
        action: Action,
        consultation_id: Option<Uuid>,
        detail: Value,
    ) -> anyhow::Result<()> {
        let action = serde_json::to_value(action)?
            .as_str()
            .unwrap_or("unknown")
            .to_owned();
        self.record_named(at, &actor.to_string(), &action, consultation_id, detail)
            .await
    }

    /// Append an entry queued for the appender (or appended alone).
    async fn record_entry(&mut self, entry: NewEntry) -> anyhow::Result<()> {
        self.record(
            entry.at,
            &entry.actor,
            entry.action,
            entry.consultation_id,
            entry.detail,
        )
        .await
    }

    /// Append one entry whose actor and action are already names (as stored): a tally of
    /// events closed into the chain ([`crate::audit_tally`]).
    pub async fn record_named(
        &mut self,
        at: OffsetDateTime,
        actor: &str,
        action: &str,
        consultation_id: Option<Uuid>,
        detail: Value,
    ) -> anyhow::Result<()> {
        let at = at.format(&Rfc3339)?;
        let consultation_id = consultation_id.map(|id| id.to_string());
        let detail = detail.to_string();
        let fields = Fields {
            at: &at,
            actor,
            action,
            consultation_id: consultation_id.as_deref(),
            detail: &detail,
        };
        if let Some(prev) = self.appended.clone().or_else(|| self.head.clone())
            && self.append_after(&prev, &fields).await?
        {
            return Ok(());
        }
        // Not remembered, or another writer appended since: read the head. The write lock is
        // held, so nothing can come between the read and the insert.
        let last = crate::db::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut self.tx)
            .await?;
        let prev = match last {
            Some(row) => Head {
                seq: row.get(0),
                hash: row.get(1),
            },
            None => Head {
                seq: 0,
                hash: GENESIS_HASH.to_owned(),
            },
        };
        if !self.append_after(&prev, &fields).await? {
            anyhow::bail!("the audit chain's head changed while its write lock was held");
        }
        Ok(())
    }

    /// Insert the entry after `prev` if `prev` is still the last entry (nothing after it, and
    /// it is there with that hash; for the genesis head, the chain is empty); whether it was.
    async fn append_after(&mut self, prev: &Head, fields: &Fields<'_>) -> anyhow::Result<bool> {
        let entry = Head::after(prev, fields);
        let inserted = crate::db::query(
            "INSERT INTO audit_log (seq, at, actor, action, consultation_id, detail, prev_hash, hash)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8
             WHERE NOT EXISTS (SELECT 1 FROM audit_log WHERE seq > $9)
             AND ($10 = 0 OR EXISTS (SELECT 1 FROM audit_log WHERE seq = $11 AND hash = $12))",
        )
        .bind(entry.seq)
        .bind(fields.at)
        .bind(fields.actor)
        .bind(fields.action)
        .bind(fields.consultation_id)
        .bind(fields.detail)
        .bind(&prev.hash)
        .bind(&entry.hash)
        .bind(prev.seq)
        .bind(prev.seq)
        .bind(prev.seq)
        .bind(&prev.hash)
        .execute(&mut self.tx)
        .await?;
        let appended = inserted.rows_affected() == 1;
        if appended {
            self.appended = Some(entry);
        }
        Ok(appended)
    }

    /// Commit the changes and their entries together.
    pub async fn commit(self) -> anyhow::Result<()> {
        let Self {
            tx,
            appended,
            mut head,
        } = self;
        match tx.commit().await {
            Ok(()) => {
                if appended.is_some() {
                    *head = appended;
                }
                Ok(())
            }
            Err(e) => {
                // Whether it committed is not known: read the head next time.
                *head = None;
                Err(e.into())
            }
        }
    }
}

/// Every entry, in order.
pub async fn entries(pool: &crate::db::Db) -> anyhow::Result<Vec<Entry>> {
    let rows = crate::db::query(
        "SELECT seq, at, actor, action, consultation_id, detail, prev_hash, hash
         FROM audit_log ORDER BY seq",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            let detail: String = row.get(5);
            Ok(Entry {
                seq: row.get(0),
                at: row.get(1),
                actor: row.get(2),
                action: row.get(3),
                consultation_id: row.get(4),
                detail: serde_json::from_str(&detail).unwrap_or(Value::String(detail)),
                prev_hash: row.get(6),
                hash: row.get(7),
            })
        })
        .collect()
}

/// Walk the whole chain; `Ok(n)` is the number of intact entries, the error names the first
/// broken one.
pub async fn verify(pool: &crate::db::Db) -> anyhow::Result<Result<usize, ChainError>> {
    let rows = crate::db::query(
        "SELECT seq, at, actor, action, consultation_id, detail, prev_hash, hash
         FROM audit_log ORDER BY seq",
    )
    .fetch_all(pool)
    .await?;
    let mut expected_prev = GENESIS_HASH.to_owned();
    for (index, row) in rows.iter().enumerate() {
        let seq: i64 = row.get(0);
        let expected_seq = index as i64 + 1;
        if seq != expected_seq {
            return Ok(Err(ChainError::Gap {
                seq,
                expected: expected_seq,
            }));
        }
        let prev_hash: String = row.get(6);
        let stored: String = row.get(7);
        let consultation_id: Option<String> = row.get(4);
        let computed = entry_hash(
            seq,
            row.get(1),
            row.get(2),
            row.get(3),
            consultation_id.as_deref(),
            row.get(5),
            &prev_hash,
        );
        if computed != stored {
            return Ok(Err(ChainError::Tampered { seq }));
        }
        if prev_hash != expected_prev {
            return Ok(Err(ChainError::BrokenLink { seq }));
        }
        expected_prev = stored;
    }
    Ok(Ok(rows.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn log_with_entries(n: usize) -> (tempfile::TempDir, crate::db::Db, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let pool = crate::db::open(dir.path(), None).await.unwrap();
        let log = AuditLog::new(pool.clone());
        for i in 0..n {
            append(&log, i).await;
        }
        (dir, pool, log)
    }

    async fn unprotect(pool: &crate::db::Db) {
        crate::db::query("DROP TRIGGER audit_log_no_update")
            .execute(pool)
            .await
            .unwrap();
        crate::db::query("DROP TRIGGER audit_log_no_delete")
            .execute(pool)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn intact_chain_verifies() {
        let (_dir, pool, _log) = log_with_entries(5).await;
        assert_eq!(verify(&pool).await.unwrap(), Ok(5));
        assert_eq!(entries(&pool).await.unwrap()[0].prev_hash, GENESIS_HASH);
    }

    #[tokio::test]
    async fn the_service_cannot_rewrite_or_delete_entries() {
        let (_dir, pool, _log) = log_with_entries(2).await;
        let update = crate::db::query("UPDATE audit_log SET actor = 'x' WHERE seq = 1")
            .execute(&pool)
            .await;
        assert!(update.unwrap_err().to_string().contains("append-only"));
        let delete = crate::db::query("DELETE FROM audit_log WHERE seq = 1")
            .execute(&pool)
            .await;
        assert!(delete.unwrap_err().to_string().contains("append-only"));
    }

    #[tokio::test]
    async fn edited_entry_is_named() {
        let (_dir, pool, _log) = log_with_entries(5).await;
        unprotect(&pool).await;
        crate::db::query("UPDATE audit_log SET detail = '{\"i\":99}' WHERE seq = 3")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(
            verify(&pool).await.unwrap(),
            Err(ChainError::Tampered { seq: 3 })
        );
    }

    #[tokio::test]
    async fn rehashed_edit_breaks_the_next_link() {
        let (_dir, pool, _log) = log_with_entries(4).await;
        unprotect(&pool).await;
        // A forger who recomputes the edited entry's hash still breaks the link after it.
        let row = crate::db::query("SELECT at, prev_hash FROM audit_log WHERE seq = 2")
            .fetch_one(&pool)
            .await
            .unwrap();
        let (at, prev): (String, String) = (row.get(0), row.get(1));
        let forged = entry_hash(2, &at, "system", "sign_out", None, "{}", &prev);
        crate::db::query(
            "UPDATE audit_log SET action = 'sign_out', detail = '{}', hash = $1 WHERE seq = 2",
        )
        .bind(&forged)
        .execute(&pool)
        .await
        .unwrap();
        assert_eq!(
            verify(&pool).await.unwrap(),
            Err(ChainError::BrokenLink { seq: 3 })
        );
    }

    #[tokio::test]
    async fn deleted_entry_is_named() {
        let (_dir, pool, _log) = log_with_entries(4).await;
        unprotect(&pool).await;
        crate::db::query("DELETE FROM audit_log WHERE seq = 2")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(
            verify(&pool).await.unwrap(),
            Err(ChainError::Gap {
                seq: 3,
                expected: 2
            })
        );
    }

    async fn append(log: &AuditLog, i: usize) {
        log.record(
            OffsetDateTime::now_utc(),
            &Actor::System,
            Action::SignIn,
            None,
            json!({ "i": i }),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn two_writers_of_one_chain_keep_it_linear() {
        // Two logs of one database (two nodes, or a tool beside the service): each remembers
        // its own last entry, which the other's appends make stale.
        let (_dir, pool, first) = log_with_entries(2).await;
        let second = AuditLog::new(pool.clone());
        for i in 0..6 {
            append(if i % 3 == 0 { &second } else { &first }, i).await;
        }
        assert_eq!(verify(&pool).await.unwrap(), Ok(8));
    }

    #[tokio::test]
    async fn a_rolled_back_entry_is_not_remembered_as_the_head() {
        let (_dir, pool, log) = log_with_entries(3).await;
        let mut tx = log.begin().await.unwrap();
        tx.record(
            OffsetDateTime::now_utc(),
            &Actor::System,
            Action::SignIn,
            None,
            json!({}),
        )
        .await
        .unwrap();
        tx.record(
            OffsetDateTime::now_utc(),
            &Actor::System,
            Action::SignOut,
            None,
            json!({}),
        )
        .await
        .unwrap();
        drop(tx);
        append(&log, 9).await;
        assert_eq!(verify(&pool).await.unwrap(), Ok(4));
        let last = entries(&pool).await.unwrap().pop().unwrap();
        assert_eq!((last.seq, last.detail), (4, json!({ "i": 9 })));
    }

    #[tokio::test]
    async fn an_edited_head_is_not_chained_on_from_memory() {
        // The head remembered is checked against the stored one: an edit of it (by someone
        // with the file) is chained on as stored, and `verify` names it, as before the memory.
        let (_dir, pool, log) = log_with_entries(3).await;
        unprotect(&pool).await;
        crate::db::query("UPDATE audit_log SET hash = $1 WHERE seq = 3")
            .bind("f".repeat(64))
            .execute(&pool)
            .await
            .unwrap();
        append(&log, 9).await;
        let last = entries(&pool).await.unwrap().pop().unwrap();
        assert_eq!((last.seq, last.prev_hash), (4, "f".repeat(64)));
        assert_eq!(
            verify(&pool).await.unwrap(),
            Err(ChainError::Tampered { seq: 3 })
        );
    }

    /// A log on a write lane of its own, as the service has it, over `pool`'s writer.
    async fn log_on_lane(pool: &crate::db::Db) -> AuditLog {
        let writer = pool.clone();
        AuditLog::on_lane(writer, &WriteLane::thread().unwrap())
    }

    #[tokio::test]
    async fn entries_queued_together_all_commit_in_one_linear_chain() {
        let dir = tempfile::tempdir().unwrap();
        let pool = crate::db::open(dir.path(), None).await.unwrap();
        let log = log_on_lane(&pool).await;
        // Another writer of the same chain appends meanwhile (a tool beside the service).
        let beside = AuditLog::new(pool.clone());
        let queued = (0..300).map(|i| {
            let log = log.clone();
            tokio::spawn(async move { append(&log, i).await })
        });
        let appended_beside = tokio::spawn(async move {
            for i in 1000..1020 {
                append(&beside, i).await;
            }
        });
        for entry in queued {
            entry.await.unwrap();
        }
        appended_beside.await.unwrap();
        assert_eq!(verify(&pool).await.unwrap(), Ok(320));
        let mut seen: Vec<u64> = entries(&pool)
            .await
            .unwrap()
            .iter()
            .map(|e| e.detail["i"].as_u64().unwrap())
            .collect();
        seen.sort();
        let expected: Vec<u64> = (0..300).chain(1000..1020).collect();
        assert_eq!(seen, expected, "each entry exactly once");
    }

    #[tokio::test]
    async fn an_entry_the_database_refuses_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let pool = crate::db::open(dir.path(), None).await.unwrap();
        crate::db::query(
            "CREATE TRIGGER refuse_bad BEFORE INSERT ON audit_log WHEN NEW.detail LIKE '%bad%'
             BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(&pool)
        .await
        .unwrap();
        let log = log_on_lane(&pool).await;
        let queued: Vec<_> = (0..60)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move {
                    let detail = if i == 30 {
                        json!({ "bad": true })
                    } else {
                        json!({ "i": i })
                    };
                    log.record(
                        OffsetDateTime::now_utc(),
                        &Actor::System,
                        Action::SignIn,
                        None,
                        detail,
                    )
                    .await
                })
            })
            .collect();
        let mut refused = 0;
        for (i, entry) in queued.into_iter().enumerate() {
            match entry.await.unwrap() {
                Ok(()) => assert_ne!(i, 30, "the refused entry was said to be written"),
                Err(e) => {
                    assert_eq!(i, 30, "a good entry failed: {e:#}");
                    refused += 1;
                }
            }
        }
        assert_eq!(refused, 1);
        assert_eq!(verify(&pool).await.unwrap(), Ok(59));
    }
}
