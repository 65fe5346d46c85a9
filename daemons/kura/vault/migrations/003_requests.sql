-- Registration requests (kura.core.requests): how long a link lives, so a
-- reissued link lives as long as the first one did, and when the current
-- link was issued.

ALTER TABLE registration_requests
    ADD COLUMN expires_days integer NOT NULL DEFAULT 14
        CHECK (expires_days BETWEEN 1 AND 60),
    ADD COLUMN issued_at    timestamptz NOT NULL DEFAULT now();
CREATE INDEX documents_request ON documents (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX documents_subject ON documents (subject_id) WHERE subject_id IS NOT NULL;
CREATE INDEX request_entries_request ON request_entries (request_id, position);
