//! Video that steps down on a bad link and back up when it recovers, audio first throughout: the
//! same steps and decision as the pages' `web-demo/assets/video-ladder.js`.
//!
//! Four steps: full (every frame at its size), reduced (half the width and height, at most
//! 15 fps), low (a quarter, at most 8 fps) and audio only (one picture every
//! [`STILL_EVERY`], a keyframe, at a quarter). Once a second [`VideoLadder::update`] takes the send
//! bandwidth estimate, what we send, and the worst loss any receiver reports: [`BAD_SAMPLES`] bad
//! seconds in a row step down (straight to the step the estimate allows), and good seconds step back up, one step after
//! a hold ([`HOLD`], doubled after a try that failed, at most [`MAX_HOLD`]) or at once when the
//! estimate is clearly enough. For a hold after a step up only loss can undo it: the estimate lags
//! behind what is sent, and in audio only almost nothing is.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use consult_client::video_ladder::{Step, VideoLadder};
//!
//! let start = Instant::now();
//! let mut ladder = VideoLadder::new(start);
//! // Three seconds at 60 kbit/s: too little for moving pictures.
//! let mut step = Step::Full;
//! for second in 1..=3 {
//!     step = ladder.update(start + Duration::from_secs(second), Some(60_000), None, Some(0.0));
//! }
//! assert_eq!(step, Step::AudioOnly);
//! // A clear link again: straight back.
//! let step = ladder.update(start + Duration::from_secs(4), Some(3_000_000), None, Some(0.0));
//! assert_eq!(step, Step::Full);
//! ```

use std::time::{Duration, Instant};

/// How the camera's video goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// Every frame, at its size.
    Full,
    /// Half the width and height, at most 15 frames a second.
    Reduced,
    /// A quarter of the width and height, at most 8 frames a second.
    Low,
    /// Audio only: a quarter-size picture (a keyframe) every [`STILL_EVERY`].
    AudioOnly,
}

const STEPS: [Step; 4] = [Step::Full, Step::Reduced, Step::Low, Step::AudioOnly];

impl Step {
    fn index(self) -> usize {
        self as usize
    }

    /// How many times smaller each way.
    pub fn scale_down_by(self) -> u32 {
        match self {
            Step::Full => 1,
            Step::Reduced => 2,
            Step::Low | Step::AudioOnly => 4,
        }
    }

    /// Shortest time between two frames sent.
    pub fn min_frame_interval(self) -> Duration {
        match self {
            Step::Full => Duration::ZERO,
            Step::Reduced => Duration::from_millis(1000 / 15),
            Step::Low => Duration::from_millis(1000 / 8),
            Step::AudioOnly => STILL_EVERY,
        }
    }

    /// Below this estimate (bits per second) the step is too much for the link.
    pub fn min_bps(self) -> u64 {
        match self {
            Step::Full => 450_000,
            Step::Reduced => 220_000,
            Step::Low => 110_000,
            Step::AudioOnly => 0,
        }
    }

    /// Most this step sends, bits per second.
    pub fn max_bps(self) -> u32 {
        match self {
            Step::Full => u32::MAX,
            Step::Reduced => 400_000,
            Step::Low => 150_000,
            Step::AudioOnly => 60_000,
        }
    }

    /// The name the pages use too: `full`, `reduced`, `low`, `audio-only`.
    pub fn name(self) -> &'static str {
        match self {
            Step::Full => "full",
            Step::Reduced => "reduced",
            Step::Low => "low",
            Step::AudioOnly => "audio-only",
        }
    }
}

/// Loss (fraction, as receivers report it) at which video steps down whatever the estimate
/// (10 % random loss is not it: retransmissions repair video there, and one report swings to
/// 17 % on such a link).
pub const BAD_LOSS: f32 = 0.25;
/// Loss at or below which a second counts as good for stepping up.
pub const GOOD_LOSS: f32 = 0.15;
/// Bad samples in a row before stepping down.
pub const BAD_SAMPLES: u32 = 3;
/// Good time before trying one step up.
pub const HOLD: Duration = Duration::from_secs(8);
/// Longest wait before trying again after failed tries.
pub const MAX_HOLD: Duration = Duration::from_secs(32);
/// An estimate this many times a higher step's minimum moves there at once.
pub const CLEAR_MARGIN: f64 = 1.3;
/// An estimate above this many times what we send says nothing about the link's limit.
pub const APP_LIMITED_MARGIN: f64 = 1.2;
/// In audio only, one picture this often.
pub const STILL_EVERY: Duration = Duration::from_secs(4);

/// The decision: which step, from one sample a second.
#[derive(Debug, Clone)]
pub struct VideoLadder {
    step: Step,
    bad_samples: u32,
    good_since: Instant,
    hold: Duration,
    stepped_up_at: Option<Instant>,
}

impl VideoLadder {
    /// Full, until the samples say otherwise.
    pub fn new(now: Instant) -> Self {
        Self {
            step: Step::Full,
            bad_samples: 0,
            good_since: now,
            hold: HOLD,
            stepped_up_at: None,
        }
    }

