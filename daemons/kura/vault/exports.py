"""(to be written: the vault's exports operations)."""

from __future__ import annotations

from kura.vault.base import VaultBase


class ExportOperations(VaultBase):
    pass
