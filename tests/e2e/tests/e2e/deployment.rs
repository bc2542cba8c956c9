//! A real deployment: PostgreSQL, Redis, nginx (no stickiness) and three `consult serve`
//! processes. Native peers and the load generator reach it only through nginx, as clients do.

use std::time::{Duration, Instant};

use consult_client::session::SessionEvent;
use consult_e2e::deployment::{metric, readyz, until_both_rejoined, Call, Deployment, Failover};
use consult_e2e::{media_both_ways, Seen};
use consult_proto::api::{ConsultationMode, CreateConsultationRequest};
use consult_proto::signal::RecordingState;
use consult_signaling::recording::rows::{RecordingRow, RecordingStatus};

/// SIGKILL the node holding a call: media never stops (it never touched the node); both
/// sessions reconnect through nginx to the other nodes within the grace period and are back in
/// the call — still admitted, on the same peer connection, without the doctor admitting anyone
/// again — and ending the consultation still reaches the patient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_call_loses_no_media_and_both_sides_resume_on_another() {
    let mut deployment = Deployment::start(3, 0);
    let mut call = deployment.call().await;
    let Failover {
        rejoined,
        p: p_after,
        d: d_after,
    } = deployment
        .kill_home_mid_call(&mut call, Duration::from_secs(25), 2)
        .await;
    let (mut patient, token, id) = (call.patient, call.token, call.consultation);
    println!(
        "both rejoined {rejoined:?} after the node was killed; longest video gap: patient {:?}, doctor {:?}",
        p_after.longest_video_gap, d_after.longest_video_gap
    );
    for (side, seen) in [("patient", &p_after), ("doctor", &d_after)] {
        assert!(!seen.connected, "{side} made a new peer connection");
        assert!(!seen.admitted, "{side} was admitted again");
        assert!(seen.video > 30, "{side}: {} video frames", seen.video);
        assert!(
            seen.longest_video_gap < Duration::from_secs(1),
            "{side}'s video stopped for {:?}",
            seen.longest_video_gap
        );
    }
    deployment.api().end(&token, id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "the end did not reach the patient"
        );
        match tokio::time::timeout(Duration::from_millis(200), patient.next_event()).await {
            Ok(Some(SessionEvent::Ended)) | Ok(None) => break,
            _ => {}
        }
    }
}

/// The consultation's recordings, as its clinician lists them through the load balancer.
async fn recordings(deployment: &Deployment, token: &str, id: uuid::Uuid) -> Vec<RecordingRow> {
    let page = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/consultations/{id}/recordings",
            deployment.url
        ))
        .bearer_auth(token)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("the recordings list")
        .text()
        .await
        .expect("the recordings list's body");
    let list: serde_json::Value = serde_json::from_str(&page).expect("JSON");
    serde_json::from_value(list["recordings"].clone()).expect("recording rows")
}

