"""The Storage contract, asserted identically on every engine (SQLite and PostgreSQL).

PostgreSQL tests are skipped when no server answers at CITYOS_TEST_POSTGRES_URL (default
postgres@127.0.0.1:5432/test), and fail instead when CITYOS_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as hs

from cityos.broker.errors import BadRequestData
from cityos.broker.geo import GeoQuery, parse_geoquery
from cityos.broker.qlang import parse_q, parse_scope_q
from cityos.broker.typesel import parse_type_selection
from cityos.storage import pg_schema
from cityos.storage.base import Change, EntityQuery, Mutation, Storage
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import SqliteStorage

V = "https://example.org/"
NOW = "2026-01-01T00:00:00.000000Z"


def expand(term: str) -> str:
    return term if ":" in term else V + term


def prop(value: Any, **members: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value, **members}


def geo(gtype: str, coordinates: Any) -> dict[str, Any]:
    return {"type": "GeoProperty", "value": {"type": gtype, "coordinates": coordinates}}


def entity(
    n: int, types: list[str], scope: list[str] | None = None, **attrs: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": f"urn:x:{n}",
        "type": [V + t for t in types],
        "createdAt": NOW,
        "modifiedAt": NOW,
        "attrs": {V + k: v for k, v in attrs.items()},
    }
    if scope is not None:
        doc["scope"] = scope
    return doc


SQUARE_3 = [[[139.55, 36.30], [139.56, 36.30], [139.56, 36.305], [139.55, 36.305], [139.55, 36.30]]]

DOCS = [
    entity(
        1,
        ["WaterLevelObserved"],
        ["/Sano/Akiyama"],
        level=[
            prop(
                2.7,
                observedAt="2026-01-01T09:00:00+09:00",
                unitCode="MTR",
                **{V + "quality": prop("good")},
            )
        ],
        name=[prop("Akiyama bridge")],
        active=[prop(True)],
        tags=[prop(["flood", "river"])],
        reading=[prop({"depth": {"max": 3.5, "unit": "m"}, "sensors": ["a", "b"]})],
        label=[{"type": "LanguageProperty", "languageMap": {"en": "Bridge", "ja": "橋"}}],
        category=[{"type": "VocabProperty", "vocab": V + "gauge"}],
        location=[geo("Point", [139.58, 36.31])],
    ),
    entity(
        2,
        ["WaterLevelObserved"],
        ["/Sano/Watarase/North"],
        level=[prop(1.2, observedAt="2026-01-01T01:00:00Z")],
        name=[prop("Watarase gate")],
        active=[prop(False)],
        tags=[prop(["river"])],
        reading=[prop({"depth": {"max": 1}})],
        label=[{"type": "LanguageProperty", "languageMap": {"en": "Gate"}}],
        location=[geo("Point", [139.60, 36.33])],
    ),
    entity(
        3,
        ["AirQualityObserved"],
        ["/Tochigi"],
        level=[prop(5)],
        no2=[prop(40)],
        name=[prop("Station 10")],
        location=[geo("Polygon", SQUARE_3)],
    ),
    entity(
        4,
        ["AirQualityObserved", "Device"],
        name=[prop("akiyama station")],
        location=[geo("Point", [140.5, 37.0])],
    ),
    entity(5, ["Street"], name=[prop("Zebra")]),
]


def put(doc: dict[str, Any]) -> Mutation:
    return Mutation(doc["id"], lambda _current: doc)


async def load(st: Storage, tenant: str = "") -> None:
    outcomes = await st.apply(tenant, [put(d) for d in DOCS])
    assert all(o.ok and o.created for o in outcomes)


def ids(docs: list[dict[str, Any]]) -> list[int]:
    return [int(d["id"].rsplit(":", 1)[1]) for d in docs]


def run_query(engine: Engine, **kwargs: Any) -> list[int]:
    async def body(st: Storage) -> list[int]:
        await load(st)
        result = await st.query("", EntityQuery(expand=expand, limit=100, **kwargs))
        return ids(result.docs)

    found: list[int] = engine.run(body)
    return found


@dataclass
class Engine:
    """One engine under test: makes storages on the same database and runs async bodies."""

    name: str
    make: Callable[[], Storage]

    def run(self, body: Callable[[Storage], Awaitable[Any]]) -> Any:
        """Start a storage, await body(storage), close it; return what body returned."""

        async def main() -> Any:
            st = self.make()
            await st.start()
            try:
                return await body(st)
            finally:
                await st.close()

        return asyncio.run(main())

    def add_hook(self, st: Storage, record: Callable[[Change, int], None]) -> None:
        """Add a change hook calling record(change, n): n counts the entities with the
        change's id as seen inside the change's transaction (engines' hooks differ in kind)."""
        if isinstance(st, SqliteStorage):

            def sqlite_hook(conn: Any, change: Change) -> None:
                sql = "SELECT count(*) FROM entities WHERE id=?"
                record(change, conn.execute(sql, (change.entity_id,)).fetchone()[0])

            st.add_change_hook(sqlite_hook)
            return
        assert isinstance(st, PostgresStorage)

        async def pg_hook(conn: Any, change: Change) -> None:
            sql = "SELECT count(*) FROM entities WHERE id=$1"
            record(change, await conn.fetchval(sql, change.entity_id))

        st.add_change_hook(pg_hook)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """Yield each engine in turn, on a fresh empty database."""
    if request.param == "sqlite":
        path = tmp_path / "cityos.db"
        return Engine("sqlite", lambda: SqliteStorage(path))
    url = request.getfixturevalue("pg_url")
    return Engine("postgresql", lambda: PostgresStorage(url, pool_size=4))


# -- writes --------------------------------------------------------------------------------------
def test_create_get_replace_delete(engine: Engine) -> None:
    async def body(st: Storage) -> None:
        first = await st.apply("", [put(DOCS[0])])
        assert first[0].created
        assert first[0].doc == DOCS[0]
        got = await st.get("", "urn:x:1")
        assert got == DOCS[0]
        assert list(got) == list(DOCS[0])  # members come back in the order written
        changed = {**DOCS[0], "attrs": {V + "level": [prop(9)]}}
        again = await st.apply("", [put(changed)])
        assert again[0].ok
        assert not again[0].created
        assert await st.get("", "urn:x:1") == changed
        gone = await st.apply("", [Mutation("urn:x:1", lambda _c: None)])
        assert gone[0].deleted
        assert await st.get("", "urn:x:1") is None
        never = await st.apply("", [Mutation("urn:x:7", lambda _c: None)])
        assert never[0].ok
        assert not never[0].deleted

    engine.run(body)


def test_mutation_sees_the_current_document(engine: Engine) -> None:
    def bump(current: dict[str, Any] | None) -> dict[str, Any]:
        assert current is not None
        n = current["attrs"][V + "level"][0]["value"]
        return {**current, "attrs": {V + "level": [prop(n + 1)]}}

    async def body(st: Storage) -> list[int]:
        await load(st)
        await asyncio.gather(*(st.apply("", [Mutation("urn:x:3", bump)]) for _ in range(10)))
        result = await st.query("", EntityQuery(q=parse_q("level==15"), expand=expand))
        return ids(result.docs)

    # ten concurrent read-modify-writes: none is lost, and the index follows the document
    assert engine.run(body) == [3]


def test_a_failing_mutation_leaves_no_trace_and_spares_the_others(engine: Engine) -> None:
    def boom(_current: Any) -> Any:
        raise KeyError("bad mutation")

    def refuse(_current: Any) -> Any:
        raise BadRequestData("level: no")

    async def body(st: Storage) -> None:
        outcomes = await st.apply(
            "t", [put(DOCS[0]), Mutation("urn:x:8", boom), Mutation("urn:x:9", refuse)]
        )
        assert [o.ok for o in outcomes] == [True, False, False]
        assert isinstance(outcomes[2].error, BadRequestData)
        assert await st.get("t", "urn:x:8") is None
        assert await st.get("t", "urn:x:1") == DOCS[0]

    engine.run(body)


def test_tenants_are_isolated(engine: Engine) -> None:
    async def body(st: Storage) -> None:
        assert await st.tenant_exists("")
        assert not await st.tenant_exists("city")
        await load(st, "city")
        assert await st.tenant_exists("city")
        assert await st.get("", "urn:x:1") is None
        assert await st.get("city", "urn:x:1") == DOCS[0]
        result = await st.query("", EntityQuery(count=True))
        assert (result.docs, result.count) == ([], 0)
        assert await st.types("other") == []

    engine.run(body)

    async def later(st: Storage) -> None:
        assert await st.tenant_exists("city")  # remembered by the database
        assert not await st.tenant_exists("other")

    engine.run(later)


# -- queries -------------------------------------------------------------------------------------
Q_CASES = [
    ("level>2", [1, 3]),
    ("level==1.2", [2]),
    ("level==1.2,5", [2, 3]),
    ("level==1..3", [1, 2]),
    ("level!=1.2", [1, 3]),
    ("level<=1.2|no2==40", [2, 3]),
    ("level>2;name~=Station", [3]),
    ("name~=bridge", [1]),
    ("name~=(?i)akiyama", [1, 4]),
    ("name!~=e", [3, 4]),
    ('name=="Zebra"', [5]),
    ('name>"X"', [4, 5]),  # code-point order: lower case sorts after upper case
    ("active==true", [1]),
    ("active==false", [2]),
    ("tags==flood", [1]),
    ("tags==river", [1, 2]),
    ("reading[depth.max]>2", [1]),
    ("reading[depth.max]==1", [2]),
    ("reading[sensors]==b", [1]),
    ("reading[depth.unit]", [1]),
    ("reading[depth]==1", []),  # an object is not compared with a number
    ("level.observedAt>2026-01-01T00:30:00Z", [2]),
    ("level.observedAt==2026-01-01T00:00:00Z", [1]),
    ("level.unitCode==MTR", [1]),
    ("level.quality==good", [1]),
    ("label==Bridge", [1]),
    ("label~=^G", [2]),
    ("category==gauge", [1]),
    ("level", [1, 2, 3]),
    ("!level", [4, 5]),
]


@pytest.mark.parametrize(("q", "expected"), Q_CASES)
def test_q(engine: Engine, q: str, expected: list[int]) -> None:
    assert run_query(engine, q=parse_q(q)) == expected


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        ("WaterLevelObserved", [1, 2]),
        ("AirQualityObserved,Street", [3, 4, 5]),
        ("AirQualityObserved;Device", [4]),
        ("(Device|Street);AirQualityObserved", [4]),
        ("Nothing", []),
    ],
)
def test_type_selection(engine: Engine, selection: str, expected: list[int]) -> None:
    assert run_query(engine, types=parse_type_selection(selection)) == expected


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("/Sano", []),
        ("/Sano/#", [1, 2]),
        ("/Sano/+/North", [2]),
        ("/#", [1, 2, 3]),
        ("/Tochigi|/Sano/Akiyama", [1, 3]),
    ],
)
def test_scope_q(engine: Engine, scope: str, expected: list[int]) -> None:
    assert run_query(engine, scope_q=parse_scope_q(scope)) == expected


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"ids": ("urn:x:4", "urn:x:2", "urn:x:9")}, [2, 4]),
        ({"id_pattern": "urn:x:[13]"}, [1, 3]),
        ({"attrs": frozenset({V + "no2", V + "tags"})}, [1, 2, 3]),
    ],
)
def test_ids_id_pattern_and_attrs(
    engine: Engine, kwargs: dict[str, Any], expected: list[int]
) -> None:
    assert run_query(engine, **kwargs) == expected


