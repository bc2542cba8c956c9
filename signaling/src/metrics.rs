//! Prometheus metrics, served at `/metrics`.

use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Every metric the service exports. Cheap to clone (the metrics are shared handles).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Open signaling WebSockets.
    pub connected_sockets: IntGauge,
    /// Signaling WebSockets this node relays to their consultation's node (several nodes).
    pub relayed_sockets: IntGauge,
    /// Doctors whose consultations this node holds (several nodes).
    pub cluster_homes: IntGauge,
    /// Consultations with at least one participant present.
    pub active_consultations: IntGauge,
    /// Successful `join`s, by role.
    pub joins: IntCounterVec,
    /// Failed sign-in attempts (wrong password or code, locked).
    pub failed_signins: IntCounter,
    /// Signaling messages accepted, by type.
    pub signal_messages: IntCounterVec,
    /// Signaling messages refused, by reason.
    pub signal_rejected: IntCounterVec,
    /// Connections (HTTP and WebSocket) open now.
    pub open_connections: IntGauge,
    /// Connections closed on arrival, by limit (`per_address`, `total`).
    pub connections_refused: IntCounterVec,
    /// HTTP answers, by status class (`1xx` … `5xx`).
    pub http_responses: IntCounterVec,
    /// Candidates the recorder refused, by reason (`not_allowed`, `too_many`, `unparsable`).
    pub recorder_candidates_refused: IntCounterVec,
    /// Security alerts raised, by rule.
    pub alerts_raised: IntCounterVec,
    /// Times a detection rule fired (a new alert or one more firing of an open one), by rule.
    pub alert_firings: IntCounterVec,
    /// Alert webhook delivery attempts, by outcome (`delivered`, `failed`).
    pub webhook_deliveries: IntCounterVec,
    /// Alert deliveries not taken by the webhook yet.
    pub webhook_pending: IntGauge,
    /// CPU time the process used, to the microsecond (`process_cpu_seconds_total` counts whole
    /// seconds, too coarse for the load generator's per-second cost figures).
    cpu_seconds: Gauge,
    /// Scheduled backups.
    pub backup: BackupMetrics,
}

