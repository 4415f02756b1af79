"""Querying entities over HTTP: GET /entities and POST /entityOperations/query."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import sensor
from starlette.testclient import TestClient
from test_entities_api import problem

E = "/ngsi-ld/v1/entities"
Q = "/ngsi-ld/v1/entityOperations/query"


@pytest.fixture
def river(client: TestClient) -> TestClient:
    """Ten water-level sensors (levels 0.5 .. 5.0) and two shelters."""
    for n in range(1, 11):
        status = "flood" if n >= 8 else "normal"
        r = client.post(
            E,
            json=sensor(
                n,
                level=n * 0.5,
                status={"type": "Property", "value": status},
                scope="/Sano/Akiyama" if n % 2 else "/Sano/Watarase",
            ),
        )
        assert r.status_code == 201, r.text
    for n, (lon, lat) in enumerate([(139.5783, 36.3144), (139.60, 36.40)], start=1):
        client.post(
            E,
            json={
                "id": f"urn:ngsi-ld:Shelter:{n}",
                "type": "Shelter",
                "name": {"type": "Property", "value": f"避難所{n}"},
                "capacity": {"type": "Property", "value": 100 * n},
                "location": {
                    "type": "GeoProperty",
                    "value": {"type": "Point", "coordinates": [lon, lat]},
                },
            },
        )
    return client


def ids(resp: Any) -> list[str]:
    assert resp.status_code == 200, resp.text
    return sorted(e["id"] for e in resp.json())


def n_ids(*ns: int) -> list[str]:
    return sorted(f"urn:ngsi-ld:WaterLevelObserved:akiyama-{n}" for n in ns)


def test_query_by_type(river: TestClient) -> None:
    assert len(ids(river.get(E, params={"type": "WaterLevelObserved", "limit": 100}))) == 10
    assert len(ids(river.get(E, params={"type": "Shelter"}))) == 2
    assert len(ids(river.get(E, params={"type": "Shelter,WaterLevelObserved", "limit": 100}))) == 12
    assert ids(river.get(E, params={"type": "Nothing"})) == []


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("waterLevel>4", [9, 10]),
        ("waterLevel>=4.5", [9, 10]),
        ("waterLevel<1", [1]),
        ("waterLevel<=1", [1, 2]),
        ("waterLevel==2.5", [5]),
        ("waterLevel!=2.5", [1, 2, 3, 4, 6, 7, 8, 9, 10]),
        ("waterLevel==1..2", [2, 3, 4]),
        ("waterLevel==1,3,5", [2, 6, 10]),
        ('status=="flood"', [8, 9, 10]),
        ("status==flood", [8, 9, 10]),
        ('status=="flood";waterLevel<4.5', [8]),
        ("waterLevel<1|waterLevel>4.5", [1, 10]),
        ('(status=="flood"|waterLevel<1);waterLevel!=5', [1, 8, 9]),
        ('name~="秋山川 1$"', [1]),
        ("name!~=秋山川", []),
        ('refRiver=="urn:ngsi-ld:River:akiyama"', list(range(1, 11))),
        ('waterLevel.unitCode=="MTR"', list(range(1, 11))),
        ("waterLevel.observedAt>2026-01-01T00:00:00Z", list(range(1, 11))),
        ("status", list(range(1, 11))),
        ("!status", []),
    ],
)
def test_q_language(river: TestClient, q: str, expected: list[int]) -> None:
    got = ids(river.get(E, params={"type": "WaterLevelObserved", "q": q, "limit": 100}))
    assert got == n_ids(*expected)


def test_q_into_json_values(client: TestClient) -> None:
    client.post(
        E,
        json=sensor(1, gauge={"type": "Property", "value": {"model": "X1", "range": {"max": 10}}}),
    )
    client.post(
        E, json=sensor(2, gauge={"type": "Property", "value": {"model": "Y2", "range": {"max": 5}}})
    )
    got = ids(client.get(E, params={"type": "WaterLevelObserved", "q": "gauge[range.max]>7"}))
    assert got == n_ids(1)
    got = ids(client.get(E, params={"type": "WaterLevelObserved", "q": 'gauge[model]=="Y2"'}))
    assert got == n_ids(2)


@pytest.mark.parametrize("q", ["waterLevel>", "(a==1", "a>>1", "a==1;;b==2", ")", "a~=(["])
def test_bad_q_is_400(river: TestClient, q: str) -> None:
    problem(river.get(E, params={"type": "WaterLevelObserved", "q": q}), 400, "BadRequestData")


def test_ids_and_id_pattern(river: TestClient) -> None:
    got = ids(river.get(E, params={"id": ",".join(n_ids(1, 3))}))
    assert got == n_ids(1, 3)
    got = ids(river.get(E, params={"idPattern": "akiyama-1[0-9]?$", "type": "WaterLevelObserved"}))
    assert got == n_ids(1, 10)
    problem(river.get(E, params={"id": "not a uri"}), 400, "BadRequestData")


def test_scope_q(river: TestClient) -> None:
    got = ids(river.get(E, params={"scopeQ": "/Sano/Akiyama", "limit": 100}))
    assert got == n_ids(1, 3, 5, 7, 9)
    got = ids(river.get(E, params={"scopeQ": "/Sano/#", "limit": 100}))
    assert len(got) == 10


def test_attrs_filters_and_projects(river: TestClient) -> None:
    r = river.get(E, params={"attrs": "capacity"})
    assert ids(r) == ["urn:ngsi-ld:Shelter:1", "urn:ngsi-ld:Shelter:2"]
    assert all(set(e) == {"id", "type", "capacity"} for e in r.json())


def test_pagination_and_count(river: TestClient) -> None:
    r = river.get(E, params={"type": "WaterLevelObserved", "limit": 4, "count": "true"})
    assert r.headers["NGSILD-Results-Count"] == "10"
    first = ids(r)
    assert len(first) == 4
    assert 'rel="next"' in r.headers["link"]
    second = ids(river.get(E, params={"type": "WaterLevelObserved", "limit": 4, "offset": 4}))
    assert not set(first) & set(second)
    r = river.get(E, params={"type": "WaterLevelObserved", "limit": 0, "count": "true"})
    assert r.json() == []
    assert r.headers["NGSILD-Results-Count"] == "10"
    problem(river.get(E, params={"type": "T", "limit": 5000}), 403, "TooManyResults")
    problem(river.get(E, params={"type": "T", "limit": -1}), 400, "BadRequestData")
    problem(river.get(E, params={"type": "T", "offset": "x"}), 400, "BadRequestData")


def test_default_limit_is_20(client: TestClient) -> None:
    for n in range(25):
        client.post(E, json=sensor(n))
    assert len(client.get(E, params={"type": "WaterLevelObserved"}).json()) == 20


def test_geo_near(river: TestClient) -> None:
    got = ids(
        river.get(
            E,
            params={
                "type": "Shelter",
                "georel": "near;maxDistance==2000",
                "geometry": "Point",
                "coordinates": "[139.5783,36.3144]",
            },
        )
    )
    assert got == ["urn:ngsi-ld:Shelter:1"]
    got = ids(
        river.get(
            E,
            params={
                "type": "Shelter",
                "georel": "near;minDistance==2000",
                "geometry": "Point",
                "coordinates": "[139.5783,36.3144]",
            },
        )
    )
    assert got == ["urn:ngsi-ld:Shelter:2"]


def test_geo_within_polygon(river: TestClient) -> None:
    poly = "[[[139.55,36.30],[139.65,36.30],[139.65,36.35],[139.55,36.35],[139.55,36.30]]]"
    got = ids(
        river.get(
            E,
            params={
                "type": "Shelter",
                "georel": "within",
                "geometry": "Polygon",
                "coordinates": poly,
            },
        )
    )
    assert got == ["urn:ngsi-ld:Shelter:1"]


@pytest.mark.parametrize(
    "params",
    [
        {"georel": "near;maxDistance==2000"},
        {"georel": "near;maxDistance==2000", "geometry": "Point"},
        {"georel": "sideways", "geometry": "Point", "coordinates": "[1,2]"},
        {"georel": "near;maxDistance==x", "geometry": "Point", "coordinates": "[1,2]"},
        {"georel": "within", "geometry": "Polygon", "coordinates": "[[[0,0],[1,1]]]"},
        {"georel": "within", "geometry": "Blob", "coordinates": "[1,2]"},
        {"georel": "near;maxDistance==10", "geometry": "Point", "coordinates": "not json"},
    ],
)
def test_bad_geo_query_is_400(river: TestClient, params: dict[str, str]) -> None:
    problem(river.get(E, params={"type": "Shelter", **params}), 400, "BadRequestData")


def test_geojson_collection(river: TestClient) -> None:
    r = river.get(E, params={"type": "Shelter"}, headers={"Accept": "application/geo+json"})
    assert r.status_code == 200
    body = r.json()
    assert body["type"] == "FeatureCollection"
    assert len(body["features"]) == 2
    assert body["features"][0]["geometry"]["type"] == "Point"


def test_post_query(river: TestClient) -> None:
    r = river.post(
        Q, json={"type": "Query", "entities": [{"type": "WaterLevelObserved"}], "q": "waterLevel>4"}
    )
    assert ids(r) == n_ids(9, 10)
    r = river.post(
        Q,
        json={
            "type": "Query",
            "entities": [{"type": "Shelter"}],
            "geoQ": {
                "georel": "near;maxDistance==2000",
                "geometry": "Point",
                "coordinates": [139.5783, 36.3144],
            },
        },
    )
    assert ids(r) == ["urn:ngsi-ld:Shelter:1"]
    r = river.post(
        Q,
        params={"limit": 2, "count": "true"},
        json={"type": "Query", "entities": [{"type": "WaterLevelObserved"}]},
    )
    assert len(r.json()) == 2
    assert r.headers["NGSILD-Results-Count"] == "10"
    r = river.post(
        Q, json={"type": "Query", "entities": [{"type": "Shelter"}], "attrs": ["capacity"]}
    )
    assert all(set(e) == {"id", "type", "capacity"} for e in r.json())
    problem(river.post(Q, json={"entities": [{"type": "Shelter"}]}), 400, "BadRequestData")
    problem(river.post(Q, json={"type": "Query", "bogus": 1}), 400, "BadRequestData")


def test_purge_by_type(river: TestClient) -> None:
    r = river.delete(E, params={"type": "Shelter"})
    assert r.status_code == 204
    assert ids(river.get(E, params={"type": "Shelter"})) == []
    assert len(ids(river.get(E, params={"type": "WaterLevelObserved", "limit": 100}))) == 10
    problem(river.delete(E), 400, "BadRequestData")


def test_query_formats(river: TestClient) -> None:
    r = river.get(E, params={"type": "Shelter", "options": "keyValues"})
    assert {e["capacity"] for e in r.json()} == {100, 200}
    r = river.get(E, params={"type": "Shelter", "format": "concise"})
    assert {e["capacity"] for e in r.json()} == {100, 200}


def test_discovery(river: TestClient) -> None:
    types = river.get("/ngsi-ld/v1/types").json()
    assert types["type"] == "EntityTypeList"
    assert types["typeList"] == ["Shelter", "WaterLevelObserved"]
    details = river.get("/ngsi-ld/v1/types", params={"details": "true"}).json()
    shelter = next(t for t in details if t["typeName"] == "Shelter")
    assert set(shelter["attributeNames"]) == {"name", "capacity", "location"}
    info = river.get("/ngsi-ld/v1/types/Shelter").json()
    assert info["entityCount"] == 2
    assert {a["attributeName"] for a in info["attributeDetails"]} == {
        "name",
        "capacity",
        "location",
    }
    problem(river.get("/ngsi-ld/v1/types/Nothing"), 404, "ResourceNotFound")
    attrs = river.get("/ngsi-ld/v1/attributes").json()
    assert "waterLevel" in attrs["attributeList"]
    a = river.get("/ngsi-ld/v1/attributes/capacity").json()
    assert a["attributeCount"] == 2
    assert a["typeNames"] == ["Shelter"]
    assert a["attributeTypes"] == ["Property"]
    detailed = river.get("/ngsi-ld/v1/attributes", params={"details": "true"}).json()
    loc = next(x for x in detailed if x["attributeName"] == "location")
    assert set(loc["typeNames"]) == {"Shelter", "WaterLevelObserved"}
    problem(river.get("/ngsi-ld/v1/attributes/nothing"), 404, "ResourceNotFound")


def test_entities_with_several_types(client: TestClient) -> None:
    e = sensor(1)
    e["type"] = ["Device", "WaterLevelObserved"]
    assert client.post(E, json=e).status_code == 201
    client.post(E, json=sensor(2))
    assert ids(client.get(E, params={"type": "WaterLevelObserved"})) == n_ids(1, 2)
    assert ids(client.get(E, params={"type": "Device"})) == n_ids(1)
    assert ids(client.get(E, params={"type": "Device;WaterLevelObserved"})) == n_ids(1)
    assert ids(client.get(E, params={"type": "(Device;Shelter)|WaterLevelObserved"})) == n_ids(1, 2)
    # a merge that adds a type makes the entity match it
    r = client.patch(f"{E}/{n_ids(2)[0]}", json={"type": "Device"})
    assert r.status_code == 204
    assert ids(client.get(E, params={"type": "Device"})) == n_ids(1, 2)
    got = client.get(f"{E}/{n_ids(2)[0]}").json()
    assert got["type"] == ["WaterLevelObserved", "Device"]
