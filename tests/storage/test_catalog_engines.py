"""The catalog's metadata store (datasets, groups, tokens, search), alike on SQLite and PostgreSQL.

PostgreSQL tests are skipped when no server answers (tests/conftest.py), and fail instead
when CITYOS_REQUIRE_SERVICES=1. The last tests load one random catalog into both engines and
require the same counts, facets and pages in the same order (bm25 ranking included).
"""

from __future__ import annotations

import asyncio
import inspect
import random
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import pg_schema_url
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityos.catalog import search, text
from cityos.storage.base import Storage
from cityos.storage.pg_catalog import PgCatalogStore
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import SqliteStorage
from cityos.storage.sqlite_catalog import CatalogStore, DatasetRow, SearchResult

T0 = "2026-01-01T00:00:00.000000"


@dataclass
class Engine:
    """One engine under test: opens catalog stores (one per simulated worker) on one database."""

    name: str
    make: Callable[[], Storage]

    async def open(self) -> tuple[Storage, Any]:
        st = self.make()
        await st.start()
        meta: Any
        if isinstance(st, SqliteStorage):
            meta = CatalogStore(st)
        else:
            assert isinstance(st, PostgresStorage)
            meta = PgCatalogStore(st)
        await meta.setup()
        return st, meta

    def run_many(self, n: int, body: Callable[[list[Any]], Awaitable[Any]]) -> Any:
        """Await body(n stores on one database, as n workers would have); close them."""

        async def main() -> Any:
            opened: list[tuple[Storage, Any]] = []
            try:
                for _ in range(n):
                    opened.append(await self.open())
                return await body([meta for _, meta in opened])
            finally:
                for st, _ in opened:
                    await st.close()

        return asyncio.run(main())

    def run(self, body: Callable[[Any], Awaitable[Any]]) -> Any:
        return self.run_many(1, lambda metas: body(metas[0]))


def sqlite_engine(path: Path) -> Engine:
    return Engine("sqlite", lambda: SqliteStorage(path))


def pg_engine(url: str) -> Engine:
    return Engine("postgresql", lambda: PostgresStorage(url, pool_size=4))


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """Yield each engine in turn, on a fresh empty database."""
    if request.param == "sqlite":
        return sqlite_engine(tmp_path / "cityos.db")
    return pg_engine(request.getfixturevalue("pg_url"))


def row(
    name: str,
    title: str = "",
    notes: str = "",
    *,
    tags: tuple[str, ...] = (),
    groups: tuple[str, ...] = (),
    resources: tuple[tuple[str, str], ...] = (),
    org: str | None = None,
    body: str = "",
    **doc: Any,
) -> DatasetRow:
    """Return a dataset row as package_create makes it (index text from cityos.catalog.text)."""
    full = {
        "id": "id-" + name,
        "name": name,
        "title": title,
        "notes": notes,
        "owner_org": None if org is None else "org-" + org,
        "private": False,
        "state": "active",
        "license_id": None,
        "type": "dataset",
        "metadata_created": T0,
        "metadata_modified": T0,
        **doc,
    }
    return DatasetRow(
        doc=full,
        org_name=org,
        tags=list(tags),
        groups=list(groups),
        resources=list(resources),
        fts=(text.index_text(title), text.index_text(notes), text.index_text(name, *tags, body)),
    )


def query(q: str | None = None, fq: list[str] | None = None, **kw: Any) -> search.Query:
    base: dict[str, Any] = {
        "where": search.parse_query(q, fq),
        "sort": search.parse_sort(kw.pop("sort", None)),
        "rows": 100,
        "start": 0,
        "facet_fields": [],
        "facet_limit": 50,
        "facet_mincount": 1,
        "include_private": False,
        "include_drafts": False,
        "include_deleted": False,
    }
    return search.Query(**{**base, **kw})


def names(result: SearchResult) -> list[str]:
    return [d["name"] for d in result.docs]


# -- the twins answer the same calls ---------------------------------------------------------


