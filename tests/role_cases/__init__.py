"""The role matrix's rows for each area of the API, one module per area so
each area owns its own (tests/test_role_matrix.py merges them). Each module
has ``EXPECTED`` (route → the roles that may call it, from DESIGN.md) and
``BUILDERS`` (route → a function ``(world, role) -> Case`` that makes one
valid request; use ``world.case(...)`` and ``world.client(role)``, and import
World and Case only under TYPE_CHECKING)."""

from __future__ import annotations

from tests.role_cases import (
    accounts,
    agents,
    disposal,
    exports,
    ha,
    policy,
    reports,
    requests,
)

AREAS = (requests, exports, disposal, reports, policy, accounts, ha, agents)
