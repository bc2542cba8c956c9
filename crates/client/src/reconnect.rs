//! When to re-establish a lost signaling connection, and what to send once it is back: the
//! decisions of a session's signaling link, sans-IO, so they run on a virtual clock in a test.
//!
//! Media goes on peer to peer while signaling is down; the session's run loop owns the WebSocket
//! and the attempt's task, and asks this policy what to do:
//!
//! ```text
//!   lost(now) ──► Waiting{next_at} ──handle_timeout(now) == true──► Attempting
//!       ▲               ▲                                               │
//!       │               └──────── attempt_failed(now): back off ◄──────┤
//!       │                                                               ▼
//!    send fails                                   reconnected() ──► Up (send what was queued)
//! ```
//!
//! It gives up after [`RECONNECT_ATTEMPTS`] losses and failed attempts without the service
//! saying `joined` in between, so a service that accepts and hangs up at once cannot keep a
//! session trying for ever (about 16 s of back-off in all).

use std::time::{Duration, Instant};

use consult_proto::signal::ClientMessage;

/// Losses and failed attempts, without a `joined` in between, before the session gives up.
pub(crate) const RECONNECT_ATTEMPTS: u32 = 8;
/// The wait before the first attempt; it doubles with each failure, up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(200);
/// The longest wait between attempts.
const MAX_DELAY: Duration = Duration::from_secs(5);

/// The signaling link gave up: too many losses and failed attempts in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GaveUp;

/// Where the link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Connected (or never lost).
    Up,
    /// Lost; the next attempt starts at `next_at`.
    Waiting { next_at: Instant, delay: Duration },
    /// An attempt is under way.
    Attempting { delay: Duration },
}

/// The reconnect policy of one session's signaling link.
#[derive(Debug)]
pub(crate) struct SignalLink {
    phase: Phase,
    failures: u32,
    /// Messages written while the link was down, sent once it is back.
    unsent: Vec<ClientMessage>,
}

impl SignalLink {
    /// A link that is up.
    pub fn new() -> Self {
        Self {
            phase: Phase::Up,
            failures: 0,
            unsent: Vec::new(),
        }
    }

    /// Whether messages can be sent now.
    pub fn is_up(&self) -> bool {
        self.phase == Phase::Up
    }

    /// The connection was lost (a failed read or write). `Ok(true)` when this starts
    /// reconnecting (tell the user), `Ok(false)` when it already was.
    pub fn lost(&mut self, now: Instant) -> Result<bool, GaveUp> {
        if self.phase != Phase::Up {
            return Ok(false);
        }
        self.failed()?;
        self.phase = Phase::Waiting {
            next_at: now + FIRST_DELAY,
            delay: FIRST_DELAY,
        };
        Ok(true)
    }

    /// Keep a message for when the link is back.
    pub fn queue(&mut self, message: ClientMessage) {
        self.unsent.push(message);
    }

