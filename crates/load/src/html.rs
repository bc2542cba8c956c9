//! The HTML report: one self-contained page (inline CSS and SVG plots, no scripts, fonts or
//! images from elsewhere) showing every figure of a [`Report`].

use crate::report::text::{num, opt, DASH};
use std::fmt::Write;
use std::ops::Range;

use plotters::prelude::*;

use crate::report::{
    ConsultationRow, Distribution, FailureCause, Figures, Outcome, Report, TimelinePoint,
};

/// Size of a wide plot (timelines), in pixels.
const WIDE: (u32, u32) = (620, 330);

/// Size of a small plot (latency distributions), in pixels.
const SMALL: (u32, u32) = (400, 290);

/// Line colours (a colour-blind-friendly palette).
const BLUE: RGBColor = RGBColor(0, 114, 178);
const ORANGE: RGBColor = RGBColor(230, 159, 0);
const RED: RGBColor = RGBColor(213, 94, 0);
const GREEN: RGBColor = RGBColor(0, 158, 115);
const PURPLE: RGBColor = RGBColor(204, 121, 167);

/// The latency figures plotted as distributions.
const LATENCY_PLOTS: [&str; 4] = ["admission_ms", "connect_ms", "first_frame_ms", "sign_in_ms"];

const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 1.5em auto;
  max-width: 1300px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
