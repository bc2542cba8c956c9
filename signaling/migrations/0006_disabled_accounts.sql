-- An administrator can disable an account: it cannot sign in, and its sessions end at once.
ALTER TABLE users ADD COLUMN disabled_at INTEGER;
