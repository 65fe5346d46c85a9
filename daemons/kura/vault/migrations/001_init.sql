-- Kura's first schema. Applied by `kura db migrate` as the owner role; the
-- daemons connect as kura_vault, which may read and append audit rows but
-- never change or delete them.

CREATE TABLE keyring (
    version     integer PRIMARY KEY CHECK (version > 0),
    wrapped     bytea NOT NULL,              -- the KEK, wrapped by the root key
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE purposes (
    code  text PRIMARY KEY,
    ja    text NOT NULL,
    en    text NOT NULL
);

CREATE TABLE retention_rules (
    basis        text PRIMARY KEY,           -- employment | contract | last_payment
    ja           text NOT NULL,
    en           text NOT NULL,
    keep_years   integer NOT NULL CHECK (keep_years >= 0),
    note         text NOT NULL DEFAULT ''
);

CREATE TABLE subjects (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('employee', 'dependent', 'payee')),
    code             text NOT NULL,
    name             text NOT NULL,
    name_kana        text NOT NULL DEFAULT '',
    employee_id      uuid REFERENCES subjects (id) ON DELETE RESTRICT,
    birth_date       date,
    purposes         text[] NOT NULL,
    retention_basis  text NOT NULL REFERENCES retention_rules (basis),
    retention_event  date,                   -- end of employment / contract / last payment
    kek_version      integer NOT NULL REFERENCES keyring (version),
    wrapped_key      bytea NOT NULL,         -- the subject's data key, wrapped by the KEK
    number_ct        bytea NOT NULL,         -- AES-256-GCM, bound to (id, 'number'); the data key is bound to kek_version
    number_bidx      bytea NOT NULL,         -- keyed blind index for exact lookup
    created_at       timestamptz NOT NULL DEFAULT now(),
    created_by       text NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT subjects_number_unique UNIQUE (number_bidx),
    CONSTRAINT dependents_have_employee CHECK ((kind = 'dependent') = (employee_id IS NOT NULL))
);
-- Employee and payee codes are unique; dependents are often keyed by their
-- employee's code in payroll files, so theirs need not be.
CREATE UNIQUE INDEX subjects_code_unique ON subjects (kind, code) WHERE kind <> 'dependent';
CREATE INDEX subjects_code ON subjects (code);
CREATE INDEX subjects_name ON subjects (name text_pattern_ops);
CREATE INDEX subjects_name_kana ON subjects (name_kana text_pattern_ops);
CREATE INDEX subjects_employee ON subjects (employee_id);

CREATE TABLE registration_requests (
    id             uuid PRIMARY KEY,
    employee_code  text NOT NULL,
    name           text NOT NULL,
    purposes       text[] NOT NULL,
    token_digest   bytea NOT NULL UNIQUE,    -- sha256 of the one-time link's token
    state          text NOT NULL,
    expires_at     timestamptz NOT NULL,
    created_by     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    decided_by     text,
    decided_at     timestamptz,
    reason         text NOT NULL DEFAULT '',
    subject_id     uuid REFERENCES subjects (id) ON DELETE SET NULL
);

CREATE TABLE request_entries (
    id             uuid PRIMARY KEY,
    request_id     uuid NOT NULL REFERENCES registration_requests (id) ON DELETE CASCADE,
    relation       text NOT NULL,            -- self | spouse | child | parent | other
    name           text NOT NULL,
    name_kana      text NOT NULL DEFAULT '',
    birth_date     date,
    kek_version    integer NOT NULL REFERENCES keyring (version),
    wrapped_key    bytea NOT NULL,
    number_ct      bytea NOT NULL,
    number_bidx    bytea NOT NULL
);

CREATE TABLE documents (
    id             uuid PRIMARY KEY,
    subject_id     uuid REFERENCES subjects (id) ON DELETE CASCADE,
    request_id     uuid REFERENCES registration_requests (id) ON DELETE CASCADE,
    kind           text NOT NULL CHECK (kind IN ('number', 'identity')),
    content_type   text NOT NULL,
    size           integer NOT NULL,
    kek_version    integer NOT NULL REFERENCES keyring (version),
    wrapped_key    bytea NOT NULL,
    content_ct     bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((subject_id IS NULL) <> (request_id IS NULL))
);

CREATE TABLE users (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username             text NOT NULL UNIQUE,
    display_name         text NOT NULL DEFAULT '',
    role                 text NOT NULL CHECK (role IN ('MU', 'MA', 'SA', 'DA')),
    password_hash        text NOT NULL,
    password_changed_at  timestamptz NOT NULL DEFAULT now(),
    must_change_password boolean NOT NULL DEFAULT true,
    totp_kek_version     integer REFERENCES keyring (version),
    totp_wrapped_key     bytea,
    totp_secret_ct       bytea,              -- encrypted like a number; null until enrolled
    totp_pending_ct      bytea,              -- a secret being enrolled, not yet confirmed
    totp_last_step       bigint,
    failed_logins        integer NOT NULL DEFAULT 0,
    locked_until         timestamptz,
    disabled             boolean NOT NULL DEFAULT false,
    created_at           timestamptz NOT NULL DEFAULT now(),
    last_login_at        timestamptz
);

CREATE TABLE password_history (
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    hash        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX password_history_user ON password_history (user_id, created_at DESC);

CREATE TABLE sessions (
    token_digest  bytea PRIMARY KEY,         -- sha256 of the token; the token itself is never stored
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen     timestamptz NOT NULL DEFAULT now(),
    client        text NOT NULL DEFAULT '',
    mfa_done      boolean NOT NULL DEFAULT false
);

CREATE TABLE settings (
    key    text PRIMARY KEY,
    value  jsonb NOT NULL
);

CREATE TABLE audit (
    seq        bigint PRIMARY KEY CHECK (seq > 0),
    at         timestamptz NOT NULL,
    actor      text NOT NULL,
    role       text NOT NULL,
    action     text NOT NULL,
    outcome    text NOT NULL CHECK (outcome IN ('ok', 'denied', 'error')),
    target     text NOT NULL,
    purpose    text NOT NULL,
    client     text NOT NULL,
    detail     jsonb NOT NULL,
    prev_hash  bytea NOT NULL,
    hash       bytea NOT NULL
);
CREATE INDEX audit_at ON audit (at);
CREATE INDEX audit_actor ON audit (actor, at);

CREATE TABLE audit_checkpoints (
    seq         bigint PRIMARY KEY,
    hash        bytea NOT NULL,
    at          timestamptz NOT NULL,
    signature   bytea NOT NULL,
    public_key  bytea NOT NULL
);

-- Append-only, even for a role that was granted too much by mistake.
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only (%)', TG_OP;
END;
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

INSERT INTO retention_rules (basis, ja, en, keep_years, note) VALUES
    ('employment', '退職', 'End of employment', 7,
     '扶養控除等申告書: 提出期限の翌年1月10日の翌日から7年'),
    ('contract', '契約終了', 'End of contract', 7, ''),
    ('last_payment', '最終支払', 'Last payment', 7, '');

GRANT SELECT, INSERT ON keyring TO kura_vault;
GRANT SELECT ON purposes, retention_rules TO kura_vault;
GRANT SELECT, INSERT, UPDATE, DELETE ON subjects, registration_requests, request_entries,
    documents, users, password_history, sessions, settings TO kura_vault;
GRANT SELECT, INSERT ON audit, audit_checkpoints TO kura_vault;
