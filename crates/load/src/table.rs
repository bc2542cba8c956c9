//! The terminal summary of a run: a few plain-text tables (comfy-table) drawn from a [`Report`].

use crate::report::text::{num, opt, DASH};
use std::fmt::Write;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, Table};

use crate::report::{Distribution, FailureCause, Report};

/// Renders `report` as plain text for the terminal: the outcome, the counts, failures by cause,
/// one row per figure, media totals, the service's figures and the thresholds.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Outcome: {} – {} of {} consultations succeeded, {} failed",
        crate::report::outcome_str(report.outcome),
        report.counts.succeeded,
        report.counts.planned,
        report.counts.failed,
    );
    let _ = writeln!(
        out,
        "Target {}, started {}, {} s",
        report.target,
        report.started_at,
        num(report.elapsed_secs),
    );
    if let Some(message) = &report.message {
        let _ = writeln!(out, "  {message}");
    }

    let c = &report.counts;
    let _ = writeln!(
        out,
        "\nConsultations: planned {}, started {}, created {}, admitted {}, connected {}, \
         first frame {}, succeeded {}, failed {}",
        c.planned,
        c.started,
        c.created,
        c.admitted,
        c.connected,
        c.first_frame,
        c.succeeded,
        c.failed
    );
    let _ = writeln!(
        out,
        "Teardown: ended {}, not ended {}; clinicians signed in {}, signaling joins {}",
        c.ended, c.not_ended, c.signed_in, c.joins
    );
    let causes: Vec<String> = FailureCause::ALL
        .iter()
        .map(|cause| {
            let count = report.failures.get(cause).copied().unwrap_or(0);
            format!("{} {count}", cause.as_str())
        })
        .collect();
    let _ = writeln!(out, "Failures by cause: {}", causes.join(", "));
    for failure in report.failure_examples.iter().take(5) {
        let _ = writeln!(
            out,
            "  consultation {} ({}, at {:.1} s): {}",
            failure.consultation,
            failure.cause.as_str(),
            failure.at_secs,
            failure.message
        );
    }
    if report.failure_examples.len() > 5 {
        let _ = writeln!(
            out,
            "  ... and {} more in the reports",
            report.failure_examples.len() - 5
        );
    }

    let mut figures = table(&["Figure", "Unit", "Count", "p50", "p95", "p99", "Max"]);
    for (name, d) in report.figures.named() {
        figures.add_row(figure_row(name, d));
    }
    right_align(&mut figures, 2..7);
    let _ = writeln!(out, "\n{figures}");

    let m = &report.media;
    let mut media = table(&["Media", "Sent", "Intact", "Missing", "Corrupt", "Decoded"]);
    media.add_row(vec![
        "video frames".to_owned(),
        m.counts.video_frames_sent.to_string(),
        m.counts.video_frames_intact.to_string(),
        m.counts.video_frames_missing.to_string(),
        m.counts.video_frames_corrupt.to_string(),
        m.counts.video_frames_decoded.to_string(),
    ]);
    media.add_row(vec![
        "audio packets".to_owned(),
        m.counts.audio_packets_sent.to_string(),
        m.counts.audio_packets_intact.to_string(),
        DASH.to_owned(),
        m.counts.audio_packets_corrupt.to_string(),
        DASH.to_owned(),
    ]);
    right_align(&mut media, 1..6);
    let _ = writeln!(out, "\n{media}");
    let _ = writeln!(
        out,
        "Decode errors {}, keyframe requests {}, signaling reconnects {}, sends dropped by an overloaded generator {}",
        m.counts.decode_errors, m.keyframe_requests, m.signaling_reconnects, m.sends_dropped
    );

    let s = &report.service;
    let mut service = table(&["Service", "Value"]);
    let agree = match (s.metrics_agree, &s.disagreement) {
        (Some(true), _) => "yes".to_owned(),
        (Some(false), Some(why)) => format!("NO: {why}"),
        (Some(false), None) => "NO".to_owned(),
        (None, _) => format!("{DASH} (not checked)"),
    };
    service.add_row(vec!["metrics agree".to_owned(), agree]);
    service.add_row(vec![
        "joins (service / expected)".to_owned(),
        format!(
            "{} / {}",
            s.joins.map_or_else(|| DASH.to_owned(), |j| j.to_string()),
            s.expected_joins
        ),
    ]);
    service.add_row(vec![
        "security alerts raised".to_owned(),
        s.alerts_raised
            .map_or_else(|| DASH.to_owned(), |n| n.to_string()),
    ]);
    service.add_row(vec![
        "CPU per consultation (% of a core)".to_owned(),
        opt(s.cpu_percent_per_consultation),
    ]);
    service.add_row(vec![
        "RSS per consultation (MiB)".to_owned(),
        opt(s.rss_mib_per_consultation),
    ]);
    service.add_row(vec![
        "RSS before / after sign-ins (MiB)".to_owned(),
        format!(
            "{} / {}",
            opt(s.rss_before_sign_in_mib),
            opt(s.baseline_rss_mib)
        ),
    ]);
    service.add_row(vec!["peak RSS (MiB)".to_owned(), opt(s.peak_rss_mib)]);
    service.add_row(vec![
        "/healthz p95 (ms), unanswered".to_owned(),
        format!("{}, {}", opt(s.healthz_ms.p95), s.healthz_failures),
    ]);
    if let Some(log) = &s.log {
        service.add_row(vec![
            "log errors / panics".to_owned(),
            format!("{} / {} ({})", log.errors, log.panics, log.path),
        ]);
    }
    let g = &report.generator;
    service.add_row(vec![
        "generator CPU (% of a core), peak RSS (MiB)".to_owned(),
        format!("{}, {}", num(g.cpu_percent), num(g.peak_rss_mib)),
    ]);
    let _ = writeln!(out, "\n{service}");

    if report.thresholds.is_empty() {
        out.push_str("\nThresholds: none given\n");
    } else {
        let mut thresholds = table(&["Threshold", "Limit", "Measured", "Result"]);
        for t in &report.thresholds {
            thresholds.add_row(vec![
                t.name.clone(),
                num(t.limit),
                opt(t.measured),
                if t.passed { "PASS" } else { "FAIL" }.to_owned(),
            ]);
        }
        right_align(&mut thresholds, 1..3);
        let _ = writeln!(out, "\n{thresholds}");
    }
    out
}

