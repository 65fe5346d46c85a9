"""The one way the agent talks to the kernel's packet filter: Debian's
``nftables`` binding (libnftables through ctypes), JSON in and out.

The rules themselves come from ``rules.py``; this module only applies a
transaction and reads the table back.
"""

from __future__ import annotations

import json
from typing import Any

from kura.agent import rules
from kura.agent.errors import AgentError


class FirewallError(AgentError):
    """nftables refused a transaction or is not available; the kernel still
    holds whatever it held before."""


def _nft() -> Any:
    try:
        import nftables  # Debian's python3-nftables: only on endpoints
    except ImportError as exc:
        raise FirewallError("the nftables Python module is missing (apt-get install "
                            "python3-nftables)") from exc
    handle = nftables.Nftables()
    handle.set_json_output(True)
    handle.set_handle_output(False)
    return handle


def run(transaction: dict[str, Any]) -> None:
    """Apply ``transaction`` atomically; ``FirewallError`` with nft's message
    when the kernel refused it (nothing of it is then in effect)."""
    code, _output, error = _nft().json_cmd(transaction)
    if code != 0:
        raise FirewallError(f"nftables refused the rules: {str(error).strip()[:300]}")


def apply(body: dict[str, Any]) -> None:
    run(rules.ruleset(body))


def table() -> list[dict[str, Any]] | None:
    """The agent's table as nft lists it (chains and rules), or None when it
    does not exist."""
    code, output, _error = _nft().cmd(f"list table {rules.FAMILY} {rules.TABLE}")
    if code != 0:
        return None
    items = json.loads(output).get("nftables", [])
    return [item for item in items if "metainfo" not in item]


def drops() -> dict[str, int]:
    """Packets dropped so far, per drop rule (by its comment)."""
    counted: dict[str, int] = {}
    for item in table() or []:
        rule = item.get("rule")
        if not rule:
            continue
        for expr in rule.get("expr", []):
            counter = expr.get("counter") if isinstance(expr, dict) else None
            if isinstance(counter, dict):
                counted[str(rule.get("comment", ""))] = int(counter.get("packets", 0))
    return counted