    /// The step in force.
    pub fn step(&self) -> Step {
        self.step
    }

    /// Take one sample (about one a second): the send bandwidth estimate and what we send now,
    /// in bits per second, and the worst loss any receiver reports (0..1), any of them unknown.
    /// A low estimate counts only while we send about as much as it says (then it measures the
    /// link; when we send less, it only echoes what little we send: after a weak patch, the
    /// estimate of an audio-only call stays low however good the link has become). Returns the
    /// step now in force.
    pub fn update(
        &mut self,
        now: Instant,
        estimate_bps: Option<u64>,
        sending_bps: Option<u64>,
        loss: Option<f32>,
    ) -> Step {
        let loss = loss.filter(|l| l.is_finite());
        let trying = self
            .stepped_up_at
            .is_some_and(|at| now.saturating_duration_since(at) < HOLD);
        let pushing = |estimate: u64| {
            sending_bps.is_none_or(|sending| estimate as f64 <= sending as f64 * APP_LIMITED_MARGIN)
        };
        let too_little =
            !trying && estimate_bps.is_some_and(|bps| bps < self.step.min_bps() && pushing(bps));
        let too_lossy = loss.is_some_and(|l| l >= BAD_LOSS);
        if (too_little || too_lossy) && self.step != Step::AudioOnly {
            self.bad_samples += 1;
            if self.bad_samples >= BAD_SAMPLES {
                let mut next = self.step.index() + 1;
                while let Some(bps) = estimate_bps {
                    if next >= Step::AudioOnly.index() || bps >= STEPS[next].min_bps() {
                        break;
                    }
                    next += 1;
                }
                if self.stepped_up_at.is_some() {
                    self.hold = (self.hold * 2).min(MAX_HOLD);
                }
                self.step = STEPS[next];
                self.bad_samples = 0;
                self.good_since = now;
                self.stepped_up_at = None;
            }
            return self.step;
        }
        self.bad_samples = 0;
        if self.stepped_up_at.is_some() && !trying {
            self.stepped_up_at = None;
            self.hold = HOLD;
        }
        if loss.is_some_and(|l| l > GOOD_LOSS) {
            self.good_since = now;
            return self.step;
        }
        if self.step == Step::Full {
            return self.step;
        }
        let mut clear = self.step.index();
        while let Some(bps) = estimate_bps {
            if clear == 0 || (bps as f64) < STEPS[clear - 1].min_bps() as f64 * CLEAR_MARGIN {
                break;
            }
            clear -= 1;
        }
        if clear < self.step.index() {
            return self.step_up_to(now, STEPS[clear]);
        }
        if now.saturating_duration_since(self.good_since) >= self.hold {
            return self.step_up_to(now, STEPS[self.step.index() - 1]);
        }
        self.step
    }

