-- Whether the doctor lets everyone else in the call (patients, interpreters, companions) share a
-- screen; clinicians always may. Kept, so a restarted service and another node say the same.
ALTER TABLE consultations ADD COLUMN guests_share_screen BIGINT NOT NULL DEFAULT 0
    CHECK (guests_share_screen IN (0, 1));
