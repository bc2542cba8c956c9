//! The sign-in rows: enrolment links, passwords, TOTP factors and their enrolments, recovery
//! codes, failure counts and sessions — every SQL statement sign-in needs, apart from the
//! handlers (the query layer a second database plugs into). A write that is audited takes the
//! connection of the caller's [`crate::audit::AuditedTransaction`], so the change and its audit
//! entry commit together; lookups take any executor.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::db::{from_unix, to_unix};

/// An enrolment link, by the hash of its token.
#[derive(Debug, Clone)]
pub struct EnrolmentLink {
    /// The account it sets a password for.
    pub user_id: Uuid,
    /// The account's email.
    pub email: String,
    /// When it stops working.
    pub expires_at: OffsetDateTime,
    /// Whether it was used.
    pub used: bool,
}

/// The enrolment link with this token hash.
pub async fn enrolment_link(
    db: impl crate::db::Executor<'_>,
    token_hash: &str,
) -> anyhow::Result<Option<EnrolmentLink>> {
    let row = crate::db::query(
        "SELECT e.user_id, e.expires_at, e.used_at, u.email FROM enrolment_tokens e
         JOIN users u ON u.id = e.user_id WHERE e.token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await?;
    row.map(|row| {
        Ok(EnrolmentLink {
            user_id: Uuid::parse_str(row.get::<&str, _>(0))?,
            expires_at: from_unix(row.get(1)),
            used: row.get::<Option<i64>, _>(2).is_some(),
            email: row.get(3),
        })
    })
    .transpose()
}

/// Mark an enrolment link used; false if it already was (a concurrent request won).
pub async fn use_enrolment_link(
    db: &mut crate::db::Tx,
    token_hash: &str,
    now: OffsetDateTime,
) -> anyhow::Result<bool> {
    let used = crate::db::query(
        "UPDATE enrolment_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
    )
    .bind(to_unix(now))
    .bind(token_hash)
    .execute(db)
    .await?;
    Ok(used.rows_affected() == 1)
}

/// Set an account's password, removing its second factor (a new password means enrolling the
/// authenticator again).
pub async fn set_password(
    db: &mut crate::db::Tx,
    user_id: Uuid,
    password_hash: &str,
) -> anyhow::Result<()> {
    crate::db::query(
        "UPDATE users SET password_hash = $1, totp_secret = NULL, totp_last_step = NULL WHERE id = $2",
    )
    .bind(password_hash)
    .bind(user_id.to_string())
    .execute(db)
    .await?;
    Ok(())
}

/// Record that a TOTP step was used, if it is later than the last one used (compare-and-set,
/// so two concurrent requests cannot both spend one step); false if it was not.
pub async fn spend_totp_step(
    db: impl crate::db::Executor<'_>,
    user_id: Uuid,
    step: u64,
) -> anyhow::Result<bool> {
    let step = i64::try_from(step)?;
    let stored = crate::db::query(
        "UPDATE users SET totp_last_step = $1 WHERE id = $2
         AND (totp_last_step IS NULL OR totp_last_step < $3)",
    )
    .bind(step)
    .bind(user_id.to_string())
    .bind(step)
    .execute(db)
    .await?;
    Ok(stored.rows_affected() == 1)
}

/// Forget an account's failed sign-ins and lock.
pub async fn clear_failures(db: impl crate::db::Executor<'_>, user_id: Uuid) -> anyhow::Result<()> {
    crate::db::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1")
        .bind(user_id.to_string())
        .execute(db)
        .await?;
    Ok(())
}

/// Count one more failed sign-in; returns the count.
pub async fn count_failure(db: &mut crate::db::Tx, user_id: Uuid) -> anyhow::Result<u32> {
    let failures: i64 = crate::db::query_scalar(
        "UPDATE users SET failed_logins = failed_logins + 1 WHERE id = $1 RETURNING failed_logins",
    )
    .bind(user_id.to_string())
    .fetch_one(db)
    .await?;
    Ok(u32::try_from(failures).unwrap_or(u32::MAX))
}

/// Lock an account until `until`.
pub async fn lock_account(
    db: &mut crate::db::Tx,
    user_id: Uuid,
    until: OffsetDateTime,
) -> anyhow::Result<()> {
    crate::db::query("UPDATE users SET locked_until = $1 WHERE id = $2")
        .bind(to_unix(until))
        .bind(user_id.to_string())
        .execute(db)
        .await?;
    Ok(())
}

/// A pending second-factor enrolment: the password was right, the authenticator app not yet
/// confirmed.
#[derive(Debug, Clone)]
pub struct MfaEnrolmentRow {
    /// The account.
    pub user_id: Uuid,
    /// The TOTP secret, sealed for the account.
    pub sealed_secret: String,
    /// When it stops working.
    pub expires_at: OffsetDateTime,
}

/// Start a second-factor enrolment, replacing the account's earlier one and removing expired
/// ones.
pub async fn replace_mfa_enrolment(
    db: &mut crate::db::Tx,
    token_hash: &str,
    enrolment: &MfaEnrolmentRow,
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    crate::db::query("DELETE FROM mfa_enrolments WHERE user_id = $1 OR expires_at <= $2")
        .bind(enrolment.user_id.to_string())
        .bind(to_unix(now))
        .execute(&mut *db)
        .await?;
    crate::db::query(
        "INSERT INTO mfa_enrolments (token_hash, user_id, totp_secret, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(token_hash)
    .bind(enrolment.user_id.to_string())
    .bind(&enrolment.sealed_secret)
    .bind(to_unix(enrolment.expires_at))
    .execute(db)
    .await?;
    Ok(())
}

/// The second-factor enrolment with this token hash.
pub async fn mfa_enrolment(
    db: impl crate::db::Executor<'_>,
    token_hash: &str,
) -> anyhow::Result<Option<MfaEnrolmentRow>> {
    let row = crate::db::query(
        "SELECT user_id, totp_secret, expires_at FROM mfa_enrolments WHERE token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await?;
    row.map(|row| {
        Ok(MfaEnrolmentRow {
            user_id: Uuid::parse_str(row.get::<&str, _>(0))?,
            sealed_secret: row.get(1),
            expires_at: from_unix(row.get(2)),
        })
    })
    .transpose()
}

/// Remove a second-factor enrolment to complete it; false if it was gone (a concurrent request
/// completed it).
pub async fn claim_mfa_enrolment(db: &mut crate::db::Tx, token_hash: &str) -> anyhow::Result<bool> {
    let claimed = crate::db::query("DELETE FROM mfa_enrolments WHERE token_hash = $1")
        .bind(token_hash)
        .execute(db)
        .await?;
    Ok(claimed.rows_affected() == 1)
}

/// Set an account's TOTP factor (sealed), with the step its first code used, and clear its
/// failures.
pub async fn set_totp(
    db: &mut crate::db::Tx,
    user_id: Uuid,
    sealed_secret: &str,
    step: u64,
) -> anyhow::Result<()> {
    crate::db::query(
        "UPDATE users SET totp_secret = $1, totp_last_step = $2, failed_logins = 0, locked_until = NULL
         WHERE id = $3",
    )
    .bind(sealed_secret)
    .bind(i64::try_from(step)?)
    .bind(user_id.to_string())
    .execute(db)
    .await?;
    Ok(())
}

/// Replace an account's recovery codes (by their hashes).
pub async fn replace_recovery_codes(
    db: &mut crate::db::Tx,
    user_id: Uuid,
    code_hashes: &[String],
) -> anyhow::Result<()> {
    crate::db::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id.to_string())
        .execute(&mut *db)
        .await?;
    for hash in code_hashes {
        crate::db::query("INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)")
            .bind(user_id.to_string())
            .bind(hash)
            .execute(&mut *db)
            .await?;
    }
    Ok(())
}

/// Use a recovery code once: the number of unused codes left, or `None` if the code is not
/// one of the account's unused codes.
pub async fn spend_recovery_code(
    db: &mut crate::db::Tx,
    user_id: Uuid,
    code_hash: &str,
    now: OffsetDateTime,
) -> anyhow::Result<Option<i64>> {
    let used = crate::db::query(
        "UPDATE recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
    )
    .bind(to_unix(now))
    .bind(user_id.to_string())
    .bind(code_hash)
    .execute(&mut *db)
    .await?;
    if used.rows_affected() != 1 {
        return Ok(None);
    }
    let left: i64 = crate::db::query_scalar(
        "SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
    )
    .bind(user_id.to_string())
    .fetch_one(db)
    .await?;
    Ok(Some(left))
}

/// A session row, by the hash of its token.
#[derive(Debug, Clone)]
pub struct SessionRow {
    /// The session's id (not its token).
    pub id: Uuid,
    /// Whose.
    pub user_id: Uuid,
    /// The last request, to the granularity the service stores.
    pub last_seen_at: OffsetDateTime,
    /// When it ends whatever happens.
    pub absolute_expires_at: OffsetDateTime,
    /// Whether it was ended (signed out, revoked).
    pub revoked: bool,
    /// Opened without a passkey under a policy that requires one: it may only register one.
    pub passkey_setup_only: bool,
}

/// Store a new session; `passkey_setup_only`: it may only register a passkey.
pub async fn insert_session(
    db: &mut crate::db::Tx,
    token_hash: &str,
    user_id: Uuid,
    now: OffsetDateTime,
    absolute_expires_at: OffsetDateTime,
    passkey_setup_only: bool,
) -> anyhow::Result<Uuid> {
    let id = Uuid::new_v4();
    crate::db::query(
        "INSERT INTO sessions (id, token_hash, user_id, created_at, last_seen_at, absolute_expires_at, passkey_setup_only)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id.to_string())
    .bind(token_hash)
    .bind(user_id.to_string())
    .bind(to_unix(now))
    .bind(to_unix(now))
    .bind(to_unix(absolute_expires_at))
    .bind(i64::from(passkey_setup_only))
    .execute(db)
    .await?;
    Ok(id)
}

/// A session by the hash of its token, with its account, in one query (every authenticated
/// request asks for both).
pub async fn session_with_account(
    db: impl crate::db::Executor<'_>,
    token_hash: &str,
) -> anyhow::Result<Option<(SessionRow, crate::accounts::Account)>> {
    static QUERY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT {}, s.sid, s.last_seen_at, s.absolute_expires_at, s.revoked_at,
                    s.passkey_setup_only
             FROM users JOIN (SELECT id AS sid, user_id, last_seen_at, absolute_expires_at,
                                     revoked_at, passkey_setup_only
                              FROM sessions WHERE token_hash = $1) s ON users.id = s.user_id",
            crate::accounts::ACCOUNT_COLUMNS
        )
    });
    let row = crate::db::query(QUERY.as_str())
        .bind(token_hash)
        .fetch_optional(db)
        .await?;
    row.map(|row| {
        let account = crate::accounts::account_from_row(&row)?;
        // The session's columns by name, after the account's.
        let session = SessionRow {
            id: Uuid::parse_str(row.try_get::<&str, _>("sid")?)?,
            user_id: account.user.id,
            last_seen_at: from_unix(row.try_get("last_seen_at")?),
            absolute_expires_at: from_unix(row.try_get("absolute_expires_at")?),
            revoked: row.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
            passkey_setup_only: row.try_get::<i64, _>("passkey_setup_only")? != 0,
        };
        Ok((session, account))
    })
    .transpose()
}