@pytest.mark.parametrize(
    ("georel", "geometry", "coordinates", "expected"),
    [
        # entity 3's square is ~1.9 km away, entity 2 ~2.9 km: nearest first
        ("near;maxDistance==2500", "Point", [139.58, 36.31], [1, 3]),
        ("near;maxDistance==4000", "Point", [139.58, 36.31], [1, 3, 2]),
        ("near;minDistance==1000;maxDistance==4000", "Point", [139.58, 36.31], [3, 2]),
        ("near;minDistance==50000", "Point", [139.58, 36.31], [4]),
        (
            "within",
            "Polygon",
            [[[139.57, 36.30], [139.61, 36.30], [139.61, 36.34], [139.57, 36.34], [139.57, 36.30]]],
            [1, 2],
        ),
        (
            "intersects",
            "Polygon",
            [[[139.555, 36.0], [139.7, 36.0], [139.7, 36.302], [139.555, 36.302], [139.555, 36.0]]],
            [3],
        ),
        ("contains", "Point", [139.555, 36.302], [3]),
        ("disjoint", "Polygon", SQUARE_3, [1, 2, 4]),
        ("equals", "Point", [140.5, 37.0], [4]),
    ],
)
def test_geo(
    engine: Engine, georel: str, geometry: str, coordinates: Any, expected: list[int]
) -> None:
    query = parse_geoquery(georel, geometry, coordinates)
    found = run_query(engine, geo=query, geoproperty=V + "location")
    if georel.startswith("near"):
        assert found == expected
    else:
        assert sorted(found) == expected