/// A recorded, end-to-end encrypted (zero-knowledge) call whose home node is killed: media and
/// E2EE go on (no new peer connection, no new key agreement), the recording on the dead node is
/// interrupted at its last sealed chunk, a recorder on the new home continues it in a segment
/// that names the first, and the clinician's export — of either segment — is one file with both,
/// opened with the clinician's key, that ffmpeg decodes without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_e2ee_call_outlives_its_node_and_its_recording_exports_as_one() {
    let mut deployment = Deployment::start(3, 0);
    let keys = tempfile::tempdir().unwrap();
    let (key_file, passphrase) = (
        keys.path().join("recording-key.json"),
        keys.path().join("passphrase"),
    );
    std::fs::write(&passphrase, "the clinician's own passphrase\n").unwrap();
    let made = std::process::Command::new(consult_e2e::deployment::consult_binary())
        .args(["recording", "keygen", "--out"])
        .arg(&key_file)
        .arg("--passphrase-file")
        .arg(&passphrase)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let public_key = String::from_utf8_lossy(&made.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("recording public key: ").map(str::to_owned))
        .expect("keygen prints the public key");

    let api = deployment.api();
    let signed_in = api.sign_in(&deployment.doctor).await.unwrap();
    api.set_recording_key(&signed_in, &public_key)
        .await
        .expect("the recording key is registered");
    let mut call = deployment
        .call_with(CreateConsultationRequest {
            title: Some("recorded across a failover".into()),
            mode: Some(ConsultationMode::Recorded),
            e2ee: Some(true),
            ..Default::default()
        })
        .await;
    call.patient.consent_to_recording(true).await.unwrap();
    let started = Instant::now();
    while call.p.recording != Some(RecordingState::Recording)
        || call.d.recording != Some(RecordingState::Recording)
    {
        assert!(started.elapsed() < Duration::from_secs(20), "not recording");
        consult_e2e::media_both_ways_for(
            &mut call.patient,
            &mut call.doctor,
            &mut call.p,
            &mut call.d,
            Duration::from_millis(50),
        )
        .await;
    }
    let sas = call.p.sas.clone().expect("keys agreed before the fault");
    assert_eq!(call.d.sas.as_deref(), Some(sas.as_str()));
    // Three seconds recorded on the first home (the recorder's connections come up first).
    media_both_ways(
        &mut call.patient,
        &mut call.doctor,
        &mut call.p,
        &mut call.d,
        4,
    )
    .await;
    let (token, id) = (call.token.clone(), call.consultation);
    let first = recordings(&deployment, &token, id).await;
    assert!(
        matches!(first.as_slice(), [r] if r.state == RecordingStatus::Recording),
        "{first:?}"
    );
    let first = first[0].clone();

    let Failover {
        rejoined,
        mut p,
        mut d,
    } = deployment
        .kill_home_mid_call(&mut call, Duration::from_secs(25), 0)
        .await;
    // The new home closes what the dead node left and starts a recorder that continues it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        let rows = recordings(&deployment, &token, id).await;
        if let [old, new] = rows.as_slice()
            && old.state == RecordingStatus::Interrupted
            && new.state == RecordingStatus::Recording
        {
            assert_eq!(new.continues, Some(first.id));
            assert_eq!(
                new.retain_until, old.retain_until,
                "kept as long as the first"
            );
            break new.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no continuation: {rows:?}\n{}",
            deployment.logs()
        );
        media_both_ways_for_a_moment(&mut call, &mut p, &mut d).await;
    };
    media_both_ways(&mut call.patient, &mut call.doctor, &mut p, &mut d, 4).await;
    println!(
        "rejoined {rejoined:?} after the kill; longest video gap: patient {:?}, doctor {:?}",
        p.longest_video_gap, d.longest_video_gap
    );
    for (side, seen) in [("patient", &p), ("doctor", &d)] {
        assert!(!seen.connected, "{side} made a new peer connection");
        assert!(
            seen.video > 60,
            "{side}: {} video frames decrypted",
            seen.video
        );
        assert!(
            seen.sas.as_ref().is_none_or(|again| *again == sas),
            "{side}: the keys changed"
        );
    }

    api.end(&token, id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while recordings(&deployment, &token, id)
        .await
        .iter()
        .any(|r| r.state == RecordingStatus::Recording)
    {
        assert!(Instant::now() < deadline, "the recording did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The clinician exports with their key and session, from either segment: the same file.
    let token_file = keys.path().join("session.token");
    std::fs::write(&token_file, &token).unwrap();
    let export = |recording: uuid::Uuid, name: &str| {
        let out = keys.path().join(name);
        let result = deployment.consult(
            &["recording", "export"],
            &[
                recording.to_string().as_ref(),
                "--out".as_ref(),
                out.as_os_str(),
                "--session-token-file".as_ref(),
                token_file.as_os_str(),
                "--key-file".as_ref(),
                key_file.as_os_str(),
                "--passphrase-file".as_ref(),
                passphrase.as_os_str(),
            ],
        );
        assert!(
            result.status.success(),
            "export of {recording}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
        (std::fs::read(out).unwrap(), said)
    };
    let (whole, said) = export(first.id, "from-the-first.mkv");
    let rows = recordings(&deployment, &token, id).await;
    assert!(said.contains("2 segments"), "{said}\n{rows:#?}");
    for (side, seen) in [("patient", &p), ("doctor", &d)] {
        assert!(
            !seen.warnings.iter().any(|w| w.contains("recording")),
            "{side} sent something for a recording that was over: {:?}",
            seen.warnings
        );
    }
    let (again, _) = export(second.id, "from-the-second.mkv");
    assert!(whole == again, "either segment exports the same file");
    let (codecs, duration) = crate::recorded_call::probe(&whole);
    assert_eq!(
        codecs,
        ["h264", "h264", "opus", "opus"],
        "one track per sender and kind across both segments: {said}"
    );
    // Both segments' media (about four seconds each) and the gap between them, which is the
    // failover's length to the second.
    let seconds = rejoined.as_secs_f64();
    assert!(
        duration >= 6.0 && duration <= 8.0 + seconds + 3.0,
        "{duration} s for two segments of about 4 s around a {seconds} s failover"
    );
    // Each sender's video runs from the first segment into the second: frames in its first
    // seconds and in its last.
    for stream in ["v:0", "v:1"] {
        let times = packet_times(&whole, stream);
        let (first, last) = (times[0], times[times.len() - 1]);
        assert!(
            first < 3.0 && last > duration - 3.0,
            "video {stream} from {first} s to {last} s of {duration} s"
        );
    }
}

/// The times (s) of the packets of one stream of a media file, by ffprobe.
fn packet_times(bytes: &[u8], stream: &str) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recording.mkv");
    std::fs::write(&path, bytes).unwrap();
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", stream])
        .args(["-show_entries", "packet=pts_time", "-of", "csv=p=0"])
        .arg(&path)
        .output()
        .expect("ffprobe");
    let times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect();
    assert!(!times.is_empty(), "no packets in {stream}");
    times
}

async fn media_both_ways_for_a_moment(call: &mut Call, p: &mut Seen, d: &mut Seen) {
    consult_e2e::media_both_ways_for(
        &mut call.patient,
        &mut call.doctor,
        p,
        d,
        Duration::from_millis(200),
    )
    .await;
}

/// SIGTERM drains a node: its clients are told to go away (1001) and resume on the others, and
/// it exits by itself, cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_told_to_stop_drains_and_its_calls_move() {
    let mut deployment = Deployment::start(3, 0);
    let Call {
        mut patient,
        mut doctor,
        ..
    } = deployment.call().await;
    let home = deployment.home_node().await;
    let status = deployment.terminate_node(home, Duration::from_secs(15));
    assert!(status.success(), "the node exited with {status}");
    let (mut p, mut d) = (Seen::default(), Seen::default());
    let rejoined = until_both_rejoined(
        &mut patient,
        &mut doctor,
        &mut p,
        &mut d,
        Duration::from_secs(20),
    )
    .await;
    println!("both rejoined {rejoined:?} after the node was told to stop");
    assert!(!p.connected && !d.connected, "a new peer connection");
    assert!(p.video > 0 && d.video > 0);
}

/// PostgreSQL unreachable for ten seconds: requests that need it fail with a clear 503, every
/// node says it is not ready, the call in progress keeps its media; when PostgreSQL is back the
/// service recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_seconds_without_postgres_fail_clearly_keep_media_and_recover() {
    let deployment = Deployment::start(2, 0);
    let Call {
        mut patient,
        mut doctor,
        token,
        ..
    } = deployment.call().await;
    let api = deployment.api();
    deployment.stop_postgres();
    let down = Instant::now();
    // Asked while the call goes on: a request that needs the database, and every node's
    // readiness.
    let checks = {
        let api = deployment.api();
        let token = token.clone();
        let nodes: Vec<String> = deployment.nodes.iter().map(|n| n.url.clone()).collect();
        tokio::spawn(async move {
            let refusal = api
                .create_consultation(&token, &CreateConsultationRequest::default())
                .await
                .expect_err("no consultation without the database");
            let mut ready = Vec::new();
            for node in nodes {
                ready.push(readyz(&node).await);
            }
            (refusal.to_string(), ready)
        })
    };
    let (mut p, mut d) = (Seen::default(), Seen::default());
    while down.elapsed() < Duration::from_secs(10) {
        media_both_ways(&mut patient, &mut doctor, &mut p, &mut d, 1).await;
    }
    let (said, ready) = checks.await.unwrap();
    assert!(
        said.contains("503") && said.contains("database_unavailable"),
        "{said}"
    );
    assert!(
        ready.iter().all(|&code| code == 503),
        "readiness: {ready:?}"
    );
    assert!(
        p.video > 200 && d.video > 200,
        "media while the database was down: {} / {}",
        p.video,
        d.video
    );
    deployment.start_postgres();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match api
            .create_consultation(&token, &CreateConsultationRequest::default())
            .await
        {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "not recovered: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// The load generator through nginx across three nodes: every consultation admitted, no
/// failure, and the nodes' own counts, summed, agree with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_through_the_load_balancer_loses_nothing_and_the_nodes_agree() {
    let consultations = 24;
    let deployment = Deployment::start(3, consultations);
    let report = tempfile::tempdir().unwrap();
    let token_file = report.path().join("metrics.token");
    std::fs::write(&token_file, deployment.metrics_token()).unwrap();
    let load = consult_e2e::deployment::consult_binary().with_file_name("consult-load");
    let out = tokio::process::Command::new(load)
        .arg("--url")
        .arg(&deployment.url)
        .arg("--credentials")
        .arg(deployment.load_credentials())
        .arg("--metrics-token-file")
        .arg(&token_file)
        .args([
            "-n",
            &consultations.to_string(),
            "--ramp",
            "24",
            "--duration",
            "2s",
        ])
        .args([
            "--signaling-only",
            "--no-progress",
            "--bind-ip",
            "127.0.0.1",
        ])
        .arg("--report")
        .arg(report.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "the load run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let pages: Vec<String> = deployment
        .node_metrics()
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(pages.len(), 3);
    let sum =
        |name: &str, labels: &str| -> f64 { pages.iter().map(|p| metric(p, name, labels)).sum() };
    assert_eq!(
        sum("consult_joins_total", "role=\"patient\""),
        consultations as f64,
        "patients joined, summed over the nodes"
    );
    assert_eq!(
        sum("consult_joins_total", "role=\"doctor\""),
        consultations as f64,
        "doctors joined, summed over the nodes"
    );
    // Every node took part: no stickiness, the work spread.
    for (i, page) in pages.iter().enumerate() {
        assert!(
            metric(page, "consult_http_responses_total", "") > 0.0,
            "node {i} answered nothing"
        );
    }
}
