"""The datastore stores, asserted identically on SQLite and PostgreSQL: tables, writes,
searches, dumps and datastore_search_sql against hostile SQL.

PostgreSQL tests are skipped when no server answers (tests/conftest.py), and fail instead
when CITYOS_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import pg_schema_url

from cityos.catalog import datastore as ds
from cityos.catalog import sqlcheck
from cityos.catalog.errors import (
    CkanError,
    IntegrityError,
    NotAuthorized,
    NotFound,
    ValidationError,
)
from cityos.storage.datastore_rows import CreateSpec
from cityos.storage.pg_datastore import PgDatastoreStore
from cityos.storage.pg_datastore_sql import called_functions, check_functions
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import DumpRow
from cityos.storage.sqlite_datastore import DatastoreStore

RID = "5d0c1f3e-0000-4000-8000-000000000001"
SHELTERS = [
    {
        "name": "佐野市立避難所A",
        "kind": "避難所",
        "capacity": 120,
        "open": True,
        "opened": "2024-04-01",
    },
    {"name": "城北公民館", "kind": "公民館", "capacity": 80, "open": False, "opened": "2019-10-12"},
    {"name": "赤見小学校体育館", "kind": "避難所", "capacity": 300, "open": True, "opened": None},
    {"name": "Sano Station Hall", "kind": "hall", "capacity": None, "open": False, "opened": None},
]
FIELDS = [{"id": "name"}, {"id": "kind"}, {"id": "capacity", "type": "int"}]
FIELDS += [{"id": "open", "type": "bool"}, {"id": "opened", "type": "date"}]


@dataclass
class Engine:
    """One engine under test: runs async bodies against a fresh datastore."""

    name: str
    path: Path
    url: str

    def run(self, body: Callable[[Any], Awaitable[Any]]) -> Any:
        """Await body(store) on a started store, then close it; return what body returned."""

        async def main() -> Any:
            if self.name == "sqlite":
                store: Any = DatastoreStore(self.path)
                await store.start()
                try:
                    return await body(store)
                finally:
                    await store.close()
            storage = PostgresStorage(self.url, pool_size=4)
            await storage.start()
            try:
                pg = PgDatastoreStore(storage)
                await pg.start()
                return await body(pg)
            finally:
                await storage.close()

        return asyncio.run(main())

    def dump(self) -> list[tuple[str, DumpRow]]:
        """Return every section and row the engine's dump_rows yields."""
        if self.name == "sqlite":
            with sqlite3.connect(self.path) as conn:
                return list(DatastoreStore.dump_rows(conn))

        async def pg(store: PgDatastoreStore) -> list[tuple[str, DumpRow]]:
            async with store._store.pool.acquire() as conn, conn.transaction():
                return [x async for x in PgDatastoreStore.dump_rows(conn)]

        result: list[tuple[str, DumpRow]] = self.run(pg)
        return result


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """Yield each engine in turn, on a fresh empty database."""
    if request.param == "sqlite":
        return Engine("sqlite", tmp_path / "datastore.db", "")
    return Engine("postgresql", tmp_path, request.getfixturevalue("pg_url"))


def spec(rid: str = RID, **kw: Any) -> CreateSpec:
    fields = kw.pop("fields", FIELDS)
    return CreateSpec(
        rid,
        None if fields is None else tuple(ds.parse_fields(fields)),
        kw.pop("primary_key", ("name",)),
        kw.pop("indexes", None),
        kw.pop("aliases", ()),
    )


async def shelters(store: Any) -> ds.Table:
    """Create the shelters table with its four rows; return it."""
    table: ds.Table = await store.create(spec(), SHELTERS)
    return table


async def search(store: Any, name: str = RID, **params: Any) -> tuple[list[Any] | str, int | None]:
    """Run datastore_search's parameters as the action does; return (records, total)."""
    table = await store.table(name)
    if table is None:
        raise NotFound(name)
    found = await store.search(table, ds.parse_search(table, params))
    return found.records, found.total


def names(records: Any) -> list[str]:
    return [r["name"] for r in records]


