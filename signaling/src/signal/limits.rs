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
#[derive(Debug, Default)]
pub struct JoinRate {
    joins: Mutex<HashMap<Uuid, VecDeque<Instant>>>,
}

const WINDOW: Duration = Duration::from_secs(60);
/// Forget idle identities when the map grows past this.
const PRUNE_ABOVE: usize = 4096;

impl JoinRate {
    /// Count a join by `identity` now; `false` (and not counted) if it already joined `max`
    /// times in the last minute.
    pub fn allow(&self, identity: Uuid, max: u32, now: Instant) -> bool {
        let mut joins = self.joins.lock().unwrap_or_else(|e| e.into_inner());
        if joins.len() > PRUNE_ABOVE {
            joins.retain(|_, times| times.back().is_some_and(|t| now - *t < WINDOW));
        }
        let times = joins.entry(identity).or_default();
        while times.front().is_some_and(|t| now - *t >= WINDOW) {
            times.pop_front();
        }
        if times.len() >= max as usize {
            return false;
        }
        times.push_back(now);
        true
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
}
