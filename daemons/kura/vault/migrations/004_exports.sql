-- Export requests (kura.core.exports): what a download may take and what
-- the requester was told when it was prepared. Never a number, never a name:
-- the report holds subject codes, field names and the characters at fault.

ALTER TABLE export_requests
    -- The subjects the rows were counted from: the download writes these and
    -- no others, so an approval covers exactly what leaves the appliance.
    ADD COLUMN selected_ids    uuid[] NOT NULL DEFAULT '{}',
    -- Subjects whose purposes do not include the declared one.
    ADD COLUMN skipped         integer NOT NULL DEFAULT 0 CHECK (skipped >= 0),
    -- Why subjects are not in the file: [{kind, code, problem, field, characters}],
    -- at most a thousand entries; report_total counts them all.
    ADD COLUMN report          jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN report_total    integer NOT NULL DEFAULT 0 CHECK (report_total >= 0),
    -- The SA's threshold when it was prepared (the reason it waited, or not).
    ADD COLUMN threshold       integer,
    -- Rows in the file actually taken (fewer than rows if subjects were
    -- disposed of or corrected in between).
    ADD COLUMN downloaded_rows integer CHECK (downloaded_rows >= 0);

CREATE INDEX export_requests_requester ON export_requests (requested_by, created_at);
