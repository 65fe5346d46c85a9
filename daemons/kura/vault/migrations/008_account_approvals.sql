-- Two people for accounts that see numbers or approve (kura.core.account_approvals):
-- the DA's proposals, the activation code's two halves, and the first sign-in
-- of a new number handler.

-- An activated account has all three NULL. While one is pending the account
-- cannot sign in; each column holds the argon2 hash of one half, never a half.
ALTER TABLE users
    ADD COLUMN activation_a        text,
    ADD COLUMN activation_b        text,
    ADD COLUMN activation_expires  timestamptz,
    ADD COLUMN first_login_pending boolean NOT NULL DEFAULT false;

CREATE TABLE account_proposals (
    id            uuid PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('create', 'reset', 'enable', 'role')),
    username      text NOT NULL,
    role          text NOT NULL CHECK (role IN ('MU', 'MA', 'SA', 'DA')),  -- the role afterwards
    old_role      text,
    display_name  text NOT NULL DEFAULT '',
    reset_totp    boolean NOT NULL DEFAULT false,
    new_code      boolean NOT NULL,        -- approval issues an activation code
    half_a_hash   text,                    -- argon2 of the proposer's half, until decided
    proposer      text NOT NULL,
    approver      text,                    -- who approved or rejected
    state         text NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'approved', 'rejected', 'cancelled', 'expired')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    decided_at    timestamptz
);
-- One open proposal per account at a time.
CREATE UNIQUE INDEX account_proposals_pending ON account_proposals (username)
    WHERE state = 'pending';
CREATE INDEX account_proposals_user ON account_proposals (username, decided_at);

GRANT SELECT, INSERT, UPDATE ON account_proposals TO kura_vault;

-- The first-SA exception holds only while no SA has ever existed. Record that
-- one has, for appliances that had an SA before this migration.
INSERT INTO settings (key, value)
SELECT 'security_admin_existed', 'true'::jsonb
WHERE EXISTS (SELECT 1 FROM users WHERE role = 'SA')
   OR EXISTS (SELECT 1 FROM audit WHERE action IN ('user.create', 'user.update')
              AND detail ->> 'role' = 'SA')
ON CONFLICT (key) DO NOTHING;
