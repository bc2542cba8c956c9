-- A restarted service gives everyone their place back: who was admitted, what each patient
-- answered about recording, and the doctor's participant id in each consultation (stable, so
-- the other side keeps its peer connection).
ALTER TABLE participants ADD COLUMN admitted_at INTEGER;
ALTER TABLE participants ADD COLUMN recording_consent TEXT;
ALTER TABLE consultations ADD COLUMN doctor_participant_id TEXT;
-- Consultations made before: a random version-4 UUID each.
UPDATE consultations SET doctor_participant_id = lower(
    hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-'
    || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(2)), 2) || '-'
    || hex(randomblob(6)))
WHERE doctor_participant_id IS NULL;
