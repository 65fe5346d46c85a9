-- Changes to the security policy (kura.core.policychange, kura.vault.policy).
-- A change that strengthens the policy is applied at once and kept here as
-- 'applied'; one that weakens it waits as 'proposed' until a second person
-- approves it ('approved': applied then), rejects it, its proposer cancels
-- it, or a newer proposal takes its place ('superseded'). ``changes`` holds
-- the asked-for values of the fields, ``base`` the whole policy they were
-- proposed against; neither ever holds a secret.

CREATE TABLE policy_changes (
    id           uuid PRIMARY KEY,
    state        text NOT NULL CHECK (state IN
                     ('applied', 'proposed', 'approved', 'rejected', 'cancelled', 'superseded')),
    proposed_by  text NOT NULL,
    proposed_at  timestamptz NOT NULL DEFAULT now(),
    changes      jsonb NOT NULL,             -- {field: asked-for value}
    base         jsonb NOT NULL,             -- the policy when it was proposed
    decided_by   text,
    decided_at   timestamptz,
    reason       text NOT NULL DEFAULT '' CHECK (length(reason) <= 500),
    CONSTRAINT policy_changes_decided
        CHECK ((state = 'proposed') = (decided_by IS NULL AND decided_at IS NULL))
);
-- At most one change waits at a time.
CREATE UNIQUE INDEX policy_changes_one_pending ON policy_changes ((true))
    WHERE state = 'proposed';
CREATE INDEX policy_changes_decided_at ON policy_changes (decided_at);

GRANT SELECT, INSERT, UPDATE ON policy_changes TO kura_vault;
