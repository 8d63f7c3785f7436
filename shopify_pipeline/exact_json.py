"""JSON with exact numbers: integers stay int (ids above 2^53), fractions are Decimal, never float."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any


def parse_json(text: str | bytes) -> Any:
    """Parse JSON keeping integers exact (int) and fractions exact (Decimal)."""
    return json.loads(text, parse_float=Decimal)


def dumps_json(value: Any) -> str:
    """Compact JSON for values from `parse_json` (Decimal written digit for digit)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{dumps_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps_json(v) for v in value) + "]"
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} cannot be written as JSON")
        return str(value)
    return json.dumps(value, ensure_ascii=False)
