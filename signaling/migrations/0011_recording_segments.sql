-- A recording cut short by the end of the node recording it (`interrupted`) is continued by the
-- next recorder of its consultation in a new segment, which names the one it continues; the
-- segments export as one file. A recording is continued at most once.
ALTER TABLE recordings ADD COLUMN continues TEXT REFERENCES recordings (id);
CREATE UNIQUE INDEX recordings_by_continues ON recordings (continues);
