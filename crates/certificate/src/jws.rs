//! The issuer's ES256 key (generated and kept as PKCS#8 with ring), its public JWK and a JWKS,
//! and JWS signing and verification with the `jsonwebtoken` crate (aws-lc-rs backend), behind
//! header checks stricter than a general JWT library makes: ES256 only, the expected `typ`, no
//! `crit`, and a `kid` whose key is the one its id names.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::CertificateError;

/// Base64url without padding (JOSE's encoding).
pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decode base64url without padding, refusing anything else.
pub(crate) fn unb64(text: &str, what: &str) -> Result<Vec<u8>, CertificateError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| CertificateError::Malformed(format!("{what} is not base64url")))
}

/// Text from outside (a key id, an issuer) fit for an error message: at most 64 characters,
/// escaped.
pub(crate) fn shown(text: &str) -> String {
    let cut: String = text.chars().take(64).collect();
    let mut out = cut.escape_debug().to_string();
    if text.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// SHA-256, base64url: JWK thumbprints and disclosure digests.
pub(crate) fn sha256_b64(bytes: &[u8]) -> String {
    b64(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// The organisation's issuer key: ECDSA P-256 (ES256). Its key id is its RFC 7638 thumbprint,
/// so a JWKS can hold every key ever used and a certificate names the one that signed it.
///
/// The private key leaves only as PKCS#8 ([`IssuerKey::pkcs8`]), for the vault's keyring.
pub struct IssuerKey {
    pair: EcdsaKeyPair,
    pkcs8: Zeroizing<Vec<u8>>,
    kid: String,
}

impl std::fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl IssuerKey {
    /// A new random key.
    pub fn generate() -> Result<Self, CertificateError> {
        let rng = SystemRandom::new();
        let document = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| CertificateError::Issuing("could not generate a key".into()))?;
        Self::from_pkcs8(document.as_ref())
    }

    /// The key kept as PKCS#8 (from [`IssuerKey::pkcs8`]).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, CertificateError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|_| CertificateError::Issuing("not a P-256 PKCS#8 key".into()))?;
        let point = pair.public_key().as_ref().to_vec();
        let kid = thumbprint(&point[1..33], &point[33..65]);
        Ok(Self {
            pair,
            pkcs8: Zeroizing::new(pkcs8.to_vec()),
            kid,
        })
    }

    /// The private key as PKCS#8, to keep sealed.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The key id: the RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key, for the JWKS.
    pub fn public_jwk(&self) -> PublicJwk {
        let point = self.pair.public_key().as_ref();
        PublicJwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: b64(&point[1..33]),
            y: b64(&point[33..65]),
            kid: self.kid.clone(),
            alg: "ES256".into(),
            use_: Some("sig".into()),
        }
    }

    /// `header.payload.signature`, signed (`jsonwebtoken`'s ES256 over the JOSE signing input).
    pub(crate) fn sign_compact(
        &self,
        header: &Value,
        payload: &Value,
    ) -> Result<String, CertificateError> {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes())
        );
        let key = jsonwebtoken::EncodingKey::from_ec_der(&self.pkcs8);
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::ES256)
                .map_err(|_| CertificateError::Issuing("signing failed".into()))?;
        Ok(format!("{input}.{signature}"))
    }
}

/// RFC 7638 thumbprint of a P-256 key (its required members in lexicographic order).
fn thumbprint(x: &[u8], y: &[u8]) -> String {
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        b64(x),
        b64(y)
    );
    sha256_b64(canonical.as_bytes())
}

/// A public issuer key as a JWK (RFC 7517): P-256 for ES256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    /// `EC`.
    pub kty: String,
    /// `P-256`.
    pub crv: String,
    /// The point's x coordinate, base64url.
    pub x: String,
    /// The point's y coordinate, base64url.
    pub y: String,
    /// Its key id (the thumbprint).
    pub kid: String,
    /// `ES256`.
    pub alg: String,
    /// `sig`.
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

impl PublicJwk {
    /// This key for `jsonwebtoken`, once it is shown to be a P-256 ES256 key and the key its id
    /// names (a JWKS entry cannot borrow another key's id).
    fn decoding_key(&self) -> Result<jsonwebtoken::DecodingKey, CertificateError> {
        if self.kty != "EC" || self.crv != "P-256" || self.alg != "ES256" {
            return Err(CertificateError::Unsupported(format!(
                "key {} is {} {} {}",
                self.kid, self.kty, self.crv, self.alg
            )));
        }
        let (x, y) = (
            unb64(&self.x, "the key's x")?,
            unb64(&self.y, "the key's y")?,
        );
        if x.len() != 32 || y.len() != 32 {
            return Err(CertificateError::Malformed(format!(
                "key {} has a bad point",
                self.kid
            )));
        }
        if thumbprint(&x, &y) != self.kid {
            return Err(CertificateError::Malformed(format!(
                "key {} is not the key its id names",
                self.kid
            )));
        }
        jsonwebtoken::DecodingKey::from_ec_components(&self.x, &self.y)
            .map_err(|_| CertificateError::Malformed(format!("key {} has a bad point", self.kid)))
    }
}

