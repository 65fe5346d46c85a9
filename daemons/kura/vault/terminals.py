"""The enrolled-terminal rule in the vault: gather the facts (the caller's
terminal, its standing among the enrolled agents, the terminal the session
signed in from), let kura.core.terminals judge, and audit a refusal."""

from __future__ import annotations

from kura.core import terminals
from kura.core.errors import TerminalNotEnrolled
from kura.core.roles import Role
from kura.vault.base import Caller, VaultBase


class TerminalRule(VaultBase):
    async def refuse_terminal(
        self, caller: Caller, username: str, role: Role, bound: str | None
    ) -> None:
        """Raise TerminalNotEnrolled, audited as ``auth.terminal_refused``,
        when the policy binds ``role`` and the caller's terminal is not an
        enrolled, compliant clerk PC (or not the one in ``bound``, the
        session's; None while signing in)."""
        if not terminals.applies(self.policy, role):
            return
        standing = await self.terminal_standing(caller.terminal) if caller.terminal else "unknown"
        reason = terminals.refusal(caller.terminal, standing, bound)
        if reason is None:
            return
        if self.writable:
            async with self.store.transaction() as tx:
                await tx.append_audit(
                    actor=username,
                    role=str(role),
                    action="auth.terminal_refused",
                    outcome="denied",
                    client=caller.client,
                    # The serial is public (it is in the certificate the
                    # browser showed); nothing secret goes here.
                    detail={
                        "reason": reason,
                        "standing": standing,
                        "terminal": caller.terminal or "-",
                    },
                )
        raise TerminalNotEnrolled(reason=reason)
