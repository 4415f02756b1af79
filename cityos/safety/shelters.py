"""Shelter crowding (混雑状況): the four levels residents know, from occupancy and capacity."""

from __future__ import annotations

import math
from typing import Final, Literal

__all__ = ["CROWDING_LEVELS", "Crowding", "crowding_level"]

Crowding = Literal["vacant", "slightlyCrowded", "crowded", "full"]

#: (level, share of capacity it starts at), lowest first: 0-30 %, 30-60 %, 60-80 %, 80 %+
CROWDING_LEVELS: Final[tuple[tuple[Crowding, float], ...]] = (
    ("vacant", 0.0),
    ("slightlyCrowded", 0.30),
    ("crowded", 0.60),
    ("full", 0.80),
)


def crowding_level(occupancy: object, capacity: object, opening_status: object) -> Crowding | None:
    """Return the crowding level of an open shelter; None when closed or not computable."""
    if opening_status != "open":
        return None  # 利用停止中: a closed shelter shows no crowding
    if not isinstance(occupancy, int | float) or not isinstance(capacity, int | float):
        return None
    if not (_count(occupancy) and _count(capacity)) or capacity <= 0 or occupancy < 0:
        return None
    share = occupancy / capacity
    level: Crowding = "vacant"
    for name, start in CROWDING_LEVELS:
        if share >= start:
            level = name
    return level


def _count(value: float) -> bool:
    return not isinstance(value, bool) and math.isfinite(value)
