"""Demo scenarios as timelines of device readings and staff actions in simulated time.

Pure: no I/O and no clock. `typhoon-2019` replays a day like 2019-10-12, when Typhoon Hagibis
(令和元年東日本台風) brought heavy rain to Sano and the 秋山川 overtopped its banks. The curves are
shaped after that day but are **illustrative**, not the recorded readings.

Reporting rules (docs/models.md, MLIT's 危機管理型水位計 standard of 2018):
- every gauge samples every 10 min; below its reporting floor (the 観測開始水位 of a
  危機管理型水位計, the 水防団待機水位 of a conventional gauge) it sends one heartbeat a day;
- at or above the floor, a conventional gauge reports every 10 min, a 危機管理型水位計 every 5 min,
  and every 2 min once at its 氾濫危険水位 (the rapid phase near the top);
- rain gauges report the hourly rainfall (時間雨量) on the hour; shelter counters every 10 min
  while a shelter is open, when the count has changed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Final

from cityos.demo import sano
from cityos.safety import flood

__all__ = [
    "APIKEY_COUNTER",
    "APIKEY_RAIN",
    "APIKEY_RIVER",
    "JST",
    "SCENARIOS",
    "Event",
    "Notice",
    "Opening",
    "Reading",
    "Scenario",
    "gauge_interval",
    "reporting_floor",
    "typhoon_2019",
]

JST: Final = timezone(timedelta(hours=9), "JST")
APIKEY_RIVER: Final = "sano-river"
APIKEY_RAIN: Final = "sano-rain"
APIKEY_COUNTER: Final = "sano-shelter"

MINUTE: Final = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Reading:
    """Measures one device sends at one time."""

    at: datetime
    apikey: str
    device_id: str
    entity_id: str
    values: Mapping[str, float | int]


@dataclass(frozen=True, slots=True)
class Opening:
    """Shelter staff set a shelter's `openingStatus` to open."""

    at: datetime
    entity_id: str
    name_ja: str
    name_en: str


@dataclass(frozen=True, slots=True)
class Notice:
    """Something worth a line in the terminal (a gauge crossing a line); nothing is sent."""

    at: datetime
    text: str
    gauge: str  # the gauge's slug
    status: flood.Status
    alert_level: int


Event = Reading | Opening | Notice


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named timeline, sorted by time."""

    name: str
    title: str
    start: datetime
    end: datetime
    events: tuple[Event, ...]

    def readings(self, device_id: str) -> list[Reading]:
        """Return one device's readings in time order."""
        return [e for e in self.events if isinstance(e, Reading) and e.device_id == device_id]

    def peak_alert_level(self) -> int:
        """Return the highest 警戒レベル相当 any gauge reaches."""
        return max((e.alert_level for e in self.events if isinstance(e, Notice)), default=0)


def reporting_floor(g: sano.Gauge) -> float:
    """Return the stage below which a gauge sends only its daily heartbeat."""
    return g.observation_start if g.observation_start is not None else g.standby


def gauge_interval(g: sano.Gauge, stage: float) -> timedelta:
    """Return the time to a gauge's next sample after a reading of `stage` metres."""
    if stage < reporting_floor(g):
        return 10 * MINUTE
    if not g.crisis_management:
        return 10 * MINUTE
    return 2 * MINUTE if stage >= g.danger else 5 * MINUTE