def test_near_pages_are_nearest_first_however_far_the_matches_are(engine: Engine) -> None:
    # points 50 m to 1.9 km east of the reference: a page needs one growing circle or several
    east = [50, 120, 400, 900, 1300, 1900, 2600]  # metres; the last is out of range
    docs = [
        entity(n, ["Gauge"], location=[geo("Point", [139.5 + m / 89_800, 36.3])])
        for n, m in enumerate(east, start=1)
    ]

    async def body(st: Storage) -> list[list[int]]:
        await st.apply("", [put(d) for d in docs])
        near = parse_geoquery("near;maxDistance==2000", "Point", [139.5, 36.3])
        pages = []
        for limit, offset in ((2, 0), (2, 2), (3, 3), (1, 5), (20, 0)):
            q = EntityQuery(geo=near, geoproperty=V + "location", limit=limit, offset=offset)
            pages.append(ids((await st.query("", q)).docs))
        return pages

    assert engine.run(body) == [[1, 2], [3, 4], [4, 5, 6], [6], [1, 2, 3, 4, 5, 6]]


def test_count_limit_offset_and_order(engine: Engine) -> None:
    async def body(st: Storage) -> list[tuple[list[int], int | None]]:
        await load(st)
        # a replace keeps an entity's place; a delete and create moves it to the end
        await st.apply("", [put({**DOCS[0], "modifiedAt": "2026-02-01T00:00:00Z"})])
        await st.apply("", [Mutation("urn:x:2", lambda _c: None)])
        await st.apply("", [put(DOCS[1])])
        out = []
        for query in (
            EntityQuery(limit=2, offset=1, count=True),
            EntityQuery(limit=0, count=True, q=parse_q("level"), expand=expand),
            EntityQuery(limit=10, offset=3),
            EntityQuery(limit=10, offset=9, count=True),
        ):
            result = await st.query("", query)
            out.append((ids(result.docs), result.count))
        return out

    assert engine.run(body) == [([3, 4], 5), ([], 3), ([5, 2], None), ([], 5)]


