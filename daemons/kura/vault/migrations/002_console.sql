-- What the web console's flows need: per-user language, registration
-- requests that can be reissued and purge their documents, export requests
-- awaiting an MA, retention rules the SA edits, and disposal batches with
-- their records (廃棄記録: never a number, never a name).

ALTER TABLE users ADD COLUMN language text NOT NULL DEFAULT 'ja'
    CHECK (language IN ('ja', 'en'));

-- Registration requests (state machine: kura.core.requests).
ALTER TABLE registration_requests
    ADD COLUMN name_kana        text NOT NULL DEFAULT '',
    ADD COLUMN purge_documents  boolean NOT NULL DEFAULT false,
    ADD COLUMN submitted_at     timestamptz,
    ADD COLUMN links_issued     integer NOT NULL DEFAULT 1,
    ADD COLUMN documents_purged_at timestamptz,
    ADD CONSTRAINT registration_requests_state
        CHECK (state IN ('open', 'submitted', 'approved', 'rejected', 'cancelled'));
CREATE INDEX registration_requests_state ON registration_requests (state, created_at);
ALTER TABLE request_entries ADD COLUMN position integer NOT NULL DEFAULT 0;
ALTER TABLE documents ADD COLUMN entry_position integer NOT NULL DEFAULT 0;

-- Exports over the SA's threshold wait here for an MA (kura.core.exports).
CREATE TABLE export_requests (
    id            uuid PRIMARY KEY,
    requested_by  text NOT NULL,
    purpose       text NOT NULL REFERENCES purposes (code),
    kind          text CHECK (kind IS NULL OR kind IN ('employee', 'dependent', 'payee')),
    subject_ids   uuid[],
    encoding      text NOT NULL CHECK (encoding IN ('shift_jis', 'utf-8-bom')),
    tax_year      integer,
    rows          integer NOT NULL CHECK (rows >= 0),
    state         text NOT NULL
        CHECK (state IN ('pending', 'approved', 'rejected', 'downloaded', 'cancelled')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    decided_by    text,
    decided_at    timestamptz,
    reason        text NOT NULL DEFAULT '',
    downloaded_at timestamptz,
    sha256        text NOT NULL DEFAULT ''
);
CREATE INDEX export_requests_state ON export_requests (state, created_at);

-- Retention rules: the SA edits the years and the anchor.
--   event            due = retention_event + keep_years
--   jan11_next_year  due = 11 January of (event's year + 1) + keep_years
--                    (扶養控除等申告書: seven years from the day after
--                    10 January of the year after the filing deadline)
ALTER TABLE retention_rules ADD COLUMN anchor text NOT NULL DEFAULT 'event'
    CHECK (anchor IN ('event', 'jan11_next_year'));
UPDATE retention_rules SET anchor = 'jan11_next_year' WHERE basis = 'employment';

-- Disposal (kura.core.disposal): a batch is proposed from the due list and
-- approved by an MA; executing it destroys the subjects' keys and rows and
-- leaves one record per kind and basis.
CREATE TABLE disposal_batches (
    id           uuid PRIMARY KEY,
    state        text NOT NULL CHECK (state IN ('proposed', 'approved', 'rejected')),
    proposed_by  text NOT NULL,
    proposed_at  timestamptz NOT NULL DEFAULT now(),
    decided_by   text,
    decided_at   timestamptz,
    reason       text NOT NULL DEFAULT '',
    subject_ids  uuid[] NOT NULL             -- emptied once the batch is executed
);
CREATE INDEX disposal_batches_state ON disposal_batches (state, proposed_at);

CREATE TABLE disposal_records (
    id           uuid PRIMARY KEY,
    batch_id     uuid NOT NULL REFERENCES disposal_batches (id),
    disposed_at  timestamptz NOT NULL,
    kind         text NOT NULL,              -- employee | dependent | payee | documents
    basis        text NOT NULL,
    count        integer NOT NULL CHECK (count >= 0),
    method       text NOT NULL,              -- crypto_shred: key destroyed, rows deleted
    operator     text NOT NULL,
    approver     text NOT NULL
);
CREATE INDEX disposal_records_at ON disposal_records (disposed_at);
CREATE TRIGGER disposal_records_append_only BEFORE UPDATE OR DELETE OR TRUNCATE
    ON disposal_records FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

GRANT UPDATE ON retention_rules TO kura_vault;
GRANT SELECT, INSERT, UPDATE, DELETE ON export_requests, disposal_batches TO kura_vault;
GRANT SELECT, INSERT ON disposal_records TO kura_vault;
