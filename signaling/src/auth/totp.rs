//! TOTP (RFC 6238) second factor: SHA-1, 6 digits, 30-second steps, one step of clock skew
//! either way, and each step usable once per account (a replayed code is refused).

use qrcode::render::svg;
use qrcode::QrCode;
use rand::rngs::OsRng;
use rand::RngCore;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Secret, TOTP};

/// Step length in seconds.
pub const STEP_SECS: u64 = 30;
const ISSUER: &str = "Consult";

/// Why a code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    /// Not the code of the current step (or the one either side).
    #[error("wrong code")]
    Wrong,
    /// The code of a step that was already used.
    #[error("code already used")]
    Replayed,
    /// The stored secret is unusable.
    #[error("unusable secret")]
    BadSecret,
}

/// A fresh 160-bit secret, base32 (what authenticator apps take).
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 20];
    OsRng.fill_bytes(&mut bytes);
    Secret::Raw(bytes.to_vec()).to_encoded().to_string()
}

fn totp(secret_b32: &str, account: &str, digits: usize) -> Result<TOTP, TotpError> {
    let bytes = Secret::Encoded(secret_b32.to_owned())
        .to_bytes()
        .map_err(|_| TotpError::BadSecret)?;
    TOTP::new(
        Algorithm::SHA1,
        digits,
        1,
        STEP_SECS,
        bytes,
        Some(ISSUER.to_owned()),
        account.to_owned(),
    )
    .map_err(|_| TotpError::BadSecret)
}

/// The `otpauth://` URI for an authenticator app.
pub fn otpauth_uri(secret_b32: &str, account: &str) -> Result<String, TotpError> {
    Ok(totp(secret_b32, account, 6)?.get_url())
}

/// The URI as an SVG QR code, rendered here so the secret never leaves the service.
pub fn qr_svg(uri: &str) -> Result<String, TotpError> {
    let code = QrCode::new(uri.as_bytes()).map_err(|_| TotpError::BadSecret)?;
    Ok(code
        .render::<svg::Color>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .build())
}

/// The code for a Unix time (for tests and the demo's instructions).
pub fn code_at(secret_b32: &str, unix_secs: u64) -> Result<String, TotpError> {
    Ok(totp(secret_b32, "code", 6)?.generate(unix_secs))
}

/// Check `code` at `unix_secs`. `last_step` is the step of the last accepted code; on success
/// the step to remember is returned.
pub fn verify(
    secret_b32: &str,
    code: &str,
    unix_secs: u64,
    last_step: Option<u64>,
) -> Result<u64, TotpError> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TotpError::Wrong);
    }
    let totp = totp(secret_b32, "code", 6)?;
    let now_step = unix_secs / STEP_SECS;
    let mut matched = None;
    for step in [now_step.saturating_sub(1), now_step, now_step + 1] {
        let expected = totp.generate(step * STEP_SECS);
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
            matched = Some(step);
        }
    }
    let step = matched.ok_or(TotpError::Wrong)?;
    if last_step.is_some_and(|last| step <= last) {
        return Err(TotpError::Replayed);
    }
    Ok(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 rows (secret "12345678901234567890", 8 digits).
    #[test]
    fn rfc6238_sha1_test_vectors() {
        let secret = Secret::Raw(b"12345678901234567890".to_vec())
            .to_encoded()
            .to_string();
        let t = totp(&secret, "rfc", 8).unwrap();
        for (time, expected) in [
            (59, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
            (20000000000, "65353130"),
        ] {
            assert_eq!(t.generate(time), expected, "T={time}");
        }
    }

    #[test]
    fn accepts_one_step_of_skew_and_refuses_replay() {
        let secret = generate_secret();
        let now = 1_700_000_000;
        let code = code_at(&secret, now).unwrap();
        let step = verify(&secret, &code, now, None).unwrap();
        assert_eq!(step, now / STEP_SECS);
        assert_eq!(
            verify(&secret, &code, now, Some(step)),
            Err(TotpError::Replayed)
        );
        let earlier = code_at(&secret, now - 30).unwrap();
        assert!(verify(&secret, &earlier, now, None).is_ok());
        let stale = code_at(&secret, now - 90).unwrap();
        assert_eq!(verify(&secret, &stale, now, None), Err(TotpError::Wrong));
        assert_eq!(verify(&secret, "12345", now, None), Err(TotpError::Wrong));
        assert_eq!(verify(&secret, "abcdef", now, None), Err(TotpError::Wrong));
    }

    #[test]
    fn enrolment_uri_and_qr_are_well_formed() {
        let secret = generate_secret();
        let uri = otpauth_uri(&secret, "doc@example.org").unwrap();
        assert!(uri.starts_with("otpauth://totp/Consult:doc%40example.org?secret="));
        assert!(qr_svg(&uri).unwrap().contains("<svg"));
    }
}
