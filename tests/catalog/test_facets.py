"""The in-memory facet index (cityos/storage/sqlite_catalog_facets.py) against SQL.

Every search is run twice over one real catalog: with the index (bitsets) and with SQL alone
(`indexed=False`, the reference); counts, facets and pages must be identical.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_client
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from cityos.catalog import search, text
from cityos.storage.sqlite_catalog import CatalogStore, DatasetRow, SearchResult
from cityos.storage.sqlite_catalog_facets import bits_of, rowids_of

WORDS = ["避難", "防災", "公園", "river", "aed", "文化会館", "トイレ"]
TAGS = ["防災", "避難", "観光", "", "AED", "aed", "b", "a"]
FORMATS = ["CSV", "csv", "JSON", "", "GeoJSON", "Csv"]
ORGS = [None, "sano", "kita", "minami"]
LICENSES = [None, "", "cc-by-4.0", "jp-pdl-1.0"]
STATES = ["active", "active", "active", "draft", "deleted"]
FIELDS = sorted(search.FACET_FIELDS)
#: the facet index is the SQLite catalog's; PostgreSQL counts facets in SQL (docs/postgres.md)
SQLITE_INDEX = pytest.mark.sqlite_only("the SQLite catalog's in-memory facet index")


def random_row(i: int, rng: random.Random) -> DatasetRow:
    title = " ".join(rng.sample(WORDS, 2))
    n_res = rng.randint(0, 3)
    doc = {
        "id": f"id-{i}",
        "name": f"ds-{i:03d}",
        "title": title,
        "owner_org": None,
        "private": rng.random() < 0.2,
        "state": rng.choice(STATES),
        "license_id": rng.choice(LICENSES),
        "type": rng.choice(["dataset", "dataset", "harvest"]),
        "metadata_created": f"2026-01-{1 + i % 28:02d}T00:00:00.000000",
        # repeated timestamps: ties in the page order
        "metadata_modified": f"2026-02-{1 + i % 5:02d}T00:00:00.000000",
    }
    return DatasetRow(
        doc=doc,
        org_name=rng.choice(ORGS),
        tags=rng.sample(TAGS, rng.randint(0, 4)),
        groups=rng.sample(["g1", "g2", ""], rng.randint(0, 2)),
        # two resources of one format in a dataset count it once
        resources=[(f"r-{i}-{k}", rng.choice(FORMATS)) for k in range(n_res)],
        fts=(text.index_text(title), text.index_text("notes"), text.index_text("")),
    )


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(tmp_path_factory.mktemp("facets")) as c:
        meta: CatalogStore = c.app.catalog.meta  # type: ignore[attr-defined]
        rng = random.Random(3)

        async def load() -> None:
            for i in range(120):
                assert await meta.save_dataset(random_row(i, rng)) is None

        c.portal.call(load)
        yield c


def run_both(c: TestClient, query: search.Query) -> tuple[SearchResult, SearchResult]:
    meta: CatalogStore = c.app.catalog.meta  # type: ignore[attr-defined]

    async def both() -> tuple[SearchResult, SearchResult]:
        # the first search of a generation counts with SQL, the second builds the index
        await meta.search(make_query(rows=0, facet_fields=[]))
        return await meta.search(query), await meta.search(query, indexed=False)

    got, ref = c.portal.call(both)
    assert meta.facet_index is not None
    return got, ref


def make_query(**kw: Any) -> search.Query:
    base: dict[str, Any] = {
        "where": search.All(),
        "sort": search.parse_sort(None),
        "rows": 10,
        "start": 0,
        "facet_fields": FIELDS,
        "facet_limit": 50,
        "facet_mincount": 1,
        "include_private": False,
        "include_drafts": False,
        "include_deleted": False,
    }
    return search.Query(**{**base, **kw})


QUERIES = st.sampled_from(
    [
        "*:*",
        "避難",
        "river",
        "避難 公園",
        "tags:防災",
        "tags:aed",
        "-tags:防災",
        "res_format:csv",
        "res_format:*",
        "organization:sano OR organization:kita",
        "-organization:sano",
        "license_id:*",
        "groups:g1",
        "name:ds-0*",
        "館",  # one CJK character: the scan fallback
        "title:避難 AND -tags:a",
        "private:true",
        "private:false",
        "type:harvest",
        "state:draft",
        'tags:""',
        "tags:nosuch",
        "tags:防災 OR organization:kita",
        "tags:防災 AND organization:sano AND 避難",
        "(tags:a OR tags:b) license_id:cc-by-4.0",
        "groups:g2 OR river",
        "organization:* tags:AED",
    ]
)


@SQLITE_INDEX
@settings(max_examples=120, deadline=None)
@given(
    q=QUERIES,
    fq=st.none() | QUERIES,
    fields=st.lists(st.sampled_from(FIELDS), unique=True),
    limit=st.sampled_from([-1, 0, 1, 2, 3, 50]),
    mincount=st.sampled_from([-1, 0, 1, 2, 5]),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    start=st.sampled_from([0, 3, 200]),
)
def test_bitset_facets_equal_the_sql_facets(
    catalog: TestClient,
    q: str,
    fq: str | None,
    fields: list[str],
    limit: int,
    mincount: int,
    flags: tuple[bool, bool, bool],
    start: int,
) -> None:
    query = make_query(
        where=search.parse_query(q, [fq] if fq else None),
        facet_fields=fields,
        facet_limit=limit,
        facet_mincount=mincount,
        include_private=flags[0],
        include_drafts=flags[1],
        include_deleted=flags[2],
        start=start,
    )
    got, ref = run_both(catalog, query)
    assert got.count == ref.count
    assert got.facets == ref.facets
    assert got.docs == ref.docs


@SQLITE_INDEX
def test_the_landing_page_facets_count_visible_datasets_only(catalog: TestClient) -> None:
    got, ref = run_both(catalog, make_query(facet_fields=["state", "private", "res_format"]))
    assert got.facets["state"] == [("active", got.count)]  # no drafts or deleted ones
    assert got.facets["private"] == [("false", got.count)]
    # formats keep their spelling as facet values (CSV, csv and Csv apart), as SQL does
    assert {v for v, _ in got.facets["res_format"]} <= set(FORMATS) - {""}
    assert got == ref
    everything = make_query(include_private=True, include_drafts=True, include_deleted=True)
    got, ref = run_both(catalog, everything)
    assert got.count == 120
    assert got == ref


@SQLITE_INDEX
@pytest.mark.parametrize("memory", [0, 4000, 20_000])
def test_values_without_a_bitset_are_counted_exactly(tmp_path: Path, memory: int) -> None:
    """With little memory, rare values live in the tail; counts must not change."""
    with make_client(tmp_path) as c:
        store = c.app.catalog.broker.store  # type: ignore[attr-defined]
        meta = c.app.catalog.meta  # type: ignore[attr-defined]
        small = CatalogStore(store, facet_memory=memory)
        rng = random.Random(memory)

        async def load() -> None:
            for i in range(300):
                row = random_row(i, rng)
                # many tags: a few frequent, hundreds used once
                row.tags = [f"t{i}", f"common{i % 3}", *row.tags]
                assert await meta.save_dataset(row) is None

        c.portal.call(load)
        for q in ("*:*", "避難", "tags:防災", "-tags:common0", "tags:t7", "tags:common1 避難"):
            for limit in (-1, 1, 5, 50):
                query = make_query(where=search.parse_query(q), facet_limit=limit)

                async def both(query: search.Query = query) -> list[SearchResult]:
                    await small.search(make_query(rows=0, facet_fields=[]))
                    return [await small.search(query), await small.search(query, indexed=False)]

                got, ref = c.portal.call(both)
                assert got == ref, (q, limit)
        index = small.facet_index
        assert index is not None
        assert index.size <= memory
        assert bool(index.fields["tags"].tail) == (memory < 20_000)


@SQLITE_INDEX
def test_the_index_follows_writes(tmp_path: Path) -> None:
    with make_client(tmp_path) as c:
        meta: CatalogStore = c.app.catalog.meta  # type: ignore[attr-defined]
        rng = random.Random(9)
        query = make_query(facet_fields=["tags"])

        async def write_then_search(i: int) -> list[SearchResult]:
            row = random_row(i, rng)
            row.doc["state"], row.doc["private"] = "active", False
            row.tags = ["new", f"n{i}"]
            assert await meta.save_dataset(row) is None
            # the first search after a write counts with SQL, the second with a new index
            return [await meta.search(query), await meta.search(make_query(rows=5))]

        for i in range(4):
            first, second = c.portal.call(write_then_search, i)
            assert first.facets == {"tags": second.facets["tags"]}
            assert dict(second.facets["tags"])["new"] == i + 1
            assert second.count == i + 1
        index = meta.facet_index
        assert index is not None
        assert index.build_s < 1


@given(st.sets(st.integers(min_value=0, max_value=5000)))
def test_bitsets_round_trip(rowids: set[int]) -> None:
    bits = bits_of(sorted(rowids))
    assert bits.bit_count() == len(rowids)
    assert rowids_of(bits) == sorted(rowids)
