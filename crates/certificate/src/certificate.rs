//! The medical certificate: what the clinician fills in, how it is issued as an SD-JWT VC, and
//! what a verifier sees.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use time::format_description::well_known::Iso8601;
use time::{Date, OffsetDateTime};

use crate::jws::{IssuerKey, Jwks};
use crate::sd_jwt::SdJwt;
use crate::CertificateError;

/// The `vct` (credential type) of Consult's medical certificates.
pub const CERTIFICATE_TYPE: &str = "urn:consult:medical-certificate:1";
/// The SD-JWT VC media type, in the JWT's `typ` header.
const TYP: &str = "dc+sd-jwt";
/// Digests signed in every certificate, real and decoys together: whatever the certificate
/// holds (a diagnosis or not, restrictions or not), a verifier sees the same number.
const SIGNED_DIGESTS: usize = 12;
/// Longest free text in a certificate (characters).
const MAX_TEXT: usize = 2000;

/// What the certificate attests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateKind {
    /// Unfit for work during the period (a sick note).
    UnfitForWork,
    /// Attended a consultation.
    Attendance,
    /// Fit to travel during the period.
    FitToTravel,
    /// The clinician's own words (in `note`).
    FreeText,
}

impl CertificateKind {
    /// The name used in the certificate and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnfitForWork => "unfit_for_work",
            Self::Attendance => "attendance",
            Self::FitToTravel => "fit_to_travel",
            Self::FreeText => "free_text",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [
            Self::UnfitForWork,
            Self::Attendance,
            Self::FitToTravel,
            Self::FreeText,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

/// What the clinician fills in. Its `Debug` shows the kind and period only: names and medical
/// text never reach a log through it.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateContent {
    /// The kind (always visible).
    pub kind: CertificateKind,
    /// First day of the period (inclusive).
    pub period_start: Date,
    /// Last day of the period (inclusive).
    pub period_end: Date,
    /// The patient's name, as entered or confirmed.
    pub patient_name: String,
    /// Restrictions (light duties, no flying…).
    pub restrictions: Option<String>,
    /// A confidential diagnosis: disclosed only if the patient chooses.
    pub diagnosis: Option<String>,
    /// A note (the text of a free-text certificate).
    pub note: Option<String>,
    /// The signing clinician's name.
    pub clinician_name: String,
    /// The signing clinician's licence number.
    pub clinician_licence: String,
}

impl std::fmt::Debug for CertificateContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateContent")
            .field("kind", &self.kind)
            .field("period_start", &self.period_start)
            .field("period_end", &self.period_end)
            .finish_non_exhaustive()
    }
}

/// Where the certificate's revocation status is published (an IETF Token Status List).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReference {
    /// The status list's URL.
    pub uri: String,
    /// This certificate's index in it.
    pub idx: u64,
}

/// What a verifier learns from a valid presentation: the issuer, the kind, the validity, the
/// status reference, and exactly the claims the patient disclosed. Its `Debug` names the
/// disclosed claims without their values.
#[derive(Clone, PartialEq)]
pub struct VerifiedCertificate {
    /// The issuing organisation (`iss`).
    pub issuer: String,
    /// The key that signed it.
    pub kid: String,
    /// The kind.
    pub kind: CertificateKind,
    /// When it was issued.
    pub issued_at: OffsetDateTime,
    /// Valid from.
    pub valid_from: OffsetDateTime,
    /// Valid until.
    pub valid_until: OffsetDateTime,
    /// Where its status is published, if anywhere.
    pub status: Option<StatusReference>,
    /// The disclosed claims, by name (`period` is `{"start", "end"}`).
    pub disclosed: Map<String, Value>,
}

impl std::fmt::Debug for VerifiedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedCertificate")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("valid_until", &self.valid_until)
            .field("status", &self.status)
            .field("disclosed", &self.disclosed.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn checked_text(name: &str, text: &str) -> Result<String, CertificateError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(CertificateError::Issuing(format!("{name} is empty")));
    }
    if text.chars().count() > MAX_TEXT || text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(CertificateError::Issuing(format!(
            "{name} is over {MAX_TEXT} characters or holds control characters"
        )));
    }
    Ok(text.to_owned())
}

