//! The `consult` binary as operators use it: serve (plain and TLS, with the demo), admin
//! create-user, audit verify and audit export, recording keygen and export refusals.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_consult");

fn consult(args: &[&str], data_dir: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// Start `consult serve` and return it with the URL it printed. The caller stops it with
/// [`terminate`], which waits for it.
#[allow(clippy::zombie_processes)]
fn serve(data_dir: &Path, extra: &[&str]) -> (Child, String, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no URL printed: {lines:?}");
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "serve exited: {lines:?}"
        );
        if let Some(url) = line.trim().strip_prefix("Consult is running at ") {
            let url = url.to_owned();
            lines.push(line);
            return (child, url, lines);
        }
        lines.push(line);
    }
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_with_demo_writes_credentials_and_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url, lines) = serve(dir.path(), &["--demo"]);
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("demo-credentials.json")).unwrap())
            .unwrap();
    let printed = lines.join("");
    for key in ["email", "password", "totp_secret"] {
        let value = creds[key].as_str().unwrap();
        assert!(printed.contains(value), "{key} not printed");
    }
    assert_eq!(creds["url"].as_str().unwrap(), url);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("demo-credentials.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "credentials must be private");
    }
    let body = reqwest::blocking::get(format!("{url}healthz"))
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(body, "ok");
    let status = terminate(&mut child);
    assert!(status.success(), "{status:?}");

    // A second start keeps the same demo secret (the operator's authenticator still works).
    let (mut child, _, _) = serve(dir.path(), &["--demo"]);
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("demo-credentials.json")).unwrap())
            .unwrap();
    assert_eq!(again["totp_secret"], creds["totp_secret"]);
    assert!(terminate(&mut child).success());
}

#[test]
fn serve_with_tls_generates_and_keeps_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url, _) = serve(dir.path(), &["--tls"]);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let cert = std::fs::read(dir.path().join("tls/cert.pem")).unwrap();
    let client = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
        .build()
        .unwrap();
    let response = client.get(format!("{url}healthz")).send().unwrap();
    assert_eq!(response.text().unwrap(), "ok");
    // A client offering HTTP/2 gets HTTP/1.1 (the one with a header-read timeout).
    let port = url.trim_end_matches('/').rsplit(':').next().unwrap();
    let alpn = Command::new("python3")
        .arg("-c")
        .arg(
            "import socket,ssl,sys; c=ssl.create_default_context(cafile=sys.argv[2]); \
             c.set_alpn_protocols(['h2','http/1.1']); \
             s=c.wrap_socket(socket.create_connection(('127.0.0.1',int(sys.argv[1]))),server_hostname='127.0.0.1'); \
             print(s.selected_alpn_protocol())",
        )
        .arg(port)
        .arg(dir.path().join("tls/cert.pem"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&alpn.stdout).trim(),
        "http/1.1",
        "{}",
        String::from_utf8_lossy(&alpn.stderr)
    );
    // HTTP/2 sent inside TLS anyway (prior knowledge, whatever ALPN chose), with a header
    // block that never ends: closed at once, not held (the header-read timeout is 10 s).
    const H2_IN_TLS: &str = r#"
import socket, ssl, sys
c = ssl.create_default_context(cafile=sys.argv[2])
s = c.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="127.0.0.1")
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0x82]))
s.settimeout(5)
try:
    d = s.recv(100)
    print("closed" if d == b"" else "answered " + d[:9].hex())
except socket.timeout:
    print("held")
except (ssl.SSLError, OSError):
    print("closed")
"#;
    let h2 = Command::new("python3")
        .arg("-c")
        .arg(H2_IN_TLS)
        .arg(port)
        .arg(dir.path().join("tls/cert.pem"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&h2.stdout).trim(),
        "closed",
        "{}",
        String::from_utf8_lossy(&h2.stderr)
    );
    assert!(terminate(&mut child).success());
    let (mut child, _, _) = serve(dir.path(), &["--tls"]);
    assert_eq!(
        std::fs::read(dir.path().join("tls/cert.pem")).unwrap(),
        cert,
        "the certificate is kept"
    );
    assert!(terminate(&mut child).success());
}

