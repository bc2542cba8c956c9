//! A whole run: reach the service, encode the media loops, sign the clinicians in, start the
//! consultations at the ramp-up rate, hold them, watch the service once a second, tear down,
//! and put every figure in a [`Report`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::consultation::{self, Shared};
use crate::live::LiveState;
use crate::media::MediaLoop;
use crate::plan::Plan;
use crate::progress::Progress;
use crate::report::{
    ConsultationRow, Counts, Distribution, Failure, FailureCause, Figures, MediaTotals, Outcome,
    ProcessUsage, Report, ServiceLog, ServiceReport, ThresholdResult, TimelinePoint, REPORT_FORMAT,
};
use crate::LoadError;
use consult_api_client::{ApiClient, ApiError, ClinicianLogin, MetricsSnapshot};

/// The service to load, and who may sign in to it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// One clinician per consultation (a doctor admits one patient at a time).
    pub clinicians: Vec<ClinicianLogin>,
    /// Local address for the peers' sockets (`None`: loopback and every IPv4 interface).
    pub bind_ip: Option<IpAddr>,
    /// The log of a service the generator started, to look for errors and panics in.
    pub service_log: Option<PathBuf>,
    /// The process id of a service the generator started.
    pub service_pid: Option<u32>,
    /// The token the service's `/metrics` asks for; without it the report has no service-side
    /// figures (CPU, memory, joins).
    pub metrics_token: Option<String>,
}

/// Limits that make the run fail (exit non-zero) when crossed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thresholds {
    /// Most failed consultations allowed.
    pub max_failures: Option<u64>,
    /// Largest p95 "join" time allowed: admission to first frame, or admission alone in a
    /// signaling-only run.
    pub max_p95_join_ms: Option<f64>,
}

/// Consecutive unanswered health probes (one a second) after which the run gives up.
const UNREACHABLE_PROBES: u32 = 3;
/// Sign-ins at once (each costs the service an Argon2 verification).
const SIGN_IN_CONCURRENCY: usize = 4;
/// Most samples kept in the report per distribution (percentiles use them all).
const MAX_KEPT_SAMPLES: usize = 5000;

