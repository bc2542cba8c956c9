//! Alerts on attacks: the detection [`rules`] watch failed sign-ins, unknown invite links,
//! refused signaling messages and recording exports; a rule that fires becomes an alert that is
//! stored, audited, counted in metrics and delivered to the configured webhook ([`webhook`]).
//!
//! Requests never wait for any of it: [`Alerts::observe`] counts in memory under a short lock
//! and hands what fired to a background writer, which stores the alert and queues its delivery
//! in one transaction with its audit entry. A rule that keeps firing on the same subject raises
//! the open alert's count instead of a new alert, so an attack cannot flood the log or the
//! webhook; an administrator acknowledges an alert from the API or the admin page.

pub mod rules;
pub mod webhook;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::audit::{Action, Actor};
use crate::auth::sessions::CurrentUser;
use crate::error::{ApiError, ApiPath, ApiQuery};
use crate::state::AppState;
use consult_proto::api::{ErrorBody, Role};
use rules::{Detector, Firing, Observation, Target, Thresholds};

/// The detector and the queue to the alert writer.
pub struct Alerts {
    detector: std::sync::Mutex<Detector>,
    fired: mpsc::UnboundedSender<(OffsetDateTime, Firing)>,
    receiver: std::sync::Mutex<Option<mpsc::UnboundedReceiver<(OffsetDateTime, Firing)>>>,
    /// Woken when a delivery is queued.
    pub(crate) delivery_queued: tokio::sync::Notify,
}

impl Alerts {
    /// Rules with these thresholds; nothing is stored until [`spawn_writer`] runs.
    pub fn new(thresholds: Thresholds) -> Self {
        let (fired, receiver) = mpsc::unbounded_channel();
        Self {
            detector: std::sync::Mutex::new(Detector::new(thresholds)),
            fired,
            receiver: std::sync::Mutex::new(Some(receiver)),
            delivery_queued: tokio::sync::Notify::new(),
        }
    }

    /// Count what happened; whatever fires is stored in the background.
    pub fn observe(&self, now: OffsetDateTime, observation: Observation) {
        let fired = match self.detector.lock() {
            Ok(mut detector) => detector.observe(now, &observation),
            Err(poisoned) => poisoned.into_inner().observe(now, &observation),
        };
        for firing in fired {
            // The writer lives as long as the service; after shutdown there is nothing to do.
            let _ = self.fired.send((now, firing));
        }
    }

    /// The target of a sign-in for an email with no account ([`Detector::email`]).
    pub fn unknown_email(&self, email: &str) -> Target {
        match self.detector.lock() {
            Ok(detector) => detector.email(email),
            Err(poisoned) => poisoned.into_inner().email(email),
        }
    }
}

/// An alert, as stored and as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Alert {
    /// Its id.
    pub id: Uuid,
    /// The rule that raised it (`credential_stuffing`, `password_spraying`,
    /// `second_factor_guessing`, `invite_guessing`, `cross_consultation`, `refused_exports`,
    /// `export_burst`).
    pub rule: String,
    /// `warning`, `high` or `critical`.
    pub severity: String,
    /// About whom: `address:IP` (IPv6 by /64), `user:ID`, `participant:ID` or `service`.
    pub subject: String,
    /// One line for a person.
    pub summary: String,
    /// The facts behind it: counts, window, ids; never a secret.
    #[schema(value_type = Object)]
    pub detail: Value,
    /// When it was raised, RFC 3339.
    pub raised_at: String,
    /// When its rule last fired for this subject, RFC 3339.
    pub last_seen_at: String,
    /// How many times the rule fired for this subject while it was open.
    pub firings: i64,
    /// When an administrator acknowledged it; open until then.
    pub acknowledged_at: Option<String>,
    /// Who acknowledged it (`user:ID`).
    pub acknowledged_by: Option<String>,
}

fn alert_from_row(row: &crate::db::Row) -> Alert {
    let detail: String = row.get("detail");
    Alert {
        id: row
            .get::<String, _>("id")
            .parse()
            .unwrap_or_else(|_| Uuid::nil()),
        rule: row.get("rule"),
        severity: row.get("severity"),
        subject: row.get("subject"),
        summary: row.get("summary"),
        detail: serde_json::from_str(&detail).unwrap_or(Value::String(detail)),
        raised_at: row.get("raised_at"),
        last_seen_at: row.get("last_seen_at"),
        firings: row.get("firings"),
        acknowledged_at: row.get("acknowledged_at"),
        acknowledged_by: row.get("acknowledged_by"),
    }
}

