"""Killing a worker loses no MQTT measure: real Mosquitto, PostgreSQL and `cityos serve`.

Two servers (one worker each) on one PostgreSQL schema share an MQTT group; devices publish
QoS 1 measures with unique values and timestamps while one server is SIGKILLed, then started
again or not. Every measure must be in the temporal history. A measure its worker had committed
but not yet acknowledged when it died comes again to the worker that takes its slot and is
written again: the same value at the same observedAt, which is the only way a duplicate may
appear.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from conftest import (
    MQTT_HOST,
    MQTT_PORT,
    ServeProcess,
    pg_schema_url,
    require_mosquitto,
    wait_for,
)

from cityos.iot.mqtt import MAX_BATCH, MAX_BATCHES

pytestmark = pytest.mark.server

DEVICES = 8
MEASURES = 2400
#: published per second: the kill lands while measures are being written, and while the
#: killed server starts again (a few seconds) Mosquitto queues its session's share (half)
#: within its default limit for a client that is away (max_queued_messages, 1,000), beyond
#: which it would drop them
RATE = 200.0
START = datetime(2026, 3, 1, tzinfo=UTC)


class Server(ServeProcess):
    """One `cityos serve` process (one worker) of the installation, ready once subscribed."""

    def __init__(self, data: Path, env: dict[str, str]) -> None:
        super().__init__(data, env)

    def ready(self) -> bool:
        about = httpx.get(f"{self.url}/iot/about", timeout=1)
        return about.status_code == 200 and bool(about.json()["mqtt"]["connected"])

    def counts(self) -> dict[str, int]:
        measures: dict[str, int] = httpx.get(f"{self.url}/iot/about", timeout=5).json()["measures"]
        return measures

    def accepted(self) -> int:
        return int(self.counts().get("accepted", 0))


def stamp(n: int) -> datetime:
    return START + timedelta(milliseconds=n)


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def provision(base: str, key: str) -> None:
    group = {
        "apikey": key,
        "resource": "",
        "entity_type": "WaterObserved",
        "attributes": [{"object_id": "l", "name": "waterLevel", "type": "Number"}],
    }
    r = httpx.post(f"{base}/iot/groups", json={"groups": [group]}, timeout=10)
    assert r.status_code == 201, r.text
    devices = [{"device_id": f"gauge{d}", "apikey": key} for d in range(DEVICES)]
    r = httpx.post(f"{base}/iot/devices", json={"devices": devices}, timeout=10)
    assert r.status_code == 201, r.text


def publish_all(key: str, published: list[int]) -> None:
    """Publish measure n (value n, observed at stamp(n)) for every n at RATE per second."""
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect(MQTT_HOST, MQTT_PORT)
    pub.loop_start()
    began = time.monotonic()
    try:
        for n in range(MEASURES):
            lag = began + n / RATE - time.monotonic()
            if lag > 0:
                time.sleep(lag)
            observed = stamp(n).isoformat().replace("+00:00", "Z")
            payload = f'{{"l": {n}, "TimeInstant": "{observed}"}}'
            topic = f"/json/{key}/gauge{n % DEVICES}/attrs"
            pub.publish(topic, payload, qos=1).wait_for_publish(timeout=10)
            published.append(n)  # the broker has it (PUBACK): it must not be lost
    finally:
        pub.loop_stop()
        pub.disconnect()


def history(base: str) -> list[tuple[int, str]]:
    """Return every (value, observedAt) in the devices' waterLevel histories."""
    found: list[tuple[int, str]] = []
    for d in range(DEVICES):
        r = httpx.get(
            f"{base}/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:WaterObserved:gauge{d}",
            params={"attrs": "waterLevel", "options": "temporalValues", "lastN": "100000"},
            timeout=30,
        )
        if r.status_code == 404:
            continue
        assert r.status_code == 200, r.text
        values: list[Any] = r.json().get("waterLevel", {}).get("values", [])
        found += [(int(v), at) for v, at in values]
    return found


def settled(base: str) -> list[tuple[int, str]]:
    """Return the history once it has every measure, or once it stopped growing for 15 s."""
    deadline = time.monotonic() + 120
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        found = history(base)
        if len({v for v, _ in found}) == MEASURES:
            time.sleep(1.0)  # a late duplicate would be written meanwhile
            return history(base)
        if len(found) != last:
            last, since = len(found), time.monotonic()
        elif time.monotonic() - since > 15:
            break
        time.sleep(0.5)
    return history(base)


@pytest.mark.parametrize("restart", [True, False], ids=["restarted", "not-restarted"])
def test_a_killed_worker_loses_no_measure(pg_database: str, tmp_path: Path, restart: bool) -> None:
    """Restarted, a server takes a free slot (its own, or a new one if its predecessor's is
    being drained); not restarted, the other server drains the dead one's session."""
    require_mosquitto()
    key = f"k{uuid.uuid4().hex[:12]}"
    env = {
        "CITYOS_AUTH": "off",
        "CITYOS_DATABASE_URL": pg_schema_url(pg_database),
        "CITYOS_MQTT_URL": f"mqtt://{MQTT_HOST}:{MQTT_PORT}",
        "CITYOS_MQTT_GROUP": f"g{key}",  # a group of our own: no other cityos shares it
    }
    servers = [Server(tmp_path / "a", env), Server(tmp_path / "b", env)]
    try:
        provision(servers[0].url, key)
        published: list[int] = []
        publisher = threading.Thread(target=publish_all, args=(key, published))
        publisher.start()
        # the first server (slot 0) dies once both are busy writing
        wait_for(lambda: servers[0].accepted() > 150, "measures written before the kill", 60)
        servers[0].kill()
        killed_at = len(published)
        if restart:
            time.sleep(1.0)  # meanwhile its share of the measures waits in the broker
            servers[0] = Server(tmp_path / "a", env)
        publisher.join(60)
        assert not publisher.is_alive()
        assert killed_at < MEASURES, "the kill came after the last publish: nothing was tested"
        assert len(published) == MEASURES

        found = settled(servers[1].url)
        counts = Counter(v for v, _ in found)
        lost = set(range(MEASURES)) - set(counts)
        alive = servers if restart else servers[1:]
        assert not lost, (
            f"{len(lost)} published measures never written, e.g. {sorted(lost)[:5]}; "
            f"counts: {[server.counts() for server in alive]}"
        )
        assert set(counts) == set(range(MEASURES))
        for value, observed in found:
            assert parse_time(observed) == stamp(value), (value, observed)
        # Written twice: committed by the killed worker, not acknowledged, sent again; so
        # published before the kill, and at most the batches being written then.
        again = {value: n for value, n in counts.items() if n > 1}
        assert all(value <= killed_at for value in again), sorted(again)[-5:]
        assert sum(again.values()) - len(again) <= MAX_BATCH * MAX_BATCHES
        # the load was shared, and the kill hit a worker at work
        assert all(server.accepted() > 0 for server in alive)
    finally:
        for server in servers:
            err = server.stop()
            if server.proc.returncode not in (0, -signal.SIGKILL):
                pytest.fail(f"cityos serve ended with {server.proc.returncode}: {err}")