/// Run `plan` against `target`. `interrupt` cut short the run (Ctrl-C): consultations hang up
/// and the report says so. Problems of the service (unreachable, refusing sign-in) end in a
/// report with [`Outcome::Aborted`], not an error; errors are for plans that cannot start.
pub async fn run(
    plan: Plan,
    target: Target,
    thresholds: &Thresholds,
    interrupt: CancellationToken,
    show_progress: bool,
) -> Result<Report, LoadError> {
    if plan.consultations == 0 {
        return Err(LoadError::Plan(
            "at least one consultation is needed".into(),
        ));
    }
    if !(plan.ramp_per_sec.is_finite() && plan.ramp_per_sec > 0.0) {
        return Err(LoadError::Plan(
            "the ramp-up rate must be above zero".into(),
        ));
    }
    if target.clinicians.len() < plan.consultations {
        return Err(LoadError::NotEnoughClinicians {
            needed: plan.consultations,
            have: target.clinicians.len(),
        });
    }
    let epoch = Instant::now();
    let cpu_at_start = crate::usage::cpu_secs();
    let mut service = ApiClient::new(&target.base_url)?;
    if let Some(token) = &target.metrics_token {
        service = service.with_metrics_token(token.clone());
    }
    let mut report = empty_report(&plan, &target);
    let progress = Progress::new(&plan, show_progress);

    progress.phase("reaching the service");
    if let Err(e) = service.healthz().await {
        return Ok(abort(
            report,
            epoch,
            format!("cannot reach the service: {e}"),
        ));
    }
    let baseline = service.metrics().await.ok();

    progress.phase("encoding the media loops");
    let (video, audio, seed) = (plan.video, plan.audio && !plan.signaling_only, plan.seed);
    let video = if plan.signaling_only {
        crate::plan::VideoProfile::Off
    } else {
        video
    };
    let media =
        tokio::task::spawn_blocking(move || MediaLoop::encode(video, audio, seed)).await??;

    progress.phase("signing in");
    let live = Arc::new(Mutex::new(LiveState::default()));
    let recording_keys = plan.e2ee && plan.recorded && !plan.signaling_only;
    let signing_in = sign_in(
        &service,
        &target.clinicians[..plan.consultations],
        recording_keys,
        &progress,
        &live,
    );
    let signed = tokio::select! {
        signed = signing_in => signed,
        _ = interrupt.cancelled() => {
            report.outcome = Outcome::Interrupted;
            report.message = Some("interrupted while signing in: no consultation was started".into());
            report.elapsed_secs = epoch.elapsed().as_secs_f64();
            progress.finish();
            return Ok(report);
        }
    };
    let mut sign_in_ms = Vec::new();
    let mut tokens = Vec::new();
    let mut refusal = None;
    for (index, result) in signed.into_iter().enumerate() {
        match result {
            SignIn::Done { token, took } => {
                sign_in_ms.push(took);
                tokens.push(Some((token, took)));
            }
            SignIn::Failed(e) => {
                refusal.get_or_insert_with(|| {
                    format!("sign-in failed for {}: {e}", target.clinicians[index].email)
                });
                let failure = Failure {
                    consultation: index,
                    cause: FailureCause::SignIn,
                    message: e.to_string(),
                    at_secs: epoch.elapsed().as_secs_f64(),
                };
                report.consultations.push(ConsultationRow {
                    index,
                    failure: Some(failure),
                    ..Default::default()
                });
                tokens.push(None);
            }
            SignIn::Skipped => tokens.push(None),
        }
    }
    report.figures.sign_in_ms = Distribution::of("ms", sign_in_ms);
    report.counts.signed_in = tokens.iter().flatten().count() as u64;
    let signed_in: Vec<String> = tokens.iter().flatten().map(|(t, _)| t.clone()).collect();
    if let Some(why) = refusal {
        sign_out(&service, &signed_in).await;
        report.counts.failed = report.consultations.len() as u64;
        finish_failures(&mut report);
        let report = abort(
            report,
            epoch,
            format!("{why} — check the URL and the clinicians' credentials"),
        );
        return Ok(judge(report, thresholds));
    }

    progress.phase("joining");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(plan.seed);
    let gap = 1.0 / plan.ramp_per_sec;
    let mut offsets = Vec::with_capacity(plan.consultations);
    let mut at = 0.0;
    for i in 0..plan.consultations {
        if i > 0 {
            at += gap * rng.gen_range(0.5..1.5);
        }
        offsets.push(Duration::from_secs_f64(at));
    }
    // Memory is compared with what the service held once everyone had signed in: sign-in
    // costs (Argon2) are not the consultations'.
    let before_ramp = service.metrics().await.ok();
    let ramp_start = tokio::time::Instant::now();
    let ramp_end = ramp_start + offsets.last().copied().unwrap_or_default();
    let end_at = ramp_end + plan.duration;
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        service: service.clone(),
        media,
        epoch,
        end_at,
        interrupted: interrupt.clone(),
        aborted: CancellationToken::new(),
        abort_reason: Mutex::new(None),
        live: live.clone(),
        bind_ip: target.bind_ip,
    });
    let monitor_stop = CancellationToken::new();
    let monitor = tokio::spawn(monitor(
        shared.clone(),
        baseline.clone(),
        ramp_end,
        progress.clone(),
        monitor_stop.clone(),
    ));
    let mut calls = JoinSet::new();
    for (index, token) in tokens.into_iter().enumerate() {
        let Some((token, took)) = token else { continue };
        tokio::select! {
            _ = tokio::time::sleep_until(ramp_start + offsets[index]) => {}
            _ = interrupt.cancelled() => break,
            _ = shared.aborted.cancelled() => break,
        }
        calls.spawn(consultation::run(shared.clone(), index, token, took));
    }
    let mut outcomes = Vec::new();
    while let Some(done) = calls.join_next().await {
        match done {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => tracing::error!(error = %e, "a consultation task failed"),
        }
    }
    progress.phase("finishing");
    sign_out(&service, &signed_in).await;
    monitor_stop.cancel();
    let watched = monitor.await.unwrap_or_default();
    let after = service.metrics().await.ok();

    // Assemble.
    let mut samples = consultation::Samples::default();
    let mut joins = 0;
    for outcome in outcomes {
        joins += outcome.joins;
        samples.rtt_ms.extend(outcome.samples.rtt_ms);
        samples.jitter_ms.extend(outcome.samples.jitter_ms);
        samples
            .frame_delay_ms
            .extend(outcome.samples.frame_delay_ms);
        report.consultations.push(outcome.row);
    }
    report.consultations.sort_by_key(|row| row.index);
    let live = live.lock().unwrap_or_else(|p| p.into_inner());
    report.counts.joins = joins;
    fill_figures(&mut report, samples);
    fill_counts(&mut report, &live);
    report.timeline = watched.timeline.clone();
    report.service = service_report(
        &watched,
        baseline.as_ref(),
        before_ramp.as_ref(),
        after.as_ref(),
        joins,
        live.reconnects,
        &target,
    );
    report.media.keyframe_requests = live.keyframe_requests;
    report.media.sends_dropped = live.sends_dropped;
    report.media.signaling_reconnects = live.reconnects;
    drop(live);
    report.generator = crate::usage::process_usage(cpu_at_start, epoch.elapsed());
    report.elapsed_secs = epoch.elapsed().as_secs_f64();
    let abort_reason = shared
        .abort_reason
        .lock()
        .ok()
        .and_then(|r| r.clone())
        .map(|(reason, _)| reason);
    (report.outcome, report.message) = if let Some(reason) = abort_reason {
        (Outcome::Aborted, Some(reason))
    } else if interrupt.is_cancelled() {
        let counts = &report.counts;
        let message = if counts.not_ended == 0 {
            format!(
                "interrupted: every consultation started was hung up and ended ({})",
                counts.ended
            )
        } else {
            format!(
                "interrupted: every consultation started was hung up; {} ended, {} could not be",
                counts.ended, counts.not_ended
            )
        };
        (Outcome::Interrupted, Some(message))
    } else {
        (Outcome::Completed, None)
    };
    progress.finish();
    Ok(judge(report, thresholds))
}

