"""(to be written: the pure core of reports)."""

from __future__ import annotations

from typing import Any

# The arguments of this area's vault operations, as JSON Schema (see kura.core.api).
SCHEMAS: dict[str, dict[str, Any]] = {}
