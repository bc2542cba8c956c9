-- Signed heads of the audit chain (Ed25519, the key outside the database): a history rewritten
-- with every hash recomputed no longer matches them. Append-only, like the log.
CREATE TABLE audit_checkpoints (
    seq         INTEGER PRIMARY KEY NOT NULL,
    hash        TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    signature   TEXT NOT NULL,
    at          TEXT NOT NULL
);
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only'); END;
