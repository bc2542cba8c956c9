//! Latency of medical certificates through the service's HTTP API, on this machine: a clinician
//! issues N certificates (SD-JWT VC, ES256, sealed by the vault, audited), the patient's link
//! makes an employer presentation of each (the period; the clinician always shown), and each is
//! verified through `POST /api/v1/certificates/verify` and offline with the library. Prints p50
//! and p95 of each, the presentation's size and its QR code's version. Bounded: N at most 2000,
//! one in-process service on loopback with a temporary data directory, removed at the end.
//!
//! ```text
//! cargo run --release -p consult-signaling --example certificate_latency -- --count 200
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use consult_api_client::{ApiClient, ClinicianLogin};
use consult_proto::api::{CertificateKindName, IssueCertificateRequest};
use consult_signaling::clock::{Clock, SystemClock};
use consult_signaling::config::Config;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn row(what: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "| {what} | {:.2} ms | {:.2} ms | {} |",
        percentile(&times, 0.50).as_secs_f64() * 1e3,
        percentile(&times, 0.95).as_secs_f64() * 1e3,
        times.len()
    );
}

fn day(offset: i64) -> String {
    let date = time::OffsetDateTime::now_utc().date() + time::Duration::days(offset);
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count: usize = match args.as_slice() {
        [] => 200,
        [flag, n] if flag == "--count" => n.parse().context("--count takes a number")?,
        _ => bail!("usage: certificate_latency [--count N]"),
    };
    if !(1..=2000).contains(&count) {
        bail!("--count must be between 1 and 2000");
    }
    let dir = tempfile::tempdir()?;
    let config = Config {
        bind: "127.0.0.1:0".parse()?,
        data_dir: dir.path().to_path_buf(),
        log: "error".into(),
        ..Config::default()
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let running = consult_signaling::server::start(config, clock.clone()).await?;
    let state = running.state.clone();
    let creds = consult_signaling::accounts::seed_demo_doctor(
        &state.pool,
        &state.audit,
        &state.sealing_key,
        clock.now(),
        None,
        &running.url,
    )
    .await?;
    let api = ApiClient::new(&running.url)?;
    let token = api
        .sign_in(&ClinicianLogin {
            email: creds.email,
            password: creds.password,
            totp_secret: creds.totp_secret,
        })
        .await?;
    let consultation = api.create_consultation(&token, &Default::default()).await?;
    let invite = consultation
        .invite_url
        .as_deref()
        .and_then(|u| u.split_once('#'))
        .map(|(_, t)| t.to_owned())
        .context("no invite link")?;
    let request = IssueCertificateRequest {
        kind: CertificateKindName::UnfitForWork,
        period_start: day(-2),
        period_end: day(2),
        patient_name: "Ana Silva".into(),
        restrictions: Some("No lifting".into()),
        diagnosis: Some("Influenza A".into()),
        note: None,
        invite_id: None,
    };

    let (mut issue, mut present, mut verify_http, mut verify_offline) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut presentations = Vec::new();
    for _ in 0..count {
        let started = Instant::now();
        let issued = api
            .issue_certificate(&token, consultation.id, &request)
            .await?;
        issue.push(started.elapsed());
        let started = Instant::now();
        let shown = api
            .present_certificate(
                &invite,
                issued.id,
                &["period", "clinician_name", "clinician_licence"],
            )
            .await?;
        present.push(started.elapsed());
        presentations.push(shown);
    }
    let jwks = state.certificates.jwks().clone();
    let issuer = state.certificates.issuer().to_owned();
    for shown in &presentations {
        let started = Instant::now();
        let result = api.verify_certificate(&shown.link).await?;
        verify_http.push(started.elapsed());
        if result.outcome != consult_proto::api::VerificationOutcome::Valid {
            bail!("a presentation did not verify: {:?}", result.reason);
        }
        let started = Instant::now();
        consult_certificate::verify(&shown.presentation, &issuer, &jwks, clock.now())?;
        verify_offline.push(started.elapsed());
    }
    let sample = &presentations[0];
    println!("certificates: {count}, issuer {issuer}");
    println!("| step | p50 | p95 | n |");
    println!("|---|---|---|---|");
    row(
        "issue (`POST …/certificates`: sign, seal, store, audit)",
        issue,
    );
    row(
        "employer presentation (`POST …/presentation`, with QR)",
        present,
    );
    row(
        "verify (`POST /api/v1/certificates/verify`, with status)",
        verify_http,
    );
    row("verify offline (library, from the JWKS)", verify_offline);
    println!(
        "employer presentation (period + clinician): {} bytes; verify link {} bytes; QR version {}",
        sample.presentation.len(),
        sample.link.len(),
        sample.qr_version
    );
    running.shutdown(Duration::from_secs(1)).await?;
    Ok(())
}