# -- tables and searches --------------------------------------------------------------------


def test_create_and_search_return_typed_records(engine: Engine) -> None:
    async def body(store: Any) -> None:
        table = await shelters(store)
        assert [f.id for f in table.fields] == ["name", "kind", "capacity", "open", "opened"]
        assert table.primary_key == ("name",)
        assert table.indexes == ("name", "kind", "capacity", "open", "opened")
        records, total = await search(store)
        assert total == 4
        assert records[0] == {"_id": 1, **SHELTERS[0]}
        assert records == [{"_id": i, **s} for i, s in enumerate(SHELTERS, start=1)]
        assert await store.count(RID) == 4

    engine.run(body)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"filters": {"kind": "避難所"}}, ["佐野市立避難所A", "赤見小学校体育館"]),
        ({"filters": {"kind": ["公民館", "hall"]}}, ["城北公民館", "Sano Station Hall"]),
        ({"filters": {"open": True}}, ["佐野市立避難所A", "赤見小学校体育館"]),
        ({"filters": {"opened": None}}, ["赤見小学校体育館", "Sano Station Hall"]),
        ({"filters": {"capacity": [80, None]}}, ["城北公民館", "Sano Station Hall"]),
        ({"filters": {"capacity": {"gte": 100, "lt": 300}}}, ["佐野市立避難所A"]),
        ({"q": "避難"}, ["佐野市立避難所A", "赤見小学校体育館"]),
        ({"q": "避難所"}, ["佐野市立避難所A", "赤見小学校体育館"]),
        ({"q": "station hall"}, ["Sano Station Hall"]),  # every word, ASCII case ignored
        ({"q": "公民館 避難"}, []),
        ({"q": {"name": "公民"}}, ["城北公民館"]),
        ({"q": {"capacity": "12"}}, ["佐野市立避難所A"]),  # a number field as text
        ({"full_text": "体育", "filters": {"open": True}}, ["赤見小学校体育館"]),
        *(({"q": t}, []) for t in ['"', '避難"所', "a*b", "%", "_", "x OR y", "\\", "'; --"]),
    ],
)
def test_filters_and_text_search_select_rows(
    engine: Engine, params: dict[str, Any], expected: list[str]
) -> None:
    async def body(store: Any) -> None:
        await shelters(store)
        records, total = await search(store, **params)
        assert names(records) == expected
        assert total == len(expected)

    engine.run(body)


def test_sort_puts_nulls_first_ascending_and_pages(engine: Engine) -> None:
    async def body(store: Any) -> None:
        await shelters(store)
        records, _ = await search(store, sort="capacity asc", fields="name,capacity")
        assert [r["capacity"] for r in records] == [None, 80, 120, 300]
        records, _ = await search(store, sort="opened desc, name", limit=3, offset=1)
        assert names(records) == ["城北公民館", "Sano Station Hall", "赤見小学校体育館"]
        records, total = await search(store, sort="_id desc", limit=1, include_total="false")
        assert records == [{"_id": 4, **SHELTERS[3]}]
        assert total is None
        # code-point order, whatever the database's locale
        records, _ = await search(store, sort="name", fields="name")
        assert names(records) == sorted(s["name"] for s in SHELTERS)

    engine.run(body)


def test_records_formats_and_distinct(engine: Engine) -> None:
    async def body(store: Any) -> None:
        await shelters(store)
        fields = "name,open,capacity"
        lists, _ = await search(store, fields=fields, records_format="lists", limit=2)
        assert lists == [["佐野市立避難所A", True, 120], ["城北公民館", False, 80]]
        csv, _ = await search(store, fields=fields, records_format="csv", sort="_id desc")
        assert csv == (
            "Sano Station Hall,false,\n赤見小学校体育館,true,300\n"
            "城北公民館,false,80\n佐野市立避難所A,true,120\n"
        )
        kinds, total = await search(store, fields="kind", distinct="true", sort="kind")
        assert [r["kind"] for r in kinds] == sorted({s["kind"] for s in SHELTERS})
        assert total == 3
        # no sort: by value (SQLite walks the field's index)
        kinds, _ = await search(store, fields="kind", distinct="true")
        assert [r["kind"] for r in kinds] == ["hall", "公民館", "避難所"]
        opened, _ = await search(store, fields="open", distinct="true", sort="open desc")
        assert opened == [{"open": True}, {"open": False}]

    engine.run(body)


