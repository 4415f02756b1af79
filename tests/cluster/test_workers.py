"""Several workers on one PostgreSQL database with a Redis bus, as real `cityos serve` processes.

Two servers on two ports stand for two hosts (each its own data dir); `--workers 2` runs two
granian workers behind one port. A receiver records what is notified. The kill test stops a
worker with SIGKILL in the middle of a write load and checks that every acknowledged write is
notified, and none under two notification ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from conftest import CITYOS, Receiver, ServeProcess, pg_schema_url, wait_for

REDIS = ("127.0.0.1", 6379)
BUS_URL = os.environ.get("CITYOS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LD = {"Content-Type": "application/json"}
ENTITIES = "/ngsi-ld/v1/entities"
SUBSCRIPTIONS = "/ngsi-ld/v1/subscriptions"


def require_redis() -> None:
    try:
        socket.create_connection(REDIS, timeout=1).close()
    except OSError as exc:
        reason = f"no Redis on {REDIS[0]}:{REDIS[1]} for the bus ({exc})"
        if os.environ.get("CITYOS_REQUIRE_SERVICES") == "1":
            pytest.fail(reason + " and CITYOS_REQUIRE_SERVICES=1")
        pytest.skip(reason)


@pytest.fixture
def installation(pg_database: str, tmp_path: Path) -> dict[str, str]:
    """The environment of one installation: a fresh schema, a bus namespace of its own."""
    require_redis()
    return {
        "CITYOS_AUTH": "off",
        "CITYOS_DATABASE_URL": pg_schema_url(pg_database),
        "CITYOS_BUS_URL": BUS_URL,
        "CITYOS_BUS_NAMESPACE": f"t{secrets.token_hex(6)}",
        "CITYOS_NOTIFY_LEASE": "3",  # a killed worker's notifications wait 3 s, not 30
    }


@contextlib.contextmanager
def workers(
    tmp_path: Path, env: dict[str, str], n: int, *args: str
) -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    try:
        for i in range(n):
            started.append(ServeProcess(tmp_path / f"host{i}", env, *args))
        yield started
    finally:
        for worker in started:
            err = worker.stop()
            if worker.proc.returncode not in (0, -signal.SIGKILL):
                pytest.fail(f"worker on {worker.port} ended with {worker.proc.returncode}: {err}")


def gauge(n: int) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:WaterObserved:w{n}",
        "type": "WaterObserved",
        "waterLevel": {"type": "Property", "value": 0},
    }


def subscribe(base: str, receiver: Receiver, **extra: Any) -> str:
    sub = {
        "type": "Subscription",
        "entities": [{"type": "WaterObserved"}],
        "notification": {
            "endpoint": {"uri": receiver.url},
            "format": "keyValues",
            "attributes": ["waterLevel"],
        },
        **extra,
    }
    made = httpx.post(base + SUBSCRIPTIONS, json=sub, timeout=10)
    assert made.status_code == 201, made.text
    return made.headers["Location"].rpartition("/")[2]


def patch(client: httpx.Client, base: str, n: int, value: int) -> int:
    url = f"{base}{ENTITIES}/urn:ngsi-ld:WaterObserved:w{n}/attrs/waterLevel"
    return client.patch(url, json={"value": value}, headers=LD, timeout=10).status_code


def received_values(receiver: Receiver) -> tuple[Counter[tuple[str, int]], Counter[str]]:
    """Return how often each (entity, value) arrived, and how often each notification id."""
    values: Counter[tuple[str, int]] = Counter()
    ids: Counter[str] = Counter()
    for note in list(receiver.received):
        ids[note["id"]] += 1
        for entity in note["data"]:
            values[(entity["id"], entity["waterLevel"])] += 1
    return values, ids


def test_a_subscription_made_on_one_host_is_matched_on_the_other(
    installation: dict[str, str], tmp_path: Path, receiver: Receiver
) -> None:
    with workers(tmp_path, installation, 2) as (a, b):
        assert httpx.post(a.url + ENTITIES, json=gauge(1), headers=LD).status_code == 201
        # b writes without pause while a subscription is made on a: every write acknowledged
        # after the subscription's 201 is notified (none waits for the bus to carry it)
        created = threading.Event()
        after: list[int] = []
        stop = threading.Event()

        def write() -> None:
            value = 0
            with httpx.Client() as client:
                while not stop.is_set():
                    value += 1
                    made_before = created.is_set()
                    assert patch(client, b.url, 1, value) == 204
                    if made_before:
                        after.append(value)

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(0.3)
        sub_id = subscribe(a.url, receiver, watchedAttributes=["waterLevel"])
        created.set()
        wait_for(lambda: len(after) >= 50, "50 writes after the subscription", 30)
        stop.set()
        writer.join(30)
        wait_for(
            lambda: set(after) <= {v for (_, v) in received_values(receiver)[0]},
            "every write after the subscription to be notified",
            timeout=30,
        )
        time.sleep(1)  # a duplicate would arrive meanwhile
        values, ids = received_values(receiver)
        assert max(values.values()) == 1
        assert max(ids.values()) == 1
        # deleted on b: a stops matching at once too
        assert httpx.delete(f"{b.url}{SUBSCRIPTIONS}/{sub_id}").status_code == 204
        with httpx.Client() as client:
            assert patch(client, a.url, 1, -1) == 204
        time.sleep(1.5)
        assert all(v != -1 for (_, v) in received_values(receiver)[0])


@pytest.mark.parametrize("shape", ["two hosts", "workers 2"])
def test_killing_a_worker_mid_load_loses_and_duplicates_nothing(
    installation: dict[str, str], tmp_path: Path, receiver: Receiver, shape: str
) -> None:
    entities = 8
    # two `cityos serve` on two ports, or one `cityos serve --workers 2` (granian respawns the
    # killed worker); either way the killed one is the one sending the notifications
    n, args = (2, ()) if shape == "two hosts" else (1, ("--workers", "2"))
    with workers(tmp_path, installation, n, *args) as started:
        pair = started * (3 - n)
        a = pair[0]
        for n in range(entities):
            assert httpx.post(a.url + ENTITIES, json=gauge(n), headers=LD).status_code == 201
        subscribe(a.url, receiver, watchedAttributes=["waterLevel"])
        time.sleep(0.5)
        acked: list[tuple[str, int]] = []
        stop = threading.Event()

        def load(worker_index: int) -> None:
            # each writer owns its entities; values rise, so every write is a distinct change
            targets = [n for n in range(entities) if n % 2 == worker_index]
            value = 0
            with httpx.Client() as client:
                while not stop.is_set():
                    value += 1
                    for n in targets:
                        first = (value + n) % 2
                        try:
                            status, written = patch(client, pair[first].url, n, value), value
                        except httpx.TransportError:
                            # the killed worker may have committed it before dying: unknown,
                            # so the other worker writes a value of its own (a new change)
                            written = -value
                            status = patch(client, pair[1 - first].url, n, written)
                        if status == 204:
                            acked.append((f"urn:ngsi-ld:WaterObserved:w{n}", written))

        threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        wait_for(lambda: len(receiver.received) >= 100, "notifications before the kill", 60)
        # the receiver stops taking notifications: the sender holds them, retrying; kill it
        # then, so that what it held must be taken over when its lease runs out
        receiver.status = 503
        sender = wait_for(lambda: sender_pid(installation), "a worker to hold the subscription")
        time.sleep(0.5)
        if shape == "two hosts":
            next(w for w in pair if os.getpgid(sender) == w.proc.pid).kill()
        else:
            assert os.getpgid(sender) == a.proc.pid  # one of the server's own workers
            os.kill(sender, signal.SIGKILL)
        receiver.status = 204
        killed_at = len(acked)
        wait_for(lambda: len(acked) >= killed_at + 200, "writes after the kill", 60)
        stop.set()
        for t in threads:
            t.join(30)
        expected = Counter(acked)
        # the victim's notifications wait for its lease (3 s) to run out, then the other sends
        wait_for(
            lambda: set(expected) <= set(received_values(receiver)[0]),
            "every acknowledged write to be notified",
            timeout=60,
        )
        time.sleep(2)  # a duplicate would arrive meanwhile
        values, ids = received_values(receiver)
        lost = set(expected) - set(values)
        assert not lost, f"{len(lost)} acknowledged writes never notified"
        # a notification b sent just before it died may come again from a, with the same id;
        # the same change under two ids would be a duplicate a receiver cannot tell
        by_value: dict[tuple[str, int], set[str]] = {}
        for note in receiver.received:
            for entity in note["data"]:
                by_value.setdefault((entity["id"], entity["waterLevel"]), set()).add(note["id"])
        twice = {k: v for k, v in by_value.items() if len(v) > 1}
        assert not twice, f"changes notified under two ids: {list(twice.items())[:3]}"
        resent = sum(n - 1 for n in ids.values() if n > 1)
        assert resent <= 8, f"{resent} notifications sent again (at most the ones in flight)"
        assert len(acked) > 300


def sender_pid(env: dict[str, str]) -> int | None:
    """Return the process id of the worker holding the (only) subscription, if one does."""

    async def query() -> str | None:
        conn = await asyncpg.connect(env["CITYOS_DATABASE_URL"])
        try:
            sender: str | None = await conn.fetchval("SELECT sender FROM subscriptions")
            return sender
        finally:
            await conn.close()

    sender = asyncio.run(query())
    return None if sender is None else int(sender.split(":")[1])  # host:pid:random


def test_workers_2_notify_once_and_periodic_runs_in_one_worker(
    installation: dict[str, str], tmp_path: Path, receiver: Receiver
) -> None:
    with workers(tmp_path, installation, 1, "--workers", "2") as (w,):
        assert httpx.post(w.url + ENTITIES, json=gauge(1), headers=LD).status_code == 201
        subscribe(w.url, receiver, watchedAttributes=["waterLevel"])
        time.sleep(0.5)
        with httpx.Client() as client:  # new connections: granian spreads them over workers
            for value in range(1, 101):
                assert patch(client, w.url, 1, value) == 204
        receiver.wait(100, timeout=30)
        time.sleep(1)
        values, _ = received_values(receiver)
        assert sorted(v for (_, v) in values) == list(range(1, 101))
        assert max(values.values()) == 1
        # every second, from one worker only: not twice a second
        receiver.received.clear()
        subscribe(w.url, receiver, timeInterval=1)
        time.sleep(6.5)
        periodic = len(receiver.received)
        assert 4 <= periodic <= 8, f"{periodic} periodic notifications in 6.5 s at 1 s"


def test_several_workers_need_postgresql_and_a_bus(tmp_path: Path) -> None:
    sqlite = subprocess.run(
        [CITYOS, "serve", "--workers", "2", "--data-dir", str(tmp_path)],
        env={**os.environ, "CITYOS_DATABASE_URL": "", "CITYOS_BUS_URL": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sqlite.returncode == 2
    assert "2 workers need PostgreSQL" in sqlite.stderr
    no_bus = subprocess.run(
        [CITYOS, "serve", "--workers", "3", "--data-dir", str(tmp_path)],
        env={
            **os.environ,
            "CITYOS_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/test",
            "CITYOS_BUS_URL": "",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert no_bus.returncode == 2
    assert "3 workers need a bus" in no_bus.stderr
    assert "CITYOS_BUS_URL" in no_bus.stderr


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [CITYOS, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_key_or_token_revoked_by_the_command_stops_working_on_every_host_at_once(
    installation: dict[str, str], tmp_path: Path
) -> None:
    env = {**installation, "CITYOS_AUTH": "on"}
    key = cli(env, "keys", "create", "--name", "app", "--role", "steward", "--tenant", "")
    prefix = key[4:12]
    with workers(tmp_path, env, 2) as (a, b):
        url = ENTITIES + "?type=Building"
        auth = {"Authorization": f"Bearer {key}"}
        for w in (a, b):  # each host now trusts the key for 30 s (its cache)
            assert httpx.get(w.url + url, headers=auth).status_code == 200
        cli(env, "keys", "revoke", prefix)
        for w in (a, b):
            refused = wait_for(
                lambda w=w: httpx.get(w.url + url, headers=auth).status_code == 401,
                f"the revoked key refused on {w.port}",
                timeout=2,
            )
            assert refused
        # a catalog API token likewise
        token = cli(env, "token", "create", "--user", "admin")
        create = "/api/3/action/package_create"
        for n, w in enumerate((a, b)):
            made = httpx.post(
                w.url + create, json={"name": f"ds-{n}"}, headers={"Authorization": token}
            )
            assert made.status_code == 200, made.text
        cli(env, "token", "revoke", token[:12])
        for n, w in enumerate((a, b)):
            again = httpx.post(
                w.url + create, json={"name": f"ds-x{n}"}, headers={"Authorization": token}
            )
            assert again.status_code in (401, 403), again.text


def test_when_the_leader_dies_another_worker_takes_over_periodic_notifications(
    installation: dict[str, str], tmp_path: Path, receiver: Receiver
) -> None:
    with workers(tmp_path, installation, 2) as (a, b):
        assert httpx.post(a.url + ENTITIES, json=gauge(1), headers=LD).status_code == 201
        subscribe(b.url, receiver, timeInterval=1)
        receiver.wait(3, timeout=15)
        a.kill()  # a started first: it holds the lead
        # b takes the lead within its 2 s poll; what it queued while a's lease on the sending
        # (3 s) ran on goes out in one burst after that
        time.sleep(6)
        before = len(receiver.received)
        time.sleep(5)
        after = len(receiver.received) - before
        assert 3 <= after <= 6, f"{after} periodic notifications in 5 s at 1 s after the failover"


def test_a_change_on_a_follower_is_published_by_the_leader(
    installation: dict[str, str], tmp_path: Path
) -> None:
    shelter = {
        "id": "urn:ngsi-ld:EvacuationShelter:sano-test-1",
        "type": "EvacuationShelter",
        "name": {"type": "LanguageProperty", "languageMap": {"ja": "試験避難所", "en": "Test"}},
        "status": {"type": "Property", "value": "open"},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [139.58, 36.31]},
        },
    }
    with workers(tmp_path, installation, 2) as (a, b):
        assert httpx.post(b.url + ENTITIES, json=shelter, headers=LD).status_code == 201

        def published() -> bool:
            page = httpx.get(a.url + "/public/shelters.json")
            return page.status_code == 200 and "試験避難所" in page.text

        # a leads: it rebuilt the snapshot from b's change, and serves it
        assert wait_for(published, "the leader's snapshot to show the new shelter", timeout=15)
