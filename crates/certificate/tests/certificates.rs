//! Certificates as a patient, an employer and an attacker would use them: selective disclosure,
//! and every forgery, alteration, copy, expiry and unknown key refused.

use consult_certificate::{
    claims, issue, present, verify, CertificateContent, CertificateError, CertificateKind,
    IssuerKey, Jwks, StatusReference,
};
use proptest::prelude::*;
use time::macros::{date, datetime};
use time::{Duration, OffsetDateTime};

const ISSUER: &str = "https://clinic.example";
const NOW: OffsetDateTime = datetime!(2026 - 12 - 01 10:00 UTC);
const UNTIL: OffsetDateTime = datetime!(2027 - 12 - 01 00:00 UTC);

fn sick_note() -> CertificateContent {
    CertificateContent {
        kind: CertificateKind::UnfitForWork,
        period_start: date!(2026 - 12 - 01),
        period_end: date!(2026 - 12 - 05),
        patient_name: "Ana Silva".into(),
        restrictions: Some("No lifting".into()),
        diagnosis: Some("Influenza A".into()),
        note: None,
        clinician_name: "Dr Rui Costa".into(),
        clinician_licence: "OM-12345".into(),
    }
}

fn jwks(keys: &[&IssuerKey]) -> Jwks {
    Jwks {
        keys: keys.iter().map(|k| k.public_jwk()).collect(),
    }
}

fn issued(key: &IssuerKey) -> String {
    let status = StatusReference {
        uri: format!("{ISSUER}/api/v1/certificates/status"),
        idx: 7,
    };
    issue(key, ISSUER, &sick_note(), NOW, UNTIL, Some(&status)).expect("issue")
}

/// The disclosures of a compact SD-JWT (between the JWT and the final `~`).
fn disclosures(compact: &str) -> Vec<String> {
    let body = compact.strip_suffix('~').expect("ends in ~");
    body.split('~').skip(1).map(str::to_owned).collect()
}

fn with_disclosures(compact: &str, list: &[String]) -> String {
    let jwt = compact.split('~').next().expect("jwt");
    let mut out = format!("{jwt}~");
    for d in list {
        out.push_str(d);
        out.push('~');
    }
    out
}

