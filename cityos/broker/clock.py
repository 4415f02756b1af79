"""The broker's notion of now, as NGSI-LD DateTime strings."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> str:
    """Return the current UTC time with microseconds, e.g. 2026-11-25T10:00:00.123456Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