/// Sign every clinician out again (best effort: the service may be gone).
async fn sign_out(service: &ApiClient, tokens: &[String]) {
    let mut tasks = JoinSet::new();
    for token in tokens {
        let (service, token) = (service.clone(), token.clone());
        tasks.spawn(async move { service.sign_out(&token).await });
    }
    while tasks.join_next().await.is_some() {}
}

enum SignIn {
    Done { token: String, took: f64 },
    Failed(ApiError),
    Skipped,
}

async fn sign_in(
    service: &ApiClient,
    clinicians: &[ClinicianLogin],
    recording_keys: bool,
    progress: &Progress,
    live: &Arc<Mutex<LiveState>>,
) -> Vec<SignIn> {
    let permits = Arc::new(tokio::sync::Semaphore::new(SIGN_IN_CONCURRENCY));
    let refused = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    for (index, login) in clinicians.iter().cloned().enumerate() {
        let (service, permits, refused) = (service.clone(), permits.clone(), refused.clone());
        let (progress, live) = (progress.clone(), live.clone());
        tasks.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return (index, SignIn::Skipped);
            };
            // After one refusal, stop: more attempts would only lock the accounts.
            if refused.load(Ordering::SeqCst) {
                return (index, SignIn::Skipped);
            }
            let started = Instant::now();
            let mut result = service.sign_in(&login).await;
            if let (Ok(token), true) = (&result, recording_keys)
                && let Err(e) = ensure_recording_key(&service, token).await
            {
                result = Err(e);
            }
            progress.signed_in();
            match result {
                Ok(token) => {
                    live.lock().unwrap_or_else(|p| p.into_inner()).signed_in += 1;
                    let took = started.elapsed().as_secs_f64() * 1000.0;
                    (index, SignIn::Done { token, took })
                }
                Err(e) => {
                    refused.store(true, Ordering::SeqCst);
                    (index, SignIn::Failed(e))
                }
            }
        });
    }
    let mut results: Vec<SignIn> = clinicians.iter().map(|_| SignIn::Skipped).collect();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((index, result)) = joined {
            results[index] = result;
        }
    }
    results
}

/// What the monitor saw.
#[derive(Default, Clone)]
struct Watched {
    timeline: Vec<TimelinePoint>,
    healthz_ms: Vec<f64>,
    healthz_failures: u64,
    active_at_hold: Option<(i64, u64)>,
    peak_rss: Option<f64>,
    hold_cpu_per_consultation: Vec<f64>,
}

