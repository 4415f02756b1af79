"""MQTT acknowledgements: a measure is acknowledged only once its write is committed.

The subscriber runs in-process against the real Mosquitto with an ingestor whose commit the
test holds. What the broker kept unacknowledged is read back by connecting a plain MQTT 5
client as the worker's own client id: the broker sends it the session's unacknowledged
messages again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any, cast

import paho.mqtt.client as mqtt
from conftest import MQTT_HOST, MQTT_PORT, require_mosquitto
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cityos.iot.ingest import Ingestor, Message, Prepared
from cityos.iot.mqtt import MqttIngest
from cityos.iot.mqtt_slots import client_id
from cityos.settings import Settings


class HeldIngestor:
    """Prepares every message except `bad` ones (refused); commits only when released."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.committed: list[bytes] = []
        self.wrote = asyncio.Event()  # set after each commit

    async def prepare_many(self, messages: list[Message]) -> list[Prepared]:
        ready = [Prepared(m, "", m.device_id, []) for m in messages if m.body != b"bad"]
        self.counts["refused:BAD_REQUEST"] += len(messages) - len(ready)
        return ready

    async def commit_many(self, ready: list[Prepared]) -> None:
        self.entered.set()
        await self.release.wait()
        self.committed += [p.message.body for p in ready]
        self.wrote.set()


def publish(topic: str, *payloads: bytes) -> None:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect(MQTT_HOST, MQTT_PORT)
    pub.loop_start()
    try:
        for payload in payloads:
            pub.publish(topic, payload, qos=1).wait_for_publish(timeout=5)
    finally:
        pub.loop_stop()
        pub.disconnect()


def left_unacknowledged(group: str, wait: float = 1.5) -> list[tuple[bytes, bool]]:
    """Resume the slot-0 session of a group; return what the broker sends again (payload, dup).

    The session is then ended, so a test leaves nothing behind in the broker.
    """
    got: list[tuple[bytes, bool]] = []
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id(group, 0), protocol=mqtt.MQTTv5
    )

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        got.append((message.payload, bool(message.dup)))

    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 60
    client.connect(MQTT_HOST, MQTT_PORT, clean_start=False, properties=props)
    client.loop_start()
    try:
        asyncio.run(asyncio.sleep(wait))
    finally:
        gone = Properties(PacketTypes.DISCONNECT)
        gone.SessionExpiryInterval = 0
        client.disconnect(properties=gone)
        client.loop_stop()
    return got


async def running(group: str) -> tuple[MqttIngest, HeldIngestor]:
    held = HeldIngestor()
    settings = Settings(mqtt_url=f"mqtt://{MQTT_HOST}:{MQTT_PORT}", mqtt_group=group)
    ingest = MqttIngest(cast(Ingestor, held), settings)
    await ingest.start()
    await asyncio.wait_for(ingest.connected.wait(), 10)
    return ingest, held


async def crash(ingest: MqttIngest) -> None:
    """End the subscriber without its clean stop: nothing more is written or acknowledged."""
    for task in ingest._tasks:
        task.cancel()
    await asyncio.gather(*ingest._tasks, return_exceptions=True)


def test_a_measure_whose_commit_has_not_finished_is_not_acknowledged() -> None:
    require_mosquitto()
    group = f"g{uuid.uuid4().hex[:12]}"

    async def scenario() -> list[bytes]:
        ingest, held = await running(group)
        assert ingest.client_id == client_id(group, 0)  # one worker without PostgreSQL: slot 0
        await asyncio.to_thread(publish, "/json/k/dev1/attrs", b'{"l": 1}')
        await asyncio.wait_for(held.entered.wait(), 10)  # being written, not committed
        await crash(ingest)
        return held.committed

    assert asyncio.run(scenario()) == []
    # the broker still holds the measure for this worker's id and sends it again
    assert left_unacknowledged(group) == [(b'{"l": 1}', True)]


def test_committed_and_refused_measures_are_acknowledged() -> None:
    require_mosquitto()
    group = f"g{uuid.uuid4().hex[:12]}"

    async def scenario() -> list[bytes]:
        ingest, held = await running(group)
        await asyncio.to_thread(publish, "/json/k/dev1/attrs", b'{"l": 1}', b"bad", b'{"l": 2}')
        await asyncio.wait_for(held.entered.wait(), 10)
        held.release.set()
        while len(held.committed) < 2:
            held.wrote.clear()
            await asyncio.wait_for(held.wrote.wait(), 10)
        await asyncio.sleep(0.3)  # the acknowledgements are on their way
        await crash(ingest)  # even without a clean stop, nothing is left to send again
        return held.committed

    assert asyncio.run(scenario()) == [b'{"l": 1}', b'{"l": 2}']
    assert left_unacknowledged(group) == []


def test_a_clean_stop_writes_and_acknowledges_what_it_holds() -> None:
    require_mosquitto()
    group = f"g{uuid.uuid4().hex[:12]}"

    async def scenario() -> list[bytes]:
        ingest, held = await running(group)
        await asyncio.to_thread(publish, "/json/k/dev1/attrs", b'{"l": 1}', b'{"l": 2}')
        await asyncio.wait_for(held.entered.wait(), 10)
        stopping = asyncio.create_task(ingest.stop())
        await asyncio.sleep(0.2)
        assert not stopping.done()  # the stop waits for the write
        held.release.set()
        await asyncio.wait_for(stopping, 15)
        return held.committed

    assert sorted(asyncio.run(scenario())) == [b'{"l": 1}', b'{"l": 2}']
    # unsubscribed on the way out: the stopped worker's session collects nothing meanwhile
    publish("/json/k/dev1/attrs", b'{"l": 3}')
    assert left_unacknowledged(group) == []
