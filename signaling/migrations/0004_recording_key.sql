-- Zero-knowledge recording (issue 5): each clinician's recording public key (X25519, base64).
-- Clients of their end-to-end encrypted consultations wrap SFrame keys to it; the private half
-- never reaches the service.
ALTER TABLE users ADD COLUMN recording_public_key TEXT;
