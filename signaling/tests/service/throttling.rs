//! Throttling that bounds guessing without locking a doctor out: device cookies, and client
//! addresses and schemes through trusted reverse proxies only.

use std::net::IpAddr;
use std::time::Duration;

use consult_signaling::auth::totp;
use futures_util::future::join_all;
use reqwest::header::{self, HeaderMap};
use reqwest::StatusCode;
use serde_json::json;

use crate::common::{http_client, Doctor, TestService};

/// A client whose connections come from `address` (any of 127.0.0.0/8 reaches the service).
fn client_from(address: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(address.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn attempt(
    client: &reqwest::Client,
    svc: &TestService,
    email: &str,
    password: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = client
        .post(svc.url("/api/v1/auth/login"))
        .json(&json!({ "email": email, "password": password }));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// The doctor signs in on the device it enrolled on (its cookie jar holds the device cookie).
async fn sign_in_on_known_device(svc: &TestService, doctor: &Doctor) -> reqwest::Response {
    svc.next_totp_step();
    let code = totp::code_at(&doctor.totp_secret, svc.now_unix()).unwrap();
    doctor
        .client
        .post(svc.url("/api/v1/auth/login"))
        .json(&json!({ "email": doctor.email, "password": doctor.password, "totp": code }))
        .send()
        .await
        .unwrap()
}

fn set_cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_guesses_from_fifty_addresses_never_refuse_the_doctors_known_device() {
    let svc = TestService::start().await;
    let doctor = svc.doctor("dr.target@example.org").await;
    let attackers: Vec<reqwest::Client> = (0..50)
        .map(|i| client_from(&format!("127.0.0.{}", 10 + i)))
        .collect();
    const ROUNDS: usize = 5;
    const PER_ADDRESS_PER_ROUND: usize = 40;
    let (mut checked, mut refused) = (0usize, 0usize);
    for round in 0..ROUNDS {
        let guesses = join_all(attackers.iter().enumerate().map(|(i, client)| {
            let (svc, email) = (&svc, doctor.email.clone());
            async move {
                let mut statuses = Vec::with_capacity(PER_ADDRESS_PER_ROUND);
                for n in 0..PER_ADDRESS_PER_ROUND {
                    let guess = format!("guess {round}-{i}-{n} of a password");
                    statuses.push(attempt(client, svc, &email, &guess, &[]).await.status());
                }
                statuses
            }
        }));
        // Meanwhile — while the 50 addresses are guessing — the doctor signs in from the known
        // device, every time.
        let doctor_signs_in = async {
            tokio::task::yield_now().await;
            sign_in_on_known_device(&svc, &doctor).await
        };
        let (results, r) = tokio::join!(guesses, doctor_signs_in);
        for status in results.into_iter().flatten() {
            match status {
                StatusCode::UNAUTHORIZED => checked += 1,
                StatusCode::TOO_MANY_REQUESTS => refused += 1,
                other => panic!("a guess was answered {other}"),
            }
        }
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "round {round}: the doctor was refused"
        );
        assert!(
            set_cookies(r.headers())
                .iter()
                .all(|c| !c.starts_with("consult_device=")),
            "a known device gets no second device cookie"
        );
    }
    println!(
        "{} guesses from 50 addresses: {checked} checked against the password, {refused} \
         refused unchecked; the doctor signed in {ROUNDS} times from the known device",
        checked + refused
    );
    assert_eq!(checked + refused, 10_000);
    // NIST SP 800-63B §5.2.2: at most 100 consecutive failures per account.
    assert!(checked <= 100, "{checked} guesses were checked");
    // A new device (no cookie) with the right password is refused while the account is locked.
    svc.next_totp_step();
    let code = totp::code_at(&doctor.totp_secret, svc.now_unix()).unwrap();
    let r = svc
        .login(&doctor.email, &doctor.password, Some(&code))
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_known_device_is_locked_by_its_own_failures_only() {
    // Lockouts outlast the 30 s a new TOTP code takes.
    let svc = TestService::start_with(|c| c.login.lockout_base = Duration::from_secs(120)).await;
    let doctor = svc.doctor("dr.typo@example.org").await;
    // Five typos on the known device lock that device...
    for _ in 0..5 {
        let r = attempt(
            &doctor.client,
            &svc,
            &doctor.email,
            "fat fingers typo!",
            &[],
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = sign_in_on_known_device(&svc, &doctor).await;
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the device is locked"
    );
    // ...and not the account: another device with every factor still gets in (and its cookie).
    svc.next_totp_step();
    let code = totp::code_at(&doctor.totp_secret, svc.now_unix()).unwrap();
    let r = svc
        .login(&doctor.email, &doctor.password, Some(&code))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(set_cookies(r.headers())
        .iter()
        .any(|c| c.starts_with("consult_device=") && c.contains("HttpOnly")));
    // After the lockout the known device works again.
    svc.clock.advance(Duration::from_secs(91));
    assert_eq!(
        sign_in_on_known_device(&svc, &doctor).await.status(),
        StatusCode::OK
    );
    let entries = consult_signaling::audit::entries(&svc.state().pool)
        .await
        .unwrap();
    let locks: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "sign_in_locked")
        .map(|e| e.detail["scope"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(locks, ["device"]);
}

#[tokio::test]
async fn a_device_vouches_only_for_its_own_account_and_a_forged_cookie_for_none() {
    let svc = TestService::start_with(|c| {
        c.login.max_failures_per_address = 3;
        c.login.lockout_base = Duration::from_secs(600);
    })
    .await;
    let doctor = svc.doctor("dr.one@example.org").await;
    let other = svc.doctor("dr.two@example.org").await;
    // Lock the address every test client shares (127.0.0.1) by guessing at a third account.
    for _ in 0..3 {
        let r = svc
            .login("nobody@example.org", "not a password at all", None)
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // Its own device still signs the doctor in from the locked address.
    assert_eq!(
        sign_in_on_known_device(&svc, &doctor).await.status(),
        StatusCode::OK
    );
    // The same device trying another account is refused for the address.
    let r = attempt(&doctor.client, &svc, &other.email, &other.password, &[]).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // A made-up device cookie counts for nothing.
    let forged = http_client()
        .post(svc.url("/api/v1/auth/login"))
        .header(header::COOKIE, "consult_device=0123456789abcdef")
        .json(&json!({ "email": doctor.email, "password": doctor.password }))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn forwarded_addresses_count_only_through_trusted_proxies() {
    let svc = TestService::start_with(|c| {
        c.login.max_failures_per_address = 3;
        c.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let proxy = client_from("127.0.0.1");
    let forwarded = |address: &'static str| [("x-forwarded-for", address)];
    // Through the trusted proxy, each client is itself: one locked, the next not.
    for _ in 0..3 {
        let r = attempt(
            &proxy,
            &svc,
            "a@example.org",
            "wrong password 1",
            &forwarded("198.51.100.1"),
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = attempt(
        &proxy,
        &svc,
        "a@example.org",
        "wrong password 1",
        &forwarded("198.51.100.1"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = attempt(
        &proxy,
        &svc,
        "a@example.org",
        "wrong password 1",
        &forwarded("198.51.100.2"),
    )
    .await;
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "another client behind the proxy"
    );
    // A client that forges the header after the proxy's entry gains nothing: the proxy's
    // entry (the rightmost) is the address.
    let r = attempt(
        &proxy,
        &svc,
        "a@example.org",
        "wrong password 1",
        &[("x-forwarded-for", "203.0.113.9, 198.51.100.1")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // From a hop that is not trusted, a forged header is ignored: the socket's address counts.
    let stranger = client_from("127.0.0.2");
    for n in 0..3 {
        let fake = ["203.0.113.1", "203.0.113.2", "203.0.113.3"][n];
        let r = attempt(
            &stranger,
            &svc,
            "a@example.org",
            "wrong password 1",
            &[("x-forwarded-for", fake)],
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = attempt(
        &stranger,
        &svc,
        "a@example.org",
        "wrong password 1",
        &forwarded("203.0.113.4"),
    )
    .await;
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "127.0.0.2 is locked whatever it claims"
    );
    // The audit names the forwarded client, and the untrusted hop by its own address.
    svc.close_tallies().await;
    let entries = consult_signaling::audit::entries(&svc.state().pool)
        .await
        .unwrap();
    let addresses: std::collections::BTreeSet<String> = entries
        .iter()
        .filter_map(|e| e.detail["address"].as_str().map(str::to_owned))
        .collect();
    assert!(addresses.contains("198.51.100.1") && addresses.contains("198.51.100.2"));
    assert!(addresses.contains("127.0.0.2"));
    assert!(
        !addresses.iter().any(|a| a.starts_with("203.0.113.")),
        "{addresses:?}"
    );
}

#[tokio::test]
async fn secure_cookies_and_hsts_only_when_a_trusted_proxy_reports_https() {
    let svc = TestService::start_with(|c| c.trusted_proxies = vec!["127.0.0.1/32".into()]).await;
    let doctor = svc.doctor("dr.https@example.org").await;
    let sign_in = |from: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let (svc, doctor) = (&svc, &doctor);
        async move {
            svc.next_totp_step();
            let code = totp::code_at(&doctor.totp_secret, svc.now_unix()).unwrap();
            let mut request = client_from(from)
                .post(svc.url("/api/v1/auth/login"))
                .json(&json!({ "email": doctor.email, "password": doctor.password, "totp": code }));
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r
        }
    };
    let https = [
        ("x-forwarded-for", "198.51.100.1"),
        ("x-forwarded-proto", "https"),
    ];
    let through_proxy = sign_in("127.0.0.1", https.to_vec()).await;
    let cookies = set_cookies(through_proxy.headers());
    assert_eq!(cookies.len(), 2, "session and device: {cookies:?}");
    assert!(
        cookies.iter().all(|c| c.ends_with("; Secure")),
        "{cookies:?}"
    );
    assert_eq!(
        through_proxy.headers()[header::STRICT_TRANSPORT_SECURITY],
        "max-age=31536000"
    );
    // The same claim from an untrusted hop, and no claim at all: neither.
    for response in [
        sign_in("127.0.0.3", https.to_vec()).await,
        sign_in("127.0.0.1", vec![("x-forwarded-for", "198.51.100.1")]).await,
    ] {
        assert!(set_cookies(response.headers())
            .iter()
            .all(|c| !c.contains("Secure")));
        assert!(response
            .headers()
            .get(header::STRICT_TRANSPORT_SECURITY)
            .is_none());
    }
    // RFC 7239 `Forwarded` works the same.
    let r = sign_in(
        "127.0.0.1",
        vec![("forwarded", "for=\"[2001:db8::5]:4711\";proto=https")],
    )
    .await;
    assert!(r.headers().contains_key(header::STRICT_TRANSPORT_SECURITY));
}
