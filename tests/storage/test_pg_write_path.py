"""The PostgreSQL write path's short cuts: an update stores the document and its changed
value rows in one statement, and records history in one statement when it can, falling back
to the long way (new entity, a month without a partition) with the same result.

Skipped when no PostgreSQL server answers (see tests/conftest.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from cityos.broker.qlang import parse_q
from cityos.broker.typesel import parse_type_selection
from cityos.storage import pg_history
from cityos.storage.base import EntityQuery, Mutation
from cityos.storage.postgres import PostgresStorage

T = TypeVar("T")
GAUGE = "https://x.org/Gauge"
LEVEL = "https://x.org/level"
NAME = "https://x.org/name"


def gauge(level: float, observed: str, name: str = "a", eid: str = "urn:x:g1") -> dict[str, Any]:
    return {
        "id": eid,
        "type": [GAUGE],
        "createdAt": "2026-01-01T00:00:00Z",
        "modifiedAt": observed,
        "attrs": {
            LEVEL: [{"type": "Property", "value": level, "observedAt": observed}],
            NAME: [{"type": "Property", "value": name}],
        },
    }


def put(doc: dict[str, Any]) -> Mutation:
    return Mutation(doc["id"], lambda _cur: doc)


def run(url: str, body: Callable[[PostgresStorage, asyncpg.Pool], Awaitable[T]]) -> T:
    async def main() -> T:
        store = PostgresStorage(url, pool_size=3)
        await store.start()
        store.add_change_hook(pg_history.record_change)
        try:
            return await body(store, store.pool)
        finally:
            await store.close()

    return asyncio.run(main())


async def levels(pool: asyncpg.Pool) -> list[tuple[float, str]]:
    """Return the recorded levels with their partition, in instanceId order."""
    rows = await pool.fetch(
        "SELECT a.num, a.tableoid::regclass::text FROM attr_history a "
        "WHERE a.attr=$1 ORDER BY a.iid",
        LEVEL,
    )
    return [(r[0], r[1]) for r in rows]


def ids(found: list[dict[str, Any]]) -> list[str]:
    return [d["id"] for d in found]


def q(store: PostgresStorage, text: str) -> Awaitable[Any]:
    query = EntityQuery(
        types=parse_type_selection("Gauge"),
        q=parse_q(text),
        expand=lambda t: f"https://x.org/{t}",
    )
    return store.query("", query)


def test_updates_are_recorded_in_order_in_their_months_partitions(pg_url: str) -> None:
    async def body(store: PostgresStorage, pool: asyncpg.Pool) -> list[tuple[float, str]]:
        await store.apply("", [put(gauge(1.0, "2026-01-05T00:00:00Z"))])
        for n, when in enumerate(
            ["2026-01-06T00:00:00Z", "2019-03-01T00:00:00Z", "2026-01-07T00:00:00Z"], start=2
        ):
            [outcome] = await store.apply("", [put(gauge(float(n), when))])
            assert outcome.ok
        return await levels(pool)

    recorded = run(pg_url, body)
    # 2019-03 had no partition: the update created it rather than failing or losing the row
    assert recorded == [
        (1.0, "attr_history_y2026m01"),
        (2.0, "attr_history_y2026m01"),
        (3.0, "attr_history_y2019m03"),
        (4.0, "attr_history_y2026m01"),
    ]


def test_an_update_after_its_partition_was_dropped_recreates_it(pg_url: str) -> None:
    async def body(store: PostgresStorage, pool: asyncpg.Pool) -> list[tuple[float, str]]:
        await store.apply("", [put(gauge(1.0, "2026-01-05T00:00:00Z"))])
        await store.apply("", [put(gauge(2.0, "2026-02-05T00:00:00Z"))])
        # another worker's retention drops February
        await pool.execute("DROP TABLE attr_history_y2026m02")
        [outcome] = await store.apply("", [put(gauge(3.0, "2026-02-06T00:00:00Z"))])
        assert outcome.ok
        return await levels(pool)

    assert run(pg_url, body) == [(1.0, "attr_history_y2026m01"), (3.0, "attr_history_y2026m02")]


def test_an_update_rewrites_only_the_changed_values_and_queries_see_it(pg_url: str) -> None:
    async def body(store: PostgresStorage, pool: asyncpg.Pool) -> tuple[Any, ...]:
        await store.apply(
            "",
            [
                put(gauge(1.0, "2026-01-05T00:00:00Z", eid="urn:x:g1")),
                put(gauge(2.0, "2026-01-05T00:00:00Z", name="b", eid="urn:x:g2")),
            ],
        )
        before = await pool.fetch("SELECT rid, pid, t, n, s FROM attr_index ORDER BY 1, 2, 3")
        await store.apply("", [put(gauge(5.0, "2026-01-06T00:00:00Z", eid="urn:x:g1"))])
        after = await pool.fetch("SELECT rid, pid, t, n, s FROM attr_index ORDER BY 1, 2, 3")
        high = await q(store, "level>4")
        low = await q(store, "level<1.5")
        named = await q(store, 'name=="a"')
        doc = await store.get("", "urn:x:g1")
        return before, after, high.docs, low.docs, named.docs, doc

    before, after, high, low, named, doc = run(pg_url, body)
    assert ids(high) == ["urn:x:g1"]
    assert low == []
    assert ids(named) == ["urn:x:g1"]
    assert doc is not None
    assert doc["attrs"][LEVEL][0]["value"] == 5.0
    assert doc["modifiedAt"] == "2026-01-06T00:00:00Z"
    # the same rows but for g1's level (and its observedAt): nothing duplicated, none lost
    assert len(after) == len(before)
    changed = {tuple(r) for r in after} ^ {tuple(r) for r in before}
    assert changed
    assert all(r[3] in (1.0, 5.0) or r[4] is not None for r in changed)
