"""The change events that travel on the bus, and their strict JSON encoding."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Final

import orjson

from cityos.bus.base import Bus, log


@dataclass(frozen=True, slots=True)
class EntityChanged:
    """An entity was created, updated or deleted: wake the notifier, drop cached reads."""

    kind: ClassVar[str] = "entity.changed"
    topic: ClassVar[str] = "entity"
    tenant: str
    id: str
    at: datetime

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError("EntityChanged.at needs a time zone: workers may be on other hosts")


@dataclass(frozen=True, slots=True)
class SubscriptionChanged:
    """A subscription was created, updated or deleted: reload it in every worker."""

    kind: ClassVar[str] = "subscription.changed"
    topic: ClassVar[str] = "subscription"
    tenant: str
    id: str


@dataclass(frozen=True, slots=True)
class CacheDrop:
    """Forget one key of a named cache in every worker, or the whole cache when key is None."""

    kind: ClassVar[str] = "cache.drop"
    topic: ClassVar[str] = "cache"
    name: str
    key: str | None = None


@dataclass(frozen=True, slots=True)
class SnapshotDue:
    """A portal snapshot is stale; the worker that wins the claim rebuilds it."""

    kind: ClassVar[str] = "snapshot.due"
    topic: ClassVar[str] = "snapshot"
    name: str


Event = EntityChanged | SubscriptionChanged | CacheDrop | SnapshotDue

EVENT_TYPES: Final[dict[str, type[Event]]] = {
    cls.kind: cls for cls in (EntityChanged, SubscriptionChanged, CacheDrop, SnapshotDue)
}


class BadEvent(ValueError):
    """A payload is not one of our events."""


def encode_event(event: Event) -> bytes:
    """Return event as compact JSON with its kind under "event"."""
    return orjson.dumps({"event": event.kind, **dataclasses.asdict(event)})


def parse_event(payload: bytes) -> Event:
    """Return the event encoded in payload, or raise BadEvent saying what is wrong."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise BadEvent(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadEvent("not a JSON object")
    kind = data.pop("event", None)
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise BadEvent(f"unknown event {kind!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if extra := data.keys() - fields.keys():
        raise BadEvent(f"{cls.kind}: unknown fields {sorted(extra)}")
    args: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is dataclasses.MISSING:
                raise BadEvent(f"{cls.kind}: missing {name!r}")
            continue
        args[name] = _value(cls.kind, name, field.type, data[name])
    return cls(**args)


def decode_event(payload: bytes) -> Event | None:
    """Return the event in payload, or log why it is not one and return None."""
    try:
        return parse_event(payload)
    except BadEvent as exc:
        log.warning("bus: skipped a malformed event (%s): %.200r", exc, payload)
        return None


async def publish_event(bus: Bus, event: Event) -> None:
    """Publish event on its topic."""
    await bus.publish(event.topic, encode_event(event))


def _value(kind: str, name: str, annotation: object, value: object) -> object:
    # annotations are strings (from __future__ import annotations); there are only three shapes
    if annotation == "datetime":
        if isinstance(value, str):
            try:
                at = datetime.fromisoformat(value)
            except ValueError:
                at = None
            if at is not None and at.tzinfo is not None:
                return at
        raise BadEvent(f"{kind}: {name!r} must be a date-time with a time zone")
    if isinstance(value, str) or (annotation == "str | None" and value is None):
        return value
    raise BadEvent(f"{kind}: {name!r} must be a string, got {type(value).__name__}")
