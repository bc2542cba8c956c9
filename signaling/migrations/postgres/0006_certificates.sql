-- Medical certificates (SD-JWT VC). The certificate itself (every claim, as its holder gets it)
-- is sealed by the vault under its own data key (`sealed`, JSON); retention clears it, and the
-- row stays for the status list and the audit trail. `status_index` is the certificate's bit in
-- the published status list, drawn at random so that it says nothing about when it was issued.
CREATE TABLE certificates (
    id              TEXT PRIMARY KEY NOT NULL,
    consultation_id TEXT NOT NULL REFERENCES consultations(id),
    invite_id       TEXT NOT NULL REFERENCES invites(id),
    issued_by       TEXT NOT NULL REFERENCES users(id),
    kind            TEXT NOT NULL,
    issued_at       BIGINT NOT NULL,
    valid_until     BIGINT NOT NULL,
    holder_until    BIGINT NOT NULL,
    retain_until    BIGINT NOT NULL,
    status_index    BIGINT NOT NULL UNIQUE,
    kid             TEXT NOT NULL,
    sealed          TEXT,
    revoked_at      BIGINT,
    revoked_by      TEXT,
    revoke_reason   TEXT,
    -- When a fetch by the patient's link was last audited (at most hourly: the page polls).
    holder_fetch_audited_at BIGINT
);
CREATE INDEX certificates_by_consultation ON certificates (consultation_id, issued_at);
CREATE INDEX certificates_revoked ON certificates (status_index) WHERE revoked_at IS NOT NULL;

-- The licence number a clinician signs certificates with, set by an operator.
ALTER TABLE users ADD COLUMN licence_number TEXT;