fn iso_date(date: Date) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// Issue a certificate signed by `key` for `issuer` (the organisation's URL), valid from `now`
/// to `valid_until`. Every claim but the issuer, the kind, the validity and the status reference
/// is a disclosure. Returns the compact SD-JWT the patient holds (all disclosures).
pub fn issue(
    key: &IssuerKey,
    issuer: &str,
    content: &CertificateContent,
    now: OffsetDateTime,
    valid_until: OffsetDateTime,
    status: Option<&StatusReference>,
) -> Result<String, CertificateError> {
    if content.period_end < content.period_start {
        return Err(CertificateError::Issuing(
            "the period ends before it starts".into(),
        ));
    }
    if valid_until <= now {
        return Err(CertificateError::Issuing(
            "valid until a time already past".into(),
        ));
    }
    if content.kind == CertificateKind::FreeText && content.note.is_none() {
        return Err(CertificateError::Issuing(
            "a free-text certificate needs its text (note)".into(),
        ));
    }
    let mut visible = Map::new();
    visible.insert("iss".into(), json!(checked_text("the issuer", issuer)?));
    visible.insert("vct".into(), json!(CERTIFICATE_TYPE));
    visible.insert("kind".into(), json!(content.kind.as_str()));
    visible.insert("iat".into(), json!(now.unix_timestamp()));
    visible.insert("nbf".into(), json!(now.unix_timestamp()));
    visible.insert("exp".into(), json!(valid_until.unix_timestamp()));
    if let Some(status) = status {
        visible.insert("status".into(), json!({"status_list": status}));
    }
    let mut disclosable: Vec<(&str, Value)> = vec![
        (
            "period",
            json!({"start": iso_date(content.period_start), "end": iso_date(content.period_end)}),
        ),
        (
            "patient_name",
            json!(checked_text("the patient's name", &content.patient_name)?),
        ),
        (
            "clinician_name",
            json!(checked_text(
                "the clinician's name",
                &content.clinician_name
            )?),
        ),
        (
            "clinician_licence",
            json!(checked_text(
                "the clinician's licence number",
                &content.clinician_licence
            )?),
        ),
    ];
    for (name, text) in [
        ("restrictions", &content.restrictions),
        ("diagnosis", &content.diagnosis),
        ("note", &content.note),
    ] {
        if let Some(text) = text {
            disclosable.push((name, json!(checked_text(name, text)?)));
        }
    }
    let decoys = SIGNED_DIGESTS.saturating_sub(disclosable.len());
    Ok(SdJwt::issue(key, TYP, visible, disclosable, decoys)?.to_compact())
}

/// A presentation of an issued certificate with only these claims disclosed (the rest stay
/// hidden, the signature intact). An unknown claim name is an error, not silently nothing.
pub fn present(issued: &str, disclose: &[&str]) -> Result<String, CertificateError> {
    Ok(SdJwt::parse(issued)?.keep(disclose)?.to_compact())
}

/// The claims of a certificate (all disclosures), for its holder: names and values.
pub fn claims(issued: &str) -> Result<Vec<(String, Value)>, CertificateError> {
    Ok(SdJwt::parse(issued)?
        .disclosures
        .into_iter()
        .map(|d| (d.name, d.value))
        .collect())
}

fn timestamp(payload: &Map<String, Value>, name: &str) -> Result<OffsetDateTime, CertificateError> {
    payload
        .get(name)
        .and_then(Value::as_i64)
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
        .ok_or_else(|| CertificateError::Malformed(format!("no valid {name}")))
}

fn show(t: OffsetDateTime) -> String {
    t.format(&Iso8601::DEFAULT)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Verify a presentation at `now` against `issuer`'s keys (`jwks`, as that issuer publishes
/// them): the signature, every disclosure, that `issuer` issued it (a key shared by several
/// issuers in one JWKS cannot speak for another), the type and the validity. Revocation is the
/// caller's to check (the status list named in [`VerifiedCertificate::status`], with
/// [`crate::check_status`]).
pub fn verify(
    presentation: &str,
    issuer: &str,
    jwks: &Jwks,
    now: OffsetDateTime,
) -> Result<VerifiedCertificate, CertificateError> {
    let sd_jwt = SdJwt::parse(presentation)?;
    let crate::sd_jwt::VerifiedSdJwt {
        kid,
        visible,
        disclosed,
    } = sd_jwt.verify(jwks, TYP)?;
    if visible.get("vct").and_then(Value::as_str) != Some(CERTIFICATE_TYPE) {
        return Err(CertificateError::Unsupported(format!(
            "credential type {:?}",
            visible.get("vct")
        )));
    }
    let kind = visible
        .get("kind")
        .and_then(Value::as_str)
        .and_then(CertificateKind::parse)
        .ok_or_else(|| CertificateError::Malformed("no known kind".into()))?;
    let signed_issuer = visible
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(|| CertificateError::Malformed("no issuer".into()))?;
    if signed_issuer != issuer {
        return Err(CertificateError::WrongIssuer(crate::jws::shown(
            signed_issuer,
        )));
    }
    let issuer = signed_issuer.to_owned();
    let (issued_at, valid_from, valid_until) = (
        timestamp(&visible, "iat")?,
        timestamp(&visible, "nbf")?,
        timestamp(&visible, "exp")?,
    );
    if now >= valid_until {
        return Err(CertificateError::Expired(show(valid_until)));
    }
    if now < valid_from {
        return Err(CertificateError::NotYetValid(show(valid_from)));
    }
    let status = match visible.get("status") {
        None => None,
        Some(status) => Some(
            serde_json::from_value::<StatusReference>(status["status_list"].clone())
                .map_err(|_| CertificateError::Malformed("a bad status reference".into()))?,
        ),
    };
    Ok(VerifiedCertificate {
        issuer,
        kid,
        kind,
        issued_at,
        valid_from,
        valid_until,
        status,
        disclosed,
    })
}