#[test]
fn create_user_prints_a_one_time_enrolment_link() {
    let dir = tempfile::tempdir().unwrap();
    let out = consult(
        &[
            "admin",
            "create-user",
            "--role",
            "doctor",
            "--email",
            "Ada@Clinic.test",
            "--name",
            "Dr Ada",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let link = stdout
        .lines()
        .find(|l| l.contains("/enrol#"))
        .expect("link printed");
    assert_eq!(link.split_once('#').unwrap().1.len(), 43);
    let again = consult(
        &[
            "admin",
            "create-user",
            "--role",
            "doctor",
            "--email",
            "ada@clinic.test",
        ],
        dir.path(),
    );
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let bad = consult(
        &[
            "admin",
            "create-user",
            "--role",
            "nurse",
            "--email",
            "x@clinic.test",
        ],
        dir.path(),
    );
    assert!(!bad.status.success());
    let bad = consult(
        &[
            "admin",
            "create-user",
            "--role",
            "doctor",
            "--email",
            "not an email",
        ],
        dir.path(),
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an email address"));
}

#[test]
fn audit_verify_names_the_first_tampered_entry_and_export_writes_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..4 {
        let out = consult(
            &[
                "admin",
                "create-user",
                "--role",
                "doctor",
                "--email",
                &format!("d{i}@clinic.test"),
            ],
            dir.path(),
        );
        assert!(out.status.success());
    }
    let ok = consult(&["audit", "verify"], dir.path());
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("intact: 4 entries"));
    let export = consult(&["audit", "export"], dir.path());
    let lines: Vec<serde_json::Value> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[2]["seq"], 3);
    assert_eq!(lines[2]["prev_hash"], lines[1]["hash"]);

    // Someone with the database file drops the guard and edits entry 3.
    let db = dir.path().join("consult.db");
    let status = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('DROP TRIGGER audit_log_no_update'); \
             c.execute(\"UPDATE audit_log SET actor='user:someone-else' WHERE seq=3\"); c.commit()",
        )
        .arg(&db)
        .status()
        .unwrap();
    assert!(status.success());
    let broken = consult(&["audit", "verify"], dir.path());
    assert_eq!(broken.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&broken.stdout).contains("BROKEN at entry 3"),
        "{}",
        String::from_utf8_lossy(&broken.stdout)
    );
}

#[test]
fn a_witnessed_audit_head_finds_a_truncated_history() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..4 {
        let args = ["admin", "create-user", "--role", "doctor", "--email"];
        let email = format!("w{i}@clinic.test");
        let out = consult(&[&args[..], &[email.as_str()]].concat(), dir.path());
        assert!(out.status.success());
    }
    let head = consult(&["audit", "head"], dir.path());
    assert!(head.status.success());
    let head = String::from_utf8(head.stdout).unwrap().trim().to_owned();
    assert!(head.starts_with("consult-audit-head/v1 seq=4 "), "{head}");
    // The head is kept elsewhere (here, a file); the chain matches it.
    let witness = dir.path().join("witness.txt");
    std::fs::write(&witness, &head).unwrap();
    let ok = consult(
        &["audit", "verify", "--against", witness.to_str().unwrap()],
        dir.path(),
    );
    let said = String::from_utf8_lossy(&ok.stdout).into_owned();
    assert!(ok.status.success(), "{said}");
    assert!(
        said.contains("matches the head at entry 4") && said.contains("1 signed checkpoints hold")
    );
    // A new signing key: the old head still verifies.
    let rotated = consult(&["audit", "rotate-key"], dir.path());
    assert!(String::from_utf8_lossy(&rotated.stdout).contains("version 2"));
    assert!(
        consult(&["audit", "verify", "--against", &head], dir.path())
            .status
            .success()
    );

    // Someone with the database file drops the guard and the last entry: the links still hold.
    let status = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('DROP TRIGGER audit_log_no_delete'); \
             c.execute('DELETE FROM audit_log WHERE seq=4'); c.commit()",
        )
        .arg(dir.path().join("consult.db"))
        .status()
        .unwrap();
    assert!(status.success());
    let found = consult(&["audit", "verify", "--against", &head], dir.path());
    let said = String::from_utf8_lossy(&found.stdout).into_owned();
    assert_eq!(found.status.code(), Some(1), "{said}");
    assert!(said.contains("truncated"), "{said}");
    // A head that is not one is an error, not a pass.
    let garbage = consult(
        &[
            "audit",
            "verify",
            "--against",
            "consult-audit-head/v1 nonsense",
        ],
        dir.path(),
    );
    assert_eq!(garbage.status.code(), Some(2));
}

#[test]
fn help_lists_every_subcommand() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for sub in ["serve", "admin", "audit", "recording", "keys", "openapi"] {
        assert!(help.contains(sub), "{sub} missing from --help");
    }
}