async fn monitor(
    shared: Arc<Shared>,
    baseline: Option<MetricsSnapshot>,
    ramp_end: tokio::time::Instant,
    progress: Progress,
    stop: CancellationToken,
) -> Watched {
    let mut watched = Watched::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut unanswered = 0;
    // CPU figures are differences between samples a second apart; the first sample has none.
    let mut last_cpu: Option<(Instant, f64)> = None;
    let mut last_own = (Instant::now(), crate::usage::cpu_secs());
    tick.tick().await;
    let hold_middle = ramp_end + (shared.end_at - ramp_end) / 2;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return watched,
        }
        let now = Instant::now();
        let mut point = TimelinePoint {
            t_secs: shared.epoch.elapsed().as_secs_f64(),
            ..Default::default()
        };
        match shared.service.healthz().await {
            Ok(took) => {
                unanswered = 0;
                let ms = took.as_secs_f64() * 1000.0;
                watched.healthz_ms.push(ms);
                point.healthz_ms = Some(ms);
            }
            Err(e) => {
                unanswered += 1;
                watched.healthz_failures += 1;
                // Only while consultations hold: a service slow to answer during the
                // teardown does not turn a completed run into an aborted one.
                let holding = tokio::time::Instant::now() < shared.end_at;
                if unanswered >= UNREACHABLE_PROBES && holding && !shared.aborted.is_cancelled() {
                    if let Ok(mut reason) = shared.abort_reason.lock() {
                        *reason = Some((
                            format!(
                                "the service stopped answering ({UNREACHABLE_PROBES} health probes in a row): {e}"
                            ),
                            now,
                        ));
                    }
                    shared.aborted.cancel();
                }
            }
        }
        let planned = shared.plan.consultations as u64;
        let settled_before = shared.live().settled_connected(planned);
        let metrics = shared.service.metrics().await;
        // Compared only when nothing changed on our side while the service answered.
        let settled =
            settled_before.filter(|&c| shared.live().settled_connected(planned) == Some(c));
        if let Ok(metrics) = metrics {
            let now = Instant::now();
            let base = baseline.clone().unwrap_or_default();
            point.service_active_consultations =
                Some(metrics.active_consultations - base.active_consultations);
            point.service_joins = Some(metrics.joins.saturating_sub(base.joins));
            if let (Some(cpu), Some((at, before))) = (metrics.cpu_secs, last_cpu) {
                let secs = (now - at).as_secs_f64();
                if secs > 0.0 {
                    point.service_cpu_percent = Some((cpu - before) / secs * 100.0);
                }
            }
            last_cpu = metrics.cpu_secs.map(|c| (now, c));
            point.service_rss_mib = metrics.rss_bytes.map(|b| b / 1_048_576.0);
            if let Some(rss) = point.service_rss_mib {
                watched.peak_rss = Some(watched.peak_rss.map_or(rss, |p: f64| p.max(rss)));
            }
        }
        let own = crate::usage::cpu_secs();
        let now = Instant::now();
        let secs = (now - last_own.0).as_secs_f64();
        if secs > 0.0 {
            point.generator_cpu_percent = Some((own - last_own.1) / secs * 100.0);
        }
        last_own = (now, own);
        let active = {
            let live = shared.live();
            let (kbps, loss) = live.receiving();
            point.joined = live.admitted;
            point.active = live.connected;
            point.failed = live.failed;
            point.received_kbps = kbps;
            point.packet_loss_percent = loss;
            progress.update(&live, &point, shared.end_at);
            live.connected
        };
        let holding =
            tokio::time::Instant::now() >= ramp_end && tokio::time::Instant::now() < shared.end_at;
        if holding
            && active > 0
            && let Some(cpu) = point.service_cpu_percent
        {
            watched.hold_cpu_per_consultation.push(cpu / active as f64);
        }
        if watched.active_at_hold.is_none()
            && holding
            && tokio::time::Instant::now() >= hold_middle
            && let (Some(service_active), Some(ours @ 1..)) =
                (point.service_active_consultations, settled)
        {
            watched.active_at_hold = Some((service_active, ours));
        }
        watched.timeline.push(point);
    }
}

fn empty_report(plan: &Plan, target: &Target) -> Report {
    Report {
        format: REPORT_FORMAT,
        started_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        elapsed_secs: 0.0,
        target: target.base_url.clone(),
        plan: plan.clone(),
        outcome: Outcome::Completed,
        message: None,
        counts: Counts {
            planned: plan.consultations as u64,
            ..Default::default()
        },
        failures: FailureCause::ALL.iter().map(|c| (*c, 0)).collect(),
        failure_examples: Vec::new(),
        figures: Figures::default(),
        media: MediaTotals::default(),
        timeline: Vec::new(),
        service: ServiceReport::default(),
        generator: ProcessUsage::default(),
        thresholds: Vec::new(),
        consultations: Vec::new(),
    }
}