#[test]
fn an_employer_sees_the_period_and_the_clinician_never_the_diagnosis() {
    let key = IssuerKey::generate().expect("key");
    let certificate = issued(&key);
    // The patient holds every claim.
    let names: Vec<String> = claims(&certificate)
        .expect("claims")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        [
            "period",
            "patient_name",
            "clinician_name",
            "clinician_licence",
            "restrictions",
            "diagnosis"
        ]
    );
    let shown = present(
        &certificate,
        &["period", "clinician_name", "clinician_licence"],
    )
    .expect("present");
    assert!(
        !shown.contains(&disclosures(&certificate)[5]),
        "the diagnosis's disclosure is not in it"
    );
    let verified =
        verify(&shown, ISSUER, &jwks(&[&key]), NOW + Duration::days(2)).expect("verifies");
    assert_eq!(verified.issuer, ISSUER);
    assert_eq!(verified.kid, key.kid());
    assert_eq!(verified.kind, CertificateKind::UnfitForWork);
    assert_eq!(verified.valid_until, UNTIL);
    assert_eq!(verified.status.as_ref().map(|s| s.idx), Some(7));
    let mut seen: Vec<&str> = verified.disclosed.keys().map(String::as_str).collect();
    seen.sort_unstable();
    assert_eq!(seen, ["clinician_licence", "clinician_name", "period"]);
    assert_eq!(verified.disclosed["period"]["start"], "2026-12-01");
    assert_eq!(verified.disclosed["period"]["end"], "2026-12-05");
    // The signed part holds no claim in the clear but the issuer, kind, validity and status.
    let payload = shown.split('.').nth(1).expect("payload");
    let payload = String::from_utf8(base64_decode(payload)).expect("utf-8");
    for secret in ["Influenza", "Ana Silva", "Rui Costa", "2026-12-05"] {
        assert!(
            !payload.contains(secret),
            "{secret} is not in the signed part: {payload}"
        );
    }
    // Nothing disclosed at all still proves the kind and the validity.
    let bare = present(&certificate, &[]).expect("present");
    assert!(verify(&bare, ISSUER, &jwks(&[&key]), NOW)
        .expect("verifies")
        .disclosed
        .is_empty());
    // Asking for a claim it does not have is an error, not silently nothing.
    assert_eq!(
        present(&certificate, &["period", "blood_type"]).err(),
        Some(CertificateError::NoSuchClaim("blood_type".into()))
    );
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .expect("base64url")
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn a_forged_or_re_signed_or_altered_certificate_is_refused() {
    let key = IssuerKey::generate().expect("key");
    let attacker = IssuerKey::generate().expect("key");
    let keys = jwks(&[&key]);
    let certificate = issued(&key);
    // Issued by someone else entirely.
    let forged = issued(&attacker);
    assert_eq!(
        verify(&forged, ISSUER, &keys, NOW).err(),
        Some(CertificateError::UnknownKey(attacker.kid().to_owned()))
    );
    // The signed part altered (the kind changed), the issuer's signature kept.
    let mut parts: Vec<String> = certificate.split('.').map(str::to_owned).collect();
    let payload = String::from_utf8(base64_decode(&parts[1])).expect("utf-8");
    parts[1] = base64_encode(
        payload
            .replace("unfit_for_work", "fit_to_travel")
            .as_bytes(),
    );
    let altered = parts.join(".");
    assert_eq!(
        verify(&altered, ISSUER, &keys, NOW).err(),
        Some(CertificateError::BadSignature)
    );
    // Re-signed by the attacker under the issuer's key id.
    let header = String::from_utf8(base64_decode(&parts[0])).expect("utf-8");
    assert!(header.contains(key.kid()));
    let resigned = {
        let compact = issued(&attacker);
        let header_b64 = base64_encode(header.as_bytes());
        let rest: Vec<&str> = compact.splitn(2, '.').collect();
        format!("{header_b64}.{}", rest[1])
    };
    assert_eq!(
        verify(&resigned, ISSUER, &keys, NOW).err(),
        Some(CertificateError::BadSignature)
    );
    // Its signature cut off, or emptied.
    let unsigned = certificate
        .split('~')
        .next()
        .expect("jwt")
        .rsplit_once('.')
        .expect("jws")
        .0
        .to_owned()
        + ".~";
    assert!(verify(&unsigned, ISSUER, &keys, NOW).is_err());
}

