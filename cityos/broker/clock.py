"""The broker's notion of now, as NGSI-LD DateTime strings."""

from __future__ import annotations

import time

# (epoch second, its "YYYY-MM-DDTHH:MM:SS" text): formatting a date is the costly part, and a
# busy writer asks for the time many times a second
_second: tuple[int, str] = (-1, "")


def now() -> str:
    """Return the current UTC time with microseconds, e.g. 2026-11-25T10:00:00.123456Z."""
    global _second
    second, micros = divmod(time.time_ns() // 1000, 1_000_000)
    if second != _second[0]:
        _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second[1]}.{micros:06d}Z"