def test_the_postgresql_store_has_the_sqlite_stores_methods() -> None:
    skip = {"dump_rows", "load_rows", "DUMP_TABLES"}  # dumps are SQLite-only for now
    found = {n for n in vars(CatalogStore) if not n.startswith("_") and n not in skip}
    for name in sorted(found | {"__init__"}):
        ours, theirs = getattr(CatalogStore, name), getattr(PgCatalogStore, name)
        if isinstance(ours, property):
            assert isinstance(theirs, property), name
            continue
        assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs), name
        skip_first = 2 if name == "__init__" else 0
        params = list(inspect.signature(ours).parameters.values())[skip_first:]
        assert params == list(inspect.signature(theirs).parameters.values())[skip_first:], name
        assert (
            inspect.signature(ours).return_annotation == inspect.signature(theirs).return_annotation
        ), name


# -- tokens ----------------------------------------------------------------------------------


def test_tokens_find_their_user_list_oldest_first_and_revoke_by_unique_prefix(
    engine: Engine,
) -> None:
    async def body(meta: Any) -> None:
        first = await meta.create_token("admin")
        second = await meta.create_token("佐野市")
        assert first.startswith("cityos_")
        assert await meta.user_for_token(first) == "admin"
        assert await meta.user_for_token(second) == "佐野市"
        assert await meta.user_for_token(first + "x") is None
        listed = await meta.list_tokens()
        assert [(t.prefix, t.user) for t in listed] == [
            (first[:14], "admin"),
            (second[:14], "佐野市"),
        ]
        assert listed[0].last_used is not None  # touched by the lookup above
        # "cityos_" is a prefix of both: nothing is revoked, both are shown
        assert len(await meta.revoke_tokens("cityos_")) == 2
        assert await meta.revoke_tokens("") == []
        gone = await meta.revoke_tokens(second[:12])
        assert [t.user for t in gone] == ["佐野市"]
        assert await meta.user_for_token(second) is None
        assert [t.user for t in await meta.list_tokens()] == ["admin"]

    engine.run(body)


# -- organizations and groups ----------------------------------------------------------------


def group_doc(name: str, title: str, **extra: Any) -> dict[str, Any]:
    return {"id": "org-" + name, "name": name, "title": title, "created": T0, **extra}


def test_groups_are_saved_found_counted_sorted_and_titled(engine: Engine) -> None:
    async def body(meta: Any) -> None:
        assert await meta.save_group(group_doc("sano", "佐野市"), is_org=True)
        assert await meta.save_group(group_doc("kita", "beta"), is_org=True)
        assert await meta.save_group(group_doc("minami", "Alpha"), is_org=True)
        assert await meta.save_group(group_doc("old", "old", state="deleted"), is_org=True)
        # one name space for organizations and groups
        assert not await meta.save_group({**group_doc("sano", "x"), "id": "g-x"}, is_org=False)
        assert await meta.save_group({**group_doc("bosai", "防災"), "id": "g-b"}, is_org=False)
        for i, (org, private) in enumerate([("sano", False), ("sano", False), ("kita", True)]):
            r = row(f"ds-{i}", org=org, groups=("bosai",), private=private)
            assert await meta.save_dataset(r) is None

        sano = await meta.get_group("sano", is_org=True)
        assert sano["title"] == "佐野市"
        assert sano["package_count"] == 2
        assert (await meta.get_group("org-kita", is_org=True))["package_count"] == 0  # private
        assert await meta.get_group("sano", is_org=False) is None
        assert (await meta.get_group("bosai", is_org=False))["package_count"] == 2

        async def listed(sort: str, desc: bool = False, **kw: Any) -> list[str]:
            args = {"limit": 10, "offset": 0, "names": [], **kw}
            found = await meta.list_groups(is_org=True, sort=sort, desc=desc, **args)
            return [g["name"] for g in found]

        assert await listed("name") == ["kita", "minami", "sano"]
        # titles compare without ASCII case, as SQLite's NOCASE
        assert await listed("title") == ["minami", "kita", "sano"]
        assert await listed("package_count", desc=True) == ["sano", "kita", "minami"]
        assert await listed("name", desc=True, limit=1, offset=1) == ["minami"]
        assert await listed("name", names=["sano", "old", "nosuch"]) == ["sano"]
        assert await meta.group_titles(["sano", "old", "bosai"], is_org=True) == {"sano": "佐野市"}
        assert await meta.group_titles([], is_org=True) == {}

        renamed = {**group_doc("sano-shi", "佐野市役所"), "id": "org-sano"}
        assert await meta.save_group(renamed, is_org=True)
        # by id: the same organization under a new name
        assert await meta.get_group("sano", is_org=True) is None
        assert (await meta.get_group("sano-shi", is_org=True))["package_count"] == 2

    engine.run(body)


