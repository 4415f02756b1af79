"""Subscriptions and their outbox, asserted identically on SQLite and PostgreSQL.

Then, on PostgreSQL only, what several workers sharing one outbox rely on: claims hand each
notification to exactly one sender, in order per subscription, and leases of dead senders
are taken over.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from cityos.broker import subscriptions as model
from cityos.broker.errors import BadRequestData
from cityos.broker.geo import parse_geoquery
from cityos.broker.notify import Sender
from cityos.broker.subscriptions import Counters, Live
from cityos.jsonld.context import ActiveContext
from cityos.jsonld.loader import ContextLoader
from cityos.storage.base import Change, EntityQuery, Mutation, Storage
from cityos.storage.pg_subscriptions import PostgresSubscriptionStore
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import SqliteStorage
from cityos.storage.sqlite_subscriptions import Queued, Registry, SubscriptionStore

NOW = "2026-01-01T00:00:00.000000Z"
CTX: ActiveContext = ContextLoader(remote_fetch=False).default()
T = CTX.expand_term

Subs = SubscriptionStore | PostgresSubscriptionStore


def subscription(sub_id: str, tenant: str = "", **members: Any) -> Live:
    body = {
        "type": "Subscription",
        "id": sub_id,
        "entities": [{"type": "WaterLevelObserved"}],
        "notification": {"endpoint": {"uri": "http://127.0.0.1:9/notify"}},
        **members,
    }
    doc, _ = model.validate(body, CTX, NOW)
    return Live.build(tenant, doc, CTX)


def sensor(n: int, level: float, etype: str = "WaterLevelObserved", **extra: Any) -> Mutation:
    doc: dict[str, Any] = {
        "id": f"urn:e:{n}",
        "type": [T(etype)],
        "createdAt": NOW,
        "modifiedAt": NOW,
        "attrs": {T("level"): [{"type": "Property", "value": level}]},
        **extra,
    }
    return Mutation(doc["id"], lambda _current: doc)


def located(n: int, level: float, point: list[float]) -> Mutation:
    doc: dict[str, Any] = {
        "id": f"urn:e:{n}",
        "type": [T("WaterLevelObserved")],
        "createdAt": NOW,
        "modifiedAt": NOW,
        "attrs": {
            T("level"): [{"type": "Property", "value": level}],
            T("location"): [
                {"type": "GeoProperty", "value": {"type": "Point", "coordinates": point}}
            ],
        },
    }
    return Mutation(doc["id"], lambda _current: doc)


def scoped(n: int, scope: str) -> Mutation:
    doc: dict[str, Any] = {
        "id": f"urn:e:{n}",
        "type": [T("WaterLevelObserved")],
        "scope": [scope],
        "createdAt": NOW,
        "modifiedAt": NOW,
        "attrs": {T("level"): [{"type": "Property", "value": 1}]},
    }
    return Mutation(doc["id"], lambda _current: doc)


def hits(rows: list[Queued]) -> list[tuple[str, str, str]]:
    """Return (tenant, subscription, entity) of each queued notification, in order."""
    return [(r.tenant, r.sub_id, r.payload["data"][0]["id"]) for r in rows]


@dataclass
class Rig:
    """An entity storage with its subscription store."""

    storage: Storage
    subs: Subs


@dataclass
class Engine:
    name: str
    path: Path
    url: str | None

    @asynccontextmanager
    async def rig(self, **kw: Any) -> AsyncIterator[Rig]:
        """Start a storage and its subscription store on this engine's database."""
        subs: Subs
        if self.url is None:
            sqlite = SqliteStorage(self.path)
            await sqlite.start()
            storage: Storage = sqlite
            subs = SubscriptionStore(sqlite, Registry())
        else:
            pg = PostgresStorage(self.url, pool_size=3)
            await pg.start()
            storage = pg
            subs = PostgresSubscriptionStore(pg, Registry(), **kw)
        try:
            await subs.setup()
            for tenant, doc in await subs.load():
                subs.registry.put(Live.build(tenant, doc, CTX))
            yield Rig(storage, subs)
        finally:
            if isinstance(subs, PostgresSubscriptionStore):
                await subs.close()
            await storage.close()

    def run(self, body: Callable[[Rig], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            async with self.rig() as rig:
                return await body(rig)

        return asyncio.run(main())

    def refuse_changes_of(self, st: Storage, entity_id: str) -> None:
        """Add a change hook after the subscriptions' one that fails one entity's writes."""
        if isinstance(st, SqliteStorage):

            def sqlite_hook(_conn: Any, change: Change) -> None:
                if change.entity_id == entity_id:
                    raise ValueError("hook refuses")

            st.add_change_hook(sqlite_hook)
            return
        assert isinstance(st, PostgresStorage)

        async def pg_hook(_conn: Any, change: Change) -> None:
            if change.entity_id == entity_id:
                raise ValueError("hook refuses")

        st.add_change_hook(pg_hook)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """Yield each engine in turn, on a fresh empty database."""
    if request.param == "sqlite":
        return Engine("sqlite", tmp_path / "cityos.db", None)
    return Engine("postgresql", tmp_path, request.getfixturevalue("pg_url"))


async def ok(st: Storage, tenant: str, *mutations: Mutation) -> None:
    outcomes = await st.apply(tenant, list(mutations))
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]


# -- both engines ------------------------------------------------------------------------------
def test_create_read_list_replace_delete(engine: Engine) -> None:
    async def body(rig: Rig) -> None:
        subs = rig.subs
        for n in range(5):
            assert await subs.insert(subscription(f"urn:s:{n}"))
        assert not await subs.insert(subscription("urn:s:2"))  # the id is taken
        assert await subs.insert(subscription("urn:s:2", tenant="city"))  # not in another tenant
        got = await subs.get("", "urn:s:1")
        assert got is not None
        assert got[0]["id"] == "urn:s:1"
        assert list(got[0]) == list(subscription("urn:s:1").doc)  # members in written order
        assert got[1] == Counters()
        assert await subs.get("", "urn:s:9") is None
        page, total = await subs.page("", 2, 1)
        assert [d["id"] for d, _ in page] == ["urn:s:1", "urn:s:2"]
        assert total == 5
        assert (await subs.page("", 10, 5)) == ([], 5)
        assert (await subs.page("nobody", 10, 0)) == ([], 0)
        paused = subscription("urn:s:1", isActive=False)
        assert await subs.replace(paused)
        again = await subs.get("", "urn:s:1")
        assert again is not None
        assert again[0]["isActive"] is False
        assert not await subs.replace(subscription("urn:s:9"))
        assert await subs.delete("", "urn:s:0")
        assert not await subs.delete("", "urn:s:0")
        assert await subs.get("", "urn:s:0") is None
        page, total = await subs.page("", 10, 0)
        # an update keeps a subscription's place in the listing
        assert [d["id"] for d, _ in page] == ["urn:s:1", "urn:s:2", "urn:s:3", "urn:s:4"]

    engine.run(body)

    async def later(rig: Rig) -> list[tuple[str, str]]:
        return [(t, d["id"]) for t, d in await rig.subs.load()]

    # kept by the database, in creation order
    assert engine.run(later) == [
        ("", "urn:s:1"),
        ("", "urn:s:2"),
        ("", "urn:s:3"),
        ("", "urn:s:4"),
        ("city", "urn:s:2"),
    ]


def test_changes_queue_notifications_for_the_matching_subscriptions(engine: Engine) -> None:
    async def body(rig: Rig) -> list[tuple[str, str, str]]:
        subs = rig.subs
        assert await subs.insert(subscription("urn:s:all"))
        assert await subs.insert(subscription("urn:s:high", q="level>2"))
        assert await subs.insert(subscription("urn:s:sano", scopeQ="/Sano/#"))
        near = {"georel": "near;maxDistance==1000", "geometry": "Point"}
        assert await subs.insert(
            subscription("urn:s:near", geoQ={**near, "coordinates": [139.58, 36.31]})
        )
        assert await subs.insert(subscription("urn:s:paused", isActive=False))
        assert await subs.insert(subscription("urn:s:other", tenant="city"))
        await ok(rig.storage, "", sensor(1, 1.0))
        await ok(rig.storage, "", sensor(2, 3.0))
        await ok(rig.storage, "", sensor(3, 5.0, etype="Street"))  # selected by none
        await ok(rig.storage, "", scoped(4, "/Sano/Akiyama"))
        await ok(rig.storage, "", located(5, 0.5, [139.581, 36.311]))
        await ok(rig.storage, "", located(6, 0.5, [139.7, 36.4]))
        await ok(rig.storage, "", sensor(2, 1.5))  # no longer above 2
        await ok(rig.storage, "city", sensor(7, 9.0))
        return hits(await subs.queued(0, 100))

    assert engine.run(body) == [
        ("", "urn:s:all", "urn:e:1"),
        ("", "urn:s:all", "urn:e:2"),
        ("", "urn:s:high", "urn:e:2"),
        ("", "urn:s:all", "urn:e:4"),
        ("", "urn:s:sano", "urn:e:4"),
        ("", "urn:s:all", "urn:e:5"),
        ("", "urn:s:near", "urn:e:5"),
        ("", "urn:s:all", "urn:e:6"),
        ("", "urn:s:all", "urn:e:2"),
        ("city", "urn:s:other", "urn:e:7"),
    ]


def test_a_deleted_entity_notifies_whatever_its_last_content(engine: Engine) -> None:
    async def body(rig: Rig) -> list[Any]:
        assert await rig.subs.insert(
            subscription("urn:s:gone", q="level>2", notificationTrigger=["entityDeleted"])
        )
        await ok(rig.storage, "", sensor(1, 1.0))
        await ok(rig.storage, "", Mutation("urn:e:1", lambda _c: None))
        rows = await rig.subs.queued(0, 10)
        return [r.payload["data"][0] for r in rows]

    [data] = engine.run(body)
    assert data["id"] == "urn:e:1"
    assert "deletedAt" in data


def test_a_change_that_fails_queues_nothing(engine: Engine) -> None:
    async def body(rig: Rig) -> list[tuple[str, str, str]]:
        engine.refuse_changes_of(rig.storage, "urn:e:2")
        assert await rig.subs.insert(subscription("urn:s:1"))
        outcomes = await rig.storage.apply("", [sensor(1, 1.0), sensor(2, 1.0), sensor(3, 1.0)])
        assert [o.ok for o in outcomes] == [True, False, True]
        return hits(await rig.subs.queued(0, 10))

    assert engine.run(body) == [("", "urn:s:1", "urn:e:1"), ("", "urn:s:1", "urn:e:3")]


def test_delivery_and_failure_are_counted_and_delivered_rows_leave(engine: Engine) -> None:
    async def body(rig: Rig) -> tuple[Any, ...]:
        subs = rig.subs
        assert await subs.insert(subscription("urn:s:1"))
        assert await subs.insert(subscription("urn:s:2"))
        for n in range(4):
            await ok(rig.storage, "", sensor(n, 1.0))
        rows = await subs.queued(0, 100)
        ones = [r.seq for r in rows if r.sub_id == "urn:s:1"]
        await subs.failed("", "urn:s:1", "2026-01-02T00:00:00Z")
        await subs.delivered("", "urn:s:1", ones[:3], "2026-01-03T00:00:00Z")
        got = await subs.get("", "urn:s:1")
        assert got is not None
        after = hits(await subs.queued(0, 100))
        two = await subs.get("", "urn:s:2")
        assert two is not None
        return got[1], after, two[1]

    counters, left, untouched = engine.run(body)
    assert counters == Counters(
        2, 1, "2026-01-03T00:00:00Z", "2026-01-03T00:00:00Z", "2026-01-02T00:00:00Z"
    )
    # urn:s:1's first three went; the rest stay in the order they were queued
    assert left == [
        ("", "urn:s:2", "urn:e:0"),
        ("", "urn:s:2", "urn:e:1"),
        ("", "urn:s:2", "urn:e:2"),
        ("", "urn:s:1", "urn:e:3"),
        ("", "urn:s:2", "urn:e:3"),
    ]
    assert untouched == Counters()


def test_queued_reads_in_order_after_a_sequence_number(engine: Engine) -> None:
    async def body(rig: Rig) -> None:
        subs = rig.subs
        assert await subs.insert(subscription("urn:s:1"))
        assert await subs.insert(subscription("urn:s:2", q="level>2"))
        for n in range(5):
            await ok(rig.storage, "", sensor(n, float(n)))
        every = await subs.queued(0, 100)
        seqs = [r.seq for r in every]
        assert seqs == sorted(seqs)
        assert len(every) == 7
        assert await subs.queued(seqs[1], 2) == every[2:4]
        assert await subs.queued(seqs[-1], 10) == []
        twos = await subs.queued_for("", "urn:s:2", 0, 10)
        assert hits(twos) == [("", "urn:s:2", "urn:e:3"), ("", "urn:s:2", "urn:e:4")]
        assert await subs.queued_for("", "urn:s:2", twos[0].seq, 10) == twos[1:]
        assert (
            await subs.queued_for("", "urn:s:1", 0, 2)
            == [r for r in every if r.sub_id == "urn:s:1"][:2]
        )
        assert await subs.queued_for("other", "urn:s:1", 0, 10) == []

    engine.run(body)


def test_periodic_notifications_are_queued_only_while_active(engine: Engine) -> None:
    async def body(rig: Rig) -> None:
        subs = rig.subs
        live = subscription("urn:s:p", timeInterval=60)
        assert await subs.insert(live)
        await ok(rig.storage, "", sensor(1, 1.0))
        assert await subs.queued(0, 10) == []  # periodic subscriptions ignore changes
        payload = live.periodic_payload([], NOW)
        assert await subs.enqueue(live, payload, NOW)
        [row] = await subs.queued(0, 10)
        assert (row.sub_id, row.payload) == ("urn:s:p", payload)
        paused = subscription("urn:s:p", timeInterval=60, isActive=False)
        assert await subs.replace(paused)
        assert not await subs.enqueue(live, payload, NOW)
        changes = subscription("urn:s:c")
        assert await subs.insert(changes)
        assert not await subs.enqueue(changes, payload, NOW)  # not periodic
        assert await subs.delete("", "urn:s:p")
        assert not await subs.enqueue(live, payload, NOW)
        assert await subs.queued(0, 10) == []

    engine.run(body)


def test_delete_drops_undelivered_notifications_and_stops_matching(engine: Engine) -> None:
    async def body(rig: Rig) -> list[tuple[str, str, str]]:
        subs = rig.subs
        assert await subs.insert(subscription("urn:s:1"))
        assert await subs.insert(subscription("urn:s:2"))
        await ok(rig.storage, "", sensor(1, 1.0))
        assert await subs.delete("", "urn:s:1")
        assert subs.registry.get("", "urn:s:1") is None
        await ok(rig.storage, "", sensor(2, 1.0))
        return hits(await subs.queued(0, 10))

    assert engine.run(body) == [("", "urn:s:2", "urn:e:1"), ("", "urn:s:2", "urn:e:2")]


def test_on_queued_wakes_a_reader_that_then_finds_the_notification(engine: Engine) -> None:
    async def body(rig: Rig) -> list[tuple[str, str, str]]:
        subs = rig.subs
        woken = threading.Event()  # SQLite calls it on its writer thread
        subs.on_queued = woken.set
        assert await subs.insert(subscription("urn:s:1"))
        await ok(rig.storage, "", sensor(1, 1.0, etype="Street"))  # queues nothing
        await asyncio.sleep(0.2)
        assert not woken.is_set()
        await ok(rig.storage, "", sensor(2, 1.0))
        for _ in range(100):
            if woken.is_set():
                break
            await asyncio.sleep(0.05)
        assert woken.is_set()
        return hits(await subs.queued(0, 10))

    assert engine.run(body) == [("", "urn:s:1", "urn:e:2")]


def test_notifications_outlive_a_restart(engine: Engine) -> None:
    async def body(rig: Rig) -> None:
        assert await rig.subs.insert(subscription("urn:s:1", q="level>2"))
        await ok(rig.storage, "", sensor(1, 3.0))

    engine.run(body)

    async def later(rig: Rig) -> list[tuple[str, str, str]]:
        await ok(rig.storage, "", sensor(2, 4.0))  # matched by the reloaded subscription
        await ok(rig.storage, "", sensor(3, 1.0))
        return hits(await rig.subs.queued(0, 10))

    assert engine.run(later) == [("", "urn:s:1", "urn:e:1"), ("", "urn:s:1", "urn:e:2")]


# -- PostgreSQL only: several senders share the outbox -------------------------------------------
def pg(pg_url: str) -> Engine:
    return Engine("postgresql", Path(), pg_url)


def counter(n: int, k: int) -> Mutation:
    """Set entity n's counter to k."""
    return Mutation(
        f"urn:e:{n}",
        lambda _c: {
            "id": f"urn:e:{n}",
            "type": [T("WaterLevelObserved")],
            "createdAt": NOW,
            "modifiedAt": NOW,
            "attrs": {T("level"): [{"type": "Property", "value": k}]},
        },
    )


def test_two_senders_drain_concurrently_exactly_once_in_order(pg_url: str) -> None:
    entities, rounds, n_subs = 4, 25, 6
    log: list[tuple[str, str, str, int]] = []  # (sender, subscription, entity, counter)

    async def drain(subs: Subs, name: str, done: asyncio.Event) -> None:
        assert isinstance(subs, PostgresSubscriptionStore)
        idle = 0
        while idle < 3:
            rows = await subs.claim(5, per_subscription=3)
            idle = idle + 1 if not rows and done.is_set() else 0
            for row in rows:
                data = row.payload["data"][0]
                log.append((name, row.sub_id, data["id"], data["level"]["value"]))
                await asyncio.sleep(0)  # let the other sender and the writers run
                await subs.delivered(row.tenant, row.sub_id, [row.seq], NOW)
            if not rows:
                await asyncio.sleep(0.01)

    async def write(st: Storage, n: int) -> None:
        for k in range(rounds):
            await ok(st, "", counter(n, k))

    async def main() -> list[Queued]:
        engine = pg(pg_url)
        async with engine.rig() as a, engine.rig() as b:
            for s in range(n_subs):
                assert await a.subs.insert(subscription(f"urn:s:{s}"))
            done = asyncio.Event()
            senders = [
                asyncio.create_task(drain(a.subs, "a", done)),
                asyncio.create_task(drain(b.subs, "b", done)),
            ]
            await asyncio.gather(*(write(a.storage, n) for n in range(entities)))
            done.set()
            await asyncio.gather(*senders)
            return await a.subs.queued(0, 10)

    left = asyncio.run(main())
    assert left == []
    sent = [entry[1:] for entry in log]
    assert len(sent) == len(set(sent))  # no duplicates
    expected = {
        (f"urn:s:{s}", f"urn:e:{n}", k)
        for s in range(n_subs)
        for n in range(entities)
        for k in range(rounds)
    }
    assert set(sent) == expected  # none lost
    for s in range(n_subs):
        for n in range(entities):
            ks = [k for sub, e, k in sent if (sub, e) == (f"urn:s:{s}", f"urn:e:{n}")]
            assert ks == list(range(rounds))  # each entity's changes in order
    assert {name for name, *_ in log} == {"a", "b"}  # both took part


def test_claim_hands_a_row_once_and_caps_what_a_sender_holds(pg_url: str) -> None:
    async def body(rig: Rig) -> None:
        subs = rig.subs
        assert isinstance(subs, PostgresSubscriptionStore)
        assert await subs.insert(subscription("urn:s:1"))
        assert await subs.insert(subscription("urn:s:2"))
        for k in range(4):
            await ok(rig.storage, "", counter(1, k))
        first = await subs.claim(100, per_subscription=2)
        assert [(r.sub_id, r.payload["data"][0]["level"]["value"]) for r in first] == [
            ("urn:s:1", 0),
            ("urn:s:2", 0),
            ("urn:s:1", 1),
            ("urn:s:2", 1),
        ]
        assert await subs.claim(100, per_subscription=2) == []  # holds two of each already
        await subs.delivered("", "urn:s:1", [first[0].seq], NOW)
        more = await subs.claim(100, per_subscription=2)
        assert [(r.sub_id, r.payload["data"][0]["level"]["value"]) for r in more] == [
            ("urn:s:1", 2)
        ]
        assert len(await subs.claim(1)) == 1  # the limit counts rows

    pg(pg_url).run(body)


def test_a_lapsed_lease_is_taken_over_and_a_live_one_is_not(pg_url: str) -> None:
    async def main() -> None:
        engine = pg(pg_url)
        async with engine.rig(lease=0.5) as a, engine.rig(lease=0.5) as b:
            sa, sb = a.subs, b.subs
            assert isinstance(sa, PostgresSubscriptionStore)
            assert isinstance(sb, PostgresSubscriptionStore)
            assert await sa.insert(subscription("urn:s:1"))
            await ok(a.storage, "", counter(1, 0))
            held = await sa.claim(10)
            assert len(held) == 1
            await ok(a.storage, "", counter(1, 1))
            # a holds the subscription: b gets neither the held row nor the new one
            assert await sb.claim(10) == []
            await asyncio.sleep(0.3)
            assert len(await sa.claim(10)) == 1  # a takes the new row and renews its lease
            await asyncio.sleep(0.3)
            assert await sb.claim(10) == []  # renewed: still a's
            await asyncio.sleep(0.6)  # a stops renewing: presumed dead
            taken = await sb.claim(10)
            assert [r.payload["data"][0]["level"]["value"] for r in taken] == [0, 1]
            assert await sa.claim(10) == []  # b holds it now
            await sb.delivered("", "urn:s:1", [r.seq for r in taken], NOW)
            assert await sb.queued(0, 10) == []
            got = await sb.get("", "urn:s:1")
            assert got is not None
            assert got[1].times_sent == 1
            await ok(a.storage, "", counter(1, 2))
            # all delivered: b let the subscription go, so a may take it straight away
            assert len(await sa.claim(10)) == 1

    asyncio.run(main())


def test_a_committed_notification_wakes_every_worker(pg_url: str) -> None:
    async def main() -> None:
        engine = pg(pg_url)
        async with engine.rig() as a, engine.rig() as b:
            woken = asyncio.Event()
            b.subs.on_queued = woken.set
            assert await a.subs.insert(subscription("urn:s:1"))
            await ok(a.storage, "", sensor(1, 1.0))
            await asyncio.wait_for(woken.wait(), 5)

    asyncio.run(main())


def test_a_regex_postgresql_cannot_run_is_refused_at_creation(pg_url: str) -> None:
    async def body(rig: Rig) -> None:
        with pytest.raises(BadRequestData, match="regular expression"):
            await rig.subs.insert(subscription("urn:s:1", q="name~=(?P<x>a)"))
        assert await rig.subs.get("", "urn:s:1") is None
        assert await rig.subs.insert(subscription("urn:s:2", q="name~=(?i)^ak"))
        await ok(rig.storage, "", sensor(1, 1.0))  # matching runs the pattern: no error

    pg(pg_url).run(body)


def test_geo_queries_of_subscriptions_match_as_entity_queries(engine: Engine) -> None:
    near = parse_geoquery("near;maxDistance==1000", "Point", [139.58, 36.31], "location")

    async def body(rig: Rig) -> tuple[list[str], list[str]]:
        geo_q = {"georel": "near;maxDistance==1000", "geometry": "Point"}
        assert await rig.subs.insert(
            subscription("urn:s:1", geoQ={**geo_q, "coordinates": [139.58, 36.31]})
        )
        for n, point in enumerate([[139.581, 36.311], [139.59, 36.32], [139.6, 36.3]]):
            await ok(rig.storage, "", located(n, 1.0, point))
        found = await rig.storage.query(
            "", EntityQuery(geo=near, geoproperty=T("location"), limit=10)
        )
        notified = [r.payload["data"][0]["id"] for r in await rig.subs.queued(0, 10)]
        return notified, [d["id"] for d in found.docs]

    notified, queried = engine.run(body)
    assert notified == queried == ["urn:e:0"]


def test_a_write_in_progress_does_not_keep_senders_from_a_subscription(pg_url: str) -> None:
    async def main() -> None:
        engine = pg(pg_url)
        async with engine.rig() as a, engine.rig() as b:
            assert isinstance(a.storage, PostgresStorage)
            assert isinstance(b.subs, PostgresSubscriptionStore)
            assert await a.subs.insert(subscription("urn:s:1"))
            await ok(a.storage, "", counter(1, 0))
            queued, release = asyncio.Event(), asyncio.Event()

            async def hold(_conn: Any, change: Change) -> None:
                if change.entity_id == "urn:e:2":
                    queued.set()  # the subscriptions' hook, added first, has queued it
                    await release.wait()

            a.storage.add_change_hook(hold)
            writing = asyncio.create_task(ok(a.storage, "", counter(2, 0)))
            try:
                await asyncio.wait_for(queued.wait(), 5)
                taken = await asyncio.wait_for(b.subs.claim(10), 5)
            finally:
                release.set()
                await writing
            assert [r.payload["data"][0]["id"] for r in taken] == ["urn:e:1"]
            later = await b.subs.claim(10)
            assert [r.payload["data"][0]["id"] for r in later] == ["urn:e:2"]

    asyncio.run(main())


def test_a_sqlite_dump_loads_into_postgresql_and_dumps_back_the_same(
    tmp_path: Path, pg_url: str
) -> None:
    async def fill(rig: Rig) -> None:
        assert await rig.subs.insert(subscription("urn:s:1", q="level>2"))
        assert await rig.subs.insert(subscription("urn:s:2", tenant="city"))
        assert await rig.subs.insert(subscription("urn:s:3"))
        for k in range(3):
            await ok(rig.storage, "", sensor(k, 3.0))
        await ok(rig.storage, "city", sensor(9, 1.0))
        first = await rig.subs.queued(0, 1)
        await rig.subs.delivered("", first[0].sub_id, [first[0].seq], NOW)
        await rig.subs.failed("", "urn:s:3", NOW)

    lite = Engine("sqlite", tmp_path / "cityos.db", None)
    lite.run(fill)
    conn = sqlite3.connect(lite.path)
    try:
        dumped = list(SubscriptionStore.dump_rows(conn))
    finally:
        conn.close()
    sections = {s for s, _ in dumped}
    assert sections == {"subscription", "outbox"}

    async def load(rig: Rig) -> tuple[list[tuple[str, Any]], list[Queued], list[Queued]]:
        assert isinstance(rig.storage, PostgresStorage)
        async with rig.storage.pool.acquire() as pg_conn, pg_conn.transaction():
            for section in ("subscription", "outbox"):
                rows = [r for s, r in dumped if s == section]
                await PostgresSubscriptionStore.load_rows(pg_conn, section, rows)
        async with rig.storage.pool.acquire() as pg_conn, pg_conn.transaction():
            back = [x async for x in PostgresSubscriptionStore.dump_rows(pg_conn)]
        before = await rig.subs.queued(0, 100)
        for tenant, doc in await rig.subs.load():
            rig.subs.registry.put(Live.build(tenant, doc, CTX))
        await ok(rig.storage, "", sensor(5, 3.0))  # queued after what was loaded
        return back, before, await rig.subs.queued(0, 100)

    back, before, after = pg(pg_url).run(load)
    assert back == dumped
    assert [r.seq for r in before] == [r["seq"] for s, r in dumped if s == "outbox"]
    assert after[: len(before)] == before
    assert hits(after[len(before) :]) == [("", "urn:s:1", "urn:e:5"), ("", "urn:s:3", "urn:e:5")]


def test_a_notification_committed_after_a_later_one_is_still_sent(pg_url: str) -> None:
    # seqs are drawn when a write queues; concurrent writes commit in another order
    got: list[str] = []

    def receive(request: httpx.Request) -> httpx.Response:
        got.append(orjson.loads(request.content)["data"][0]["id"])
        return httpx.Response(204)

    async def wait_for_sent(what: str) -> None:
        for _ in range(500):
            if what in got:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{what} was not sent; sent: {got}")

    def note(note_id: str, entity_id: str) -> dict[str, Any]:
        return {"id": note_id, "type": "Notification", "data": [{"id": entity_id}]}

    async def body(rig: Rig) -> None:
        subs = rig.subs
        assert isinstance(subs, PostgresSubscriptionStore)
        assert await subs.insert(subscription("urn:s:1"))
        sender = Sender(subs, transport=httpx.MockTransport(receive))
        await sender.start()
        pool = rig.storage.pool  # type: ignore[attr-defined]
        try:
            async with pool.acquire() as early:
                tx = early.transaction()
                await tx.start()
                note = {"type": "Notification", "subscriptionId": "urn:s:1"}
                await subs._queue(
                    early, "", "urn:s:1", {**note, "id": "n1", "data": [{"id": "first"}]}
                )
                async with pool.acquire() as late:
                    await subs._queue(
                        late, "", "urn:s:1", {**note, "id": "n2", "data": [{"id": "second"}]}
                    )
                await wait_for_sent("second")  # the lower seq is not committed yet
                await tx.commit()
            await wait_for_sent("first")
        finally:
            await sender.stop()
        assert got == ["second", "first"]

    pg(pg_url).run(body)
