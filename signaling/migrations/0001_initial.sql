-- Accounts, sessions, consultations, invites, participants and the audit chain.
-- Times are Unix seconds (UTC). Tokens are stored only as their SHA-256 (hex).

CREATE TABLE users (
    id               TEXT PRIMARY KEY NOT NULL,
    email            TEXT NOT NULL UNIQUE,
    display_name     TEXT NOT NULL,
    role             TEXT NOT NULL CHECK (role IN ('doctor', 'admin')),
    password_hash    TEXT,
    totp_secret      TEXT,
    totp_last_step   INTEGER,
    failed_logins    INTEGER NOT NULL DEFAULT 0,
    locked_until     INTEGER,
    created_at       INTEGER NOT NULL
);

CREATE TABLE enrolment_tokens (
    token_hash   TEXT PRIMARY KEY NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users(id),
    expires_at   INTEGER NOT NULL,
    used_at      INTEGER
);

CREATE TABLE mfa_enrolments (
    token_hash   TEXT PRIMARY KEY NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users(id),
    totp_secret  TEXT NOT NULL,
    expires_at   INTEGER NOT NULL
);

CREATE TABLE recovery_codes (
    user_id      TEXT NOT NULL REFERENCES users(id),
    code_hash    TEXT NOT NULL,
    used_at      INTEGER,
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE sessions (
    id                   TEXT PRIMARY KEY NOT NULL,
    token_hash           TEXT NOT NULL UNIQUE,
    user_id              TEXT NOT NULL REFERENCES users(id),
    created_at           INTEGER NOT NULL,
    last_seen_at         INTEGER NOT NULL,
    absolute_expires_at  INTEGER NOT NULL,
    revoked_at           INTEGER
);

CREATE TABLE consultations (
    id             TEXT PRIMARY KEY NOT NULL,
    doctor_id      TEXT NOT NULL REFERENCES users(id),
    title          TEXT,
    scheduled_at   INTEGER,
    mode           TEXT NOT NULL CHECK (mode IN ('live_only', 'recorded')),
    status         TEXT NOT NULL CHECK (status IN ('open', 'ended')),
    created_at     INTEGER NOT NULL,
    ended_at       INTEGER
);
CREATE INDEX consultations_by_doctor ON consultations(doctor_id, created_at);

CREATE TABLE invites (
    id               TEXT PRIMARY KEY NOT NULL,
    consultation_id  TEXT NOT NULL REFERENCES consultations(id),
    token_hash       TEXT NOT NULL UNIQUE,
    issued_at        INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    revoked_at       INTEGER
);
CREATE INDEX invites_by_consultation ON invites(consultation_id, issued_at);

CREATE TABLE participants (
    id               TEXT PRIMARY KEY NOT NULL,
    consultation_id  TEXT NOT NULL REFERENCES consultations(id),
    invite_id        TEXT NOT NULL REFERENCES invites(id),
    name             TEXT NOT NULL,
    token_hash       TEXT NOT NULL UNIQUE,
    created_at       INTEGER NOT NULL,
    released_at      INTEGER
);
-- One patient device holds an invite at a time: at most one unreleased participant per invite.
CREATE UNIQUE INDEX participants_one_holder ON participants(invite_id) WHERE released_at IS NULL;

CREATE TABLE audit_log (
    seq              INTEGER PRIMARY KEY NOT NULL,
    at               TEXT NOT NULL,
    actor            TEXT NOT NULL,
    action           TEXT NOT NULL,
    consultation_id  TEXT,
    detail           TEXT NOT NULL,
    prev_hash        TEXT NOT NULL,
    hash             TEXT NOT NULL
);
-- Append-only: the service never rewrites history. (Someone with the file can still edit it;
-- that is what the hash chain and `consult audit verify` catch.)
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
