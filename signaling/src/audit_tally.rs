//! Unauthenticated events, counted rather than listed.
//!
//! Anyone can send a wrong password or a made-up invite link, so one audit entry per such
//! request would let anyone grow the log without bound. Instead each event is counted in
//! `audit_tallies` under its window, action, actor, source and reason ([`count`]); when a
//! window closes, [`close_due`] moves its counts into the chain as one entry per key, in the
//! transaction that deletes them, so nothing is counted twice or lost. Each count is its own
//! committed write: a crash loses no event, and the counts are exact.
//!
//! Growth is bounded per window: at most `max_keys` distinct actor-and-source pairs are kept
//! apart; beyond them events are counted under `others` (still exactly). IPv6 sources are
//! counted by /64, the block one subscriber usually holds, so one attacker cannot fill the
//! window with addresses of their own.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::{Action, Actor, AuditLog};
use crate::config::AuditConfig;

/// The key under which events beyond a window's `max_keys` are counted.
pub const OTHERS: &str = "others";

/// One unauthenticated event to count.
#[derive(Debug, Clone)]
pub struct Unauthenticated<'a> {
    /// What happened (for example [`Action::SignInFailed`]).
    pub action: Action,
    /// Who it was about: the account when one is known, else the source's address or
    /// [`Actor::Anonymous`].
    pub actor: Actor,
    /// The client's address.
    pub source: IpAddr,
    /// Why it was refused (`wrong_password`, `invite_not_found`, …).
    pub reason: &'a str,
    /// The consultation concerned, if any.
    pub consultation_id: Option<Uuid>,
}

/// How an address is counted: IPv4 (and IPv4-mapped IPv6) as it is, IPv6 by its /64.
///
/// ```
/// use consult_signaling::audit_tally::source_key;
///
/// assert_eq!(source_key("192.0.2.7".parse().unwrap()), "192.0.2.7");
/// assert_eq!(source_key("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7");
/// assert_eq!(source_key("2001:db8:1:2:aaaa::1".parse().unwrap()), "2001:db8:1:2::/64");
/// ```
pub fn source_key(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let prefix = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{prefix}/64")
            }
        },
    }
}

/// The actor's name as counted: an address actor by its [`source_key`].
fn actor_key(actor: &Actor) -> String {
    match actor {
        Actor::Address(address) => format!("address:{}", source_key(*address)),
        other => other.to_string(),
    }
}

