//! Time as a dependency: the service asks a [`Clock`], so tests can move time forward instead of
//! sleeping through timeouts.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

/// Where the service gets the current time from.
pub trait Clock: Send + Sync + 'static {
    /// Now, in UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The machine's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to; for tests.
///
/// ```
/// use consult_signaling::clock::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::starting_now();
/// let before = clock.now();
/// clock.advance(Duration::from_secs(16 * 60));
/// assert_eq!((clock.now() - before).whole_minutes(), 16);
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    unix_nanos: Arc<AtomicI64>,
}

impl ManualClock {
    /// A manual clock set to the machine's current time.
    pub fn starting_now() -> Self {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
        Self {
            unix_nanos: Arc::new(AtomicI64::new(nanos)),
        }
    }

    /// Move time forward.
    pub fn advance(&self, by: Duration) {
        self.unix_nanos
            .fetch_add(by.as_nanos() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        let nanos = self.unix_nanos.load(Ordering::SeqCst);
        OffsetDateTime::from_unix_timestamp_nanos(nanos.into())
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}