fn abort(mut report: Report, epoch: Instant, message: String) -> Report {
    report.outcome = Outcome::Aborted;
    report.message = Some(message);
    report.elapsed_secs = epoch.elapsed().as_secs_f64();
    report
}

fn finish_failures(report: &mut Report) {
    for row in &report.consultations {
        if let Some(failure) = &row.failure {
            *report.failures.entry(failure.cause).or_default() += 1;
            if report.failure_examples.len() < 50 {
                report.failure_examples.push(failure.clone());
            }
        }
    }
}

fn thin(mut d: Distribution) -> Distribution {
    if d.samples.len() > MAX_KEPT_SAMPLES {
        let step = d.samples.len().div_ceil(MAX_KEPT_SAMPLES);
        d.samples = d.samples.iter().step_by(step).copied().collect();
    }
    d
}

fn fill_figures(report: &mut Report, samples: consultation::Samples) {
    let rows = &report.consultations;
    let per_row = |f: fn(&ConsultationRow) -> Option<f64>| rows.iter().filter_map(f).collect();
    let receivers: Vec<_> = rows.iter().flat_map(|r| r.receivers.iter()).collect();
    let per_receiver = |f: &dyn Fn(&crate::report::ReceiverRow) -> Option<f64>| {
        receivers.iter().filter_map(|r| f(r)).collect::<Vec<f64>>()
    };
    let figures = &mut report.figures;
    figures.waiting_room_ms = Distribution::of("ms", per_row(|r| r.waiting_room_ms));
    figures.admission_ms = Distribution::of("ms", per_row(|r| r.admission_ms));
    figures.connect_ms = Distribution::of("ms", per_row(|r| r.connect_ms));
    figures.first_frame_ms = Distribution::of("ms", per_row(|r| r.first_frame_ms));
    figures.packet_loss_percent = Distribution::of("%", per_receiver(&|r| r.packet_loss_percent));
    figures.frame_loss_percent = Distribution::of(
        "%",
        per_receiver(&|r| {
            let seen = r.counts.video_frames_intact + r.counts.video_frames_missing;
            (seen > 0).then(|| r.counts.video_frames_missing as f64 * 100.0 / seen as f64)
        }),
    );
    figures.received_kbps = Distribution::of("kbit/s", per_receiver(&|r| r.received_kbps));
    figures.frozen_ms = Distribution::of("ms", per_receiver(&|r| r.frozen_ms));
    figures.jitter_ms = thin(Distribution::of("ms", samples.jitter_ms));
    figures.rtt_ms = thin(Distribution::of("ms", samples.rtt_ms));
    figures.frame_delay_ms = thin(Distribution::of("ms", samples.frame_delay_ms));
    for r in &receivers {
        report.media.counts += &r.counts;
    }
}

fn fill_counts(report: &mut Report, live: &LiveState) {
    let rows = &report.consultations;
    let counts = &mut report.counts;
    counts.started = live.started;
    counts.created = rows.iter().filter(|r| r.id.is_some()).count() as u64;
    counts.admitted = rows.iter().filter(|r| r.admission_ms.is_some()).count() as u64;
    counts.connected = if report.plan.signaling_only {
        counts.admitted
    } else {
        rows.iter().filter(|r| r.connect_ms.is_some()).count() as u64
    };
    counts.first_frame = rows.iter().filter(|r| r.first_frame_ms.is_some()).count() as u64;
    counts.failed = rows.iter().filter(|r| r.failure.is_some()).count() as u64;
    // Succeeded: reached media (or admission, signaling only) and did not fail. A consultation
    // cut short by Ctrl-C before that neither failed nor succeeded.
    let signaling_only = report.plan.signaling_only;
    counts.succeeded = rows
        .iter()
        .filter(|r| r.failure.is_none())
        .filter(|r| {
            if signaling_only {
                r.admission_ms.is_some()
            } else {
                r.first_frame_ms.is_some()
            }
        })
        .count() as u64;
    counts.ended = rows.iter().filter(|r| r.ended).count() as u64;
    counts.not_ended = rows.iter().filter(|r| r.id.is_some() && !r.ended).count() as u64;
    finish_failures(report);
}

