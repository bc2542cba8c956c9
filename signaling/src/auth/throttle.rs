//! Sign-in throttling. Failures are counted per account (in the database, so a restart does not
//! reset them) and per client address (in memory, or in Redis when several nodes share it, so
//! that guesses spread over the nodes add up); past a threshold each further failure locks for
//! twice as long as the one before, up to a ceiling.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use time::OffsetDateTime;

use crate::config::LoginConfig;

/// How long to lock after `failures` consecutive failures, if at all.
///
/// ```
/// use consult_signaling::auth::throttle::lockout_after;
/// use std::time::Duration;
///
/// let (base, max) = (Duration::from_secs(30), Duration::from_secs(3600));
/// assert_eq!(lockout_after(4, 5, base, max), None);
/// assert_eq!(lockout_after(5, 5, base, max), Some(Duration::from_secs(30)));
/// assert_eq!(lockout_after(7, 5, base, max), Some(Duration::from_secs(120)));
/// assert_eq!(lockout_after(40, 5, base, max), Some(max));
/// ```
pub fn lockout_after(
    failures: u32,
    threshold: u32,
    base: Duration,
    max: Duration,
) -> Option<Duration> {
    if failures < threshold {
        return None;
    }
    let doublings = (failures - threshold).min(30);
    Some(base.saturating_mul(1u32 << doublings).min(max))
}

#[derive(Debug, Clone, Copy)]
struct AddressRecord {
    failures: u32,
    last_failure: OffsetDateTime,
    locked_until: Option<OffsetDateTime>,
}

/// Failures per client address.
pub struct AddressThrottle {
    config: LoginConfig,
    records: Mutex<HashMap<IpAddr, AddressRecord>>,
    /// The deployment's Redis and key prefix, when several nodes count together.
    shared: Option<(redis::aio::ConnectionManager, String)>,
}

/// Count one failure of an address in Redis: `KEYS[1]` its hash; `ARGV` now (Unix seconds)
/// and the quiet period after which it starts over. Returns the count.
const COUNT_FAILURE: &str = r#"
local failures = tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or ARGV[1])
if tonumber(ARGV[1]) - last > tonumber(ARGV[2]) then failures = 0 end
failures = failures + 1
redis.call('HSET', KEYS[1], 'failures', failures, 'last', ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) * 2 + 60)
return failures
"#;

/// Lock an address until `ARGV[1]` (Unix seconds), unless it is locked longer already.
const LOCK_UNTIL: &str = r#"
local locked = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if tonumber(ARGV[1]) > locked then redis.call('HSET', KEYS[1], 'until', ARGV[1]) end
return 0
"#;

/// Most addresses remembered; beyond it, records whose lockout is over are forgotten first.
const MAX_ADDRESSES: usize = 100_000;

impl AddressThrottle {
    /// A throttle with these limits, counting in this process.
    pub fn new(config: LoginConfig) -> Self {
        Self {
            config,
            records: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// A throttle whose counts every node of a deployment shares, in Redis (under
    /// `prefix:address:`). When Redis cannot be reached, this node counts on its own.
    pub fn shared(
        config: LoginConfig,
        redis: redis::aio::ConnectionManager,
        prefix: String,
    ) -> Self {
        Self {
            shared: Some((redis, prefix)),
            ..Self::new(config)
        }
    }

    fn key(prefix: &str, address: IpAddr) -> String {
        format!("{prefix}:address:{address}")
    }

    /// If the address is locked now, the seconds left.
    pub async fn locked_for(&self, address: IpAddr, now: OffsetDateTime) -> Option<u64> {
        if let Some((redis, prefix)) = &self.shared {
            let until: Result<Option<i64>, _> = redis::cmd("HGET")
                .arg(Self::key(prefix, address))
                .arg("until")
                .query_async(&mut redis.clone())
                .await;
            match until {
                Ok(until) => {
                    let until = OffsetDateTime::from_unix_timestamp(until?).ok()?;
                    return (until > now).then(|| seconds_until(now, until));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "address throttle: Redis unreachable; counting here")
                }
            }
        }
        self.locked_for_here(address, now)
    }

    fn locked_for_here(&self, address: IpAddr, now: OffsetDateTime) -> Option<u64> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let until = records.get(&address)?.locked_until?;
        (until > now).then(|| seconds_until(now, until))
    }

