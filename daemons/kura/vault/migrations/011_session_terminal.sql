-- The enrolled-terminal rule (kura.core.terminals): a session remembers the
-- client-certificate serial it signed in with, so that under the policy's
-- require_enrolled_terminal it works only from that clerk PC. '' for a
-- browser without a certificate (and for every session opened before).

ALTER TABLE sessions ADD COLUMN terminal text NOT NULL DEFAULT ''
    CHECK (length(terminal) <= 64);
