"""The SQLite geo index answers geo-queries exactly, through the R*Tree, on a real file."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from cityos.broker.geo import GeoQuery, parse_geoquery
from cityos.broker.model import LOCATION, NGSI_LD, OBSERVATION_SPACE
from cityos.storage import sqlite_geo
from cityos.storage.sqlite_geo import (
    GEO_DDL,
    Handle,
    compile_distance,
    compile_geo,
    delete_geo,
    geo_rows,
    query_scope,
    register_functions,
    write_geo,
)

#: both engines: tests/storage/test_*_engines.py
pytestmark = pytest.mark.sqlite_only("the SQLite engine's R*Tree geo index")

ENTITIES_DDL = """
CREATE TABLE entities(
    rid INTEGER PRIMARY KEY, tenant TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL,
    created_at TEXT NOT NULL, modified_at TEXT NOT NULL, UNIQUE(tenant, id)
);
"""
LON0, LAT0, STEP = 139.50, 36.25, 0.005  # a 20 x 20 grid over Sano, 449 m x 555 m cells
SPEED = NGSI_LD + "default-context/speed"


def point(lon: float, lat: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [lon, lat]}


def box(x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def geo(value: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "GeoProperty", "value": value, **extra}


def entity(eid: str, attrs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        "id": eid,
        "type": ["https://example.org/T"],
        "createdAt": "2026-01-01T00:00:00.000000Z",
        "modifiedAt": "2026-01-01T00:00:00.000000Z",
        "attrs": attrs,
    }


def grid_xy(i: int, j: int) -> tuple[float, float]:
    return round(LON0 + i * STEP, 6), round(LAT0 + j * STEP, 6)


def build_docs() -> list[dict[str, Any]]:
    docs = []
    for i in range(20):
        for j in range(20):
            attrs: dict[str, list[dict[str, Any]]] = {LOCATION: [geo(point(*grid_xy(i, j)))]}
            if i % 5 == 0 and j % 5 == 0:
                # a second GeoProperty: a 0.002° square around the point
                x, y = grid_xy(i, j)
                attrs[OBSERVATION_SPACE] = [geo(box(x - 0.001, y - 0.001, x + 0.001, y + 0.001))]
            if i == 19 and j % 4 == 0:
                # a second instance of location, far away in the north-west corner
                attrs[LOCATION].append(
                    geo(point(139.40, 36.60), datasetId="urn:ngsi-ld:Dataset:old")
                )
            attrs[SPEED] = [{"type": "Property", "value": i + j}]
            docs.append(entity(f"urn:ngsi-ld:P:{i}-{j}", attrs))
    # districts: polygons as locations
    docs.append(entity("urn:ngsi-ld:D:west", {LOCATION: [geo(box(139.49, 36.24, 139.55, 36.36))]}))
    docs.append(entity("urn:ngsi-ld:D:east", {LOCATION: [geo(box(139.55, 36.24, 139.61, 36.36))]}))
    docs.append(entity("urn:ngsi-ld:D:all", {LOCATION: [geo(box(139.49, 36.24, 139.61, 36.36))]}))
    docs.append(
        entity(
            "urn:ngsi-ld:R:road",
            {
                LOCATION: [
                    geo({"type": "LineString", "coordinates": [[139.4, 36.3], [139.7, 36.3]]})
                ]
            },
        )
    )
    docs.append(entity("urn:ngsi-ld:N:nowhere", {SPEED: [{"type": "Property", "value": 1}]}))
    return docs


DOCS = build_docs()
BY_ID = {d["id"]: d for d in DOCS}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("geo") / "cityos.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(ENTITIES_DDL + GEO_DDL)
    conn.execute("BEGIN")
    for tenant in ("", "other"):
        for doc in DOCS:
            cur = conn.execute(
                "INSERT INTO entities(tenant, id, doc, created_at, modified_at) VALUES(?,?,?,?,?)",
                (tenant, doc["id"], orjson.dumps(doc).decode(), "t", "t"),
            )
            assert cur.lastrowid is not None
            write_geo(conn, cur.lastrowid, doc)
    conn.execute("COMMIT")
    conn.close()
    return path


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    register_functions(conn)
    return conn


@pytest.fixture
def conn(db: Path) -> Iterator[sqlite3.Connection]:
    c = connect(db)
    yield c
    c.close()


def bind(params: list[Any], handles: dict[Handle, int]) -> list[Any]:
    return [handles.get(p, p) if isinstance(p, Handle) else p for p in params]


def select(
    conn: sqlite3.Connection,
    query: GeoQuery,
    geoproperty: str = LOCATION,
    *,
    limit: int = 10_000,
    offset: int = 0,
    nearest_first: bool = False,
) -> list[str]:
    where, params = compile_geo(query, geoproperty)
    order, order_params = "e.rid", []
    if nearest_first:
        compiled = compile_distance(query, geoproperty)
        assert compiled is not None
        order, order_params = compiled[0] + ", e.rid", compiled[1]
    with query_scope(query) as handles:
        rows = conn.execute(
            f"SELECT e.id FROM entities e WHERE e.tenant=? AND {where} "
            f"ORDER BY {order} LIMIT ? OFFSET ?",
            ["", *bind(params, handles), *bind(order_params, handles), limit, offset],
        ).fetchall()
    return [r[0] for r in rows]


def expected(query: GeoQuery, geoproperty: str = LOCATION) -> set[str]:
    """Brute force over every stored instance: an entity matches when any instance does."""
    return {
        d["id"]
        for d in DOCS
        if any(query.matches(inst["value"]) for inst in d["attrs"].get(geoproperty, []))
    }


def grid_ids(pred: Any) -> set[str]:
    return {f"urn:ngsi-ld:P:{i}-{j}" for i in range(20) for j in range(20) if pred(i, j)}


def within_1km_of_10_10(i: int, j: int) -> bool:
    # grid cells at 36.30° N are 449 m east-west and 555 m north-south (WGS84)
    return math.hypot((i - 10) * 449.1, (j - 10) * 554.8) <= 1000


def test_near_max_distance_selects_the_points_within_1_km(conn: sqlite3.Connection) -> None:
    q = parse_geoquery("near;maxDistance==1000", "Point", orjson.dumps(grid_xy(10, 10)).decode())
    points = grid_ids(within_1km_of_10_10)
    assert len(points) == 11  # the point, 2 each way east-west, 1 north-south, the 4 diagonals
    # the districts meet at the reference longitude, the road runs through it
    want = points | {
        "urn:ngsi-ld:D:west",
        "urn:ngsi-ld:D:east",
        "urn:ngsi-ld:D:all",
        "urn:ngsi-ld:R:road",
    }
    got = select(conn, q)
    assert set(got) == want
    assert len(got) == len(want)  # no duplicates from several instances


def test_near_min_distance_and_the_far_second_instance(conn: sqlite3.Connection) -> None:
    x, y = grid_xy(10, 10)
    q = parse_geoquery("near;minDistance==1000", "Point", orjson.dumps([x, y]).decode())
    got = set(select(conn, q))
    near = grid_ids(within_1km_of_10_10)
    near_with_far_instance = {f"urn:ngsi-ld:P:19-{j}" for j in range(0, 20, 4)}
    assert got == expected(q)
    assert "urn:ngsi-ld:N:nowhere" not in got  # no location: never matches
    assert "urn:ngsi-ld:R:road" not in got  # it runs through the reference point
    assert not (got & near)
    assert near_with_far_instance <= got


def test_near_results_can_be_ordered_nearest_first(conn: sqlite3.Connection) -> None:
    x, y = grid_xy(3, 3)
    q = parse_geoquery("near;maxDistance==600", "Point", orjson.dumps([x, y]).decode())
    got = select(conn, q, nearest_first=True)
    # the point itself, then the districts and the road containing or crossing it,
    # then east/west neighbours (449 m) before north/south ones (555 m)
    assert got[0] == "urn:ngsi-ld:P:3-3"
    distances = [
        min(q.distance_m(inst["value"]) for inst in BY_ID[i]["attrs"][LOCATION]) for i in got
    ]
    assert distances == sorted(distances)
    assert got[-2:] == ["urn:ngsi-ld:P:3-2", "urn:ngsi-ld:P:3-4"]
    assert compile_distance(parse_geoquery("within", "Point", "[1, 2]"), LOCATION) is None


RECT = box(139.5025, 36.2525, 139.5225, 36.2625)  # grid columns 1-4, rows 1-2


@pytest.mark.parametrize(
    ("georel", "geometry", "want"),
    [
        ("within", RECT, grid_ids(lambda i, j: 1 <= i <= 4 and 1 <= j <= 2)),
        (
            "intersects",
            RECT,
            grid_ids(lambda i, j: 1 <= i <= 4 and 1 <= j <= 2)
            | {"urn:ngsi-ld:D:west", "urn:ngsi-ld:D:all"},
        ),
        ("contains", point(139.5812, 36.3012), {"urn:ngsi-ld:D:east", "urn:ngsi-ld:D:all"}),
        ("equals", point(*grid_xy(7, 8)), {"urn:ngsi-ld:P:7-8"}),
        ("equals", box(139.55, 36.24, 139.61, 36.36), {"urn:ngsi-ld:D:east"}),
        (
            "overlaps",
            box(139.53, 36.20, 139.57, 36.28),
            {"urn:ngsi-ld:D:west", "urn:ngsi-ld:D:east", "urn:ngsi-ld:D:all"},
        ),
        (
            "intersects",
            {"type": "LineString", "coordinates": [[139.52, 36.29], [139.52, 36.31]]},
            {
                "urn:ngsi-ld:D:west",
                "urn:ngsi-ld:D:all",
                "urn:ngsi-ld:R:road",
                "urn:ngsi-ld:P:4-8",
                "urn:ngsi-ld:P:4-9",
                "urn:ngsi-ld:P:4-10",
                "urn:ngsi-ld:P:4-11",
                "urn:ngsi-ld:P:4-12",
            },
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_each_relation_selects_exactly_the_matching_entities(
    conn: sqlite3.Connection, georel: str, geometry: dict[str, Any], want: set[str]
) -> None:
    q = parse_geoquery(georel, geometry["type"], geometry["coordinates"])
    got = select(conn, q)
    assert set(got) == want
    assert len(got) == len(want)


def test_disjoint_selects_everything_else(conn: sqlite3.Connection) -> None:
    q = parse_geoquery("disjoint", "Polygon", RECT["coordinates"])
    got = set(select(conn, q))
    with_location = {d["id"] for d in DOCS if LOCATION in d["attrs"]}
    inside = grid_ids(lambda i, j: 1 <= i <= 4 and 1 <= j <= 2)
    assert got == with_location - inside - {"urn:ngsi-ld:D:west", "urn:ngsi-ld:D:all"}


def test_a_non_default_geoproperty(conn: sqlite3.Connection) -> None:
    x, y = grid_xy(5, 5)
    # a point 0.0005° off the grid point: inside that point's observation square only
    q = parse_geoquery("contains", "Point", orjson.dumps([x + 0.0005, y]).decode())
    assert select(conn, q, OBSERVATION_SPACE) == ["urn:ngsi-ld:P:5-5"]
    assert select(conn, q, LOCATION) == ["urn:ngsi-ld:D:west", "urn:ngsi-ld:D:all"]
    whole = parse_geoquery("within", "Polygon", box(139.4, 36.2, 139.7, 36.5)["coordinates"])
    assert set(select(conn, whole, OBSERVATION_SPACE)) == grid_ids(
        lambda i, j: i % 5 == 0 and j % 5 == 0
    )


def test_limit_and_offset_page_through_the_matches_in_order(conn: sqlite3.Connection) -> None:
    q = parse_geoquery("within", "Polygon", box(139.5, 36.25, 139.56, 36.31)["coordinates"])
    everything = select(conn, q)
    # grid columns and rows 0 and 12 lie on the boundary: not within
    assert set(everything) == grid_ids(lambda i, j: 1 <= i <= 11 and 1 <= j <= 11)
    pages = [select(conn, q, limit=20, offset=o) for o in range(0, len(everything), 20)]
    assert [i for page in pages for i in page] == everything
    assert all(len(p) == 20 for p in pages[:-1])


def test_the_index_follows_updates_and_deletes(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db.sqlite")
    conn.executescript(ENTITIES_DDL + GEO_DDL)
    doc = entity("urn:ngsi-ld:Bus:1", {LOCATION: [geo(point(139.58, 36.31))]})
    conn.execute("INSERT INTO entities VALUES(1, '', ?, ?, 't', 't')", (doc["id"], "{}"))
    write_geo(conn, 1, doc)
    here = parse_geoquery("near;maxDistance==100", "Point", "[139.58, 36.31]")
    there = parse_geoquery("near;maxDistance==100", "Point", "[139.60, 36.33]")
    assert select(conn, here) == ["urn:ngsi-ld:Bus:1"]
    assert select(conn, there) == []

    moved = entity("urn:ngsi-ld:Bus:1", {LOCATION: [geo(point(139.60, 36.33))]})
    delete_geo(conn, 1)
    write_geo(conn, 1, moved)
    assert select(conn, here) == []
    assert select(conn, there) == ["urn:ngsi-ld:Bus:1"]

    delete_geo(conn, 1)
    assert select(conn, there) == []
    counts = conn.execute(
        "SELECT (SELECT count(*) FROM geo_index), (SELECT count(*) FROM geo_rtree)"
    ).fetchone()
    assert counts == (0, 0)
    conn.close()


def test_geo_rows_lists_every_live_geoproperty_instance() -> None:
    doc = entity(
        "urn:ngsi-ld:X:1",
        {
            LOCATION: [geo(point(1, 2)), geo(point(3, 4), datasetId="urn:d:2")],
            OBSERVATION_SPACE: [geo(box(0, 0, 1, 1))],
            SPEED: [{"type": "Property", "value": {"type": "Point", "coordinates": [5, 6]}}],
            NGSI_LD + "gone": [geo(point(7, 8), deletedAt="2026-01-01T00:00:00Z")],
        },
    )
    rows = geo_rows(doc)
    assert [(a, orjson.loads(t), b) for a, t, b in rows] == [
        (LOCATION, point(1, 2), (1, 2, 1, 2)),
        (LOCATION, point(3, 4), (3, 4, 3, 4)),
        (OBSERVATION_SPACE, box(0, 0, 1, 1), (0, 0, 1, 1)),
    ]


def test_handles_are_released_and_a_stale_handle_fails_loudly(conn: sqlite3.Connection) -> None:
    q = parse_geoquery("within", "Polygon", RECT["coordinates"])
    with query_scope(q) as handles:
        key = handles[sqlite_geo.HANDLE]
        assert sqlite_geo._registry[key] is q
    assert key not in sqlite_geo._registry
    with query_scope(None) as none:
        assert none == {}
    with pytest.raises(sqlite3.OperationalError, match="user-defined function raised"):
        conn.execute('SELECT geo_match(?, \'{"type":"Point","coordinates":[0,0]}\')', (key,))


def test_concurrent_queries_on_reader_threads_get_their_own_answers(db: Path) -> None:
    queries = [
        parse_geoquery("near;maxDistance==1000", "Point", orjson.dumps(grid_xy(i, i)).decode())
        for i in range(2, 18)
    ]
    want = [expected(q) for q in queries]

    def run(q: GeoQuery) -> set[str]:
        c = connect(db)
        try:
            return {i for _ in range(5) for i in select(c, q)}
        finally:
            c.close()

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(run, queries))
    assert got == want
    assert not sqlite_geo._registry
