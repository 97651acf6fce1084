"""The time every stored date is written in."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, at the millisecond precision BSON keeps, so what is written is what is read."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
