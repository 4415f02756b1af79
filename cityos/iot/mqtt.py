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

from cityos.iot.ingest import Ingestor, Proto
from cityos.iot.provisioning import IotError
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
#: messages being written at once; past this the subscriber stops reading from the broker
MAX_IN_FLIGHT: Final = 4096
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
    """The MQTT subscriber: one connection, reconnecting with backoff, feeding the Ingestor."""

    def __init__(self, ingestor: Ingestor, settings: Settings) -> None:
        assert settings.mqtt is not None
        self.host, self.port, self.username, self.password = settings.mqtt
        self.group = settings.mqtt_group
        self.ingestor = ingestor
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._tails: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def start(self) -> None:
        """Connect in the background; a broker that is down is retried, not fatal."""
        self._task = asyncio.create_task(self._run(), name="cityos-mqtt")

    async def stop(self) -> None:
        """Stop reading, then wait until every message read so far is written."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

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
                    max_queued_incoming_messages=0,
                ) as client:
                    for topic in TOPICS:
                        await client.subscribe(f"$share/{self.group}/{topic}", qos=1)
                    log.info("MQTT: subscribed at %s:%d", self.host, self.port)
                    self.connected.set()
                    delay = 0.5
                    async for message in client.messages:
                        payload = message.payload
                        raw = payload if isinstance(payload, bytes) else str(payload).encode()
                        await self._accept(message.topic.value, raw)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                log.warning("MQTT: %s; reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def _accept(self, topic: str, payload: bytes) -> None:
        target = route(topic, payload)
        if target is None:
            self.ingestor.counts["refused:UNKNOWN_TOPIC"] += 1
            log.warning("MQTT: ignored a message on %r (not an IoT Agent measure topic)", topic)
            return
        proto, apikey, device_id, attr = target
        await self._slots.acquire()
        key = (apikey, device_id)
        before = self._tails.get(key)
        task = asyncio.create_task(self._write(before, proto, apikey, device_id, payload, attr))
        self._tails[key] = task
        self._in_flight.add(task)
        task.add_done_callback(lambda t: self._done(key, t))

    async def _write(
        self,
        before: asyncio.Task[None] | None,
        proto: Proto,
        apikey: str,
        device_id: str,
        payload: bytes,
        attr: str | None,
    ) -> None:
        if before is not None and not before.done():
            await asyncio.wait([before])  # one device's messages are written in order
        with contextlib.suppress(IotError):  # counted and logged by the ingestor
            await self.ingestor.ingest(proto, apikey, device_id, payload, resource=None, attr=attr)

    def _done(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        self._slots.release()
        self._in_flight.discard(task)
        if self._tails.get(key) is task:
            del self._tails[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("MQTT: writing a measure failed", exc_info=task.exception())