    /// Count a failure; returns the new lockout if this failure caused one.
    pub async fn record_failure(&self, address: IpAddr, now: OffsetDateTime) -> Option<Duration> {
        if let Some((redis, prefix)) = &self.shared {
            match self.record_shared(redis, prefix, address, now).await {
                Ok(lock) => return lock,
                Err(e) => {
                    tracing::warn!(error = %e, "address throttle: Redis unreachable; counting here")
                }
            }
        }
        self.record_failure_here(address, now)
    }

    async fn record_shared(
        &self,
        redis: &redis::aio::ConnectionManager,
        prefix: &str,
        address: IpAddr,
        now: OffsetDateTime,
    ) -> Result<Option<Duration>, redis::RedisError> {
        let mut redis = redis.clone();
        let key = Self::key(prefix, address);
        let failures: u32 = redis::Script::new(COUNT_FAILURE)
            .key(&key)
            .arg(now.unix_timestamp())
            .arg(self.config.lockout_max.as_secs())
            .invoke_async(&mut redis)
            .await?;
        let lock = lockout_after(
            failures,
            self.config.max_failures_per_address,
            self.config.lockout_base,
            self.config.lockout_max,
        );
        if let Some(lock) = lock {
            let until = (now + lock).unix_timestamp();
            let _: i64 = redis::Script::new(LOCK_UNTIL)
                .key(&key)
                .arg(until)
                .invoke_async(&mut redis)
                .await?;
        }
        Ok(lock)
    }

    fn record_failure_here(&self, address: IpAddr, now: OffsetDateTime) -> Option<Duration> {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.len() >= MAX_ADDRESSES {
            let forget_before = now - self.config.lockout_max;
            records.retain(|_, r| r.last_failure > forget_before);
        }
        let record = records.entry(address).or_insert(AddressRecord {
            failures: 0,
            last_failure: now,
            locked_until: None,
        });
        // A quiet address starts over.
        if now - record.last_failure > self.config.lockout_max {
            record.failures = 0;
        }
        record.failures += 1;
        record.last_failure = now;
        let lock = lockout_after(
            record.failures,
            self.config.max_failures_per_address,
            self.config.lockout_base,
            self.config.lockout_max,
        );
        record.locked_until = lock.map(|d| now + d);
        lock
    }
}

/// Whole seconds from `now` until `until`, at least 1.
pub fn seconds_until(now: OffsetDateTime, until: OffsetDateTime) -> u64 {
    (until - now).whole_seconds().max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LoginConfig {
        LoginConfig {
            max_failures_per_account: 3,
            max_failures_per_address: 3,
            lockout_base: Duration::from_secs(10),
            lockout_max: Duration::from_secs(100),
        }
    }

    #[test]
    fn address_locks_after_threshold_with_back_off_and_unlocks() {
        let throttle = AddressThrottle::new(config());
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let t0 = OffsetDateTime::now_utc();
        assert_eq!(throttle.record_failure_here(ip, t0), None);
        assert_eq!(throttle.record_failure_here(ip, t0), None);
        assert_eq!(throttle.locked_for_here(ip, t0), None);
        assert_eq!(
            throttle.record_failure_here(ip, t0),
            Some(Duration::from_secs(10))
        );
        assert_eq!(throttle.locked_for_here(ip, t0), Some(10));
        assert_eq!(
            throttle.record_failure_here(ip, t0),
            Some(Duration::from_secs(20))
        );
        let later = t0 + Duration::from_secs(21);
        assert_eq!(throttle.locked_for_here(ip, later), None);
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        assert_eq!(throttle.locked_for_here(other, t0), None);
    }
}