#[test]
fn recording_keygen_writes_a_private_key_file_and_refuses_weak_or_clobbering_use() {
    let dir = tempfile::tempdir().unwrap();
    let passphrase = dir.path().join("passphrase");
    std::fs::write(&passphrase, "a long enough passphrase\n").unwrap();
    let key = dir.path().join("clinician.key");
    let keygen = |key: &Path, passphrase: &Path| {
        Command::new(BIN)
            .args(["recording", "keygen", "--out"])
            .arg(key)
            .arg("--passphrase-file")
            .arg(passphrase)
            .output()
            .unwrap()
    };
    let out = keygen(&key, &passphrase);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let public = stdout
        .lines()
        .find_map(|l| l.strip_prefix("recording public key: "))
        .expect("the public key is printed");
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&key).unwrap()).unwrap();
    assert_eq!(file["public_key"], public);
    assert_eq!(file["kdf"]["algorithm"], "argon2id");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // An existing key file is never overwritten; a short passphrase is refused.
    let before = std::fs::read(&key).unwrap();
    let out = keygen(&key, &passphrase);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(&key).unwrap(), before);
    std::fs::write(&passphrase, "short\n").unwrap();
    let out = keygen(&dir.path().join("other.key"), &passphrase);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 12 characters"));
    assert!(!dir.path().join("other.key").exists());
}

#[test]
fn recording_export_names_what_is_wrong_and_writes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let out_file = data.path().join("out.webm");
    let out = out_file.to_str().unwrap();
    let unknown = "3f1b0c9e-4a6d-4c2e-9b7a-2d5e8f1a6c3b";
    // No such recording.
    let result = consult(&["recording", "export", unknown, "--out", out], data.path());
    assert!(!result.status.success());
    assert!(String::from_utf8_lossy(&result.stderr).contains(&format!("no recording {unknown}")));
    // A key file with the wrong passphrase is refused before anything is read.
    let passphrase = data.path().join("passphrase");
    std::fs::write(&passphrase, "a long enough passphrase").unwrap();
    let key = data.path().join("clinician.key");
    let made = Command::new(BIN)
        .args(["recording", "keygen", "--out"])
        .arg(&key)
        .arg("--passphrase-file")
        .arg(&passphrase)
        .output()
        .unwrap();
    assert!(made.status.success());
    std::fs::write(&passphrase, "another long passphrase").unwrap();
    let result = consult(
        &[
            "recording",
            "export",
            unknown,
            "--out",
            out,
            "--key-file",
            key.to_str().unwrap(),
            "--passphrase-file",
            passphrase.to_str().unwrap(),
        ],
        data.path(),
    );
    assert!(!result.status.success());
    assert!(String::from_utf8_lossy(&result.stderr).contains("passphrase does not open"));
    assert!(!out_file.exists());
}

