//! Accounts: creation (by an operator, with a one-time enrolment link), lookup, and the demo
//! doctor.

use consult_proto::api::{Role, User};
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::{Action, Actor, AuditLog};
use crate::auth::{password, totp};
use crate::db::{from_unix, to_unix};
use crate::secrets::{SealingKey, Token};

/// An account as stored.
#[derive(Debug, Clone)]
pub struct Account {
    /// Public view.
    pub user: User,
    /// Argon2id PHC string; `None` until enrolled.
    pub password_hash: Option<String>,
    /// The base32 TOTP secret, sealed with the service's [`SealingKey`] for [`totp_owner`];
    /// `None` until the second factor is enrolled.
    pub totp_secret: Option<String>,
    /// Step of the last accepted TOTP code.
    pub totp_last_step: Option<u64>,
    /// Consecutive failed sign-ins.
    pub failed_logins: u32,
    /// Locked until then, after too many failures.
    pub locked_until: Option<OffsetDateTime>,
    /// When an administrator disabled it, if one did.
    pub disabled_at: Option<OffsetDateTime>,
}

pub(crate) const ACCOUNT_COLUMNS: &str =
    "id, email, display_name, role, password_hash, totp_secret, \
     totp_last_step, failed_logins, locked_until, disabled_at";

/// The account in the first columns of `row`, selected as [`ACCOUNT_COLUMNS`].
pub(crate) fn account_from_row(row: &crate::db::Row) -> anyhow::Result<Account> {
    let id: String = row.get(0);
    let role: String = row.get(3);
    Ok(Account {
        user: User {
            id: Uuid::parse_str(&id)?,
            email: row.get(1),
            display_name: row.get(2),
            role: role.parse().map_err(anyhow::Error::msg)?,
        },
        password_hash: row.get(4),
        totp_secret: row.get(5),
        totp_last_step: row.get::<Option<i64>, _>(6).map(|s| s as u64),
        failed_logins: row.get::<i64, _>(7) as u32,
        locked_until: row.get::<Option<i64>, _>(8).map(from_unix),
        disabled_at: row.get::<Option<i64>, _>(9).map(from_unix),
    })
}

/// The associated data a user's sealed TOTP secret is bound to.
pub fn totp_owner(user_id: Uuid) -> String {
    format!("totp:{user_id}")
}

/// Normalise an email for lookup and storage.
pub fn normalise_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Find an account by email (case-insensitive).
pub async fn find_by_email(pool: &crate::db::Db, email: &str) -> anyhow::Result<Option<Account>> {
    let row = crate::db::query(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM users WHERE email = $1"
    ))
    .bind(normalise_email(email))
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(account_from_row).transpose()
}

/// Find an account by id.
pub async fn find_by_id(pool: &crate::db::Db, id: Uuid) -> anyhow::Result<Option<Account>> {
    let row = crate::db::query(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM users WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(account_from_row).transpose()
}

/// Every account, by email.
pub async fn list(pool: &crate::db::Db) -> anyhow::Result<Vec<Account>> {
    let rows = crate::db::query(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM users ORDER BY email"
    ))
    .fetch_all(pool)
    .await?;
    rows.iter().map(account_from_row).collect()
}

/// Disable an account (it stays disabled if it was); whether it exists.
pub async fn disable(
    db: &mut crate::db::Tx,
    user_id: Uuid,
    now: OffsetDateTime,
) -> anyhow::Result<bool> {
    let done =
        crate::db::query("UPDATE users SET disabled_at = COALESCE(disabled_at, $1) WHERE id = $2")
            .bind(crate::db::to_unix(now))
            .bind(user_id.to_string())
            .execute(db)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Why an account could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    /// The email is not plausible.
    #[error("{0:?} is not an email address")]
    InvalidEmail(String),
    /// Someone has it already.
    #[error("an account with email {0} already exists")]
    Exists(String),
    /// Database or hashing failure.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A created account and the one-time link its owner uses to set a password.
#[derive(Debug)]
pub struct CreatedUser {
    /// The account.
    pub user: User,
    /// `PUBLIC_URL/enrol#TOKEN`.
    pub enrolment_url: String,
}

/// What an operator says about a new account.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Sign-in email.
    pub email: String,
    /// Name shown to patients.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// The licence number a clinician signs medical certificates with.
    pub licence_number: Option<String>,
}

/// A licence number as an operator enters it, trimmed: 1 to 64 characters, no control
/// characters.
pub fn checked_licence_number(raw: &str) -> anyhow::Result<String> {
    let licence = raw.trim();
    if licence.is_empty() || licence.chars().count() > 64 || licence.chars().any(char::is_control) {
        anyhow::bail!("a licence number is 1 to 64 characters");
    }
    Ok(licence.to_owned())
}

