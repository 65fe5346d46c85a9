"""Role-matrix rows for this area (see tests/role_cases/__init__.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.test_role_matrix import World

ROLES_MU, ROLES_MA = frozenset({"MU"}), frozenset({"MA"})
EXPECTED: dict[tuple[str, str], frozenset[str]] = {}
BUILDERS: dict[tuple[str, str], Callable[[World, str | None], Any]] = {}
