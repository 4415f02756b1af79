"""Change events between worker processes, and a run-once claim shared by them (issue 8)."""

from cityos.bus.base import RECONNECTED, Bus, Subscription
from cityos.bus.events import (
    BadEvent,
    CacheDrop,
    EntityChanged,
    Event,
    SnapshotDue,
    SubscriptionChanged,
    decode_event,
    encode_event,
    parse_event,
    publish_event,
)
from cityos.bus.memory import InProcessBus
from cityos.bus.nats_bus import NatsBus
from cityos.bus.redis_bus import RedisBus
from cityos.bus.url import bus_from_url

__all__ = [
    "RECONNECTED",
    "BadEvent",
    "Bus",
    "CacheDrop",
    "EntityChanged",
    "Event",
    "InProcessBus",
    "NatsBus",
    "RedisBus",
    "SnapshotDue",
    "Subscription",
    "SubscriptionChanged",
    "bus_from_url",
    "decode_event",
    "encode_event",
    "parse_event",
    "publish_event",
]
