-- Which installation this database belongs to: one random id, made by the first node to start,
-- carried by every backup so a backup is never restored into (or mixed with) another installation.
CREATE TABLE installation (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    id TEXT NOT NULL,
    created_at TEXT NOT NULL
);
