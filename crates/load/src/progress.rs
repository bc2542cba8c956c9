//! While a run runs: a progress bar per phase (indicatif) and a live summary line. Hidden when
//! standard error is not a terminal, where phase changes are printed as lines instead.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::live::{p95, LiveState};
use crate::plan::Plan;
use crate::report::TimelinePoint;

/// The progress display of one run. Cheap to clone.
#[derive(Clone)]
pub struct Progress {
    visible: bool,
    sign_in: ProgressBar,
    admitted: ProgressBar,
    connected: ProgressBar,
    first_frame: ProgressBar,
    hold: ProgressBar,
    summary: ProgressBar,
}

impl Progress {
    /// Bars for this plan; drawn only when `show` and standard error is a terminal.
    pub fn new(plan: &Plan, show: bool) -> Self {
        let visible = show && std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let n = plan.consultations as u64;
        let bar = |name: &str, len: u64| {
            let bar = multi.add(ProgressBar::new(len).with_style(style.clone()));
            bar.set_prefix(name.to_owned());
            bar
        };
        let sign_in = bar("sign-in", n);
        let admitted = bar("admitted", n);
        let connected = bar(
            if plan.signaling_only {
                "joined"
            } else {
                "connected"
            },
            n,
        );
        let first_frame = bar("first frame", if plan.signaling_only { 0 } else { n });
        let hold = bar("hold (s)", plan.duration.as_secs().max(1));
        let summary = multi.add(ProgressBar::new_spinner());
        summary.enable_steady_tick(Duration::from_millis(250));
        Self {
            visible,
            sign_in,
            admitted,
            connected,
            first_frame,
            hold,
            summary,
        }
    }

    /// A new phase begins.
    pub fn phase(&self, name: &str) {
        if self.visible {
            self.summary.set_message(name.to_owned());
        } else {
            eprintln!("load: {name}");
        }
    }

    /// One more clinician signed in (or failed to).
    pub fn signed_in(&self) {
        self.sign_in.inc(1);
    }

    /// Once a second: the bars and the summary line.
    pub fn update(&self, live: &LiveState, point: &TimelinePoint, end_at: tokio::time::Instant) {
        self.admitted.set_position(live.admitted);
        self.connected
            .set_position(live.connected.max(self.connected.position()));
        self.first_frame.set_position(live.first_frame);
        let left = end_at.saturating_duration_since(tokio::time::Instant::now());
        if live.started as usize >= self.admitted.length().unwrap_or(0) as usize {
            let len = self.hold.length().unwrap_or(0);
            self.hold.set_position(len.saturating_sub(left.as_secs()));
        }
        let fmt = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.0}"));
        let line = format!(
            "active {} · failed {} · p95 admission {} ms · p95 first frame {} ms · rx {:.1} Mbit/s · loss {} % · service CPU {} %",
            live.connected,
            live.failed,
            fmt(p95(&live.admission_ms)),
            fmt(p95(&live.first_frame_ms)),
            point.received_kbps / 1000.0,
            point.packet_loss_percent.map_or("–".into(), |l| format!("{l:.2}")),
            fmt(point.service_cpu_percent),
        );
        if self.visible {
            self.summary.set_message(line);
        } else if (point.t_secs as u64).is_multiple_of(5) {
            eprintln!("load: {line}");
        }
    }

    /// Clear the bars.
    pub fn finish(&self) {
        for bar in [
            &self.sign_in,
            &self.admitted,
            &self.connected,
            &self.first_frame,
            &self.hold,
        ] {
            bar.abandon();
        }
        self.summary.finish_and_clear();
    }
}
