//! The SQL of passkeys: the registered credentials and the ceremonies already answered.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::db::{from_unix, to_unix};

/// A registered passkey.
#[derive(Debug, Clone)]
pub struct PasskeyRow {
    /// Its id in the service.
    pub id: Uuid,
    /// Whose.
    pub user_id: Uuid,
    /// Its name.
    pub name: String,
    /// webauthn-rs's serialised credential.
    pub passkey: String,
    /// The authenticator's signature counter when it was last used.
    pub sign_count: u32,
    /// When it was registered.
    pub created_at: OffsetDateTime,
    /// When it last signed in.
    pub last_used_at: Option<OffsetDateTime>,
}

const COLUMNS: &str = "id, user_id, name, passkey, sign_count, created_at, last_used_at";

fn from_row(row: &crate::db::Row) -> anyhow::Result<PasskeyRow> {
    Ok(PasskeyRow {
        id: Uuid::parse_str(row.get::<&str, _>(0))?,
        user_id: Uuid::parse_str(row.get::<&str, _>(1))?,
        name: row.get(2),
        passkey: row.get(3),
        sign_count: u32::try_from(row.get::<i64, _>(4))?,
        created_at: from_unix(row.get(5)),
        last_used_at: row.get::<Option<i64>, _>(6).map(from_unix),
    })
}

/// An account's passkeys, oldest first.
pub async fn for_user(
    db: impl crate::db::Executor<'_>,
    user_id: Uuid,
) -> anyhow::Result<Vec<PasskeyRow>> {
    let rows = crate::db::query(&format!(
        "SELECT {COLUMNS} FROM passkeys WHERE user_id = $1 ORDER BY created_at, rowid"
    ))
    .bind(user_id.to_string())
    .fetch_all(db)
    .await?;
    rows.iter().map(from_row).collect()
}

/// How many passkeys an account has.
pub async fn count(db: impl crate::db::Executor<'_>, user_id: Uuid) -> anyhow::Result<u64> {
    let n: i64 = crate::db::query_scalar("SELECT COUNT(*) FROM passkeys WHERE user_id = $1")
        .bind(user_id.to_string())
        .fetch_one(db)
        .await?;
    Ok(u64::try_from(n)?)
}

/// The passkey with this credential id (base64url), whoever's it is.
pub async fn by_credential(
    db: impl crate::db::Executor<'_>,
    credential_id: &str,
) -> anyhow::Result<Option<PasskeyRow>> {
    let row = crate::db::query(&format!(
        "SELECT {COLUMNS} FROM passkeys WHERE credential_id = $1"
    ))
    .bind(credential_id)
    .fetch_optional(db)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// A new passkey; `false` if its credential is registered already (to anyone).
#[allow(clippy::too_many_arguments)]
pub async fn insert(
    db: impl crate::db::Executor<'_>,
    id: Uuid,
    user_id: Uuid,
    credential_id: &str,
    name: &str,
    passkey: &str,
    sign_count: u32,
    now: OffsetDateTime,
) -> anyhow::Result<bool> {
    let done = crate::db::query(
        "INSERT INTO passkeys (id, user_id, credential_id, name, passkey, sign_count, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (credential_id) DO NOTHING",
    )
    .bind(id.to_string())
    .bind(user_id.to_string())
    .bind(credential_id)
    .bind(name)
    .bind(passkey)
    .bind(i64::from(sign_count))
    .bind(to_unix(now))
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Record a use: the new credential state and counter, only if the counter is still the one
/// the check was made against (`false`: another use got there first).
pub async fn record_use(
    db: impl crate::db::Executor<'_>,
    id: Uuid,
    previous_count: u32,
    passkey: &str,
    sign_count: u32,
    now: OffsetDateTime,
) -> anyhow::Result<bool> {
    let done = crate::db::query(
        "UPDATE passkeys SET passkey = $1, sign_count = $2, last_used_at = $3
         WHERE id = $4 AND sign_count = $5",
    )
    .bind(passkey)
    .bind(i64::from(sign_count))
    .bind(to_unix(now))
    .bind(id.to_string())
    .bind(i64::from(previous_count))
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Rename one of `user_id`'s passkeys; `false` if it has none with this id.
pub async fn rename(
    db: impl crate::db::Executor<'_>,
    user_id: Uuid,
    id: Uuid,
    name: &str,
) -> anyhow::Result<bool> {
    let done = crate::db::query("UPDATE passkeys SET name = $1 WHERE id = $2 AND user_id = $3")
        .bind(name)
        .bind(id.to_string())
        .bind(user_id.to_string())
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// What [`remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Gone.
    Removed,
    /// `user_id` has no passkey with this id.
    NotFound,
    /// Kept: it is the account's last and one must stay.
    LastOne,
}

/// Remove one of `user_id`'s passkeys; with `keep_one`, never the last (decided in the same
/// statement, so two removals side by side cannot both pass).
pub async fn remove(
    db: &mut crate::db::Tx,
    user_id: Uuid,
    id: Uuid,
    keep_one: bool,
) -> anyhow::Result<Removal> {
    let done = crate::db::query(
        "DELETE FROM passkeys WHERE id = $1 AND user_id = $2
         AND ($3 = 0 OR (SELECT COUNT(*) FROM passkeys WHERE user_id = $4) > 1)",
    )
    .bind(id.to_string())
    .bind(user_id.to_string())
    .bind(i64::from(keep_one))
    .bind(user_id.to_string())
    .execute(&mut *db)
    .await?;
    if done.rows_affected() == 1 {
        return Ok(Removal::Removed);
    }
    let exists: Option<i64> =
        crate::db::query_scalar("SELECT 1 FROM passkeys WHERE id = $1 AND user_id = $2")
            .bind(id.to_string())
            .bind(user_id.to_string())
            .fetch_optional(&mut *db)
            .await?;
    Ok(if exists.is_some() {
        Removal::LastOne
    } else {
        Removal::NotFound
    })
}

/// Mark a ceremony answered (forgetting those that expired); `false` if it was already.
pub async fn use_ceremony(
    db: &crate::db::Db,
    id: &str,
    expires_at: OffsetDateTime,
    now: OffsetDateTime,
) -> anyhow::Result<bool> {
    crate::db::query("DELETE FROM passkey_ceremonies_used WHERE expires_at < $1")
        .bind(to_unix(now))
        .execute(db)
        .await?;
    let done = crate::db::query(
        "INSERT INTO passkey_ceremonies_used (id, expires_at) VALUES ($1, $2)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(to_unix(expires_at))
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}
