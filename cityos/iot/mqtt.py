"""MQTT south-bound ingestion: subscribe to the IoT Agent topics on CITYOS_MQTT_URL.

Topics, as the FIWARE IoT Agents for JSON and UltraLight 2.0 use them:

- ``/json/<apikey>/<device_id>/attrs`` and ``/ul/<apikey>/<device_id>/attrs``: measures;
- ``/json/<apikey>/<device_id>/attrs/<attribute>`` (and ``/ul/...``): one attribute's raw value;
- the legacy un-prefixed ``/<apikey>/<device_id>/attrs[/<attribute>]``: the payload decides,
  a JSON object or array is JSON, anything else UltraLight.

Subscriptions are shared (``$share/<CITYOS_MQTT_GROUP>/...``), so several cityos workers split
the devices' messages instead of each writing every one. Messages are written without waiting
for each other (one device's messages stay in order), so a burst shares group commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Final

import aiomqtt

from cityos.iot.ingest import Ingestor, Message, Proto
from cityos.settings import Settings

__all__ = ["TOPICS", "MqttIngest", "route"]

log = logging.getLogger("cityos.iot.mqtt")

TOPICS: Final = (
    "/json/+/+/attrs",
    "/json/+/+/attrs/+",
    "/ul/+/+/attrs",
    "/ul/+/+/attrs/+",
    "/+/+/attrs",
    "/+/+/attrs/+",
)
#: messages prepared and queued together
MAX_BATCH: Final = 512
#: batches being written at once; past this the consumer waits (the reader goes on reading:
#: the broker's own per-client queue limit is what bounds a backlog)
MAX_BATCHES: Final = 8
RECONNECT_MAX_SECONDS: Final = 30.0


def route(topic: str, payload: bytes) -> tuple[Proto, str, str, str | None] | None:
    """Return (protocol, apikey, device id, single attribute or None) of a topic, or None."""
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != "":
        return None
    proto: Proto | None = None
    if parts[1] in ("json", "ul") and len(parts) in (5, 6) and parts[4] == "attrs":
        proto = "json" if parts[1] == "json" else "ul"
        rest = parts[2:]
    elif len(parts) in (4, 5) and parts[3] == "attrs":
        rest = parts[1:]
    else:
        return None
    apikey, device_id = rest[0], rest[1]
    attr = rest[3] if len(rest) == 4 else None
    if not apikey or not device_id or (len(rest) == 4 and not attr):
        return None
    if proto is None:
        first = payload.lstrip()[:1]
        proto = "json" if attr is None and first in (b"{", b"[") else "ul"
    return proto, apikey, device_id, attr


class MqttIngest:
    """The MQTT subscriber: one connection, reconnecting with backoff, feeding the Ingestor.

    The reader only routes topics and appends messages to a buffer; one consumer takes the
    buffer in order, prepares every message and queues all their writes at once, then moves on
    to the next batch while the writer commits (at most MAX_BATCHES batches outstanding).
    """

    def __init__(self, ingestor: Ingestor, settings: Settings) -> None:
        assert settings.mqtt is not None
        self.host, self.port, self.username, self.password = settings.mqtt
        self.group = settings.mqtt_group
        self.ingestor = ingestor
        self.connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._buffer: list[Message] = []
        self._wake = asyncio.Event()
        self._batches: set[asyncio.Task[None]] = set()
        self._room = asyncio.Semaphore(MAX_BATCHES)

    async def start(self) -> None:
        """Connect in the background; a broker that is down is retried, not fatal."""
        self._tasks = [
            asyncio.create_task(self._run(), name="cityos-mqtt"),
            asyncio.create_task(self._consume(), name="cityos-mqtt-writer"),
        ]

    async def stop(self) -> None:
        """Stop reading, then wait until every message read so far is written."""
        reader, consumer = self._tasks or (None, None)
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        while self._buffer:  # the consumer is still running: let it drain the buffer
            self._wake.set()
            await asyncio.sleep(0.01)
        if consumer is not None:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)

    async def _run(self) -> None:
        delay = 0.5
        identifier = f"cityos-{socket.gethostname()}-{os.getpid()}"
        while True:
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    username=self.username,
                    password=self.password,
                    identifier=identifier,
                ) as client:
                    for topic in TOPICS:
                        await client.subscribe(f"$share/{self.group}/{topic}", qos=1)
                    log.info("MQTT: subscribed at %s:%d", self.host, self.port)
                    self.connected.set()
                    delay = 0.5
                    async for message in client.messages:
                        payload = message.payload
                        raw = payload if isinstance(payload, bytes) else str(payload).encode()
                        self._accept(message.topic.value, raw)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                log.warning("MQTT: %s; reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    def _accept(self, topic: str, payload: bytes) -> None:
        target = route(topic, payload)
        if target is None:
            self.ingestor.counts["refused:UNKNOWN_TOPIC"] += 1
            log.warning("MQTT: ignored a message on %r (not an IoT Agent measure topic)", topic)
            return
        proto, apikey, device_id, attr = target
        self._buffer.append(Message(proto, apikey, device_id, payload, None, attr))
        self._wake.set()

    async def _consume(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._buffer:
                batch = self._buffer[:MAX_BATCH]
                del self._buffer[:MAX_BATCH]
                await self._room.acquire()
                # Prepared here, in order; tasks start in creation order, so the writes of
                # one batch are queued before the next batch's: a device's stay in order.
                try:
                    ready = await self.ingestor.prepare_many(batch)
                except Exception:  # a bug must not stop ingestion for good
                    self._room.release()
                    log.exception("MQTT: preparing %d measures failed", len(batch))
                    continue
                task = asyncio.create_task(self.ingestor.commit_many(ready))
                self._batches.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._room.release()
        self._batches.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("MQTT: writing measures failed", exc_info=task.exception())