    fn step_up_to(&mut self, now: Instant, step: Step) -> Step {
        self.step = step;
        self.good_since = now;
        self.stepped_up_at = Some(now);
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(
        ladder: &mut VideoLadder,
        start: Instant,
        samples: &[(Option<u64>, Option<f32>)],
    ) -> Vec<Step> {
        samples
            .iter()
            .enumerate()
            .map(|(i, (bps, loss))| {
                ladder.update(start + Duration::from_secs(i as u64 + 1), *bps, None, *loss)
            })
            .collect()
    }

    #[test]
    fn a_good_link_stays_full_and_unknown_figures_change_nothing() {
        let start = Instant::now();
        let mut ladder = VideoLadder::new(start);
        assert!(
            feed(&mut ladder, start, &[(Some(2_000_000), Some(0.01)); 60])
                .iter()
                .all(|s| *s == Step::Full)
        );
        assert!(feed(&mut ladder, start, &[(None, None); 30])
            .iter()
            .all(|s| *s == Step::Full));
    }

    #[test]
    fn two_bad_samples_step_down_to_what_the_estimate_allows() {
        let start = Instant::now();
        let mut ladder = VideoLadder::new(start);
        let steps = feed(
            &mut ladder,
            start,
            &[(Some(80_000), Some(0.0)), (Some(2_000_000), Some(0.0))],
        );
        assert_eq!(steps, [Step::Full, Step::Full]);
        let steps = feed(
            &mut ladder,
            start,
            &[(Some(80_000), Some(0.0)); BAD_SAMPLES as usize],
        );
        assert_eq!(steps.last(), Some(&Step::AudioOnly));
        let mut other = VideoLadder::new(start);
        let steps = feed(
            &mut other,
            start,
            &[(Some(300_000), Some(0.0)); BAD_SAMPLES as usize],
        );
        assert_eq!(steps.last(), Some(&Step::Reduced));
    }

    #[test]
    fn heavy_loss_steps_down_one_at_a_time() {
        let start = Instant::now();
        let mut ladder = VideoLadder::new(start);
        let steps = feed(&mut ladder, start, &[(Some(2_000_000), Some(0.3)); 9]);
        use Step::*;
        assert_eq!(
            steps,
            [Full, Full, Reduced, Reduced, Reduced, Low, Low, Low, AudioOnly]
        );
        // 10 % random loss (reports up to 17 %) is not heavy: retransmissions repair it.
        let mut ten = VideoLadder::new(start);
        let swings = [0.05, 0.17, 0.08, 0.12, 0.16, 0.03, 0.11, 0.17, 0.09, 0.14];
        for (i, loss) in swings.iter().enumerate() {
            ten.update(
                start + Duration::from_secs(i as u64 + 1),
                Some(2_000_000),
                None,
                Some(*loss),
            );
        }
        assert_eq!(ten.step(), Full);
    }

    #[test]
    fn a_recovered_link_climbs_back_while_the_estimate_catches_up() {
        let start = Instant::now();
        let mut ladder = VideoLadder::new(start);
        feed(
            &mut ladder,
            start,
            &[(Some(50_000), Some(0.0)); BAD_SAMPLES as usize],
        );
        assert_eq!(ladder.step(), Step::AudioOnly);
        let mut bps = 50_000f64;
        let mut steps = Vec::new();
        for i in 0..60u64 {
            let now = start + Duration::from_secs(3 + i);
            steps.push(ladder.update(now, Some(bps as u64), None, Some(0.0)));
            let sending = if ladder.step() == Step::AudioOnly {
                0.0
            } else {
                20_000.0
            };
            bps = (bps * 1.08 + sending).min(3_000_000.0);
        }
        assert_eq!(steps.last(), Some(&Step::Full), "{steps:?}");
        assert!(
            steps.windows(2).all(|w| w[1] <= w[0]),
            "never down on the way: {steps:?}"
        );
    }

    #[test]
    fn an_estimate_that_only_echoes_what_little_we_send_does_not_hold_video_back() {
        let start = Instant::now();
        let mut ladder = VideoLadder::new(start);
        // Capped: the estimate says 80 kbit/s (what we send unknown).
        feed(
            &mut ladder,
            start,
            &[(Some(80_000), Some(0.0)); BAD_SAMPLES as usize],
        );
        assert_eq!(ladder.step(), Step::AudioOnly);
        // The link is back, but audio only sends 45 kbit/s and the estimate stays near it.
        let mut steps = Vec::new();
        for i in 0..60u64 {
            let now = start + Duration::from_secs(3 + i);
            let sending = match ladder.step() {
                Step::AudioOnly => 45_000,
                Step::Low => 130_000,
                Step::Reduced => 300_000,
                Step::Full => 800_000,
            };
            steps.push(ladder.update(now, Some(sending * 3 / 2), Some(sending), Some(0.0)));
        }
        assert_eq!(steps.last(), Some(&Step::Full), "{steps:?}");
        // While capped for real (the estimate under what we send) it does step down.
        let mut pushing = VideoLadder::new(start);
        let mut step = Step::Full;
        for i in 0..u64::from(BAD_SAMPLES) {
            let at = start + Duration::from_secs(i + 1);
            step = pushing.update(at, Some(80_000), Some(300_000), Some(0.0));
        }
        assert_eq!(step, Step::AudioOnly);
        // The same estimate while we send less than it: no step down.
        let mut echo = VideoLadder::new(start);
        for i in 0..10 {
            echo.update(
                start + Duration::from_secs(i + 1),
                Some(80_000),
                Some(45_000),
                Some(0.0),
            );
        }
        assert_eq!(echo.step(), Step::Full);
    }

    #[test]
    fn failed_tries_wait_longer_each_time_up_to_a_limit() {
        let start = Instant::now();
        let mut ladder = VideoLadder::new(start);
        feed(
            &mut ladder,
            start,
            &[(Some(50_000), Some(0.0)); BAD_SAMPLES as usize],
        );
        let mut tries = Vec::new();
        for i in 0..400u64 {
            let now = start + Duration::from_secs(3 + i);
            let before = ladder.step();
            // Each try turns lossy at once.
            let loss = if before == Step::AudioOnly { 0.0 } else { 0.4 };
            if ladder.update(now, None, None, Some(loss)) < before {
                tries.push(now);
            }
        }
        let gaps: Vec<Duration> = tries.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() >= 4, "{gaps:?}");
        assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
        assert!(
            *gaps.last().unwrap() <= MAX_HOLD + Duration::from_secs(6),
            "{gaps:?}"
        );
    }

    #[test]
    fn steps_shrink_and_slow_the_video() {
        let sizes: Vec<u32> = STEPS.iter().map(|s| s.scale_down_by()).collect();
        assert_eq!(sizes, [1, 2, 4, 4]);
        assert!(STEPS
            .windows(2)
            .all(|w| w[1].min_frame_interval() >= w[0].min_frame_interval()
                && w[1].max_bps() <= w[0].max_bps()));
        assert_eq!(Step::AudioOnly.name(), "audio-only");
    }
}
