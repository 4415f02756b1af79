"""What the resident pages show, gathered from storage into typed records, and their JSON twins.

Everything here depends only on stored data (never on the wall clock), so the same store gives
the same records: times shown are the data's own observation times.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from cityos.broker import typesel
from cityos.broker.model import DEFAULT_VOCAB, LOCATION, NGSI_LD, Doc, default_instance
from cityos.broker.temporal import TemporalQuery, from_micros, to_micros
from cityos.safety.flood import STATUSES
from cityos.storage import engines
from cityos.storage.base import EntityQuery, Storage
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import SqliteStorage
from cityos.storage.sqlite_history import HistorySelection

__all__ = [
    "AlertInfo",
    "GaugeInfo",
    "PortalData",
    "ShelterInfo",
    "alerts_json",
    "gather",
    "shelters_json",
    "water_levels_json",
]

V: Final = DEFAULT_VOCAB
_DESCRIPTION: Final = "http://purl.org/dc/terms/description"
_DATA: Final = NGSI_LD + "data"
_PAGE: Final = 500
#: the trend chart covers this long before the gauge's latest reading
TREND_WINDOW: Final = timedelta(hours=24)
#: readings are reduced to the highest one per slot, so a peak is never smoothed away
TREND_SLOT: Final = timedelta(minutes=30)
#: a change smaller than this between the last two readings counts as steady (gauges report cm)
STEADY_M: Final = 0.005


@dataclass(frozen=True, slots=True)
class GaugeInfo:
    """One river gauge as a resident sees it."""

    id: str
    name_ja: str
    name_en: str
    river: str
    level: float | None  # metres; None before the first reading
    observed_at: str | None  # UTC, NGSI-LD DateTime
    previous_level: float | None
    trend: str | None  # rising, falling, steady; None without two readings
    standby: float
    caution: float
    evacuation_judgement: float
    danger: float
    observation_start: float | None
    overflow_start: float | None
    status: str  # one of flood.STATUSES
    alert_level: int  # 0, 2, 3, 4, 5
    lon: float | None
    lat: float | None
    history: tuple[tuple[str, float], ...]  # (UTC time, highest level in the slot), oldest first

    @property
    def rank(self) -> int:
        """Return the status rank (0 normal .. 5 overflow)."""
        return STATUSES.index(self.status) if self.status in STATUSES else 0

    def next_line(self) -> tuple[str, float] | None:
        """Return the next reference line above the current level (status, metres), if any."""
        if self.level is None:
            return None
        lines = [
            ("standby", self.standby),
            ("caution", self.caution),
            ("evacuationJudgement", self.evacuation_judgement),
            ("danger", self.danger),
        ]
        if self.overflow_start is not None:
            lines.append(("overflow", self.overflow_start))
        for name, line in lines:
            if self.level < line:
                return name, line
        return None


@dataclass(frozen=True, slots=True)
class ShelterInfo:
    """One evacuation shelter as a resident sees it."""

    id: str
    name_ja: str
    name_en: str
    kana: str
    address: str
    designation: str
    hazards: tuple[str, ...]
    capacity: int | None
    opening_status: str  # closed, preparing, open
    occupancy: int | None
    crowding: str | None  # vacant, slightlyCrowded, crowded, full; only when open
    fever_space: bool
    fever_capacity: int | None
    pets: bool
    barrier_free: bool
    lon: float | None
    lat: float | None
    observed_at: str | None  # when occupancy or opening status last changed (data time)


@dataclass(frozen=True, slots=True)
class AlertInfo:
    """One active alert (no validTo): a gauge's flood alert or a silent device."""

    id: str
    kind: str  # flood or device
    level: int | None  # 警戒レベル相当 of a flood alert
    severity: str
    issued_at: str | None
    description_ja: str
    description_en: str
    source: str | None


@dataclass(frozen=True, slots=True)
class PortalData:
    """Everything the pages show, in display order."""

    gauges: tuple[GaugeInfo, ...]  # most dangerous first
    shelters: tuple[ShelterInfo, ...]  # by kana reading
    alerts: tuple[AlertInfo, ...]  # newest first
    generated_from: str | None  # the latest data time seen, never the wall clock

    @property
    def highest_level(self) -> int:
        """Return the highest current 警戒レベル相当 over all gauges."""
        return max((g.alert_level for g in self.gauges), default=0)

    def open_shelters(self) -> tuple[ShelterInfo, ...]:
        """Return the open shelters."""
        return tuple(s for s in self.shelters if s.opening_status == "open")


