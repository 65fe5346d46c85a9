-- Reports (kura.vault.reports): the access report counts a period's entries
-- per action, and the ledger looks for reveals and take-outs by action and
-- time. audit_at serves a period alone; this serves an action within one,
-- and the audit search's prefix match on the action (text_pattern_ops).
CREATE INDEX audit_action_at ON audit (action text_pattern_ops, at);