# -- maintenance ---------------------------------------------------------------------------------
def test_purge(engine: Engine) -> None:
    async def body(st: Storage) -> None:
        await load(st)
        n = await st.purge("", EntityQuery(types=parse_type_selection(V + "AirQualityObserved")))
        assert n == 2
        assert await st.get("", "urn:x:3") is None
        left = await st.query("", EntityQuery(count=True, q=parse_q("no2"), expand=expand))
        assert left.count == 0
        assert [t.type for t in await st.types("")] == [V + "Street", V + "WaterLevelObserved"]

    engine.run(body)


def test_types_and_attributes(engine: Engine) -> None:
    async def body(st: Storage) -> None:
        await load(st)
        types = {t.type: t for t in await st.types("")}
        assert list(types) == [
            V + t for t in ("AirQualityObserved", "Device", "Street", "WaterLevelObserved")
        ]
        assert types[V + "AirQualityObserved"].entity_count == 2
        assert types[V + "Device"].attributes == {
            V + "name": {"Property"},
            V + "location": {"GeoProperty"},
        }
        assert types[V + "WaterLevelObserved"].attributes[V + "label"] == {"LanguageProperty"}
        attrs = {a.name: a for a in await st.attributes("")}
        assert list(attrs) == sorted(attrs)
        assert attrs[V + "name"].count == 5
        assert attrs[V + "level"].types == {V + "WaterLevelObserved", V + "AirQualityObserved"}
        only = await st.attributes("", frozenset({V + "AirQualityObserved"}))
        assert {a.name: (a.count, a.types) for a in only} == {
            V + "level": (1, {V + "AirQualityObserved"}),
            V + "location": (2, {V + "AirQualityObserved"}),
            V + "name": (2, {V + "AirQualityObserved"}),
            V + "no2": (1, {V + "AirQualityObserved"}),
        }

    engine.run(body)


