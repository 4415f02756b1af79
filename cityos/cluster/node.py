"""Cluster: this worker's view of the others: the bus, handlers of their events, the leader.

One worker (no CITYOS_BUS_URL) has nobody to tell: `publish` does nothing and no event
arrives. With a bus every worker, the sender included, receives each event and runs the
handlers registered for its type; handlers must therefore be idempotent (reload, forget,
mark dirty). The bus is at-most-once, so what must not be lost never travels on it alone:
each `on_reconnect` handler treats its state as stale after the bus reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from cityos.bus import RECONNECTED, Bus, Event, bus_from_url, decode_event, publish_event
from cityos.cluster.leader import Leadership

log = logging.getLogger("cityos.cluster")

Handler = Callable[[Any], Awaitable[None] | None]


class Cluster:
    """The bus (when several workers share the database) and the leadership."""

    def __init__(
        self,
        bus_url: str | None = None,
        leader_url: str | None = None,
        *,
        namespace: str = "cityos",
    ) -> None:
        self.bus: Bus | None = bus_from_url(bus_url, namespace) if bus_url else None
        self.leadership = Leadership(leader_url)
        self._handlers: dict[str, list[tuple[type[Any], Handler]]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def shared(self) -> bool:
        """Whether other workers may exist (a bus is configured)."""
        return self.bus is not None

    def is_leader(self) -> bool:
        """Whether this worker runs the jobs that must run once."""
        return self.leadership.is_leader

    def on(self, event_type: type[Any], handler: Handler) -> None:
        """Run handler(event) for each event of this type from any worker (this one included)."""
        self._handlers.setdefault(event_type.topic, []).append((event_type, handler))

    def on_reconnect(self, handler: Callable[[], Awaitable[None] | None]) -> None:
        """Run handler() whenever the bus reconnects: events may have been missed meanwhile."""
        self._handlers.setdefault(RECONNECTED, []).append((type(None), lambda _: handler()))

    async def publish(self, event: Event) -> None:
        """Tell every worker (never raises: the bus logs what it cannot send)."""
        if self.bus is not None:
            await publish_event(self.bus, event)

    async def start(self) -> None:
        """Connect to the bus, follow the registered topics, and try to lead."""
        if self.bus is not None:
            await self.bus.start()
            for topic, handlers in self._handlers.items():
                sub = self.bus.subscribe(topic)
                self._tasks.append(
                    asyncio.create_task(self._follow(sub, topic, handlers), name=f"cityos-{topic}")
                )
        await self.leadership.start()

    async def stop(self) -> None:
        """Stop following, give up the lead, disconnect."""
        await self.leadership.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.bus is not None:
            await self.bus.close()

    async def _follow(
        self, sub: Any, topic: str, handlers: list[tuple[type[Any], Handler]]
    ) -> None:
        async for payload in sub:
            event = None if topic == RECONNECTED else decode_event(payload)
            if event is None and topic != RECONNECTED:
                continue  # malformed: decode_event has logged why
            for event_type, handler in handlers:
                if not isinstance(event, event_type):  # reconnect handlers take None
                    continue
                try:
                    result = handler(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:  # one bad handler must not stop the others or the follower
                    log.exception("handling %s failed", topic)


async def tell_workers(bus_url: str | None, namespace: str, event: Event) -> bool:
    """Publish one event to a running installation's workers (from a command); False: no bus."""
    if not bus_url:
        return False
    bus = bus_from_url(bus_url, namespace)
    try:
        await asyncio.wait_for(bus.start(), 10)
        await publish_event(bus, event)
    except (OSError, ConnectionError, TimeoutError) as exc:
        log.warning("could not tell the workers (%s)", exc)
        return False
    finally:
        await bus.close()
    return True
