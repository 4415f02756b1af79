"""The temporal history, asserted identically on SQLite and PostgreSQL, plus the monthly
partitions of PostgreSQL and their retention.

PostgreSQL tests are skipped when no server answers (see tests/conftest.py), and fail instead
when CITYOS_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cityos.broker.errors import BadRequestData
from cityos.broker.temporal import HistoryEntity, TemporalQuery, parse_duration, to_micros
from cityos.broker.typesel import parse_type_selection
from cityos.storage import pg_history, sqlite_history
from cityos.storage import pg_history_partitions as partitions
from cityos.storage.base import Change, Mutation, Storage
from cityos.storage.pg_history import PgHistory
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import SqliteStorage
from cityos.storage.sqlite_history import HistorySelection, SqliteHistory

T = "https://x.org/Gauge"
U = "https://x.org/Device"
LEVEL = "https://x.org/level"
NAME = "https://x.org/name"
ALL = HistorySelection(limit=100)

History = SqliteHistory | PgHistory
Body = Callable[[Storage, History], Awaitable[Any]]


def doc(
    level: Any,
    observed: str | None = None,
    name: str = "a",
    eid: str = "urn:x:1",
    types: tuple[str, ...] = (T,),
    **level_members: Any,
) -> dict[str, Any]:
    inst: dict[str, Any] = {"type": "Property", "value": level, **level_members}
    if observed:
        inst["observedAt"] = observed
    return {
        "id": eid,
        "type": list(types),
        "createdAt": "2026-01-01T00:00:00Z",
        "modifiedAt": "2026-01-01T00:00:00Z",
        "attrs": {LEVEL: [inst], NAME: [{"type": "Property", "value": name}]},
    }


def put(d: dict[str, Any]) -> Mutation:
    return Mutation(d["id"], lambda _cur: d)


def at(day: int, hour: int = 0, month: int = 1) -> str:
    return f"2026-{month:02d}-{day:02d}T{hour:02d}:00:00Z"


@dataclass
class Engine:
    """One engine under test: a storage with its history hooked in."""

    name: str
    make: Callable[[], Storage]

    def run(self, body: Body) -> Any:
        """Start a storage and its history, await body(store, history); return its result."""

        async def main() -> Any:
            store = self.make()
            await store.start()
            history: History
            if isinstance(store, SqliteStorage):
                history = SqliteHistory(store)
                store.add_change_hook(sqlite_history.record_change)
            else:
                assert isinstance(store, PostgresStorage)
                history = PgHistory(store)
                store.add_change_hook(pg_history.record_change)
            await history.start()
            try:
                return await body(store, history)
            finally:
                await store.close()

        return asyncio.run(main())


def sqlite_engine(tmp_path: Path) -> Engine:
    path = tmp_path / "h.db"
    return Engine("sqlite", lambda: SqliteStorage(path))


def pg_engine(url: str) -> Engine:
    return Engine("postgresql", lambda: PostgresStorage(url, pool_size=4))


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """Yield each engine in turn, on a fresh empty database."""
    if request.param == "sqlite":
        return sqlite_engine(tmp_path)
    return pg_engine(request.getfixturevalue("pg_url"))


def plain(entities: list[HistoryEntity]) -> list[Any]:
    """Return query results as plain comparable data (everything a client could see)."""
    return [
        (
            e.id,
            e.types,
            {a: (h.rows, h.truncated) for a, h in e.attrs.items()},
            e.aggregates,
        )
        for e in entities
    ]


async def values(
    history: History,
    tq: TemporalQuery | None = None,
    sel: HistorySelection = ALL,
    attr: str = LEVEL,
    tenant: str = "",
    limit: int = 1000,
) -> list[tuple[str, list[Any]]]:
    """Return (entity id, [value of each instance of attr]) in the order answered."""
    found, _ = await history.query(tenant, sel, frozenset({attr}), tq or TemporalQuery(), limit)
    return [
        (e.id, [r.inst["value"] for r in e.attrs[attr].rows] if attr in e.attrs else [])
        for e in found
    ]


# -- recording --------------------------------------------------------------------------------
def test_only_new_or_changed_instances_are_recorded_and_deletes_record_nothing(
    engine: Engine,
) -> None:
    async def body(store: Storage, history: History) -> None:
        await store.apply("", [put(doc(1.0, at(1)))])
        await store.apply("", [put(doc(1.0, at(1)))])  # nothing changed
        await store.apply("", [put(doc(2.0, "2026-01-01T01:00:00+01:00"))])  # same instant
        await store.apply("", [Mutation("urn:x:1", lambda _cur: None)])
        (entity,), _ = await history.query("", ALL, None, TemporalQuery(), 1000)
        assert entity.id == "urn:x:1"
        assert entity.types == [T]
        assert list(entity.attrs) == [LEVEL, NAME]
        level = entity.attrs[LEVEL].rows
        assert [r.inst["value"] for r in level] == [1.0, 2.0]
        assert [r.observed for r in level] == [to_micros(at(1))] * 2
        assert level[0].iid < level[1].iid
        assert [r.inst["value"] for r in entity.attrs[NAME].rows] == ["a"]
        # without observedAt an instance is placed at the time of the change
        assert entity.attrs[NAME].rows[0].t == to_micros("2026-01-01T00:00:00Z")
        assert await history.tenant_exists("")
        assert not await history.tenant_exists("other")

    engine.run(body)


def test_a_failing_hook_rolls_the_change_back(engine: Engine) -> None:
    async def body(store: Storage, history: History) -> None:
        if isinstance(store, SqliteStorage):

            def broken(conn: Any, change: Change) -> None:
                raise ValueError("history disk full")

            store.add_change_hook(broken)
        else:
            assert isinstance(store, PostgresStorage)

            async def broken_pg(conn: Any, change: Change) -> None:
                raise ValueError("history disk full")

            store.add_change_hook(broken_pg)
        (outcome,) = await store.apply("", [put(doc(1.0, at(1)))])
        assert not outcome.ok
        assert await store.get("", "urn:x:1") is None
        assert await history.query("", ALL, None, TemporalQuery(), 1000) == ([], None)
        assert not await history.tenant_exists("")

    engine.run(body)


# -- selection ----------------------------------------------------------------------------------
SELECTIONS = [
    (HistorySelection(limit=100), [1, 2, 3, 4]),
    (HistorySelection(ids=("urn:x:3", "urn:x:1", "urn:x:9")), [1, 3]),
    (HistorySelection(id_pattern="urn:x:[24]"), [2, 4]),
    (HistorySelection(types=parse_type_selection(U)), [3, 4]),
    (HistorySelection(types=parse_type_selection(f"{T};{U}")), [3]),
    (HistorySelection(types=parse_type_selection(f"{T}|{U}")), [1, 2, 3, 4]),
    (HistorySelection(attrs=frozenset({"https://x.org/extra"})), [2]),
    (HistorySelection(only=frozenset({"urn:x:4", "urn:x:2"})), [2, 4]),
    (HistorySelection(only=frozenset()), []),
    (HistorySelection(limit=2, offset=1), [2, 3]),
]


@pytest.mark.parametrize(("sel", "expected"), SELECTIONS)
def test_selection(engine: Engine, sel: HistorySelection, expected: list[int]) -> None:
    async def body(store: Storage, history: History) -> list[int]:
        await store.apply("", [put(doc(1, at(1), eid="urn:x:1"))])
        two = doc(2, at(2), eid="urn:x:2")
        two["attrs"]["https://x.org/extra"] = [{"type": "Property", "value": True}]
        await store.apply("", [put(two)])
        await store.apply("", [put(doc(3, at(3), eid="urn:x:3", types=(T, U)))])
        await store.apply("", [put(doc(4, at(4), eid="urn:x:4", types=(U,)))])
        await store.apply("t2", [put(doc(5, at(5), eid="urn:x:5"))])  # another tenant
        found, count = await history.query("", sel, None, TemporalQuery(), 1000)
        assert count is None
        return [int(e.id.rsplit(":", 1)[1]) for e in found]

    assert engine.run(body) == expected


def test_count_and_types_in_written_order(engine: Engine) -> None:
    async def body(store: Storage, history: History) -> None:
        await store.apply("", [put(doc(1, at(1), eid="urn:x:1", types=(U, T)))])
        await store.apply("", [put(doc(2, at(2), eid="urn:x:1", types=(U, T, "https://x.org/A")))])
        await store.apply("", [put(doc(3, at(3), eid="urn:x:2"))])
        found, count = await history.query(
            "", HistorySelection(limit=1, count=True), None, TemporalQuery(), 1000
        )
        assert count == 2
        assert [(e.id, e.types) for e in found] == [("urn:x:1", [U, T, "https://x.org/A"])]

    engine.run(body)


# -- instances ----------------------------------------------------------------------------------
def test_timerel_last_n_and_paging(engine: Engine) -> None:
    async def body(store: Storage, history: History) -> None:
        for h, v in enumerate([1, 2, 3, 4, 5]):
            await store.apply("", [put(doc(v, at(1, h)))])
        await store.apply("", [put(doc(6, at(1, 4), datasetId="urn:ds:b"))])  # same instant as 5
        between = TemporalQuery("between", to_micros(at(1, 1)), to_micros(at(1, 3)))
        assert await values(history, between) == [("urn:x:1", [2, 3])]
        after = TemporalQuery("after", to_micros(at(1, 3)))
        assert await values(history, after) == [("urn:x:1", [5, 6])]
        before = TemporalQuery("before", to_micros(at(1, 2)))
        assert await values(history, before) == [("urn:x:1", [1, 2])]
        assert await values(history, TemporalQuery(last_n=2)) == [("urn:x:1", [6, 5])]
        # a page of 4 would split the two instances at 04:00: it stops before them
        (entity,), _ = await history.query("", ALL, frozenset({LEVEL}), TemporalQuery(), 4)
        assert entity.attrs[LEVEL].truncated
        assert [r.inst["value"] for r in entity.attrs[LEVEL].rows] == [1, 2, 3, 4]
        (entity,), _ = await history.query("", ALL, frozenset({LEVEL}), TemporalQuery(), 6)
        assert not entity.attrs[LEVEL].truncated

    engine.run(body)


def test_timeproperty_created_and_modified_at(engine: Engine) -> None:
    async def body(store: Storage, history: History) -> None:
        assert await history.add(
            "", "urn:x:7", [T], {LEVEL: [{"type": "Property", "value": 1}]}, 100, must_exist=False
        )
        assert not await history.add(
            "", "urn:x:7", [], {LEVEL: [{"type": "Property", "value": 2}]}, 200, must_exist=True
        )
        (entity,), _ = await history.query(
            "", ALL, None, TemporalQuery("after", 150, timeproperty="createdAt"), 1000
        )
        (row,) = entity.attrs[LEVEL].rows
        assert (row.inst["value"], row.t, row.created, row.modified) == (2, 200, 200, 200)
        iid = entity.attrs[LEVEL].rows[0].iid
        done = await history.update_instance(
            "", "urn:x:7", LEVEL, iid, lambda i: {**i, "value": 9}, 300
        )
        assert done
        (entity,), _ = await history.query(
            "", ALL, None, TemporalQuery("after", 250, timeproperty="modifiedAt"), 1000
        )
        (row,) = entity.attrs[LEVEL].rows
        assert (row.iid, row.inst["value"], row.created, row.modified) == (iid, 9, 200, 300)

    engine.run(body)


def test_temporal_writes_and_deletes(engine: Engine) -> None:
    async def body(store: Storage, history: History) -> None:
        assert await history.add("", "urn:x:1", [T], {}, 1, must_exist=True) is None
        assert await history.tenant_exists("") is False
        a = {"type": "Property", "value": 1, "observedAt": at(1)}
        b = {**a, "value": 2, "datasetId": "urn:ds:b"}
        assert await history.add("", "urn:x:1", [T], {LEVEL: [a, b, a]}, 5, must_exist=False)
        assert await history.delete_attribute("", "urn:x:1", LEVEL, "urn:ds:b", False) == 1
        assert await history.delete_attribute("", "urn:x:1", LEVEL, "urn:ds:b", False) == 0
        assert await history.delete_attribute("", "urn:x:9", LEVEL, None, True) is None
        (entity,), _ = await history.query("", ALL, None, TemporalQuery(), 1000)
        first, second = entity.attrs[LEVEL].rows
        assert await history.delete_instance("", "urn:x:1", LEVEL, first.iid)
        assert not await history.delete_instance("", "urn:x:1", LEVEL, first.iid)
        assert not await history.delete_instance("", "urn:x:1", NAME, second.iid)
        assert await history.delete_instance("", "urn:x:9", LEVEL, second.iid) is None
        assert await history.update_instance("", "urn:x:9", LEVEL, 1, dict, 9) is None
        assert not await history.update_instance("", "urn:x:1", LEVEL, first.iid, dict, 9)
        assert await values(history) == [("urn:x:1", [1])]
        assert await history.delete_attribute("", "urn:x:1", LEVEL, None, True) == 1
        assert await history.delete_entity("", "urn:x:1")
        assert not await history.delete_entity("", "urn:x:1")
        assert await history.query("", ALL, None, TemporalQuery(), 1000) == ([], None)
        # a new instance never reuses a deleted instance's id
        await history.add("", "urn:x:1", [T], {LEVEL: [a]}, 5, must_exist=False)
        (entity,), _ = await history.query("", ALL, None, TemporalQuery(), 1000)
        assert entity.attrs[LEVEL].rows[0].iid > second.iid

    engine.run(body)


def test_moving_an_instance_to_another_month(engine: Engine) -> None:
    async def body(store: Storage, history: History) -> None:
        await store.apply("", [put(doc(1, at(31)))])
        ((_, [old]),) = [
            (e.id, e.attrs[LEVEL].rows)
            for e in (await history.query("", ALL, None, TemporalQuery(), 1000))[0]
        ]
        later = "2027-03-05T00:00:00Z"
        assert await history.update_instance(
            "", "urn:x:1", LEVEL, old.iid, lambda i: {**i, "observedAt": later}, 7
        )
        (entity,), _ = await history.query("", ALL, None, TemporalQuery(), 1000)
        (row,) = entity.attrs[LEVEL].rows
        assert (row.iid, row.observed, row.inst["observedAt"]) == (old.iid, to_micros(later), later)

    engine.run(body)


# -- aggregation --------------------------------------------------------------------------------
def test_aggregation_over_fixed_and_calendar_periods(engine: Engine) -> None:
    async def body(store: Storage, history: History) -> None:
        for day, v in ((1, 1.0), (2, 3.0), (40, 5.0)):  # Jan 1, Jan 2, Feb 9
            month, dd = (1, day) if day <= 31 else (2, day - 31)
            await store.apply("", [put(doc(v, at(dd, month=month)))])
        sel = HistorySelection(types=parse_type_selection(T))
        start = to_micros(at(1))
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

    engine.run(body)


def test_aggregates_of_datasets_and_non_numeric_values(engine: Engine) -> None:
    async def body(store: Storage, history: History) -> None:
        for h, v in enumerate([2, 4, 4, "high", True, "high"]):
            await store.apply("", [put(doc(v, at(1, h)))])
        await store.apply("", [put(doc(10, at(1, 1), datasetId="urn:ds:b"))])
        whole = TemporalQuery(aggr_methods=("totalCount",))
        (entity,), _ = await history.query("", ALL, frozenset({LEVEL, NAME}), whole, 1000)
        atype, (default, other) = entity.aggregates[LEVEL]
        assert atype == "Property"
        assert (default.dataset, default.count, default.distinct) == (None, 6, 4)
        assert (default.sum, default.numbers, default.min, default.max) == (10.0, 3, 2.0, 4.0)
        assert default.sumsq == 36.0
        assert (default.start, default.end) == (to_micros(at(1)), to_micros(at(1, 5)))
        assert (other.dataset, other.count, other.sum) == ("urn:ds:b", 1, 10.0)
        _, (name,) = entity.aggregates[NAME]
        assert (name.count, name.distinct, name.sum, name.numbers) == (1, 1, None, 0)
        hourly = TemporalQuery(
            "after", to_micros(at(1)), aggr_methods=("max",), period=parse_duration("PT2H")
        )
        (entity,), _ = await history.query("", ALL, frozenset({LEVEL}), hourly, 1000)
        _, buckets = entity.aggregates[LEVEL]
        assert [(b.dataset, b.start, b.count, b.max) for b in buckets] == [
            (None, to_micros(at(1)), 1, 4.0),  # after is strict: 00:00 itself is left out
            (None, to_micros(at(1, 2)), 2, 4.0),
            (None, to_micros(at(1, 4)), 2, None),
            ("urn:ds:b", to_micros(at(1)), 1, 10.0),
        ]
        nothing = TemporalQuery("before", 5, aggr_methods=("sum",))
        (entity,), _ = await history.query("", ALL, frozenset({LEVEL}), nothing, 1000)
        assert entity.aggregates == {}

    engine.run(body)


# -- retention ----------------------------------------------------------------------------------
def test_prune_deletes_what_was_observed_before_the_cut(engine: Engine) -> None:
    async def body(store: Storage, history: History) -> None:
        for i in range(10):
            await store.apply("", [put(doc(float(i), f"2026-01-01T00:{i:02d}:00Z"))])
        assert await history.prune(to_micros("2026-01-01T00:07:00Z")) == 7 + 1  # + the name
        assert await values(history) == [("urn:x:1", [7.0, 8.0, 9.0])]
        assert await history.prune(to_micros("2026-01-01T00:07:00Z")) == 0

    engine.run(body)


async def partition_names(store: PostgresStorage) -> list[str]:
    rows = await store.pool.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'attr_history'::regclass ORDER BY 1"
    )
    return [r[0] for r in rows]


async def scenario(store: Storage, history: History) -> list[Any]:
    """Write three months of history on two entities, prune mid-February; return answers."""
    for month, day in ((1, 5), (1, 20), (2, 3), (2, 14), (2, 15), (3, 1), (3, 30)):
        for eid in ("urn:x:1", "urn:x:2"):
            level = float(month * 100 + day)
            await store.apply("", [put(doc(level, at(day, month=month), eid=eid, name=eid))])
    tqs = [
        TemporalQuery(),
        TemporalQuery(last_n=3),
        TemporalQuery("between", to_micros(at(1, month=2)), to_micros(at(1, month=4))),
        TemporalQuery(aggr_methods=("sum",), period=parse_duration("P1M")),
        TemporalQuery(aggr_methods=("sum",), period=parse_duration("P7D")),
    ]
    out: list[Any] = []
    for stage in ("before", "after"):
        if stage == "after":
            out.append(await history.prune(to_micros(at(14, 12, month=2))))
        for tq in tqs:
            found, count = await history.query(
                "", HistorySelection(limit=10, count=True), None, tq, 1000
            )
            out.append((count, plain(found)))
    return out


def test_retention_drops_whole_partitions_and_answers_as_sqlite(
    tmp_path: Path, pg_url: str
) -> None:
    expected = sqlite_engine(tmp_path).run(scenario)
    assert expected[5] == 2 * 4 + 2  # Jan 5, Jan 20, Feb 3, Feb 14 on two entities + names

    async def body(store: Storage, history: History) -> Any:
        assert isinstance(store, PostgresStorage)
        got = await scenario(store, history)
        names = await partition_names(store)
        return got, names

    got, names = pg_engine(pg_url).run(body)
    assert got == expected
    # January went as a whole table; February (straddling the cut) lost rows, not its table
    assert "attr_history_y2026m01" not in names
    assert {"attr_history_y2026m02", "attr_history_y2026m03"} <= set(names)


def test_partitions_are_made_on_demand_and_ahead(pg_url: str) -> None:
    async def body(store: Storage, history: History) -> None:
        assert isinstance(store, PostgresStorage)
        ahead = await partition_names(store)
        assert len(ahead) == 2  # this month and the next, made at start
        # several workers' first writes into one new month: one creates, all succeed
        others = [PostgresStorage(pg_url, pool_size=2) for _ in range(3)]
        for other in others:
            await other.start()
            other.add_change_hook(pg_history.record_change)
        try:
            outcomes = await asyncio.gather(
                *(
                    st.apply("", [put(doc(n, "1999-12-31T23:00:00Z", eid=f"urn:x:{n}"))])
                    for n, st in enumerate([store, *others])
                )
            )
        finally:
            for other in others:
                await other.close()
        assert all(o.ok for (o,) in outcomes)
        assert "attr_history_y1999m12" in await partition_names(store)
        assert len(await values(history, TemporalQuery("before", to_micros(at(1))))) == 4
        # a month dropped by retention comes back when an old observation is written again
        await history.prune(to_micros(at(1)))
        assert "attr_history_y1999m12" not in await partition_names(store)
        (outcome,) = await store.apply("", [put(doc(7, "1999-12-31T23:30:00Z", eid="urn:x:9"))])
        assert outcome.ok
        assert await values(history, sel=HistorySelection(ids=("urn:x:9",))) == [("urn:x:9", [7])]

    pg_engine(pg_url).run(body)


@pytest.mark.parametrize(
    ("instant", "name", "end"),
    [
        ("2026-01-31T23:59:59.999999Z", "attr_history_y2026m01", "2026-02-01T00:00:00Z"),
        ("2028-02-29T12:00:00Z", "attr_history_y2028m02", "2028-03-01T00:00:00Z"),
        ("2026-12-01T00:00:00Z", "attr_history_y2026m12", "2027-01-01T00:00:00Z"),
        ("1969-12-31T23:00:00Z", "attr_history_y1969m12", "1970-01-01T00:00:00Z"),
    ],
)
def test_an_instant_falls_in_its_calendar_month(instant: str, name: str, end: str) -> None:
    month = partitions.Month.of(to_micros(instant))
    assert month.name == name
    assert month.start <= to_micros(instant) < month.end == to_micros(end)
    assert partitions.Month.from_name(name) == month


def test_a_pattern_postgresql_cannot_run_is_refused(pg_url: str) -> None:
    async def body(store: Storage, history: History) -> None:
        await store.apply("", [put(doc(1, at(1)))])
        with pytest.raises(BadRequestData, match="regular expression"):
            await history.query(
                "", HistorySelection(id_pattern="(?P<n>x)"), None, TemporalQuery(), 10
            )

    pg_engine(pg_url).run(body)
