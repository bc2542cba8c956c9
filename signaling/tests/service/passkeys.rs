//! Passkeys against a software authenticator that follows WebAuthn byte for byte (P-256 keys,
//! CBOR attestation "none", signed assertions): registration, passwordless and second-factor
//! sign-in, and every answer the service must refuse — another origin, another account's
//! passkey, a replayed or expired ceremony, a counter that went backwards, no user verification.
//! The organisation policy that requires a passkey, and removal ending the other sessions.
//! (Real ceremonies in Chromium with a virtual authenticator: `tests/browser/passkeys.test.mjs`.)

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use consult_proto::api::{LoginResponse, PasskeySummary, Role};
use consult_proto::signal::ClientMessage;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use rand::rngs::OsRng;
use rand::RngCore;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::{error_code, http_client, Doctor, TestService};

// ---------------------------------------------------------------------------------------------
// A software authenticator
// ---------------------------------------------------------------------------------------------

/// Minimal CBOR: unsigned and negative integers, byte and text strings, maps.
enum Cbor {
    Int(i64),
    Bytes(Vec<u8>),
    Text(&'static str),
    Map(Vec<(Cbor, Cbor)>),
}

impl Cbor {
    fn encode(&self, out: &mut Vec<u8>) {
        fn head(out: &mut Vec<u8>, major: u8, n: u64) {
            let major = major << 5;
            match n {
                0..=23 => out.push(major | n as u8),
                24..=0xff => out.extend([major | 24, n as u8]),
                0x100..=0xffff => {
                    out.push(major | 25);
                    out.extend((n as u16).to_be_bytes());
                }
                _ => {
                    out.push(major | 26);
                    out.extend((n as u32).to_be_bytes());
                }
            }
        }
        match self {
            Cbor::Int(n) if *n >= 0 => head(out, 0, *n as u64),
            Cbor::Int(n) => head(out, 1, (-1 - *n) as u64),
            Cbor::Bytes(b) => {
                head(out, 2, b.len() as u64);
                out.extend(b);
            }
            Cbor::Text(t) => {
                head(out, 3, t.len() as u64);
                out.extend(t.as_bytes());
            }
            Cbor::Map(entries) => {
                head(out, 5, entries.len() as u64);
                for (k, v) in entries {
                    k.encode(out);
                    v.encode(out);
                }
            }
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).unwrap()
}

const UP: u8 = 0x01;
const UV: u8 = 0x04;
const AT: u8 = 0x40;

/// One discoverable credential on a software authenticator.
#[derive(Clone)]
struct SoftPasskey {
    key: SigningKey,
    credential_id: Vec<u8>,
    user_handle: Vec<u8>,
    counter: u32,
    /// The origin the "browser" puts in the client data.
    origin: String,
    /// Whether it verifies the person (PIN, biometrics).
    verifies_user: bool,
}

impl SoftPasskey {
    fn rp_id_hash() -> [u8; 32] {
        Sha256::digest(b"localhost").into()
    }