/// Lift a session's passkey-setup-only restriction (a passkey was registered in it).
pub async fn end_passkey_setup(
    db: impl crate::db::Executor<'_>,
    session_id: Uuid,
) -> anyhow::Result<()> {
    crate::db::query("UPDATE sessions SET passkey_setup_only = 0 WHERE id = $1")
        .bind(session_id.to_string())
        .execute(db)
        .await?;
    Ok(())
}

/// Move a session's last request forward.
pub async fn touch_session(
    db: impl crate::db::Executor<'_>,
    session_id: Uuid,
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    crate::db::query("UPDATE sessions SET last_seen_at = $1 WHERE id = $2")
        .bind(to_unix(now))
        .bind(session_id.to_string())
        .execute(db)
        .await?;
    Ok(())
}

/// End a session (no effect on one already ended).
pub async fn revoke_user_sessions(
    db: &mut crate::db::Tx,
    user_id: Uuid,
    except: Option<Uuid>,
    now: OffsetDateTime,
) -> anyhow::Result<u64> {
    let done = crate::db::query(
        "UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL AND id IS DISTINCT FROM $3",
    )
    .bind(to_unix(now))
    .bind(user_id.to_string())
    .bind(except.map(|id| id.to_string()))
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Replace an enrolled account's password (its second factor stays).
pub async fn change_password(
    db: &mut crate::db::Tx,
    user_id: Uuid,
    password_hash: &str,
) -> anyhow::Result<()> {
    crate::db::query("UPDATE users SET password_hash = $1 WHERE id = $2")
        .bind(password_hash)
        .bind(user_id.to_string())
        .execute(db)
        .await?;
    Ok(())
}

/// Revoke one session.
pub async fn revoke_session(
    db: &mut crate::db::Tx,
    session_id: Uuid,
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    crate::db::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(to_unix(now))
        .bind(session_id.to_string())
        .execute(db)
        .await?;
    Ok(())
}
