"""The bus over Redis: pub/sub for events, SET NX PX for claims."""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cityos.bus.base import (
    DEFAULT_BACKLOG,
    DEFAULT_NAMESPACE,
    RECONNECTED,
    Bus,
    check_publish_topic,
    check_ttl,
    log,
    redact,
)

_FIRST_RETRY = 0.1  # seconds before reconnecting after a drop; doubles up to _LAST_RETRY
_LAST_RETRY = 5.0
_POLL = 1.0  # longest wait for a message, so health-check pings go out on an idle channel


class RedisBus(Bus):
    """Redis pub/sub on `<namespace>.<topic>` channels, one listening connection per worker."""

    def __init__(
        self,
        url: str,
        namespace: str = DEFAULT_NAMESPACE,
        backlog: int = DEFAULT_BACKLOG,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__(namespace, backlog)
        self.url = url
        self._connect_timeout = connect_timeout
        self._client: aioredis.Redis | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    @property
    def client_name(self) -> str:
        """Return the name our connections carry in Redis CLIENT LIST."""
        return f"cityos-bus-{self.namespace}"

    async def start(self) -> None:
        """Connect and subscribe; raise ConnectionError when Redis stays unreachable."""
        self._client = aioredis.Redis.from_url(
            self.url,
            client_name=self.client_name,
            socket_connect_timeout=self._connect_timeout,
            socket_timeout=self._connect_timeout,
            socket_keepalive=True,
            health_check_interval=15,
        )
        self._listener = asyncio.create_task(self._listen(), name=f"{self.client_name}-listener")
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self._listening.wait()
        except TimeoutError:
            await self.close()
            raise ConnectionError(
                f"CITYOS_BUS_URL: cannot reach Redis at {redact(self.url)} "
                f"within {self._connect_timeout:g}s"
            ) from None

    async def close(self) -> None:
        """Stop listening, close the connections and end every subscription."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        self._listening.clear()
        self._hub.close_all()

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish payload; when Redis is unreachable, log and drop it (at-most-once)."""
        channel = f"{self.namespace}.{check_publish_topic(topic)}"
        if self._client is None:
            raise RuntimeError("RedisBus.publish() before start()")
        try:
            await self._client.publish(channel, payload)
        except (RedisError, OSError) as exc:
            log.warning("bus: event on %r lost, Redis unreachable: %s", topic, exc)

    async def claim(self, key: str, ttl: float) -> bool:
        """Return True if this call set the claim key; False if taken or Redis is unreachable."""
        px = max(1, math.ceil(check_ttl(ttl) * 1000))
        if self._client is None:
            raise RuntimeError("RedisBus.claim() before start()")
        try:
            won = await self._client.set(f"{self.namespace}:claim:{key}", b"1", nx=True, px=px)
        except (RedisError, OSError) as exc:
            # nobody runs the job rather than two workers: the durable work stays in the database
            log.warning("bus: claim %r refused, Redis unreachable: %s", key, exc)
            return False
        return bool(won)

    async def _listen(self) -> None:
        assert self._client is not None
        delay = _FIRST_RETRY
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(f"{self.namespace}.*")
                if delay > _FIRST_RETRY:
                    log.info("bus: listening on Redis %s again", redact(self.url))
                    self._hub.deliver(RECONNECTED, b"")
                self._listening.set()
                delay = _FIRST_RETRY
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=_POLL
                    )
                    if message is not None:
                        self._dispatch(message)
            except (RedisError, OSError) as exc:
                log.warning(
                    "bus: lost Redis pub/sub at %s (%s); retrying in %.1fs",
                    redact(self.url),
                    exc,
                    delay,
                )
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed in redis-py 8
            await asyncio.sleep(delay)
            delay = min(delay * 2, _LAST_RETRY)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message.get("type") != "pmessage":
            return
        channel, data = message.get("channel"), message.get("data")
        if not isinstance(channel, bytes) or not isinstance(data, bytes):
            return
        topic = channel.decode("utf-8", "replace")[len(self.namespace) + 1 :]
        self._hub.deliver(topic, data)
