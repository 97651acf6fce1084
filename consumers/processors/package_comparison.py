"""How a cancel compares the package it is sent with what was created: property by
property, as MongoDB keeps it. Shared by the cancels of every signed package."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

# What a cancel may give otherwise than the create did: the id is the key, the rest is the
# cancellation itself.
NOT_COMPARED = {"id", "cancellation_reason", "explanatory_letter"}


def differs(submitted: Any, stored: Any, path: str) -> str | None:
    """The flat path (`conditions.0.code.coding.0.code`) of the first property `submitted`
    gives otherwise than `stored`; properties `stored` does not have are not compared."""
    if isinstance(submitted, dict):
        if not isinstance(stored, dict):
            return path
        for key, value in submitted.items():
            if key not in stored:
                continue  # not part of what was created: display values and the like
            if (found := differs(value, stored[key], f"{path}.{key}")) is not None:
                return found
        return None
    if isinstance(submitted, list):
        if not isinstance(stored, list) or len(stored) != len(submitted):
            return path
        for index, (one, other) in enumerate(zip(submitted, stored, strict=True)):
            if (found := differs(one, other, f"{path}.{index}")) is not None:
                return found
        return None
    if isinstance(submitted, datetime):
        return None if instant(submitted) == instant(stored) else path
    return None if submitted == stored else path


def instant(value: Any) -> Any:
    """A datetime as MongoDB keeps it: UTC, to the millisecond."""
    if not isinstance(value, datetime):
        return value
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    aware = aware.astimezone(UTC)
    return aware.replace(microsecond=aware.microsecond // 1000 * 1000)
