//! The run's state while it runs: counters every consultation updates, read once a second for
//! the progress bars, the live summary line and the timeline.

use std::collections::{BTreeMap, HashMap};

use crate::report::{Failure, FailureCause};

/// Which side of a consultation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The patient's peer.
    Patient,
    /// The clinician's peer.
    Clinician,
    /// An interpreter's peer, through a named invite (group consultations).
    Interpreter,
    /// A companion's peer, through a named invite (group consultations).
    Companion,
}

impl Side {
    /// "patient", "clinician", "interpreter" or "companion".
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Patient => "patient",
            Side::Clinician => "clinician",
            Side::Interpreter => "interpreter",
            Side::Companion => "companion",
        }
    }
}

/// Counters of a running run.
#[derive(Debug, Default)]
pub struct LiveState {
    /// Clinicians signed in.
    pub signed_in: u64,
    /// Consultations started.
    pub started: u64,
    /// Created on the service.
    pub created: u64,
    /// Patients admitted.
    pub admitted: u64,
    /// Connected now.
    pub connected: u64,
    /// With a first frame on both sides.
    pub first_frame: u64,
    /// Finished without failing.
    pub succeeded: u64,
    /// Finished (either way).
    pub finished: u64,
    /// Failed so far.
    pub failed: u64,
    /// Failures by cause.
    pub failures: BTreeMap<FailureCause, u64>,
    /// Successful signaling joins.
    pub joins: u64,
    /// Signaling reconnects.
    pub reconnects: u64,
    /// Keyframe requests sent.
    pub keyframe_requests: u64,
    /// Frames and packets a session did not take in time (the generator is overloaded).
    pub sends_dropped: u64,
    /// Admission latencies so far.
    pub admission_ms: Vec<f64>,
    /// Connect times so far.
    pub connect_ms: Vec<f64>,
    /// First-frame times so far.
    pub first_frame_ms: Vec<f64>,
    /// Latest receive bitrate and loss per connection: (receiving stream, sending stream).
    receivers: HashMap<(u32, u32), (u64, Option<f32>)>,
}

impl LiveState {
    /// Count a failure.
    pub fn fail(&mut self, failure: &Failure) {
        self.failed += 1;
        *self.failures.entry(failure.cause).or_default() += 1;
    }

    /// A consultation finished.
    pub fn finished(&mut self, ok: bool) {
        self.finished += 1;
        if ok {
            self.succeeded += 1;
        }
    }

    /// Consultations connected now, if every one of the run's `planned` consultations has
    /// started and is either connected or finished: only then does the service's count of
    /// active consultations have to equal it. While one is still joining or tearing down, the
    /// service may count its room already, or still.
    ///
    /// ```
    /// use consult_load::live::LiveState;
    ///
    /// let mut live = LiveState::default();
    /// (live.started, live.connected) = (2, 1);
    /// assert_eq!(live.settled_connected(2), None, "one still joining");
    /// live.connected = 2;
    /// assert_eq!(live.settled_connected(2), Some(2));
    /// ```
    pub fn settled_connected(&self, planned: u64) -> Option<u64> {
        (self.started == planned && self.connected + self.finished == self.started)
            .then_some(self.connected)
    }

    /// A receiver's latest statistics.
    pub fn receiver_stats(
        &mut self,
        stream: u32,
        from_stream: u32,
        receive_bps: u64,
        loss: Option<f32>,
    ) {
        self.receivers
            .insert((stream, from_stream), (receive_bps, loss));
    }

    /// Forget the receivers of these streams (at the end of a consultation they stop
    /// reporting).
    pub fn forget_receivers(&mut self, streams: &[u32]) {
        self.receivers
            .retain(|(stream, _), _| !streams.contains(stream));
    }

    /// Total receive bitrate, kbit/s, and mean loss in percent over receivers reporting it.
    pub fn receiving(&self) -> (f64, Option<f64>) {
        let kbps = self
            .receivers
            .values()
            .map(|(bps, _)| *bps as f64)
            .sum::<f64>()
            / 1000.0;
        let losses: Vec<f64> = self
            .receivers
            .values()
            .filter_map(|(_, loss)| loss.map(|l| f64::from(l) * 100.0))
            .collect();
        let loss = (!losses.is_empty()).then(|| losses.iter().sum::<f64>() / losses.len() as f64);
        (kbps, loss)
    }
}

/// The 95th percentile (nearest rank) of some samples.
pub fn p95(samples: &[f64]) -> Option<f64> {
    crate::report::Distribution::of("", samples.to_vec()).p95
}