# -- writes -----------------------------------------------------------------------------------


def test_upsert_update_and_insert(engine: Engine) -> None:
    async def body(store: Any) -> None:
        await shelters(store)
        added = [
            {"name": "城北公民館", "capacity": 90},
            {"name": "新設避難所", "kind": "避難所", "capacity": 50},
        ]
        assert await store.upsert(RID, added, "upsert") == 2
        records, _ = await search(store, filters={"name": "城北公民館"})
        assert records[0]["capacity"] == 90
        assert records[0]["kind"] == "公民館"  # fields left out keep their value
        records, total = await search(store, q="新設")
        assert total == 1
        assert records[0]["_id"] == 5
        with pytest.raises(ValidationError) as info:
            await store.upsert(RID, [{"name": "無い", "capacity": 1}], "update")
        assert "not found" in str(info.value.errors)
        with pytest.raises(ValidationError) as info:
            await store.upsert(RID, [{"kind": "x"}], "upsert")
        assert info.value.errors == {"records": ['row 1: the key field "name" is missing']}
        await store.upsert(RID, [{"name": "城北公民館", "kind": "臨時避難所"}], "update")
        assert (await search(store, q="臨時避難"))[1] == 1
        with pytest.raises(ValidationError):  # a duplicate key on insert
            await store.upsert(RID, [{"name": "新設避難所"}], "insert")
        assert await store.count(RID) == 5

    engine.run(body)


def test_upsert_without_primary_key_needs_id_and_keeps_it(engine: Engine) -> None:
    async def body(store: Any) -> None:
        await store.create(spec(fields=None, primary_key=None), [{"a": "x"}])
        with pytest.raises(ValidationError) as info:
            await store.upsert(RID, [{"a": "y"}], "upsert")
        assert "primary key" in str(info.value.errors["method"])
        await store.upsert(RID, [{"_id": 1, "a": "y"}, {"_id": 7, "a": "z"}], "upsert")
        await store.upsert(RID, [{"a": "after"}], "insert")
        records, _ = await search(store)
        assert records == [{"_id": 1, "a": "y"}, {"_id": 7, "a": "z"}, {"_id": 8, "a": "after"}]

    engine.run(body)


@pytest.mark.parametrize(
    "record",
    [{"name": "x", "capacity": "many"}, {"name": "x", "nope": 1}, {"name": "x", "open": "maybe"}],
)
def test_a_bad_record_inserts_nothing(engine: Engine, record: dict[str, Any]) -> None:
    async def body(store: Any) -> None:
        await shelters(store)
        with pytest.raises(ValidationError) as info:
            await store.upsert(RID, [{"name": "fine"}, record], "insert")
        assert "row 2" in str(info.value.errors["records"])
        assert await store.count(RID) == 4

    engine.run(body)


def test_duplicate_primary_key_on_create_changes_nothing(engine: Engine) -> None:
    async def body(store: Any) -> None:
        with pytest.raises(IntegrityError):
            await store.create(spec(), [SHELTERS[0], SHELTERS[0]])
        assert await store.table(RID) is None
        table = await store.create(spec(), SHELTERS[:1])  # the id is still free
        assert table.resource_id == RID

    engine.run(body)


