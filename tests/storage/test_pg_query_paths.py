"""PostgreSQL queries by the indexes of migration 0009: long text equality stays exact, and an
attribute first written by another worker is found with its pid learned on the way.

Skipped when no PostgreSQL server answers (see tests/conftest.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from cityos.broker.qlang import parse_q
from cityos.broker.typesel import parse_type_selection
from cityos.storage.base import EntityQuery, Mutation
from cityos.storage.pg_query import TEXT_PREFIX
from cityos.storage.postgres import PostgresStorage

X = "https://x.org/"


def thing(eid: str, **attrs: Any) -> dict[str, Any]:
    return {
        "id": eid,
        "type": [X + "Thing"],
        "createdAt": "2026-01-01T00:00:00Z",
        "modifiedAt": "2026-01-01T00:00:00Z",
        "attrs": {X + k: [{"type": "Property", "value": v}] for k, v in attrs.items()},
    }


def put(doc: dict[str, Any]) -> Mutation:
    return Mutation(doc["id"], lambda _cur: doc)


async def found(store: PostgresStorage, q: str) -> list[str]:
    query = EntityQuery(
        types=parse_type_selection("Thing"), q=parse_q(q), expand=lambda t: X + t, limit=100
    )
    return [d["id"] for d in (await store.query("", query)).docs]


def test_text_equality_beyond_the_indexed_prefix_is_exact(pg_url: str) -> None:
    prefix = "あ" * TEXT_PREFIX
    long_a, long_b = prefix + "a", prefix + "b"

    async def body() -> tuple[list[str], ...]:
        store = PostgresStorage(pg_url, pool_size=2)
        await store.start()
        try:
            await store.apply(
                "",
                [
                    put(thing("urn:x:a", note=long_a)),
                    put(thing("urn:x:b", note=long_b)),
                    put(thing("urn:x:p", note=prefix)),
                    put(thing("urn:x:s", note="short")),
                ],
            )
            return (
                await found(store, f'note=="{long_a}"'),
                await found(store, f'note=="{prefix}"'),
                await found(store, 'note=="short"'),
                await found(store, 'note=="shor"'),
                await found(store, f'note!="{long_a}"'),
            )
        finally:
            await store.close()

    a, p, short, shor, not_a = asyncio.run(body())
    assert a == ["urn:x:a"]
    assert p == ["urn:x:p"]
    assert short == ["urn:x:s"]
    assert shor == []
    assert not_a == ["urn:x:b", "urn:x:p", "urn:x:s"]


def test_an_attribute_another_worker_added_later_is_queried(pg_url: str) -> None:
    async def body() -> tuple[list[str], list[str], list[str]]:
        reader, writer = PostgresStorage(pg_url, pool_size=2), PostgresStorage(pg_url, pool_size=2)
        await reader.start()
        await writer.start()
        try:
            before = await found(reader, "height>2")
            # the reader started before the attribute existed: it has no pid for it yet
            await writer.apply(
                "", [put(thing("urn:x:1", height=3)), put(thing("urn:x:2", height=1))]
            )
            after = await found(reader, "height>2")
            again = await found(reader, "height<2")
            return before, after, again
        finally:
            await reader.close()
            await writer.close()

    before, after, again = asyncio.run(body())
    assert before == []
    assert after == ["urn:x:1"]
    assert again == ["urn:x:2"]