fn action_name(action: Action) -> String {
    serde_json::to_value(action)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Count `event` at `now` in its window, on `conn` (inside the caller's transaction, so the
/// count commits with whatever else the event changed).
pub async fn count(
    conn: &mut crate::db::Tx,
    now: OffsetDateTime,
    config: &AuditConfig,
    event: &Unauthenticated<'_>,
) -> anyhow::Result<()> {
    let max_keys = config.max_tally_keys;
    let window_seconds = config.tally_window.as_secs().max(1) as i64;
    let window_start = now.unix_timestamp().div_euclid(window_seconds) * window_seconds;
    let at = now.format(&Rfc3339)?;
    let action = action_name(event.action);
    let consultation = event
        .consultation_id
        .map(|id| id.to_string())
        .unwrap_or_default();
    let mut actor = actor_key(&event.actor);
    let mut source = source_key(event.source);
    if !bump(
        conn,
        window_start,
        &action,
        &actor,
        &source,
        event.reason,
        &consultation,
        &at,
    )
    .await?
    {
        let keys: i64 = crate::db::query(
            "SELECT COUNT(*) FROM (SELECT DISTINCT actor, source FROM audit_tallies
             WHERE window_start = $1) AS pairs",
        )
        .bind(window_start)
        .fetch_one(&mut *conn)
        .await?
        .get(0);
        let known_pair = crate::db::query(
            "SELECT 1 FROM audit_tallies WHERE window_start = $1 AND actor = $2 AND source = $3 LIMIT 1",
        )
        .bind(window_start)
        .bind(&actor)
        .bind(&source)
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
        if !known_pair && keys >= i64::from(max_keys) {
            actor = OTHERS.to_owned();
            source = OTHERS.to_owned();
            if bump(
                conn,
                window_start,
                &action,
                &actor,
                &source,
                event.reason,
                &consultation,
                &at,
            )
            .await?
            {
                return Ok(());
            }
        }
        crate::db::query(
            "INSERT INTO audit_tallies (window_start, window_seconds, action, actor, source,
                reason, consultation_id, count, first_at, last_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $9)",
        )
        .bind(window_start)
        .bind(window_seconds)
        .bind(&action)
        .bind(&actor)
        .bind(&source)
        .bind(event.reason)
        .bind(&consultation)
        .bind(&at)
        .bind(&at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Add one to an existing key; false when there is none yet.
#[allow(clippy::too_many_arguments)]
async fn bump(
    conn: &mut crate::db::Tx,
    window_start: i64,
    action: &str,
    actor: &str,
    source: &str,
    reason: &str,
    consultation: &str,
    at: &str,
) -> anyhow::Result<bool> {
    let updated = crate::db::query(
        "UPDATE audit_tallies SET count = count + 1, last_at = $1
         WHERE window_start = $2 AND action = $3 AND actor = $4 AND source = $5 AND reason = $6
           AND consultation_id = $7",
    )
    .bind(at)
    .bind(window_start)
    .bind(action)
    .bind(actor)
    .bind(source)
    .bind(reason)
    .bind(consultation)
    .execute(&mut *conn)
    .await?;
    Ok(updated.rows_affected() > 0)
}

/// Count `event` in a transaction of its own.
pub async fn count_now(
    pool: &crate::db::Db,
    now: OffsetDateTime,
    config: &AuditConfig,
    event: &Unauthenticated<'_>,
) -> anyhow::Result<()> {
    let mut tx = pool.begin_write().await?;
    count(&mut tx, now, config, event).await?;
    tx.commit().await?;
    Ok(())
}

/// Move every window that has closed by `now` into the audit chain: one entry per key, with
/// its exact count, first and last time, and source. Returns how many entries were appended.
pub async fn close_due(audit: &AuditLog, now: OffsetDateTime) -> anyhow::Result<usize> {
    let mut tx = audit.begin().await?;
    let rows = crate::db::query(
        "SELECT window_start, window_seconds, action, actor, source, reason, consultation_id,
                count, first_at, last_at
         FROM audit_tallies WHERE window_start + window_seconds <= $1
         ORDER BY window_start, first_at, action, actor, source, reason, consultation_id",
    )
    .bind(now.unix_timestamp())
    .fetch_all(tx.connection())
    .await?;
    for row in &rows {
        let window_start: i64 = row.get(0);
        let window_seconds: i64 = row.get(1);
        let action: String = row.get(2);
        let actor: String = row.get(3);
        let consultation: String = row.get(6);
        let consultation_id = Uuid::parse_str(&consultation).ok();
        let window_end = OffsetDateTime::from_unix_timestamp(window_start + window_seconds)?;
        let detail = json!({
            "aggregated": true,
            "count": row.get::<i64, _>(7),
            "reason": row.get::<String, _>(5),
            "address": row.get::<String, _>(4),
            "window_start": OffsetDateTime::from_unix_timestamp(window_start)?.format(&Rfc3339)?,
            "window_seconds": window_seconds,
            "first_at": row.get::<String, _>(8),
            "last_at": row.get::<String, _>(9),
        });
        tx.record_named(window_end, &actor, &action, consultation_id, detail)
            .await?;
    }
    crate::db::query("DELETE FROM audit_tallies WHERE window_start + window_seconds <= $1")
        .bind(now.unix_timestamp())
        .execute(tx.connection())
        .await?;
    tx.commit().await?;
    Ok(rows.len())
}

/// Whether some window has closed by `now` with counts not yet in the chain.
pub async fn has_due(pool: &crate::db::Db, now: OffsetDateTime) -> anyhow::Result<bool> {
    let due = crate::db::query(
        "SELECT 1 FROM audit_tallies WHERE window_start + window_seconds <= $1 LIMIT 1",
    )
    .bind(now.unix_timestamp())
    .fetch_optional(pool)
    .await?;
    Ok(due.is_some())
}

/// Events counted but not in the chain yet (their window is open), as `(action, count)`.
pub async fn open_counts(pool: &crate::db::Db) -> anyhow::Result<Vec<(String, i64)>> {
    let rows =
        crate::db::query("SELECT action, CAST(SUM(count) AS BIGINT) FROM audit_tallies GROUP BY action ORDER BY action")
            .fetch_all(pool)
            .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Close due windows every `every` (and once at start, for windows a stopped service left).
pub fn spawn_closing_job(state: crate::state::AppState, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let now = state.clock.now();
            // Most passes find nothing: look without taking the chain's writer.
            match has_due(&state.pool, now).await {
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "could not read the audit tallies");
                    continue;
                }
            }
            if let Err(e) = close_due(&state.audit, now).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not close the audit tallies"
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn log() -> (tempfile::TempDir, crate::db::Db, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let pool = crate::db::open(dir.path(), None).await.unwrap();
        let audit = AuditLog::new(pool.clone());
        (dir, pool, audit)
    }

    fn failed<'a>(source: &str, reason: &'a str) -> Unauthenticated<'a> {
        let source: IpAddr = source.parse().unwrap();
        Unauthenticated {
            action: Action::SignInFailed,
            actor: Actor::Address(source),
            source,
            reason,
            consultation_id: None,
        }
    }

    fn per_minute(max_tally_keys: u32) -> AuditConfig {
        AuditConfig {
            tally_window: Duration::from_secs(60),
            max_tally_keys,
            ..AuditConfig::default()
        }
    }

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).unwrap()
    }

    #[tokio::test]
    async fn a_window_enters_the_chain_once_with_exact_counts() {
        let (_dir, pool, audit) = log().await;
        for i in 0..250 {
            count_now(
                &pool,
                at(6000 + i % 50),
                &per_minute(10),
                &failed("192.0.2.1", "wrong_password"),
            )
            .await
            .unwrap();
        }
        for _ in 0..3 {
            count_now(
                &pool,
                at(6010),
                &per_minute(10),
                &failed("192.0.2.2", "wrong_password"),
            )
            .await
            .unwrap();
        }
        // Still open: nothing in the chain.
        assert!(!has_due(&pool, at(6059)).await.unwrap());
        assert_eq!(close_due(&audit, at(6059)).await.unwrap(), 0);
        assert!(has_due(&pool, at(6060)).await.unwrap());
        assert_eq!(
            open_counts(&pool).await.unwrap(),
            vec![("sign_in_failed".to_owned(), 253)]
        );
        assert_eq!(close_due(&audit, at(6060)).await.unwrap(), 2);
        // Closed once: a second close appends nothing.
        assert_eq!(close_due(&audit, at(7000)).await.unwrap(), 0);
        let entries = crate::audit::entries(&pool).await.unwrap();
        assert_eq!(entries.len(), 2);
        let first = &entries[0];
        assert_eq!(first.actor, "address:192.0.2.1");
        assert_eq!(first.action, "sign_in_failed");
        assert_eq!(first.detail["count"], 250);
        assert_eq!(first.detail["aggregated"], true);
        assert_eq!(first.detail["window_start"], "1970-01-01T01:40:00Z");
        assert_eq!(first.detail["first_at"], "1970-01-01T01:40:00Z");
        assert_eq!(first.detail["last_at"], "1970-01-01T01:40:49Z");
        assert_eq!(entries[1].detail["count"], 3);
        assert_eq!(crate::audit::verify(&pool).await.unwrap(), Ok(2));
    }

    #[tokio::test]
    async fn beyond_max_keys_sources_are_counted_together_and_exactly() {
        let (_dir, pool, audit) = log().await;
        for n in 0..40u8 {
            for _ in 0..2 {
                let source = format!("198.51.100.{n}");
                count_now(
                    &pool,
                    at(120),
                    &per_minute(5),
                    &failed(&source, "wrong_password"),
                )
                .await
                .unwrap();
            }
        }
        // A known key keeps counting on its own after the cap is reached.
        count_now(
            &pool,
            at(121),
            &per_minute(5),
            &failed("198.51.100.0", "wrong_password"),
        )
        .await
        .unwrap();
        assert_eq!(close_due(&audit, at(180)).await.unwrap(), 6);
        let entries = crate::audit::entries(&pool).await.unwrap();
        let others: Vec<_> = entries.iter().filter(|e| e.actor == OTHERS).collect();
        assert_eq!(others.len(), 1);
        assert_eq!(others[0].detail["count"], 70);
        assert_eq!(others[0].detail["address"], OTHERS);
        let total: i64 = entries
            .iter()
            .map(|e| e.detail["count"].as_i64().unwrap())
            .sum();
        assert_eq!(total, 81);
        let first = entries
            .iter()
            .find(|e| e.actor == "address:198.51.100.0")
            .unwrap();
        assert_eq!(first.detail["count"], 3);
    }

    #[tokio::test]
    async fn ipv6_sources_in_one_slash_64_are_one_key() {
        let (_dir, pool, audit) = log().await;
        for n in 0..100u16 {
            let source = format!("2001:db8:5:6:{n:x}::1");
            count_now(
                &pool,
                at(60),
                &per_minute(5),
                &failed(&source, "invite_not_found"),
            )
            .await
            .unwrap();
        }
        assert_eq!(close_due(&audit, at(120)).await.unwrap(), 1);
        let entries = crate::audit::entries(&pool).await.unwrap();
        assert_eq!(entries[0].actor, "address:2001:db8:5:6::/64");
        assert_eq!(entries[0].detail["count"], 100);
    }

    #[tokio::test]
    async fn windows_close_in_order_and_each_separately() {
        let (_dir, pool, audit) = log().await;
        for t in [0, 59, 60, 61, 300] {
            count_now(
                &pool,
                at(t),
                &per_minute(5),
                &failed("192.0.2.9", "wrong_totp"),
            )
            .await
            .unwrap();
        }
        assert_eq!(close_due(&audit, at(130)).await.unwrap(), 2);
        let entries = crate::audit::entries(&pool).await.unwrap();
        let counts: Vec<_> = entries.iter().map(|e| e.detail["count"].clone()).collect();
        assert_eq!(counts, vec![json!(2), json!(2)]);
        assert_eq!(entries[0].at, "1970-01-01T00:01:00Z");
        assert_eq!(
            open_counts(&pool).await.unwrap(),
            vec![("sign_in_failed".to_owned(), 1)]
        );
    }
}
