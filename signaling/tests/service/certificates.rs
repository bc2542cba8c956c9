//! Medical certificates through the service: a clinician of the consultation issues one, the
//! patient's invite link fetches it and presents only what the patient chooses (a link, a QR
//! code, a PDF checked with poppler and zbar), anyone verifies it (online, and offline from the
//! published JWKS and status list), and a revocation shows. Every refusal the issue names, each
//! with its answer.

use crate::common;

use std::time::Duration;

use common::TestService;
use consult_api_client::ApiError;
use consult_certificate::{check_status, CertificateStatus, Jwks, SdJwt};
use consult_proto::api::{
    CertificateKindName, CertificateState, IssueCertificateRequest, Role, VerificationOutcome,
};
use consult_signaling::clock::Clock;
use reqwest::StatusCode;
use uuid::Uuid;

/// A day `offset` days from today, `YYYY-MM-DD`.
fn day(offset: i64) -> String {
    let date = time::OffsetDateTime::now_utc().date() + time::Duration::days(offset);
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// Five days of sick leave ending yesterday.
fn sick_note() -> IssueCertificateRequest {
    IssueCertificateRequest {
        kind: CertificateKindName::UnfitForWork,
        period_start: day(-5),
        period_end: day(-1),
        patient_name: "Ana Silva".into(),
        restrictions: Some("No lifting".into()),
        diagnosis: Some("Influenza A".into()),
        note: None,
        invite_id: None,
    }
}

fn refusal<T: std::fmt::Debug>(result: Result<T, ApiError>) -> (u16, String) {
    match result {
        Err(ApiError::Refused { status, code, .. }) => (status, code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn names(claims: &[consult_proto::api::CertificateClaim]) -> Vec<&str> {
    claims.iter().map(|c| c.name.as_str()).collect()
}

async fn jwks(svc: &TestService) -> Jwks {
    let r = reqwest::get(svc.url("/.well-known/jwks.json"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn status_list(svc: &TestService) -> String {
    let r = reqwest::get(svc.url("/api/v1/certificates/status-list"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()[reqwest::header::CONTENT_TYPE],
        "application/statuslist+jwt"
    );
    r.text().await.unwrap()
}

#[tokio::test]
async fn a_clinician_issues_the_patient_discloses_only_the_period_and_anyone_verifies_it() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("dr.cert@example.org").await;
    let (consultation, invite) = doctor.create_consultation().await;
    svc.patient(&invite, "Ana Silva").await;

    let issued = svc
        .api
        .issue_certificate(&doctor.token, consultation.id, &sick_note())
        .await
        .unwrap();
    assert_eq!(issued.kind, CertificateKindName::UnfitForWork);
    assert_eq!(issued.state, CertificateState::Valid);
    assert_eq!(issued.issued_by, "Dr dr.cert");
    let claims = issued.claims.as_deref().unwrap();
    assert_eq!(
        names(claims),
        [
            "period",
            "patient_name",
            "clinician_name",
            "clinician_licence",
            "restrictions",
            "diagnosis"
        ]
    );
    let licence = claims
        .iter()
        .find(|c| c.name == "clinician_licence")
        .unwrap();
    assert_eq!(licence.value, "LIC-dr.cert");
    svc.audited("certificate_issued", None).await;

    // The patient's link holds it, with every claim and the SD-JWT itself.
    let held = svc.api.held_certificates(&invite).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].id, issued.id);
    assert_eq!(names(&held[0].claims), names(claims));
    assert_eq!(SdJwt::parse(&held[0].sd_jwt).unwrap().disclosures.len(), 6);
    svc.audited("certificate_fetched", Some("anonymous")).await;

    // For an employer: the period and the clinician, nothing else.
    let shown = svc
        .api
        .present_certificate(&invite, issued.id, &["period", "clinician_name"])
        .await
        .unwrap();
    assert!(shown.link.starts_with(&format!("{}/verify#", svc.base)));
    assert!(shown.link.ends_with(&shown.presentation));
    assert!(shown.qr_svg.contains("<svg"));
    let presented = svc.audited("certificate_presented", None).await;
    assert_eq!(
        presented.detail["disclosed"],
        serde_json::json!(["period", "clinician_name"])
    );
    for text in [&shown.presentation, &shown.link] {
        let result = svc.api.verify_certificate(text).await.unwrap();
        assert_eq!(
            result.outcome,
            VerificationOutcome::Valid,
            "{:?}",
            result.reason
        );
        assert_eq!(result.issuer.as_deref(), Some(svc.base.as_str()));
        assert_eq!(result.kind, Some(CertificateKindName::UnfitForWork));
        assert_eq!(names(&result.disclosed), ["period", "clinician_name"]);
        assert_eq!(
            result.disclosed[0].value,
            serde_json::json!({"start": day(-5), "end": day(-1)})
        );
    }
    assert!(!shown.presentation.contains(&b64("Influenza")));

    // Offline, from the published keys and status list.
    let keys = jwks(&svc).await;
    assert_eq!(keys.keys.len(), 1);
    let now = time::OffsetDateTime::now_utc();
    let verified = consult_certificate::verify(&shown.presentation, &svc.base, &keys, now).unwrap();
    assert_eq!(verified.disclosed.len(), 2);
    let status = verified.status.unwrap();
    assert_eq!(
        status.uri,
        format!("{}/api/v1/certificates/status-list", svc.base)
    );
    let list = status_list(&svc).await;
    assert_eq!(
        check_status(&list, &keys, &status, now).unwrap(),
        CertificateStatus::Valid
    );

    // The clinician's list shows it with its claims (a view, audited).
    let listed = svc
        .api
        .certificates(&doctor.token, consultation.id)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, issued.id);
    svc.audited("certificates_viewed", None).await;
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn a_revoked_certificate_verifies_as_revoked_online_and_from_the_status_list() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("dr.revoke@example.org").await;
    let stranger = svc.doctor("dr.stranger@example.org").await;
    let admin = svc.enrolled("admin@example.org", Role::Admin).await;
    let (consultation, invite) = doctor.create_consultation().await;
    let api = &svc.api;
    let first = api
        .issue_certificate(&doctor.token, consultation.id, &sick_note())
        .await
        .unwrap();
    let second = api
        .issue_certificate(&doctor.token, consultation.id, &sick_note())
        .await
        .unwrap();
    let shown = api
        .present_certificate(&invite, first.id, &["period"])
        .await
        .unwrap();
    let other = api
        .present_certificate(&invite, second.id, &["period"])
        .await
        .unwrap();

    // A clinician of another consultation may not revoke it; that is audited.
    assert_eq!(
        refusal(
            api.revoke_certificate(&stranger.token, first.id, "mistake")
                .await
        )
        .0,
        403
    );
    svc.audited("certificate_refused", None).await;
    // A reason is required.
    assert_eq!(
        refusal(api.revoke_certificate(&doctor.token, first.id, "  ").await),
        (400, "invalid_reason".into())
    );

    let revoked = api
        .revoke_certificate(&doctor.token, first.id, "issued for the wrong dates")
        .await
        .unwrap();
    assert_eq!(revoked.state, CertificateState::Revoked);
    assert_eq!(
        revoked.revoke_reason.as_deref(),
        Some("issued for the wrong dates")
    );
    assert_eq!(
        refusal(
            api.revoke_certificate(&doctor.token, first.id, "again")
                .await
        ),
        (409, "certificate_revoked".into())
    );
    let entry = svc.audited("certificate_revoked", None).await;
    assert_eq!(entry.detail["certificate_id"], first.id.to_string());

    let result = api.verify_certificate(&shown.link).await.unwrap();
    assert_eq!(result.outcome, VerificationOutcome::Revoked);
    // The other certificate is untouched.
    let result = api.verify_certificate(&other.link).await.unwrap();
    assert_eq!(result.outcome, VerificationOutcome::Valid);

    let keys = jwks(&svc).await;
    let list = status_list(&svc).await;
    let now = time::OffsetDateTime::now_utc();
    let status_of = |presentation: &str| {
        let verified = consult_certificate::verify(presentation, &svc.base, &keys, now).unwrap();
        check_status(&list, &keys, &verified.status.unwrap(), now).unwrap()
    };
    assert_eq!(status_of(&shown.presentation), CertificateStatus::Revoked);
    assert_eq!(status_of(&other.presentation), CertificateStatus::Valid);

    // An administrator may revoke any certificate.
    api.revoke_certificate(&admin.token, second.id, "clinic policy")
        .await
        .unwrap();
    // Revoked certificates are no longer handed to the link (revoking is also how a link that
    // reached the wrong person stops fetching them).
    assert!(api.held_certificates(&invite).await.unwrap().is_empty());
    assert_eq!(
        refusal(
            api.present_certificate(&invite, first.id, &["period"])
                .await
        )
        .0,
        404
    );
}

#[tokio::test]
async fn the_pages_polling_is_audited_once_an_hour_not_at_every_fetch() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("dr.poll@example.org").await;
    let (consultation, invite) = doctor.create_consultation().await;
    let issued = svc
        .api
        .issue_certificate(&doctor.token, consultation.id, &sick_note())
        .await
        .unwrap();
    for _ in 0..5 {
        assert_eq!(svc.api.held_certificates(&invite).await.unwrap().len(), 1);
    }
    assert_eq!(svc.audited_count("certificate_fetched").await, 1);
    let entry = svc.audited("certificate_fetched", None).await;
    assert_eq!(entry.detail["certificates"], serde_json::json!([issued.id]));
    svc.clock.advance(Duration::from_secs(2 * 3600));
    svc.api.held_certificates(&invite).await.unwrap();
    svc.api.held_certificates(&invite).await.unwrap();
    assert_eq!(svc.audited_count("certificate_fetched").await, 2);
}

#[tokio::test]
async fn a_licence_number_is_for_clinicians_only() {
    let svc = TestService::start().await;
    let created = consult_signaling::accounts::create_user(
        &svc.state().pool,
        &svc.state().audit,
        svc.clock.now(),
        &consult_signaling::accounts::NewUser {
            email: "admin.licence@example.org".into(),
            display_name: "Admin".into(),
            role: Role::Admin,
            licence_number: Some("GMC 1".into()),
        },
        &svc.base,
        Duration::from_secs(3600),
    )
    .await;
    let Err(e) = created else {
        panic!("an administrator got a licence number")
    };
    assert!(e.to_string().contains("clinician"), "{e}");
}

#[tokio::test]
async fn only_a_clinician_of_the_consultation_issues_and_only_its_patient_fetches() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("dr.own@example.org").await;
    let stranger = svc.doctor("dr.other@example.org").await;
    let colleague = svc.doctor("dr.colleague@example.org").await;
    let (consultation, invite) = doctor.create_consultation().await;
    let (other_consultation, other_invite) = stranger.create_consultation().await;
    let api = &svc.api;

    // A clinician issuing for a consultation that is not theirs: refused and audited.
    assert_eq!(
        refusal(
            api.issue_certificate(&stranger.token, consultation.id, &sick_note())
                .await
        )
        .0,
        403
    );
    let entry = svc.audited("certificate_refused", None).await;
    assert_eq!(entry.detail["attempted"], "issue");
    assert_eq!(
        refusal(api.certificates(&stranger.token, consultation.id).await).0,
        403
    );
    assert_eq!(
        refusal(
            api.issue_certificate(&doctor.token, Uuid::new_v4(), &sick_note())
                .await
        )
        .0,
        404
    );
    // A colleague the doctor added may issue.
    api.add_clinician(&doctor.token, consultation.id, &colleague.email)
        .await
        .unwrap();
    let issued = api
        .issue_certificate(&colleague.token, consultation.id, &sick_note())
        .await
        .unwrap();
    assert_eq!(issued.issued_by, "Dr dr.colleague");

    // A patient of another consultation does not get it, nor a presentation of it.
    assert!(api
        .held_certificates(&other_invite)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        refusal(
            api.present_certificate(&other_invite, issued.id, &["period"])
                .await
        )
        .0,
        404
    );
    // Nor does a link that is not one.
    assert_eq!(
        refusal(api.held_certificates("not-a-real-invite-token").await),
        (410, "invite_not_found".into())
    );
    // An invite of another consultation cannot be named as the patient.
    let mut wrong_patient = sick_note();
    wrong_patient.invite_id = Some(
        api.issue_invite(
            &stranger.token,
            other_consultation.id,
            consult_proto::api::InviteKind::Patient,
            "Someone",
        )
        .await
        .unwrap()
        .invite
        .id,
    );
    assert_eq!(
        refusal(
            api.issue_certificate(&doctor.token, consultation.id, &wrong_patient)
                .await
        ),
        (400, "invalid_certificate".into())
    );
    // The doctor's own patient does get it.
    assert_eq!(api.held_certificates(&invite).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_form_that_is_not_a_certificate_is_refused_with_what_is_wrong() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("dr.form@example.org").await;
    let (consultation, invite) = doctor.create_consultation().await;
    let api = &svc.api;
    let cases: Vec<(&str, IssueCertificateRequest)> = vec![
        (
            "a date that is not one",
            IssueCertificateRequest {
                period_start: "2026-02-30".into(),
                ..sick_note()
            },
        ),
        (
            "a period that ends before it starts",
            IssueCertificateRequest {
                period_end: day(-30),
                ..sick_note()
            },
        ),
        (
            "a period over a year",
            IssueCertificateRequest {
                period_end: day(400),
                ..sick_note()
            },
        ),
        (
            "no patient name",
            IssueCertificateRequest {
                patient_name: "   ".into(),
                ..sick_note()
            },
        ),
        (
            "a free text without its text",
            IssueCertificateRequest {
                kind: CertificateKindName::FreeText,
                note: None,
                ..sick_note()
            },
        ),
        (
            "a diagnosis over 2000 characters",
            IssueCertificateRequest {
                diagnosis: Some("x".repeat(2001)),
                ..sick_note()
            },
        ),
        (
            "a control character",
            IssueCertificateRequest {
                patient_name: "Ana\u{7}".into(),
                ..sick_note()
            },
        ),
        (
            "a period long past (no validity left)",
            IssueCertificateRequest {
                period_start: day(-800),
                period_end: day(-799),
                ..sick_note()
            },
        ),
    ];
    for (what, request) in cases {
        assert_eq!(
            refusal(
                api.issue_certificate(&doctor.token, consultation.id, &request)
                    .await
            ),
            (400, "invalid_certificate".into()),
            "{what}"
        );
    }
    // Unknown fields are refused, not ignored.
    let r = doctor
        .bearer(
            reqwest::Method::POST,
            &format!("/api/v1/consultations/{}/certificates", consultation.id),
        )
        .json(
            &serde_json::json!({"kind": "attendance", "period_start": "2026-12-01",
            "period_end": "2026-12-01", "patient_name": "Ana", "clinician_licence": "forged"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(api
        .certificates(&doctor.token, consultation.id)
        .await
        .unwrap()
        .is_empty());

    // A claim the certificate does not hold cannot be disclosed.
    let issued = api
        .issue_certificate(&doctor.token, consultation.id, &sick_note())
        .await
        .unwrap();
    assert_eq!(
        refusal(api.present_certificate(&invite, issued.id, &["note"]).await),
        (400, "invalid_disclosure".into())
    );
    // Nothing disclosed is a presentation too: kind and validity only.
    let bare = api
        .present_certificate(&invite, issued.id, &[])
        .await
        .unwrap();
    let result = api.verify_certificate(&bare.presentation).await.unwrap();
    assert_eq!(result.outcome, VerificationOutcome::Valid);
    assert!(result.disclosed.is_empty());
}

#[tokio::test]
async fn a_clinician_without_a_licence_number_cannot_sign_until_an_operator_sets_one() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("dr.unlicensed@example.org").await;
    consult_signaling::db::query("UPDATE users SET licence_number = NULL")
        .execute(&svc.state().pool)
        .await
        .unwrap();
    let (consultation, _) = doctor.create_consultation().await;
    assert_eq!(
        refusal(
            svc.api
                .issue_certificate(&doctor.token, consultation.id, &sick_note())
                .await
        ),
        (409, "licence_number_missing".into())
    );
    consult_signaling::accounts::set_licence_number(
        &svc.state().pool,
        &svc.state().audit,
        svc.clock.now(),
        "DR.UNLICENSED@example.org",
        " GMC 7654321 ",
    )
    .await
    .unwrap();
    let issued = svc
        .api
        .issue_certificate(&doctor.token, consultation.id, &sick_note())
        .await
        .unwrap();
    let licence = issued
        .claims
        .unwrap()
        .into_iter()
        .find(|c| c.name == "clinician_licence")
        .unwrap();
    assert_eq!(licence.value, "GMC 7654321");
    svc.audited("licence_number_set", Some("operator")).await;
}

/// Bad presentations: each is an answer saying why, never valid, and counted in the audit.
#[tokio::test]
async fn forged_altered_copied_truncated_and_expired_presentations_do_not_verify() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("dr.bad@example.org").await;
    let (consultation, invite) = doctor.create_consultation().await;
    let api = &svc.api;
    let issued = api
        .issue_certificate(&doctor.token, consultation.id, &sick_note())
        .await
        .unwrap();
    let another = api
        .issue_certificate(
            &doctor.token,
            consultation.id,
            &IssueCertificateRequest {
                diagnosis: Some("Fractured wrist".into()),
                ..sick_note()
            },
        )
        .await
        .unwrap();
    let shown = api
        .present_certificate(&invite, issued.id, &["period"])
        .await
        .unwrap()
        .presentation;
    let another_full = api
        .present_certificate(&invite, another.id, &["period", "diagnosis"])
        .await
        .unwrap()
        .presentation;

    let parsed = SdJwt::parse(&shown).unwrap();
    let jwt = parsed.jwt.clone();
    let disclosure = parsed.disclosures[0].encoded.clone();
    let copied = SdJwt::parse(&another_full)
        .unwrap()
        .disclosures
        .into_iter()
        .find(|d| d.name == "diagnosis")
        .unwrap()
        .encoded;
    let altered = {
        // The period's disclosure with other dates, re-encoded.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let text = String::from_utf8(b64.decode(&disclosure).unwrap()).unwrap();
        b64.encode(text.replace(&day(-1), &day(20)))
    };
    let forged = {
        // The same claims, signed by a key that is not the issuer's.
        let key = consult_certificate::IssuerKey::generate().unwrap();
        let content = consult_certificate::CertificateContent {
            kind: consult_certificate::CertificateKind::UnfitForWork,
            period_start: time::OffsetDateTime::now_utc().date() - time::Duration::days(5),
            period_end: time::OffsetDateTime::now_utc().date() - time::Duration::days(1),
            patient_name: "Ana Silva".into(),
            restrictions: None,
            diagnosis: None,
            note: None,
            clinician_name: "Dr dr.bad".into(),
            clinician_licence: "LIC-dr.bad".into(),
        };
        let now = time::OffsetDateTime::now_utc();
        consult_certificate::issue(
            &key,
            &svc.base,
            &content,
            now,
            now + time::Duration::days(30),
            None,
        )
        .unwrap()
    };
    let cases = [
        (
            "altered disclosure",
            format!("{jwt}~{altered}~"),
            "not signed by the issuer",
        ),
        (
            "disclosure copied from another certificate",
            format!("{jwt}~{disclosure}~{copied}~"),
            "not signed by the issuer",
        ),
        ("signature of another key", forged, "unknown key"),
        (
            "truncated QR payload",
            shown[..shown.len() / 2].to_owned(),
            "malformed",
        ),
        (
            "signature cut off",
            format!("{}~", &jwt[..jwt.rfind('.').unwrap()]),
            "malformed",
        ),
        ("not a certificate", "hello".to_owned(), "malformed"),
        ("over the size limit", "a".repeat(20_000), "malformed"),
    ];
    for (what, presentation, said) in &cases {
        let result = api.verify_certificate(presentation).await.unwrap();
        assert_eq!(result.outcome, VerificationOutcome::Invalid, "{what}");
        let reason = result.reason.unwrap_or_default();
        assert!(reason.contains(said), "{what}: {reason}");
        assert!(
            result.disclosed.is_empty() && result.issuer.is_none(),
            "{what}"
        );
    }
    assert_eq!(
        svc.audited_count("certificate_verification_failed").await,
        cases.len() as i64
    );
    // A certificate past its validity (the period's end plus a year).
    assert_eq!(
        api.verify_certificate(&shown).await.unwrap().outcome,
        VerificationOutcome::Valid
    );
    svc.clock.advance(Duration::from_secs(400 * 86_400));
    let result = api.verify_certificate(&shown).await.unwrap();
    assert_eq!(result.outcome, VerificationOutcome::Invalid);
    assert!(result.reason.unwrap().contains("expired"));
}

#[tokio::test]
async fn the_pdf_carries_the_disclosed_claims_and_a_qr_code_of_the_verify_link() {
    for tool in ["pdftotext", "pdftoppm", "zbarimg"] {
        assert!(
            std::process::Command::new("which")
                .arg(tool)
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is missing: apt-get install poppler-utils zbar-tools (scripts/test.sh does)"
        );
    }
    let svc = TestService::start().await;
    let doctor = svc.doctor("dr.pdf@example.org").await;
    let (consultation, invite) = doctor.create_consultation().await;
    let issued = svc
        .api
        .issue_certificate(
            &doctor.token,
            consultation.id,
            &IssueCertificateRequest {
                patient_name: "Zoë Ångström".into(),
                ..sick_note()
            },
        )
        .await
        .unwrap();
    let disclose = [
        "period",
        "patient_name",
        "clinician_name",
        "clinician_licence",
    ];
    let pdf = svc
        .api
        .certificate_pdf(&invite, issued.id, &disclose)
        .await
        .unwrap();
    assert!(pdf.starts_with(b"%PDF-"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("certificate.pdf");
    std::fs::write(&file, &pdf).unwrap();

    let text = std::process::Command::new("pdftotext")
        .args(["-layout"])
        .arg(&file)
        .arg("-")
        .output()
        .unwrap();
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    for expected in [
        "Medical certificate",
        "Unfit for work",
        &format!("{} to {}", day(-5), day(-1)),
        "Zoë Ångström",
        "Dr dr.pdf",
        "LIC-dr.pdf",
        &svc.base,
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    for hidden in ["Influenza", "No lifting", "Diagnosis"] {
        assert!(!text.contains(hidden), "{hidden:?} printed:\n{text}");
    }

    // Rendered at 300 dpi, the code reads back as the verify link, which verifies.
    let status = std::process::Command::new("pdftoppm")
        .args(["-r", "300", "-png", "-singlefile"])
        .arg(&file)
        .arg(dir.path().join("page"))
        .status()
        .unwrap();
    assert!(status.success());
    let scanned = std::process::Command::new("zbarimg")
        .args(["--quiet", "--raw", "-Sdisable", "-Sqrcode.enable"])
        .arg(dir.path().join("page.png"))
        .output()
        .unwrap();
    assert!(scanned.status.success(), "no QR code found in the PDF");
    let link = String::from_utf8(scanned.stdout).unwrap().trim().to_owned();
    assert!(link.starts_with(&format!("{}/verify#", svc.base)), "{link}");
    let result = svc.api.verify_certificate(&link).await.unwrap();
    assert_eq!(result.outcome, VerificationOutcome::Valid);
    assert_eq!(names(&result.disclosed), disclose);
    let entry = svc.audited("certificate_presented", None).await;
    assert_eq!(entry.detail["format"], "pdf");

    // A note of 150 short lines (its link still fits a QR code) does not fit on the page with
    // the code: refused, not cut off.
    let long = svc
        .api
        .issue_certificate(
            &doctor.token,
            consultation.id,
            &IssueCertificateRequest {
                note: Some("l\n".repeat(149) + "end"),
                ..sick_note()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        refusal(
            svc.api
                .certificate_pdf(&invite, long.id, &["period", "note"])
                .await
        ),
        (400, "presentation_too_long".into())
    );
    // Without the note it prints.
    assert!(svc
        .api
        .certificate_pdf(&invite, long.id, &["period"])
        .await
        .unwrap()
        .starts_with(b"%PDF-"));
}

#[tokio::test]
async fn the_holder_fetches_for_the_set_time_and_retention_destroys_the_certificate_but_not_its_status(
) {
    let svc = TestService::start_with(|c| {
        c.certificate.holder_access = Duration::from_secs(7 * 86_400);
        c.certificate.retention = Duration::from_secs(30 * 86_400);
    })
    .await;
    let doctor = svc.doctor("dr.keep@example.org").await;
    let (consultation, invite) = doctor.create_consultation().await;
    let issued = svc
        .api
        .issue_certificate(&doctor.token, consultation.id, &sick_note())
        .await
        .unwrap();
    let shown = svc
        .api
        .present_certificate(&invite, issued.id, &["period"])
        .await
        .unwrap();
    // The consultation ends; the link still fetches the certificate.
    svc.api.end(&doctor.token, consultation.id).await.unwrap();
    assert_eq!(svc.api.held_certificates(&invite).await.unwrap().len(), 1);
    // After the holder's access time, it does not.
    svc.clock.advance(Duration::from_secs(8 * 86_400));
    assert!(svc.api.held_certificates(&invite).await.unwrap().is_empty());
    assert_eq!(
        refusal(svc.api.present_certificate(&invite, issued.id, &[]).await).0,
        404
    );
    // After retention, its content is destroyed; it still verifies and can still be revoked.
    svc.clock.advance(Duration::from_secs(30 * 86_400));
    assert_eq!(
        consult_signaling::certificates::apply_retention(svc.state())
            .await
            .unwrap(),
        1
    );
    svc.audited("certificate_destroyed", Some("system")).await;
    // (The doctor's session ended weeks ago: signed in again.)
    let code = consult_signaling::auth::totp::code_at(&doctor.totp_secret, svc.now_unix()).unwrap();
    let signed_in: consult_proto::api::LoginResponse = svc
        .login(&doctor.email, &doctor.password, Some(&code))
        .await
        .json()
        .await
        .unwrap();
    let consult_proto::api::LoginResponse::SignedIn { session } = signed_in else {
        panic!("not signed in")
    };
    let token = session.token.unwrap();
    let listed = svc.api.certificates(&token, consultation.id).await.unwrap();
    assert!(listed[0].claims.is_none());
    let sealed: Option<String> =
        consult_signaling::db::query_scalar("SELECT sealed FROM certificates")
            .fetch_one(&svc.state().pool)
            .await
            .unwrap();
    assert!(sealed.is_none());
    assert_eq!(
        svc.api
            .verify_certificate(&shown.link)
            .await
            .unwrap()
            .outcome,
        VerificationOutcome::Valid
    );
    svc.api
        .revoke_certificate(&token, issued.id, "withdrawn")
        .await
        .unwrap();
    assert_eq!(
        svc.api
            .verify_certificate(&shown.link)
            .await
            .unwrap()
            .outcome,
        VerificationOutcome::Revoked
    );
}
