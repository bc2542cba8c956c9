//! `consult load` (which runs the `consult-load` binary), the QA load generator, as QA runs it: real consultations through a real
//! service (one it starts itself, or one at a URL), with the JSON and HTML reports checked
//! against what happened — and the faults: a wrong URL, wrong credentials, too few
//! clinicians, peers that cannot connect, the service stopping halfway, Ctrl-C.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use consult_load::report::{FailureCause, Figures, Outcome};
use consult_load::Report;

/// `consult`, built beside `consult-load` by `cargo build --workspace` (the test command builds
/// every binary first); `consult load` runs the `consult-load` beside it.
static BIN: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(|| {
    let path = Path::new(env!("CARGO_BIN_EXE_consult-load")).with_file_name("consult");
    assert!(
        path.exists(),
        "{} missing: run `cargo build -p consult-signaling` first",
        path.display()
    );
    path
});

/// A `consult serve` the test started, with seeded load clinicians; killed on drop.
struct Service {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Service {
    fn start(clinicians: usize, config: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(&*BIN);
        command
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(["--seed-load-clinicians", &clinicians.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(config) = config {
            let path = dir.path().join("consult.toml");
            std::fs::write(&path, config).unwrap();
            command.arg("--config").arg(path);
        }
        let mut child = command.spawn().unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let url = loop {
            let mut line = String::new();
            assert!(reader.read_line(&mut line).unwrap() > 0, "serve exited");
            if let Some(url) = line.trim().strip_prefix("Consult is running at ") {
                break url.trim_end_matches('/').to_owned();
            }
        };
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        Self { child, url, dir }
    }

    fn credentials(&self) -> PathBuf {
        self.dir.path().join("load-credentials.json")
    }

    /// `consult load` options against this service with its clinicians, then `more`.
    fn load_args(&self, more: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--url".to_owned(),
            self.url.clone(),
            "--credentials".to_owned(),
            self.credentials().display().to_string(),
            "--metrics-token-file".to_owned(),
            self.dir
                .path()
                .join("keys/metrics.token")
                .display()
                .to_string(),
        ];
        args.extend(more.iter().map(|a| a.to_string()));
        args
    }

    fn joins(&self) -> u64 {
        let token = std::fs::read_to_string(self.dir.path().join("keys/metrics.token")).unwrap();
        reqwest::blocking::Client::new()
            .get(format!("{}/metrics", self.url))
            .bearer_auth(token.trim())
            .send()
            .and_then(|r| r.text())
            .map(|text| {
                text.lines()
                    .filter(|l| l.starts_with("consult_joins_total{"))
                    .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `consult load` run: its exit status, standard output and error.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn load_command<S: AsRef<std::ffi::OsStr>>(report: &Path, args: &[S]) -> Command {
    let mut command = Command::new(&*BIN);
    command
        .arg("load")
        .arg("--report")
        .arg(report)
        .args(["--no-progress"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Wait for a running load, at most `limit`; it must stop by itself.
fn finish(mut child: Child, limit: Duration) -> Run {
    let started = Instant::now();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("consult load still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Run {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn load<S: AsRef<std::ffi::OsStr>>(report: &Path, args: &[S], limit: Duration) -> Run {
    finish(load_command(report, args).spawn().unwrap(), limit)
}

fn read_report(dir: &Path) -> Report {
    let json = std::fs::read(dir.join("report.json")).expect("report.json written");
    serde_json::from_slice(&json).expect("report.json parses as a Report")
}

fn read_html(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("report.html")).expect("report.html written")
}

/// Every figure is named in the HTML report, which needs nothing else to be read.
fn assert_html_names_every_figure(html: &str) {
    assert!(html.starts_with("<!DOCTYPE html>"));
    for name in Figures::NAMES {
        assert!(html.contains(name), "the HTML report lacks {name}");
    }
    assert!(!html.contains("<script"), "not self-contained");
    assert!(!html.contains("src=\"http"), "not self-contained");
}

fn failures_total(report: &Report) -> u64 {
    report.failures.values().sum()
}

fn process_is_gone(pid: u32) -> bool {
    // A zombie would still be listed: the service's parent (the load) reaped it or is gone.
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_short_run_connects_every_consultation_with_intact_frames_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = load(
        dir.path(),
        &[
            "-n",
            "5",
            "--ramp",
            "5",
            "--duration",
            "10s",
            "--video",
            "360p",
        ],
        Duration::from_secs(120),
    );
    assert!(run.status.success(), "{}\n{}", run.stdout, run.stderr);
    let report = read_report(dir.path());
    assert_eq!(report.outcome, Outcome::Completed);
    let c = &report.counts;
    assert_eq!(
        (c.planned, c.started, c.created, c.admitted, c.connected),
        (5, 5, 5, 5, 5)
    );
    assert_eq!(
        (c.first_frame, c.succeeded, c.failed, c.ended),
        (5, 5, 0, 5)
    );
    assert_eq!((c.signed_in, c.joins, c.not_ended), (5, 10, 0));
    assert_eq!(failures_total(&report), 0);
    // Counts match the rows they summarise.
    assert_eq!(report.consultations.len(), 5);
    assert!(report
        .consultations
        .iter()
        .all(|r| r.ended && r.failure.is_none()));
    let f = &report.figures;
    for (name, figure) in [
        ("sign_in_ms", &f.sign_in_ms),
        ("waiting_room_ms", &f.waiting_room_ms),
        ("admission_ms", &f.admission_ms),
        ("connect_ms", &f.connect_ms),
        ("first_frame_ms", &f.first_frame_ms),
    ] {
        assert_eq!(figure.count, 5, "{name}");
        assert!(
            figure.p50 <= figure.p95 && figure.p95 <= figure.p99,
            "{name}"
        );
    }
    assert_eq!(f.received_kbps.count, 10, "two receivers per consultation");
    assert!(f.rtt_ms.count > 0 && f.jitter_ms.count > 0);
    // Frames arrived intact: every receiver saw at least five seconds of 30 fps video.
    let receivers: Vec<_> = report
        .consultations
        .iter()
        .flat_map(|r| &r.receivers)
        .collect();
    assert_eq!(receivers.len(), 10);
    for r in &receivers {
        assert!(r.counts.video_frames_intact >= 150, "{r:?}");
        assert_eq!(
            (
                r.counts.video_frames_corrupt,
                r.counts.audio_packets_corrupt
            ),
            (0, 0),
            "{r:?}"
        );
        assert!(r.counts.audio_packets_intact >= 250, "{r:?}");
        assert!(
            r.counts.video_frames_intact <= r.counts.video_frames_sent,
            "{r:?}"
        );
    }
    let m = &report.media;
    assert_eq!(
        m.counts.video_frames_intact,
        receivers
            .iter()
            .map(|r| r.counts.video_frames_intact)
            .sum::<u64>()
    );
    assert!(
        m.counts.video_frames_missing * 50 <= m.counts.video_frames_intact,
        "over 2% of frames missing on loopback: {m:?}"
    );
    assert!(
        m.counts.video_frames_decoded > 0,
        "the first consultation decodes"
    );
    assert_eq!(m.counts.decode_errors, 0);
    // The service agrees, and its log is clean.
    let service = &report.service;
    assert_eq!(service.joins, Some(10));
    assert_eq!(service.metrics_agree, Some(true), "{service:?}");
    assert_eq!(service.active_at_hold, Some((5, 5)));
    let log = service.log.as_ref().expect("the service's log was read");
    assert_eq!((log.errors, log.panics), (0, 0), "{:?}", log.examples);
    assert!(service.rss_mib_per_consultation.is_some());
    assert!(report.timeline.len() >= 10);
    assert!(process_is_gone(service.pid.expect("service pid")));
    let html = read_html(dir.path());
    assert_html_names_every_figure(&html);
    assert!(
        html.matches("<svg").count() >= 5,
        "plots of joins, latencies, loss, bitrate"
    );
    assert!(run.stdout.contains("first_frame_ms") && run.stdout.contains("Outcome: completed"));
}

#[test]
fn e2ee_recorded_consultations_consent_and_still_deliver_intact_frames() {
    let dir = tempfile::tempdir().unwrap();
    let run = load(
        dir.path(),
        &[
            "-n",
            "2",
            "--ramp",
            "4",
            "--duration",
            "4s",
            "--e2ee",
            "on",
            "--recorded",
        ],
        Duration::from_secs(90),
    );
    assert!(run.status.success(), "{}\n{}", run.stdout, run.stderr);
    let report = read_report(dir.path());
    assert!(report.plan.e2ee && report.plan.recorded);
    assert_eq!(report.counts.first_frame, 2);
    for row in &report.consultations {
        assert_eq!(row.recording.as_deref(), Some("recording"), "{row:?}");
        for r in &row.receivers {
            assert!(
                r.counts.video_frames_intact > 0 && r.counts.video_frames_corrupt == 0,
                "{r:?}"
            );
        }
    }
}

/// Groups of four (a clinician, a patient, an interpreter and a companion through named
/// invites), end-to-end encrypted: everyone receives intact frames from each of the three
/// others, and the report has a row per receiver and sender.
#[test]
fn groups_of_four_receive_intact_frames_from_every_other_participant() {
    let dir = tempfile::tempdir().unwrap();
    let run = load(
        dir.path(),
        &[
            "-n",
            "2",
            "--ramp",
            "4",
            "--duration",
            "4s",
            "--e2ee",
            "on",
            "--participants",
            "4",
        ],
        Duration::from_secs(120),
    );
    assert!(run.status.success(), "{}\n{}", run.stdout, run.stderr);
    let report = read_report(dir.path());
    assert_eq!(report.plan.participants, 4);
    assert_eq!(report.counts.first_frame, 2);
    for row in &report.consultations {
        assert_eq!(row.receivers.len(), 12, "{row:?}");
        let mut sides: Vec<&str> = row.receivers.iter().map(|r| r.side.as_str()).collect();
        sides.sort();
        sides.dedup();
        assert_eq!(
            sides.len(),
            12,
            "one row per receiver and sender: {sides:?}"
        );
        assert!(sides.contains(&"companion from interpreter"), "{sides:?}");
        for r in &row.receivers {
            assert!(
                r.counts.video_frames_intact > 0 && r.counts.video_frames_corrupt == 0,
                "{r:?}"
            );
        }
    }
    // A service that allows fewer refuses the extra invites: the run says so and fails.
    let service = Service::start(1, Some("[policy]\nmax_participants = 3\n"));
    let small = tempfile::tempdir().unwrap();
    let run = load(
        small.path(),
        &service.load_args(&["-n", "1", "--duration", "2s", "--participants", "4"]),
        Duration::from_secs(60),
    );
    assert!(!run.status.success(), "{}", run.stdout);
    let report = read_report(small.path());
    let failure = report.consultations[0].failure.as_ref().expect("a failure");
    assert!(failure.message.contains("consultation_full"), "{failure:?}");
    // Out of range, or with --signaling-only: refused before anything runs.
    for args in [
        &["--participants", "5"][..],
        &["--participants", "1"],
        &["--participants", "3", "--signaling-only"],
    ] {
        let out = load_command(small.path(), args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
    }
}

#[test]
fn signaling_only_runs_admit_everyone_and_a_crossed_threshold_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = load(
        dir.path(),
        &[
            "-n",
            "8",
            "--ramp",
            "8",
            "--duration",
            "3s",
            "--signaling-only",
            "--max-p95-join-ms",
            "0.001",
        ],
        Duration::from_secs(90),
    );
    assert_eq!(run.status.code(), Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("threshold crossed: max_p95_join_ms"),
        "{}",
        run.stderr
    );
    let report = read_report(dir.path());
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!((report.counts.admitted, report.counts.connected), (8, 8));
    assert_eq!(report.figures.admission_ms.count, 8);
    assert_eq!(report.figures.first_frame_ms.count, 0, "no media");
    assert_eq!(
        report.service.metrics_agree,
        Some(true),
        "{:?}",
        report.service
    );
    let thresholds: Vec<_> = report
        .thresholds
        .iter()
        .map(|t| (t.name.as_str(), t.passed))
        .collect();
    assert_eq!(
        thresholds,
        vec![("max_failures", true), ("max_p95_join_ms", false)]
    );
    assert_html_names_every_figure(&read_html(dir.path()));
}

#[test]
fn the_service_stopping_halfway_is_reported_by_cause_with_a_non_zero_exit() {
    let mut service = Service::start(6, None);
    let dir = tempfile::tempdir().unwrap();
    let child = load_command(
        dir.path(),
        &service.load_args(&["-n", "6", "--ramp", "1", "--duration", "30s"]),
    )
    .spawn()
    .unwrap();
    // Halfway through the ramp-up: two consultations in (four joins), then the service dies.
    let deadline = Instant::now() + Duration::from_secs(60);
    while service.joins() < 4 {
        assert!(Instant::now() < deadline, "no consultation joined");
        std::thread::sleep(Duration::from_millis(200));
    }
    service.child.kill().unwrap();
    service.child.wait().unwrap();
    let stopped = Instant::now();
    let run = finish(child, Duration::from_secs(90));
    assert!(
        stopped.elapsed() < Duration::from_secs(45),
        "the generator took {:?} to notice",
        stopped.elapsed()
    );
    assert_eq!(run.status.code(), Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("the service stopped answering"),
        "{}",
        run.stderr
    );
    let report = read_report(dir.path());
    assert_eq!(report.outcome, Outcome::Aborted);
    assert!(report.counts.failed >= 2, "{:?}", report.counts);
    assert_eq!(failures_total(&report), report.counts.failed);
    assert!(report.failures[&FailureCause::Signaling] >= 2);
    assert_eq!(
        report.counts.not_ended,
        report.counts.created,
        "nothing can be ended on a dead service, and the report says so: {:?}",
        report
            .consultations
            .iter()
            .map(|c| (c.ended, c.failure.clone()))
            .collect::<Vec<_>>()
    );
    assert!(report
        .failure_examples
        .iter()
        .all(|f| !f.message.is_empty()));
    assert_html_names_every_figure(&read_html(dir.path()));
}

#[test]
fn a_wrong_url_says_so_and_still_writes_the_report() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials.json");
    std::fs::write(
        &credentials,
        r#"[{"email":"a@example.org","password":"correct horse battery","totp_secret":"GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"}]"#,
    )
    .unwrap();
    let report_dir = dir.path().join("report");
    let run = load(
        &report_dir,
        &[
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--credentials",
            credentials.to_str().unwrap(),
            "-n",
            "1",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(1));
    assert!(
        run.stderr.contains("cannot reach the service"),
        "{}",
        run.stderr
    );
    let report = read_report(&report_dir);
    assert_eq!(report.outcome, Outcome::Aborted);
    assert_eq!(report.counts.started, 0);
    assert_html_names_every_figure(&read_html(&report_dir));
}

#[test]
fn wrong_credentials_stop_the_run_before_any_consultation() {
    let service = Service::start(3, None);
    let mut clinicians: serde_json::Value =
        serde_json::from_slice(&std::fs::read(service.credentials()).unwrap()).unwrap();
    clinicians[1]["password"] = "not the password at all".into();
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials.json");
    std::fs::write(&credentials, clinicians.to_string()).unwrap();
    let report_dir = dir.path().join("report");
    let run = load(
        &report_dir,
        &[
            "--url",
            &service.url,
            "--credentials",
            credentials.to_str().unwrap(),
            "-n",
            "3",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(run.status.code(), Some(1));
    assert!(run.stderr.contains("invalid_credentials"), "{}", run.stderr);
    let report = read_report(&report_dir);
    assert_eq!(report.outcome, Outcome::Aborted);
    assert_eq!(report.counts.started, 0);
    assert_eq!(report.failures[&FailureCause::SignIn], 1);
    assert_eq!(service.joins(), 0, "nobody joined anything");
}

#[test]
fn too_few_clinicians_for_the_consultations_is_refused_up_front() {
    let service = Service::start(1, None);
    let dir = tempfile::tempdir().unwrap();
    let run = load(
        dir.path(),
        &service.load_args(&["-n", "2"]),
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(2));
    assert!(
        run.stderr
            .contains("2 consultations need 2 clinician accounts"),
        "{}",
        run.stderr
    );
}

#[test]
fn peers_that_cannot_connect_fail_as_ice_and_their_consultations_are_ended() {
    // Relay-only through a TURN server that is not there: no candidate can ever be gathered.
    let service = Service::start(
        2,
        Some(
            "[ice]\nturn_urls = [\"turn:127.0.0.1:9?transport=udp\"]\n\
             turn_shared_secret = \"no-turn-server-here\"\nrelay_only = true\n",
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let run = load(
        dir.path(),
        &service.load_args(&[
            "-n",
            "2",
            "--ramp",
            "4",
            "--duration",
            "2s",
            "--connect-timeout",
            "3s",
        ]),
        Duration::from_secs(90),
    );
    assert_eq!(run.status.code(), Some(1), "{}\n{}", run.stdout, run.stderr);
    let report = read_report(dir.path());
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(
        report.failures[&FailureCause::Ice],
        2,
        "{:?}",
        report.failure_examples
    );
    // The patient's session cannot start: relay only, and the one TURN server does not answer
    // (no candidate at all), said at once with the server's reason.
    assert_eq!((report.counts.admitted, report.counts.connected), (0, 0));
    assert_eq!(report.counts.ended, 2, "failed consultations are ended too");
    assert!(
        report.failure_examples.iter().all(|f| f
            .message
            .contains("relay only, but no TURN server could be used: turn:127.0.0.1:9")),
        "{:?}",
        report.failure_examples
    );
    assert_eq!(
        report
            .thresholds
            .first()
            .map(|t| (t.name.as_str(), t.passed)),
        Some(("max_failures", false))
    );
}

#[test]
fn ctrl_c_hangs_up_ends_every_consultation_and_leaves_no_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = load_command(
        dir.path(),
        &["-n", "3", "--ramp", "6", "--duration", "120s"],
    )
    .spawn()
    .unwrap();
    // Wait until the consultations are up (the live line reports them every five seconds).
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = String::new();
    loop {
        assert!(Instant::now() < deadline, "never active: {seen}");
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "exited: {seen}");
        seen.push_str(&line);
        if line.contains("active 3") {
            break;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still running after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = seen + &rest.join().unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let report = read_report(dir.path());
    assert_eq!(report.outcome, Outcome::Interrupted);
    assert_eq!(report.counts.created, 3);
    assert_eq!(report.counts.ended, 3, "every consultation ended");
    assert_eq!(report.counts.failed, 0, "an interruption is not a failure");
    assert!(process_is_gone(report.service.pid.expect("service pid")));
    assert_html_names_every_figure(&read_html(dir.path()));
}

#[test]
fn a_malformed_credentials_file_or_an_unknown_profile_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials.json");
    std::fs::write(&credentials, r#"{"email": "not a list"}"#).unwrap();
    let report_dir = dir.path().join("report");
    let args = [
        "--url",
        "http://127.0.0.1:9",
        "--credentials",
        credentials.to_str().unwrap(),
    ];
    let run = load(&report_dir, &args, Duration::from_secs(30));
    assert_eq!(run.status.code(), Some(2));
    assert!(
        run.stderr
            .contains("is not a list of {email, password, totp_secret}"),
        "{}",
        run.stderr
    );
    let run = load(&report_dir, &["--video", "1080p"], Duration::from_secs(30));
    assert_eq!(run.status.code(), Some(2));
    assert!(
        run.stderr.contains("unknown video profile"),
        "{}",
        run.stderr
    );
    // Nothing was started, so nothing was reported.
    assert!(!report_dir.join("report.json").exists());
}

#[test]
fn consult_without_the_generator_beside_it_says_how_to_build_it() {
    // A `consult` alone, as on a machine where only the service was built.
    let dir = tempfile::tempdir().unwrap();
    let lonely = dir.path().join("consult");
    std::fs::copy(&*BIN, &lonely).unwrap();
    let output = Command::new(&lonely)
        .args(["load", "-n", "1"])
        .env("PATH", dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cargo build --release -p consult-load"),
        "{stderr}"
    );
    // And through `consult load`, the generator's own help is what answers.
    let help = Command::new(&*BIN)
        .args(["load", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("consult-load") && help.contains("--signaling-only"),
        "{help}"
    );
}
