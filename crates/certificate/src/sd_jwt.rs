//! SD-JWT (RFC 9901) on the `sd-jwt-payload` crate: salted disclosures of top-level claims,
//! their SHA-256 digests signed in `_sd` beside decoys ([`SdJwtBuilder`]), presentations that
//! conceal the claims not chosen, and decoding of what is disclosed. Around it, what a verifier
//! of medical certificates must refuse and a general library lets through: a key-binding JWT
//! (Consult's certificates are bearer documents), a disclosure given twice, a disclosure whose
//! digest the issuer did not sign (named, not merely counted), array-element disclosures, short
//! salts, reserved names, oversized input.

use std::collections::HashSet;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use sd_jwt_payload::{Hasher, JsonObject, JwsSigner, SdJwtBuilder};
use serde_json::{Map, Value};

use crate::jws::{sha256_b64, verify_compact, IssuerKey, Jwks};
use crate::CertificateError;

/// Longest presentation accepted (bytes): a certificate is a few kilobytes.
pub(crate) const MAX_PRESENTATION: usize = 64 * 1024;
/// Salt of each disclosure: 128 random bits, as RFC 9901 recommends (the library's default is
/// 240, which only makes the QR code larger).
const SALT_BYTES: usize = 16;
/// Most disclosures accepted in one presentation.
const MAX_DISCLOSURES: usize = 64;

/// SHA-256 for `sd-jwt-payload`, from ring (the crate's own needs `iota-crypto`).
struct Sha256;

impl Hasher for Sha256 {
    fn digest(&self, input: &[u8]) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, input)
            .as_ref()
            .to_vec()
    }

    fn alg_name(&self) -> &str {
        "sha-256"
    }
}

/// The issuer's key as `sd-jwt-payload`'s signer: the whole compact JWS.
struct Signer<'a>(&'a IssuerKey);

#[async_trait::async_trait]
impl JwsSigner for Signer<'_> {
    type Error = CertificateError;

    async fn sign(
        &self,
        header: &JsonObject,
        payload: &JsonObject,
    ) -> Result<Vec<u8>, Self::Error> {
        self.0
            .sign_compact(
                &Value::Object(header.clone()),
                &Value::Object(payload.clone()),
            )
            .map(String::into_bytes)
    }
}

/// The output of a future that never waits (signing in memory), or `None` if it would.
fn ready<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// A JSON pointer to a top-level claim (RFC 6901 escaping).
fn pointer(name: &str) -> String {
    format!("/{}", name.replace('~', "~0").replace('/', "~1"))
}

fn library_error(e: sd_jwt_payload::Error) -> CertificateError {
    use sd_jwt_payload::Error as E;
    match e {
        E::DuplicateDigestError(_) => {
            CertificateError::Malformed("a digest is signed twice".into())
        }
        E::ClaimCollisionError(name) => CertificateError::Malformed(format!(
            "{} is both visible and disclosed",
            crate::jws::shown(&name)
        )),
        E::UnusedDisclosures(_) => CertificateError::UnsignedDisclosure("a disclosure".into()),
        E::InvalidDisclosure(_) => {
            CertificateError::Malformed("a disclosure does not decode".into())
        }
        E::InvalidHasher(_) => CertificateError::Unsupported("digest algorithm".into()),
        _ => CertificateError::Malformed("not an SD-JWT".into()),
    }
}

/// One disclosure: a salted claim, as `base64url([salt, name, value])`. Its `Debug` shows the
/// claim's name only.
#[derive(Clone, PartialEq)]
pub struct Disclosure {
    /// The encoded form, exactly as issued (its digest is over these characters).
    pub encoded: String,
    /// The claim's name.
    pub name: String,
    /// The claim's value.
    pub value: Value,
}

