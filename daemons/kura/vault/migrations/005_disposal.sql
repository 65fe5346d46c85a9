-- Disposal (kura.core.disposal, kura.vault.disposals): what a batch holds is
-- counted when it is proposed and again when it is executed, because its
-- subject_ids are emptied once the subjects are gone; the due list compares
-- each basis's events with one cut-off date.

ALTER TABLE disposal_batches
    ADD COLUMN subject_count integer NOT NULL DEFAULT 0 CHECK (subject_count >= 0),
    ADD COLUMN counts        jsonb NOT NULL DEFAULT '{}'::jsonb,   -- {kind: count}
    ADD CONSTRAINT disposal_batches_reason_length CHECK (length(reason) <= 500),
    ADD CONSTRAINT disposal_batches_decided
        CHECK ((state = 'proposed') = (decided_by IS NULL AND decided_at IS NULL));

ALTER TABLE disposal_records
    ADD CONSTRAINT disposal_records_method CHECK (method IN ('crypto_shred')),
    ADD CONSTRAINT disposal_records_kind
        CHECK (kind IN ('employee', 'dependent', 'payee', 'documents'));
CREATE INDEX disposal_records_batch ON disposal_records (batch_id);

ALTER TABLE retention_rules
    ADD CONSTRAINT retention_rules_keep_years CHECK (keep_years BETWEEN 0 AND 100);

CREATE INDEX subjects_retention ON subjects (retention_basis, retention_event)
    WHERE retention_event IS NOT NULL;