/// Set (or replace) a clinician's licence number, audited.
pub async fn set_licence_number(
    pool: &crate::db::Db,
    audit: &AuditLog,
    now: OffsetDateTime,
    email: &str,
    licence: &str,
) -> anyhow::Result<User> {
    let licence = checked_licence_number(licence)?;
    let account = find_by_email(pool, email)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no account with email {}", normalise_email(email)))?;
    if account.user.role != Role::Doctor {
        anyhow::bail!("only a clinician (role doctor) signs certificates");
    }
    let mut tx = audit.begin().await?;
    crate::db::query("UPDATE users SET licence_number = $1 WHERE id = $2")
        .bind(&licence)
        .bind(account.user.id.to_string())
        .execute(tx.connection())
        .await?;
    tx.record(
        now,
        &Actor::Operator,
        Action::LicenceNumberSet,
        None,
        serde_json::json!({ "user_id": account.user.id, "licence_number": licence }),
    )
    .await?;
    tx.commit().await?;
    Ok(account.user)
}

/// Create an account without a password, and an enrolment link valid for `link_ttl`.
pub async fn create_user(
    pool: &crate::db::Db,
    audit: &AuditLog,
    now: OffsetDateTime,
    new: &NewUser,
    public_url: &str,
    link_ttl: std::time::Duration,
) -> Result<CreatedUser, CreateUserError> {
    let (display_name, role) = (new.display_name.as_str(), new.role);
    let email = normalise_email(&new.email);
    let plausible = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !plausible {
        return Err(CreateUserError::InvalidEmail(email));
    }
    if find_by_email(pool, &email).await?.is_some() {
        return Err(CreateUserError::Exists(email));
    }
    let user = User {
        id: Uuid::new_v4(),
        email: email.clone(),
        display_name: display_name.trim().to_owned(),
        role,
    };
    let licence = new
        .licence_number
        .as_deref()
        .map(checked_licence_number)
        .transpose()?;
    if licence.is_some() && role != Role::Doctor {
        return Err(CreateUserError::Other(anyhow::anyhow!(
            "only a clinician (role doctor) signs certificates: a licence number is for them"
        )));
    }
    let token = Token::generate();
    // The account, its enrolment link and the audit entry commit together.
    let mut tx = audit.begin().await?;
    crate::db::query(
        "INSERT INTO users (id, email, display_name, role, created_at, licence_number) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(user.id.to_string())
    .bind(&user.email)
    .bind(&user.display_name)
    .bind(role.as_str())
    .bind(to_unix(now))
    .bind(licence)
    .execute(tx.connection())
    .await
    .map_err(anyhow::Error::from)?;
    crate::db::query(
        "INSERT INTO enrolment_tokens (token_hash, user_id, expires_at) VALUES ($1, $2, $3)",
    )
    .bind(token.hash().0)
    .bind(user.id.to_string())
    .bind(to_unix(now + link_ttl))
    .execute(tx.connection())
    .await
    .map_err(anyhow::Error::from)?;
    tx.record(
        now,
        &Actor::System,
        Action::UserCreated,
        None,
        serde_json::json!({ "user_id": user.id, "role": role.as_str() }),
    )
    .await?;
    tx.commit().await?;
    Ok(CreatedUser {
        enrolment_url: format!(
            "{}/enrol#{}",
            public_url.trim_end_matches('/'),
            token.expose()
        ),
        user,
    })
}

/// Sign-in details of the demo doctor, as written to `DATA_DIR/demo-credentials.json`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DemoCredentials {
    /// Sign-in email.
    pub email: String,
    /// Password.
    pub password: String,
    /// Base32 TOTP secret (add it to an authenticator app, or compute codes from it).
    pub totp_secret: String,
    /// Where to sign in.
    pub url: String,
}

/// Email of the demo doctor.
pub const DEMO_EMAIL: &str = "demo.doctor@consult.localhost";

/// Seed (or reuse) the demo doctor, with password and TOTP already enrolled. Reusing keeps the
/// secret the operator's authenticator app already has.
pub async fn seed_demo_doctor(
    pool: &crate::db::Db,
    audit: &AuditLog,
    sealing_key: &SealingKey,
    now: OffsetDateTime,
    existing: Option<&DemoCredentials>,
    url: &str,
) -> anyhow::Result<DemoCredentials> {
    if let (Some(creds), Some(account)) = (existing, find_by_email(pool, DEMO_EMAIL).await?) {
        let password_ok = password::verify(&creds.password, account.password_hash.as_deref());
        let stored = account
            .totp_secret
            .as_deref()
            .and_then(|sealed| sealing_key.open(sealed, &totp_owner(account.user.id)).ok());
        if password_ok && stored.as_deref() == Some(creds.totp_secret.as_str()) {
            return Ok(DemoCredentials {
                url: url.to_owned(),
                ..creds.clone()
            });
        }
    }
    let (password, totp_secret) =
        seed_doctor(pool, audit, sealing_key, now, DEMO_EMAIL, "Dr Demo").await?;
    Ok(DemoCredentials {
        email: DEMO_EMAIL.to_owned(),
        password,
        totp_secret,
        url: url.to_owned(),
    })
}

