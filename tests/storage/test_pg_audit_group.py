"""The PostgreSQL audit log's group commit: appends asked for at once share transactions,
and the chain stays one, gapless and intact, whatever fails in a group.

Skipped when no PostgreSQL server answers (see tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pytest

from cityos.auth.audit import Entry, Record
from cityos.storage.pg_audit import PgAuditStore
from cityos.storage.postgres import PostgresStorage

T = TypeVar("T")


def entry(n: int, target: str | None = None) -> Entry:
    return Entry(
        actor=f"key:cok_ab12cd{n % 100:02}",
        action="entity.update",
        target=target if target is not None else f"urn:ngsi-ld:WaterLevelObserved:sano-{n}",
        tenant="sano",
        detail={"n": n},
    )


class Counted(PgAuditStore):
    """An audit store that counts its append transactions."""

    transactions = 0

    async def _commit(self, entries: Sequence[Entry]) -> list[Record]:
        self.transactions += 1
        return await super()._commit(entries)


def run(url: str, workers: int, body: Callable[[list[Counted]], Awaitable[T]]) -> T:
    async def main() -> T:
        stores = [PostgresStorage(url) for _ in range(workers)]
        for st in stores:
            await st.start()
        try:
            audits = [Counted(st) for st in stores]
            await audits[0].setup()
            return await body(audits)
        finally:
            for st in stores:
                await st.close()

    return asyncio.run(main())


def assert_one_chain(stored: list[Record], count: int) -> None:
    assert [r.seq for r in stored] == list(range(1, count + 1))
    for before, after in itertools.pairwise(stored):
        assert after.prev == before.hash


def test_appends_asked_for_at_once_share_transactions(pg_url: str) -> None:
    async def body(audits: list[Counted]) -> tuple[list[Record], list[Record], Any, int]:
        (audit,) = audits
        made = await asyncio.gather(*(audit.append(entry(n)) for n in range(300)))
        return list(made), await audit.records(limit=1000), await audit.verify(), audit.transactions

    made, stored, verdict, transactions = run(pg_url, 1, body)
    # each caller got its own record, in the order asked
    assert [r.target for r in made] == [entry(n).target for n in range(300)]
    assert stored == made
    assert_one_chain(stored, 300)
    assert verdict.ok, verdict.message
    assert transactions <= 10  # 300 appends in one turn of the loop: a few groups, not 300


def test_two_workers_group_committing_make_one_chain(pg_url: str) -> None:
    async def body(audits: list[Counted]) -> tuple[list[Record], Any]:
        async def burst(audit: Counted, base: int) -> list[Record]:
            made: list[Record] = []
            for wave in range(5):  # waves, so the two workers' groups interleave
                made += await asyncio.gather(
                    *(audit.append(entry(base + wave * 40 + n)) for n in range(40))
                )
            return made

        await asyncio.gather(*(burst(a, i * 1000) for i, a in enumerate(audits)))
        return await audits[0].records(limit=1000), await audits[1].verify()

    stored, verdict = run(pg_url, 2, body)
    assert_one_chain(stored, 400)
    assert verdict.ok, verdict.message
    assert verdict.records == 400


def test_an_entry_the_database_refuses_costs_only_its_own_record(pg_url: str) -> None:
    # PostgreSQL text cannot hold NUL: that append fails, its group's others must not
    async def body(audits: list[Counted]) -> tuple[list[Any], list[Record], Any]:
        (audit,) = audits
        asked = [entry(n, "bad\x00target" if n == 4 else None) for n in range(10)]
        results = await asyncio.gather(*(audit.append(e) for e in asked), return_exceptions=True)
        return list(results), await audit.records(), await audit.verify()

    results, stored, verdict = run(pg_url, 1, body)
    assert isinstance(results[4], Exception)
    kept = [r for r in results if isinstance(r, Record)]
    assert len(kept) == 9
    assert stored == sorted(kept, key=lambda r: r.seq)
    assert "bad" not in {r.target[:3] for r in stored}
    assert_one_chain(stored, 9)
    assert verdict.ok, verdict.message


def test_an_append_after_a_group_continues_the_chain(pg_url: str) -> None:
    async def body(audits: list[Counted]) -> tuple[list[Record], Record]:
        (audit,) = audits
        first = await asyncio.gather(*(audit.append(entry(n)) for n in range(5)))
        later = await audit.append(entry(99))
        return list(first), later

    first, later = run(pg_url, 1, body)
    assert later.seq == 6
    assert later.prev == first[-1].hash


@pytest.mark.parametrize("count", [1, 2])
def test_head_follows_the_last_record_of_a_group(pg_url: str, count: int) -> None:
    async def body(audits: list[Counted]) -> tuple[list[Record], Any]:
        (audit,) = audits
        made = await asyncio.gather(*(audit.append(entry(n)) for n in range(count)))
        return list(made), await audit.head()

    made, head = run(pg_url, 1, body)
    assert (head.seq, head.hash) == (count, made[-1].hash)