impl std::fmt::Debug for Disclosure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disclosure")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Disclosure {
    /// From `sd-jwt-payload`'s, refusing what certificates never hold: array elements, salts
    /// under 128 bits (22 base64url characters), reserved names.
    fn from_library(d: &sd_jwt_payload::Disclosure) -> Result<Self, CertificateError> {
        let Some(name) = d.claim_name.clone() else {
            return Err(CertificateError::Malformed(
                "a disclosure is not [salt, name, value] (array elements are not used)".into(),
            ));
        };
        if d.salt.len() < 16 {
            return Err(CertificateError::Malformed(
                "a disclosure's salt is too short".into(),
            ));
        }
        if name == "_sd" || name == "..." || name == "_sd_alg" {
            return Err(CertificateError::Malformed(format!(
                "a disclosure may not be named {name}"
            )));
        }
        Ok(Self {
            encoded: d.as_str().to_owned(),
            name,
            value: d.claim_value.clone(),
        })
    }

    /// Its digest: SHA-256 over the encoded characters.
    pub fn digest(&self) -> String {
        sha256_b64(self.encoded.as_bytes())
    }
}

/// An SD-JWT split into its issuer-signed JWT and its disclosures (no key binding: Consult's
/// certificates are bearer documents, see the README).
#[derive(Debug, Clone, PartialEq)]
pub struct SdJwt {
    /// The issuer-signed JWT.
    pub jwt: String,
    /// The disclosures it carries.
    pub disclosures: Vec<Disclosure>,
}

impl SdJwt {
    /// Sign `visible` claims and make every one of `disclosable` a disclosure, with `decoys`
    /// decoy digests beside them (so that the number of claims does not show).
    pub(crate) fn issue(
        key: &IssuerKey,
        typ: &str,
        visible: Map<String, Value>,
        disclosable: Vec<(&str, Value)>,
        decoys: usize,
    ) -> Result<Self, CertificateError> {
        let issuing = |e: sd_jwt_payload::Error| CertificateError::Issuing(e.to_string());
        let mut object = visible;
        for (name, value) in &disclosable {
            if object.insert((*name).to_owned(), value.clone()).is_some() {
                return Err(CertificateError::Issuing(format!(
                    "{name} is both visible and disclosable"
                )));
            }
        }
        let mut builder =
            SdJwtBuilder::new_with_hasher_and_salt_size(Value::Object(object), Sha256, SALT_BYTES)
                .map_err(issuing)?;
        for (name, _) in &disclosable {
            builder = builder.make_concealable(&pointer(name)).map_err(issuing)?;
        }
        let builder = builder
            .add_decoys("", decoys)
            .map_err(issuing)?
            .header("typ", typ)
            .header("kid", key.kid());
        let issued = ready(builder.finish(&Signer(key), "ES256"))
            .ok_or_else(|| CertificateError::Issuing("signing did not finish".into()))?
            .map_err(issuing)?;
        Self::parse(&issued.presentation())
    }

    /// The compact form: `jwt~disclosure~…~` (the trailing `~`: no key binding JWT).
    pub fn to_compact(&self) -> String {
        let mut out = self.jwt.clone();
        out.push('~');
        for d in &self.disclosures {
            out.push_str(&d.encoded);
            out.push('~');
        }
        out
    }

