//! What the generator and tests read from the service's Prometheus `/metrics`.

/// A snapshot of the service's `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// `consult_joins_total`, summed over roles.
    pub joins: u64,
    /// `consult_active_consultations`.
    pub active_consultations: i64,
    /// CPU seconds the service used: `consult_process_cpu_seconds` (to the microsecond), or
    /// `process_cpu_seconds_total` (whole seconds).
    pub cpu_secs: Option<f64>,
    /// `process_resident_memory_bytes`.
    pub rss_bytes: Option<f64>,
    /// `consult_alerts_raised_total`, summed over rules (security alerts raised).
    pub alerts_raised: u64,
}

impl MetricsSnapshot {
    /// Read the text exposition format.
    ///
    /// ```
    /// use consult_api_client::MetricsSnapshot;
    ///
    /// let text = "# HELP x\nconsult_joins_total{role=\"doctor\"} 3\nconsult_joins_total{role=\"patient\"} 2\n\
    ///             consult_active_consultations 1\nprocess_cpu_seconds_total 1.5\n\
    ///             consult_alerts_raised_total{rule=\"invite_guessing\"} 2\n";
    /// let m = MetricsSnapshot::parse(text);
    /// assert_eq!((m.joins, m.active_consultations, m.cpu_secs), (5, 1, Some(1.5)));
    /// assert_eq!(m.alerts_raised, 2);
    /// assert_eq!(m.rss_bytes, None);
    /// ```
    pub fn parse(text: &str) -> Self {
        let mut snapshot = Self::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let metric = name.split('{').next().unwrap_or(name);
            match metric {
                "consult_joins_total" => snapshot.joins += value as u64,
                "consult_alerts_raised_total" => snapshot.alerts_raised += value as u64,
                "consult_active_consultations" => snapshot.active_consultations = value as i64,
                // Whole seconds; Consult's own gauge, when there, is finer and wins.
                "process_cpu_seconds_total" => {
                    snapshot.cpu_secs.get_or_insert(value);
                }
                "consult_process_cpu_seconds" => snapshot.cpu_secs = Some(value),
                "process_resident_memory_bytes" => snapshot.rss_bytes = Some(value),
                _ => {}
            }
        }
        snapshot
    }
}