# -- datasets --------------------------------------------------------------------------------


def test_datasets_are_saved_found_and_refused_on_conflicts(engine: Engine) -> None:
    async def body(meta: Any) -> None:
        first = row("river", "河川水位", resources=(("r1", "CSV"),), tags=("防災", "Water"))
        assert await meta.save_dataset(first) is None
        assert await meta.get_dataset("river") == first.doc
        assert await meta.get_dataset("id-river") == first.doc
        assert await meta.dataset_of_resource("r1") == first.doc
        assert await meta.get_dataset("nosuch") is None
        assert await meta.dataset_of_resource("nosuch") is None

        # another dataset may not take the name or a resource id; nothing of it is stored
        clash = row("other", "x", resources=(("r2", "CSV"), ("r1", "JSON")))
        assert await meta.save_dataset(clash) == "resources"
        assert await meta.dataset_of_resource("r2") is None
        assert await meta.get_dataset("other") is None
        taken = row("river", "x")
        taken.doc["id"] = "id-other"
        assert await meta.save_dataset(taken) == "name"
        assert await meta.get_dataset("id-other") is None

        # an update must name the version it read
        changed = row("river", "河川水位 (改)", resources=(("r1", "JSON"),))
        changed.doc["metadata_modified"] = "2026-02-01T00:00:00.000000"
        assert await meta.save_dataset(changed, expect_modified="2025-01-01") == "stale"
        assert await meta.save_dataset(changed, expect_modified=T0) is None
        assert (await meta.get_dataset("river"))["title"] == "河川水位 (改)"
        assert await meta.save_dataset(row("new"), expect_modified=T0) == "stale"

    engine.run(body)


def test_names_and_tags_list_public_active_datasets_in_code_point_order(engine: Engine) -> None:
    async def body(meta: Any) -> None:
        for r in [
            row("b-set", tags=("Water", "防災")),
            row("a-set", tags=("water", "aed")),
            row("Z-set", tags=("Zebra",)),
            row("hidden", tags=("secret",), private=True),
            row("gone", tags=("old",), state="deleted"),
        ]:
            assert await meta.save_dataset(r) is None
        assert await meta.list_names(None, 0) == ["Z-set", "a-set", "b-set"]
        assert await meta.list_names(1, 1) == ["a-set"]
        assert await meta.tag_names(None) == ["Water", "Zebra", "aed", "water", "防災"]
        assert await meta.tag_names("WAT") == ["Water", "water"]
        assert await meta.tag_names("防") == ["防災"]

    engine.run(body)


# -- search ----------------------------------------------------------------------------------

CATALOG = [
    row(
        "evacuation-sites",
        "指定緊急避難場所一覧",
        "佐野市文化会館ほか、洪水時の避難先",
        tags=("避難", "防災"),
        groups=("bosai",),
        org="sano",
        license_id="jp-pdl-1.0",
        resources=(("r-evac", "CSV"),),
        body="一覧",
    ),
    row(
        "aed-locations",
        "ＡＥＤ設置箇所一覧",
        "市内の公共施設に設置された自動体外式除細動器",
        tags=("AED", "防災"),
        org="sano",
        license_id="cc-by-4.0",
        resources=(("r-aed", "JSON"),),
    ),
    row(
        "public-toilets",
        "公衆トイレ一覧",
        "Public toilets of Sano City",
        tags=("トイレ",),
        org="sano",
        license_id="cc-by-4.0",
        metadata_modified="2026-03-01T00:00:00.000000",
    ),
    row("secret-plan", "非公開 避難計画", org="sano", private=True),
    row("draft-shelters", "避難所 下書き", state="draft"),
]


