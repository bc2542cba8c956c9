-- The PostgreSQL schema: the same tables, columns and rules as the SQLite migrations in the
-- directory above (0001 to 0010) at once, so every statement of the query layer runs unchanged
-- on both engines. Integers are BIGINT (SQLite's INTEGER is 64-bit); flags stay 0/1 integers;
-- times are Unix seconds or RFC 3339 text, as in SQLite. Two tables whose queries order by
-- insertion (SQLite's implicit rowid) get a column of that name.

CREATE TABLE users (
    id                   TEXT PRIMARY KEY NOT NULL,
    email                TEXT NOT NULL UNIQUE,
    display_name         TEXT NOT NULL,
    role                 TEXT NOT NULL CHECK (role IN ('doctor', 'admin')),
    password_hash        TEXT,
    totp_secret          TEXT,
    totp_last_step       BIGINT,
    failed_logins        BIGINT NOT NULL DEFAULT 0,
    locked_until         BIGINT,
    created_at           BIGINT NOT NULL,
    recording_public_key TEXT,
    disabled_at          BIGINT
);

CREATE TABLE enrolment_tokens (
    token_hash   TEXT PRIMARY KEY NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users(id),
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT
);

CREATE TABLE mfa_enrolments (
    token_hash   TEXT PRIMARY KEY NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users(id),
    totp_secret  TEXT NOT NULL,
    expires_at   BIGINT NOT NULL
);

CREATE TABLE recovery_codes (
    user_id      TEXT NOT NULL REFERENCES users(id),
    code_hash    TEXT NOT NULL,
    used_at      BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE sessions (
    id                   TEXT PRIMARY KEY NOT NULL,
    token_hash           TEXT NOT NULL UNIQUE,
    user_id              TEXT NOT NULL REFERENCES users(id),
    created_at           BIGINT NOT NULL,
    last_seen_at         BIGINT NOT NULL,
    absolute_expires_at  BIGINT NOT NULL,
    revoked_at           BIGINT,
    passkey_setup_only   BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE consultations (
    id                     TEXT PRIMARY KEY NOT NULL,
    doctor_id              TEXT NOT NULL REFERENCES users(id),
    title                  TEXT,
    scheduled_at           BIGINT,
    mode                   TEXT NOT NULL CHECK (mode IN ('live_only', 'recorded')),
    status                 TEXT NOT NULL CHECK (status IN ('open', 'ended')),
    created_at             BIGINT NOT NULL,
    ended_at               BIGINT,
    e2ee                   BIGINT NOT NULL DEFAULT 0 CHECK (e2ee IN (0, 1)),
    doctor_participant_id  TEXT NOT NULL
);
CREATE INDEX consultations_by_doctor ON consultations(doctor_id, created_at);

CREATE TABLE invites (
    id               TEXT PRIMARY KEY NOT NULL,
    consultation_id  TEXT NOT NULL REFERENCES consultations(id),
    token_hash       TEXT NOT NULL UNIQUE,
    issued_at        BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    revoked_at       BIGINT,
    rowid            BIGINT GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX invites_by_consultation ON invites(consultation_id, issued_at);

CREATE TABLE participants (
    id                 TEXT PRIMARY KEY NOT NULL,
    consultation_id    TEXT NOT NULL REFERENCES consultations(id),
    invite_id          TEXT NOT NULL REFERENCES invites(id),
    name               TEXT NOT NULL,
    token_hash         TEXT NOT NULL UNIQUE,
    created_at         BIGINT NOT NULL,
    released_at        BIGINT,
    admitted_at        BIGINT,
    recording_consent  TEXT
);
CREATE UNIQUE INDEX participants_one_holder ON participants(invite_id) WHERE released_at IS NULL;

-- Append-only tables refuse UPDATE, DELETE and TRUNCATE, as SQLite's triggers refuse the first two.
CREATE FUNCTION consult_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END
$$;

CREATE TABLE audit_log (
    seq              BIGINT PRIMARY KEY NOT NULL,
    at               TEXT NOT NULL,
    actor            TEXT NOT NULL,
    action           TEXT NOT NULL,
    consultation_id  TEXT,
    detail           TEXT NOT NULL,
    prev_hash        TEXT NOT NULL,
    hash             TEXT NOT NULL
);
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION consult_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION consult_append_only();

CREATE TABLE recordings (
    id               TEXT PRIMARY KEY NOT NULL,
    consultation_id  TEXT NOT NULL REFERENCES consultations (id),
    -- recording | complete | withdrawn | failed | interrupted | shredded
    state            TEXT NOT NULL,
    zero_knowledge   BIGINT NOT NULL DEFAULT 0 CHECK (zero_knowledge IN (0, 1)),
    started_at       BIGINT NOT NULL,
    ended_at         BIGINT,
    retain_until     BIGINT NOT NULL,
    chunks           BIGINT NOT NULL DEFAULT 0,
    bytes            BIGINT NOT NULL DEFAULT 0,
    -- Why it stopped, for people (consent withdrawn, storage full, ...).
    note             TEXT
);
CREATE INDEX recordings_by_consultation ON recordings (consultation_id);
CREATE INDEX recordings_by_retention ON recordings (retain_until);

CREATE TABLE trusted_devices (
    id            TEXT PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL REFERENCES users(id),
    token_hash    TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    failures      BIGINT NOT NULL DEFAULT 0,
    locked_until  BIGINT
);
CREATE INDEX trusted_devices_by_user ON trusted_devices (user_id);

CREATE TABLE passkeys (
    id             TEXT PRIMARY KEY NOT NULL,
    user_id        TEXT NOT NULL REFERENCES users(id),
    credential_id  TEXT NOT NULL UNIQUE,
    name           TEXT NOT NULL,
    passkey        TEXT NOT NULL,
    sign_count     BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    last_used_at   BIGINT,
    rowid          BIGINT GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX passkeys_by_user ON passkeys (user_id);

CREATE TABLE passkey_ceremonies_used (
    id          TEXT PRIMARY KEY NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX passkey_ceremonies_used_by_expiry ON passkey_ceremonies_used (expires_at);

CREATE TABLE audit_checkpoints (
    seq         BIGINT PRIMARY KEY NOT NULL,
    hash        TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    signature   TEXT NOT NULL,
    at          TEXT NOT NULL
);
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION consult_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION consult_append_only();

CREATE TABLE audit_tallies (
    window_start    BIGINT NOT NULL,    -- unix seconds
    window_seconds  BIGINT NOT NULL,
    action          TEXT NOT NULL,
    actor           TEXT NOT NULL,      -- user:ID, address:IP (IPv6 by /64), anonymous or others
    source          TEXT NOT NULL,      -- the client's address (IPv6 by /64), or others
    reason          TEXT NOT NULL,
    consultation_id TEXT NOT NULL,      -- '' for none
    count           BIGINT NOT NULL,
    first_at        TEXT NOT NULL,
    last_at         TEXT NOT NULL,
    PRIMARY KEY (window_start, action, actor, source, reason, consultation_id)
);

CREATE TABLE alerts (
    id              TEXT PRIMARY KEY NOT NULL,
    rule            TEXT NOT NULL,
    severity        TEXT NOT NULL,
    subject         TEXT NOT NULL,
    summary         TEXT NOT NULL,
    detail          TEXT NOT NULL,
    raised_at       TEXT NOT NULL,
    last_seen_at    TEXT NOT NULL,
    firings         BIGINT NOT NULL,
    acknowledged_at TEXT,
    acknowledged_by TEXT
);
CREATE UNIQUE INDEX alerts_one_open ON alerts(rule, subject) WHERE acknowledged_at IS NULL;

CREATE TABLE alert_deliveries (
    alert_id        TEXT NOT NULL REFERENCES alerts(id),
    event           TEXT NOT NULL,      -- raised, repeated
    body            TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,    -- unix seconds
    delivered_at    TEXT,
    last_error      TEXT,
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY
);
CREATE INDEX alert_deliveries_due ON alert_deliveries(next_attempt_at) WHERE delivered_at IS NULL;