const ALERT_COLUMNS: &str = "id, rule, severity, subject, summary, detail, raised_at, \
     last_seen_at, firings, acknowledged_at, acknowledged_by";

/// What the webhook receives for a new alert (its body, signed; see [`webhook`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookBody {
    /// Always `alert_raised`.
    pub event: String,
    /// The service's public URL.
    pub service: String,
    /// The alert.
    pub alert: Alert,
}

/// Store a firing: a new alert (audited, and queued for the webhook when one is configured),
/// or one more firing of the open alert for the same rule and subject. Returns the alert and
/// whether it is new.
pub async fn raise(
    state: &AppState,
    at: OffsetDateTime,
    firing: &Firing,
) -> anyhow::Result<(Alert, bool)> {
    let rule = firing.rule.as_str();
    let at_text = at.format(&Rfc3339)?;
    let mut tx = state.audit.begin().await?;
    let open = crate::db::query(&format!(
        "SELECT {ALERT_COLUMNS} FROM alerts
         WHERE rule = $1 AND subject = $2 AND acknowledged_at IS NULL"
    ))
    .bind(rule)
    .bind(&firing.subject)
    .fetch_optional(tx.connection())
    .await?;
    if let Some(row) = open {
        let mut alert = alert_from_row(&row);
        crate::db::query(
            "UPDATE alerts SET firings = firings + 1, last_seen_at = $1 WHERE id = $2",
        )
        .bind(&at_text)
        .bind(alert.id.to_string())
        .execute(tx.connection())
        .await?;
        tx.commit().await?;
        alert.firings += 1;
        alert.last_seen_at = at_text;
        state.metrics.alert_firings.with_label_values(&[rule]).inc();
        return Ok((alert, false));
    }
    let alert = Alert {
        id: Uuid::new_v4(),
        rule: rule.to_owned(),
        severity: firing.rule.severity().as_str().to_owned(),
        subject: firing.subject.clone(),
        summary: firing.summary.clone(),
        detail: firing.detail.clone(),
        raised_at: at_text.clone(),
        last_seen_at: at_text,
        firings: 1,
        acknowledged_at: None,
        acknowledged_by: None,
    };
    crate::db::query(
        "INSERT INTO alerts (id, rule, severity, subject, summary, detail, raised_at,
            last_seen_at, firings)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1)",
    )
    .bind(alert.id.to_string())
    .bind(&alert.rule)
    .bind(&alert.severity)
    .bind(&alert.subject)
    .bind(&alert.summary)
    .bind(alert.detail.to_string())
    .bind(&alert.raised_at)
    .bind(&alert.last_seen_at)
    .execute(tx.connection())
    .await?;
    tx.record(
        at,
        &Actor::System,
        Action::AlertRaised,
        None,
        json!({ "alert_id": alert.id, "rule": rule, "severity": alert.severity,
                "subject": alert.subject, "summary": alert.summary }),
    )
    .await?;
    let webhook = state.config.alerts.webhook_url.is_some();
    if webhook {
        let body = WebhookBody {
            event: "alert_raised".into(),
            service: state.public_url.clone(),
            alert: alert.clone(),
        };
        crate::db::query(
            "INSERT INTO alert_deliveries (alert_id, event, body, next_attempt_at)
             VALUES ($1, 'alert_raised', $2, $3)",
        )
        .bind(alert.id.to_string())
        .bind(serde_json::to_string(&body)?)
        .bind(at.unix_timestamp())
        .execute(tx.connection())
        .await?;
    }
    tx.commit().await?;
    state.metrics.alerts_raised.with_label_values(&[rule]).inc();
    state.metrics.alert_firings.with_label_values(&[rule]).inc();
    tracing::warn!(alert = %alert.id, rule, subject = %alert.subject, summary = %alert.summary, "security alert");
    if webhook {
        state.alerts.delivery_queued.notify_one();
    }
    Ok((alert, true))
}