def test_kv(engine: Engine) -> None:
    async def body(st: Storage) -> None:
        assert await st.kv_get("ctx", "a") is None
        await st.kv_put("ctx", "b", b"\x00two")
        await st.kv_put("ctx", "a", b"one")
        await st.kv_put("ctx", "a", b"uno")
        await st.kv_put("other", "a", b"x")
        assert await st.kv_get("ctx", "a") == b"uno"
        assert await st.kv_list("ctx") == [("a", b"uno"), ("b", b"\x00two")]
        assert await st.kv_delete("ctx", "a")
        assert not await st.kv_delete("ctx", "a")
        assert await st.kv_list("ctx") == [("b", b"\x00two")]

    engine.run(body)


# -- rules and hooks -----------------------------------------------------------------------------
def test_rules_derive_attributes_and_writes_that_commit_together(engine: Engine) -> None:
    def alert_rule(old: Any, new: dict[str, Any]) -> tuple[dict[str, Any], list[Mutation]]:
        level = new["attrs"].get(V + "level", [{}])[0].get("value")
        if not isinstance(level, int | float) or level <= 3:
            return new, []
        if level > 100:
            raise BadRequestData("level: implausible")
        derived = {**new, "attrs": {**new["attrs"], V + "alarm": [prop(True)]}}
        alert = entity(100, ["Alert"], about=[{"type": "Relationship", "object": new["id"]}])
        return derived, [put(alert)]

    async def body(st: Storage) -> None:
        st.add_rule(alert_rule)  # type: ignore[attr-defined]
        await load(st)
        stored = await st.get("", "urn:x:3")
        assert stored is not None
        assert V + "alarm" in stored["attrs"]
        assert await st.get("", "urn:x:100") is not None
        alarmed = await st.query("", EntityQuery(q=parse_q("alarm==true"), expand=expand))
        assert ids(alarmed.docs) == [3]
        refused = await st.apply("", [put(entity(6, ["Street"], level=[prop(500)]))])
        assert isinstance(refused[0].error, BadRequestData)
        assert await st.get("", "urn:x:6") is None

    engine.run(body)