fn service_report(
    watched: &Watched,
    baseline: Option<&MetricsSnapshot>,
    before_ramp: Option<&MetricsSnapshot>,
    after: Option<&MetricsSnapshot>,
    expected_joins: u64,
    reconnects: u64,
    target: &Target,
) -> ServiceReport {
    let mut service = ServiceReport {
        expected_joins,
        active_at_hold: watched.active_at_hold,
        healthz_ms: Distribution::of("ms", watched.healthz_ms.clone()),
        healthz_failures: watched.healthz_failures,
        peak_rss_mib: watched.peak_rss,
        ..Default::default()
    };
    if let (Some(before), Some(after)) = (baseline, after) {
        service.joins = Some(after.joins.saturating_sub(before.joins));
        service.cpu_secs = after.cpu_secs.zip(before.cpu_secs).map(|(a, b)| a - b);
        service.alerts_raised = Some(after.alerts_raised.saturating_sub(before.alerts_raised));
    }
    service.baseline_rss_mib = before_ramp
        .or(baseline)
        .and_then(|m| m.rss_bytes)
        .map(|b| b / 1_048_576.0);
    service.rss_before_sign_in_mib = baseline.and_then(|m| m.rss_bytes).map(|b| b / 1_048_576.0);
    let mut problems = Vec::new();
    match service.joins {
        Some(joins) if joins == expected_joins => {}
        Some(joins) if reconnects > 0 && joins >= expected_joins => {}
        Some(joins) => problems.push(format!(
            "the service counted {joins} joins, the generator made {expected_joins}"
        )),
        None => {}
    }
    if let Some((theirs, ours)) = watched.active_at_hold
        && theirs != ours as i64
    {
        problems.push(format!(
            "mid-hold the service had {theirs} active consultations, the generator {ours}"
        ));
    }
    if service.joins.is_some() || watched.active_at_hold.is_some() {
        service.metrics_agree = Some(problems.is_empty());
        service.disagreement = (!problems.is_empty()).then(|| problems.join("; "));
    }
    if !watched.hold_cpu_per_consultation.is_empty() {
        let cpu = &watched.hold_cpu_per_consultation;
        service.cpu_percent_per_consultation = Some(cpu.iter().sum::<f64>() / cpu.len() as f64);
    }
    let peak_active = watched.timeline.iter().map(|p| p.active).max().unwrap_or(0);
    if let (Some(peak), Some(base), true) = (
        service.peak_rss_mib,
        service.baseline_rss_mib,
        peak_active > 0,
    ) {
        service.rss_mib_per_consultation = Some((peak - base).max(0.0) / peak_active as f64);
    }
    service.log = target.service_log.as_ref().map(|path| scan_log(path));
    service.pid = target.service_pid;
    service
}

/// Count error lines and panics in a service log.
pub fn scan_log(path: &std::path::Path) -> ServiceLog {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut log = ServiceLog {
        path: path.display().to_string(),
        ..Default::default()
    };
    for line in text.lines() {
        let panic = line.contains("panicked at");
        let error = line.contains(" ERROR ");
        log.errors += u64::from(error);
        log.panics += u64::from(panic);
        if (panic || error) && log.examples.len() < 10 {
            log.examples.push(line.chars().take(300).collect());
        }
    }
    log
}

/// Check the thresholds.
fn judge(mut report: Report, thresholds: &Thresholds) -> Report {
    if let Some(limit) = thresholds.max_failures {
        let measured = report.counts.failed as f64;
        report.thresholds.push(ThresholdResult {
            name: "max_failures".into(),
            limit: limit as f64,
            measured: Some(measured),
            passed: measured <= limit as f64,
        });
    }
    if let Some(limit) = thresholds.max_p95_join_ms {
        let measured = if report.plan.signaling_only {
            report.figures.admission_ms.p95
        } else {
            report.figures.first_frame_ms.p95
        };
        report.thresholds.push(ThresholdResult {
            name: "max_p95_join_ms".into(),
            limit,
            measured,
            passed: measured.is_some_and(|m| m <= limit),
        });
    }
    report
}