    /// When [`SignalLink::handle_timeout`] wants to be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting { next_at, .. } => Some(next_at),
            Phase::Up | Phase::Attempting { .. } => None,
        }
    }

    /// Time passed: `true` when an attempt should start now.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        match self.phase {
            Phase::Waiting { next_at, delay } if next_at <= now => {
                self.phase = Phase::Attempting { delay };
                true
            }
            _ => false,
        }
    }

    /// The attempt succeeded: the link is up, and these queued messages go first. Descriptions
    /// and candidates of the old connection are dropped (`joined` starts a new negotiation with
    /// a new peer; a peer still in the call keeps its connection, and ICE restarts repair one
    /// left half-negotiated); anything else still matters.
    pub fn reconnected(&mut self) -> Vec<ClientMessage> {
        self.phase = Phase::Up;
        std::mem::take(&mut self.unsent)
            .into_iter()
            .filter(|m| {
                !matches!(
                    m,
                    ClientMessage::Description { .. } | ClientMessage::Candidate { .. }
                )
            })
            .collect()
    }

    /// The attempt failed: wait twice as long before the next, or give up.
    pub fn attempt_failed(&mut self, now: Instant) -> Result<(), GaveUp> {
        let Phase::Attempting { delay } = self.phase else {
            return Ok(());
        };
        self.failed()?;
        let delay = (delay * 2).min(MAX_DELAY);
        self.phase = Phase::Waiting {
            next_at: now + delay,
            delay,
        };
        Ok(())
    }

    /// The service said `joined`: the budget of failures starts again.
    pub fn joined(&mut self) {
        self.failures = 0;
    }

    fn failed(&mut self) -> Result<(), GaveUp> {
        self.failures += 1;
        if self.failures >= RECONNECT_ATTEMPTS {
            return Err(GaveUp);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run failed attempts on a virtual clock from `now`, as the run loop would: wait for the
    /// timeout, attempt, fail. The waits between attempts, until the link gives up.
    fn fail_until_given_up(link: &mut SignalLink, mut now: Instant) -> Vec<Duration> {
        let mut waits = Vec::new();
        loop {
            let at = link.poll_timeout().expect("a next attempt is planned");
            assert!(
                !link.handle_timeout(at - Duration::from_millis(1)),
                "not early"
            );
            waits.push(at - now);
            now = at;
            assert!(link.handle_timeout(now));
            assert_eq!(link.poll_timeout(), None, "one attempt at a time");
            if link.attempt_failed(now).is_err() {
                return waits;
            }
        }
    }

    #[test]
    fn a_lost_link_backs_off_doubling_to_five_seconds_then_gives_up() {
        let t0 = Instant::now();
        let mut link = SignalLink::new();
        assert_eq!(link.lost(t0), Ok(true));
        assert!(!link.is_up());
        let waits = fail_until_given_up(&mut link, t0);
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        // The loss itself counts: 1 loss + 7 failed attempts = 8.
        assert_eq!(ms, vec![200, 400, 800, 1600, 3200, 5000, 5000]);
        assert!(waits.iter().sum::<Duration>() < Duration::from_secs(20));
    }

    #[test]
    fn a_second_loss_while_reconnecting_changes_nothing() {
        let t0 = Instant::now();
        let mut link = SignalLink::new();
        assert_eq!(link.lost(t0), Ok(true));
        let planned = link.poll_timeout();
        assert_eq!(link.lost(t0 + Duration::from_millis(50)), Ok(false));
        assert_eq!(link.poll_timeout(), planned);
    }

    #[test]
    fn joined_restores_the_budget_but_a_service_that_hangs_up_at_once_is_given_up_on() {
        let mut now = Instant::now();
        let mut link = SignalLink::new();
        // A service that accepts, says `joined`, and drops us: each loss starts afresh.
        for _ in 0..20 {
            assert_eq!(link.lost(now), Ok(true));
            now = link.poll_timeout().unwrap();
            assert!(link.handle_timeout(now));
            link.reconnected();
            link.joined();
        }
        // One that accepts and hangs up before `joined`: each loss counts.
        let mut lost = 0;
        loop {
            lost += 1;
            if link.lost(now).is_err() {
                break;
            }
            now = link.poll_timeout().unwrap();
            assert!(link.handle_timeout(now));
            link.reconnected();
        }
        assert_eq!(lost, RECONNECT_ATTEMPTS);
    }

    #[test]
    fn queued_negotiation_is_dropped_and_the_rest_sent_in_order_once_back() {
        let t0 = Instant::now();
        let mut link = SignalLink::new();
        link.lost(t0).unwrap();
        let peer = uuid::Uuid::nil();
        link.queue(ClientMessage::Consent { recording: false });
        link.queue(ClientMessage::Candidate {
            to: peer,
            candidate: None,
        });
        link.queue(ClientMessage::Leave {});
        let at = link.poll_timeout().unwrap();
        assert!(link.handle_timeout(at));
        let sent = link.reconnected();
        assert!(link.is_up());
        assert!(matches!(
            sent.as_slice(),
            [
                ClientMessage::Consent { recording: false },
                ClientMessage::Leave {}
            ]
        ));
        assert!(link.reconnected().is_empty(), "sent once");
    }
}
