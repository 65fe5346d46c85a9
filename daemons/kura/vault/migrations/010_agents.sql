-- Endpoint agents (docs/agents.md, kura.vault.agents): enrolment tokens,
-- the enrolled agents, the signed policy bundles, the SA's policy per
-- profile, and the alerts the vault raises when an agent turns silent or
-- non-compliant. Nothing here is secret: a token is kept only as its
-- SHA-256, a certificate is public, a bundle is signed, not encrypted.

CREATE TABLE agent_tokens (
    id            uuid PRIMARY KEY,
    digest        bytea NOT NULL UNIQUE,          -- SHA-256 of the token; never the token
    profile       text NOT NULL CHECK (profile IN ('clerk-pc', 'business-server')),
    label         text NOT NULL DEFAULT '' CHECK (length(label) <= 100),
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL,
    expires       timestamptz NOT NULL,
    used_at       timestamptz,
    agent_id      text,                           -- the agent it enrolled
    withdrawn_at  timestamptz,
    withdrawn_by  text
);
CREATE INDEX agent_tokens_created ON agent_tokens (created_at);

CREATE TABLE agents (
    agent_id       text PRIMARY KEY,
    serial         text NOT NULL UNIQUE,          -- the client certificate's, lower-case hex
    profile        text NOT NULL CHECK (profile IN ('clerk-pc', 'business-server')),
    label          text NOT NULL DEFAULT '',
    hostname       text NOT NULL DEFAULT '',
    certificate    text NOT NULL,                 -- PEM
    token_id       uuid REFERENCES agent_tokens (id),
    state          text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'revoked')),
    enrolled_at    timestamptz NOT NULL,
    revoked_at     timestamptz,
    revoked_by     text,
    revoke_reason  text NOT NULL DEFAULT '',
    address        text,                          -- where its last heartbeat came from
    last_seen      timestamptz NOT NULL,
    policy_serial  bigint,                        -- the bundle it enforces, by its report
    posture        jsonb NOT NULL DEFAULT '{}',
    compliant      boolean NOT NULL DEFAULT true,
    problems       jsonb NOT NULL DEFAULT '[]'
);
CREATE INDEX agents_state ON agents (state, profile);

-- One serial sequence for the appliance: a bundle's serial only grows,
-- whatever its profile.
CREATE TABLE agent_bundles (
    serial     bigserial PRIMARY KEY,
    profile    text NOT NULL CHECK (profile IN ('clerk-pc', 'business-server')),
    version    integer NOT NULL,                  -- the policy version it was made from
    issued     timestamptz NOT NULL,
    body       bytea NOT NULL,                    -- the exact bytes signed
    signature  bytea NOT NULL                     -- Ed25519 over body
);
CREATE INDEX agent_bundles_profile ON agent_bundles (profile, serial DESC);

CREATE TABLE agent_policies (
    profile     text NOT NULL CHECK (profile IN ('clerk-pc', 'business-server')),
    version     integer NOT NULL CHECK (version >= 1),
    policy      jsonb NOT NULL,
    tests       jsonb NOT NULL DEFAULT '[]',
    saved_by    text NOT NULL,
    saved_at    timestamptz NOT NULL,
    PRIMARY KEY (profile, version)
);

CREATE TABLE alerts (
    id       bigserial PRIMARY KEY,
    kind     text NOT NULL,                       -- 'agent.silent', 'agent.noncompliant'
    target   text NOT NULL,                       -- the agent id
    raised   timestamptz NOT NULL,
    cleared  timestamptz,
    detail   jsonb NOT NULL DEFAULT '{}'
);
-- One open alert per kind and target.
CREATE UNIQUE INDEX alerts_open ON alerts (kind, target) WHERE cleared IS NULL;

GRANT SELECT, INSERT, UPDATE ON agent_tokens, agents, alerts TO kura_vault;
GRANT SELECT, INSERT ON agent_bundles, agent_policies TO kura_vault;
GRANT USAGE ON SEQUENCE agent_bundles_serial_seq, alerts_id_seq TO kura_vault;