def _interpolate(points: Sequence[tuple[float, float]], x: float) -> float:
    """Return the piecewise-linear value at x (flat beyond the ends)."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


# -- typhoon-2019 -----------------------------------------------------------------------------

_START: Final = datetime(2019, 10, 12, 6, 0, tzinfo=JST)
_END: Final = datetime(2019, 10, 13, 3, 0, tzinfo=JST)

# Flood wave at the central gauge, hours after 06:00 -> share of its peak: slow all morning,
# steep in the evening downpour, a peak at 21:40, then a slow fall through the night.
_HYDROGRAPH: Final = (
    (0.0, 0.0), (4.0, 0.02), (7.0, 0.1), (9.0, 0.2), (10.5, 0.35), (12.0, 0.55), (13.0, 0.72),
    (14.0, 0.88), (15.0, 0.97), (15.67, 1.0), (17.0, 0.93), (19.0, 0.8), (21.0, 0.7),
)  # fmt: skip

# slug -> (peak on the line scale: 1 standby .. 4 danger, lag in hours, stage at 06:00 in m)
_GAUGE_PEAKS: Final = {
    "akiyama-kuzuu": (3.4, -1.0, 0.45),
    "akiyama-tanuma": (4.2, -0.5, 0.50),
    "akiyama-ohashi": (4.6, 0.0, 0.55),
    "akiyama-akasaka": (4.4, 0.3, 0.60),
    "akiyama-koshina": (3.8, 0.8, 0.70),
    "hatagawa-tonara": (3.0, -0.7, 0.40),
    "hatagawa-akami": (4.4, -0.2, 0.50),
    "hatagawa-konaka": (3.6, 0.4, 0.55),
}

# Hourly rainfall (mm/h) at the city centre, hours after 06:00; the hills get more.
_RAIN: Final = (
    (0.0, 1.5), (3.0, 4.0), (6.0, 8.0), (9.0, 15.0), (11.0, 27.0), (12.0, 34.0), (13.0, 41.0),
    (14.0, 38.0), (15.0, 26.0), (16.0, 14.0), (17.0, 6.0), (18.0, 2.5), (19.0, 0.5), (20.0, 0.0),
)  # fmt: skip
_RAIN_FACTOR: Final = {"takasago": 1.0, "tanuma": 1.15, "kuzuu": 1.3, "nogami": 1.45}

# Share of capacity each open shelter fills to at the peak, in turn: a mix of crowding levels.
_FILL: Final = (0.95, 0.7, 0.45, 0.15, 0.85, 0.62, 0.33, 0.1)
_PEAK_EVACUEES: Final = datetime(2019, 10, 12, 23, 0, tzinfo=JST)

_STATUS_TEXT: Final[Mapping[flood.Status, tuple[str, str]]] = {
    "normal": ("平常", "normal"),
    "standby": ("水防団待機水位", "flood-fighting standby level"),
    "caution": ("氾濫注意水位", "flood caution level"),
    "evacuationJudgement": ("避難判断水位", "evacuation judgement level"),
    "danger": ("氾濫危険水位", "flood danger level"),
    "overflow": ("氾濫開始水位", "overflow level"),
}


def _hours(at: datetime) -> float:
    return (at - _START).total_seconds() / 3600


def _stage(g: sano.Gauge, at: datetime) -> float:
    peak, lag, base = _GAUGE_PEAKS[g.slug]
    u = peak * _interpolate(_HYDROGRAPH, _hours(at) - lag)
    lines = [(0.0, base), (1.0, g.standby), (2.0, g.caution)]
    lines += [(3.0, g.evacuation_judgement), (4.0, g.danger)]
    # Above the danger line the river keeps rising at its last line spacing.
    lines.append((6.0, g.danger + 2 * (g.danger - g.evacuation_judgement)))
    return round(_interpolate(lines, u), 2)


def _refs(g: sano.Gauge) -> flood.ReferenceLevels:
    return flood.ReferenceLevels(
        g.standby, g.caution, g.evacuation_judgement, g.danger, g.overflow_start
    )


def _gauge_events(g: sano.Gauge) -> list[Event]:
    events: list[Event] = []
    refs = _refs(g)
    status: flood.Status = "normal"
    level = 0
    at, last_day = _START, None
    while at <= _END:
        stage = _stage(g, at)
        day = at.date()
        if stage >= reporting_floor(g) or day != last_day:
            last_day = day
            events.append(Reading(at, APIKEY_RIVER, g.device_id, g.id, {"waterLevel": stage}))
            new_status = flood.level_status(stage, refs, status)
            level = flood.alert_level(stage, refs, level)
            if new_status != status:
                events.append(Notice(at, _crossing(g, status, new_status, stage), g.slug,
                                     new_status, level))  # fmt: skip
                status = new_status
        at += gauge_interval(g, stage)
    return events


def _crossing(g: sano.Gauge, old: flood.Status, new: flood.Status, stage: float) -> str:
    rising = flood.STATUSES.index(new) > flood.STATUSES.index(old)
    ja, en = _STATUS_TEXT[new]
    if new == "normal":
        what_ja, what_en = f"{_STATUS_TEXT['standby'][0]}を下回った", "below the standby level"
    elif rising:
        what_ja, what_en = f"{ja}に到達", f"{en} reached"
    else:
        what_ja, what_en = f"{ja}まで低下", f"fell back to the {en}"
    return f"{g.station_ja} {stage:.2f} m: {what_ja} / {g.station_en}: {what_en}"


def _rain_events(r: sano.RainGauge) -> list[Event]:
    factor = _RAIN_FACTOR[r.slug]
    events: list[Event] = []
    at = _START
    while at <= _END:
        mm = round(factor * _interpolate(_RAIN, _hours(at)), 1)
        events.append(Reading(at, APIKEY_RAIN, r.device_id, r.id, {"precipitation": mm}))
        at += 60 * MINUTE
    return events


def _first_at(events: Sequence[Event], gauge: str, level: int) -> datetime:
    for e in events:
        if isinstance(e, Notice) and e.gauge == gauge and e.alert_level >= level:
            return e.at
    raise ValueError(f"the scenario never takes {gauge} to alert level {level}")


def _shelter_events(gauge_events: Sequence[Event]) -> list[Event]:
    """Open the flood shelters once the central gauge reaches level 3, then let them fill."""
    level3 = _first_at(gauge_events, sano.CENTRAL_GAUGE, 3)
    level4 = _first_at(gauge_events, sano.CENTRAL_GAUGE, 4)
    events: list[Event] = []
    flood_shelters = [s for s in sano.SHELTERS if "flood" in s.hazards]
    for i, s in enumerate(flood_shelters):
        # Staff reach the shelters one after another; the welfare shelter opens on level 4.
        opened = level4 + 10 * MINUTE if s.designation == "welfareShelter" else level3
        opened += (5 + 2 * i) * MINUTE
        events.append(Opening(opened, s.id, s.name_ja, s.name_en))
        peak = s.capacity * _FILL[i % len(_FILL)]
        at, last = opened + 10 * MINUTE, 0
        while at <= _END:
            if at <= _PEAK_EVACUEES:
                x = (at - opened) / (_PEAK_EVACUEES - opened)
                share = x * x * (3 - 2 * x)  # smoothstep: a trickle, a rush, then a few late
            else:
                # A few go home once the rain has stopped; most stay the night.
                share = 1 - 0.1 * (at - _PEAK_EVACUEES) / (_END - _PEAK_EVACUEES)
            count = round(peak * share)
            if count != last:
                events.append(Reading(at, APIKEY_COUNTER, s.device_id, s.id, {"occupancy": count}))
                last = count
            at += 10 * MINUTE
    return events


_RANK: Final = {Reading: 0, Opening: 1, Notice: 2}


def typhoon_2019() -> Scenario:
    """Return the Typhoon Hagibis day of 2019-10-12 in Sano (illustrative values)."""
    gauges = [e for g in sano.GAUGES for e in _gauge_events(g)]
    events = gauges + [e for r in sano.RAIN_GAUGES for e in _rain_events(r)]
    events += _shelter_events(gauges)
    events.sort(key=lambda e: (e.at, _RANK[type(e)]))
    return Scenario(
        "typhoon-2019",
        "令和元年東日本台風 (台風第19号) 2019-10-12 / Typhoon Hagibis, 12 October 2019",
        _START,
        _END,
        tuple(events),
    )


SCENARIOS: Final[Mapping[str, Callable[[], Scenario]]] = {"typhoon-2019": typhoon_2019}