/// Store what the rules fire, for as long as the service runs.
pub fn spawn_writer(state: AppState) {
    let receiver = match state.alerts.receiver.lock() {
        Ok(mut slot) => slot.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    let Some(mut receiver) = receiver else {
        return;
    };
    tokio::spawn(async move {
        while let Some((at, firing)) = receiver.recv().await {
            if let Err(e) = raise(&state, at, &firing).await {
                tracing::error!(
                    error = format!("{e:#}"),
                    rule = firing.rule.as_str(),
                    "could not store an alert"
                );
            }
        }
    });
}

/// Alerts, open ones first, then the most recent acknowledged.
pub async fn list_alerts(pool: &crate::db::Db, open_only: bool) -> anyhow::Result<Vec<Alert>> {
    let filter = if open_only {
        "WHERE acknowledged_at IS NULL"
    } else {
        ""
    };
    let rows = crate::db::query(&format!(
        "SELECT {ALERT_COLUMNS} FROM alerts {filter}
         ORDER BY acknowledged_at IS NOT NULL, last_seen_at DESC LIMIT 500"
    ))
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(alert_from_row).collect())
}

fn require_admin(current: &CurrentUser) -> Result<(), ApiError> {
    if current.user.role == Role::Admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// The alerts an administrator sees.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AlertList {
    /// Open alerts first (most recently seen first), then acknowledged ones; at most 500.
    pub alerts: Vec<Alert>,
}

/// Which alerts to list.
#[derive(Debug, Deserialize, IntoParams)]
pub struct AlertQuery {
    /// `open` (the default) or `all`.
    pub state: Option<String>,
}

/// `GET /api/v1/admin/alerts`: open alerts (or all, with `?state=all`).
#[utoipa::path(get, path = "/api/v1/admin/alerts", tag = "admin", params(AlertQuery),
    responses((status = 200, body = AlertList), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody, description = "not an administrator")))]
pub async fn list(
    State(state): State<AppState>,
    current: CurrentUser,
    ApiQuery(query): ApiQuery<AlertQuery>,
) -> Result<Json<AlertList>, ApiError> {
    require_admin(&current)?;
    let open_only = match query.state.as_deref() {
        None | Some("open") => true,
        Some("all") => false,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_state",
                "state is open or all",
            ))
        }
    };
    Ok(Json(AlertList {
        alerts: list_alerts(&state.pool, open_only).await?,
    }))
}

/// `POST /api/v1/admin/alerts/{id}/acknowledge`: close an alert (audited); the rule raises a
/// new one if the attack goes on.
#[utoipa::path(post, path = "/api/v1/admin/alerts/{id}/acknowledge", tag = "admin",
    params(("id" = Uuid, Path, description = "alert id")),
    responses((status = 200, body = Alert), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody, description = "not an administrator"),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "already_acknowledged")))]
pub async fn acknowledge(
    State(state): State<AppState>,
    current: CurrentUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Alert>, ApiError> {
    require_admin(&current)?;
    let now = state.clock.now();
    let actor = Actor::User(current.user.id);
    let mut tx = state.audit.begin().await?;
    let row = crate::db::query(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(tx.connection())
        .await?
        .ok_or(ApiError::NotFound("alert"))?;
    let mut alert = alert_from_row(&row);
    if alert.acknowledged_at.is_some() {
        return Err(ApiError::conflict(
            "already_acknowledged",
            "this alert was already acknowledged",
        ));
    }
    let at = now
        .format(&Rfc3339)
        .map_err(|e| ApiError::Internal(e.into()))?;
    crate::db::query("UPDATE alerts SET acknowledged_at = $1, acknowledged_by = $2 WHERE id = $3")
        .bind(&at)
        .bind(actor.to_string())
        .bind(id.to_string())
        .execute(tx.connection())
        .await?;
    tx.record(
        now,
        &actor,
        Action::AlertAcknowledged,
        None,
        json!({ "alert_id": id, "rule": alert.rule, "subject": alert.subject, "firings": alert.firings }),
    )
    .await?;
    tx.commit().await?;
    alert.acknowledged_at = Some(at);
    alert.acknowledged_by = Some(actor.to_string());
    Ok(Json(alert))
}