/// `consult certificate verify` with `args`, the presentation on standard input when given.
fn verify_certificate(args: &[&str], stdin: Option<&str>) -> (Option<i32>, String) {
    use std::io::Write as _;
    let mut child = Command::new(BIN)
        .args(["certificate", "verify"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.code(), text)
}

#[test]
fn certificate_verify_shows_exactly_what_is_disclosed_offline_and_refuses_forgeries_and_revoked_ones(
) {
    use consult_certificate::{
        issue, present, CertificateContent, CertificateKind, IssuerKey, Jwks, StatusList,
        StatusReference,
    };
    let dir = tempfile::tempdir().unwrap();
    let key = IssuerKey::generate().unwrap();
    let issuer = "https://clinic.example";
    let now = time::OffsetDateTime::now_utc();
    let content = CertificateContent {
        kind: CertificateKind::UnfitForWork,
        period_start: now.date(),
        period_end: now.date() + time::Duration::days(4),
        patient_name: "Ana Silva".into(),
        restrictions: None,
        diagnosis: Some("Influenza A".into()),
        note: None,
        clinician_name: "Dr Rui Costa".into(),
        clinician_licence: "OM-12345".into(),
    };
    let reference = StatusReference {
        uri: format!("{issuer}/api/v1/certificates/status"),
        idx: 3,
    };
    let issued = issue(
        &key,
        issuer,
        &content,
        now - time::Duration::minutes(1),
        now + time::Duration::days(30),
        Some(&reference),
    )
    .unwrap();
    let shown = present(&issued, &["period", "clinician_name"]).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let jwks = write(
        "jwks.json",
        &serde_json::to_string(&Jwks {
            keys: vec![key.public_jwk()],
        })
        .unwrap(),
    );
    let mut list = StatusList::new(64).unwrap();
    let fine = write(
        "status.jwt",
        &list.sign(&key, &reference.uri, now, 300, 86_400).unwrap(),
    );
    list.revoke(3).unwrap();
    let revoked = write(
        "revoked.jwt",
        &list.sign(&key, &reference.uri, now, 300, 86_400).unwrap(),
    );
    let link = format!("{issuer}/verify#{shown}");
    let base = ["--issuer", issuer, "--jwks", &jwks];

    // The link, offline: the issuer, kind, validity and exactly the two disclosed claims.
    let (code, out) = verify_certificate(&[&base[..], &[link.as_str()]].concat(), None);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("valid certificate"), "{out}");
    assert!(out.contains("kind: unfit_for_work"), "{out}");
    assert!(out.contains("clinician_name: Dr Rui Costa"), "{out}");
    assert!(out.contains("period: {"), "{out}");
    assert!(out.contains("status: not checked"), "{out}");
    for hidden in [
        "Influenza",
        "Ana Silva",
        "OM-12345",
        "diagnosis",
        "patient_name",
    ] {
        assert!(!out.contains(hidden), "{hidden} is not shown: {out}");
    }
    // From standard input, with the status list: not revoked.
    let (code, out) = verify_certificate(
        &[&base[..], &["--status-list", &fine, "-"]].concat(),
        Some(&shown),
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("status: not revoked"), "{out}");
    // Revoked.
    let (code, out) = verify_certificate(
        &[&base[..], &["--status-list", &revoked, &shown]].concat(),
        None,
    );
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("REVOKED"), "{out}");

    // Bad inputs: each refused with the reason, exit 1.
    let tampered = {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts: Vec<String> = shown.split('~').map(str::to_owned).collect();
        for part in parts.iter_mut().skip(1).filter(|p| !p.is_empty()) {
            let text = String::from_utf8(engine.decode(&*part).unwrap()).unwrap();
            *part = engine.encode(text.replace("Dr Rui Costa", "Dr Someone Else"));
        }
        parts.join("~")
    };
    let stranger = IssuerKey::generate().unwrap();
    let strangers = write(
        "strangers.json",
        &serde_json::to_string(&Jwks {
            keys: vec![stranger.public_jwk()],
        })
        .unwrap(),
    );
    for (args, why) in [
        (
            vec!["--issuer", issuer, "--jwks", &jwks, &tampered],
            "not signed by the issuer",
        ),
        (
            vec!["--issuer", issuer, "--jwks", &strangers, &shown],
            "unknown key",
        ),
        (
            vec!["--issuer", "https://other.example", "--jwks", &jwks, &shown],
            "not by the expected issuer",
        ),
        (
            vec![
                "--issuer",
                issuer,
                "--jwks",
                &jwks,
                &shown[..shown.len() / 2],
            ],
            "malformed",
        ),
    ] {
        let (code, out) = verify_certificate(&args, None);
        assert_eq!(code, Some(1), "{why}: {out}");
        assert!(
            out.contains("NOT VALID") && out.contains(why),
            "{why}: {out}"
        );
    }
    // A status list for another list, or one that is not a token: not valid.
    let (code, out) = verify_certificate(
        &[&base[..], &["--status-list", &jwks, &shown]].concat(),
        None,
    );
    assert_eq!(code, Some(1), "{out}");
    // A file that is no JWKS: a usage error, exit 2.
    let (code, out) = verify_certificate(&["--issuer", issuer, "--jwks", &fine, &shown], None);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("is not a JWKS"), "{out}");
}

/// The demo doctor signed in on `url`: the typed client and the session token.
async fn demo_doctor(url: &str, data_dir: &Path) -> (consult_api_client::ApiClient, String) {
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("demo-credentials.json")).unwrap())
            .unwrap();
    let api = consult_api_client::ApiClient::new(url).unwrap();
    let token = api
        .sign_in(&consult_api_client::ClinicianLogin {
            email: creds["email"].as_str().unwrap().into(),
            password: creds["password"].as_str().unwrap().into(),
            totp_secret: creds["totp_secret"].as_str().unwrap().into(),
        })
        .await
        .unwrap();
    (api, token)
}

fn attendance() -> consult_proto::api::IssueCertificateRequest {
    let today = time::OffsetDateTime::now_utc().date();
    let day = format!(
        "{:04}-{:02}-{:02}",
        today.year(),
        u8::from(today.month()),
        today.day()
    );
    consult_proto::api::IssueCertificateRequest {
        kind: consult_proto::api::CertificateKindName::Attendance,
        period_start: day.clone(),
        period_end: day,
        patient_name: "Ana Silva".into(),
        restrictions: None,
        diagnosis: None,
        note: None,
        invite_id: None,
    }
}

