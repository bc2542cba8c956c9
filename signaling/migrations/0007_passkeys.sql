-- Passkeys (WebAuthn credentials) of clinicians. `passkey` is webauthn-rs's serialised
-- credential (public key, counter, flags); `sign_count` repeats its counter so that an update
-- can be conditional on the value it replaces (a cloned authenticator racing the real one).
CREATE TABLE passkeys (
    id             TEXT PRIMARY KEY NOT NULL,
    user_id        TEXT NOT NULL REFERENCES users(id),
    credential_id  TEXT NOT NULL UNIQUE,
    name           TEXT NOT NULL,
    passkey        TEXT NOT NULL,
    sign_count     INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    last_used_at   INTEGER
);

CREATE INDEX passkeys_by_user ON passkeys (user_id);

-- Ceremonies (sealed, handed to the client) that were answered: each works once.
CREATE TABLE passkey_ceremonies_used (
    id          TEXT PRIMARY KEY NOT NULL,
    expires_at  INTEGER NOT NULL
);

CREATE INDEX passkey_ceremonies_used_by_expiry ON passkey_ceremonies_used (expires_at);

-- Under a policy that requires a passkey, a session opened without one (the first sign-in, or a
-- recovery code) may only register a passkey.
ALTER TABLE sessions ADD COLUMN passkey_setup_only INTEGER NOT NULL DEFAULT 0;
