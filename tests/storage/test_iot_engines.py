"""The IoT registry and live dataset stores, asserted identically on SQLite and PostgreSQL.

PostgreSQL tests are skipped when no server answers (tests/conftest.py), and fail instead
when CITYOS_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import pg_schema_url

from cityos.storage.base import Storage
from cityos.storage.pg_iot import PgIotStore
from cityos.storage.pg_live import PgLiveStore
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import DumpRow, SqliteStorage
from cityos.storage.sqlite_iot import IotStore
from cityos.storage.sqlite_live import LiveDefinition, LiveStore

T = "openiot"


@dataclass
class Stores:
    storage: Storage
    iot: Any  # IotStore or PgIotStore: the same calls
    live: Any  # LiveStore or PgLiveStore


@dataclass
class Engine:
    """One engine under test: runs async bodies against fresh stores on one database."""

    name: str
    make: Callable[[], Storage]

    async def open(self) -> Stores:
        """Start a storage and its IoT and live stores; the caller closes stores.storage."""
        st = self.make()
        await st.start()
        if isinstance(st, SqliteStorage):
            stores = Stores(st, IotStore(st), LiveStore(st))
        else:
            assert isinstance(st, PostgresStorage)
            stores = Stores(st, PgIotStore(st), PgLiveStore(st))
        await stores.iot.setup()
        await stores.live.setup()
        return stores

    def run(self, body: Callable[[Stores], Awaitable[Any]]) -> Any:
        """Await body(stores) on started stores, then close them; return what body returned."""

        async def main() -> Any:
            stores = await self.open()
            try:
                return await body(stores)
            finally:
                await stores.storage.close()

        return asyncio.run(main())


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """Yield each engine in turn, on a fresh empty database."""
    if request.param == "sqlite":
        path = tmp_path / "cityos.db"
        return Engine("sqlite", lambda: SqliteStorage(path))
    url = request.getfixturevalue("pg_url")
    return Engine("postgresql", lambda: PostgresStorage(url, pool_size=4))


def group(apikey: str, resource: str = "/iot/json", **extra: Any) -> tuple[str, str, Any]:
    return resource, apikey, {"apikey": apikey, "resource": resource, **extra}


def device(device_id: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    return device_id, {"device_id": device_id, **extra}


# -- config groups -------------------------------------------------------------------------------
def test_groups_are_listed_found_updated_and_deleted(engine: Engine) -> None:
    async def body(s: Stores) -> None:
        # members come back in the order written, non-ASCII intact
        g1 = group("k1", entity_type="Thing", 名前="温度計", attributes=[{"object_id": "t"}])
        assert await s.iot.insert_groups(T, "/", [g1, group("k2", "/iot/d")]) is None
        assert await s.iot.insert_groups("other", "/sano", [group("k3")]) is None
        listed = await s.iot.list_groups(T)
        assert listed == [("/", g1[2]), ("/", group("k2", "/iot/d")[2])]
        assert list(listed[0][1]) == list(g1[2])
        assert await s.iot.list_groups("other") == [("/sano", group("k3")[2])]
        assert await s.iot.list_groups("nobody") == []
        assert await s.iot.groups_by_apikey("k3") == [
            ("other", "/sano", "/iot/json", group("k3")[2])
        ]
        assert await s.iot.groups_by_apikey("nope") == []

        changed = {**g1[2], "entity_type": "Sensor"}
        assert await s.iot.update_group(T, "/iot/json", "k1", changed)
        assert (await s.iot.list_groups(T))[0] == ("/", changed)
        # a group is addressed by tenant, resource and apikey
        assert not await s.iot.update_group("other", "/iot/json", "k1", changed)
        assert not await s.iot.update_group(T, "/iot/d", "k1", changed)
        assert not await s.iot.delete_group("other", "/iot/json", "k1")
        assert await s.iot.delete_group(T, "/iot/json", "k1")
        assert not await s.iot.delete_group(T, "/iot/json", "k1")
        assert [d["apikey"] for _, d in await s.iot.list_groups(T)] == ["k2"]

    engine.run(body)


def test_a_taken_resource_and_apikey_refuses_the_whole_batch(engine: Engine) -> None:
    async def body(s: Stores) -> None:
        assert await s.iot.insert_groups(T, "/", [group("k1"), group("k2")]) is None
        # taken in any tenant: the apikey alone must lead to one group; the first taken is named
        batch = [group("k3"), group("k2"), group("k1")]
        assert await s.iot.insert_groups("other", "/", batch) == ("/iot/json", "k2")
        assert await s.iot.list_groups("other") == []
        assert await s.iot.groups_by_apikey("k3") == []
        # the same apikey on another resource is another group, found after the first
        assert await s.iot.insert_groups("other", "/", [group("k1", "/iot/d")]) is None
        found = await s.iot.groups_by_apikey("k1")
        assert [(t, r) for t, _, r, _ in found] == [(T, "/iot/json"), ("other", "/iot/d")]

    engine.run(body)


# -- devices -------------------------------------------------------------------------------------
def test_devices_are_listed_got_updated_and_deleted(engine: Engine) -> None:
    async def body(s: Stores) -> None:
        batch = [device("b", entity_name="urn:x:b"), device("a"), device("センサー")]
        assert await s.iot.insert_devices(T, "/river", batch) is None
        assert await s.iot.list_devices(T) == [("/river", d) for _, d in batch]
        assert await s.iot.get_device(T, "センサー") == ("/river", batch[2][1])
        assert await s.iot.get_device(T, "c") is None
        assert await s.iot.get_device("other", "a") is None
        assert await s.iot.list_devices("other") == []

        changed = {"device_id": "a", "entity_type": "Sensor"}
        assert await s.iot.update_device(T, "a", changed)
        assert await s.iot.get_device(T, "a") == ("/river", changed)
        assert not await s.iot.update_device("other", "a", changed)
        assert not await s.iot.delete_device("other", "a")
        assert await s.iot.delete_device(T, "a")
        assert not await s.iot.delete_device(T, "a")
        assert [d["device_id"] for _, d in await s.iot.list_devices(T)] == ["b", "センサー"]

    engine.run(body)


def test_a_taken_device_id_refuses_the_whole_batch(engine: Engine) -> None:
    async def body(s: Stores) -> None:
        assert await s.iot.insert_devices(T, "/", [device("d1"), device("d2")]) is None
        # device ids are per tenant, whatever the service path
        taken = await s.iot.insert_devices(T, "/other", [device("d3"), device("d2"), device("d1")])
        assert taken == "d2"
        assert await s.iot.get_device(T, "d3") is None
        assert await s.iot.insert_devices("other", "/", [device("d1")]) is None
        assert len(await s.iot.list_devices(T)) == 2

    engine.run(body)


def test_device_health_keeps_the_latest_sighting_and_the_silent_flag(engine: Engine) -> None:
    async def body(s: Stores) -> None:
        await s.iot.insert_devices(T, "/", [device("d1"), device("d2")])
        await s.iot.insert_devices("other", "/", [device("d1")])
        assert await s.iot.status(T, "d1") == (None, False)
        await s.iot.record_seen([(T, "d1", 100.5), ("other", "d1", 50.0)])
        await s.iot.record_seen([(T, "d1", 90.0)])  # an older sighting arriving late
        assert await s.iot.status(T, "d1") == (100.5, False)
        await s.iot.set_silent(T, "d1", True, 200.0)
        assert await s.iot.status(T, "d1") == (100.5, True)  # silence keeps the last sighting
        # a device never seen is silent since the given time
        await s.iot.set_silent(T, "d2", True, 300.0)
        assert await s.iot.status(T, "d2") == (300.0, True)
        await s.iot.set_silent(T, "d2", False, 400.0)
        assert await s.iot.status(T, "d2") == (300.0, False)
        every = await s.iot.all_devices()
        assert [(t, d["device_id"], seen, silent) for t, d, seen, silent in every] == [
            (T, "d1", 100.5, True),
            (T, "d2", 300.0, False),
            ("other", "d1", 50.0, False),
        ]
        # a deleted device forgets its health; recreated, it starts unseen
        assert await s.iot.delete_device(T, "d1")
        await s.iot.insert_devices(T, "/", [device("d1")])
        assert await s.iot.status(T, "d1") == (None, False)
        assert await s.iot.status("other", "d1") == (50.0, False)

    engine.run(body)


# -- live datasets -------------------------------------------------------------------------------
def test_live_definitions_are_saved_replaced_listed_by_name_and_deleted(engine: Engine) -> None:
    async def body(s: Stores) -> None:
        assert await s.live.all() == []
        await s.live.save(LiveDefinition("water", "", "type=WaterLevelObserved"))
        await s.live.save(LiveDefinition("air", "sano", "type=AirQualityObserved&q=no2>40"))
        await s.live.save(LiveDefinition("Zoo", "", "type=Animal"))
        await s.live.save(LiveDefinition("water", "sano", "type=WaterLevelObserved&q=level>2"))
        # by name, in code point order (upper case first), whatever the database's locale
        assert await s.live.all() == [
            LiveDefinition("Zoo", "", "type=Animal"),
            LiveDefinition("air", "sano", "type=AirQualityObserved&q=no2>40"),
            LiveDefinition("water", "sano", "type=WaterLevelObserved&q=level>2"),
        ]
        await s.live.delete("air")
        await s.live.delete("never")
        assert [d.name for d in await s.live.all()] == ["Zoo", "water"]

    engine.run(body)


def test_stores_keep_their_content_across_restarts(engine: Engine) -> None:
    async def write(s: Stores) -> None:
        await s.iot.insert_groups(T, "/", [group("k1")])
        await s.iot.insert_devices(T, "/", [device("d1")])
        await s.iot.record_seen([(T, "d1", 12.0)])
        await s.live.save(LiveDefinition("water", "", "type=WaterLevelObserved"))

    async def read(s: Stores) -> tuple[Any, ...]:
        return (
            await s.iot.list_groups(T),
            await s.iot.list_devices(T),
            await s.iot.status(T, "d1"),
            await s.live.all(),
        )

    engine.run(write)
    groups, devices, status, live = engine.run(read)
    assert groups == [("/", group("k1")[2])]
    assert devices == [("/", device("d1")[1])]
    assert status == (12.0, False)
    assert live == [LiveDefinition("water", "", "type=WaterLevelObserved")]


# -- several workers on PostgreSQL ---------------------------------------------------------------
def test_two_workers_creating_the_same_groups_and_devices_create_each_once(pg_url: str) -> None:
    workers = Engine("postgresql", lambda: PostgresStorage(pg_url, pool_size=4))

    async def body() -> None:
        a, b = await workers.open(), await workers.open()
        try:
            for n in range(15):
                results = await asyncio.gather(
                    a.iot.insert_devices(T, "/a", [device(f"d{n}", by="a")]),
                    b.iot.insert_devices(T, "/b", [device(f"d{n}", by="b")]),
                    a.iot.insert_groups(T, "/a", [group(f"k{n}", by="a")]),
                    b.iot.insert_groups("other", "/b", [group(f"k{n}", by="b")]),
                )
                assert set(results[:2]) == {None, f"d{n}"}
                assert set(results[2:]) == {None, ("/iot/json", f"k{n}")}
            assert len(await a.iot.list_devices(T)) == 15
            groups = (await a.iot.list_groups(T)) + (await b.iot.list_groups("other"))
            assert sorted(d["apikey"] for _, d in groups) == sorted(f"k{n}" for n in range(15))
        finally:
            await a.storage.close()
            await b.storage.close()

    asyncio.run(body())


async def _wait_for_a_lock_wait(conn: asyncpg.Connection) -> None:
    for _ in range(500):
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname=current_database() AND wait_event_type='Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    pytest.fail("the insert never waited for the other worker's transaction")


def test_a_create_racing_an_uncommitted_create_reports_the_key_taken(pg_url: str) -> None:
    workers = Engine("postgresql", lambda: PostgresStorage(pg_url, pool_size=4))

    async def body() -> None:
        s = await workers.open()
        other = await asyncpg.connect(pg_url)
        try:
            for table, cols, insert, taken in (
                (
                    "iot_devices(tenant, service_path, device_id, doc)",
                    (T, "/", "d1", '{"device_id": "d1"}'),
                    lambda: s.iot.insert_devices(T, "/", [device("d0"), device("d1")]),
                    "d1",
                ),
                (
                    "iot_groups(tenant, service_path, resource, apikey, doc)",
                    ("other", "/", "/iot/json", "k1", "{}"),
                    lambda: s.iot.insert_groups(T, "/", [group("k0"), group("k1")]),
                    ("/iot/json", "k1"),
                ),
            ):
                # another worker has inserted the key but not committed: our check misses it
                tx = other.transaction()
                await tx.start()
                marks = ", ".join(f"${i + 1}" for i in range(len(cols)))
                await other.execute(f"INSERT INTO {table} VALUES ({marks})", *cols)
                task = asyncio.create_task(insert())
                await _wait_for_a_lock_wait(other)
                await tx.commit()
                assert await task == taken
            # all or none: the free keys of the refused batches were not inserted
            assert await s.iot.get_device(T, "d0") is None
            assert await s.iot.groups_by_apikey("k0") == []
            # and the database itself refuses a duplicate, whatever the caller checked
            with pytest.raises(asyncpg.UniqueViolationError):
                await other.execute(
                    "INSERT INTO iot_devices(tenant, service_path, device_id, doc) "
                    "VALUES ($1, '/x', 'd1', '{}')",
                    T,
                )
        finally:
            await other.close()
            await s.storage.close()

    asyncio.run(body())


# -- dumps ---------------------------------------------------------------------------------------
async def _fill(s: Stores) -> None:
    await s.iot.insert_groups(T, "/", [group("k1", entity_type="Thing"), group("k2", "/iot/d")])
    await s.iot.insert_devices(T, "/river", [device("b", n=1.5), device("a")])
    await s.iot.insert_devices("other", "/", [device("a")])
    await s.iot.record_seen([(T, "b", 10.25), ("other", "a", 3.0)])
    await s.iot.set_silent(T, "b", True, 20.0)
    await s.live.save(LiveDefinition("water", "", "type=WaterLevelObserved"))
    await s.live.save(LiveDefinition("air", "sano", "type=AirQualityObserved"))


def _comparable(rows: list[tuple[str, DumpRow]]) -> list[tuple[str, DumpRow]]:
    # when a definition was created differs between two runs; its type must not
    out = []
    for section, row in rows:
        if section == "live_dataset":
            assert isinstance(row["created"], float)
            row = {**row, "created": None}
        out.append((section, row))
    return out


def test_both_engines_dump_the_same_rows_and_a_sqlite_dump_loads_into_postgresql(
    tmp_path: Path, pg_database: str
) -> None:
    path = tmp_path / "cityos.db"
    Engine("sqlite", lambda: SqliteStorage(path)).run(_fill)
    conn = sqlite3.connect(path)
    try:
        sqlite_rows = [*IotStore.dump_rows(conn), *LiveStore.dump_rows(conn)]
    finally:
        conn.close()
    assert {s for s, _ in sqlite_rows} == {*PgIotStore.DUMP_SECTIONS, *PgLiveStore.DUMP_SECTIONS}

    async def dump(s: Stores) -> list[tuple[str, DumpRow]]:
        assert isinstance(s.storage, PostgresStorage)
        async with s.storage.pool.acquire() as c:
            return [r async for r in PgIotStore.dump_rows(c)] + [
                r async for r in PgLiveStore.dump_rows(c)
            ]

    async def filled_then_dumped(s: Stores) -> list[tuple[str, DumpRow]]:
        await _fill(s)
        return await dump(s)

    async def loaded_then_dumped(s: Stores) -> list[tuple[str, DumpRow]]:
        assert isinstance(s.storage, PostgresStorage)
        async with s.storage.pool.acquire() as c:
            for section in (*PgIotStore.DUMP_SECTIONS, *PgLiveStore.DUMP_SECTIONS):
                rows = [r for sec, r in sqlite_rows if sec == section]
                store = PgLiveStore if section == "live_dataset" else PgIotStore
                await store.load_rows(c, section, rows)
        assert await s.iot.status(T, "b") == (10.25, True)
        assert [d["device_id"] for _, d in await s.iot.list_devices(T)] == ["b", "a"]
        return await dump(s)

    filled, empty = pg_schema_url(pg_database), pg_schema_url(pg_database)
    dumped = Engine("postgresql", lambda: PostgresStorage(filled, pool_size=2)).run(
        filled_then_dumped
    )
    assert _comparable(dumped) == _comparable(sqlite_rows)
    loaded = Engine("postgresql", lambda: PostgresStorage(empty, pool_size=2)).run(
        loaded_then_dumped
    )
    assert loaded == sqlite_rows