    fn client_data(kind: &str, challenge: &str, origin: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "type": kind, "challenge": challenge, "origin": origin, "crossOrigin": false,
        }))
        .unwrap()
    }

    /// Create a credential for `navigator.credentials.create()` options; the credential JSON.
    fn create(options: &Value, origin: &str) -> (Self, Value) {
        let public_key = &options["publicKey"];
        let mut credential_id = vec![0u8; 32];
        OsRng.fill_bytes(&mut credential_id);
        let passkey = Self {
            key: SigningKey::random(&mut OsRng),
            credential_id,
            user_handle: unb64(public_key["user"]["id"].as_str().unwrap()),
            counter: 0,
            origin: origin.to_owned(),
            verifies_user: true,
        };
        let point = passkey.key.verifying_key().to_encoded_point(false);
        let cose = Cbor::Map(vec![
            (Cbor::Int(1), Cbor::Int(2)),
            (Cbor::Int(3), Cbor::Int(-7)),
            (Cbor::Int(-1), Cbor::Int(1)),
            (Cbor::Int(-2), Cbor::Bytes(point.x().unwrap().to_vec())),
            (Cbor::Int(-3), Cbor::Bytes(point.y().unwrap().to_vec())),
        ]);
        let mut auth_data = Self::rp_id_hash().to_vec();
        auth_data.push(UP | UV | AT);
        auth_data.extend(passkey.counter.to_be_bytes());
        auth_data.extend([0u8; 16]);
        auth_data.extend((passkey.credential_id.len() as u16).to_be_bytes());
        auth_data.extend(&passkey.credential_id);
        auth_data.extend(cose.bytes());
        let attestation = Cbor::Map(vec![
            (Cbor::Text("fmt"), Cbor::Text("none")),
            (Cbor::Text("attStmt"), Cbor::Map(vec![])),
            (Cbor::Text("authData"), Cbor::Bytes(auth_data)),
        ]);
        let challenge = public_key["challenge"].as_str().unwrap();
        let client_data = Self::client_data("webauthn.create", challenge, origin);
        let credential = json!({
            "id": b64(&passkey.credential_id),
            "rawId": b64(&passkey.credential_id),
            "type": "public-key",
            "response": {
                "attestationObject": b64(&attestation.bytes()),
                "clientDataJSON": b64(&client_data),
            },
            "extensions": {},
        });
        (passkey, credential)
    }

    /// Answer `navigator.credentials.get()` options; the credential JSON.
    fn get(&mut self, options: &Value) -> Value {
        self.counter += 1;
        self.sign(options, self.counter)
    }

    /// An answer with a chosen counter (a clone of the key, behind the original).
    fn sign(&self, options: &Value, counter: u32) -> Value {
        let challenge = options["publicKey"]["challenge"].as_str().unwrap();
        let client_data = Self::client_data("webauthn.get", challenge, &self.origin);
        let mut auth_data = Self::rp_id_hash().to_vec();
        auth_data.push(if self.verifies_user { UP | UV } else { UP });
        auth_data.extend(counter.to_be_bytes());
        let mut signed = auth_data.clone();
        signed.extend(Sha256::digest(&client_data));
        let signature: Signature = self.key.sign(&signed);
        json!({
            "id": b64(&self.credential_id),
            "rawId": b64(&self.credential_id),
            "type": "public-key",
            "response": {
                "authenticatorData": b64(&auth_data),
                "clientDataJSON": b64(&client_data),
                "signature": b64(signature.to_der().as_bytes()),
                "userHandle": b64(&self.user_handle),
            },
            "extensions": {},
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The service's side
// ---------------------------------------------------------------------------------------------

/// The origin the service accepts ceremonies from: `localhost` on its port.
fn origin(svc: &TestService) -> String {
    svc.base.replace("127.0.0.1", "localhost")
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> reqwest::Response {
    client.post(url).json(&body).send().await.unwrap()
}

/// Register a passkey for `doctor` from `origin`; the authenticator's credential and the answer.
async fn register_from(
    svc: &TestService,
    doctor: &Doctor,
    name: &str,
    origin: &str,
) -> (SoftPasskey, reqwest::Response) {
    let r = doctor
        .bearer(Method::POST, "/api/v1/account/passkeys/registration")
        .json(&json!({ "current_password": doctor.password }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let challenge: Value = r.json().await.unwrap();
    let options = &challenge["options"];
    assert_eq!(
        options["publicKey"]["authenticatorSelection"]["userVerification"],
        "required"
    );
    assert_eq!(
        options["publicKey"]["authenticatorSelection"]["residentKey"],
        "required"
    );
    let (passkey, credential) = SoftPasskey::create(options, origin);
    let r = doctor
        .bearer(Method::POST, "/api/v1/account/passkeys")
        .json(&json!({ "ceremony": challenge["ceremony"], "name": name, "credential": credential }))
        .send()
        .await
        .unwrap();
    let _ = svc;
    (passkey, r)
}

async fn register(svc: &TestService, doctor: &Doctor, name: &str) -> SoftPasskey {
    let (passkey, r) = register_from(svc, doctor, name, &origin(svc)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let summary: PasskeySummary = r.json().await.unwrap();
    assert_eq!(summary.name, name);
    passkey
}

/// Start a sign-in: passwordless without `password`, second factor with it.
async fn start(svc: &TestService, factors: Value) -> Value {
    let r = post(
        &http_client(),
        svc.url("/api/v1/auth/passkey/start"),
        factors,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn finish(svc: &TestService, ceremony: &Value, credential: Value) -> reqwest::Response {
    post(
        &http_client(),
        svc.url("/api/v1/auth/passkey/finish"),
        json!({ "ceremony": ceremony, "credential": credential }),
    )
    .await
}

/// A passwordless sign-in answered by `passkey`.
async fn passwordless(svc: &TestService, passkey: &mut SoftPasskey) -> reqwest::Response {
    let challenge = start(svc, json!({})).await;
    let answer = passkey.get(&challenge["options"]);
    finish(svc, &challenge["ceremony"], answer).await
}

async fn signed_in_as(r: reqwest::Response) -> String {
    assert_eq!(r.status(), StatusCode::OK);
    let LoginResponse::SignedIn { session } = r.json().await.unwrap() else {
        panic!("expected a session")
    };
    session.user.email
}

async fn passkeys_of(doctor: &Doctor) -> Vec<PasskeySummary> {
    let r = doctor
        .bearer(Method::GET, "/api/v1/account/passkeys")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

async fn remove(doctor: &Doctor, id: uuid::Uuid, password: &str) -> reqwest::Response {
    doctor
        .bearer(Method::DELETE, &format!("/api/v1/account/passkeys/{id}"))
        .json(&json!({ "current_password": password }))
        .send()
        .await
        .unwrap()
}

/// The answer is `401` with this code.
async fn refused(r: reqwest::Response, code: &str) {
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, code.to_owned())
    );
}

fn second_factor(doctor: &Doctor) -> Value {
    json!({ "email": doctor.email, "password": doctor.password })
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_registered_passkey_signs_in_alone_and_as_the_second_factor() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("dr.passkey@example.org").await;
    let mut laptop = register(&svc, &doctor, "Laptop").await;
    let mut phone = register(&svc, &doctor, "Phone").await;

    // Passwordless: no email, the browser offers whatever passkey of the site the person picks.
    let challenge = start(&svc, json!({})).await;
    assert_eq!(
        challenge["options"]["publicKey"]["userVerification"],
        "required"
    );
    assert!(challenge["options"]["publicKey"]["allowCredentials"]
        .as_array()
        .unwrap()
        .is_empty());
    let answer = laptop.get(&challenge["options"]);
    assert_eq!(
        signed_in_as(finish(&svc, &challenge["ceremony"], answer).await).await,
        doctor.email
    );

    // Second factor: the password first, then only this account's passkeys are offered.
    let challenge = start(&svc, second_factor(&doctor)).await;
    let offered: Vec<&str> = challenge["options"]["publicKey"]["allowCredentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(offered.len(), 2);
    assert!(offered.contains(&b64(&phone.credential_id).as_str()));
    let answer = phone.get(&challenge["options"]);
    assert_eq!(
        signed_in_as(finish(&svc, &challenge["ceremony"], answer).await).await,
        doctor.email
    );

    // Listed with names and last use; renamed; the audit trail has it all.
    let listed = passkeys_of(&doctor).await;
    assert_eq!(
        listed.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["Laptop", "Phone"]
    );
    assert!(listed.iter().all(|p| p.last_used_at.is_some()));
    let r = doctor
        .bearer(
            Method::PATCH,
            &format!("/api/v1/account/passkeys/{}", listed[1].id),
        )
        .json(&json!({ "name": "Work phone" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for action in ["passkey_registered", "passkey_renamed", "sign_in"] {
        svc.audited(action, None).await;
    }

    // The password is asked again to register one, and a wrong one is refused.
    let r = doctor
        .bearer(Method::POST, "/api/v1/account/passkeys/registration")
        .json(&json!({ "current_password": "not the password at all" }))
        .send()
        .await
        .unwrap();
    refused(r, "invalid_credentials").await;
    // Names are checked.
    for bad in ["", "   ", &"x".repeat(61), "tab\there"] {
        let r = doctor
            .bearer(
                Method::PATCH,
                &format!("/api/v1/account/passkeys/{}", listed[0].id),
            )
            .json(&json!({ "name": bad }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(r).await,
            (StatusCode::BAD_REQUEST, "invalid_passkey_name".into()),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn answers_from_another_origin_account_or_time_are_refused() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("dr.owner@example.org").await;
    let other = svc.doctor("dr.other@example.org").await;
    let mut passkey = register(&svc, &doctor, "Laptop").await;
    let mut others = register(&svc, &other, "Other's laptop").await;

    // A phishing site on another port relays the ceremony: the client data names its origin.
    let mut phished = passkey.clone();
    let port: u16 = svc.base.rsplit(':').next().unwrap().parse().unwrap();
    phished.origin = format!("http://localhost:{}", port.wrapping_add(1));
    let r = passwordless(&svc, &mut phished).await;
    refused(r, "passkey_wrong_origin").await;
    // ... and registering through it too.
    let (_, r) = register_from(&svc, &doctor, "Phished", "http://evil.example").await;
    refused(r, "passkey_wrong_origin").await;

    // The password of one doctor, the passkey of another.
    let challenge = start(&svc, second_factor(&doctor)).await;
    let r = finish(
        &svc,
        &challenge["ceremony"],
        others.get(&challenge["options"]),
    )
    .await;
    refused(r, "passkey_unknown").await;
    // Passwordless, with a user handle that names another account than the passkey's.
    let mut impostor = others.clone();
    impostor.user_handle = passkey.user_handle.clone();
    let r = passwordless(&svc, &mut impostor).await;
    refused(r, "passkey_unknown").await;
    // A credential nobody registered.
    let (mut stranger, _) = SoftPasskey::create(
        &json!({ "publicKey": { "user": { "id": b64(b"nobody") }, "challenge": "AA" } }),
        &origin(&svc),
    );
    let r = passwordless(&svc, &mut stranger).await;
    refused(r, "passkey_unknown").await;

    // No user verification (presence only).
    let mut lax = passkey.clone();
    lax.verifies_user = false;
    let r = passwordless(&svc, &mut lax).await;
    refused(r, "passkey_not_verified").await;

    // A ceremony answers once: the same answer again is refused.
    let challenge = start(&svc, json!({})).await;
    let answer = passkey.get(&challenge["options"]);
    signed_in_as(finish(&svc, &challenge["ceremony"], answer.clone()).await).await;
    let r = finish(&svc, &challenge["ceremony"], answer).await;
    refused(r, "passkey_replayed").await;
    // An answer to another ceremony's challenge.
    let first = start(&svc, json!({})).await;
    let second = start(&svc, json!({})).await;
    let r = finish(&svc, &second["ceremony"], passkey.get(&first["options"])).await;
    refused(r, "passkey_invalid").await;
    // Too late: ceremonies live five minutes.
    let challenge = start(&svc, json!({})).await;
    svc.clock.advance(Duration::from_secs(5 * 60 + 1));
    let r = finish(
        &svc,
        &challenge["ceremony"],
        passkey.get(&challenge["options"]),
    )
    .await;
    refused(r, "passkey_expired").await;
    // Forged or mangled.
    let challenge = start(&svc, json!({})).await;
    let mut forged = challenge["ceremony"].as_str().unwrap().to_owned();
    forged.replace_range(10..11, if &forged[10..11] == "A" { "B" } else { "A" });
    let r = finish(&svc, &json!(forged), passkey.get(&challenge["options"])).await;
    refused(r, "passkey_ceremony_invalid").await;
    let challenge = start(&svc, json!({})).await;
    let r = finish(&svc, &challenge["ceremony"], json!({ "id": "x" })).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "malformed_credential".into())
    );
    // ... without spending the ceremony.
    signed_in_as(
        finish(
            &svc,
            &challenge["ceremony"],
            passkey.get(&challenge["options"]),
        )
        .await,
    )
    .await;
    // A registration ceremony is no sign-in, and a sign-in ceremony no registration.
    let r = doctor
        .bearer(Method::POST, "/api/v1/account/passkeys")
        .json(&json!({ "ceremony": start(&svc, json!({})).await["ceremony"], "name": "x",
                       "credential": SoftPasskey::create(
                           &json!({ "publicKey": { "user": { "id": b64(b"x") }, "challenge": "AA" } }),
                           &origin(&svc)).1 }))
        .send()
        .await
        .unwrap();
    refused(r, "passkey_ceremony_invalid").await;
    // A registration started in another's session.
    let r = other
        .bearer(Method::POST, "/api/v1/account/passkeys/registration")
        .json(&json!({ "current_password": other.password }))
        .send()
        .await
        .unwrap();
    let challenge: Value = r.json().await.unwrap();
    let (_, credential) = SoftPasskey::create(&challenge["options"], &origin(&svc));
    let r = doctor
        .bearer(Method::POST, "/api/v1/account/passkeys")
        .json(&json!({ "ceremony": challenge["ceremony"], "name": "Stolen", "credential": credential }))
        .send()
        .await
        .unwrap();
    refused(r, "passkey_ceremony_invalid").await;

    // Failed answers count as failed sign-ins: one per answer refused above after its ceremony
    // was accepted (wrong origin, three unknown passkeys, no verification, another challenge);
    // replayed, expired, forged and mismatched ceremonies and malformed JSON are refused before.
    let metrics = svc.metrics().await;
    let failed: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("consult_failed_signins_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default();
    assert_eq!(failed, 6.0, "failed sign-ins counted");
}

#[tokio::test]
async fn a_cloned_authenticator_is_caught_by_its_counter() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("dr.clone@example.org").await;
    let mut original = register(&svc, &doctor, "Security key").await;
    // The attacker copies the key once; the doctor goes on using the original.
    let clone = original.clone();
    for _ in 0..3 {
        signed_in_as(passwordless(&svc, &mut original).await).await;
    }
    // The copy answers with the counter it has (behind), or with the one the service saw last.
    for counter in [clone.counter + 1, original.counter] {
        let challenge = start(&svc, json!({})).await;
        let r = finish(
            &svc,
            &challenge["ceremony"],
            clone.sign(&challenge["options"], counter),
        )
        .await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::UNAUTHORIZED, "passkey_cloned".into()),
            "counter {counter} after {}",
            original.counter
        );
    }
    // The original, whose counter moves on, still signs in.
    signed_in_as(passwordless(&svc, &mut original).await).await;
}

#[tokio::test]
async fn removing_a_passkey_ends_the_other_sessions_and_closes_their_websockets() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("dr.remove@example.org").await;
    let mut passkey = register(&svc, &doctor, "Lost phone").await;
    // A session opened with the passkey elsewhere, in a call.
    let r = passwordless(&svc, &mut passkey).await;
    assert_eq!(r.status(), StatusCode::OK);
    let LoginResponse::SignedIn { session } = r.json().await.unwrap() else {
        panic!("expected a session")
    };
    let elsewhere = session.token.unwrap();
    let (consultation, _) = doctor.create_consultation().await;
    let mut ws = svc.connect().await;
    ws.send(&ClientMessage::Join {
        token: Some(elsewhere.clone()),
        consultation_id: Some(consultation.id),
    })
    .await;
    ws.recv_type("joined").await;

    let listed = passkeys_of(&doctor).await;
    // The password is asked again: a wrong one removes nothing and ends nothing.
    let r = remove(&doctor, listed[0].id, "not the password at all").await;
    refused(r, "invalid_credentials").await;
    ws.assert_alive().await;
    let removed_at = Instant::now();
    let r = remove(&doctor, listed[0].id, &doctor.password).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    ws.expect_error("unauthorized").await;
    let took = removed_at.elapsed();
    assert!(took < Duration::from_secs(1), "closed in {took:?}");
    assert!(
        doctor.api.session(&elsewhere).await.is_err(),
        "the other session ended"
    );
    assert!(
        doctor.api.session(&doctor.token).await.is_ok(),
        "this one stays"
    );
    // The removed passkey signs in no more.
    let r = passwordless(&svc, &mut passkey).await;
    refused(r, "passkey_unknown").await;
    // Someone else's passkey cannot be removed (it looks like none).
    let other = svc.doctor("dr.not-yours@example.org").await;
    register(&svc, &other, "Mine").await;
    let theirs = passkeys_of(&other).await;
    let r = remove(&doctor, theirs[0].id, &doctor.password).await;
    assert_eq!(error_code(r).await.0, StatusCode::NOT_FOUND);
    // ... nor renamed.
    let r = doctor
        .bearer(
            Method::PATCH,
            &format!("/api/v1/account/passkeys/{}", theirs[0].id),
        )
        .json(&json!({ "name": "Taken" }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.0, StatusCode::NOT_FOUND);
    assert_eq!(passkeys_of(&other).await[0].name, "Mine");
}

#[tokio::test]
async fn a_passkey_sign_in_asks_for_both_factors_or_none_and_registrations_are_bounded() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("dr.bounds@example.org").await;
    let url = svc.url("/api/v1/auth/passkey/start");
    // An email without its password, or the reverse.
    for half in [
        json!({ "email": doctor.email }),
        json!({ "password": doctor.password }),
    ] {
        let r = post(&http_client(), url.clone(), half).await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::BAD_REQUEST, "invalid_body".into())
        );
    }
    // An unknown account and a wrong password answer alike; an account without a passkey says so.
    for (email, password) in [
        ("nobody@example.org", doctor.password.as_str()),
        (doctor.email.as_str(), "not the password at all"),
    ] {
        let r = post(
            &http_client(),
            url.clone(),
            json!({ "email": email, "password": password }),
        )
        .await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::UNAUTHORIZED, "invalid_credentials".into())
        );
    }
    let r = post(&http_client(), url.clone(), second_factor(&doctor)).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::CONFLICT, "no_passkey".into())
    );
    // At most 20 passkeys: the 21st is refused before a ceremony starts.
    for i in 0..20 {
        register(&svc, &doctor, &format!("Key {i}")).await;
    }
    let r = doctor
        .bearer(Method::POST, "/api/v1/account/passkeys/registration")
        .json(&json!({ "current_password": doctor.password }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::CONFLICT, "too_many_passkeys".into())
    );
    assert_eq!(passkeys_of(&doctor).await.len(), 20);
}

#[tokio::test]
async fn an_organisation_can_require_a_passkey_and_recovery_codes_still_work() {
    let svc = TestService::start_with(|c| c.policy.require_passkey = true).await;
    // The first sign-in (TOTP enrolment) opens a session that may only add a passkey.
    let doctor = svc.enrolled("dr.policy@example.org", Role::Doctor).await;
    let r = doctor
        .bearer(Method::GET, "/api/v1/auth/session")
        .send()
        .await
        .unwrap();
    let session: Value = r.json().await.unwrap();
    assert_eq!(session["passkey_setup_required"], true);
    let r = doctor
        .bearer(Method::GET, "/api/v1/consultations")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "passkey_setup_required".into())
    );
    let mut passkey = register(&svc, &doctor, "Laptop").await;
    // Added: the same session may do everything now.
    let r = doctor
        .bearer(Method::GET, "/api/v1/consultations")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // From now on the app's code is refused, with a reason, the passkey accepted.
    svc.next_totp_step();
    let code = consult_signaling::auth::totp::code_at(&doctor.totp_secret, svc.now_unix()).unwrap();
    let r = svc
        .login(&doctor.email, &doctor.password, Some(&code))
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "passkey_required".into())
    );
    let challenge = start(&svc, second_factor(&doctor)).await;
    let r = finish(
        &svc,
        &challenge["ceremony"],
        passkey.get(&challenge["options"]),
    )
    .await;
    let LoginResponse::SignedIn { session } = r.json().await.unwrap() else {
        panic!("expected a session")
    };
    assert!(!session.passkey_setup_required);

    // Lost the passkey: a recovery code still signs in — to register a new one.
    let r = http_client()
        .post(svc.url("/api/v1/auth/login"))
        .json(&json!({ "email": doctor.email, "password": doctor.password,
                       "recovery_code": doctor.recovery_codes[0] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let LoginResponse::SignedIn { session } = r.json().await.unwrap() else {
        panic!("expected a session")
    };
    assert!(session.passkey_setup_required);

    // That session may not remove or rename passkeys, only add one.
    let recovered = session.token.unwrap();
    let r = reqwest::Client::new()
        .get(svc.url("/api/v1/account/passkeys"))
        .bearer_auth(&recovered)
        .send()
        .await
        .unwrap();
    let lost: Vec<PasskeySummary> = r.json().await.unwrap();
    let r = reqwest::Client::new()
        .delete(svc.url(&format!("/api/v1/account/passkeys/{}", lost[0].id)))
        .bearer_auth(&recovered)
        .json(&json!({ "current_password": doctor.password }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "passkey_setup_required".into())
    );

    // The last passkey cannot be removed under the policy.
    let listed = passkeys_of(&doctor).await;
    let r = remove(&doctor, listed[0].id, &doctor.password).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::CONFLICT, "last_passkey".into())
    );
}
