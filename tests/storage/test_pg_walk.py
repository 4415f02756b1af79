"""PostgreSQL's walks of a type or a value (pg_walk.page, value_page) and its near pages
(pg_walk.near_page) give the pages SQLite gives, whatever the types, values, pages and budget.

A walk checks a type's entities in creation order by their first type; entities with the type
second, pages short of the limit and walks that run out of budget must all still come out as
the planner's plan would have them. Skipped when no PostgreSQL server answers.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import hypothesis.strategies as hs
import pytest
from hypothesis import assume, event, given, settings
from test_engines import V, _geo_queries, _queries, _shapes, entity, expand, ids, put

from cityos.broker.errors import BadRequestData
from cityos.broker.geo import GeoQuery, meters_per_degree, parse_geoquery
from cityos.broker.qlang import parse_q
from cityos.broker.typesel import parse_type_selection
from cityos.storage import pg_walk
from cityos.storage.base import EntityQuery, Storage
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import SqliteStorage

_TYPES = [["T"], ["T"], ["T"], ["U"], ["U", "T"], ["T", "U"]]
_values = hs.one_of(hs.integers(-3, 3), hs.sampled_from(["a", "b", "Z"]))
_entities = hs.lists(
    hs.tuples(
        hs.sampled_from(range(len(_TYPES))),
        hs.dictionaries(hs.sampled_from(["a", "b", "c"]), _values, max_size=3),
    ),
    max_size=12,
)


class _Engines:
    """SQLite (the reference) and PostgreSQL side by side, a fresh tenant per example."""

    def __init__(self, tmp_path: Path, pg_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.stores: list[Storage] = [
            SqliteStorage(tmp_path / "ref.db"),
            PostgresStorage(pg_url, pool_size=2),
        ]
        self.tenants = itertools.count()
        for st in self.stores:
            self.loop.run_until_complete(st.start())

    def pages(self, docs: list[dict[str, Any]], query: EntityQuery) -> list[list[int]]:
        tenant = f"w{next(self.tenants)}"

        async def run(st: Storage) -> list[int]:
            assert all(o.ok for o in await st.apply(tenant, [put(d) for d in docs]))
            return ids((await st.query(tenant, query)).docs)

        return [self.loop.run_until_complete(run(st)) for st in self.stores]

    def close(self) -> None:
        for st in self.stores:
            self.loop.run_until_complete(st.close())
        self.loop.close()


@pytest.fixture
def engines(tmp_path: Path, pg_url: str) -> Any:
    both = _Engines(tmp_path, pg_url)
    yield both
    both.close()


def test_walks_by_type_give_the_planners_pages(
    engines: _Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    @settings(max_examples=150, deadline=None, database=None)
    @given(
        rows=_entities,
        text=hs.none() | _queries,
        type_name=hs.sampled_from(["T", "U"]),
        limit=hs.integers(1, 5),
        offset=hs.integers(0, 4),
        budget=hs.sampled_from([1, 2, pg_walk.WALK_BUDGET]),
    )
    def check(
        rows: list[tuple[int, dict[str, Any]]],
        text: str | None,
        type_name: str,
        limit: int,
        offset: int,
        budget: int,
    ) -> None:
        try:
            q = None if text is None else parse_q(text)
        except BadRequestData:
            assume(False)
            return
        # a budget below the page makes the walk give up and hand over to the planner
        monkeypatch.setattr(pg_walk, "WALK_BUDGET", budget)
        monkeypatch.setattr(pg_walk, "BUDGET_PER_ROW", 1 if budget < 4 else 4)
        docs = [
            entity(i, _TYPES[t], **{k: [{"type": "Property", "value": v}] for k, v in a.items()})
            for i, (t, a) in enumerate(rows)
        ]
        query = EntityQuery(
            types=parse_type_selection(type_name),
            q=q,
            expand=expand,
            limit=limit,
            offset=offset,
        )
        reference, walked = engines.pages(docs, query)
        event("a full page" if len(reference) == limit else "a short page")
        assert walked == reference, (text, type_name, limit, offset, budget)

    check()


def test_a_walk_finds_an_entity_whose_type_comes_second(engines: _Engines) -> None:
    docs = [
        entity(i, ["U"] if i % 2 else ["T"], level=[{"type": "Property", "value": i}])
        for i in range(6)
    ]
    docs[1] = entity(1, ["U", "T"], level=[{"type": "Property", "value": 1}])
    query = EntityQuery(types=parse_type_selection("T"), expand=expand, limit=3)
    assert engines.pages(docs, query) == [[0, 1, 2], [0, 1, 2]]


def _spot(i: int, lon: float, lat: float, types: list[str], kind: str) -> dict[str, Any]:
    return entity(
        i,
        types,
        kind=[{"type": "Property", "value": kind}],
        location=[{"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}],
    )


def _typed_geo_query(geo: GeoQuery, limit: int, offset: int, q: Any = None) -> EntityQuery:
    return EntityQuery(
        types=parse_type_selection("T"),
        q=q,
        geo=geo,
        geoproperty=V + "location",
        expand=expand,
        limit=limit,
        offset=offset,
    )


def _same_page(engines: _Engines, docs: list[dict[str, Any]], query: EntityQuery) -> None:
    reference, found = engines.pages(docs, query)
    event("a full page" if len(reference) == query.limit else "a short page")
    assert found == reference, query.geo


def test_near_pages_match_however_the_types_and_values_lie(engines: _Engines) -> None:
    @settings(max_examples=80, deadline=None, database=None)
    @given(
        spots=hs.lists(
            hs.tuples(
                hs.floats(139.55, 139.65),
                hs.floats(36.28, 36.36),
                hs.sampled_from(range(len(_TYPES))),
                hs.sampled_from(["x", "y"]),
            ),
            max_size=15,
        ),
        center=hs.tuples(hs.floats(139.55, 139.65), hs.floats(36.28, 36.36)),
        meters=hs.integers(100, 9000),
        with_q=hs.booleans(),
        limit=hs.integers(1, 4),
        offset=hs.integers(0, 3),
    )
    def check(
        spots: list[tuple[float, float, int, str]],
        center: tuple[float, float],
        meters: int,
        with_q: bool,
        limit: int,
        offset: int,
    ) -> None:
        near = parse_geoquery(f"near;maxDistance=={meters}", "Point", list(center))
        docs = [_spot(i, x, y, _TYPES[t], k) for i, (x, y, t, k) in enumerate(spots)]
        # points on the circle's edge or at equal distances may fall either way (spheroid vs
        # tangent plane): keep examples clear of both
        dists = sorted(near.distance_m(d["attrs"][V + "location"][0]["value"]) for d in docs)
        assume(all(abs(d - meters) > meters * 1e-3 + 0.01 for d in dists))
        assume(all(b - a > 0.5 for a, b in itertools.pairwise(dists)))
        q = parse_q('kind=="x"') if with_q else None
        _same_page(engines, docs, _typed_geo_query(near, limit, offset, q))

    check()


def test_a_walk_out_of_budget_hands_the_query_to_the_planner(
    engines: _Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_walk, "WALK_BUDGET", 3)
    monkeypatch.setattr(pg_walk, "BUDGET_PER_ROW", 1)
    docs = [entity(i, ["T"], level=[{"type": "Property", "value": i}]) for i in range(10)]
    query = EntityQuery(
        types=parse_type_selection("T"), q=parse_q("level>6"), expand=expand, limit=2
    )
    # the walk sees entities 0-2 only, none matches: a short page it cannot vouch for
    assert engines.pages(docs, query) == [[7, 8], [7, 8]]


def _kind(i: int, types: list[str], value: str) -> dict[str, Any]:
    return entity(i, types, kind=[{"type": "Property", "value": value}])


def test_a_value_walk_merges_a_term_and_its_expansion_in_creation_order(
    engines: _Engines,
) -> None:
    # "x" is stored as written by some and expanded (as a VocabProperty stores it) by others
    docs = [_kind(i, ["T"], "x" if i % 3 else V + "x") for i in range(9)]
    docs[4] = _kind(4, ["T"], "y")
    query = EntityQuery(q=parse_q('kind=="x"'), expand=expand, limit=5, offset=1)
    assert engines.pages(docs, query) == [[1, 2, 3, 5, 6], [1, 2, 3, 5, 6]]


def test_a_value_walk_out_of_budget_hands_the_query_to_the_planner(
    engines: _Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_walk, "WALK_BUDGET", 4)
    monkeypatch.setattr(pg_walk, "BUDGET_PER_ROW", 1)
    # "x" is held by entities of type U first: a walk of "x" sees only those in its budget
    docs = [_kind(i, ["U"] if i < 6 else ["T"], "x") for i in range(10)]
    docs[1] = _kind(1, ["T"], V + "x")
    query = EntityQuery(
        types=parse_type_selection("T"), q=parse_q('kind=="x"'), expand=expand, limit=3
    )
    assert engines.pages(docs, query) == [[1, 6, 7], [1, 6, 7]]


def test_a_near_page_is_nearest_on_the_ground_not_in_degrees(
    engines: _Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    # at 36 N a degree of longitude is ~20 % shorter than one of latitude: the spot 900 m
    # east is the nearest, though the two spots 950 m and 1,000 m north are nearer in degrees
    monkeypatch.setattr(pg_walk, "NEAR_FETCH", 2)
    lon, lat = 139.6, 36.3
    per_lon, per_lat = meters_per_degree(lat)
    docs = [
        _spot(0, lon, lat + 950 / per_lat, ["T"], "x"),
        _spot(1, lon, lat + 1000 / per_lat, ["T"], "x"),
        _spot(2, lon + 900 / per_lon, lat, ["T"], "x"),
    ]
    near = parse_geoquery("near;maxDistance==2000", "Point", [lon, lat])
    query = EntityQuery(
        types=parse_type_selection("T"), geo=near, geoproperty=V + "location", expand=expand,
        limit=1,
    )  # fmt: skip
    assert engines.pages(docs, query) == [[2], [2]]


def test_region_pages_match_however_the_types_lie(engines: _Engines) -> None:
    @settings(max_examples=80, deadline=None, database=None)
    @given(
        spots=hs.lists(hs.tuples(_shapes(), hs.sampled_from(range(len(_TYPES)))), max_size=12),
        query=_geo_queries().filter(lambda g: g.georel != "near"),
        limit=hs.integers(1, 4),
        offset=hs.integers(0, 3),
    )
    def check(
        spots: list[tuple[dict[str, Any], int]], query: GeoQuery, limit: int, offset: int
    ) -> None:
        docs = [
            entity(i, _TYPES[t], location=[{"type": "GeoProperty", "value": shape}])
            for i, (shape, t) in enumerate(spots)
        ]
        _same_page(engines, docs, _typed_geo_query(query, limit, offset))

    check()


def test_a_region_page_is_the_first_in_creation_order(engines: _Engines) -> None:
    square = [[[139.5, 36.2], [139.7, 36.2], [139.7, 36.4], [139.5, 36.4], [139.5, 36.2]]]
    docs = [_spot(i, 139.6 + i / 1000, 36.3, ["U"] if i == 1 else ["T"], "x") for i in range(6)]
    docs.append(_spot(6, 139.9, 36.3, ["T"], "x"))  # outside
    within = parse_geoquery("within", "Polygon", square)
    query = EntityQuery(
        types=parse_type_selection("T"), geo=within, geoproperty=V + "location",
        expand=expand, limit=2, offset=1,
    )  # fmt: skip
    assert engines.pages(docs, query) == [[2, 3], [2, 3]]