/// End-to-end encrypted recordings need the clinician's recording key. When the account has
/// none, register a throwaway one whose private half is dropped at once: such load recordings
/// can never be opened. An account that has a key keeps it.
async fn ensure_recording_key(service: &ApiClient, token: &str) -> Result<(), ApiError> {
    if service.recording_key(token).await?.is_some() {
        return Ok(());
    }
    let throwaway = consult_e2ee::recording_key::RecordingKeyPair::generate(&mut rand::rngs::OsRng);
    service
        .set_recording_key(token, &throwaway.public().to_base64())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            base_url: "http://127.0.0.1:1".into(),
            clinicians: Vec::new(),
            bind_ip: None,
            service_log: None,
            service_pid: None,
            metrics_token: None,
        }
    }

    #[test]
    fn thresholds_and_outcomes_decide_the_exit_code() {
        let plan = Plan::default();
        let thresholds = Thresholds {
            max_failures: Some(1),
            max_p95_join_ms: Some(1000.0),
        };
        let mut report = empty_report(&plan, &target());
        report.figures.first_frame_ms = Distribution::of("ms", vec![200.0, 300.0, 900.0]);
        report.counts.failed = 1;
        let report = judge(report, &thresholds);
        assert!(report.thresholds.iter().all(|t| t.passed));
        assert_eq!(report.exit_code(), 0);

        let mut slow = empty_report(&plan, &target());
        slow.figures.first_frame_ms = Distribution::of("ms", vec![200.0, 1500.0]);
        slow.counts.failed = 2;
        let slow = judge(slow, &thresholds);
        assert_eq!(
            slow.thresholds.iter().map(|t| t.passed).collect::<Vec<_>>(),
            vec![false, false]
        );
        assert_eq!(slow.exit_code(), 1);

        // Nothing measured is no evidence the limit held.
        let empty = judge(empty_report(&plan, &target()), &thresholds);
        assert_eq!(empty.thresholds[1].measured, None);
        assert!(!empty.thresholds[1].passed);

        let mut interrupted = judge(empty_report(&plan, &target()), &Thresholds::default());
        interrupted.outcome = Outcome::Interrupted;
        assert_eq!(interrupted.exit_code(), 130);
        let aborted = abort(
            empty_report(&plan, &target()),
            Instant::now(),
            "gone".into(),
        );
        assert_eq!(aborted.exit_code(), 1);
    }

    #[test]
    fn a_log_with_error_lines_and_a_panic_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("service.log");
        std::fs::write(
            &path,
            "2026-11-24T10:00:00Z  INFO consult: listening\n\
             2026-11-24T10:00:01Z ERROR consult_signaling::signal: hub stalled\n\
             thread 'tokio-runtime-worker' panicked at signaling/src/x.rs:1:1:\n\
             2026-11-24T10:00:02Z  WARN consult: slow\n",
        )
        .unwrap();
        let log = scan_log(&path);
        assert_eq!((log.errors, log.panics), (1, 1));
        assert_eq!(log.examples.len(), 2);
        let missing = scan_log(&dir.path().join("absent.log"));
        assert_eq!((missing.errors, missing.panics), (0, 0));
    }

    #[test]
    fn the_service_report_says_where_metrics_disagree() {
        let before = MetricsSnapshot {
            joins: 10,
            active_consultations: 1,
            cpu_secs: Some(2.0),
            rss_bytes: Some(50.0 * 1_048_576.0),
            alerts_raised: 1,
        };
        let after = MetricsSnapshot {
            joins: 18,
            active_consultations: 1,
            cpu_secs: Some(5.0),
            rss_bytes: Some(60.0 * 1_048_576.0),
            alerts_raised: 3,
        };
        let watched = Watched {
            active_at_hold: Some((4, 4)),
            ..Default::default()
        };
        let agreeing = service_report(&watched, Some(&before), None, Some(&after), 8, 0, &target());
        assert_eq!(agreeing.metrics_agree, Some(true));
        assert_eq!(agreeing.joins, Some(8));
        assert_eq!(agreeing.cpu_secs, Some(3.0));
        assert_eq!(
            agreeing.alerts_raised,
            Some(2),
            "alerts raised during the run"
        );
        let short = service_report(
            &watched,
            Some(&before),
            None,
            Some(&after),
            10,
            0,
            &target(),
        );
        assert_eq!(short.metrics_agree, Some(false));
        assert!(short.disagreement.unwrap().contains("counted 8 joins"));
        let watched = Watched {
            active_at_hold: Some((3, 4)),
            ..Default::default()
        };
        let fewer = service_report(&watched, Some(&before), None, Some(&after), 8, 0, &target());
        assert!(fewer
            .disagreement
            .unwrap()
            .contains("3 active consultations"));
    }
}