#[tokio::test]
async fn a_rotated_issuer_key_still_verifies_old_certificates_and_key_rotation_keeps_them_readable()
{
    use consult_proto::api::VerificationOutcome;
    let dir = tempfile::tempdir().unwrap();
    // The issuer stays the same across restarts (each on a port of its own).
    let config = dir.path().join("consult.toml");
    std::fs::write(
        &config,
        "[certificate]\nissuer = \"https://clinic.example\"\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let (mut child, url, _) = serve(dir.path(), &["--demo", "--config", &config]);
    let (api, token) = demo_doctor(&url, dir.path()).await;
    let consultation = api
        .create_consultation(&token, &Default::default())
        .await
        .unwrap();
    let invite = consultation
        .invite_url
        .unwrap()
        .split_once('#')
        .unwrap()
        .1
        .to_owned();
    let old = api
        .issue_certificate(&token, consultation.id, &attendance())
        .await
        .unwrap();
    let old_link = api
        .present_certificate(&invite, old.id, &["period", "clinician_licence"])
        .await
        .unwrap()
        .link;
    assert!(old_link.starts_with("https://clinic.example/verify#"));
    let jwks = |url: String| async move {
        reqwest::get(format!(
            "{}/.well-known/jwks.json",
            url.trim_end_matches('/')
        ))
        .await
        .unwrap()
        .json::<consult_certificate::Jwks>()
        .await
        .unwrap()
    };
    let old_kid = jwks(url.clone()).await.keys[0].kid.clone();

    // Not while the service runs: it keeps the key in memory.
    let refused = consult(&["certificate", "rotate-key"], dir.path());
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(terminate(&mut child).success());
    for args in [["certificate", "rotate-key"], ["keys", "rotate"]] {
        let out = consult(&args, dir.path());
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let (mut child, url, _) = serve(dir.path(), &["--demo", "--config", &config]);
    let (api, token) = demo_doctor(&url, dir.path()).await;
    let keys = jwks(url.clone()).await;
    assert_eq!(keys.keys.len(), 2, "the retired key is still published");
    assert!(keys.find(&old_kid).is_some());
    let result = api.verify_certificate(&old_link).await.unwrap();
    assert_eq!(
        result.outcome,
        VerificationOutcome::Valid,
        "{:?}",
        result.reason
    );
    // Still readable by its holder after the key-encryption keys were rotated.
    let held = api.held_certificates(&invite).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].id, old.id);
    // A new certificate is signed with the new key.
    let new = api
        .issue_certificate(&token, consultation.id, &attendance())
        .await
        .unwrap();
    let shown = api.present_certificate(&invite, new.id, &[]).await.unwrap();
    let header = shown.presentation.split('.').next().unwrap().to_owned();
    let header: serde_json::Value = {
        use base64::Engine as _;
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .unwrap(),
        )
        .unwrap()
    };
    assert_ne!(header["kid"], old_kid.as_str());
    assert!(keys.find(header["kid"].as_str().unwrap()).is_some());
    // The operator revokes the old one from the link someone showed them, while it runs.
    let revoke = |target: &str| {
        consult(
            &[
                "certificate",
                "revoke",
                target,
                "--reason",
                "reported lost",
                "--config",
                &config,
            ],
            dir.path(),
        )
    };
    let out = revoke(&old_link);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&old.id.to_string()));
    let result = api.verify_certificate(&old_link).await.unwrap();
    assert_eq!(result.outcome, VerificationOutcome::Revoked);
    // Not twice; not a link cut short; not another issuer's certificate.
    let again = revoke(&old.id.to_string());
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already revoked"));
    let cut = revoke(&old_link[..old_link.len() / 2]);
    assert!(!cut.status.success());
    assert!(String::from_utf8_lossy(&cut.stderr).contains("not a certificate of this issuer"));
    assert_eq!(
        api.verify_certificate(&shown.link).await.unwrap().outcome,
        VerificationOutcome::Valid,
        "the other certificate is untouched"
    );
    // All of it is in the audit trail.
    let export = consult(&["audit", "export"], dir.path());
    let text = String::from_utf8_lossy(&export.stdout);
    assert!(text.contains("certificate_key_rotated") && text.contains("keys_rotated"));
    assert!(
        text.contains(r#""actor":"operator","action":"certificate_revoked""#),
        "{text}"
    );
    assert!(terminate(&mut child).success());
}
