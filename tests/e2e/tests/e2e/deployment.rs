//! A real deployment: PostgreSQL, Redis, nginx (no stickiness) and three `consult serve`
//! processes. Native peers and the load generator reach it only through nginx, as clients do.

use std::time::{Duration, Instant};

use consult_client::session::SessionEvent;
use consult_e2e::deployment::{metric, readyz, until_both_rejoined, Call, Deployment, Failover};
use consult_e2e::{media_both_ways, Seen};
use consult_proto::api::CreateConsultationRequest;

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
