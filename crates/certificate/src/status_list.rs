//! Revocation: an IETF Token Status List (draft-ietf-oauth-status-list), one bit per
//! certificate (1: revoked), zlib-compressed, in a JWT the issuer signs (`statuslist+jwt`).

use miniz_oxide::deflate::compress_to_vec_zlib;
use miniz_oxide::inflate::decompress_to_vec_zlib_with_limit;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::certificate::StatusReference;
use crate::jws::{b64, unb64, verify_compact, IssuerKey, Jwks};
use crate::CertificateError;

/// The status list token's `typ`.
const TYP: &str = "statuslist+jwt";
/// Most certificates one list holds (bits): 8 MiB decompressed at most.
pub const MAX_STATUS_LIST_LEN: u64 = 64 * 1024 * 1024;

/// One bit per certificate, by index: whether it is revoked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusList {
    bytes: Vec<u8>,
}

/// A certificate's status, as its list says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateStatus {
    /// Not revoked.
    Valid,
    /// Revoked by the clinician or an administrator.
    Revoked,
}

impl StatusList {
    /// A list of `len` certificates, none revoked (rounded up to whole bytes).
    pub fn new(len: u64) -> Result<Self, CertificateError> {
        if len > MAX_STATUS_LIST_LEN {
            return Err(CertificateError::Issuing("status list too long".into()));
        }
        Ok(Self {
            bytes: vec![0; len.div_ceil(8) as usize],
        })
    }

    /// How many certificates it holds.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64 * 8
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Mark certificate `idx` revoked (bit `idx % 8` of byte `idx / 8`, least significant first).
    pub fn revoke(&mut self, idx: u64) -> Result<(), CertificateError> {
        let byte = self
            .bytes
            .get_mut(usize::try_from(idx / 8).unwrap_or(usize::MAX))
            .ok_or_else(|| CertificateError::Issuing(format!("index {idx} is outside the list")))?;
        *byte |= 1 << (idx % 8);
        Ok(())
    }

    /// Certificate `idx`'s status; `None` outside the list.
    pub fn status(&self, idx: u64) -> Option<CertificateStatus> {
        let byte = self.bytes.get(usize::try_from(idx / 8).ok()?)?;
        Some(if byte & (1 << (idx % 8)) != 0 {
            CertificateStatus::Revoked
        } else {
            CertificateStatus::Valid
        })
    }

    /// The signed status list token for `uri`, issued `now`, to be fetched again after `ttl`
    /// seconds and not trusted after `valid_for` seconds.
    pub fn sign(
        &self,
        key: &IssuerKey,
        uri: &str,
        now: OffsetDateTime,
        ttl: u64,
        valid_for: u64,
    ) -> Result<String, CertificateError> {
        let header = json!({"alg": "ES256", "typ": TYP, "kid": key.kid()});
        let payload = json!({
            "sub": uri,
            "iat": now.unix_timestamp(),
            "exp": now.unix_timestamp().saturating_add(i64::try_from(valid_for).unwrap_or(i64::MAX)),
            "ttl": ttl,
            "status_list": {"bits": 1, "lst": b64(&compress_to_vec_zlib(&self.bytes, 9))},
        });
        key.sign_compact(&header, &payload)
    }
}

