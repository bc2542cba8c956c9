-- Recordings (issue 5). The media and wrapped keys live in the vault; this is what the service
-- knows about each recording: whose, its state, and when it must be shredded.
CREATE TABLE recordings (
    id TEXT PRIMARY KEY NOT NULL,
    consultation_id TEXT NOT NULL REFERENCES consultations (id),
    -- recording | complete | withdrawn | failed | interrupted | shredded
    state TEXT NOT NULL,
    zero_knowledge INTEGER NOT NULL DEFAULT 0 CHECK (zero_knowledge IN (0, 1)),
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    retain_until INTEGER NOT NULL,
    chunks INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    -- Why it stopped, for people (consent withdrawn, storage full, ...).
    note TEXT
);
CREATE INDEX recordings_by_consultation ON recordings (consultation_id);
CREATE INDEX recordings_by_retention ON recordings (retain_until);