def test_change_hooks_run_inside_the_transaction(engine: Engine) -> None:
    seen: list[tuple[str, bool, bool, int]] = []

    def record(change: Change, n: int) -> None:
        seen.append((change.entity_id, change.old is None, change.new is None, n))
        if change.entity_id == "urn:x:9":
            raise ValueError("hook refuses")  # rolls the change back

    async def body(st: Storage) -> None:
        engine.add_hook(st, record)
        await st.apply("", [put(DOCS[0]), put(DOCS[1])])
        await st.apply("", [put({**DOCS[0], "attrs": {V + "level": [prop(7)]}})])
        refused = await st.apply("", [put(entity(9, ["Street"], level=[prop(9)]))])
        assert refused[0].error is not None
        assert await st.get("", "urn:x:9") is None
        missed = await st.query("", EntityQuery(q=parse_q("level==9"), expand=expand))
        assert missed.docs == []
        await st.purge("", EntityQuery(types=parse_type_selection(V + "WaterLevelObserved")))

    engine.run(body)
    assert seen == [
        ("urn:x:1", True, False, 1),
        ("urn:x:2", True, False, 1),
        ("urn:x:1", False, False, 1),
        ("urn:x:9", True, False, 1),
        ("urn:x:1", False, True, 0),
        ("urn:x:2", False, True, 0),
    ]


def test_postgresql_change_listeners_run_after_the_commit_and_never_for_a_rollback(
    pg_url: str,
) -> None:
    # what a listener starts (a snapshot rebuild) must read the changed data
    order: list[str] = []

    def hook(change: Change, _n: int) -> None:
        order.append(f"hook {change.entity_id}")
        if change.entity_id == "urn:x:9":
            raise ValueError("hook refuses")

    async def body() -> None:
        st = PostgresStorage(pg_url)
        await st.start()
        try:
            Engine("postgresql", lambda: st).add_hook(st, hook)
            st.add_listener(lambda change: order.append(f"listener {change.entity_id}"))
            outcomes = await st.apply("", [put(DOCS[0]), put(entity(9, ["Street"]))])
            assert outcomes[1].error is not None
            await st.purge("", EntityQuery(types=parse_type_selection(V + "WaterLevelObserved")))
        finally:
            await st.close()

    asyncio.run(body())
    assert order == [
        "hook urn:x:1",
        "listener urn:x:1",
        "hook urn:x:9",  # rolled back: no listener
        "hook urn:x:1",
        "listener urn:x:1",
    ]


# -- PostgreSQL only: migrations and several workers -------------------------------------------
def test_concurrent_upgrades_apply_each_migration_once(pg_url: str) -> None:
    async def body() -> tuple[list[list[int]], list[int], list[int]]:
        results = await asyncio.gather(*(pg_schema.upgrade(pg_url) for _ in range(4)))
        again = await pg_schema.upgrade(pg_url)
        conn = await asyncpg.connect(pg_url)
        try:
            rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        finally:
            await conn.close()
        return sorted(results), again, [r[0] for r in rows]

    results, again, recorded = asyncio.run(body())
    versions = [m.version for m in pg_schema.migrations()]
    assert versions[0] == 1
    assert results == [[], [], [], versions]
    assert again == []
    assert recorded == versions


def test_a_database_from_a_newer_cityos_is_refused(pg_url: str) -> None:
    async def body() -> None:
        await pg_schema.upgrade(pg_url)
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("INSERT INTO schema_migrations(version) VALUES(9999)")
        finally:
            await conn.close()
        st = PostgresStorage(pg_url)
        await st.start()

    with pytest.raises(pg_schema.SchemaError, match="9999"):
        asyncio.run(body())


