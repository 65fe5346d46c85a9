-- Every audit export's closing signed checkpoint, kept so that a later export
-- can be shown to extend it (kura audit verify NEW --after OLD), and so that
-- an export is a fact the chain's owner cannot quietly forget.
CREATE TABLE audit_exports (
    id          bigserial PRIMARY KEY,
    seq         bigint NOT NULL,
    hash        bytea NOT NULL,
    at          timestamptz NOT NULL,
    signature   bytea NOT NULL,
    public_key  bytea NOT NULL,
    sha256      text NOT NULL,
    actor       text NOT NULL
);

CREATE TRIGGER audit_exports_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_exports
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

GRANT SELECT, INSERT ON audit_exports TO kura_vault;
GRANT USAGE ON SEQUENCE audit_exports_id_seq TO kura_vault;