def with_catalog(engine: Engine, body: Callable[[Any], Awaitable[Any]]) -> Any:
    async def run(meta: Any) -> Any:
        for r in CATALOG:
            assert await meta.save_dataset(r) is None
        return await body(meta)

    return engine.run(run)


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("文化会館", ["evacuation-sites"]),  # inside 佐野市文化会館
        ("避難", ["evacuation-sites"]),  # a two-character word
        ("除細動器", ["aed-locations"]),
        ("aed", ["aed-locations"]),  # ＡＥＤ in the title, NFKC-normalized
        ("ＡＥＤ", ["aed-locations"]),
        ("toilets sano", ["public-toilets"]),  # all words must match
        ("toilets 避難", []),
        ('"一覧"', ["aed-locations", "evacuation-sites", "public-toilets"]),
        ('"緊急 避難"', []),  # a phrase: its tokens next to each other
        ("市", ["aed-locations", "evacuation-sites"]),  # one character: the scan fallback
        ("館", ["evacuation-sites"]),
        ("title:館", []),
        ("title:一覧 AND notes:toilets", ["public-toilets"]),
        ("notes:一覧", []),
        ("tags:防災", ["aed-locations", "evacuation-sites"]),
        ("tags:防災 -tags:AED", ["evacuation-sites"]),
        ("tags:防*", ["aed-locations", "evacuation-sites"]),
        ("tags:aed", []),  # tags are exact
        ("groups:bosai", ["evacuation-sites"]),
        ("res_format:csv", ["evacuation-sites"]),  # formats ignore ASCII case
        ("res_format:JS*", ["aed-locations"]),
        ("res_format:*", ["aed-locations", "evacuation-sites"]),
        ("license_id:cc-by-4.0", ["aed-locations", "public-toilets"]),
        ("-license_id:cc-by-4.0", ["evacuation-sites"]),
        ("organization:sano", ["aed-locations", "evacuation-sites", "public-toilets"]),
        ("name:aed-locations OR name:public-toilets", ["aed-locations", "public-toilets"]),
        ("name:aed-*", ["aed-locations"]),
        ("metadata_modified:[2026-02-01 TO *]", ["public-toilets"]),
        ("metadata_modified:[* TO 2026-01-31]", ["aed-locations", "evacuation-sites"]),
        ("・", ["aed-locations", "evacuation-sites", "public-toilets"]),
        ("*:*", ["aed-locations", "evacuation-sites", "public-toilets"]),
    ],
)
def test_search_finds_japanese_and_field_terms(engine: Engine, q: str, expected: list[str]) -> None:
    async def body(meta: Any) -> SearchResult:
        result: SearchResult = await meta.search(query(q, sort="name asc"))
        return result

    found = with_catalog(engine, body)
    assert names(found) == expected
    assert found.count == len(expected)


def test_private_drafts_and_deleted_datasets_need_asking(engine: Engine) -> None:
    async def body(meta: Any) -> list[list[str]]:
        return [
            names(await meta.search(query("避難", sort="name asc", **flags)))
            for flags in (
                {},
                {"include_private": True},
                {"include_drafts": True},
                {"include_private": True, "include_drafts": True},
            )
        ]

    assert with_catalog(engine, body) == [
        ["evacuation-sites"],
        ["evacuation-sites", "secret-plan"],
        ["draft-shelters", "evacuation-sites"],
        ["draft-shelters", "evacuation-sites", "secret-plan"],
    ]


