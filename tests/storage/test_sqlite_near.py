"""near queries return the nearest entities first, exactly as a brute-force sort would."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cityos.broker import geo
from cityos.broker.model import LOCATION
from cityos.storage.base import EntityQuery, Mutation
from cityos.storage.sqlite import SqliteStorage

#: both engines: tests/storage/test_*_engines.py
pytestmark = pytest.mark.sqlite_only("the SQLite engine's near ordering")

CENTER = (139.5783, 36.3144)


def doc(i: int, geometry: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"urn:x:{i}",
        "type": ["https://x.org/T"],
        "createdAt": "2026-01-01T00:00:00Z",
        "modifiedAt": "2026-01-01T00:00:00Z",
        "attrs": {LOCATION: [{"type": "GeoProperty", "value": geometry}]},
    }


def point(lon: float, lat: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [lon, lat]}


@pytest.fixture(scope="module")
def store(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[SqliteStorage, list[dict[str, Any]]]]:
    rng = random.Random(7)
    docs = []
    for i in range(3000):
        # dense around the centre, sparse further out, plus some lines and polygons
        r = rng.expovariate(1 / 0.02)
        lon, lat = CENTER[0] + rng.uniform(-1, 1) * r, CENTER[1] + rng.uniform(-1, 1) * r
        if i % 50 == 0:
            g = {"type": "LineString", "coordinates": [[lon, lat], [lon + 0.003, lat + 0.002]]}
        elif i % 77 == 0:
            d = 0.002
            g = {
                "type": "Polygon",
                "coordinates": [
                    [[lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d], [lon, lat]]
                ],
            }
        else:
            g = point(lon, lat)
        docs.append(doc(i, g))
    path: Path = tmp_path_factory.mktemp("near") / "near.db"
    st = SqliteStorage(path)

    async def load() -> None:
        await st.start()
        await st.apply("", [Mutation(d["id"], lambda _c, d=d: d) for d in docs])

    asyncio.run(load())
    yield st, docs
    asyncio.run(st.close())


@pytest.mark.parametrize(
    ("max_d", "limit", "offset"),
    [
        (2000, 20, 0),
        (2000, 20, 40),
        (500, 10, 0),
        (8000, 100, 0),
        (25000, 15, 5),
        (50, 5, 0),
    ],
)
def test_near_matches_brute_force(
    store: tuple[SqliteStorage, list[dict[str, Any]]], max_d: int, limit: int, offset: int
) -> None:
    st, docs = store
    q = geo.parse_geoquery(f"near;maxDistance=={max_d}", "Point", list(CENTER))
    dist = {d["id"]: q.distance_m(d["attrs"][LOCATION][0]["value"]) for d in docs}
    expected = sorted((i for i in dist if dist[i] <= max_d), key=lambda i: dist[i])
    query = EntityQuery(geo=q, geoproperty=LOCATION, limit=limit, offset=offset, count=True)

    async def run() -> Any:
        return await st.query("", query)

    result = asyncio.run(run())
    got = [d["id"] for d in result.docs]
    assert result.count == len(expected)
    want = expected[offset : offset + limit]
    assert len(got) == len(want)
    # equal up to ties within a centimetre (the SQL path uses a tangent plane)
    assert [round(dist[i], 2) for i in got] == pytest.approx(
        [round(dist[i], 2) for i in want], abs=0.05
    )
