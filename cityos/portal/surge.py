"""Surge mode: the operator's switch that makes the top page the light text-only page.

The switch lives in the storage's key-value table, so it survives a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from cityos.broker import clock
from cityos.broker.errors import BadRequestData
from cityos.storage.base import Storage

NAMESPACE: Final = "portal"
KEY: Final = "surge"


@dataclass(frozen=True, slots=True)
class SurgeState:
    """Whether surge mode is on, and since when (None: never switched)."""

    surge: bool = False
    changed_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the admin API's representation."""
        return {"surge": self.surge, "changedAt": self.changed_at}


async def load(store: Storage) -> SurgeState:
    """Return the stored switch (off when never set)."""
    raw = await store.kv_get(NAMESPACE, KEY)
    if raw is None:
        return SurgeState()
    doc = orjson.loads(raw)
    return SurgeState(bool(doc.get("surge")), doc.get("changedAt"))


async def save(store: Storage, on: bool) -> SurgeState:
    """Store the switch and return the new state."""
    state = SurgeState(on, clock.now())
    await store.kv_put(NAMESPACE, KEY, orjson.dumps(state.to_json()))
    return state


def parse_switch(doc: Any) -> bool:
    """Return the `surge` boolean of an admin request body, or raise BadRequestData."""
    if not isinstance(doc, dict):
        raise BadRequestData('the body must be a JSON object such as {"surge": true}')
    extra = sorted(set(doc) - {"surge", "changedAt"})  # what GET answered can be sent back
    if extra:
        raise BadRequestData(f"{extra[0]}: unknown member; only 'surge' can be set")
    if "surge" not in doc:
        raise BadRequestData("surge: required (true or false)")
    value = doc["surge"]
    if not isinstance(value, bool):
        raise BadRequestData(f"surge: must be true or false, got {orjson.dumps(value).decode()}")
    return value
