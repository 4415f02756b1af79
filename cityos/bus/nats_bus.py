"""The bus over NATS: core pub/sub for events, a JetStream key-value bucket for claims."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Final

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

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

#: how long a claim key lives in the bucket at most, so finished claims do not pile up
DEFAULT_CLAIM_WINDOW: Final = 24 * 3600.0


class NatsBus(Bus):
    """NATS subjects `<namespace>.<topic>`; claims in the JetStream KV bucket `<ns>-claims`."""

    def __init__(
        self,
        url: str,
        namespace: str = DEFAULT_NAMESPACE,
        backlog: int = DEFAULT_BACKLOG,
        connect_timeout: float = 10.0,
        claim_window: float = DEFAULT_CLAIM_WINDOW,
    ) -> None:
        super().__init__(namespace, backlog)
        self.url = url
        self.bucket = f"{self.namespace}-claims"
        self._connect_timeout = connect_timeout
        self._claim_window = claim_window
        self._nc: Client | None = None
        self._kv: KeyValue | None = None

    async def start(self) -> None:
        """Connect, subscribe and open the claims bucket; raise ConnectionError when unreachable."""
        self._nc = Client()
        try:
            # max_reconnect_attempts=-1 also retries the first connect forever: bound it here
            async with asyncio.timeout(self._connect_timeout):
                await self._nc.connect(
                    self.url,
                    name=f"cityos-bus-{self.namespace}",
                    connect_timeout=max(1, round(self._connect_timeout)),
                    max_reconnect_attempts=-1,  # a worker outlives any NATS restart
                    reconnect_time_wait=1,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
                await self._nc.subscribe(f"{self.namespace}.>", cb=self._on_message)
                await self._nc.flush()
                self._kv = await self._open_bucket()
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            await self.close()
            raise ConnectionError(
                f"CITYOS_BUS_URL: cannot use NATS at {redact(self.url)} "
                f"within {self._connect_timeout:g}s: {exc!r}"
            ) from None

    async def close(self) -> None:
        """Close the connection and end every subscription."""
        nc, self._nc, self._kv = self._nc, None, None
        if nc is not None and not nc.is_closed:
            await nc.close()
        self._hub.close_all()

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish payload; while reconnecting NATS buffers it, past that it is logged and lost."""
        subject = f"{self.namespace}.{check_publish_topic(topic)}"
        if self._nc is None:
            raise RuntimeError("NatsBus.publish() before start()")
        try:
            await self._nc.publish(subject, payload)
        except nats.errors.Error as exc:
            log.warning("bus: event on %r lost, NATS unusable: %s", topic, exc)

    async def claim(self, key: str, ttl: float) -> bool:
        """Return True if this call took key (new, or its claim expired); False otherwise."""
        check_ttl(ttl)
        if ttl > self._claim_window:
            raise ValueError(
                f"claim ttl {ttl}s is longer than the NATS claim window {self._claim_window}s"
            )
        if self._kv is None:
            raise RuntimeError("NatsBus.claim() before start()")
        name = base64.urlsafe_b64encode(key.encode()).decode()  # KV keys allow [-/_=.A-Za-z0-9]
        # the deadline is wall-clock time, so workers on several hosts need synchronised clocks
        value = orjson.dumps({"until": time.time() + ttl})
        try:
            try:
                await self._kv.create(name, value)
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            else:
                return True
            try:
                entry = await self._kv.get(name)
            except nats.js.errors.KeyNotFoundError:
                return False  # the bucket aged it out just now; the next attempt may take it
            if _deadline(entry.value) > time.time():
                return False
            # compare-and-set on the revision we read: of all who saw it expired, one wins
            await self._kv.update(name, value, last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("bus: claim %r refused, NATS unusable: %s", key, exc)
            return False
        return True

    async def _open_bucket(self) -> KeyValue:
        assert self._nc is not None
        js = self._nc.jetstream()
        try:
            kv = await js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            # two workers creating the same bucket at once is fine: the config is identical
            return await js.create_key_value(bucket=self.bucket, history=1, ttl=self._claim_window)
        # a bucket made earlier with a shorter window would drop claims before their ttl
        window = (await kv.status()).ttl
        if window:
            self._claim_window = min(self._claim_window, window)
        return kv

    async def _on_message(self, msg: Msg) -> None:
        self._hub.deliver(msg.subject[len(self.namespace) + 1 :], msg.data)

    async def _on_error(self, exc: Exception) -> None:
        log.warning("bus: NATS error at %s: %s", redact(self.url), exc)

    async def _on_disconnected(self) -> None:
        log.warning("bus: disconnected from NATS at %s; reconnecting", redact(self.url))

    async def _on_reconnected(self) -> None:
        log.info("bus: reconnected to NATS at %s", redact(self.url))
        self._hub.deliver(RECONNECTED, b"")


def _deadline(value: bytes | None) -> float:
    """Return the expiry stored in a claim entry; 0 (expired) when it is unreadable."""
    try:
        data = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return 0.0
    until = data.get("until") if isinstance(data, dict) else None
    return float(until) if isinstance(until, int | float) else 0.0