/// The licence number of a seeded (demo or load) doctor: marked as a demonstration, so that a
/// certificate it signs says so to anyone who verifies it.
fn demo_licence_number(id: Uuid) -> String {
    format!("DEMO-{}", &id.simple().to_string()[..8])
}

/// Create (or reset) a doctor with a fresh random password and TOTP secret, already enrolled;
/// returns them.
async fn seed_doctor(
    pool: &crate::db::Db,
    audit: &AuditLog,
    sealing_key: &SealingKey,
    now: OffsetDateTime,
    email: &str,
    display_name: &str,
) -> anyhow::Result<(String, String)> {
    let (password, totp_secret) = new_secrets();
    let hash = password::hash(&password)?;
    store_doctor(
        pool,
        audit,
        sealing_key,
        now,
        email,
        display_name,
        &hash,
        &totp_secret,
    )
    .await?;
    Ok((password, totp_secret))
}

/// A fresh random password and TOTP secret.
fn new_secrets() -> (String, String) {
    (
        Token::generate().expose()[..20].to_owned(),
        totp::generate_secret(),
    )
}

/// Create (or reset) a doctor with this password hash and TOTP secret.
#[allow(clippy::too_many_arguments)]
async fn store_doctor(
    pool: &crate::db::Db,
    audit: &AuditLog,
    sealing_key: &SealingKey,
    now: OffsetDateTime,
    email: &str,
    display_name: &str,
    hash: &str,
    totp_secret: &str,
) -> anyhow::Result<()> {
    match find_by_email(pool, email).await? {
        Some(account) => {
            crate::db::query(
                "UPDATE users SET password_hash = $1, totp_secret = $2, totp_last_step = NULL,
                 failed_logins = 0, locked_until = NULL,
                 licence_number = COALESCE(licence_number, $4) WHERE id = $3",
            )
            .bind(hash)
            .bind(sealing_key.seal(totp_secret, &totp_owner(account.user.id)))
            .bind(account.user.id.to_string())
            .bind(demo_licence_number(account.user.id))
            .execute(pool)
            .await?;
        }
        None => {
            let id = Uuid::new_v4();
            crate::db::query(
                "INSERT INTO users (id, email, display_name, role, password_hash, totp_secret, created_at,
                 licence_number) VALUES ($1, $2, $3, 'doctor', $4, $5, $6, $7)",
            )
            .bind(id.to_string())
            .bind(email)
            .bind(display_name)
            .bind(hash)
            .bind(sealing_key.seal(totp_secret, &totp_owner(id)))
            .bind(to_unix(now))
            .bind(demo_licence_number(id))
            .execute(pool)
            .await?;
            audit
                .record(
                    now,
                    &Actor::System,
                    Action::UserCreated,
                    None,
                    serde_json::json!({ "user_id": id, "role": "doctor", "seeded": true }),
                )
                .await?;
        }
    }
    Ok(())
}

/// Seed `count` doctors for the load generator (`load-1@load.consult.localhost`, ...), each
/// with a fresh password and TOTP secret: a doctor admits one patient at a time, so a run of N
/// consultations needs N of them. Existing ones are reset.
pub async fn seed_load_clinicians(
    pool: &crate::db::Db,
    audit: &AuditLog,
    sealing_key: &SealingKey,
    now: OffsetDateTime,
    count: usize,
    url: &str,
) -> anyhow::Result<Vec<DemoCredentials>> {
    let secrets: Vec<(String, String)> = (0..count).map(|_| new_secrets()).collect();
    // The password hashes are most of the work (Argon2, made to be slow): on every core.
    let passwords: Vec<String> = secrets.iter().map(|(p, _)| p.clone()).collect();
    let hashes = tokio::task::spawn_blocking(move || hash_all(&passwords)).await??;
    let mut seeded = Vec::with_capacity(count);
    for (i, ((password, totp_secret), hash)) in (1..=count).zip(secrets.into_iter().zip(hashes)) {
        let email = format!("load-{i}@load.consult.localhost");
        let name = format!("Dr Load {i}");
        store_doctor(
            pool,
            audit,
            sealing_key,
            now,
            &email,
            &name,
            &hash,
            &totp_secret,
        )
        .await?;
        seeded.push(DemoCredentials {
            email,
            password,
            totp_secret,
            url: url.to_owned(),
        });
    }
    Ok(seeded)
}

/// The password hash of each of `passwords`, in order, hashed on every core.
fn hash_all(passwords: &[String]) -> Result<Vec<String>, password::PasswordError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_core = passwords.len().div_ceil(cores).max(1);
    std::thread::scope(|scope| {
        let parts: Vec<_> = passwords
            .chunks(per_core)
            .map(|part| scope.spawn(|| part.iter().map(|p| password::hash(p)).collect::<Vec<_>>()))
            .collect();
        let mut hashes = Vec::with_capacity(passwords.len());
        for part in parts {
            // A panic in a hashing thread is a bug here: passed on as one.
            let part = part.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            for hash in part {
                hashes.push(hash?);
            }
        }
        Ok(hashes)
    })
}
