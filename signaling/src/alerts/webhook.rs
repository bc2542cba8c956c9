//! Delivering alerts to the operator's webhook: a JSON `POST` of [`super::WebhookBody`], signed
//! with HMAC-SHA256, from the `alert_deliveries` outbox. A delivery that fails (no answer, a
//! timeout, anything but 2xx) stays queued and is tried again after 1, 2, 4 … seconds, at most
//! five minutes apart, until the endpoint takes it: nothing is lost while it is down, and no
//! request of the service ever waits for it.
//!
//! The receiver checks `X-Consult-Signature: t=<unix seconds>,v1=<hex>`, where `v1` is
//! HMAC-SHA256 under the shared secret of `"<t>.<body>"` ([`signature`]); `t` lets it refuse
//! replays of old deliveries, and `X-Consult-Delivery` (unique per delivery, the same on every
//! retry) lets it drop duplicates.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::format_description::well_known::Rfc3339;

use crate::state::AppState;

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Deliveries attempted per pass.
const BATCH: i64 = 32;

/// The signature header's value for `body` sent at `unix_seconds`.
///
/// ```
/// use consult_signaling::alerts::webhook::signature;
///
/// let header = signature(b"a shared secret of some length!!", 1_800_000_000, br#"{"event":"alert_raised"}"#);
/// assert!(header.starts_with("t=1800000000,v1="));
/// assert_eq!(header.len(), "t=1800000000,v1=".len() + 64);
/// ```
pub fn signature(secret: &[u8], unix_seconds: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={unix_seconds},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// How long to wait after the `attempts`-th failure: 1 s, 2 s, 4 s … up to [`MAX_BACKOFF`].
///
/// ```
/// use consult_signaling::alerts::webhook::backoff_after;
/// use std::time::Duration;
///
/// assert_eq!(backoff_after(1), Duration::from_secs(1));
/// assert_eq!(backoff_after(4), Duration::from_secs(8));
/// assert_eq!(backoff_after(60), Duration::from_secs(300));
/// ```
pub fn backoff_after(attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(20);
    Duration::from_secs(1u64 << exponent).min(MAX_BACKOFF)
}

/// Deliver queued alerts for as long as the service runs (when a webhook is configured).
pub fn spawn_delivery(state: AppState, secret: String) {
    let Some(url) = state.config.alerts.webhook_url.clone() else {
        return;
    };
    let client = match reqwest::Client::builder()
        .timeout(state.config.alerts.webhook_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client: alerts stay queued");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            if let Err(e) = deliver_due(&state, &client, &url, secret.as_bytes()).await {
                tracing::warn!(error = format!("{e:#}"), "alert webhook pass failed");
            }
            // Woken by a new alert, or every second to retry what is due.
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                state.alerts.delivery_queued.notified(),
            )
            .await;
        }
    });
}

/// One pass: try every delivery that is due now. Returns how many were delivered.
pub async fn deliver_due(
    state: &AppState,
    client: &reqwest::Client,
    url: &str,
    secret: &[u8],
) -> anyhow::Result<usize> {
    let now = state.clock.now();
    let due = crate::db::query(
        "SELECT seq, body, attempts FROM alert_deliveries
         WHERE delivered_at IS NULL AND next_attempt_at <= $1 ORDER BY seq LIMIT $2",
    )
    .bind(now.unix_timestamp())
    .bind(BATCH)
    .fetch_all(&state.pool)
    .await?;
    let mut delivered = 0;
    for row in due {
        let seq: i64 = row.get(0);
        let body: String = row.get(1);
        let attempts: i64 = row.get(2);
        let sent_at = state.clock.now();
        let outcome = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Consult-Delivery", seq.to_string())
            .header(
                "X-Consult-Signature",
                signature(secret, sent_at.unix_timestamp(), body.as_bytes()),
            )
            .body(body)
            .send()
            .await;
        let failure = match outcome {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("answered {}", response.status())),
            Err(e) => Some(short_error(&e)),
        };
        let attempts = u32::try_from(attempts + 1).unwrap_or(u32::MAX);
        let now = state.clock.now();
        // Delivered: stamped. Failed: the next attempt after back-off, and why.
        let (delivered_at, next, outcome) = match &failure {
            None => (Some(now.format(&Rfc3339)?), now, "delivered"),
            Some(_) => (None, now + backoff_after(attempts), "failed"),
        };
        crate::db::query(
            "UPDATE alert_deliveries SET delivered_at = $1, attempts = $2, next_attempt_at = $3,
                last_error = $4
             WHERE seq = $5",
        )
        .bind(delivered_at)
        .bind(i64::from(attempts))
        .bind(next.unix_timestamp())
        .bind(&failure)
        .bind(seq)
        .execute(&state.writer)
        .await?;
        state
            .metrics
            .webhook_deliveries
            .with_label_values(&[outcome])
            .inc();
        match failure {
            None => delivered += 1,
            Some(error) => {
                tracing::warn!(delivery = seq, attempts, error = %error, "alert webhook delivery failed; will retry");
            }
        }
    }
    let pending: i64 =
        crate::db::query("SELECT COUNT(*) FROM alert_deliveries WHERE delivered_at IS NULL")
            .fetch_one(&state.pool)
            .await?
            .get(0);
    state.metrics.webhook_pending.set(pending);
    Ok(delivered)
}

/// A delivery error without the URL (it may carry a token in its query).
fn short_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_request() {
        "request failed"
    } else {
        "failed"
    };
    kind.to_owned()
}