/// Scheduled backups' metrics (`consult_backup_*`).
#[derive(Clone)]
pub struct BackupMetrics {
    /// Unix time of the last successful backup (0: none since start and none in the repository).
    pub last_success: IntGauge,
    /// How long the last successful backup took, in seconds.
    pub last_duration: Gauge,
    /// Bytes the last successful backup uploaded (new after deduplication).
    pub last_added_bytes: IntGauge,
    /// Bytes the last successful backup read.
    pub last_processed_bytes: IntGauge,
    /// The configured interval, in seconds (for the staleness alert).
    pub interval: IntGauge,
    /// Failed backup runs, by reason.
    pub failures: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        // Names and label sets are constants: these cannot fail.
        let connected_sockets =
            IntGauge::new("consult_ws_connected_sockets", "Open signaling WebSockets")
                .expect("valid metric");
        let cluster_homes = IntGauge::new(
            "consult_cluster_homes",
            "Doctors whose consultations this node holds (their home, with several nodes)",
        )
        .expect("valid metric");
        let relayed_sockets = IntGauge::new(
            "consult_ws_relayed_sockets",
            "Signaling WebSockets this node relays to the node holding their consultation",
        )
        .expect("valid metric");
        let active_consultations = IntGauge::new(
            "consult_active_consultations",
            "Consultations with at least one participant present",
        )
        .expect("valid metric");
        let joins = IntCounterVec::new(
            Opts::new("consult_joins_total", "Successful signaling joins"),
            &["role"],
        )
        .expect("valid metric");
        let failed_signins =
            IntCounter::new("consult_failed_signins_total", "Failed sign-in attempts")
                .expect("valid metric");
        let signal_messages = IntCounterVec::new(
            Opts::new(
                "consult_signal_messages_total",
                "Signaling messages accepted, by type",
            ),
            &["type"],
        )
        .expect("valid metric");
        let signal_rejected = IntCounterVec::new(
            Opts::new(
                "consult_signal_rejected_total",
                "Signaling messages refused, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let open_connections = IntGauge::new(
            "consult_open_connections",
            "Connections (HTTP and WebSocket) open now",
        )
        .expect("valid metric");
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "consult_connections_refused_total",
                "Connections closed on arrival, by the limit reached",
            ),
            &["limit"],
        )
        .expect("valid metric");
        let http_responses = IntCounterVec::new(
            Opts::new(
                "consult_http_responses_total",
                "HTTP answers, by status class",
            ),
            &["class"],
        )
        .expect("valid metric");
        let recorder_candidates_refused = IntCounterVec::new(
            Opts::new(
                "consult_recorder_candidates_refused_total",
                "ICE candidates the recorder refused, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let alerts_raised = IntCounterVec::new(
            Opts::new(
                "consult_alerts_raised_total",
                "Security alerts raised, by rule",
            ),
            &["rule"],
        )
        .expect("valid metric");
        let alert_firings = IntCounterVec::new(
            Opts::new(
                "consult_alert_firings_total",
                "Times a detection rule fired, by rule",
            ),
            &["rule"],
        )
        .expect("valid metric");
        let webhook_deliveries = IntCounterVec::new(
            Opts::new(
                "consult_alert_webhook_deliveries_total",
                "Alert webhook delivery attempts, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let webhook_pending = IntGauge::new(
            "consult_alert_webhook_pending",
            "Alert deliveries the webhook has not taken yet",
        )
        .expect("valid metric");
        let cpu_seconds = Gauge::new(
            "consult_process_cpu_seconds",
            "CPU time (user and system) the service used, in seconds, to the microsecond",
        )
        .expect("valid metric");
        let backup = BackupMetrics {
            last_success: IntGauge::new(
                "consult_backup_last_success_timestamp_seconds",
                "Unix time of the last successful backup",
            )
            .expect("valid metric"),
            last_duration: Gauge::new(
                "consult_backup_last_duration_seconds",
                "How long the last successful backup took",
            )
            .expect("valid metric"),
            last_added_bytes: IntGauge::new(
                "consult_backup_last_added_bytes",
                "Bytes the last successful backup uploaded (new after deduplication)",
            )
            .expect("valid metric"),
            last_processed_bytes: IntGauge::new(
                "consult_backup_last_processed_bytes",
                "Bytes the last successful backup read",
            )
            .expect("valid metric"),
            interval: IntGauge::new(
                "consult_backup_interval_seconds",
                "How often backups are scheduled (0: not on this node)",
            )
            .expect("valid metric"),
            failures: IntCounterVec::new(
                Opts::new(
                    "consult_backup_failures_total",
                    "Failed backup runs, by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
        };
        for metric in [
            Box::new(backup.last_success.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(backup.last_duration.clone()),
            Box::new(backup.last_added_bytes.clone()),
            Box::new(backup.last_processed_bytes.clone()),
            Box::new(backup.interval.clone()),
            Box::new(backup.failures.clone()),
            Box::new(connected_sockets.clone()),
            Box::new(relayed_sockets.clone()),
            Box::new(cluster_homes.clone()),
            Box::new(active_consultations.clone()),
            Box::new(joins.clone()),
            Box::new(failed_signins.clone()),
            Box::new(signal_messages.clone()),
            Box::new(signal_rejected.clone()),
            Box::new(open_connections.clone()),
            Box::new(connections_refused.clone()),
            Box::new(http_responses.clone()),
            Box::new(recorder_candidates_refused.clone()),
            Box::new(alerts_raised.clone()),
            Box::new(alert_firings.clone()),
            Box::new(webhook_deliveries.clone()),
            Box::new(webhook_pending.clone()),
            Box::new(cpu_seconds.clone()),
        ] {
            registry.register(metric).expect("metric registered once");
        }
        // The service's own CPU seconds and resident memory (`process_*`), which the load
        // generator reads to report cost per consultation. Linux only.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registered once");
        // Every label value exists from the start, at zero: an alerting rule on `increase()`
        // sees the first event too.
        for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            http_responses.with_label_values(&[class]);
        }
        for rule in crate::alerts::rules::Rule::ALL {
            alerts_raised.with_label_values(&[rule.as_str()]);
            alert_firings.with_label_values(&[rule.as_str()]);
        }
        for outcome in ["delivered", "failed"] {
            webhook_deliveries.with_label_values(&[outcome]);
        }
        for reason in ["not_allowed", "too_many", "unparsable"] {
            recorder_candidates_refused.with_label_values(&[reason]);
        }
        for reason in crate::backup::schedule::FAILURE_REASONS {
            backup.failures.with_label_values(&[reason]);
        }
        for limit in ["per_address", "total"] {
            connections_refused.with_label_values(&[limit]);
        }
        // The refusals an attack on the WebSocket shows first.
        for reason in [
            "foreign_origin",
            "too_many_unjoined",
            "malformed",
            "unauthorized",
            "not_admitted",
            "outside_consultation",
            "rate_limited",
        ] {
            signal_rejected.with_label_values(&[reason]);
        }
        Self {
            registry,
            http_responses,
            recorder_candidates_refused,
            connected_sockets,
            relayed_sockets,
            cluster_homes,
            active_consultations,
            joins,
            failed_signins,
            signal_messages,
            signal_rejected,
            open_connections,
            connections_refused,
            alerts_raised,
            alert_firings,
            webhook_deliveries,
            webhook_pending,
            cpu_seconds,
            backup,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        if let Ok(usage) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            self.cpu_seconds
                .set(secs(usage.user_time()) + secs(usage.system_time()));
        }
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// The class of a status code as counted: `1xx` … `5xx`.
///
/// ```
/// use consult_signaling::metrics::status_class;
/// use axum::http::StatusCode;
///
/// assert_eq!(status_class(StatusCode::GONE), "4xx");
/// assert_eq!(status_class(StatusCode::SERVICE_UNAVAILABLE), "5xx");
/// ```
pub fn status_class(status: axum::http::StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