/// The status of the certificate `reference` names, from a status list token fetched from its
/// `uri` (or kept from earlier): the token's signature (a key of `jwks`), that it is the list
/// the certificate names, that it has not expired, and the bit.
pub fn check_status(
    token: &str,
    jwks: &Jwks,
    reference: &StatusReference,
    now: OffsetDateTime,
) -> Result<CertificateStatus, CertificateError> {
    if token.len() > 16 * 1024 * 1024 {
        return Err(CertificateError::Malformed(
            "status list token too long".into(),
        ));
    }
    let verified = verify_compact(token.trim(), jwks, TYP)?;
    let payload = verified.payload;
    if payload.get("sub").and_then(Value::as_str) != Some(reference.uri.as_str()) {
        return Err(CertificateError::Malformed(
            "the status list is not the one the certificate names".into(),
        ));
    }
    match payload.get("exp").and_then(Value::as_i64) {
        Some(exp) if now.unix_timestamp() < exp => {}
        Some(_) => return Err(CertificateError::Expired("status list".into())),
        None => {
            return Err(CertificateError::Malformed(
                "the status list has no expiry".into(),
            ))
        }
    }
    let list = &payload["status_list"];
    if list.get("bits").and_then(Value::as_u64) != Some(1) {
        return Err(CertificateError::Unsupported(
            "status list bits other than 1".into(),
        ));
    }
    let lst = list
        .get("lst")
        .and_then(Value::as_str)
        .ok_or_else(|| CertificateError::Malformed("no status list".into()))?;
    let bytes = decompress_to_vec_zlib_with_limit(
        &unb64(lst, "the status list")?,
        (MAX_STATUS_LIST_LEN / 8) as usize,
    )
    .map_err(|_| CertificateError::Malformed("the status list does not decompress".into()))?;
    StatusList { bytes }.status(reference.idx).ok_or_else(|| {
        CertificateError::Malformed(format!(
            "index {} is outside the status list",
            reference.idx
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026 - 12 - 01 10:00 UTC);

    #[test]
    fn the_drafts_example_reads_as_the_draft_says() {
        // draft-ietf-oauth-status-list, section 4.1: bits 1, "eNrbuRgAAhcBXQ" is 0xb9 0xa3:
        // indices 0, 3, 4, 5, 7, 8, 9, 13, 15 are set.
        let bytes =
            decompress_to_vec_zlib_with_limit(&unb64("eNrbuRgAAhcBXQ", "lst").expect("b64"), 16)
                .expect("zlib");
        assert_eq!(bytes, [0xb9, 0xa3]);
        let list = StatusList { bytes };
        let revoked: Vec<u64> = (0..16)
            .filter(|i| list.status(*i) == Some(CertificateStatus::Revoked))
            .collect();
        assert_eq!(revoked, [0, 3, 4, 5, 7, 8, 9, 13, 15]);
        assert_eq!(list.status(16), None);
    }

    #[test]
    fn a_revoked_certificate_reads_revoked_and_the_others_valid() {
        let key = IssuerKey::generate().expect("key");
        let jwks = Jwks {
            keys: vec![key.public_jwk()],
        };
        let uri = "https://clinic.example/api/v1/certificates/status";
        let mut list = StatusList::new(1 << 16).expect("list");
        list.revoke(4711).expect("revoke");
        assert!(list.revoke(1 << 16).is_err());
        let token = list.sign(&key, uri, NOW, 300, 86_400).expect("sign");
        assert!(
            token.len() < 600,
            "65 536 mostly-zero bits compress: {} bytes",
            token.len()
        );
        let at = |idx| StatusReference {
            uri: uri.into(),
            idx,
        };
        assert_eq!(
            check_status(&token, &jwks, &at(4711), NOW),
            Ok(CertificateStatus::Revoked)
        );
        assert_eq!(
            check_status(&token, &jwks, &at(4710), NOW),
            Ok(CertificateStatus::Valid)
        );
        // Outside the list, another list, too late, another key: errors, never "valid".
        assert!(check_status(&token, &jwks, &at(1 << 16), NOW).is_err());
        let other = StatusReference {
            uri: "https://other.example/status".into(),
            idx: 4711,
        };
        assert!(check_status(&token, &jwks, &other, NOW).is_err());
        assert!(matches!(
            check_status(&token, &jwks, &at(4711), NOW + time::Duration::days(2)),
            Err(CertificateError::Expired(_))
        ));
        let stranger = IssuerKey::generate().expect("key");
        assert!(matches!(
            check_status(
                &token,
                &Jwks {
                    keys: vec![stranger.public_jwk()]
                },
                &at(4711),
                NOW
            ),
            Err(CertificateError::UnknownKey(_))
        ));
    }
}
