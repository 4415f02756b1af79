"""Batch entity operations (/entityOperations/*), including what FIWARE IoT Agents send."""

from __future__ import annotations

from conftest import CORE, sensor
from starlette.testclient import TestClient
from test_entities_api import problem

B = "/ngsi-ld/v1/entityOperations"
E = "/ngsi-ld/v1/entities"


def sid(n: int) -> str:
    return f"urn:ngsi-ld:WaterLevelObserved:akiyama-{n}"


def test_batch_create_all_ok(client: TestClient) -> None:
    r = client.post(f"{B}/create", json=[sensor(1), sensor(2)])
    assert r.status_code == 201
    assert r.json() == [sid(1), sid(2)]


def test_batch_create_partial_failure_is_207(client: TestClient) -> None:
    client.post(E, json=sensor(1))
    r = client.post(f"{B}/create", json=[sensor(1), sensor(2), {"id": "bad id", "type": "T"}])
    assert r.status_code == 207
    body = r.json()
    assert body["success"] == [sid(2)]
    errs = {e["entityId"]: e["error"] for e in body["errors"]}
    assert errs[sid(1)]["type"].endswith("AlreadyExists")
    assert errs["bad id"]["type"].endswith("BadRequestData")
    assert client.get(f"{E}/{sid(2)}").status_code == 200


def test_batch_upsert_creates_then_replaces(client: TestClient) -> None:
    r = client.post(f"{B}/upsert", json=[sensor(1), sensor(2)])
    assert r.status_code == 201
    assert sorted(r.json()) == [sid(1), sid(2)]
    r = client.post(
        f"{B}/upsert", json=[{"id": sid(1), "type": "WaterLevelObserved", "waterLevel": 9.0}]
    )
    assert r.status_code == 204
    got = client.get(f"{E}/{sid(1)}").json()
    assert got["waterLevel"]["value"] == 9.0
    assert "name" not in got  # replace is the default


def test_batch_upsert_update_keeps_other_attributes(client: TestClient) -> None:
    client.post(f"{B}/upsert", json=[sensor(1)])
    r = client.post(
        f"{B}/upsert",
        params={"options": "update"},
        json=[{"id": sid(1), "type": "WaterLevelObserved", "waterLevel": 2.2}],
    )
    assert r.status_code == 204, r.text
    got = client.get(f"{E}/{sid(1)}").json()
    assert got["waterLevel"]["value"] == 2.2
    assert got["name"]["value"] == "秋山川 1"
    problem(
        client.post(f"{B}/upsert", params={"options": "sideways"}, json=[sensor(1)]),
        400,
        "BadRequestData",
    )


def test_batch_update_and_no_overwrite(client: TestClient) -> None:
    client.post(f"{B}/create", json=[sensor(1)])
    r = client.post(
        f"{B}/update", json=[{"id": sid(1), "waterLevel": 3.0}, {"id": sid(99), "waterLevel": 1.0}]
    )
    assert r.status_code == 207
    assert r.json()["success"] == [sid(1)]
    assert r.json()["errors"][0]["entityId"] == sid(99)
    r = client.post(
        f"{B}/update", params={"options": "noOverwrite"}, json=[{"id": sid(1), "waterLevel": 7.0}]
    )
    assert r.status_code == 204
    assert client.get(f"{E}/{sid(1)}").json()["waterLevel"]["value"] == 3.0


def test_batch_merge(client: TestClient) -> None:
    client.post(f"{B}/create", json=[sensor(1), sensor(2)])
    r = client.post(
        f"{B}/merge",
        json=[
            {"id": sid(1), "waterLevel": {"value": 0.1}},
            {"id": sid(2), "name": "urn:ngsi-ld:null"},
        ],
    )
    assert r.status_code == 204, r.text
    assert client.get(f"{E}/{sid(1)}").json()["waterLevel"]["unitCode"] == "MTR"
    assert "name" not in client.get(f"{E}/{sid(2)}").json()


def test_batch_delete(client: TestClient) -> None:
    client.post(f"{B}/create", json=[sensor(1), sensor(2)])
    r = client.post(f"{B}/delete", json=[sid(1), sid(3)])
    assert r.status_code == 207
    assert r.json()["success"] == [sid(1)]
    assert r.json()["errors"][0]["error"]["type"].endswith("ResourceNotFound")
    assert client.post(f"{B}/delete", json=[sid(2)]).status_code == 204


def test_batch_rejects_bad_envelopes(client: TestClient) -> None:
    problem(client.post(f"{B}/create", json={"id": "urn:x:1"}), 400, "BadRequestData")
    problem(
        client.post(f"{B}/create", json=[sensor(n) for n in range(1001)]), 400, "BadRequestData"
    )
    assert client.get(E, params={"type": "WaterLevelObserved"}).json() == []


def test_iot_agent_upsert_shape(client: TestClient) -> None:
    """What iotagent-node-lib sends in NGSI-LD mode: trailing slash, @context per element."""
    body = [
        {
            "id": "urn:ngsi-ld:Device:wl-7",
            "type": "Device",
            "waterLevel": {
                "type": "Property",
                "value": 1.23,
                "observedAt": "2026-11-25T09:00:00.000Z",
            },
            "@context": CORE,
        }
    ]
    headers = {
        "Content-Type": "application/ld+json",
        "NGSILD-Tenant": "sano",
        "NGSILD-Path": "/akiyama",
    }
    r = client.post(f"{B}/upsert/", params={"options": "update"}, json=body, headers=headers)
    assert r.status_code in (201, 204), r.text
    got = client.get(f"{E}/urn:ngsi-ld:Device:wl-7", headers={"NGSILD-Tenant": "sano"}).json()
    assert got["waterLevel"]["value"] == 1.23
    assert got["waterLevel"]["observedAt"] == "2026-11-25T09:00:00.000Z"
