"""MQTT south-bound ingestion: subscribe to the IoT Agent topics on CITYOS_MQTT_URL.

Topics, as the FIWARE IoT Agents for JSON and UltraLight 2.0 use them:

- ``/json/<apikey>/<device_id>/attrs`` and ``/ul/<apikey>/<device_id>/attrs``: measures;
- ``/json/<apikey>/<device_id>/attrs/<attribute>`` (and ``/ul/...``): one attribute's raw value;
- the legacy un-prefixed ``/<apikey>/<device_id>/attrs[/<attribute>]``: the payload decides,
  a JSON object or array is JSON, anything else UltraLight.

Subscriptions are shared (``$share/<CITYOS_MQTT_GROUP>/...``), so several cityos workers split
the devices' messages instead of each writing every one. Messages are written without waiting
for each other (one device's messages stay in order), so a burst shares group commits.

Nothing acknowledged is lost when a worker is killed: a QoS 1 message is acknowledged (PUBACK)
only once the write it caused is committed, or once it is refused for good (a malformed
measure, an unknown apikey or topic: sent again it would be refused again). Each worker
connects over MQTT 5 as ``cityos-<group>-<slot>`` (see `cityos.iot.mqtt_slots`) with a session
the broker keeps while it is away; the broker sends whatever that session had not acknowledged
to the next worker that takes the slot (a restarted worker takes its predecessor's). A measure
that was committed but not yet acknowledged when its worker died is written again then: at
least once, never lost. A worker that stops cleanly unsubscribes first, writes and acknowledges
what it holds, then leaves (its empty session then collects nothing). A worker that dies and is
not started again leaves a session the broker keeps feeding: every few seconds each running
worker drains the free slots it has seen held (connects as them, unsubscribes them, writes and
acknowledges what they held, then frees them again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

import aiomqtt
import asyncpg
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cityos.iot.ingest import Ingestor, Message, Prepared, Proto
from cityos.iot.mqtt_slots import Slots, client_id
from cityos.settings import Settings

__all__ = ["RECEIVE_MAXIMUM", "TOPICS", "MqttIngest", "route"]

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
#: batches being written at once; past this the consumer waits (the reader goes on reading
#: until RECEIVE_MAXIMUM messages are unacknowledged: then the broker holds the backlog)
MAX_BATCHES: Final = 8
#: un-acknowledged messages the broker may send at once (MQTT 5 Receive Maximum; the most it
#: allows): a burst waits here rather than in the broker's per-client queue, which drops what
#: exceeds its limit (Mosquitto's max_queued_messages, 1,000 by default)
RECEIVE_MAXIMUM: Final = 65_535
#: how long the broker keeps a worker's session (and its unacknowledged messages) while no
#: worker holds its slot
SESSION_EXPIRY_SECONDS: Final = 7 * 24 * 3600
RECONNECT_MAX_SECONDS: Final = 30.0
#: how often a worker checks that it still holds its slot (its lock connection is alive)
SLOT_CHECK_SECONDS: Final = 5.0
#: a clean stop waits this long at most for the messages it holds to be written and acknowledged
STOP_SECONDS: Final = 10.0
#: ...and until no message came for this long after unsubscribing (some were on their way)
QUIET_SECONDS: Final = 0.3

#: errors after which the subscriber takes its slot and connects again (after a pause)
_RETRIED: Final = (
    aiomqtt.MqttError,
    OSError,
    TimeoutError,
    asyncpg.PostgresError,  # taking a slot
    asyncpg.InterfaceError,
)
#: how long a worker gives the session of a slot it drains (see MqttIngest._drain)
DRAIN_SECONDS: Final = 30.0


class _Link:
    """One connection to the broker: a packet id means something only on its own connection."""

    __slots__ = ("client", "heard", "unacked")

    def __init__(self, client: paho.Client) -> None:
        self.client = client
        self.unacked = 0  # messages received and not yet acknowledged
        self.heard = 0.0  # monotonic time of its last message


#: how to acknowledge a message: (its connection, packet id); None for QoS 0
Ack = tuple[_Link, int] | None


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
    to the next batch while the writer commits (at most MAX_BATCHES batches outstanding). A
    batch's messages are acknowledged once its writes are committed.
    """

    def __init__(self, ingestor: Ingestor, settings: Settings) -> None:
        assert settings.mqtt is not None
        self.host, self.port, self.username, self.password = settings.mqtt
        self.group = settings.mqtt_group
        self.ingestor = ingestor
        self.connected = asyncio.Event()
        pg = settings.database_url if settings.engine == "postgresql" else None
        self.slots = Slots(self.group, pg)
        self._tasks: list[asyncio.Task[None]] = []
        self._buffer: list[tuple[Message, Ack]] = []
        self._wake = asyncio.Event()
        self._batches: set[asyncio.Task[None]] = set()
        self._room = asyncio.Semaphore(MAX_BATCHES)
        self._client: aiomqtt.Client | None = None
        self._link: _Link | None = None  # the subscription's current connection
        self._drained: set[int] = set()  # free slots this worker has emptied since

    @property
    def client_id(self) -> str | None:
        """Return the MQTT client id this worker subscribes as, or None before it has a slot."""
        return None if self.slots.slot is None else client_id(self.group, self.slots.slot)

    async def start(self) -> None:
        """Connect in the background; a broker that is down is retried, not fatal."""
        self._tasks = [
            asyncio.create_task(self._run(), name="cityos-mqtt"),
            asyncio.create_task(self._consume(), name="cityos-mqtt-writer"),
            asyncio.create_task(self._watch_slot(), name="cityos-mqtt-slot"),
        ]

    async def stop(self) -> None:
        """Unsubscribe, write and acknowledge every message read so far, then disconnect."""
        reader, consumer, watch = self._tasks or (None, None, None)
        if watch is not None:
            await _cancel(watch)
        client = self._client
        if client is not None and self.connected.is_set():
            try:
                topics = [f"$share/{self.group}/{topic}" for topic in TOPICS]
                await client.unsubscribe(topics, timeout=5)
                await self._settle()
            except aiomqtt.MqttError as exc:
                log.warning("MQTT: could not unsubscribe before stopping: %s", exc)
        if reader is not None:
            await _cancel(reader)  # its client disconnects after the acknowledgements sent
        # What is left was not acknowledged (the broker sends it again to the slot's next
        # worker); written here too, rather than trusting a broker that may not persist it.
        while self._buffer:
            self._wake.set()
            await asyncio.sleep(0.01)
        if consumer is not None:
            await _cancel(consumer)
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
        await self.slots.release()

    async def _settle(self) -> None:
        """Wait until the messages on their way came and what is held is written (bounded)."""
        deadline = time.monotonic() + STOP_SECONDS
        while time.monotonic() < deadline:
            heard = self._link.heard if self._link is not None else 0.0
            quiet = time.monotonic() - heard >= QUIET_SECONDS
            if quiet and not self._buffer and not self._batches:
                return
            self._wake.set()
            await asyncio.sleep(0.02)
        log.warning("MQTT: stopping with %d measures not yet written", len(self._buffer))

    def _connection(self, slot: int) -> tuple[aiomqtt.Client, _Link]:
        """Return an MQTT 5 client with a kept session that acknowledges only when told."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=client_id(self.group, slot),
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
        )
        under = _paho(client)
        # aiomqtt has no option for it: paho's own client must not PUBACK on receipt
        under.manual_ack_set(True)
        # Messages go straight to the buffer, without aiomqtt's queue and its task per message
        # (a third of the reading cost); paho calls this on the event loop.
        link = _Link(under)

        def on_message(_client: paho.Client, _data: object, message: paho.MQTTMessage) -> None:
            link.heard = time.monotonic()
            ack: Ack = None
            if message.qos > 0:
                ack = (link, message.mid)
                link.unacked += 1
            payload = message.payload
            self._accept(
                message.topic, bytes(payload) if isinstance(payload, bytearray) else payload, ack
            )

        under.on_message = on_message
        return client, link

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                slot = await self.slots.acquire()
                client, self._link = self._connection(slot)
                async with client:
                    self._client = client
                    for topic in TOPICS:
                        await client.subscribe(f"$share/{self.group}/{topic}", qos=1)
                    log.info(
                        "MQTT: subscribed at %s:%d as %s", self.host, self.port, client.identifier
                    )
                    self.connected.set()
                    delay = 0.5
                    async for _ in client.messages:  # none come here; it ends when disconnected
                        pass
            except _RETRIED as exc:
                log.warning("MQTT: %s; reconnecting in %.1f s", exc, delay)
            finally:
                self.connected.clear()
                self._client = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def _watch_slot(self) -> None:
        """Leave the broker when the slot's lock is lost; drain the slots of dead workers."""
        while True:
            await asyncio.sleep(SLOT_CHECK_SECONDS)
            if self._client is None:
                continue
            if not await self.slots.held():
                log.warning("MQTT: lost the lock of %s; reconnecting", self.client_id)
                self._drop()
                continue
            try:
                await self._adopt()
            except _RETRIED as exc:
                log.warning("MQTT: could not drain a free slot: %s", exc)

    async def _adopt(self) -> None:
        """Drain the free slots that some worker held (one that died and was not restarted)."""
        held = await self.slots.observe()
        self._drained -= held  # held again since: it may be left behind again
        for slot in sorted(self.slots.known - held - self._drained):
            if await self.slots.take(slot):
                try:
                    await self._drain(slot)
                finally:
                    await self.slots.give_back(slot)
                self._drained.add(slot)

    async def _drain(self, slot: int) -> None:
        """Connect as a free slot, unsubscribe it, write and acknowledge what it held."""
        client, link = self._connection(slot)
        async with client:
            # the broker stops sending this session new measures (the group's other members
            # get them), and sends what it kept: unacknowledged ones first, then the queue
            await client.unsubscribe([f"$share/{self.group}/{t}" for t in TOPICS], timeout=5)
            link.heard = time.monotonic()
            deadline = link.heard + DRAIN_SECONDS
            while time.monotonic() < deadline:
                if link.unacked == 0 and time.monotonic() - link.heard >= QUIET_SECONDS:
                    break
                await asyncio.sleep(0.05)
        log.info("MQTT: drained %s (a worker that is gone)", client_id(self.group, slot))

    def _drop(self) -> None:
        """Disconnect (the session stays): the broker sends the unacknowledged again later."""
        if self._client is not None:
            _paho(self._client).disconnect()

    def _accept(self, topic: str, payload: bytes, ack: Ack) -> None:
        target = route(topic, payload)
        if target is None:
            self.ingestor.counts["refused:UNKNOWN_TOPIC"] += 1
            log.warning("MQTT: ignored a message on %r (not an IoT Agent measure topic)", topic)
            self._ack([ack])
            return
        proto, apikey, device_id, attr = target
        self._buffer.append((Message(proto, apikey, device_id, payload, None, attr), ack))
        self._wake.set()

    def _ack(self, acks: list[Ack]) -> None:
        """Acknowledge messages on the connection they came on, if it is still up.

        A message of a connection that went away is not acknowledged: the broker sends it again
        on the session's next connection.
        """
        for ack in acks:
            if ack is not None:
                link, mid = ack
                link.unacked -= 1
                if link.client.is_connected():
                    link.client.ack(mid, 1)

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
                    ready = await self.ingestor.prepare_many([m for m, _ in batch])
                except Exception:  # a bug must not stop ingestion for good
                    self._room.release()
                    log.exception("MQTT: preparing %d measures failed", len(batch))
                    self._drop()  # unacknowledged: the broker sends them again
                    continue
                acks = [ack for _, ack in batch]
                task = asyncio.create_task(self._commit(ready, acks))
                self._batches.add(task)
                task.add_done_callback(self._done)

    async def _commit(self, ready: list[Prepared], acks: list[Ack]) -> None:
        """Write a batch, then acknowledge all its messages (the refused ones too)."""
        try:
            await self.ingestor.commit_many(ready)
        except Exception:  # e.g. the database is unreachable: not written, not acknowledged
            log.exception("MQTT: writing %d measures failed; they will come again", len(ready))
            self._drop()
            return
        self._ack(acks)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._room.release()
        self._batches.discard(task)


def _paho(client: aiomqtt.Client) -> paho.Client:
    """Return the paho client under an aiomqtt client (for acknowledgements and disconnects)."""
    return client._client  # aiomqtt has no public handle on it


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
