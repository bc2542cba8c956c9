-- End-to-end encryption per consultation (issue 4).
ALTER TABLE consultations ADD COLUMN e2ee INTEGER NOT NULL DEFAULT 0 CHECK (e2ee IN (0, 1));
