//! Limits on signaling connections that have not proved who they are yet, and on how often one
//! identity may join: a connection holds an [`UnjoinedSocket`] until it joins (service-wide at
//! most `signaling.max_unjoined_sockets`), and [`JoinRate`] counts each participant's (or
//! doctor session's) joins over the last minute.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

/// The WebSockets open that have not joined.
#[derive(Debug, Default)]
pub struct UnjoinedSockets {
    open: Arc<AtomicUsize>,
}

impl UnjoinedSockets {
    /// A place for a new connection, if fewer than `max` are waiting to join.
    pub fn admit(&self, max: usize) -> Option<UnjoinedSocket> {
        let mut current = self.open.load(Ordering::Relaxed);
        loop {
            if current >= max {
                return None;
            }
            match self.open.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(UnjoinedSocket {
                        open: Arc::clone(&self.open),
                    })
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// How many there are now.
    pub fn count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One unjoined connection's place, given back when it joins or closes (dropped).
#[derive(Debug)]
pub struct UnjoinedSocket {
    open: Arc<AtomicUsize>,
}

impl Drop for UnjoinedSocket {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Joins per identity over a sliding minute.
///
/// Identities whose last join left the window are forgotten in one sweep once the map has doubled
/// since the last sweep (and holds more than 4,096): each join costs amortised constant time
/// however many identities joined in the last minute, and the map holds at most twice those (or
/// 4,096).
#[derive(Debug, Default)]
pub struct JoinRate {
    joins: Mutex<Joins>,
}

#[derive(Debug, Default)]
struct Joins {
    by_identity: HashMap<Uuid, VecDeque<Instant>>,
    /// Sweep when the map grows past this (at least [`PRUNE_ABOVE`]).
    sweep_above: usize,
}

const WINDOW: Duration = Duration::from_secs(60);
/// Forget idle identities when the map grows past this.
const PRUNE_ABOVE: usize = 4096;

impl JoinRate {
    /// Count a join by `identity` now; `false` (and not counted) if it already joined `max`
    /// times in the last minute.
    pub fn allow(&self, identity: Uuid, max: u32, now: Instant) -> bool {
        let mut joins = self.joins.lock().unwrap_or_else(|e| e.into_inner());
        let Joins {
            by_identity,
            sweep_above,
        } = &mut *joins;
        if by_identity.len() > (*sweep_above).max(PRUNE_ABOVE) {
            by_identity.retain(|_, times| times.back().is_some_and(|t| now - *t < WINDOW));
            *sweep_above = 2 * by_identity.len();
        }
        let times = by_identity.entry(identity).or_default();
        while times.front().is_some_and(|t| now - *t >= WINDOW) {
            times.pop_front();
        }
        if times.len() >= max as usize {
            return false;
        }
        times.push_back(now);
        true
    }

    /// Identities remembered now (those that joined in the last minute, and idle ones not yet
    /// swept).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        let joins = self.joins.lock().unwrap_or_else(|e| e.into_inner());
        joins.by_identity.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unjoined_places_are_capped_and_come_back() {
        let sockets = UnjoinedSockets::default();
        let first = sockets.admit(2).unwrap();
        let _second = sockets.admit(2).unwrap();
        assert!(sockets.admit(2).is_none());
        drop(first);
        assert!(sockets.admit(2).is_some());
        assert_eq!(sockets.count(), 1);
    }

    #[test]
    fn joins_are_counted_per_identity_over_a_sliding_minute() {
        let rate = JoinRate::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let start = Instant::now();
        for i in 0..3 {
            assert!(rate.allow(a, 3, start + Duration::from_secs(i)));
        }
        assert!(!rate.allow(a, 3, start + Duration::from_secs(10)));
        assert!(
            rate.allow(b, 3, start + Duration::from_secs(10)),
            "another identity"
        );
        assert!(
            rate.allow(a, 3, start + Duration::from_secs(60)),
            "the first join left the window"
        );
        assert!(!rate.allow(a, 3, start + Duration::from_secs(60)));
    }

    #[test]
    fn many_identities_within_the_minute_are_kept_and_idle_ones_are_swept() {
        let rate = JoinRate::default();
        let start = Instant::now();
        // Three times the sweep threshold, all within the minute: every one still counted.
        let live: Vec<Uuid> = (0..3 * PRUNE_ABOVE).map(|_| Uuid::new_v4()).collect();
        for (i, id) in live.iter().enumerate() {
            let at = start + Duration::from_millis(i as u64);
            assert!(rate.allow(*id, 1, at));
        }
        assert_eq!(rate.remembered(), live.len());
        let later = start + Duration::from_secs(30);
        assert!(
            live.iter().all(|id| !rate.allow(*id, 1, later)),
            "a sweep forgot an identity still in its minute"
        );
        // A minute after the last of them, they are idle: new identities sweep them away, and
        // the map never holds much more than twice what is live.
        let after = start + Duration::from_secs(61) + Duration::from_millis(live.len() as u64);
        let mut most = 0;
        for _ in 0..2 * PRUNE_ABOVE + 2 {
            assert!(rate.allow(Uuid::new_v4(), 1, after));
            most = most.max(rate.remembered());
        }
        assert!(
            rate.remembered() <= 2 * PRUNE_ABOVE + 2,
            "{}",
            rate.remembered()
        );
        assert!(most <= 2 * live.len() + 1, "{most}");
        assert!(
            live.iter().all(|id| rate.allow(*id, 1, after)),
            "an idle identity joins again"
        );
    }
}