def test_two_workers_creating_one_entity_both_succeed(pg_url: str) -> None:
    async def body() -> list[bool]:
        workers = [PostgresStorage(pg_url, pool_size=2) for _ in range(2)]
        for w in workers:
            await w.start()
        try:
            outcomes = await asyncio.gather(*(w.apply("", [put(DOCS[0])]) for w in workers * 5))
            assert await workers[1].tenant_exists("")
            result = await workers[0].query("", EntityQuery(count=True))
            assert result.count == 1
        finally:
            for w in workers:
                await w.close()
        return [o[0].created for o in outcomes if o[0].ok]

    created = asyncio.run(body())
    # every write succeeded; exactly one of them created the entity
    assert len(created) == 10
    assert created.count(True) == 1


def test_a_regex_postgresql_cannot_run_is_bad_request_data(pg_url: str) -> None:
    async def body(st: Storage) -> None:
        await load(st)
        query = EntityQuery(q=parse_q("name~=(?P<n>bridge)"), expand=expand)
        with pytest.raises(BadRequestData, match="regular expression"):
            await st.query("", query)
        assert await st.purge("", EntityQuery(id_pattern="urn:x:[14]")) == 2

    Engine("postgresql", lambda: PostgresStorage(pg_url)).run(body)


# -- both engines agree --------------------------------------------------------------------------
_scalars = hs.one_of(
    hs.integers(-3, 3),
    hs.sampled_from([0.5, -1.5, 2.25]),
    hs.text(alphabet="aAbZé1-", max_size=4),
    hs.booleans(),
    hs.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T09:00:00+09:00", "2026-01-02T00:00:00Z"]),
)
_values = hs.one_of(
    _scalars,
    hs.lists(_scalars, max_size=3),
    hs.dictionaries(
        hs.sampled_from(["k", "m"]), hs.one_of(_scalars, hs.lists(_scalars)), max_size=2
    ),
)
_entities = hs.lists(
    hs.dictionaries(hs.sampled_from(["a", "b", "c"]), _values, max_size=3), max_size=6
)


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and not value.startswith("2026"):
        return '"' + value + '"'
    return str(value)


@hs.composite
def _terms(draw: hs.DrawFn) -> str:
    path = draw(hs.sampled_from(["a", "b", "c", "a[k]", "b[m]"]))
    kind = draw(hs.sampled_from(["compare", "compare", "exists", "regex", "range", "list"]))
    if kind == "exists":
        return draw(hs.sampled_from([path, "!" + path]))
    if kind == "regex":
        return path + draw(hs.sampled_from(["~=", "!~="])) + draw(hs.sampled_from(_PATTERNS))
    low = draw(_scalars)
    if kind == "compare":
        return path + draw(hs.sampled_from(["==", "!=", ">", "<", ">=", "<="])) + _literal(low)
    eq = draw(hs.sampled_from(["==", "!="]))
    if kind == "list":
        return f"{path}{eq}{_literal(low)},{_literal(draw(_scalars))}"
    high = draw(hs.integers(-3, 3) if isinstance(low, int | float) else _scalars)
    return f"{path}{eq}{_literal(low)}..{_literal(high)}"


_PATTERNS = ["a", "^A", "(?i)a", "b$", "[0-9]", "é", "^$", "Z", ".-"]
_queries = hs.builds(
    lambda terms, joiners: (
        terms[0] + "".join(j + t for j, t in zip(joiners, terms[1:], strict=False))
    ),
    hs.lists(_terms(), min_size=1, max_size=3),
    hs.lists(hs.sampled_from([";", "|"]), min_size=2, max_size=2),
)


