//! What the database keeps about certificates: who issued which for whom, its status bit, and
//! the certificate itself sealed by the vault.

use consult_proto::api::{CertificateKindName, CertificateState};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::db::{from_unix, to_unix};

/// A certificate's row.
#[derive(Debug, Clone)]
pub struct CertificateRecord {
    /// Certificate id.
    pub id: Uuid,
    /// The consultation it was issued in.
    pub consultation_id: Uuid,
    /// The invite of the patient it is for.
    pub invite_id: Uuid,
    /// The clinician who signed it.
    pub issued_by: Uuid,
    /// The clinician's display name.
    pub issued_by_name: String,
    /// The kind.
    pub kind: CertificateKindName,
    /// When.
    pub issued_at: OffsetDateTime,
    /// Until when it verifies.
    pub valid_until: OffsetDateTime,
    /// Until when the invite link fetches it.
    pub holder_until: OffsetDateTime,
    /// When retention destroys it.
    pub retain_until: OffsetDateTime,
    /// Its bit in the status list.
    pub status_index: u64,
    /// The key that signed it.
    pub kid: String,
    /// The sealed certificate (a vault document, JSON); `None` after retention.
    pub sealed: Option<String>,
    /// When it was revoked.
    pub revoked_at: Option<OffsetDateTime>,
    /// Why.
    pub revoke_reason: Option<String>,
}

impl CertificateRecord {
    /// Valid or revoked.
    pub fn state(&self) -> CertificateState {
        if self.revoked_at.is_some() {
            CertificateState::Revoked
        } else {
            CertificateState::Valid
        }
    }
}

/// The stored name of a kind.
pub fn kind_str(kind: CertificateKindName) -> &'static str {
    match kind {
        CertificateKindName::UnfitForWork => "unfit_for_work",
        CertificateKindName::Attendance => "attendance",
        CertificateKindName::FitToTravel => "fit_to_travel",
        CertificateKindName::FreeText => "free_text",
    }
}

fn kind_from_str(text: &str) -> Option<CertificateKindName> {
    [
        CertificateKindName::UnfitForWork,
        CertificateKindName::Attendance,
        CertificateKindName::FitToTravel,
        CertificateKindName::FreeText,
    ]
    .into_iter()
    .find(|k| kind_str(*k) == text)
}

const SELECT: &str = "SELECT c.id, c.consultation_id, c.invite_id, c.issued_by, u.display_name, \
     c.kind, c.issued_at, c.valid_until, c.holder_until, c.retain_until, c.status_index, c.kid, \
     c.sealed, c.revoked_at, c.revoke_reason \
     FROM certificates c JOIN users u ON u.id = c.issued_by";

fn from_row(row: crate::db::Row) -> anyhow::Result<CertificateRecord> {
    let uuid = |i: usize| -> anyhow::Result<Uuid> { Ok(Uuid::parse_str(row.get::<&str, _>(i))?) };
    Ok(CertificateRecord {
        id: uuid(0)?,
        consultation_id: uuid(1)?,
        invite_id: uuid(2)?,
        issued_by: uuid(3)?,
        issued_by_name: row.get(4),
        kind: kind_from_str(row.get::<&str, _>(5))
            .ok_or_else(|| anyhow::anyhow!("a certificate of an unknown kind"))?,
        issued_at: from_unix(row.get(6)),
        valid_until: from_unix(row.get(7)),
        holder_until: from_unix(row.get(8)),
        retain_until: from_unix(row.get(9)),
        status_index: u64::try_from(row.get::<i64, _>(10))?,
        kid: row.get(11),
        sealed: row.get(12),
        revoked_at: row.get::<Option<i64>, _>(13).map(from_unix),
        revoke_reason: row.get(14),
    })
}

/// A certificate about to be stored.
#[derive(Debug)]
pub struct NewCertificate<'a> {
    /// Certificate id.
    pub id: Uuid,
    /// The consultation.
    pub consultation_id: Uuid,
    /// The patient's invite.
    pub invite_id: Uuid,
    /// The signing clinician.
    pub issued_by: Uuid,
    /// The kind.
    pub kind: CertificateKindName,
    /// When.
    pub issued_at: OffsetDateTime,
    /// Until when it verifies.
    pub valid_until: OffsetDateTime,
    /// Until when the invite link fetches it.
    pub holder_until: OffsetDateTime,
    /// When retention destroys it.
    pub retain_until: OffsetDateTime,
    /// Its status bit.
    pub status_index: u64,
    /// The signing key.
    pub kid: &'a str,
    /// The sealed certificate.
    pub sealed: &'a str,
}