def test_facets_count_limit_and_mincount(engine: Engine) -> None:
    async def body(meta: Any) -> list[SearchResult]:
        fields = ["tags", "organization", "license_id", "res_format", "groups", "private"]
        return [
            await meta.search(query(rows=0, facet_fields=fields)),
            await meta.search(query(facet_fields=["tags"], facet_limit=1)),
            await meta.search(query(facet_fields=["tags"], facet_mincount=2)),
            await meta.search(query("避難", facet_fields=["state"], include_drafts=True)),
        ]

    every, limited, mincount, states = with_catalog(engine, body)
    assert every.count == 3
    assert every.docs == []
    assert every.facets == {
        "tags": [("防災", 2), ("AED", 1), ("トイレ", 1), ("避難", 1)],
        "organization": [("sano", 3)],
        "license_id": [("cc-by-4.0", 2), ("jp-pdl-1.0", 1)],
        "res_format": [("CSV", 1), ("JSON", 1)],
        "groups": [("bosai", 1)],
        "private": [("false", 3)],
    }
    assert limited.facets == {"tags": [("防災", 2)]}
    assert mincount.facets == {"tags": [("防災", 2)]}
    assert states.facets == {"state": [("active", 1), ("draft", 1)]}


def test_pages_follow_the_sort_then_the_name(engine: Engine) -> None:
    async def body(meta: Any) -> list[list[str]]:
        return [
            names(await meta.search(query(sort="name asc", rows=1, start=i))) for i in range(3)
        ] + [
            names(await meta.search(query(sort="title asc"))),
            names(await meta.search(query(sort="metadata_modified desc"))),
            names(await meta.search(query(sort="num_resources asc, name desc"))),
            names(await meta.search(query(sort="name asc", start=5))),
        ]

    assert with_catalog(engine, body) == [
        ["aed-locations"],
        ["evacuation-sites"],
        ["public-toilets"],
        # ＡＥＤ sorts as aed (NFKC), before kana and kanji
        ["aed-locations", "public-toilets", "evacuation-sites"],
        # the newest first, then ties by name
        ["public-toilets", "aed-locations", "evacuation-sites"],
        ["public-toilets", "evacuation-sites", "aed-locations"],
        [],
    ]


def test_the_best_match_comes_first(engine: Engine) -> None:
    async def body(meta: Any) -> list[list[str]]:
        for r in [
            row("once", "水位", "河川の観測", body="other words here"),
            row("twice", "水位 水位", "河川"),
            row("title-only", "河川 水位 計測 地点", ""),
            row("unrelated", "公園", "トイレ"),
        ]:
            assert await meta.save_dataset(r) is None
        return [
            names(await meta.search(query("水位"))),
            names(await meta.search(query("水位", sort="score asc, name asc"))),
            names(await meta.search(query("河川 水位"))),
        ]

    best, worst, both = engine.run(body)
    assert best == ["twice", "title-only", "once"]  # more occurrences, shorter text first
    assert worst == list(reversed(best))
    assert both[0] == "twice"


def test_a_search_sees_a_write_of_another_worker_at_once(engine: Engine) -> None:
    async def body(metas: list[Any]) -> None:
        a, b = metas
        facets = ["tags"]
        assert (await a.search(query("公園", facet_fields=facets))).count == 0
        assert await b.save_dataset(row("parks", "都市公園一覧", tags=("公園",))) is None
        found = await a.search(query("公園", facet_fields=facets))
        assert names(found) == ["parks"]
        assert found.facets == {"tags": [("公園", 1)]}
        again = await a.search(query("公園", facet_fields=facets))
        assert again == found  # cached now
        # a group write bumps the generation too; then a change of the dataset is seen
        assert await b.save_group(group_doc("sano", "佐野市"), is_org=True)
        changed = row("parks", "都市公園一覧", tags=("緑地",))
        assert await b.save_dataset(changed, expect_modified=T0) is None
        assert (await a.search(query("公園", facet_fields=facets))).facets == {
            "tags": [("緑地", 1)]
        }

    engine.run_many(2, body)


