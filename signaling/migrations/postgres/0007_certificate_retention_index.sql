-- Retention looks for certificates still sealed whose retention ended: by index, not by reading
-- the whole table each pass.
CREATE INDEX certificates_retention ON certificates (retain_until) WHERE sealed IS NOT NULL;