/// The issuer's public keys (RFC 7517 JWK Set): every key that signed certificates still valid,
/// so that a key rotated out keeps verifying what it signed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys.
    pub keys: Vec<PublicJwk>,
}

impl Jwks {
    /// The key with this id.
    pub fn find(&self, kid: &str) -> Option<&PublicJwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }
}

/// A JWS checked against a JWKS: the key that signed it and the payload.
pub(crate) struct VerifiedJws {
    pub kid: String,
    pub payload: Map<String, Value>,
}

/// Verify a compact JWS: ES256 only, `typ` as given, a `kid` from `jwks`, the signature.
pub(crate) fn verify_compact(
    jws: &str,
    jwks: &Jwks,
    typ: &str,
) -> Result<VerifiedJws, CertificateError> {
    let mut parts = jws.split('.');
    let (Some(header), Some(_payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(CertificateError::Malformed(
            "the signed part is not a JWS".into(),
        ));
    };
    let header_json = json_object(&unb64(header, "the header")?, "the header")?;
    match header_json.get("alg").and_then(Value::as_str) {
        Some("ES256") => {}
        other => {
            return Err(CertificateError::Unsupported(format!(
                "algorithm {other:?}"
            )));
        }
    }
    match header_json.get("typ").and_then(Value::as_str) {
        Some(t) if t == typ => {}
        other => return Err(CertificateError::Unsupported(format!("type {other:?}"))),
    }
    if header_json.contains_key("crit") {
        return Err(CertificateError::Unsupported(
            "critical header parameters".into(),
        ));
    }
    let kid = header_json
        .get("kid")
        .and_then(Value::as_str)
        .ok_or_else(|| CertificateError::Malformed("no key id".into()))?;
    let key = jwks
        .find(kid)
        .ok_or_else(|| CertificateError::UnknownKey(shown(kid)))?;
    let decoding_key = key.decoding_key()?;
    // Strict base64url for the signature (jsonwebtoken's decoder would also take padding).
    unb64(signature, "the signature")?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    // Validity is the caller's to check, against its own clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let verified = jsonwebtoken::decode::<Map<String, Value>>(jws, &decoding_key, &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature
            | jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey => CertificateError::BadSignature,
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                CertificateError::Unsupported("algorithm".into())
            }
            _ => CertificateError::Malformed("the signed part does not decode".into()),
        })?;
    Ok(VerifiedJws {
        kid: key.kid.clone(),
        payload: verified.claims,
    })
}

/// Parse a JSON object.
pub(crate) fn json_object(
    bytes: &[u8],
    what: &str,
) -> Result<Map<String, Value>, CertificateError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(CertificateError::Malformed(format!(
            "{what} is not a JSON object"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_key_round_trips_through_pkcs8_and_its_id_is_its_thumbprint() {
        let key = IssuerKey::generate().expect("key");
        let again = IssuerKey::from_pkcs8(key.pkcs8()).expect("pkcs8");
        assert_eq!(key.kid(), again.kid());
        assert_eq!(key.public_jwk(), again.public_jwk());
        assert_eq!(key.kid().len(), 43, "a base64url SHA-256");
        assert!(IssuerKey::from_pkcs8(b"not a key").is_err());
        assert!(
            !format!("{key:?}").contains("pkcs8"),
            "Debug shows no secret"
        );
    }

    #[test]
    fn a_signature_verifies_with_its_key_only() {
        let key = IssuerKey::generate().expect("key");
        let other = IssuerKey::generate().expect("key");
        let header = json!({"alg": "ES256", "typ": "t", "kid": key.kid()});
        let jws = key.sign_compact(&header, &json!({"a": 1})).expect("sign");
        let jwks = Jwks {
            keys: vec![key.public_jwk()],
        };
        let verified = verify_compact(&jws, &jwks, "t").expect("verifies");
        assert_eq!(verified.payload["a"], 1);
        // Another key's JWKS does not know it.
        let others = Jwks {
            keys: vec![other.public_jwk()],
        };
        assert!(matches!(
            verify_compact(&jws, &others, "t"),
            Err(CertificateError::UnknownKey(_))
        ));
        // Another key posing under this key's id is refused before any signature check.
        let mut posing = other.public_jwk();
        posing.kid = key.kid().to_owned();
        let posing = Jwks { keys: vec![posing] };
        assert!(matches!(
            verify_compact(&jws, &posing, "t"),
            Err(CertificateError::Malformed(_))
        ));
        // Re-signed by another key that claims this key's id.
        let forged = other.sign_compact(&header, &json!({"a": 1})).expect("sign");
        assert_eq!(
            verify_compact(&forged, &jwks, "t").err(),
            Some(CertificateError::BadSignature)
        );
        // A wrong type or algorithm.
        assert!(matches!(
            verify_compact(&jws, &jwks, "other"),
            Err(CertificateError::Unsupported(_))
        ));
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"t","kid":"x"}"#),
            b64(b"{}")
        );
        assert!(matches!(
            verify_compact(&none, &jwks, "t"),
            Err(CertificateError::Unsupported(_))
        ));
    }
}
