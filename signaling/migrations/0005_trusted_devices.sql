-- Device cookies: a device that completed a sign-in holds a random token (its hash is here),
-- bound to one account. Sign-in attempts that carry it are throttled on the device alone.
CREATE TABLE trusted_devices (
    id            TEXT PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL REFERENCES users(id),
    token_hash    TEXT NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    failures      INTEGER NOT NULL DEFAULT 0,
    locked_until  INTEGER
);

CREATE INDEX trusted_devices_by_user ON trusted_devices (user_id);
