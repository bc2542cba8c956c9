//! SD-JWT (RFC 9901): salted disclosures of top-level claims, their SHA-256 digests signed in
//! `_sd` beside decoys, presentations that keep only some disclosures, and strict verification.

use std::collections::HashSet;

use ring::rand::{SecureRandom as _, SystemRandom};
use serde_json::{json, Map, Value};

use crate::jws::{b64, sha256_b64, unb64, verify_compact, IssuerKey, Jwks};
use crate::CertificateError;

/// Longest presentation accepted (bytes): a certificate is a few kilobytes.
pub(crate) const MAX_PRESENTATION: usize = 64 * 1024;
/// Most disclosures accepted in one presentation.
const MAX_DISCLOSURES: usize = 64;

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
    /// A new disclosure of `name: value` with a fresh 128-bit salt.
    fn new(name: &str, value: Value, rng: &SystemRandom) -> Result<Self, CertificateError> {
        let mut salt = [0u8; 16];
        rng.fill(&mut salt)
            .map_err(|_| CertificateError::Issuing("no randomness".into()))?;
        let encoded = b64(json!([b64(&salt), name, value]).to_string().as_bytes());
        Ok(Self {
            encoded,
            name: name.to_owned(),
            value,
        })
    }

    /// Decode a disclosure as received.
    fn parse(encoded: &str) -> Result<Self, CertificateError> {
        let bytes = unb64(encoded, "a disclosure")?;
        let Ok(Value::Array(mut items)) = serde_json::from_slice::<Value>(&bytes) else {
            return Err(CertificateError::Malformed(
                "a disclosure is not a JSON array".into(),
            ));
        };
        if items.len() != 3 {
            return Err(CertificateError::Malformed(
                "a disclosure is not [salt, name, value] (array elements are not used)".into(),
            ));
        }
        let value = items.pop().unwrap_or(Value::Null);
        let (Some(Value::String(name)), Some(Value::String(salt))) = (items.pop(), items.pop())
        else {
            return Err(CertificateError::Malformed(
                "a disclosure's salt or name is not a string".into(),
            ));
        };
        if salt.len() < 16 {
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
            encoded: encoded.to_owned(),
            name,
            value,
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
        mut visible: Map<String, Value>,
        disclosable: Vec<(&str, Value)>,
        decoys: usize,
    ) -> Result<Self, CertificateError> {
        let rng = SystemRandom::new();
        let mut disclosures = Vec::with_capacity(disclosable.len());
        let mut digests = Vec::with_capacity(disclosable.len() + decoys);
        for (name, value) in disclosable {
            if visible.contains_key(name) {
                return Err(CertificateError::Issuing(format!(
                    "{name} is both visible and disclosable"
                )));
            }
            let disclosure = Disclosure::new(name, value, &rng)?;
            digests.push(disclosure.digest());
            disclosures.push(disclosure);
        }
        for _ in 0..decoys {
            let mut random = [0u8; 32];
            rng.fill(&mut random)
                .map_err(|_| CertificateError::Issuing("no randomness".into()))?;
            digests.push(sha256_b64(&random));
        }
        // Sorted: the order says nothing about which digest is which.
        digests.sort();
        visible.insert("_sd".into(), json!(digests));
        visible.insert("_sd_alg".into(), json!("sha-256"));
        let header = json!({"alg": "ES256", "typ": typ, "kid": key.kid()});
        let jwt = key.sign_compact(&header, &Value::Object(visible))?;
        Ok(Self { jwt, disclosures })
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
        let Some(body) = compact.strip_suffix('~') else {
            return Err(CertificateError::Malformed(
                "does not end in ~ (truncated, or it carries a key binding JWT, which Consult does not use)"
                    .into(),
            ));
        };
        let mut parts = body.split('~');
        let jwt = parts.next().unwrap_or_default().to_owned();
        if jwt.is_empty() {
            return Err(CertificateError::Malformed("no signed part".into()));
        }
        let disclosures = parts
            .map(Disclosure::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if disclosures.len() > MAX_DISCLOSURES {
            return Err(CertificateError::Malformed("too many disclosures".into()));
        }
        Ok(Self { jwt, disclosures })
    }

    /// The same SD-JWT with only the disclosures of these claims.
    pub fn keep(&self, names: &[&str]) -> Result<Self, CertificateError> {
        for name in names {
            if !self.disclosures.iter().any(|d| d.name == *name) {
                return Err(CertificateError::NoSuchClaim((*name).to_owned()));
            }
        }
        Ok(Self {
            jwt: self.jwt.clone(),
            disclosures: self
                .disclosures
                .iter()
                .filter(|d| names.contains(&d.name.as_str()))
                .cloned()
                .collect(),
        })
    }

    /// Verify the issuer's signature and every disclosure. A disclosure whose digest the issuer
    /// did not sign, or one given twice, fails the whole presentation.
    pub(crate) fn verify(&self, jwks: &Jwks, typ: &str) -> Result<VerifiedSdJwt, CertificateError> {
        let verified = verify_compact(&self.jwt, jwks, typ)?;
        let mut payload = verified.payload;
        match payload.remove("_sd_alg") {
            Some(Value::String(alg)) if alg == "sha-256" => {}
            other => {
                return Err(CertificateError::Unsupported(format!(
                    "digest algorithm {other:?}"
                )));
            }
        }
        let signed: Vec<String> = match payload.remove("_sd") {
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(CertificateError::Malformed(
                        "a digest is not a string".into(),
                    )),
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
            Some(_) => return Err(CertificateError::Malformed("_sd is not an array".into())),
        };
        let signed_set: HashSet<&str> = signed.iter().map(String::as_str).collect();
        if signed_set.len() != signed.len() {
            return Err(CertificateError::Malformed(
                "a digest is signed twice".into(),
            ));
        }
        let mut used = HashSet::new();
        let mut disclosed = Map::new();
        for d in &self.disclosures {
            let digest = d.digest();
            if !signed_set.contains(digest.as_str()) {
                return Err(CertificateError::UnsignedDisclosure(d.name.clone()));
            }
            if !used.insert(digest) || disclosed.contains_key(&d.name) {
                return Err(CertificateError::DuplicateDisclosure(d.name.clone()));
            }
            if payload.contains_key(&d.name) {
                return Err(CertificateError::Malformed(format!(
                    "{} is both visible and disclosed",
                    d.name
                )));
            }
            disclosed.insert(d.name.clone(), d.value.clone());
        }
        Ok(VerifiedSdJwt {
            kid: verified.kid,
            visible: payload,
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
    use crate::jws::IssuerKey;

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
        let rng = SystemRandom::new();
        let name = Disclosure::new("name", json!("Ana"), &rng).expect("disclosure");
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
