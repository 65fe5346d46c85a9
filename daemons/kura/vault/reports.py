"""(to be written: the vault's reports operations)."""

from __future__ import annotations

from kura.vault.base import VaultBase


class ReportOperations(VaultBase):
    pass
