"""Derivation rules: what the server itself writes when a gauge reading or shelter count arrives.

Registered on the storage engine (``Storage.add_rule``), they run inside the write of the entity
that triggers them, so a reading, the gauge's new ``levelStatus`` / ``floodAlertLevel`` and the
``Alert`` announcing a change commit together or not at all. Attribute names are the terms of
the NGSI-LD default vocabulary that the project context (``cityos-sano-v1.jsonld``) uses too.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any, Final

from cityos.broker.entities import put_attributes, put_instance
from cityos.broker.model import DEFAULT_VOCAB, Doc, Instance, default_instance
from cityos.broker.normalize import Normalizer
from cityos.jsonld.context import ActiveContext
from cityos.safety import flood
from cityos.safety.shelters import crowding_level
from cityos.storage.base import MutateFn, Mutation

__all__ = ["ALERT_ID_PREFIX", "RULES", "flood_alert_id", "gauge_rule", "shelter_rule"]

V: Final = DEFAULT_VOCAB
GAUGE: Final = V + "WaterObserved"
SHELTER: Final = V + "EvacuationShelter"
ALERT_ID_PREFIX: Final = "urn:ngsi-ld:Alert:flood-"
_REFS: Final = (
    "standbyLevel",
    "cautionLevel",
    "evacuationJudgementLevel",
    "dangerLevel",
    "overflowStartLevel",
)


def flood_alert_id(gauge_id: str) -> str:
    """Return the id of the Alert entity that follows one gauge's 警戒レベル相当."""
    return ALERT_ID_PREFIX + gauge_id.rsplit(":", 1)[-1]


@functools.cache
def _context() -> ActiveContext:
    from cityos.jsonld.loader import ContextLoader  # the core context, read once

    return ContextLoader(remote_fetch=False).default()


def _default(doc: Doc | None, term: str) -> Instance | None:
    return default_instance(doc, V + term)


def _value(doc: Doc | None, term: str) -> Any:
    inst = _default(doc, term)
    return None if inst is None else inst.get("value")


def _set(doc: Doc, term: str, value: Any, now: str, observed_at: str | None) -> bool:
    """Set a derived Property unless it already holds value; return whether it changed."""
    if _value(doc, term) == value and _default(doc, term) is not None:
        return False
    inst: Instance = {"type": "Property", "value": value, "createdAt": now, "modifiedAt": now}
    if observed_at is not None:
        inst["observedAt"] = observed_at
    attrs = dict(doc["attrs"])
    attrs[V + term] = put_instance(list(attrs.get(V + term, [])), inst)
    doc["attrs"] = attrs
    return True


def _drop(doc: Doc, term: str) -> None:
    if V + term in doc["attrs"]:
        attrs = dict(doc["attrs"])
        del attrs[V + term]
        doc["attrs"] = attrs


def _refs(doc: Doc) -> flood.ReferenceLevels | None:
    values = [_value(doc, t) for t in _REFS]
    if any(v is None for v in values[:4]):
        return None
    try:
        return flood.ReferenceLevels(*values)
    except ValueError:
        return None  # levels that do not rise strictly: nothing can be derived


def _names(doc: Doc) -> tuple[str, str]:
    inst = _default(doc, "name")
    if inst is None:
        return doc["id"], doc["id"]
    if isinstance(inst.get("languageMap"), dict):
        names = inst["languageMap"]
        ja = names.get("ja") or next(iter(names.values()), doc["id"])
        return str(ja), str(names.get("en") or ja)
    return str(inst.get("value", doc["id"])), str(inst.get("value", doc["id"]))


def _instant(stamp: str | None, fallback: str) -> datetime:
    for text in (stamp, fallback):
        if text:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                continue
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.now(UTC)


def gauge_rule(old: Doc | None, new: Doc) -> tuple[Doc, list[Mutation]]:
    """Derive levelStatus and floodAlertLevel of a river gauge; raise or clear its Alert."""
    if GAUGE not in new["type"]:
        return new, []
    reading = _default(new, "waterLevel")
    refs = _refs(new)
    level = None if reading is None else reading.get("value")
    if refs is None or isinstance(level, bool) or not isinstance(level, int | float):
        return new, []
    previous_level = _value(old, "floodAlertLevel")
    if previous_level not in flood.ALERT_LEVELS:
        previous_level = 0
    previous_status = _value(old, "levelStatus")
    if previous_status not in flood.STATUSES:
        previous_status = "normal"
    overflow = _value(new, "overflowReported") is True
    try:
        status = flood.level_status(level, refs, previous_status, overflow=overflow)
        alert = flood.alert_level(level, refs, previous_level, overflow=overflow)
    except ValueError:
        return new, []  # a non-finite reading: nothing sensible to derive
    now = new["modifiedAt"]
    observed = reading.get("observedAt") if reading else None
    doc = dict(new)
    _set(doc, "levelStatus", status, now, observed)
    _set(doc, "floodAlertLevel", alert, now, observed)
    change = flood.alert_change(previous_level, alert)
    if change is None:
        return doc, []
    ja, en = _names(doc)
    attrs = flood.alert_entity(
        change, gauge_id=doc["id"], station_ja=ja, station_en=en, issued_at=_instant(observed, now)
    )
    alert_id = flood_alert_id(doc["id"])
    return doc, [Mutation(alert_id, _alert_fn(alert_id, attrs, change, now))]


def _alert_fn(
    alert_id: str, attrs: dict[str, Any], change: flood.AlertChange, now: str
) -> MutateFn:
    fresh = Normalizer(_context(), now).entity({"id": alert_id, **attrs})["attrs"]

    def fn(cur: Doc | None) -> Doc:
        if cur is None or change.kind == "raised":
            # a new episode: only this change's attributes (no validTo of the last one)
            created = cur["createdAt"] if cur else now
            return {
                "id": alert_id,
                "type": [V + "Alert"],
                "createdAt": created,
                "modifiedAt": now,
                "attrs": dict(fresh),
            }
        return put_attributes(cur, fresh, now)

    return fn


def shelter_rule(old: Doc | None, new: Doc) -> tuple[Doc, list[Mutation]]:
    """Derive an evacuation shelter's crowdingLevel from occupancy, capacity and opening."""
    del old
    if SHELTER not in new["type"]:
        return new, []
    level = crowding_level(
        _value(new, "occupancy"), _value(new, "capacity"), _value(new, "openingStatus")
    )
    doc = dict(new)
    if level is None:
        _drop(doc, "crowdingLevel")
    else:
        _set(doc, "crowdingLevel", level, new["modifiedAt"], None)
    return doc, []


RULES: Final = (gauge_rule, shelter_rule)
