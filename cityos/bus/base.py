"""The Bus interface shared by every transport, and the local fan-out to subscribers."""

from __future__ import annotations

import abc
import asyncio
import logging
import re
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Final
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("cityos.bus")

#: topics and namespaces are dot-separated words, so they map 1:1 onto NATS subjects
_TOPIC = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_NAMESPACE = re.compile(r"[A-Za-z0-9_-]+")
DEFAULT_NAMESPACE: Final = "cityos"
#: local topic: an empty payload each time this worker reconnects, as it may have missed events
RECONNECTED: Final = "bus.reconnected"
#: events a slow subscriber may fall behind by before the oldest are dropped
DEFAULT_BACKLOG: Final = 10_000


def check_topic(topic: str) -> str:
    """Return topic, or raise ValueError when it is not dot-separated words."""
    if not _TOPIC.fullmatch(topic):
        raise ValueError(f"bus topic {topic!r} must be dot-separated words of A-Z a-z 0-9 _ -")
    return topic


def check_publish_topic(topic: str) -> str:
    """Return topic, or raise ValueError when it is malformed or reserved for the bus itself."""
    if check_topic(topic) == "bus" or topic.startswith("bus."):
        raise ValueError(f"bus topic {topic!r} is reserved: topics under 'bus.' come from the bus")
    return topic


def check_namespace(namespace: str) -> str:
    """Return namespace, or raise ValueError when it is not one word."""
    if not _NAMESPACE.fullmatch(namespace):
        raise ValueError(f"bus namespace {namespace!r} must be one word of A-Z a-z 0-9 _ -")
    return namespace


def check_ttl(ttl: float) -> float:
    """Return ttl, or raise ValueError when it is not a positive number of seconds."""
    if not ttl > 0:
        raise ValueError(f"claim ttl must be a positive number of seconds, got {ttl!r}")
    return ttl


def redact(url: str) -> str:
    """Return url without its user name and password, for logs and errors."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


class _End:
    """Marks the end of a subscription in its queue."""


_END: Final = _End()


class Subscription:
    """Payloads published on one topic, in order, until closed; iterate with `async for`."""

    def __init__(self, topic: str, hub: _Hub, backlog: int) -> None:
        self.topic = topic
        self._hub = hub
        self._queue: asyncio.Queue[bytes | _End] = asyncio.Queue(backlog)
        self._closed = False
        self.dropped = 0  # payloads lost because this subscriber fell too far behind

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, _End):
            raise StopAsyncIteration
        return item

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop receiving; a pending or later `async for` step ends the loop."""
        if self._closed:
            return
        self._closed = True
        self._hub.remove(self)
        self._push(_END)

    def _deliver(self, payload: bytes) -> None:
        if not self._closed:
            self._push(payload)

    def _push(self, item: bytes | _End) -> None:
        if self._queue.full():
            # pub/sub is at-most-once anyway; a stuck consumer must not grow memory without bound
            self._queue.get_nowait()
            self.dropped += 1
            log.warning("bus subscriber on %r is behind: dropped its oldest event", self.topic)
        self._queue.put_nowait(item)


class _Hub:
    """Fans payloads out to this process's subscribers, by exact topic."""

    def __init__(self) -> None:
        self._subs: dict[str, set[Subscription]] = {}

    def add(self, topic: str, backlog: int) -> Subscription:
        sub = Subscription(check_topic(topic), self, backlog)
        self._subs.setdefault(topic, set()).add(sub)
        return sub

    def remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.topic)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.topic]

    def deliver(self, topic: str, payload: bytes) -> None:
        for sub in tuple(self._subs.get(topic, ())):
            sub._deliver(payload)

    def close_all(self) -> None:
        for subs in tuple(self._subs.values()):
            for sub in tuple(subs):
                sub.close()


class Bus(abc.ABC):
    """Change events between worker processes, and a run-once claim shared by all of them."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE, backlog: int = DEFAULT_BACKLOG) -> None:
        self.namespace = check_namespace(namespace)
        self._backlog = backlog
        self._hub = _Hub()

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect; once this returns, events published by any worker reach our subscribers."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnect, end every subscription and leave no task behind."""

    @abc.abstractmethod
    async def publish(self, topic: str, payload: bytes) -> None:
        """Send payload to the subscribers of topic in every worker, this one included."""

    @abc.abstractmethod
    async def claim(self, key: str, ttl: float) -> bool:
        """Return True for exactly one caller across all workers for key until ttl seconds pass."""

    def subscribe(self, topic: str) -> Subscription:
        """Receive every payload published on topic from now on, by any worker."""
        return self._hub.add(topic, self._backlog)

    async def __aenter__(self) -> Bus:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
