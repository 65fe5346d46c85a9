"""(to be written: the vault's requests operations)."""

from __future__ import annotations

from kura.vault.base import VaultBase


class RequestOperations(VaultBase):
    pass
