"""The SQLite history: what a change records, index use, aggregation in SQL, pruning."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cityos.broker.temporal import TemporalQuery, parse_duration, to_micros
from cityos.broker.typesel import parse_type_selection
from cityos.storage import sqlite_history
from cityos.storage.base import Mutation
from cityos.storage.sqlite import SqliteStorage
from cityos.storage.sqlite_history import HistorySelection, SqliteHistory, record_change

#: both engines: tests/storage/test_*_engines.py
pytestmark = pytest.mark.sqlite_only("the SQLite history's tables and query plans")

T = "https://x.org/Gauge"
LEVEL = "https://x.org/level"
NAME = "https://x.org/name"


def doc(level: float, observed: str | None = None, name: str = "a") -> dict[str, Any]:
    inst: dict[str, Any] = {"type": "Property", "value": level}
    if observed:
        inst["observedAt"] = observed
    return {
        "id": "urn:x:1",
        "type": [T],
        "createdAt": "2026-01-01T00:00:00Z",
        "modifiedAt": "2026-01-01T00:00:00Z",
        "attrs": {LEVEL: [inst], NAME: [{"type": "Property", "value": name}]},
    }


def run(tmp_path: Path, body: Callable[[SqliteStorage, SqliteHistory], Awaitable[None]]) -> None:
    async def main() -> None:
        store = SqliteStorage(tmp_path / "h.db")
        await store.start()
        history = SqliteHistory(store)
        store.add_change_hook(record_change)
        await history.start()
        try:
            await body(store, history)
        finally:
            await store.close()

    asyncio.run(main())


def put(d: dict[str, Any]) -> Mutation:
    return Mutation(d["id"], lambda _cur: d)


async def rows(store: SqliteStorage) -> list[tuple[Any, ...]]:
    result: list[tuple[Any, ...]] = await store.read(
        lambda c: c.execute(
            "SELECT attr, num, val, t_obs FROM attr_history ORDER BY iid"
        ).fetchall()
    )
    return result


def test_only_new_or_changed_instances_are_recorded_and_deletes_record_nothing(
    tmp_path: Path,
) -> None:
    async def body(store: SqliteStorage, history: SqliteHistory) -> None:
        await store.apply("", [put(doc(1.0, "2026-01-01T00:00:00Z"))])
        await store.apply("", [put(doc(1.0, "2026-01-01T00:00:00Z"))])  # nothing changed
        await store.apply("", [put(doc(2.0, "2026-01-01T01:00:00+01:00"))])  # same instant
        await store.apply("", [Mutation("urn:x:1", lambda _cur: None)])
        got = await rows(store)
        assert [(a, n, v) for a, n, v, _ in got] == [
            (LEVEL, 1.0, None),
            (NAME, None, '"a"'),
            (LEVEL, 2.0, None),
        ]
        assert got[0][3] == got[2][3] == to_micros("2026-01-01T00:00:00Z")

    run(tmp_path, body)


def test_a_failing_hook_rolls_the_change_back(tmp_path: Path) -> None:
    async def body(store: SqliteStorage, history: SqliteHistory) -> None:
        def broken(conn: sqlite3.Connection, change: Any) -> None:
            raise ValueError("history disk full")

        store.add_change_hook(broken)
        (outcome,) = await store.apply("", [put(doc(1.0))])
        assert not outcome.ok
        assert await store.get("", "urn:x:1") is None
        assert await rows(store) == []

    run(tmp_path, body)


def plan(conn: sqlite3.Connection, sql: str, params: list[Any]) -> str:
    return " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))


def test_range_and_aggregation_queries_are_index_scans(tmp_path: Path) -> None:
    async def body(store: SqliteStorage, history: SqliteHistory) -> None:
        def check(conn: sqlite3.Connection) -> list[str]:
            rng = "hid=? AND attr=? AND t_obs >= ? AND t_obs < ?"
            return [
                plan(
                    conn,
                    f"SELECT inst FROM attr_history WHERE {rng} ORDER BY t_obs",
                    [1, "a", 0, 9],
                ),
                plan(
                    conn,
                    f"SELECT ds, (t_obs - ?) / ? AS k, count(*), sum(num), "
                    f"count(DISTINCT coalesce(num, val)) FROM attr_history WHERE {rng} "
                    "GROUP BY ds, k",
                    [0, 5, 1, "a", 0, 9],
                ),
                plan(conn, "SELECT hid FROM history_types WHERE tenant=? AND type=?", ["", T]),
            ]

        plans = await store.read(check)
        assert "USING INDEX attr_history_obs" in plans[0]
        assert "USING COVERING INDEX attr_history_obs" in plans[1]
        assert "USING" in plans[2]
        assert all("SCAN attr_history" not in p for p in plans)

    run(tmp_path, body)


def test_aggregation_over_fixed_and_calendar_periods(tmp_path: Path) -> None:
    async def body(store: SqliteStorage, history: SqliteHistory) -> None:
        for day, v in ((1, 1.0), (2, 3.0), (40, 5.0)):  # Jan 1, Jan 2, Feb 9
            month, dd = (1, day) if day <= 31 else (2, day - 31)
            await store.apply("", [put(doc(v, f"2026-{month:02d}-{dd:02d}T00:00:00Z"))])
        sel = HistorySelection(types=parse_type_selection(T))
        start = to_micros("2026-01-01T00:00:00Z")
        daily = TemporalQuery(
            timerel="between",
            time_at=start,
            end_time_at=to_micros("2026-03-01T00:00:00Z"),
            aggr_methods=("sum",),
            period=parse_duration("P1D"),
        )
        (entity,), _ = await history.query("", sel, frozenset({LEVEL}), daily, 1000)
        _, buckets = entity.aggregates[LEVEL]
        assert [(b.start, b.sum) for b in buckets] == [
            (start, 1.0),
            (start + 86_400_000_000, 3.0),
            (to_micros("2026-02-09T00:00:00Z"), 5.0),
        ]
        monthly = TemporalQuery(
            timerel="between",
            time_at=start,
            end_time_at=to_micros("2026-03-01T00:00:00Z"),
            aggr_methods=("sum",),
            period=parse_duration("P1M"),
        )
        (entity,), _ = await history.query("", sel, frozenset({LEVEL}), monthly, 1000)
        _, buckets = entity.aggregates[LEVEL]
        assert [(b.start, b.end, b.sum, b.count) for b in buckets] == [
            (start, to_micros("2026-02-01T00:00:00Z"), 4.0, 2),
            (to_micros("2026-02-01T00:00:00Z"), to_micros("2026-03-01T00:00:00Z"), 5.0, 1),
        ]

    run(tmp_path, body)


def test_prune_deletes_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_history, "PRUNE_BATCH", 3)

    async def body(store: SqliteStorage, history: SqliteHistory) -> None:
        for i in range(10):
            await store.apply("", [put(doc(float(i), f"2026-01-01T00:{i:02d}:00Z"))])
        assert await history.prune(to_micros("2026-01-01T00:07:00Z")) == 7 + 1  # + the name
        assert [r[1] for r in await rows(store)] == [7.0, 8.0, 9.0]

    run(tmp_path, body)


@pytest.mark.parametrize(
    ("text", "months", "micros"),
    [
        ("PT1H", 0, 3_600_000_000),
        ("P1D", 0, 86_400_000_000),
        ("P1W", 0, 7 * 86_400_000_000),
        ("P1Y2M", 14, 0),
        ("PT0.5S", 0, 500_000),
        ("P1DT12H", 0, 36 * 3_600_000_000),
    ],
)
def test_durations(text: str, months: int, micros: int) -> None:
    d = parse_duration(text)
    assert (d.months, d.micros) == (months, micros)
