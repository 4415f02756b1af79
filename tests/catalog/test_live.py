"""Live datasets: defined by an NGSI-LD query, regenerated (files, datastore, modified) as the
entities change, through the ordinary API."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from conftest import make_client, wait_for
from starlette.testclient import TestClient

from cityos.catalog import registry
from cityos.catalog.errors import ValidationError
from cityos.catalog.registry import Context

ENTITIES = "/ngsi-ld/v1/entities"
ACTION = "/api/3/action/"
POINT = {"type": "Point", "coordinates": [139.6, 36.3]}


def gauge(slug: str, height: float, name: str) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:WaterObserved:{slug}",
        "type": "WaterObserved",
        "name": {"type": "Property", "value": name},
        "height": {"type": "Property", "value": height, "unitCode": "MTR"},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [139.6, 36.3]},
        },
    }


def system_call(client: TestClient, name: str, params: dict[str, Any]) -> Any:
    catalog = client.app.catalog  # type: ignore[attr-defined]

    async def run() -> Any:
        return await registry.call(Context(catalog=catalog, system=True), name, params)

    assert client.portal is not None
    return client.portal.call(run)


def action(client: TestClient, name: str, **params: Any) -> dict[str, Any]:
    r = client.post(ACTION + name, json=params)
    body: dict[str, Any] = r.json()
    assert body["success"], body
    return body


def records(client: TestClient, resource_id: str) -> dict[str, dict[str, Any]]:
    found = action(client, "datastore_search", resource_id=resource_id, limit=100)["result"]
    return {r["id"]: r for r in found["records"]}


@pytest.fixture
def client(tmp_path: Path) -> Any:
    with make_client(tmp_path, live_interval=0.1) as c:
        for g in (gauge("ohashi", 1.25, "秋山川 大橋"), gauge("tanuma", 0.8, "旗川 田沼")):
            assert c.post(ENTITIES, json=g).status_code == 201
        system_call(c, "organization_create", {"name": "sano-city", "title": "佐野市"})
        yield c


def define(client: TestClient, query: str = "type=WaterObserved") -> dict[str, Any]:
    result: dict[str, Any] = system_call(
        client,
        "cityos_live_dataset_create",
        {
            "name": "live-water-levels",
            "title": "河川水位（リアルタイム）",
            "owner_org": "sano-city",
            "license_id": "cc-by-4.0",
            "query": query,
        },
    )
    return result


def test_a_live_dataset_has_csv_geojson_and_a_table_of_its_entities(client: TestClient) -> None:
    package = define(client)
    formats = {r["format"]: r for r in package["resources"]}
    assert set(formats) == {"CSV", "GeoJSON"}
    assert {"key": "ngsi_ld_query", "value": "type=WaterObserved"} in package["extras"]
    rows = records(client, formats["CSV"]["id"])
    assert rows["urn:ngsi-ld:WaterObserved:ohashi"]["height"] == 1.25
    assert rows["urn:ngsi-ld:WaterObserved:ohashi"]["name"] == "秋山川 大橋"
    assert rows["urn:ngsi-ld:WaterObserved:tanuma"]["longitude"] == 139.6
    path = formats["CSV"]["url"].split("://", 1)[1].split("/", 1)[1]
    text = client.get("/" + path).content.decode("utf-8-sig")
    table = list(csv.DictReader(io.StringIO(text)))
    assert {r["name"] for r in table} == {"秋山川 大橋", "旗川 田沼"}
    path = formats["GeoJSON"]["url"].split("://", 1)[1].split("/", 1)[1]
    geo = client.get("/" + path).json()
    assert geo["type"] == "FeatureCollection"
    assert geo["features"][0]["geometry"]["type"] == "Point"


def test_changes_to_the_entities_reach_the_table_and_metadata_modified(
    client: TestClient,
) -> None:
    package = define(client)
    csv_id = next(r["id"] for r in package["resources"] if r["format"] == "CSV")
    before = package["metadata_modified"]
    r = client.patch(f"{ENTITIES}/urn:ngsi-ld:WaterObserved:ohashi/attrs", json={"height": 3.4})
    assert r.status_code == 204
    wait_for(
        lambda: records(client, csv_id)["urn:ngsi-ld:WaterObserved:ohashi"]["height"] == 3.4,
        "the new reading in the live table",
    )
    after = action(client, "package_show", id="live-water-levels")["result"]
    assert after["metadata_modified"] > before
    assert client.delete(f"{ENTITIES}/urn:ngsi-ld:WaterObserved:tanuma").status_code == 204
    wait_for(
        lambda: set(records(client, csv_id)) == {"urn:ngsi-ld:WaterObserved:ohashi"},
        "the deleted gauge gone from the live table",
    )


def test_a_bad_query_is_refused_and_creates_nothing(client: TestClient) -> None:
    for query in ("q=height>1", "type=WaterObserved&q=height>>", "type=X&bogus=1"):
        with pytest.raises(ValidationError) as err:
            define(client, query)
        assert "query" in err.value.errors
    r = client.get(ACTION + "package_show", params={"id": "live-water-levels"})
    assert r.status_code == 404
