//! Argon2id password hashing, in memory the service keeps instead of allocating per call.

use std::sync::Mutex;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password accepted (bounds the hashing work an attacker can ask for).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest new password, in characters (the API document's `maxLength`; at most
/// [`MAX_PASSWORD_BYTES`] in UTF-8).
pub const MAX_PASSWORD_CHARS: usize = 256;
/// Most Argon2 memory a stored hash may ask for (KiB): a hash with more is refused rather than
/// allocated. New hashes use the library's 19 MiB.
const MAX_MEMORY_KIB: u32 = 256 * 1024;

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
    #[error("the password must have at most {MAX_PASSWORD_CHARS} characters")]
    TooLong,
    /// Hashing failed.
    #[error("could not hash the password")]
    Hashing,
}

/// Argon2 takes 19 MiB and a core's worth of work per call. At most one call per core runs at
/// once: a burst of sign-ins (every clinic opening at nine) queues here instead of fanning out
/// over the blocking pool.
fn workers() -> &'static tokio::sync::Semaphore {
    static WORKERS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    WORKERS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

/// Argon2's working memory, reused from call to call: one buffer per call running at once (at
/// most one per core through [`workers`]), allocated once and kept. Allocating 19 MiB per call
/// left it in whichever allocator arena the blocking thread used, and those arenas are never
/// given back: 1,000 sign-ins grew the service by about 480 MiB.
static MEMORY: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

/// Run `f` with `blocks` of Argon2 memory from the pool; it is zeroed before it goes back (it held
/// values derived from a password).
fn with_memory<R>(blocks: usize, f: impl FnOnce(&mut [Block]) -> R) -> R {
    let taken = MEMORY.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let mut memory = taken.unwrap_or_default();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let result = f(&mut memory[..blocks]);
    memory.fill(Block::default());
    MEMORY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(memory);
    result
}

/// Argon2 of `password` and `salt` into `out`, in pooled memory.
fn argon2_into(
    algorithm: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> argon2::Result<()> {
    if params.m_cost() > MAX_MEMORY_KIB {
        return Err(argon2::Error::MemoryTooMuch);
    }
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    with_memory(blocks, |memory| {
        argon2.hash_password_into_with_memory(password, salt, out, memory)
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
    if password.len() > MAX_PASSWORD_BYTES || password.chars().count() > MAX_PASSWORD_CHARS {
        return Err(PasswordError::TooLong);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort);
    }
    Ok(())
}

/// Hash with Argon2id (library defaults: 19 MiB, 2 passes) and a random salt, as a PHC string.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let raw_salt = salt
        .as_salt()
        .decode_b64(&mut salt_bytes)
        .map_err(|_| PasswordError::Hashing)?;
    let params = Params::default();
    let (algorithm, version) = (Algorithm::Argon2id, Version::V0x13);
    let output = Output::init_with(Params::DEFAULT_OUTPUT_LEN, |out| {
        argon2_into(
            algorithm,
            version,
            params.clone(),
            password.as_bytes(),
            raw_salt,
            out,
        )
        .map_err(Into::into)
    })
    .map_err(|_| PasswordError::Hashing)?;
    let phc = PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: ParamsString::try_from(&params).map_err(|_| PasswordError::Hashing)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Verify against a stored PHC string (any Argon2 variant and parameters up to
/// [`MAX_MEMORY_KIB`]); `None` (no such account, or no password set yet) still costs one
/// verification.
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    let real = stored.is_some();
    let phc = stored.unwrap_or(DUMMY_HASH.as_str());
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
        parsed.salt,
        parsed.hash,
    ) else {
        return false;
    };
    let Ok(version) = parsed
        .version
        .map_or(Ok(Version::default()), Version::try_from)
    else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(raw_salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let computed = Output::init_with(expected.len(), |out| {
        argon2_into(
            algorithm,
            version,
            params,
            password.as_bytes(),
            raw_salt,
            out,
        )
        .map_err(Into::into)
    });
    // `Output`'s equality takes the same time wherever the bytes differ.
    computed.is_ok_and(|computed| computed == expected) && real
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let a = hash("correct horse battery").unwrap();
        let b = hash("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b);
        assert!(verify("correct horse battery", Some(&a)));
        assert!(!verify("correct horse batterY", Some(&a)));
        assert!(!verify("not-a-real-password-0000", None));
    }

    #[test]
    fn hashes_match_the_library_both_ways() {
        // Ours verify with the library's verifier, and the library's hashes (other parameters
        // and variants included) verify with ours: stored hashes keep working.
        let ours = hash("correct horse battery").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"correct horse battery", &parsed)
            .is_ok());
        for (algorithm, m_cost) in [(Algorithm::Argon2id, 8192), (Algorithm::Argon2i, 4096)] {
            let params = Params::new(m_cost, 3, 1, None).unwrap();
            let library = Argon2::new(algorithm, Version::V0x13, params)
                .hash_password(b"correct horse battery", &SaltString::generate(&mut OsRng))
                .unwrap()
                .to_string();
            assert!(verify("correct horse battery", Some(&library)), "{library}");
            assert!(!verify("correct horse batterz", Some(&library)));
        }
    }

    #[test]
    fn malformed_or_greedy_stored_hashes_never_verify() {
        let good = hash("correct horse battery").unwrap();
        let greedy = good.replace("m=19456", "m=4194304");
        let no_hash = good.rsplit_once('$').unwrap().0.to_owned();
        for stored in [
            "",
            "plaintext",
            "$argon2id$v=19$m=19456,t=2,p=1$",
            greedy.as_str(),
            no_hash.as_str(),
            &good.replace("argon2id", "scrypt"),
        ] {
            assert!(!verify("correct horse battery", Some(stored)), "{stored}");
        }
    }

    #[test]
    fn policy_refuses_short_and_huge_passwords() {
        assert_eq!(check_policy("short"), Err(PasswordError::TooShort));
        assert_eq!(check_policy(&"x".repeat(2000)), Err(PasswordError::TooLong));
        assert_eq!(check_policy("twelve chars"), Ok(()));
    }
}