def test_create_again_adds_fields_keeps_rows_and_aliases(engine: Engine) -> None:
    async def body(store: Any) -> None:
        await shelters(store)
        more = [{"id": "tags", "type": "_text"}, {"id": "extra", "type": "json"}]
        row = {"name": "追加", "tags": ["a", "b"], "extra": {"floors": 2}}
        table = await store.create(
            spec(fields=more, primary_key=None, aliases=("shelters-latest",)), [row]
        )
        assert [f.type for f in table.fields][-2:] == ["_text", "json"]
        assert table.aliases == ("shelters-latest",)
        assert table.primary_key == ("name",)
        records, total = await search(store, "shelters-latest", filters={"name": "追加"})
        assert records[0]["tags"] == ["a", "b"]
        assert records[0]["extra"] == {"floors": 2}
        assert total == 1
        assert (await search(store))[1] == 5
        with pytest.raises(ValidationError) as info:
            await store.create(spec(fields=[{"id": "capacity", "type": "text"}]), [])
        assert "cannot change" in str(info.value.errors["fields"])
        with pytest.raises(ValidationError) as info:
            await store.create(spec("other", aliases=("shelters-latest",)), [])
        assert info.value.errors == {"aliases": ['alias "shelters-latest" is already in use']}
        assert await store.table("other") is None

    engine.run(body)


def test_delete_rows_by_filter_then_the_table(engine: Engine) -> None:
    async def body(store: Any) -> None:
        table = await shelters(store)
        kind = table.field("kind")
        assert await store.delete(RID, [ds.Condition(kind, "in", ("避難所",))]) == 2
        records, _ = await search(store)
        assert names(records) == ["城北公民館", "Sano Station Hall"]
        assert (await search(store, q="避難所"))[1] == 0
        assert await store.delete(RID, None) == 2
        assert await store.table(RID) is None
        with pytest.raises(NotFound):
            await store.delete(RID, None)
        with pytest.raises(NotFound):
            await store.upsert(RID, [{"name": "x"}], "insert")

    engine.run(body)


def test_dump_then_load_keeps_tables_ids_and_aliases(engine: Engine, tmp_path: Path) -> None:
    async def fill(store: Any) -> None:
        await store.create(spec(aliases=("a1",)), SHELTERS)
        await store.delete(RID, [ds.Condition(ds.ID_FIELD, "in", (2,))])

    engine.run(fill)
    dumped = engine.dump()
    assert [s for s, _ in dumped] == ["datastore_table"] + ["datastore_row"] * 3
    assert dumped[0][1] == {
        "resource_id": RID,
        "fields": [
            {"id": f["id"], "type": ds.parse_type(f.get("type", "text"))[0]} for f in FIELDS
        ],
        "primary_key": ["name"],
        "indexes": ["name", "kind", "capacity", "open", "opened"],
        "aliases": ["a1"],
    }
    assert dumped[2][1] == {
        "resource_id": RID,
        "row": {"_id": 3, "name": "赤見小学校体育館", "kind": "避難所", "capacity": 300}
        | {"open": 1, "opened": None},
    }
    fresh = Engine(engine.name, tmp_path / "fresh.db", engine.url)
    if engine.name == "postgresql":
        fresh.url = pg_schema_url(engine.url.split("?")[0])

    async def load(store: Any) -> Any:
        await store.load_dump("datastore_table", [dumped[0][1]])
        await store.load_dump("datastore_row", [r for s, r in dumped if s == "datastore_row"])
        await store.upsert(RID, [{"name": "new"}], "insert")
        return await search(store, "a1", fields="_id,name")

    records, total = fresh.run(load)
    assert [r["_id"] for r in records] == [1, 3, 4, 5]
    assert total == 4
    assert fresh.dump()[1:4] == dumped[1:]


# -- datastore_search_sql ------------------------------------------------------------------


async def sql(store: Any, text: str, **kw: Any) -> Any:
    """Check and run a statement as datastore_search_sql does; return (columns, rows)."""
    sqlcheck.check_text(text)
    tables = await store.tables_read_by(text)
    found = await store.run_sql(text, tables, **kw)
    return found.columns, found.rows, tables


