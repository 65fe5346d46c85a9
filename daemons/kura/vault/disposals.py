"""(to be written: the vault's disposals operations)."""

from __future__ import annotations

from kura.vault.base import VaultBase


class DisposalOperations(VaultBase):
    pass