# -- reading stored documents ------------------------------------------------------------------
def _value(doc: Doc, term: str, iri: str | None = None) -> Any:
    inst = default_instance(doc, iri or V + term)
    if inst is None:
        return None
    if inst.get("type") == "Relationship":
        return inst.get("object")
    value = inst.get("value")
    if isinstance(value, dict) and "@value" in value:
        return value["@value"]  # a typed DateTime
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _count(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else round(number)


def _names(doc: Doc) -> tuple[str, str]:
    inst = default_instance(doc, V + "name")
    if inst is None:
        return doc["id"], doc["id"]
    names = inst.get("languageMap")
    if isinstance(names, dict):
        ja = str(names.get("ja") or next(iter(names.values()), doc["id"]))
        return ja, str(names.get("en") or ja)
    text = str(inst.get("value", doc["id"]))
    return text, text


def _point(doc: Doc) -> tuple[float | None, float | None]:
    inst = default_instance(doc, LOCATION)
    geometry = inst.get("value") if inst else None
    if isinstance(geometry, dict) and geometry.get("type") == "Point":
        coords = geometry.get("coordinates")
        if isinstance(coords, list) and len(coords) >= 2:
            return _number(coords[0]), _number(coords[1])
    return None, None


def _observed(doc: Doc, term: str) -> str | None:
    inst = default_instance(doc, V + term)
    stamp = inst.get("observedAt") if inst else None
    return _utc(stamp) if isinstance(stamp, str) else None


def _utc(stamp: str) -> str:
    """Return a DateTime normalised to UTC with seconds precision, e.g. 2019-10-12T12:40:00Z."""
    text = stamp[:-1] + "+00:00" if stamp.endswith("Z") else stamp
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _all(store: Storage, tenant: str, type_name: str) -> list[Doc]:
    docs: list[Doc] = []
    while True:
        page = await store.query(
            tenant,
            EntityQuery(types=typesel.TypeName(V + type_name), limit=_PAGE, offset=len(docs)),
        )
        docs.extend(page.docs)
        if len(page.docs) < _PAGE:
            return sorted(docs, key=lambda d: str(d["id"]))


# -- gauges --------------------------------------------------------------------------------------
async def _histories(
    store: Storage, tenant: str, gauges: list[Doc]
) -> dict[str, list[tuple[int, float]]]:
    """Return each gauge's waterLevel readings (UTC micros, metres) over the trend window."""
    if not isinstance(store, SqliteStorage | PostgresStorage) or not gauges:
        return {}  # no temporal store behind this engine: pages show no trend
    history = engines.history_reader(store)
    await history.start()  # idempotent; a database the temporal API never opened has no tables
    out: dict[str, list[tuple[int, float]]] = {}
    for doc in gauges:
        observed = _observed(doc, "waterLevel")
        if observed is None:
            continue
        end = to_micros(observed) + 1
        start = end - 1 - int(TREND_WINDOW.total_seconds() * 1_000_000)
        tq = TemporalQuery(timerel="between", time_at=start, end_time_at=end)
        entities, _ = await history.query(
            tenant,
            HistorySelection(ids=(doc["id"],), limit=1),
            frozenset({V + "waterLevel"}),
            tq,
            5000,
        )
        rows = entities[0].attrs.get(V + "waterLevel") if entities else None
        readings = []
        for row in rows.rows if rows else []:
            level = _number(row.inst.get("value"))
            if level is not None and row.inst.get("datasetId") is None:
                readings.append((row.observed, level))
        out[doc["id"]] = sorted(readings)
    return out


def _slots(readings: list[tuple[int, float]], end: int) -> tuple[tuple[str, float], ...]:
    """Return the highest reading per slot, each stamped with the slot's last reading time."""
    step = int(TREND_SLOT.total_seconds() * 1_000_000)
    slots: dict[int, tuple[int, float]] = {}
    for t, level in readings:
        key = (end - t) // step
        best = slots.get(key)
        if best is None or level > best[1] or (level == best[1] and t > best[0]):
            slots[key] = (t, level)
    points = sorted(slots.values())
    if readings and points[-1] != readings[-1]:
        points.append(readings[-1])  # the line ends at the reading the page shows as "now"
    return tuple((_utc(from_micros(t)), lv) for t, lv in points)


def _trend(readings: list[tuple[int, float]]) -> tuple[float | None, str | None]:
    if len(readings) < 2:
        return None, None
    previous, last = readings[-2][1], readings[-1][1]
    if last - previous > STEADY_M:
        return previous, "rising"
    if previous - last > STEADY_M:
        return previous, "falling"
    return previous, "steady"


def _gauge(doc: Doc, readings: list[tuple[int, float]]) -> GaugeInfo | None:
    lines = [
        _number(_value(doc, t))
        for t in ("standbyLevel", "cautionLevel", "evacuationJudgementLevel", "dangerLevel")
    ]
    standby, caution, evac, danger = lines
    if standby is None or caution is None or evac is None or danger is None:
        return None  # not a gauge with reference levels: nothing to compare a reading with
    ja, en = _names(doc)
    lon, lat = _point(doc)
    level = _number(_value(doc, "waterLevel"))
    observed = _observed(doc, "waterLevel")
    status = _value(doc, "levelStatus")
    alert = _value(doc, "floodAlertLevel")
    previous, trend = _trend(readings)
    end = to_micros(observed) if observed else 0
    return GaugeInfo(
        id=doc["id"],
        name_ja=ja,
        name_en=en,
        river=str(_value(doc, "riverName") or ""),
        level=level,
        observed_at=observed,
        previous_level=previous,
        trend=trend,
        standby=standby,
        caution=caution,
        evacuation_judgement=evac,
        danger=danger,
        observation_start=_number(_value(doc, "observationStartLevel")),
        overflow_start=_number(_value(doc, "overflowStartLevel")),
        status=status if status in STATUSES else "normal",
        alert_level=alert if alert in (0, 2, 3, 4, 5) else 0,
        lon=lon,
        lat=lat,
        history=_slots(readings, end),
    )


def _danger_key(g: GaugeInfo) -> tuple[Any, ...]:
    # highest alert and status first, then the gauge closest to its danger line (as a share of
    # the line, so small and large rivers compare), gauges without a reading last
    share = -(g.level / g.danger) if g.level is not None and g.danger > 0 else 1.0
    return (-g.alert_level, -g.rank, g.level is None, share, g.id)


# -- shelters and alerts -------------------------------------------------------------------------
def _address(value: Any) -> str:
    if isinstance(value, dict):
        parts = ("addressRegion", "addressLocality", "streetAddress")
        return "".join(str(value[p]) for p in parts if isinstance(value.get(p), str))
    return str(value) if isinstance(value, str) else ""


def _shelter(doc: Doc) -> ShelterInfo:
    ja, en = _names(doc)
    lon, lat = _point(doc)
    hazards = _value(doc, "hazardTypes")
    status = _value(doc, "openingStatus")
    status = status if status in ("closed", "preparing", "open") else "closed"
    crowding = _value(doc, "crowdingLevel") if status == "open" else None
    times = [t for t in (_observed(doc, "occupancy"), _observed(doc, "openingStatus")) if t]
    return ShelterInfo(
        id=doc["id"],
        name_ja=ja,
        name_en=en,
        kana=str(_value(doc, "nameKana") or ""),
        address=_address(_value(doc, "address")),
        designation=str(_value(doc, "designation") or ""),
        hazards=tuple(str(h) for h in hazards) if isinstance(hazards, list) else (),
        capacity=_count(_value(doc, "capacity")),
        opening_status=status,
        occupancy=_count(_value(doc, "occupancy")),
        crowding=crowding if crowding in ("vacant", "slightlyCrowded", "crowded", "full") else None,
        fever_space=_value(doc, "feverSpaceAvailable") is True,
        fever_capacity=_count(_value(doc, "feverSpaceCapacity")),
        pets=_value(doc, "petsAccepted") is True,
        barrier_free=_value(doc, "barrierFree") is True,
        lon=lon,
        lat=lat,
        observed_at=max(times) if times else None,
    )


def _split(description: str) -> tuple[str, str]:
    """Split "日本語 / English" into its two halves (the same text twice when not bilingual)."""
    ja, sep, en = description.partition(" / ")
    return (ja, en) if sep else (description, description)


def _alert(doc: Doc) -> AlertInfo | None:
    if _value(doc, "validTo") is not None:
        return None  # cleared
    if doc["id"].startswith("urn:ngsi-ld:Alert:flood-") or _value(doc, "subCategory") == "flood":
        kind = "flood"
    elif _value(doc, "category") == "deviceHealth":
        kind = "device"
    else:
        return None
    level = _value(doc, "floodAlertLevel")
    issued = _value(doc, "dateIssued")
    ja, en = _split(str(_value(doc, "description", _DESCRIPTION) or ""))
    source = _value(doc, "alertSource")
    return AlertInfo(
        id=doc["id"],
        kind=kind,
        level=level if kind == "flood" and level in (0, 2, 3, 4, 5) else None,
        severity=str(_value(doc, "severity") or ""),
        issued_at=_utc(issued) if isinstance(issued, str) else None,
        description_ja=ja,
        description_en=en,
        source=source if isinstance(source, str) else None,
    )


async def gather(store: Storage, *, tenant: str = "") -> PortalData:
    """Read gauges, shelters and active alerts of a tenant into display order."""
    gauge_docs = await _all(store, tenant, "WaterObserved")
    histories = await _histories(store, tenant, gauge_docs)
    gauges = [g for d in gauge_docs if (g := _gauge(d, histories.get(d["id"], [])))]
    gauges.sort(key=_danger_key)
    shelters = [_shelter(d) for d in await _all(store, tenant, "EvacuationShelter")]
    shelters.sort(key=lambda s: (s.kana or s.name_ja, s.id))
    alerts = [a for d in await _all(store, tenant, "Alert") if (a := _alert(d))]
    # newest first; an alert without a time goes last
    alerts.sort(key=lambda a: (a.issued_at or "", a.id), reverse=True)
    times = [g.observed_at for g in gauges] + [s.observed_at for s in shelters]
    times += [a.issued_at for a in alerts]
    stamps = [t for t in times if t]
    return PortalData(tuple(gauges), tuple(shelters), tuple(alerts), max(stamps, default=None))


# -- JSON twins ----------------------------------------------------------------------------------
def _dump(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def water_levels_json(data: PortalData) -> bytes:
    """Return water-levels.json: every gauge, most dangerous first."""
    gauges = [
        {
            "id": g.id,
            "name": {"ja": g.name_ja, "en": g.name_en},
            "riverName": g.river,
            "waterLevel": g.level,
            "observedAt": g.observed_at,
            "previousLevel": g.previous_level,
            "trend": g.trend,
            "referenceLevels": {
                "standbyLevel": g.standby,
                "cautionLevel": g.caution,
                "evacuationJudgementLevel": g.evacuation_judgement,
                "dangerLevel": g.danger,
                "observationStartLevel": g.observation_start,
                "overflowStartLevel": g.overflow_start,
            },
            "levelStatus": g.status,
            "floodAlertLevel": g.alert_level,
            "location": [g.lon, g.lat] if g.lon is not None else None,
            "history": [[t, v] for t, v in g.history],
        }
        for g in data.gauges
    ]
    return _dump(
        {
            "generatedFrom": data.generated_from,
            "highestFloodAlertLevel": data.highest_level,
            "gauges": gauges,
        }
    )


def shelters_json(data: PortalData) -> bytes:
    """Return shelters.json: every shelter in kana order."""
    shelters = [
        {
            "id": s.id,
            "name": {"ja": s.name_ja, "en": s.name_en},
            "nameKana": s.kana,
            "address": s.address,
            "designation": s.designation,
            "hazardTypes": list(s.hazards),
            "openingStatus": s.opening_status,
            "occupancy": s.occupancy,
            "capacity": s.capacity,
            "crowdingLevel": s.crowding,
            "feverSpaceAvailable": s.fever_space,
            "feverSpaceCapacity": s.fever_capacity,
            "petsAccepted": s.pets,
            "barrierFree": s.barrier_free,
            "location": [s.lon, s.lat] if s.lon is not None else None,
            "observedAt": s.observed_at,
        }
        for s in data.shelters
    ]
    return _dump(
        {
            "generatedFrom": data.generated_from,
            "openCount": len(data.open_shelters()),
            "shelters": shelters,
        }
    )


def alerts_json(data: PortalData) -> bytes:
    """Return alerts.json: the active alerts, newest first."""
    alerts = [
        {
            "id": a.id,
            "kind": a.kind,
            "floodAlertLevel": a.level,
            "severity": a.severity,
            "dateIssued": a.issued_at,
            "description": {"ja": a.description_ja, "en": a.description_en},
            "alertSource": a.source,
        }
        for a in data.alerts
    ]
    return _dump({"generatedFrom": data.generated_from, "alerts": alerts})
