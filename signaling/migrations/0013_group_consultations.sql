-- Group consultations. Every invite is for a kind of participant; a named invite carries the name
-- its doctor chose (the patient link has none: the patient enters theirs). Every place knows its
-- role. Colleagues (other clinician accounts) added to a consultation, with the participant id
-- they have in its calls and whether the doctor admitted them (so a restart gives the place back).
ALTER TABLE invites ADD COLUMN kind TEXT NOT NULL DEFAULT 'patient'
    CHECK (kind IN ('patient', 'interpreter', 'companion'));
ALTER TABLE invites ADD COLUMN name TEXT;
ALTER TABLE participants ADD COLUMN role TEXT NOT NULL DEFAULT 'patient'
    CHECK (role IN ('patient', 'interpreter', 'companion'));

CREATE TABLE consultation_clinicians (
    consultation_id  TEXT NOT NULL REFERENCES consultations(id),
    user_id          TEXT NOT NULL REFERENCES users(id),
    participant_id   TEXT NOT NULL UNIQUE,
    added_at         INTEGER NOT NULL,
    admitted_at      INTEGER,
    removed_at       INTEGER,
    PRIMARY KEY (consultation_id, user_id)
);
CREATE INDEX consultation_clinicians_by_user ON consultation_clinicians(user_id, added_at);