    /// Split a compact SD-JWT, decoding its disclosures (nothing is verified yet).
    pub fn parse(compact: &str) -> Result<Self, CertificateError> {
        if compact.len() > MAX_PRESENTATION {
            return Err(CertificateError::Malformed("too long".into()));
        }
        let compact = compact.trim();
        if !compact.ends_with('~') {
            return Err(CertificateError::Malformed(
                "does not end in ~ (truncated, or it carries a key binding JWT, which Consult does not use)"
                    .into(),
            ));
        }
        if compact.matches('~').count() > MAX_DISCLOSURES + 1 {
            return Err(CertificateError::Malformed("too many disclosures".into()));
        }
        let jwt = compact.split('~').next().unwrap_or_default().to_owned();
        if jwt.is_empty() {
            return Err(CertificateError::Malformed("no signed part".into()));
        }
        let parsed = sd_jwt_payload::SdJwt::parse(compact).map_err(library_error)?;
        if parsed.key_binding_jwt().is_some() {
            return Err(CertificateError::Malformed(
                "carries a key binding JWT, which Consult does not use".into(),
            ));
        }
        let disclosures = parsed
            .disclosures()
            .iter()
            .map(Disclosure::from_library)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { jwt, disclosures })
    }

    /// The same SD-JWT with only the disclosures of these claims (the others concealed with
    /// `sd-jwt-payload`'s presentation builder).
    pub fn keep(&self, names: &[&str]) -> Result<Self, CertificateError> {
        for name in names {
            if !self.disclosures.iter().any(|d| d.name == *name) {
                return Err(CertificateError::NoSuchClaim((*name).to_owned()));
            }
        }
        let parsed = sd_jwt_payload::SdJwt::parse(&self.to_compact()).map_err(library_error)?;
        let mut presentation = parsed.into_presentation(&Sha256).map_err(library_error)?;
        for d in &self.disclosures {
            if !names.contains(&d.name.as_str()) {
                presentation = presentation
                    .conceal(&pointer(&d.name))
                    .map_err(library_error)?;
            }
        }
        let (kept, _) = presentation.finish();
        Self::parse(&kept.presentation())
    }

    /// Verify the issuer's signature and every disclosure. A disclosure whose digest the issuer
    /// did not sign, or one given twice, fails the whole presentation.
    pub(crate) fn verify(&self, jwks: &Jwks, typ: &str) -> Result<VerifiedSdJwt, CertificateError> {
        let verified = verify_compact(&self.jwt, jwks, typ)?;
        let payload = verified.payload;
        match payload.get("_sd_alg") {
            Some(Value::String(alg)) if alg == "sha-256" => {}
            other => {
                return Err(CertificateError::Unsupported(format!(
                    "digest algorithm {other:?}"
                )));
            }
        }
        let signed: Vec<&str> = match payload.get("_sd") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().ok_or_else(|| {
                        CertificateError::Malformed("a digest is not a string".into())
                    })
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
            Some(_) => return Err(CertificateError::Malformed("_sd is not an array".into())),
        };
        let signed_set: HashSet<&str> = signed.iter().copied().collect();
        if signed_set.len() != signed.len() {
            return Err(CertificateError::Malformed(
                "a digest is signed twice".into(),
            ));
        }
        // Named here (the library only counts them), and duplicates refused (the library
        // would fold two copies of one disclosure into one).
        let mut seen = HashSet::new();
        for d in &self.disclosures {
            if !signed_set.contains(d.digest().as_str()) {
                return Err(CertificateError::UnsignedDisclosure(crate::jws::shown(
                    &d.name,
                )));
            }
            if !seen.insert(d.name.as_str()) {
                return Err(CertificateError::DuplicateDisclosure(crate::jws::shown(
                    &d.name,
                )));
            }
        }
        let decoded = sd_jwt_payload::SdJwt::parse(&self.to_compact())
            .map_err(library_error)?
            .into_disclosed_object(&Sha256)
            .map_err(library_error)?;
        let (mut visible, mut disclosed) = (Map::new(), Map::new());
        for (name, value) in decoded {
            if seen.contains(name.as_str()) {
                disclosed.insert(name, value);
            } else {
                visible.insert(name, value);
            }
        }
        Ok(VerifiedSdJwt {
            kid: verified.kid,
            visible,
            disclosed,
        })
    }
}

/// A verified SD-JWT: the key that signed it, the claims always visible, and the disclosed ones.
pub(crate) struct VerifiedSdJwt {
    pub kid: String,
    pub visible: Map<String, Value>,
    pub disclosed: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jws::{b64, unb64, IssuerKey};
    use serde_json::json;