def test_sql_select_with_japanese_columns_and_aggregates(engine: Engine) -> None:
    async def body(store: Any) -> None:
        await store.create(
            spec(fields=[{"id": "区"}, {"id": "人口", "type": "int"}], primary_key=()),
            [{"区": "佐野", "人口": 100}, {"区": "田沼", "人口": 50}, {"区": "葛生", "人口": 20}],
        )
        text = f'SELECT "区", "人口" FROM "{RID}" WHERE "人口" > 30 ORDER BY "人口"'
        assert await sql(store, text) == (["区", "人口"], [("田沼", 50), ("佐野", 100)], {RID})
        text = f'-- total\nWITH t AS (SELECT * FROM "{RID}") SELECT sum("人口") AS n FROM t'
        assert await sql(store, text) == (["n"], [(170,)], {RID})
        text = f'SELECT avg("人口") AS a, "人口" > 60 AS big FROM "{RID}" GROUP BY 2 ORDER BY 2'
        rows = (await sql(store, text))[1]
        assert rows == [(35, 0), (100, 1)]
        assert await sql(store, "SELECT 1 AS one") == (["one"], [(1,)], set())

    engine.run(body)


#: statements both engines refuse as a validation error of `query`
NOT_READS = [
    'DELETE FROM "{rid}"',
    'UPDATE "{rid}" SET "capacity" = 0',
    'SELECT 1; DELETE FROM "{rid}"',
    'SELECT * FROM "{rid}"; SELECT 1',
    'WITH x AS (SELECT 1) DELETE FROM "{rid}"',
    'WITH x AS (DELETE FROM "{rid}" RETURNING 1) SELECT * FROM x',
    'SELECT * INTO stolen FROM "{rid}"',
    "SELECT * FROM entities",  # the broker's table: not a datastore table
    "SELECT * FROM datastore_tables",
    "SELECT load_extension('x')",
]
#: statements refused as a validation or an authorization error, depending on the engine
#: (a system catalog SQLite does not have is merely an unknown table there)
HOSTILE = [
    *NOT_READS,
    "SELECT * FROM _datastore_tables",
    "SELECT * FROM sqlite_master",
    "SELECT * FROM pg_class",
    "SELECT count(*) FROM pg_catalog.pg_authid",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM public.spatial_ref_sys",
    "SELECT pg_sleep(0)",
    "SELECT set_config('statement_timeout', '0', false)",
    "SELECT pg_advisory_lock(1)",
    "SELECT query_to_xml('select 1', true, true, '')",
    "SELECT current_user",
    'SELECT * FROM "{rid}" FOR UPDATE',
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_sql_is_refused_and_changes_nothing(engine: Engine, text: str) -> None:
    async def body(store: Any) -> None:
        await shelters(store)
        with pytest.raises((ValidationError, NotAuthorized)) as info:
            await sql(store, text.replace("{rid}", RID))
        if text in NOT_READS:
            assert isinstance(info.value, ValidationError)
            assert list(info.value.errors) in (["sql"], ["query"])
        if "entities" in text:
            assert "entities" in str(info.value.errors)
        assert (await sql(store, f'SELECT count(*) AS n FROM "{RID}"'))[1] == [(4,)]
        assert await store.table("stolen") is None

    engine.run(body)


def test_a_slow_query_is_stopped_and_the_store_still_answers(engine: Engine) -> None:
    async def body(store: Any) -> None:
        await shelters(store)
        text = (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
            f'SELECT count(*) FROM c, "{RID}"'
        )
        started = time.monotonic()
        tables = await store.tables_read_by(text)
        assert tables == {RID}
        with pytest.raises(ValidationError) as info:
            await store.run_sql(text, tables, seconds=0.5)
        assert info.value.errors == {"query": ["Query took too long"]}
        assert time.monotonic() - started < 5
        for _ in range(3):  # every pooled connection is back to normal
            assert (await sql(store, f'SELECT count(*) AS n FROM "{RID}"'))[1] == [(4,)]
        assert await store.upsert(RID, [{"name": "after"}], "insert") == 1

    engine.run(body)


def test_rows_are_capped_and_other_tables_need_naming(engine: Engine) -> None:
    async def body(store: Any) -> None:
        await shelters(store)
        await store.create(spec("other"), SHELTERS[:1])
        found = await store.run_sql(f'SELECT "name" FROM "{RID}"', {RID}, cap=2)
        assert len(found.rows) == 2
        assert found.truncated is True
        found = await store.run_sql(f'SELECT "name" FROM "{RID}"', {RID}, cap=4)
        assert found.truncated is False
        text = f'SELECT a."name" FROM "{RID}" a JOIN "other" b ON b._id = a._id'
        assert (await sql(store, text))[1:] == ([("佐野市立避難所A",)], {RID, "other"})

    engine.run(body)


# -- the function policy of PostgreSQL's search_sql (pure) ---------------------------------


@pytest.mark.parametrize(
    ("text", "calls"),
    [
        ('SELECT "区" FROM "r" WHERE "人口" > 30', []),
        ("WITH RECURSIVE c(x) AS (SELECT 1) SELECT count(*) FROM c", ["count"]),
        ("SELECT * FROM unnest(a) WITH ORDINALITY, pg_sleep(10)", ["unnest", "pg_sleep"]),
        ("SELECT E'\\' ', pg_sleep(1), ' '", ["pg_sleep"]),
        ('SELECT $$ x( $$, $a$ y( $a$, "pg_sleep"(2)', ["pg_sleep"]),
        ("SELECT pg_catalog.set_config('a', 'b', true)", ["pg_catalog.set_config"]),
        ("SELECT x::numeric(10, 2), cast(y AS varchar(3)) FROM t AS z(a, b)", []),
        ("SELECT (WITH q(a) AS (SELECT 1) SELECT pg_sleep(1))", ["pg_sleep"]),
        ("SELECT /* pg_sleep( */ 1 -- pg_sleep(\n", []),
    ],
)
def test_called_functions_sees_calls_behind_quotes_and_ctes(text: str, calls: list[str]) -> None:
    assert called_functions(text) == calls


def test_check_functions_allows_common_functions_only() -> None:
    check_functions("SELECT lower(a), sum(b), date_trunc('day', c) FROM t")
    for bad in ("SELECT pg_read_file('x')", "SELECT public.lower(a)", "SELECT session_user"):
        with pytest.raises(CkanError):
            check_functions(bad)


# -- across engines and workers ------------------------------------------------------------


def test_a_sqlite_dump_loads_into_postgresql(tmp_path: Path, pg_url: str) -> None:
    sqlite = Engine("sqlite", tmp_path / "datastore.db", "")

    async def fill(store: Any) -> None:
        await store.create(spec(aliases=("a1",)), SHELTERS)
        more = [{"id": "tags", "type": "_text"}, {"id": "extra", "type": "json"}]
        await store.create(spec(fields=more), [{"name": "追加", "tags": ["a"], "extra": {"x": 1}}])

    sqlite.run(fill)
    dumped = sqlite.dump()
    pg = Engine("postgresql", tmp_path, pg_url)

    async def load(store: Any) -> Any:
        for section in PgDatastoreStore.DUMP_SECTIONS:
            await store.load_dump(section, [r for s, r in dumped if s == section])
        return await search(store, "a1", sort="_id desc", limit=2)

    records, total = pg.run(load)
    assert total == 5
    assert records[0] == {
        "_id": 5,
        "name": "追加",
        **dict.fromkeys(["kind", "capacity", "open", "opened"]),
        "tags": ["a"],
        "extra": {"x": 1},
    }
    assert pg.dump() == dumped


def test_workers_creating_one_table_at_once_both_succeed(engine: Engine) -> None:
    async def body(store: Any) -> None:
        if isinstance(store, PgDatastoreStore):
            other = PostgresStorage(engine.url, pool_size=2)
            await other.start()
            second: Any = PgDatastoreStore(other)
        else:
            other, second = None, DatastoreStore(engine.path)
        await second.start()
        try:
            tables = await asyncio.gather(
                store.create(spec(), SHELTERS[:2]), second.create(spec(), SHELTERS[2:])
            )
            assert {t.resource_id for t in tables} == {RID}
            records, total = await search(store, sort="name", fields="name")
            assert total == 4
            assert names(records) == sorted(s["name"] for s in SHELTERS)
        finally:
            await (second.close() if other is None else other.close())

    engine.run(body)
