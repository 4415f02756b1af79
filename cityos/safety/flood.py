"""River-gauge reference levels and the 警戒レベル相当 (alert level equivalent) they imply.

Japan's river administrators set four reference levels (基準水位) per gauge; a reading at or above
one puts the river at the matching 警戒レベル相当. Rising uses the lines as they are; falling back
needs the reading to drop `hysteresis_m` below the line, so a reading bouncing on a line does not
raise and clear the same alert every ten minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Final, Literal

__all__ = [
    "ALERT_LEVELS",
    "STATUSES",
    "AlertChange",
    "ChangeKind",
    "ReferenceLevels",
    "Status",
    "alert_change",
    "alert_entity",
    "alert_level",
    "level_status",
    "severity",
]

Status = Literal["normal", "standby", "caution", "evacuationJudgement", "danger", "overflow"]
ChangeKind = Literal["raised", "escalated", "lowered", "cleared"]

# The status ladder, lowest first; a status's index is its rank.
STATUSES: Final[tuple[Status, ...]] = (
    "normal",
    "standby",
    "caution",
    "evacuationJudgement",
    "danger",
    "overflow",
)
# 水防団待機水位 (standby) is an operational trigger only: it has no 警戒レベル.
_ALERT_BY_RANK: Final = (0, 0, 2, 3, 4, 5)
ALERT_LEVELS: Final[tuple[int, ...]] = (0, 2, 3, 4, 5)
_RANK_BY_ALERT: Final = {0: 0, 2: 2, 3: 3, 4: 4, 5: 5}

# Suggested mapping in the domain research (§1.4); the Alert model has no Japanese levels.
_SEVERITY: Final = {0: "informational", 2: "low", 3: "medium", 4: "high", 5: "critical"}

# (Japanese, English) name of the line each alert level is reached at.
_LINE_NAMES: Final = {
    2: ("氾濫注意水位", "flood caution level"),
    3: ("避難判断水位", "evacuation judgement level"),
    4: ("氾濫危険水位", "flood danger level"),
}


@dataclass(frozen=True, slots=True)
class ReferenceLevels:
    """One gauge's reference water levels (基準水位), stage in metres."""

    standby: float  # 水防団待機水位: flood-fighting teams stand by
    caution: float  # 氾濫注意水位: 警戒レベル2相当
    evacuation_judgement: float  # 避難判断水位: 警戒レベル3相当
    danger: float  # 氾濫危険水位: 警戒レベル4相当
    overflow_start: float | None = None  # 氾濫開始水位 of a 危機管理型水位計: overflow begins

    def __post_init__(self) -> None:
        previous: tuple[str, float] | None = None
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{f.name}: must be a number of metres, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{f.name}: must be finite, got {value!r}")
            if previous is not None and value <= previous[1]:
                raise ValueError(
                    f"{f.name}: {value} m must be above {previous[0]} ({previous[1]} m)"
                )
            previous = (f.name, float(value))

    def lines(self) -> tuple[float | None, ...]:
        """Return the line each status rank starts at (None where the gauge has no line)."""
        return (
            None,
            self.standby,
            self.caution,
            self.evacuation_judgement,
            self.danger,
            self.overflow_start,
        )


def _rank(
    level_m: float,
    refs: ReferenceLevels,
    previous: int,
    hysteresis_m: float,
    overflow: bool,
) -> int:
    """Return the status rank of a reading given the previous rank."""
    if isinstance(level_m, bool) or not isinstance(level_m, int | float):
        raise ValueError(f"level_m: must be a number of metres, got {level_m!r}")
    if not math.isfinite(level_m):
        raise ValueError(f"level_m: must be finite, got {level_m!r}")
    if not math.isfinite(hysteresis_m) or hysteresis_m < 0:
        raise ValueError(f"hysteresis_m: must be a finite number >= 0, got {hysteresis_m!r}")
    if overflow:
        return len(STATUSES) - 1
    lines = refs.lines()
    rising = max(
        (r for r, line in enumerate(lines) if line is not None and level_m >= line), default=0
    )
    # Keep a higher previous rank while the reading is within the hysteresis band of its line.
    held = max(
        (
            r
            for r, line in enumerate(lines[: previous + 1])
            if line is not None and level_m >= line - hysteresis_m
        ),
        default=0,
    )
    return max(rising, held)


