"""The bus of a single worker: everything stays inside this process."""

from __future__ import annotations

import time

from cityos.bus.base import (
    DEFAULT_BACKLOG,
    DEFAULT_NAMESPACE,
    Bus,
    check_publish_topic,
    check_ttl,
)

#: expired claims are swept once the table grows past this many keys
_SWEEP_AT = 1024


class InProcessBus(Bus):
    """Deliver to this process's subscribers; claims are held in a dict with expiry."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE, backlog: int = DEFAULT_BACKLOG) -> None:
        super().__init__(namespace, backlog)
        self._claims: dict[str, float] = {}

    async def start(self) -> None:
        """Do nothing: there is nothing to connect to."""

    async def close(self) -> None:
        """End every subscription and forget all claims."""
        self._hub.close_all()
        self._claims.clear()

    async def publish(self, topic: str, payload: bytes) -> None:
        """Hand payload to this process's subscribers of topic."""
        self._hub.deliver(check_publish_topic(topic), bytes(payload))

    async def claim(self, key: str, ttl: float) -> bool:
        """Return True if key is free or its claim expired, and hold it for ttl seconds."""
        check_ttl(ttl)
        now = time.monotonic()
        if len(self._claims) > _SWEEP_AT:
            self._claims = {k: until for k, until in self._claims.items() if until > now}
        if self._claims.get(key, 0.0) > now:
            return False
        self._claims[key] = now + ttl
        return True