h3 { margin-bottom: 0.4em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { width: 16em; }
tr.failed td { background: #fff3f0; }
.pass { color: #0a6b2d; font-weight: bold; }
.fail { color: #b3261e; font-weight: bold; }
.verdict { border: 3px solid #888; border-radius: 6px; padding: 0.3em 1.2em 0.8em; margin: 1em 0; }
.verdict.pass { border-color: #2e9e55; background: #f2fbf5; }
.verdict.fail { border-color: #c9483e; background: #fdf3f2; }
.verdict.pass, .verdict.fail { color: inherit; font-weight: normal; }
.headline { font-size: 1.6em; margin: 0.3em 0; }
.note { color: #666; font-style: italic; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plot { margin: 0; border: 1px solid #ddd; padding: 0.3em; background: #fff; }
.plot svg { max-width: 100%; height: auto; display: block; }
.plot .empty { padding: 1em 2em; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, 'DejaVu Sans Mono',
  monospace; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; }
.scroll { overflow-x: auto; }
td.id { white-space: nowrap; }
";

/// Renders `report` as one self-contained HTML page: a header with the plan, the verdict
/// (thresholds, counts, failures), a table of every figure, plots of the run over time and of
/// the latency distributions, media, service and generator figures, and one row per
/// consultation. Nothing in it loads from elsewhere, and it has no scripts.
pub fn render(report: &Report) -> String {
    let mut out = String::with_capacity(64 * 1024 + report.consultations.len() * 512);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(
        out,
        "<title>Consult load report – {}</title>",
        escape(&report.started_at)
    );
    let _ = writeln!(out, "<style>{STYLE}</style>\n</head>\n<body>");
    header(&mut out, report);
    verdict(&mut out, report);
    figures(&mut out, report);
    plots(&mut out, report);
    media(&mut out, report);
    service(&mut out, report);
    generator(&mut out, report);
    consultations(&mut out, report);
    out.push_str("</body>\n</html>\n");
    out
}

/// Title, target, start, outcome and plan.
fn header(out: &mut String, report: &Report) {
    out.push_str("<h1>Consult load report</h1>\n");
    let outcome_class = if report.outcome == Outcome::Completed {
        "pass"
    } else {
        "fail"
    };
    let mut rows = vec![
        ("Target", format!("<code>{}</code>", escape(&report.target))),
        ("Started at", escape(&report.started_at)),
        ("Elapsed", format!("{} s", num(report.elapsed_secs))),
        (
            "Outcome",
            format!(
                "<span class=\"{outcome_class}\">{}</span>",
                crate::report::outcome_str(report.outcome)
            ),
        ),
    ];
    if let Some(message) = &report.message {
        rows.push(("Message", escape(message)));
    }
    rows.push(("Report format", report.format.to_string()));
    kv_table(out, &rows);

    let plan = &report.plan;
    out.push_str("<h2>Plan</h2>\n");
    kv_table(
        out,
        &[
            ("consultations", plan.consultations.to_string()),
            ("ramp_per_sec", format!("{} /s", num(plan.ramp_per_sec))),
            (
                "duration",
                format!("{} s", num(plan.duration.as_secs_f64())),
            ),
            ("video", plan.video.as_str().to_owned()),
            ("audio", yes_no(plan.audio).to_owned()),
            ("e2ee", yes_no(plan.e2ee).to_owned()),
            ("recorded", yes_no(plan.recorded).to_owned()),
            ("signaling_only", yes_no(plan.signaling_only).to_owned()),
            ("decode", plan.decode.to_string()),
            ("seed", plan.seed.to_string()),
            (
                "connect_timeout",
                format!("{} s", num(plan.connect_timeout.as_secs_f64())),
            ),
            (
                "media_timeout",
                format!("{} s", num(plan.media_timeout.as_secs_f64())),
            ),
        ],
    );
}

/// The verdict box: thresholds, counts, failures by cause and the failure examples.
fn verdict(out: &mut String, report: &Report) {
    let failed_thresholds = report.thresholds.iter().filter(|t| !t.passed).count();
    let (class, word, why) = match (report.outcome, failed_thresholds) {
        (Outcome::Completed, 0) if report.thresholds.is_empty() => (
            "pass",
            "PASS",
            "The run completed; no thresholds were given.".to_owned(),
        ),
        (Outcome::Completed, 0) => (
            "pass",
            "PASS",
            "The run completed and every threshold held.".to_owned(),
        ),
        (Outcome::Completed, n) => (
            "fail",
            "FAIL",
            format!("{n} of {} thresholds failed.", report.thresholds.len()),
        ),
        (outcome, _) => (
            "fail",
            "INCOMPLETE",
            format!("The run was {}.", crate::report::outcome_str(outcome)),
        ),
    };
    let _ = writeln!(out, "<section class=\"verdict {class}\">\n<h2>Verdict</h2>");
    let _ = writeln!(
        out,
        "<p class=\"headline\"><span class=\"{class}\">{word}</span> – {}</p>",
        escape(&why)
    );
    let c = &report.counts;
    let _ = writeln!(
        out,
        "<p>{} of {} planned consultations succeeded, {} failed.</p>",
        c.succeeded, c.planned, c.failed
    );

    out.push_str("<h3>Thresholds</h3>\n");
    if report.thresholds.is_empty() {
        out.push_str("<p class=\"note\">No thresholds were given.</p>\n");
    } else {
        out.push_str(
            "<table>\n<tr><th>Threshold</th><th class=\"num\">Limit</th>\
             <th class=\"num\">Measured</th><th>Result</th></tr>\n",
        );
        for t in &report.thresholds {
            let (class, word) = if t.passed {
                ("pass", "PASS")
            } else {
                ("fail", "FAIL")
            };
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"{class}\">{word}</td></tr>",
                escape(&t.name),
                num(t.limit),
                opt(t.measured),
            );
        }
        out.push_str("</table>\n");
    }

    out.push_str("<h3>Counts</h3>\n");
    let counts: [(&str, u64); 12] = [
        ("planned", c.planned),
        ("started", c.started),
        ("created", c.created),
        ("admitted", c.admitted),
        ("connected", c.connected),
        ("first_frame", c.first_frame),
        ("succeeded", c.succeeded),
        ("failed", c.failed),
        ("ended", c.ended),
        ("not_ended", c.not_ended),
        ("signed_in", c.signed_in),
        ("joins", c.joins),
    ];
    out.push_str("<table>\n<tr>");
    for (name, _) in &counts {
        let _ = write!(out, "<th class=\"num\">{name}</th>");
    }
    out.push_str("</tr>\n<tr>");
    for (_, count) in &counts {
        let _ = write!(out, "<td class=\"num\">{count}</td>");
    }
    out.push_str("</tr>\n</table>\n");

    out.push_str(
        "<h3>Failures by cause</h3>\n<table>\n\
         <tr><th>Cause</th><th class=\"num\">Count</th></tr>\n",
    );
    for cause in FailureCause::ALL {
        let count = report.failures.get(&cause).copied().unwrap_or(0);
        let class = if count > 0 { " class=\"fail\"" } else { "" };
        let _ = writeln!(
            out,
            "<tr><td><code>{}</code></td><td class=\"num\"><span{class}>{count}</span></td></tr>",
            cause.as_str()
        );
    }
    out.push_str("</table>\n");

    out.push_str("<h3>Failure examples</h3>\n");
    if report.failure_examples.is_empty() {
        out.push_str("<p class=\"note\">No failures.</p>\n");
    } else {
        let total: u64 = report.failures.values().sum();
        if total > report.failure_examples.len() as u64 {
            let _ = writeln!(
                out,
                "<p class=\"note\">The first {} of {total} failures.</p>",
                report.failure_examples.len()
            );
        }
        out.push_str(
            "<table>\n<tr><th class=\"num\">Consultation</th><th>Cause</th>\
             <th class=\"num\">At (s)</th><th>Message</th></tr>\n",
        );
        for f in &report.failure_examples {
            let _ = writeln!(
                out,
                "<tr><td class=\"num\">{}</td><td><code>{}</code></td><td class=\"num\">{}</td>\
                 <td>{}</td></tr>",
                f.consultation,
                f.cause.as_str(),
                num(f.at_secs),
                escape(&f.message)
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("</section>\n");
}

/// Every figure's distribution.
fn figures(out: &mut String, report: &Report) {
    out.push_str(
        "<h2>Figures</h2>\n<table>\n<tr><th>Figure</th><th>Description</th><th>Unit</th>\
         <th class=\"num\">Count</th><th class=\"num\">p50</th><th class=\"num\">p95</th>\
         <th class=\"num\">p99</th><th class=\"num\">Max</th></tr>\n",
    );
    for (name, d) in report.figures.named() {
        let _ = writeln!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td>{}</tr>",
            escape(name),
            escape(Figures::describe(name)),
            distribution_cells(d)
        );
    }
    out.push_str("</table>\n");
}

/// Unit, count, p50, p95, p99 and max as table cells.
fn distribution_cells(d: &Distribution) -> String {
    format!(
        "<td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td>",
        escape(&d.unit),
        d.count,
        opt(d.p50),
        opt(d.p95),
        opt(d.p99),
        opt(d.max)
    )
}

/// Every plot.
fn plots(out: &mut String, report: &Report) {
    let timeline = &report.timeline;
    let series = |f: fn(&TimelinePoint) -> Option<f64>| -> Vec<(f64, f64)> {
        timeline
            .iter()
            .filter_map(|p| f(p).map(|v| (p.t_secs, v)))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect()
    };

    out.push_str("<h2>Consultations over time</h2>\n<div class=\"plots\">\n");
    let mut lines = vec![
        Line::new("joined", BLUE, series(|p| Some(p.joined as f64))),
        Line::new("active", GREEN, series(|p| Some(p.active as f64))),
        Line::new("failed", RED, series(|p| Some(p.failed as f64))),
    ];
    let service_active = series(|p| p.service_active_consultations.map(|v| v as f64));
    if !service_active.is_empty() {
        lines.push(Line::new("active (service)", PURPLE, service_active));
    }
    out.push_str(&line_chart(
        "Joins over time",
        "time (s)",
        "consultations",
        WIDE,
        &lines,
    ));
    out.push_str("</div>\n");

    out.push_str("<h2>Latency distributions</h2>\n<div class=\"plots\">\n");
    for name in LATENCY_PLOTS {
        let d = report
            .figures
            .named()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| d);
        let samples = d.map(|d| d.samples.as_slice()).unwrap_or(&[]);
        let unit = d.map(|d| d.unit.as_str()).unwrap_or("ms");
        out.push_str(&cdf_chart(name, unit, samples));
    }
    out.push_str("</div>\n");

    out.push_str("<h2>Bitrate and loss over time</h2>\n<div class=\"plots\">\n");
    out.push_str(&line_chart(
        "Received bitrate (every receiver)",
        "time (s)",
        "kbit/s",
        WIDE,
        &[Line::new(
            "received_kbps",
            BLUE,
            series(|p| Some(p.received_kbps)),
        )],
    ));
    out.push_str(&line_chart(
        "Packet loss (mean over receivers)",
        "time (s)",
        "packet loss (%)",
        WIDE,
        &[Line::new(
            "packet_loss_percent",
            RED,
            series(|p| p.packet_loss_percent),
        )],
    ));
    out.push_str("</div>\n");

    out.push_str("<h2>Resources over time</h2>\n<div class=\"plots\">\n");
    let service_cpu = series(|p| p.service_cpu_percent);
    let generator_cpu = series(|p| p.generator_cpu_percent);
    let rss = series(|p| p.service_rss_mib);
    let healthz = series(|p| p.healthz_ms);
    if service_cpu.is_empty() && generator_cpu.is_empty() {
        out.push_str(&empty_plot("CPU", "not measured"));
    } else {
        out.push_str(&line_chart(
            "CPU",
            "time (s)",
            "CPU (% of one core)",
            WIDE,
            &[
                Line::new("service", BLUE, service_cpu),
                Line::new("generator", ORANGE, generator_cpu),
            ],
        ));
    }
    if rss.is_empty() {
        out.push_str(&empty_plot("Service resident memory", "not measured"));
    } else {
        out.push_str(&line_chart(
            "Service resident memory",
            "time (s)",
            "RSS (MiB)",
            WIDE,
            &[Line::new("service RSS", GREEN, rss)],
        ));
    }
    if !healthz.is_empty() {
        out.push_str(&line_chart(
            "/healthz answer time",
            "time (s)",
            "ms",
            WIDE,
            &[Line::new("healthz", PURPLE, healthz)],
        ));
    }
    out.push_str("</div>\n");
}

/// Media counters summed over every receiver.
fn media(out: &mut String, report: &Report) {
    let m = &report.media;
    out.push_str("<h2>Media totals</h2>\n");
    if report.plan.signaling_only {
        out.push_str("<p class=\"note\">Signaling-only run: no media was sent.</p>\n");
    }
    out.push_str(
        "<table>\n<tr><th></th><th class=\"num\">Sent</th><th class=\"num\">Intact</th>\
         <th class=\"num\">Missing</th><th class=\"num\">Corrupt</th>\
         <th class=\"num\">Decoded</th><th class=\"num\">Intact (%)</th></tr>\n",
    );
    let _ = writeln!(
        out,
        "<tr><th>Video frames</th><td class=\"num\">{}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td></tr>",
        m.counts.video_frames_sent,
        m.counts.video_frames_intact,
        m.counts.video_frames_missing,
        m.counts.video_frames_corrupt,
        m.counts.video_frames_decoded,
        opt(percent(
            m.counts.video_frames_intact,
            m.counts.video_frames_sent
        )),
    );
    let _ = writeln!(
        out,
        "<tr><th>Audio packets</th><td class=\"num\">{}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{DASH}</td><td class=\"num\">{}</td><td class=\"num\">{DASH}</td>\
         <td class=\"num\">{}</td></tr>",
        m.counts.audio_packets_sent,
        m.counts.audio_packets_intact,
        m.counts.audio_packets_corrupt,
        opt(percent(
            m.counts.audio_packets_intact,
            m.counts.audio_packets_sent
        )),
    );
    out.push_str("</table>\n");
    kv_table(
        out,
        &[
            ("Decode errors", m.counts.decode_errors.to_string()),
            ("Keyframe requests", m.keyframe_requests.to_string()),
            ("Signaling reconnects", m.signaling_reconnects.to_string()),
            (
                "Sends dropped (generator overloaded)",
                m.sends_dropped.to_string(),
            ),
        ],
    );
}

/// What the service said about itself.
fn service(out: &mut String, report: &Report) {
    let s = &report.service;
    out.push_str("<h2>Service</h2>\n");
    let agree = match s.metrics_agree {
        Some(true) => "<span class=\"pass\">yes</span>".to_owned(),
        Some(false) => "<span class=\"fail\">no</span>".to_owned(),
        None => format!("{DASH} (not checked)"),
    };
    let mut rows = vec![("Metrics agree", agree)];
    if let Some(why) = &s.disagreement {
        rows.push(("Disagreement", escape(why)));
    }
    rows.extend([
        (
            "Joins (service / expected)",
            format!(
                "{} / {}",
                s.joins.map_or_else(|| DASH.to_owned(), |j| j.to_string()),
                s.expected_joins
            ),
        ),
        (
            "Active at hold (service / generator)",
            s.active_at_hold
                .map_or_else(|| DASH.to_owned(), |(a, b)| format!("{a} / {b}")),
        ),
        ("CPU used (s)", opt(s.cpu_secs)),
        (
            "Security alerts raised",
            s.alerts_raised
                .map_or_else(|| DASH.to_owned(), |n| n.to_string()),
        ),
        (
            "CPU per consultation (% of one core)",
            opt(s.cpu_percent_per_consultation),
        ),
        ("RSS before sign-ins (MiB)", opt(s.rss_before_sign_in_mib)),
        (
            "Baseline RSS, after sign-ins (MiB)",
            opt(s.baseline_rss_mib),
        ),
        ("Peak RSS (MiB)", opt(s.peak_rss_mib)),
        (
            "RSS per consultation (MiB)",
            opt(s.rss_mib_per_consultation),
        ),
        (
            "/healthz probes without answer",
            s.healthz_failures.to_string(),
        ),
    ]);
    kv_table(out, &rows);

    out.push_str(
        "<h3>/healthz answer time</h3>\n<table>\n<tr><th>Unit</th><th class=\"num\">Count</th>\
         <th class=\"num\">p50</th><th class=\"num\">p95</th><th class=\"num\">p99</th>\
         <th class=\"num\">Max</th></tr>\n",
    );
    let _ = writeln!(
        out,
        "<tr>{}</tr>\n</table>",
        distribution_cells(&s.healthz_ms)
    );

    out.push_str("<h3>Service log</h3>\n");
    match &s.log {
        None => out.push_str(
            "<p class=\"note\">The service was not started by the generator: no log.</p>\n",
        ),
        Some(log) => {
            let errors = if log.errors > 0 {
                format!("<span class=\"fail\">{}</span>", log.errors)
            } else {
                log.errors.to_string()
            };
            let panics = if log.panics > 0 {
                format!("<span class=\"fail\">{}</span>", log.panics)
            } else {
                log.panics.to_string()
            };
            kv_table(
                out,
                &[
                    ("Log", format!("<code>{}</code>", escape(&log.path))),
                    ("Errors", errors),
                    ("Panics", panics),
                ],
            );
            if !log.examples.is_empty() {
                out.push_str("<pre>");
                for line in &log.examples {
                    let _ = writeln!(out, "{}", escape(line));
                }
                out.push_str("</pre>\n");
            }
        }
    }
}

/// The generator's own CPU and memory.
fn generator(out: &mut String, report: &Report) {
    let g = &report.generator;
    out.push_str("<h2>Generator</h2>\n");
    kv_table(
        out,
        &[
            ("CPU used (s)", num(g.cpu_secs)),
            ("Mean CPU (% of one core)", num(g.cpu_percent)),
            ("Peak RSS (MiB)", num(g.peak_rss_mib)),
        ],
    );
}

/// One row per consultation.
fn consultations(out: &mut String, report: &Report) {
    out.push_str("<h2>Consultations</h2>\n");
    if report.consultations.is_empty() {
        out.push_str("<p class=\"note\">No consultations.</p>\n");
        return;
    }
    out.push_str(
        "<div class=\"scroll\">\n<table>\n<tr><th class=\"num\">#</th><th>Id</th>\
         <th class=\"num\">Started (s)</th>\
         <th class=\"num\">Admitted (s)</th><th class=\"num\">admission_ms</th>\
         <th class=\"num\">connect_ms</th><th class=\"num\">first_frame_ms</th>\
         <th>Failure</th><th>Ended</th><th>Receiver</th><th class=\"num\">Intact</th>\
         <th class=\"num\">Missing</th><th class=\"num\">Corrupt</th>\
         <th class=\"num\">Loss (%)</th><th class=\"num\">Frozen (ms)</th></tr>\n",
    );
    for row in &report.consultations {
        consultation_row(out, row);
    }
    out.push_str("</table>\n</div>\n");
}

/// One consultation; its receivers are stacked in the receiver columns.
fn consultation_row(out: &mut String, row: &ConsultationRow) {
    let class = if row.failure.is_some() {
        " class=\"failed\""
    } else {
        ""
    };
    let id = row
        .id
        .map_or_else(|| DASH.to_owned(), |id| format!("<code>{id}</code>"));
    let failure = row.failure.as_ref().map_or_else(String::new, |f| {
        format!(
            "<span class=\"fail\">{}</span>: {}",
            f.cause.as_str(),
            escape(&f.message)
        )
    });
    let stacked = |f: &dyn Fn(&crate::report::ReceiverRow) -> String| -> String {
        row.receivers.iter().map(f).collect::<Vec<_>>().join("<br>")
    };
    let _ = writeln!(
        out,
        "<tr{class}><td class=\"num\">{}</td><td class=\"id\">{id}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td><td>{failure}</td><td>{}</td><td>{}</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
        row.index,
        num(row.started_at_secs),
        opt(row.admitted_at_secs),
        opt(row.admission_ms),
        opt(row.connect_ms),
        opt(row.first_frame_ms),
        yes_no(row.ended),
        stacked(&|r| escape(&r.side)),
        stacked(&|r| r.counts.video_frames_intact.to_string()),
        stacked(&|r| r.counts.video_frames_missing.to_string()),
        stacked(&|r| r.counts.video_frames_corrupt.to_string()),
        stacked(&|r| opt(r.packet_loss_percent)),
        stacked(&|r| opt(r.frozen_ms)),
    );
}

/// A two-column table; the values must already be HTML.
fn kv_table(out: &mut String, rows: &[(&str, String)]) {
    out.push_str("<table class=\"kv\">\n");
    for (key, value) in rows {
        let _ = writeln!(out, "<tr><th>{}</th><td>{value}</td></tr>", escape(key));
    }
    out.push_str("</table>\n");
}

/// One line of a line chart.
struct Line<'a> {
    label: &'a str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

impl<'a> Line<'a> {
    fn new(label: &'a str, color: RGBColor, points: Vec<(f64, f64)>) -> Self {
        let points = points
            .into_iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        Self {
            label,
            color,
            points,
        }
    }
}

/// A line chart of `lines` as an HTML fragment, or a "no data" note when none has a point.
fn line_chart(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    size: (u32, u32),
    lines: &[Line<'_>],
) -> String {
    let lines: Vec<&Line<'_>> = lines.iter().filter(|l| !l.points.is_empty()).collect();
    let points = || lines.iter().flat_map(|l| l.points.iter());
    let (Some(x), Some(y)) = (bounds(points().map(|p| p.0)), bounds(points().map(|p| p.1))) else {
        return empty_plot(title, "no data");
    };
    let x = widen(x);
    let y = y_axis(y);
    let mut svg = String::new();
    let drawn = draw_lines(&mut svg, size, title, x_desc, y_desc, x, y, &lines);
    plot_or_note(title, svg, drawn)
}

/// Draws a line chart into `buf`.
#[allow(clippy::too_many_arguments)]
fn draw_lines(
    buf: &mut String,
    size: (u32, u32),
    title: &str,
    x_desc: &str,
    y_desc: &str,
    x: Range<f64>,
    y: Range<f64>,
    lines: &[&Line<'_>],
) -> Result<(), String> {
    let x_tick = ticker(&x);
    let y_tick = ticker(&y);
    let root = SVGBackend::with_string(buf, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&x_tick)
        .y_label_formatter(&y_tick)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| e.to_string())?;
    for line in lines {
        let color = line.color;
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(line.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        if let [point] = line.points.as_slice() {
            // A line of one point draws nothing: mark the point.
            chart
                .draw_series(std::iter::once(Circle::new(*point, 4, color.filled())))
                .map_err(|e| e.to_string())?;
        }
    }
    if lines.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// The empirical CDF of `samples` (x: value, y: fraction of samples at or below it).
fn cdf_chart(name: &str, unit: &str, samples: &[f64]) -> String {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let title = format!("{name} (CDF)");
    let Some(x) = bounds(sorted.iter().copied()) else {
        return empty_plot(&title, "no samples");
    };
    let n = sorted.len() as f64;
    let mut points = Vec::with_capacity(sorted.len() * 2);
    for (i, v) in sorted.iter().enumerate() {
        points.push((*v, i as f64 / n));
        points.push((*v, (i + 1) as f64 / n));
    }
    let x_desc = format!("{name} ({unit})");
    let mut svg = String::new();
    let drawn = draw_cdf(&mut svg, &title, &x_desc, widen(x), &points);
    plot_or_note(&title, svg, drawn)
}

/// Draws a CDF into `buf`.
fn draw_cdf(
    buf: &mut String,
    title: &str,
    x_desc: &str,
    x: Range<f64>,
    points: &[(f64, f64)],
) -> Result<(), String> {
    let x_tick = ticker(&x);
    let root = SVGBackend::with_string(buf, SMALL).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(52)
        .build_cartesian_2d(x, 0.0..1.0)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("fraction")
        .x_label_formatter(&x_tick)
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .x_labels(6)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// The drawn SVG, or a short note when plotters failed.
fn plot_or_note(title: &str, svg: String, drawn: Result<(), String>) -> String {
    match drawn {
        Ok(()) => format!("<figure class=\"plot\">\n{svg}</figure>\n"),
        Err(e) => empty_plot(title, &format!("could not draw this plot: {e}")),
    }
}

/// A plot's place when there is nothing to draw.
fn empty_plot(title: &str, note: &str) -> String {
    format!(
        "<figure class=\"plot\"><div class=\"empty\"><strong>{}</strong>\
         <p class=\"note\">{}</p></div></figure>\n",
        escape(title),
        escape(note)
    )
}

/// Smallest and largest of `values`, or `None` when there are none.
fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// A range that is never empty: a single value gets some room either side.
fn widen((lo, hi): (f64, f64)) -> Range<f64> {
    if hi > lo {
        lo..hi
    } else {
        let pad = (lo.abs() * 0.1).max(1.0);
        (lo - pad)..(hi + pad)
    }
}

/// A y axis from zero (when every value is positive) with some headroom.
fn y_axis((lo, hi): (f64, f64)) -> Range<f64> {
    let lo = lo.min(0.0);
    if hi > lo {
        lo..(hi + (hi - lo) * 0.05)
    } else if lo == 0.0 {
        0.0..1.0
    } else {
        widen((lo, hi))
    }
}

/// Formats the labels of an axis spanning `range`, with as many decimals as it needs.
fn ticker(range: &Range<f64>) -> impl Fn(&f64) -> String + use<> {
    let span = range.end - range.start;
    let decimals = if span >= 20.0 {
        0
    } else if span >= 2.0 {
        1
    } else if span >= 0.2 {
        2
    } else {
        3
    };
    move |v: &f64| format!("{v:.decimals$}")
}

/// `part` of `whole`, in percent.
fn percent(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 * 100.0 / whole as f64)
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// `s` with `& < > " '` escaped, for HTML text and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::plan::Plan;
    use crate::report::{
        Counts, Failure, MediaCounts, MediaTotals, ProcessUsage, ReceiverRow, ServiceLog,
        ServiceReport, ThresholdResult, REPORT_FORMAT,
    };

    /// A report with `n` consultations (the last one failed) and `seconds` timeline points.
    fn sample_report(n: usize, seconds: usize) -> Report {
        let ms = |base: f64| -> Vec<f64> { (0..n).map(|i| base + i as f64 * 3.5).collect() };
        let failure = Failure {
            consultation: n.saturating_sub(1),
            cause: FailureCause::Ice,
            message: "no candidate pair <after 15 s> & \"gave up\"".to_owned(),
            at_secs: 4.2,
        };
        let receiver = |side: &str| ReceiverRow {
            side: side.to_owned(),
            counts: MediaCounts {
                video_frames_sent: 300,
                video_frames_intact: 297,
                video_frames_missing: 2,
                video_frames_corrupt: 1,
                ..MediaCounts::default()
            },
            packet_loss_percent: Some(0.4),
            frozen_ms: Some(120.0),
            ..ReceiverRow::default()
        };
        let consultations = (0..n)
            .map(|i| ConsultationRow {
                index: i,
                id: Some(uuid::Uuid::new_v4()),
                started_at_secs: i as f64 * 0.5,
                admitted_at_secs: Some(i as f64 * 0.5 + 1.0),
                admission_ms: Some(40.0 + i as f64),
                connect_ms: Some(300.0 + i as f64),
                first_frame_ms: Some(800.0 + i as f64),
                failure: (i + 1 == n).then(|| failure.clone()),
                ended: true,
                receivers: vec![receiver("patient"), receiver("clinician")],
                ..ConsultationRow::default()
            })
            .collect();
        let timeline = (0..seconds)
            .map(|t| TimelinePoint {
                t_secs: t as f64,
                joined: t.min(n) as u64,
                active: t.min(n).saturating_sub(1) as u64,
                failed: u64::from(t > 3),
                received_kbps: 600.0 * t.min(n) as f64,
                packet_loss_percent: (t > 0).then_some(0.5),
                service_active_consultations: Some(t.min(n) as i64),
                service_cpu_percent: Some(10.0 + t as f64),
                service_rss_mib: Some(80.0 + t as f64),
                generator_cpu_percent: Some(50.0),
                healthz_ms: Some(1.5),
                ..TimelinePoint::default()
            })
            .collect();
        Report {
            format: REPORT_FORMAT,
            started_at: "2025-01-01T00:00:00Z".to_owned(),
            elapsed_secs: 21.5,
            target: "http://localhost:8080/?a=<script>alert('x')</script>".to_owned(),
            plan: Plan::default(),
            outcome: Outcome::Completed,
            message: None,
            counts: Counts {
                planned: n as u64,
                started: n as u64,
                succeeded: n.saturating_sub(1) as u64,
                failed: u64::from(n > 0),
                ..Counts::default()
            },
            failures: BTreeMap::from([(FailureCause::Ice, u64::from(n > 0))]),
            failure_examples: if n > 0 { vec![failure] } else { vec![] },
            figures: Figures {
                sign_in_ms: Distribution::of("ms", ms(120.0)),
                admission_ms: Distribution::of("ms", ms(40.0)),
                connect_ms: Distribution::of("ms", ms(300.0)),
                first_frame_ms: Distribution::of("ms", ms(800.0)),
                packet_loss_percent: Distribution::of("%", vec![0.4; 2 * n]),
                ..Figures::default()
            },
            media: MediaTotals {
                counts: MediaCounts {
                    video_frames_sent: 600 * n as u64,
                    video_frames_intact: 594 * n as u64,
                    ..MediaCounts::default()
                },
                ..MediaTotals::default()
            },
            timeline,
            service: ServiceReport {
                metrics_agree: Some(false),
                disagreement: Some("joins 9 < expected 10".to_owned()),
                healthz_ms: Distribution::of("ms", vec![1.0, 2.0, 1.5]),
                log: Some(ServiceLog {
                    path: "/tmp/service.log".to_owned(),
                    errors: 1,
                    panics: 0,
                    examples: vec!["ERROR <boom>".to_owned()],
                }),
                ..ServiceReport::default()
            },
            generator: ProcessUsage {
                cpu_secs: 3.0,
                cpu_percent: 14.0,
                peak_rss_mib: 120.0,
            },
            thresholds: vec![ThresholdResult {
                name: "max_failures".to_owned(),
                limit: 0.0,
                measured: Some(1.0),
                passed: false,
            }],
            consultations,
        }
    }

    fn assert_well_formed(html: &str) {
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.trim_end().ends_with("</html>"));
        assert!(!html.to_lowercase().contains("<script"));
        assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
        for name in Figures::NAMES {
            assert!(html.contains(name), "{name} missing");
        }
    }

    #[test]
    fn the_json_file_keeps_media_counts_flat_and_reads_back() {
        let report = sample_report(2, 4);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["media"]["video_frames_sent"], 1200);
        let receiver = &json["consultations"][0]["receivers"][0];
        assert_eq!(
            (
                &receiver["video_frames_intact"],
                &receiver["video_frames_corrupt"]
            ),
            (&serde_json::json!(297), &serde_json::json!(1))
        );
        assert!(json["media"].get("counts").is_none());
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back.media, report.media);
        assert_eq!(
            back.consultations[0].receivers,
            report.consultations[0].receivers
        );
    }

    #[test]
    fn renders_a_full_report() {
        let html = render(&sample_report(4, 12));
        assert_well_formed(&html);
        assert!(html.contains("<svg"));
        // Joins, four latency CDFs, bitrate, loss, CPU, RSS, healthz.
        assert_eq!(html.matches("<svg").count(), 10);
        assert!(html.contains("Consult load report"));
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)"));
        assert!(html.contains("&lt;after 15 s&gt; &amp; &quot;gave up&quot;"));
        assert!(html.contains("ERROR &lt;boom&gt;"));
        assert!(html.contains("media_timeout"));
        assert!(html.contains("FAIL"));
        assert!(html.contains(&escape(Figures::describe("admission_ms"))));
        assert!(!html.contains("could not draw"));
    }

    #[test]
    fn renders_an_empty_report() {
        let mut report = sample_report(0, 0);
        report.outcome = Outcome::Aborted;
        report.message = Some("nobody could sign in".to_owned());
        report.service = ServiceReport::default();
        report.thresholds.clear();
        let html = render(&report);
        assert_well_formed(&html);
        assert!(!html.contains("<svg"));
        assert!(html.contains("no data"));
        assert!(html.contains("no samples"));
        assert!(html.contains("INCOMPLETE"));
        assert!(html.contains("nobody could sign in"));
    }

    #[test]
    fn renders_single_points_and_flat_lines() {
        let mut report = sample_report(1, 1);
        report.timeline[0].received_kbps = f64::NAN;
        let html = render(&report);
        assert_well_formed(&html);
        assert!(html.contains("<svg"));
        assert!(!html.contains("could not draw"));
    }

    #[test]
    fn escapes_everything() {
        assert_eq!(
            escape(r#"<a href="x">&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }
}