def level_status(
    level_m: float,
    refs: ReferenceLevels,
    previous: Status,
    *,
    hysteresis_m: float = 0.05,
    overflow: bool = False,
) -> Status:
    """Return the named status of a reading, holding the previous one within the hysteresis."""
    if previous not in STATUSES:
        raise ValueError(f"previous: {previous!r} is not one of {', '.join(STATUSES)}")
    rank = _rank(level_m, refs, STATUSES.index(previous), hysteresis_m, overflow)
    return STATUSES[rank]


def alert_level(
    level_m: float,
    refs: ReferenceLevels,
    previous: int,
    *,
    hysteresis_m: float = 0.05,
    overflow: bool = False,
) -> int:
    """Return the 警戒レベル相当 (0, 2, 3, 4 or 5) of a reading given the previous level."""
    if isinstance(previous, bool) or previous not in _RANK_BY_ALERT:
        raise ValueError(f"previous: {previous!r} is not an alert level (0, 2, 3, 4 or 5)")
    rank = _rank(level_m, refs, _RANK_BY_ALERT[previous], hysteresis_m, overflow)
    return _ALERT_BY_RANK[rank]


def severity(level: int) -> str:
    """Return the `Alert.severity` for a 警戒レベル相当."""
    try:
        return _SEVERITY[level]
    except KeyError:
        raise ValueError(f"level: {level!r} is not an alert level (0, 2, 3, 4 or 5)") from None


@dataclass(frozen=True, slots=True)
class AlertChange:
    """A gauge's 警戒レベル相当 moving from one level to another."""

    kind: ChangeKind
    from_level: int
    to_level: int


def alert_change(previous: int, current: int) -> AlertChange | None:
    """Return how the alert level changed, or None when it did not."""
    for name, value in (("previous", previous), ("current", current)):
        if isinstance(value, bool) or value not in _RANK_BY_ALERT:
            raise ValueError(f"{name}: {value!r} is not an alert level (0, 2, 3, 4 or 5)")
    if current == previous:
        return None
    kind: ChangeKind
    if previous == 0:
        kind = "raised"
    elif current == 0:
        kind = "cleared"
    elif current > previous:
        kind = "escalated"
    else:
        kind = "lowered"
    return AlertChange(kind, previous, current)


def _describe(change: AlertChange) -> tuple[str, str]:
    """Return the Japanese and English phrase for a change."""
    to = change.to_level
    if to == 5:
        return ("氾濫発生（警戒レベル5相当）", "flooding reported (alert level 5 equivalent)")
    if change.kind == "cleared":
        ja, en = _LINE_NAMES[2]
        return (f"{ja}を下回った（警戒レベル相当なし）", f"fell below the {en} (no alert level)")
    ja, en = _LINE_NAMES[to]
    if change.kind == "lowered":
        return (
            f"{ja}まで低下（警戒レベル{to}相当）",
            f"fell back to the {en} (alert level {to} equivalent)",
        )
    return (f"{ja}に到達（警戒レベル{to}相当）", f"{en} reached (alert level {to} equivalent)")


def alert_entity(
    change: AlertChange,
    *,
    gauge_id: str,
    station_ja: str,
    station_en: str,
    issued_at: datetime,
) -> dict[str, Any]:
    """Return the NGSI-LD `Alert` attributes (normalized, no `id`) announcing a change."""
    if issued_at.tzinfo is None:
        raise ValueError("issued_at: must carry a time zone")
    when = issued_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    ja, en = _describe(change)
    entity: dict[str, Any] = {
        "type": "Alert",
        "category": {"type": "Property", "value": "naturalDisaster"},
        "subCategory": {"type": "Property", "value": "flood"},
        "severity": {"type": "Property", "value": severity(change.to_level)},
        "floodAlertLevel": {"type": "Property", "value": change.to_level},
        "alertSource": {"type": "Relationship", "object": gauge_id},
        "dateIssued": {"type": "Property", "value": {"@type": "DateTime", "@value": when}},
        "description": {
            "type": "Property",
            "value": f"{station_ja}: {ja} / {station_en}: {en}",
        },
        "data": {
            "type": "Property",
            "value": {
                "change": change.kind,
                "fromLevel": change.from_level,
                "toLevel": change.to_level,
            },
        },
    }
    if change.kind == "raised":
        entity["validFrom"] = {"type": "Property", "value": {"@type": "DateTime", "@value": when}}
    elif change.kind == "cleared":
        entity["validTo"] = {"type": "Property", "value": {"@type": "DateTime", "@value": when}}
    return entity