def test_two_workers_racing_for_a_name_or_a_version_get_one_success(engine: Engine) -> None:
    async def body(metas: list[Any]) -> None:
        a, b = metas
        mine, theirs = row("shelters", "避難所"), row("shelters", "避難所 (別)")
        theirs.doc["id"] = "id-theirs"
        results = await asyncio.gather(a.save_dataset(mine), b.save_dataset(theirs))
        assert sorted(results, key=str) == [None, "name"]
        kept = await a.get_dataset("shelters")
        # both read version T0 and write their change: the second is stale
        edits = []
        for title in ("一", "二"):
            edit = row("shelters", title)
            edit.doc["id"] = kept["id"]
            edit.doc["metadata_modified"] = "2026-05-01T00:00:00.000000"
            edits.append(edit)
        results = await asyncio.gather(
            a.save_dataset(edits[0], expect_modified=T0),
            b.save_dataset(edits[1], expect_modified=T0),
        )
        assert sorted(results, key=str) == [None, "stale"]
        assert (await b.search(query("避難所"))).count == 0  # the title was replaced

    engine.run_many(2, body)


def test_cached_results_cannot_be_changed_through_a_returned_result(engine: Engine) -> None:
    async def body(meta: Any) -> SearchResult:
        assert await meta.save_dataset(row("river", "河川水位", tags=("防災",))) is None
        first = await meta.search(query("水位", facet_fields=["tags"]))
        first.docs[0]["title"] = "changed by a caller"
        first.facets["tags"].append(("x", 1))
        result: SearchResult = await meta.search(query("水位", facet_fields=["tags"]))
        return result

    again = engine.run(body)
    assert again.docs[0]["title"] == "河川水位"
    assert again.facets == {"tags": [("防災", 1)]}


# -- the same catalog on both engines gives the same answers ---------------------------------

WORDS = ["避難", "防災", "公園", "river", "aed", "文化会館", "トイレ", "水位", "避難所"]
TAGS = ["防災", "避難", "観光", "", "AED", "aed", "b", "a"]
FORMATS = ["CSV", "csv", "JSON", "", "GeoJSON", "Csv"]


def random_row(i: int, rng: random.Random) -> DatasetRow:
    title = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
    notes = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 6)))
    return row(
        f"ds-{i:03d}",
        title,
        notes,
        tags=tuple(rng.sample(TAGS, rng.randint(0, 4))),
        groups=tuple(rng.sample(["g1", "g2", ""], rng.randint(0, 2))),
        resources=tuple((f"r-{i}-{k}", rng.choice(FORMATS)) for k in range(rng.randint(0, 3))),
        org=rng.choice([None, "sano", "kita"]),
        body=" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 3))),
        private=rng.random() < 0.2,
        state=rng.choice(["active", "active", "active", "draft", "deleted"]),
        license_id=rng.choice([None, "", "cc-by-4.0"]),
        type=rng.choice(["dataset", "harvest"]),
        metadata_modified=f"2026-02-{1 + i % 5:02d}T00:00:00.000000",
    )


QUERIES = [
    "*:*", "避難", "避難所", "river", "避難 公園", '"避難 防災"', "title:避難", "notes:水位",
    "tags:防災", "-tags:防災", "res_format:csv", "organization:sano OR organization:kita",
    "license_id:*", "groups:g1", "name:ds-0*", "館", "title:避難 AND -tags:a", "private:true",
    "type:harvest", "state:draft", "tags:防災 AND organization:sano AND 避難",
    "(tags:a OR tags:b) license_id:cc-by-4.0", "groups:g2 OR river", "文化会館 river",
]  # fmt: skip