/// An empty table with a header.
fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    table
}

/// Right-aligns the numeric columns.
fn right_align(table: &mut Table, columns: std::ops::Range<usize>) {
    for index in columns {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// Name, unit, count, p50, p95, p99 and max.
fn figure_row(name: &str, d: &Distribution) -> Vec<String> {
    vec![
        name.to_owned(),
        d.unit.clone(),
        d.count.to_string(),
        opt(d.p50),
        opt(d.p95),
        opt(d.p99),
        opt(d.max),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::plan::Plan;
    use crate::report::Outcome;
    use crate::report::{
        Counts, Figures, MediaCounts, MediaTotals, ProcessUsage, ServiceReport, ThresholdResult,
        REPORT_FORMAT,
    };

    fn report(outcome: Outcome, samples: bool) -> Report {
        let ms = |v: &[f64]| Distribution::of("ms", if samples { v.to_vec() } else { vec![] });
        Report {
            format: REPORT_FORMAT,
            started_at: "2025-01-01T00:00:00Z".to_owned(),
            elapsed_secs: 12.0,
            target: "http://localhost:8080".to_owned(),
            plan: Plan::default(),
            outcome,
            message: (outcome != Outcome::Completed).then(|| "stopped by the user".to_owned()),
            counts: Counts {
                planned: 5,
                succeeded: 4,
                failed: 1,
                ..Counts::default()
            },
            failures: BTreeMap::from([(FailureCause::MediaTimeout, 1)]),
            failure_examples: vec![],
            figures: Figures {
                admission_ms: ms(&[40.0, 42.0, 45.0]),
                connect_ms: ms(&[300.0]),
                ..Figures::default()
            },
            media: MediaTotals {
                counts: MediaCounts {
                    video_frames_sent: 900,
                    video_frames_intact: 880,
                    ..MediaCounts::default()
                },
                ..MediaTotals::default()
            },
            timeline: vec![],
            service: ServiceReport {
                metrics_agree: Some(true),
                cpu_percent_per_consultation: Some(1.25),
                ..ServiceReport::default()
            },
            generator: ProcessUsage::default(),
            thresholds: vec![
                ThresholdResult {
                    name: "max_failures".to_owned(),
                    limit: 0.0,
                    measured: Some(1.0),
                    passed: false,
                },
                ThresholdResult {
                    name: "max_p95_join_ms".to_owned(),
                    limit: 2000.0,
                    measured: None,
                    passed: true,
                },
            ],
            consultations: vec![],
        }
    }

    #[test]
    fn shows_every_figure_and_the_outcome() {
        let text = render(&report(Outcome::Completed, true));
        assert!(text.contains("completed"));
        for name in Figures::NAMES {
            assert!(text.contains(name), "{name} missing");
        }
        for cause in FailureCause::ALL {
            assert!(text.contains(cause.as_str()));
        }
        assert!(text.contains("media_timeout 1"));
        assert!(text.contains("FAIL"));
        assert!(text.contains("PASS"));
        assert!(text.contains("42.0"));
        assert!(text.contains("1.2"));
    }

    #[test]
    fn shows_an_interrupted_run_without_samples() {
        let text = render(&report(Outcome::Interrupted, false));
        assert!(text.contains("interrupted"));
        assert!(text.contains("stopped by the user"));
        for name in Figures::NAMES {
            assert!(text.contains(name), "{name} missing");
        }
        assert!(text.contains(DASH));
    }
}