/// Store a new certificate.
pub async fn insert(db: &mut crate::db::Tx, new: &NewCertificate<'_>) -> anyhow::Result<()> {
    crate::db::query(
        "INSERT INTO certificates (id, consultation_id, invite_id, issued_by, kind, issued_at, \
         valid_until, holder_until, retain_until, status_index, kid, sealed) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(new.id.to_string())
    .bind(new.consultation_id.to_string())
    .bind(new.invite_id.to_string())
    .bind(new.issued_by.to_string())
    .bind(kind_str(new.kind))
    .bind(to_unix(new.issued_at))
    .bind(to_unix(new.valid_until))
    .bind(to_unix(new.holder_until))
    .bind(to_unix(new.retain_until))
    .bind(i64::try_from(new.status_index)?)
    .bind(new.kid)
    .bind(new.sealed)
    .execute(db)
    .await?;
    Ok(())
}

/// Whether a status index is taken.
pub async fn status_index_taken(db: &mut crate::db::Tx, index: u64) -> anyhow::Result<bool> {
    Ok(
        crate::db::query("SELECT 1 FROM certificates WHERE status_index = $1")
            .bind(i64::try_from(index)?)
            .fetch_optional(db)
            .await?
            .is_some(),
    )
}

/// One certificate.
pub async fn find(
    db: impl crate::db::Executor<'_>,
    id: Uuid,
) -> anyhow::Result<Option<CertificateRecord>> {
    let row = crate::db::query(&format!("{SELECT} WHERE c.id = $1"))
        .bind(id.to_string())
        .fetch_optional(db)
        .await?;
    row.map(from_row).transpose()
}

/// The certificate with this status index.
pub async fn by_status_index(
    db: impl crate::db::Executor<'_>,
    index: u64,
) -> anyhow::Result<Option<CertificateRecord>> {
    let row = crate::db::query(&format!("{SELECT} WHERE c.status_index = $1"))
        .bind(i64::try_from(index)?)
        .fetch_optional(db)
        .await?;
    row.map(from_row).transpose()
}

/// A consultation's certificates, oldest first.
pub async fn of_consultation(
    db: impl crate::db::Executor<'_>,
    consultation_id: Uuid,
) -> anyhow::Result<Vec<CertificateRecord>> {
    let rows = crate::db::query(&format!(
        "{SELECT} WHERE c.consultation_id = $1 ORDER BY c.issued_at, c.id"
    ))
    .bind(consultation_id.to_string())
    .fetch_all(db)
    .await?;
    rows.into_iter().map(from_row).collect()
}

/// Mark a certificate revoked by `by` (kept as the audit trail names actors); false if it
/// already was (or is not there).
pub async fn revoke(
    db: &mut crate::db::Tx,
    id: Uuid,
    by: &crate::audit::Actor,
    reason: &str,
    now: OffsetDateTime,
) -> anyhow::Result<bool> {
    let done = crate::db::query(
        "UPDATE certificates SET revoked_at = $1, revoked_by = $2, revoke_reason = $3 \
         WHERE id = $4 AND revoked_at IS NULL",
    )
    .bind(to_unix(now))
    .bind(by.to_string())
    .bind(reason)
    .bind(id.to_string())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The status indices of every revoked certificate.
pub async fn revoked_indices(db: impl crate::db::Executor<'_>) -> anyhow::Result<Vec<u64>> {
    let rows =
        crate::db::query("SELECT status_index FROM certificates WHERE revoked_at IS NOT NULL")
            .fetch_all(db)
            .await?;
    rows.into_iter()
        .map(|row| Ok(u64::try_from(row.get::<i64, _>(0))?))
        .collect()
}

/// Which certificates [`past_retention`] finds: still sealed, retention ended by `$1` (by the
/// index `certificates_retention`).
const PAST_RETENTION: &str = "WHERE c.sealed IS NOT NULL AND c.retain_until <= $1";

/// Certificates still sealed whose retention ended by `now`.
pub async fn past_retention(
    db: impl crate::db::Executor<'_>,
    now: OffsetDateTime,
) -> anyhow::Result<Vec<CertificateRecord>> {
    let rows = crate::db::query(&format!("{SELECT} {PAST_RETENTION}"))
        .bind(to_unix(now))
        .fetch_all(db)
        .await?;
    rows.into_iter().map(from_row).collect()
}

/// Of these certificates, those whose holder fetch was not audited within `every` of `now`:
/// marked audited now, and returned (to audit them in the same transaction).
pub async fn mark_fetch_audited(
    db: &mut crate::db::Tx,
    ids: &[Uuid],
    now: OffsetDateTime,
    every: time::Duration,
) -> anyhow::Result<Vec<Uuid>> {
    let mut due = Vec::new();
    for id in ids {
        let marked = crate::db::query(
            "UPDATE certificates SET holder_fetch_audited_at = $1 \
             WHERE id = $2 AND (holder_fetch_audited_at IS NULL OR holder_fetch_audited_at <= $3)",
        )
        .bind(to_unix(now))
        .bind(id.to_string())
        .bind(to_unix(now - every))
        .execute(&mut *db)
        .await?;
        if marked.rows_affected() == 1 {
            due.push(*id);
        }
    }
    Ok(due)
}

/// Destroy a certificate's sealed content (its data key with it).
pub async fn clear_sealed(db: &mut crate::db::Tx, id: Uuid) -> anyhow::Result<()> {
    crate::db::query("UPDATE certificates SET sealed = NULL WHERE id = $1")
        .bind(id.to_string())
        .execute(db)
        .await?;
    Ok(())
}

/// Every sealed certificate: id and sealed document (for key rotation).
pub async fn all_sealed(db: impl crate::db::Executor<'_>) -> anyhow::Result<Vec<(Uuid, String)>> {
    let rows = crate::db::query("SELECT id, sealed FROM certificates WHERE sealed IS NOT NULL")
        .fetch_all(db)
        .await?;
    rows.into_iter()
        .map(|row| Ok((Uuid::parse_str(row.get::<&str, _>(0))?, row.get(1))))
        .collect()
}

/// Replace a certificate's sealed document (re-wrapped under a new key-encryption key).
pub async fn replace_sealed(
    db: impl crate::db::Executor<'_>,
    id: Uuid,
    sealed: &str,
) -> anyhow::Result<()> {
    crate::db::query("UPDATE certificates SET sealed = $1 WHERE id = $2 AND sealed IS NOT NULL")
        .bind(sealed)
        .bind(id.to_string())
        .execute(db)
        .await?;
    Ok(())
}

/// An invite, by id.
pub async fn invite_of(
    db: impl crate::db::Executor<'_>,
    invite_id: Uuid,
) -> anyhow::Result<Option<crate::consultations::rows::InviteRecord>> {
    crate::consultations::rows::invite_by_id(db, invite_id).await
}

/// The certificates an invite's link may fetch: those issued for it, and for the patient link
/// (an invite without a name) those issued for any patient link of its consultation, so that a
/// link the doctor issued again still reaches them. Oldest first.
pub async fn held_by_invite(
    db: impl crate::db::Executor<'_>,
    invite: &crate::consultations::rows::InviteRecord,
) -> anyhow::Result<Vec<CertificateRecord>> {
    let rows = crate::db::query(&format!(
        "{SELECT} JOIN invites i ON i.id = c.invite_id \
         WHERE c.consultation_id = $1 AND (c.invite_id = $2 OR ($3 = 1 AND i.name IS NULL)) \
         ORDER BY c.issued_at, c.id"
    ))
    .bind(invite.consultation_id.to_string())
    .bind(invite.id.to_string())
    .bind(i64::from(invite.name.is_none()))
    .fetch_all(db)
    .await?;
    rows.into_iter().map(from_row).collect()
}

/// A clinician's licence number, if an operator set one.
pub async fn licence_number(
    db: impl crate::db::Executor<'_>,
    user: Uuid,
) -> anyhow::Result<Option<String>> {
    Ok(
        crate::db::query("SELECT licence_number FROM users WHERE id = $1")
            .bind(user.to_string())
            .fetch_optional(db)
            .await?
            .and_then(|row| row.get::<Option<String>, _>(0)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retention's query reads the certificates past retention by index (SQLite's plan), not
    /// the whole table.
    #[tokio::test]
    async fn retention_finds_its_certificates_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path(), None).await.unwrap();
        let plan: Vec<String> =
            crate::db::query(&format!("EXPLAIN QUERY PLAN {SELECT} {PAST_RETENTION}"))
                .bind(0i64)
                .fetch_all(&db)
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<String, _>(3))
                .collect();
        assert!(
            plan.iter()
                .any(|step| step.contains("USING INDEX certificates_retention")),
            "{plan:?}"
        );
    }
}