@pytest.fixture(scope="module")
def both_engines(
    tmp_path_factory: pytest.TempPathFactory, pg_database: str
) -> tuple[Engine, Engine]:
    engines = (
        sqlite_engine(tmp_path_factory.mktemp("catalog") / "cityos.db"),
        pg_engine(pg_schema_url(pg_database)),
    )
    for engine in engines:

        async def load(meta: Any) -> None:
            rng = random.Random(5)
            for i in range(150):
                assert await meta.save_dataset(random_row(i, rng)) is None

        engine.run(load)
    return engines


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    q=st.sampled_from(QUERIES),
    fq=st.none() | st.sampled_from(QUERIES),
    sort=st.sampled_from(
        [None, "score asc, name desc", "title asc", "num_tags desc", "metadata_created desc"]
    ),
    fields=st.lists(st.sampled_from(sorted(search.FACET_FIELDS)), unique=True),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    start=st.sampled_from([0, 7]),
)
def test_both_engines_answer_alike_in_the_same_order(
    both_engines: tuple[Engine, Engine],
    q: str,
    fq: str | None,
    sort: str | None,
    fields: list[str],
    flags: tuple[bool, bool, bool],
    start: int,
) -> None:
    made = query(
        q, [fq] if fq else None, sort=sort, rows=25, start=start, facet_fields=fields,
        include_private=flags[0], include_drafts=flags[1], include_deleted=flags[2],
    )  # fmt: skip

    async def body(meta: Any) -> SearchResult:
        result: SearchResult = await meta.search(made, indexed=False)
        return result

    lite, pg = (engine.run(body) for engine in both_engines)
    assert pg.count == lite.count
    assert pg.facets == lite.facets
    assert names(pg) == names(lite)
    assert pg.docs == lite.docs


# -- dumps: either engine's dump loads into the other ----------------------------------------


def _sqlite_dump(path: Path) -> list[tuple[str, Any]]:
    conn = sqlite3.connect(path)
    try:
        return list(CatalogStore.dump_rows(conn))
    finally:
        conn.close()


async def _pg_dump(meta: Any) -> list[tuple[str, Any]]:
    async with meta._store.pool.acquire() as conn:
        return [item async for item in PgCatalogStore.dump_rows(conn)]


def _by_section(dump: list[tuple[str, Any]]) -> dict[str, list[Any]]:
    """Return each section's rows, sorted (resources may be listed in another order)."""
    out: dict[str, list[Any]] = {}
    for section, r in dump:
        out.setdefault(section, []).append(sorted(r.items()))
    return {k: sorted(v) for k, v in out.items()}


def test_a_dump_of_either_engine_loads_into_the_other(tmp_path: Path, pg_database: str) -> None:
    assert tuple(t[0] for t in CatalogStore.DUMP_TABLES) == PgCatalogStore.DUMP_SECTIONS
    lite_path = tmp_path / "from.db"
    lite, pg = sqlite_engine(lite_path), pg_engine(pg_schema_url(pg_database))
    made = query("避難", facet_fields=["tags", "res_format", "organization"], include_drafts=True)

    async def fill(meta: Any) -> SearchResult:
        rng = random.Random(8)
        for i in range(40):
            assert await meta.save_dataset(random_row(i, rng)) is None
        assert await meta.save_group(group_doc("sano", "佐野市"), is_org=True)
        await meta.create_token("admin")
        result: SearchResult = await meta.search(made)
        return result

    expected = lite.run(fill)
    dump = _sqlite_dump(lite_path)
    assert {s for s, _ in dump} == set(PgCatalogStore.DUMP_SECTIONS)

    async def load_pg(meta: Any) -> tuple[SearchResult, list[tuple[str, Any]], Any]:
        async with meta._store.pool.acquire() as conn, conn.transaction():
            for section in PgCatalogStore.DUMP_SECTIONS:
                rows = [r for s, r in dump if s == section]
                await PgCatalogStore.load_rows(conn, section, rows)
        found, back = await meta.search(made), await _pg_dump(meta)
        # a dataset made after the load takes a new key
        assert await meta.save_dataset(row("later", "後から")) is None
        return found, back, await meta.search(query("後から"))

    loaded, back, later = pg.run(load_pg)
    assert loaded == expected
    assert _by_section(back) == _by_section(dump)
    assert names(later) == ["later"]

    # and back into SQLite
    target = tmp_path / "to.db"

    async def load_lite(meta: Any) -> SearchResult:
        def run(conn: sqlite3.Connection) -> None:
            for section in PgCatalogStore.DUMP_SECTIONS:
                CatalogStore.load_rows(conn, section, [r for s, r in back if s == section])

        await meta._store.write(run)
        result: SearchResult = await meta.search(made)
        return result

    assert sqlite_engine(target).run(load_lite) == expected
