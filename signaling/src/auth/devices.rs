//! Device cookies, as OWASP describes them ("Slow down online guessing attacks with device
//! cookies"): a browser or app that completed a sign-in (password and second factor) gets a
//! long-lived random token bound to that account, in an HttpOnly cookie scoped to the sign-in
//! endpoints. A sign-in attempt that carries it is counted and locked on that device alone;
//! attempts without it are counted and locked per account and per address. So however much
//! someone guesses at a doctor's password, the doctor's own device is never refused because of
//! it — while guessing stays bounded: a device is only minted by a complete sign-in, each device
//! locks after the account's threshold, and the untrusted channel locks as before (NIST SP
//! 800-63B §5.2.2 asks for at most 100 consecutive failures per account; with the defaults the
//! untrusted channel allows 5 before a lockout that doubles up to an hour).

use axum::http::{HeaderMap, HeaderValue};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::db::{from_unix, to_unix};
use crate::secrets::Token;

/// Name of the device cookie.
pub const DEVICE_COOKIE: &str = "consult_device";
/// How long a device stays known after the sign-in that made it.
pub const DEVICE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(180 * 24 * 3600);
/// Devices kept per account; signing in on one more forgets the least recently used.
pub const MAX_DEVICES_PER_ACCOUNT: i64 = 20;

/// A known device, looked up by its cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its id (for audit entries; never the token).
    pub id: Uuid,
    /// The account it signed in to.
    pub user_id: Uuid,
    /// Until when it is locked after failed attempts, if it is.
    pub locked_until: Option<OffsetDateTime>,
}

/// The device token from the request's cookies, if any.
pub fn token_from_cookie(headers: &HeaderMap) -> Option<Token> {
    crate::secrets::token_from_cookie(headers, DEVICE_COOKIE)
}

/// The `Set-Cookie` value that carries a device token; `Secure` when the client's connection
/// is HTTPS.
pub fn cookie(token: &Token, https: bool) -> Option<HeaderValue> {
    let secure = if https { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{DEVICE_COOKIE}={}; Path=/api/v1/auth; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        token.expose(),
        DEVICE_LIFETIME.as_secs()
    ))
    .ok()
}

/// The device a token names, if it is known and not expired.
pub async fn find(
    pool: &crate::db::Db,
    token: &Token,
    now: OffsetDateTime,
) -> anyhow::Result<Option<Device>> {
    let row = crate::db::query(
        "SELECT id, user_id, locked_until FROM trusted_devices
         WHERE token_hash = $1 AND expires_at > $2",
    )
    .bind(&token.hash().0)
    .bind(to_unix(now))
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        Ok(Device {
            id: row.get::<String, _>(0).parse()?,
            user_id: row.get::<String, _>(1).parse()?,
            locked_until: row.get::<Option<i64>, _>(2).map(from_unix),
        })
    })
    .transpose()
}

/// Remember a new device for `user_id` (forgetting the account's least recently used ones
/// beyond [`MAX_DEVICES_PER_ACCOUNT`]); returns its token.
pub async fn register(
    db: &mut crate::db::Tx,
    user_id: Uuid,
    now: OffsetDateTime,
) -> anyhow::Result<Token> {
    let token = Token::generate();
    crate::db::query(
        "INSERT INTO trusted_devices (id, user_id, token_hash, created_at, last_used_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(Uuid::new_v4().to_string())
    .bind(user_id.to_string())
    .bind(&token.hash().0)
    .bind(to_unix(now))
    .bind(to_unix(now))
    .bind(to_unix(now + DEVICE_LIFETIME))
    .execute(&mut *db)
    .await?;
    crate::db::query(
        "DELETE FROM trusted_devices WHERE user_id = $1 AND id NOT IN (
             SELECT id FROM trusted_devices WHERE user_id = $1
             ORDER BY last_used_at DESC, created_at DESC LIMIT $2)",
    )
    .bind(user_id.to_string())
    .bind(MAX_DEVICES_PER_ACCOUNT)
    .execute(&mut *db)
    .await?;
    Ok(token)
}

/// A sign-in on this device succeeded: its failures are forgotten.
pub async fn signed_in(
    db: &mut crate::db::Tx,
    device: Uuid,
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    crate::db::query(
        "UPDATE trusted_devices SET failures = 0, locked_until = NULL, last_used_at = $1
         WHERE id = $2",
    )
    .bind(to_unix(now))
    .bind(device.to_string())
    .execute(db)
    .await?;
    Ok(())
}

/// Count one more failed attempt on this device; returns the count.
pub async fn count_failure(db: &mut crate::db::Tx, device: Uuid) -> anyhow::Result<u32> {
    let failures: i64 = crate::db::query_scalar(
        "UPDATE trusted_devices SET failures = failures + 1 WHERE id = $1 RETURNING failures",
    )
    .bind(device.to_string())
    .fetch_one(db)
    .await?;
    Ok(u32::try_from(failures).unwrap_or(u32::MAX))
}

/// Lock this device until `until`.
pub async fn lock(
    db: &mut crate::db::Tx,
    device: Uuid,
    until: OffsetDateTime,
) -> anyhow::Result<()> {
    crate::db::query("UPDATE trusted_devices SET locked_until = $1 WHERE id = $2")
        .bind(to_unix(until))
        .bind(device.to_string())
        .execute(db)
        .await?;
    Ok(())
}
