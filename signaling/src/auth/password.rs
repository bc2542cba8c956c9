//! Argon2id password hashing.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted (bounds the hashing work an attacker can ask for).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A PHC string for a password nobody has, verified against when the account does not exist so
/// that a wrong email and a wrong password take the same time.
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash("not-a-real-password-0000").unwrap_or_default());

/// Why a password cannot be set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    /// Too short.
    #[error("the password must have at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    /// Too long.
    #[error("the password must have at most {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
    /// Hashing failed.
    #[error("could not hash the password")]
    Hashing,
}

/// Argon2 takes 19 MiB and a core's worth of work per call. At most one call per core runs at
/// once: a burst of sign-ins (every clinic opening at nine) queues here instead of fanning out
/// over the blocking pool, whose threads' allocator arenas each keep the 19 MiB they used (a
/// load test of 40 sign-ins four at a time grew the service by 600 MiB before this).
fn workers() -> &'static tokio::sync::Semaphore {
    static WORKERS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    WORKERS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

/// [`hash`] off the async threads, one per core at a time.
pub async fn hash_off_thread(password: String) -> Result<String, PasswordError> {
    let _permit = workers()
        .acquire()
        .await
        .map_err(|_| PasswordError::Hashing)?;
    tokio::task::spawn_blocking(move || hash(&password))
        .await
        .map_err(|_| PasswordError::Hashing)?
}

/// [`verify`] off the async threads, one per core at a time.
pub async fn verify_off_thread(password: String, stored: Option<String>) -> bool {
    let Ok(_permit) = workers().acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || verify(&password, stored.as_deref()))
        .await
        .unwrap_or(false)
}

/// Check the password policy.
pub fn check_policy(password: &str) -> Result<(), PasswordError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort);
    }
    Ok(())
}

/// Hash with Argon2id (library defaults: 19 MiB, 2 passes) and a random salt.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| PasswordError::Hashing)
}

/// Verify against a stored PHC string; `None` (no such account, or no password set yet) still
/// costs one verification.
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    let real = stored.is_some();
    let phc = stored.unwrap_or(DUMMY_HASH.as_str());
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    ok && real
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let a = hash("correct horse battery").unwrap();
        let b = hash("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b);
        assert!(verify("correct horse battery", Some(&a)));
        assert!(!verify("correct horse batterY", Some(&a)));
        assert!(!verify("not-a-real-password-0000", None));
    }

    #[test]
    fn policy_refuses_short_and_huge_passwords() {
        assert_eq!(check_policy("short"), Err(PasswordError::TooShort));
        assert_eq!(check_policy(&"x".repeat(2000)), Err(PasswordError::TooLong));
        assert_eq!(check_policy("twelve chars"), Ok(()));
    }
}
