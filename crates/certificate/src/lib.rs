//! Signed medical certificates that a patient controls and anyone can verify.
//!
//! A certificate is an SD-JWT VC ([RFC 9901] selective disclosure, `typ: dc+sd-jwt`) signed by
//! the organisation's issuer key (ES256, [`IssuerKey`]). The issuer, the kind of certificate and
//! its validity are always visible; every other claim — the period, the patient's name,
//! restrictions, a confidential diagnosis or note, the clinician's name and licence number — is
//! a disclosure the patient may leave out of a presentation. A verifier ([`verify`]) sees
//! exactly what was disclosed, and refuses anything it cannot prove: an unknown key, a bad
//! signature, a disclosure the issuer did not sign (altered, or copied from another
//! certificate), a disclosure given twice, an expired certificate.
//!
//! ```
//! use consult_certificate::{
//!     issue, present, verify, CertificateContent, CertificateKind, IssuerKey, Jwks,
//! };
//! use time::macros::{date, datetime};
//!
//! let key = IssuerKey::generate()?;
//! let content = CertificateContent {
//!     kind: CertificateKind::UnfitForWork,
//!     period_start: date!(2026 - 12 - 01),
//!     period_end: date!(2026 - 12 - 05),
//!     patient_name: "Ana Silva".into(),
//!     restrictions: None,
//!     diagnosis: Some("Influenza".into()),
//!     note: None,
//!     clinician_name: "Dr Rui Costa".into(),
//!     clinician_licence: "OM-12345".into(),
//! };
//! let now = datetime!(2026 - 12 - 01 10:00 UTC);
//! let until = datetime!(2027 - 12 - 01 00:00 UTC);
//! let issued = issue(&key, "https://clinic.example", &content, now, until, None)?;
//! // For an employer: the kind and the period, never the diagnosis.
//! let shown = present(&issued, &["period", "clinician_name"])?;
//! let jwks = Jwks { keys: vec![key.public_jwk()] };
//! let verified = verify(&shown, "https://clinic.example", &jwks, now)?;
//! assert_eq!(verified.kind, CertificateKind::UnfitForWork);
//! assert!(verified.disclosed.contains_key("period"));
//! assert!(!verified.disclosed.contains_key("diagnosis"));
//! # Ok::<(), consult_certificate::CertificateError>(())
//! ```
//!
//! [RFC 9901]: https://www.rfc-editor.org/rfc/rfc9901

mod certificate;
mod jws;
mod sd_jwt;
mod status_list;

pub use certificate::{
    claims, issue, present, verify, CertificateContent, CertificateKind, StatusReference,
    VerifiedCertificate, CERTIFICATE_TYPE,
};
pub use jws::{IssuerKey, Jwks, PublicJwk};
pub use sd_jwt::{Disclosure, SdJwt};
pub use status_list::{check_status, CertificateStatus, StatusList, MAX_STATUS_LIST_LEN};

/// Why a certificate could not be issued, presented or verified.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertificateError {
    /// Not a certificate at all: wrong shape, bad encoding, truncated.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// Signed with a key the verifier does not know (`kid`, cut short and escaped).
    #[error("signed with an unknown key ({0})")]
    UnknownKey(String),
    /// Issued by someone other than the issuer whose keys verified it (`iss`, cut short).
    #[error("issued by {0}, not by the expected issuer")]
    WrongIssuer(String),
    /// A header that is not the one Consult issues (algorithm, type).
    #[error("unsupported certificate header: {0}")]
    Unsupported(String),
    /// The issuer's signature does not verify: forged, re-signed or altered.
    #[error("the issuer's signature does not verify")]
    BadSignature,
    /// A disclosure whose digest the issuer did not sign (altered, or from another certificate).
    #[error(
        "a disclosure was not signed by the issuer (altered or from another certificate): {0}"
    )]
    UnsignedDisclosure(String),
    /// The same claim disclosed twice.
    #[error("claim disclosed twice: {0}")]
    DuplicateDisclosure(String),
    /// Asked to disclose a claim the certificate does not hold.
    #[error("the certificate has no claim {0}")]
    NoSuchClaim(String),
    /// Past its validity (`exp`).
    #[error("the certificate expired at {0}")]
    Expired(String),
    /// Not valid yet (`nbf`).
    #[error("the certificate is not valid before {0}")]
    NotYetValid(String),
    /// A key or content the issuer cannot use.
    #[error("cannot issue: {0}")]
    Issuing(String),
}