    /// A disclosure made by hand: `[salt, name, value]` with a 128-bit salt.
    fn test_disclosure(name: &str, value: Value) -> Disclosure {
        use ring::rand::SecureRandom as _;
        let mut salt = [0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .expect("random");
        Disclosure {
            encoded: b64(json!([b64(&salt), name, value]).to_string().as_bytes()),
            name: name.to_owned(),
            value,
        }
    }

    const TYP: &str = "dc+sd-jwt";

    /// An SD-JWT whose signed payload is `payload` exactly, with these disclosures.
    fn signed(
        key: &IssuerKey,
        header: Value,
        payload: Value,
        disclosures: &[&Disclosure],
    ) -> String {
        let mut out = key.sign_compact(&header, &payload).expect("sign");
        out.push('~');
        for d in disclosures {
            out.push_str(&d.encoded);
            out.push('~');
        }
        out
    }

    fn check(compact: &str, key: &IssuerKey) -> Result<VerifiedSdJwt, CertificateError> {
        SdJwt::parse(compact)?.verify(
            &Jwks {
                keys: vec![key.public_jwk()],
            },
            TYP,
        )
    }

    #[test]
    fn crafted_payloads_the_issuer_signed_are_still_refused_when_malformed() {
        let key = IssuerKey::generate().expect("key");
        let name = test_disclosure("name", json!("Ana"));
        let header = json!({"alg": "ES256", "typ": TYP, "kid": key.kid()});
        let good = json!({"iss": "x", "_sd": [name.digest()], "_sd_alg": "sha-256"});
        assert!(check(&signed(&key, header.clone(), good, &[&name]), &key).is_ok());
        // Another digest algorithm, or none named.
        for alg in [json!("sha-512"), Value::Null] {
            let mut payload = json!({"iss": "x", "_sd": [name.digest()]});
            if !alg.is_null() {
                payload["_sd_alg"] = alg;
            }
            assert!(matches!(
                check(&signed(&key, header.clone(), payload, &[&name]), &key),
                Err(CertificateError::Unsupported(_))
            ));
        }
        // A digest signed twice.
        let twice = json!({"_sd": [name.digest(), name.digest()], "_sd_alg": "sha-256"});
        assert!(matches!(
            check(&signed(&key, header.clone(), twice, &[&name]), &key),
            Err(CertificateError::Malformed(_))
        ));
        // A disclosure named like a claim already visible.
        let both = json!({"name": "Bob", "_sd": [name.digest()], "_sd_alg": "sha-256"});
        assert!(matches!(
            check(&signed(&key, header.clone(), both, &[&name]), &key),
            Err(CertificateError::Malformed(_))
        ));
        // Critical header parameters Consult does not know.
        let mut critical = header.clone();
        critical["crit"] = json!(["b64"]);
        let payload = json!({"_sd": [name.digest()], "_sd_alg": "sha-256"});
        assert!(matches!(
            check(&signed(&key, critical, payload.clone(), &[&name]), &key),
            Err(CertificateError::Unsupported(_))
        ));
        // `_sd` that is not an array of strings.
        let odd = json!({"_sd": [1], "_sd_alg": "sha-256"});
        assert!(matches!(
            check(&signed(&key, header.clone(), odd, &[]), &key),
            Err(CertificateError::Malformed(_))
        ));
        // A DER signature in place of JOSE's fixed r‖s, and base64 with padding.
        let compact = signed(&key, header, payload, &[&name]);
        let (input, signature) = compact
            .split('~')
            .next()
            .expect("jwt")
            .rsplit_once('.')
            .expect("jws");
        let raw = unb64(signature, "signature").expect("b64");
        let mut der = vec![0x30, 0x46, 0x02, 0x21, 0x00];
        der.extend_from_slice(&raw[..32]);
        der.extend_from_slice(&[0x02, 0x21, 0x00]);
        der.extend_from_slice(&raw[32..]);
        let as_der = format!("{input}.{}~{}~", b64(&der), name.encoded);
        assert_eq!(
            check(&as_der, &key).err(),
            Some(CertificateError::BadSignature)
        );
        let padded = format!("{input}.{signature}=~{}~", name.encoded);
        assert!(matches!(
            check(&padded, &key),
            Err(CertificateError::Malformed(_))
        ));
    }
}
