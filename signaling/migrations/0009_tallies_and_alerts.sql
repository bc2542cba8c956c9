-- Unauthenticated events (failed sign-ins, refused invite links) are counted per source and
-- window here instead of one audit entry each; when a window closes its counts enter the audit
-- chain as one entry per key, in the same transaction that deletes them from here. Every event
-- is counted in its own transaction, so the counts are exact across restarts.
CREATE TABLE audit_tallies (
    window_start    INTEGER NOT NULL,   -- unix seconds
    window_seconds  INTEGER NOT NULL,
    action          TEXT NOT NULL,
    actor           TEXT NOT NULL,      -- user:ID, address:IP (IPv6 by /64), anonymous or others
    source          TEXT NOT NULL,      -- the client's address (IPv6 by /64), or others
    reason          TEXT NOT NULL,
    consultation_id TEXT NOT NULL,      -- '' for none
    count           INTEGER NOT NULL,
    first_at        TEXT NOT NULL,
    last_at         TEXT NOT NULL,
    PRIMARY KEY (window_start, action, actor, source, reason, consultation_id)
);

-- Attacks noticed by the detection rules. One open alert per rule and subject: a rule that keeps
-- firing raises its count and last_seen_at instead of a new alert.
CREATE TABLE alerts (
    id              TEXT PRIMARY KEY NOT NULL,
    rule            TEXT NOT NULL,
    severity        TEXT NOT NULL,
    subject         TEXT NOT NULL,
    summary         TEXT NOT NULL,
    detail          TEXT NOT NULL,
    raised_at       TEXT NOT NULL,
    last_seen_at    TEXT NOT NULL,
    firings         INTEGER NOT NULL,
    acknowledged_at TEXT,
    acknowledged_by TEXT
);
CREATE UNIQUE INDEX alerts_one_open ON alerts(rule, subject) WHERE acknowledged_at IS NULL;

-- The webhook's outbox: one row per alert to deliver, kept until delivered (retried with
-- back-off meanwhile), so an endpoint that is down loses nothing.
CREATE TABLE alert_deliveries (
    alert_id        TEXT NOT NULL REFERENCES alerts(id),
    event           TEXT NOT NULL,      -- raised, repeated
    body            TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,   -- unix seconds
    delivered_at    TEXT,
    last_error      TEXT,
    seq             INTEGER PRIMARY KEY AUTOINCREMENT
);
CREATE INDEX alert_deliveries_due ON alert_deliveries(next_attempt_at) WHERE delivered_at IS NULL;
