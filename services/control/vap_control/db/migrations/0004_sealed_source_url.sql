-- 0004: camera credentials encrypted at rest. A scenario's source URL is kept sealed with the deployment's
-- camera key (vap_common.camera_secrets: Fernet) in `sealed_url`; `redacted_url` (the old `source_url`) keeps
-- only the redacted form for display. StartChannel payloads in the outbox carry the sealed URL too.
--
-- SQL cannot seal (the key is not in the database): rows written before this migration keep their
-- plaintext URL in `redacted_url` with `sealed_url` NULL until the control service that applied it seals
-- them, at once on the same start-up (vap_control.sealing.seal_stored_urls), together with the URLs in
-- outbox StartChannel payloads. Afterwards no plaintext credential is left in a live row; old row versions
-- may remain in the database files until VACUUM FULL (README, "Camera credentials").
ALTER TABLE scenarios RENAME COLUMN source_url TO redacted_url;
ALTER TABLE scenarios ADD COLUMN sealed_url bytea;
COMMENT ON COLUMN scenarios.redacted_url IS
    'Source URL with credentials replaced by ***: what the API shows (plaintext only while sealed_url IS NULL)';
COMMENT ON COLUMN scenarios.sealed_url IS
    'Source URL with its credentials, sealed with the camera key (Fernet token); opened by decoder agents only';
