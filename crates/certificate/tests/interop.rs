//! Interop with an independent SD-JWT implementation: the `sd-jwt` package from PyPI
//! (openwallet-foundation-labs/sd-jwt-python 0.10.4, on jwcrypto), installed once into a
//! virtual environment under `target/` (python3 with venv, and PyPI, are needed). It verifies a
//! Consult presentation (and never shows an altered disclosure), and builds a presentation from
//! a Consult certificate that Consult verifies.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use consult_certificate::{
    issue, present, verify, CertificateContent, CertificateKind, IssuerKey, Jwks,
};
use serde_json::{json, Value};
use time::macros::{date, datetime};

const SD_JWT_VERSION: &str = "0.10.4";

/// The virtual environment's python with `sd-jwt` installed (made the first time).
fn python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/sd-jwt-python");
    let python = root.join("bin/python");
    let ready = Command::new(&python)
        .args([
            "-c",
            &format!(
                "import importlib.metadata as m; assert m.version('sd-jwt') == '{SD_JWT_VERSION}'"
            ),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&root)
            .status()
            .expect("python3");
        assert!(made.success(), "python3 -m venv (Debian: python3-venv)");
        let installed = Command::new(root.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("sd-jwt=={SD_JWT_VERSION}"))
            .status()
            .expect("pip");
        assert!(
            installed.success(),
            "pip install sd-jwt=={SD_JWT_VERSION} (needs PyPI)"
        );
    }
    python
}

#[test]
fn the_python_sd_jwt_library_verifies_our_presentations_and_we_verify_its_own() {
    let key = IssuerKey::generate().expect("key");
    let jwks = Jwks {
        keys: vec![key.public_jwk()],
    };
    let now = datetime!(2026 - 12 - 01 10:00 UTC);
    let content = CertificateContent {
        kind: CertificateKind::UnfitForWork,
        period_start: date!(2026 - 12 - 01),
        period_end: date!(2026 - 12 - 05),
        patient_name: "Zoë Ørsted-Łukasiewicz".into(),
        restrictions: Some("No night shifts".into()),
        diagnosis: Some("Influenza A".into()),
        note: None,
        clinician_name: "Dr Rui Costa".into(),
        clinician_licence: "OM-12345".into(),
    };
    let issued = issue(
        &key,
        "https://clinic.example",
        &content,
        now,
        datetime!(2027 - 12 - 01 00:00 UTC),
        None,
    )
    .expect("issue");
    let presentation = present(&issued, &["period", "clinician_name"]).expect("present");
    // The same presentation with the period's disclosure altered (its end moved).
    let tampered = {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts: Vec<String> = presentation.split('~').map(str::to_owned).collect();
        let period = String::from_utf8(engine.decode(&parts[1]).expect("b64")).expect("utf-8");
        assert!(period.contains("2026-12-05"), "{period}");
        parts[1] = engine.encode(period.replace("2026-12-05", "2027-03-05"));
        parts.join("~")
    };
    let request = json!({
        "jwks": jwks,
        "issued": issued,
        "presentation": presentation,
        "tampered": tampered,
        "disclose": ["period", "patient_name"],
    });
    let mut child = Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/sd_jwt_python.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.to_string().as_bytes())
        .expect("request");
    let output = child.wait_with_output().expect("python ran");
    assert!(
        output.status.success(),
        "the python side failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).expect("JSON answer");

    // It verified ours: the visible claims and exactly the two disclosed ones, nothing else.
    let theirs = &answer["verified_presentation"];
    assert_eq!(theirs["iss"], "https://clinic.example");
    assert_eq!(theirs["kind"], "unfit_for_work");
    assert_eq!(
        theirs["period"],
        json!({"start": "2026-12-01", "end": "2026-12-05"})
    );
    assert_eq!(theirs["clinician_name"], "Dr Rui Costa");
    for hidden in [
        "diagnosis",
        "patient_name",
        "restrictions",
        "clinician_licence",
    ] {
        assert!(
            theirs.get(hidden).is_none(),
            "{hidden} stays hidden: {theirs}"
        );
    }
    // The altered disclosure: sd-jwt 0.10.4 drops a disclosure whose digest is not signed
    // instead of refusing the presentation (Consult refuses it); either way the altered period
    // is never shown.
    let tampered_shown = answer["tampered"].to_string();
    assert!(!tampered_shown.contains("2027-03-05"), "{answer}");
    assert!(answer["tampered"].get("period").is_none(), "{answer}");
    assert!(verify(&tampered, "https://clinic.example", &jwks, now).is_err());

    // We verify the presentation it built: exactly what it chose to disclose.
    let built = answer["presentation"].as_str().expect("a presentation");
    let verified =
        verify(built, "https://clinic.example", &jwks, now).expect("ours verifies theirs");
    let mut names: Vec<&str> = verified.disclosed.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["patient_name", "period"]);
    assert_eq!(verified.disclosed["patient_name"], "Zoë Ørsted-Łukasiewicz");
    println!(
        "sd-jwt {SD_JWT_VERSION}: verified ours; the altered one: {} / {}; ours verified its presentation ({} bytes)",
        answer["tampered"],
        answer["tampered_error"],
        built.len()
    );
}