#[test]
fn an_altered_duplicated_or_copied_disclosure_is_refused() {
    let key = IssuerKey::generate().expect("key");
    let keys = jwks(&[&key]);
    let certificate = issued(&key);
    let mut list = disclosures(&certificate);
    // Altered: the period's end moved (re-encoded with the same salt).
    let period = String::from_utf8(base64_decode(&list[0])).expect("utf-8");
    assert!(period.contains("2026-12-05"));
    list[0] = base64_encode(period.replace("2026-12-05", "2027-01-31").as_bytes());
    assert_eq!(
        verify(&with_disclosures(&certificate, &list), ISSUER, &keys, NOW).err(),
        Some(CertificateError::UnsignedDisclosure("period".into()))
    );
    // The same disclosure twice.
    let original = disclosures(&certificate);
    let twice = [original[1].clone(), original[1].clone()];
    assert_eq!(
        verify(&with_disclosures(&certificate, &twice), ISSUER, &keys, NOW).err(),
        Some(CertificateError::DuplicateDisclosure("patient_name".into()))
    );
    // Copied from another patient's certificate by the same issuer: its diagnosis under ours.
    let mut other = sick_note();
    other.patient_name = "Someone Else".into();
    other.diagnosis = Some("Fracture".into());
    let theirs = issue(&key, ISSUER, &other, NOW, UNTIL, None).expect("issue");
    let copied = [original[0].clone(), disclosures(&theirs)[5].clone()];
    assert_eq!(
        verify(&with_disclosures(&certificate, &copied), ISSUER, &keys, NOW).err(),
        Some(CertificateError::UnsignedDisclosure("diagnosis".into()))
    );
    // A disclosure that is not [salt, name, value], or names a reserved claim.
    for bad in [
        r#"["salt"]"#,
        r#"["0123456789abcdefghij","_sd",[]]"#,
        "not json",
        r#"[1,"name","v"]"#,
    ] {
        let list = [base64_encode(bad.as_bytes())];
        assert!(
            matches!(
                verify(&with_disclosures(&certificate, &list), ISSUER, &keys, NOW),
                Err(CertificateError::Malformed(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn outside_its_validity_it_is_refused_and_says_when() {
    let key = IssuerKey::generate().expect("key");
    let keys = jwks(&[&key]);
    let shown = present(&issued(&key), &["period"]).expect("present");
    assert!(verify(&shown, ISSUER, &keys, UNTIL - Duration::seconds(1)).is_ok());
    assert!(
        matches!(verify(&shown, ISSUER, &keys, UNTIL), Err(CertificateError::Expired(at)) if at.starts_with("2027-12-01"))
    );
    assert!(matches!(
        verify(&shown, ISSUER, &keys, NOW - Duration::seconds(1)),
        Err(CertificateError::NotYetValid(_))
    ));
}

#[test]
fn a_rotated_key_keeps_verifying_what_it_signed_while_the_jwks_publishes_it() {
    let old = IssuerKey::generate().expect("key");
    let new = IssuerKey::generate().expect("key");
    let before = issued(&old);
    let after = issued(&new);
    let both = jwks(&[&new, &old]);
    assert_eq!(
        verify(&before, ISSUER, &both, NOW).expect("old key").kid,
        old.kid()
    );
    assert_eq!(
        verify(&after, ISSUER, &both, NOW).expect("new key").kid,
        new.kid()
    );
    // A verifier whose JWKS dropped the old key cannot verify it: unknown key, not "forged".
    assert_eq!(
        verify(&before, ISSUER, &jwks(&[&new]), NOW).err(),
        Some(CertificateError::UnknownKey(old.kid().to_owned()))
    );
    // The key kept as PKCS#8 (the vault's keyring) is the same key.
    let restored = IssuerKey::from_pkcs8(old.pkcs8()).expect("pkcs8");
    assert_eq!(
        verify(&issued(&restored), ISSUER, &both, NOW)
            .expect("restored")
            .kid,
        old.kid()
    );
}

#[test]
fn bad_shapes_are_refused_with_a_clear_error() {
    let key = IssuerKey::generate().expect("key");
    let keys = jwks(&[&key]);
    let certificate = issued(&key);
    for bad in ["", "~", "abc", "a.b.c~", "a.b~", &"A".repeat(70_000)] {
        assert!(
            matches!(
                verify(bad, ISSUER, &keys, NOW),
                Err(CertificateError::Malformed(_))
            ),
            "{bad:.20}"
        );
    }
    // A key binding JWT after the disclosures (not used by Consult) is refused, not ignored.
    let bound = format!("{certificate}eyJhbGciOiJFUzI1NiJ9.e30.sig");
    assert!(
        matches!(verify(&bound, ISSUER, &keys, NOW), Err(CertificateError::Malformed(m)) if m.contains("key binding"))
    );
    // Issuing refuses nonsense.
    let mut backwards = sick_note();
    backwards.period_end = date!(2026 - 11 - 30);
    assert!(matches!(
        issue(&key, ISSUER, &backwards, NOW, UNTIL, None),
        Err(CertificateError::Issuing(_))
    ));
    let mut blank = sick_note();
    blank.patient_name = "  ".into();
    assert!(matches!(
        issue(&key, ISSUER, &blank, NOW, UNTIL, None),
        Err(CertificateError::Issuing(_))
    ));
    let mut free = sick_note();
    free.kind = CertificateKind::FreeText;
    assert!(matches!(
        issue(&key, ISSUER, &free, NOW, UNTIL, None),
        Err(CertificateError::Issuing(_))
    ));
    assert!(matches!(
        issue(&key, ISSUER, &sick_note(), NOW, NOW, None),
        Err(CertificateError::Issuing(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A truncated presentation (a QR code read in part) never verifies with a claim it did not
    /// carry: it fails, or, cut exactly after a disclosure, shows fewer of the same claims.
    #[test]
    fn a_truncated_presentation_never_shows_more_than_it_carried(cut in 0usize..4000) {
        static CERTIFICATE: std::sync::OnceLock<(String, Jwks)> = std::sync::OnceLock::new();
        let (full, keys) = CERTIFICATE.get_or_init(|| {
            let key = IssuerKey::generate().expect("key");
            let shown = present(&issued(&key), &["period", "clinician_name", "patient_name"]).expect("present");
            (shown, jwks(&[&key]))
        });
        let cut = cut % full.len();
        let whole = verify(full, ISSUER, keys, NOW).expect("the whole verifies");
        match verify(&full[..cut], ISSUER, keys, NOW) {
            Err(_) => {}
            Ok(part) => {
                prop_assert!(full[..cut].ends_with('~'));
                for (name, value) in &part.disclosed {
                    prop_assert_eq!(Some(value), whole.disclosed.get(name));
                }
                prop_assert!(part.disclosed.len() < whole.disclosed.len());
            }
        }
    }

    /// Any single character changed in a presentation makes it fail, or (in a disclosure's
    /// base64 padding bits) leaves exactly the same claims.
    #[test]
    fn a_changed_character_never_verifies_to_other_claims(at in 0usize..4000, with in prop::sample::select(vec!['A', 'b', '9', '-', '_', '.', '~', 'x'])) {
        static CERTIFICATE: std::sync::OnceLock<(String, Jwks)> = std::sync::OnceLock::new();
        let (full, keys) = CERTIFICATE.get_or_init(|| {
            let key = IssuerKey::generate().expect("key");
            (present(&issued(&key), &["period", "diagnosis"]).expect("present"), jwks(&[&key]))
        });
        let at = at % full.len();
        let mut changed: Vec<char> = full.chars().collect();
        prop_assume!(changed[at] != with);
        changed[at] = with;
        let changed: String = changed.into_iter().collect();
        let whole = verify(full, ISSUER, keys, NOW).expect("verifies");
        if let Ok(got) = verify(&changed, ISSUER, keys, NOW) {
            for (name, value) in &got.disclosed {
                prop_assert_eq!(Some(value), whole.disclosed.get(name));
            }
        }
    }
}

#[test]
fn another_issuers_certificate_is_refused_even_under_a_shared_key() {
    let key = IssuerKey::generate().expect("key");
    let keys = jwks(&[&key]);
    let theirs = issue(
        &key,
        "https://other.example",
        &sick_note(),
        NOW,
        UNTIL,
        None,
    )
    .expect("issue");
    assert!(matches!(
        verify(&theirs, ISSUER, &keys, NOW),
        Err(CertificateError::WrongIssuer(iss)) if iss == "https://other.example"
    ));
}

#[test]
fn every_certificate_signs_as_many_digests_so_a_hidden_diagnosis_does_not_show() {
    let key = IssuerKey::generate().expect("key");
    let digests = |content: &CertificateContent| {
        let compact = issue(&key, ISSUER, content, NOW, UNTIL, None).expect("issue");
        let payload = compact.split('.').nth(1).expect("payload");
        let payload: serde_json::Value =
            serde_json::from_slice(&base64_decode(payload)).expect("json");
        payload["_sd"].as_array().expect("_sd").len()
    };
    let mut bare = sick_note();
    bare.diagnosis = None;
    bare.restrictions = None;
    assert_eq!(digests(&sick_note()), 12);
    assert_eq!(digests(&bare), 12);
}

#[test]
fn debug_output_never_shows_names_or_medical_text() {
    let key = IssuerKey::generate().expect("key");
    let certificate = issued(&key);
    let verified = verify(&certificate, ISSUER, &jwks(&[&key]), NOW).expect("verifies");
    for shown in [
        format!("{:?}", sick_note()),
        format!("{verified:?}"),
        format!(
            "{:?}",
            consult_certificate::SdJwt::parse(&certificate).expect("parse")
        ),
    ] {
        for secret in [
            "Ana Silva",
            "Influenza",
            "Rui Costa",
            "OM-12345",
            "No lifting",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
    // An attacker's key id is cut short and escaped in the error.
    let header = base64_encode(
        format!(
            r#"{{"alg":"ES256","typ":"dc+sd-jwt","kid":"{}\n{}"}}"#,
            "x".repeat(500),
            "y"
        )
        .as_bytes(),
    );
    let rest = certificate.split_once('.').expect("jws").1;
    let error = verify(&format!("{header}.{rest}"), ISSUER, &jwks(&[&key]), NOW)
        .expect_err("unknown key")
        .to_string();
    assert!(error.len() < 200 && !error.contains('\n'), "{error}");
}