def test_engines_return_the_same_ids_for_random_queries(tmp_path: Path, pg_url: str) -> None:
    loop = asyncio.new_event_loop()
    engines = [SqliteStorage(tmp_path / "p.db"), PostgresStorage(pg_url, pool_size=2)]
    tenants = itertools.count()
    for e in engines:
        loop.run_until_complete(e.start())

    @settings(max_examples=150, deadline=None, database=None)
    @given(values=_entities, text=_queries)
    def check(values: list[dict[str, Any]], text: str) -> None:
        try:
            q = parse_q(text)
        except BadRequestData:
            assume(False)
            return
        docs = [
            entity(i, ["T"], **{k: [prop(v)] for k, v in a.items()}) for i, a in enumerate(values)
        ]
        tenant = f"h{next(tenants)}"

        async def run(st: Storage) -> list[int]:
            outcomes = await st.apply(tenant, [put(d) for d in docs])
            assert all(o.ok for o in outcomes)
            result = await st.query(tenant, EntityQuery(q=q, expand=expand, limit=100, count=True))
            assert result.count == len(result.docs)
            return ids(result.docs)

        found = [loop.run_until_complete(run(e)) for e in engines]
        event("some entities match" if found[0] else "no entity matches")
        assert found[0] == found[1], text

    try:
        check()
    finally:
        for e in engines:
            loop.run_until_complete(e.close())
        loop.close()


_lon = hs.floats(139.55, 139.65)
_lat = hs.floats(36.28, 36.36)


@hs.composite
def _shapes(draw: hs.DrawFn) -> dict[str, Any]:
    lon, lat = draw(_lon), draw(_lat)
    if draw(hs.booleans()):
        return {"type": "Point", "coordinates": [lon, lat]}
    w, h = draw(hs.floats(0.001, 0.03)), draw(hs.floats(0.001, 0.03))
    ring = [[lon, lat], [lon + w, lat], [lon + w, lat + h], [lon, lat + h], [lon, lat]]
    return {"type": "Polygon", "coordinates": [ring]}


@hs.composite
def _geo_queries(draw: hs.DrawFn) -> GeoQuery:
    rel = draw(hs.sampled_from(["near", "within", "intersects", "disjoint"]))
    if rel == "near":
        high = draw(hs.integers(100, 8000))
        low = draw(hs.none() | hs.integers(0, high))
        text = f"near;maxDistance=={high}" + ("" if low is None else f";minDistance=={low}")
        return parse_geoquery(text, "Point", [draw(_lon), draw(_lat)])
    shape = draw(_shapes().filter(lambda s: s["type"] == "Polygon"))
    return parse_geoquery(rel, "Polygon", shape["coordinates"])


def _on_the_edge(query: GeoQuery, shape: dict[str, Any]) -> bool:
    """Return whether a shape lies so close to a near query's circle that the spheroid
    (PostGIS) and the tangent plane (SQLite) may disagree about it."""
    if query.georel != "near":
        return False
    d = query.distance_m(shape)
    limits = [x for x in (query.max_distance, query.min_distance) if x]
    return any(abs(d - x) <= x * 1e-3 + 0.01 for x in limits)


def test_engines_return_the_same_ids_for_random_geo_queries(tmp_path: Path, pg_url: str) -> None:
    loop = asyncio.new_event_loop()
    engines = [SqliteStorage(tmp_path / "g.db"), PostgresStorage(pg_url, pool_size=2)]
    tenants = itertools.count()
    for e in engines:
        loop.run_until_complete(e.start())

    @settings(max_examples=80, deadline=None, database=None)
    @given(shapes=hs.lists(_shapes(), max_size=8), query=_geo_queries())
    def check(shapes: list[dict[str, Any]], query: GeoQuery) -> None:
        docs = [
            entity(i, ["T"], location=[{"type": "GeoProperty", "value": s}])
            for i, s in enumerate(shapes)
        ]
        edge = {i for i, s in enumerate(shapes) if _on_the_edge(query, s)}
        tenant = f"g{next(tenants)}"

        async def run(st: Storage) -> list[int]:
            await st.apply(tenant, [put(d) for d in docs])
            q = EntityQuery(geo=query, geoproperty=V + "location", limit=100)
            return [i for i in ids((await st.query(tenant, q)).docs) if i not in edge]

        found = [loop.run_until_complete(run(e)) for e in engines]
        event("some entities match" if found[0] else "no entity matches")
        assert found[0] == found[1]

    try:
        check()
    finally:
        for e in engines:
            loop.run_until_complete(e.close())
        loop.close()
