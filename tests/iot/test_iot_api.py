"""The IoT Agent provisioning API and HTTP ingestion, with examples from FIWARE's documentation."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

ENTITIES = "/ngsi-ld/v1/entities"

# iotagent-node-lib doc/api.md: a config group with fields cityos keeps but does not use.
API_MD_GROUP = {
    "groups": [
        {
            "resource": "/deviceTest",
            "apikey": "801230BJKL23Y9090DSFL123HJK09H324HV8732",
            "entity_type": "SensorMachine",
            "trust": "8970A9078A803H3BL98PINEQRW8342HBAMS",
            "cbHost": "http://unexistentHost:1026",
            "commands": [{"name": "wheel1", "type": "Wheel"}],
            "lazy": [{"name": "luminescence", "type": "Lumens"}],
            "attributes": [{"name": "status", "type": "Boolean"}],
        }
    ]
}
# iotagent-node-lib doc/api.md: the device provisioning example.
API_MD_DEVICE = {
    "devices": [
        {
            "device_id": "DevID1",
            "entity_name": "urn:ngsi-ld:Device:TheDevice1",
            "entity_type": "Device",
            "attributes": [
                {"object_id": "t", "name": "temperature", "type": "Float"},
                {"object_id": "h", "name": "humidity", "type": "Float"},
            ],
        }
    ]
}
JSON_GROUP = {
    "groups": [
        {
            "apikey": "1234",
            "cbroker": "http://orion:1026",
            "entity_type": "Thing",
            "resource": "/iot/json",
        }
    ]
}
# FIWARE tutorial (IoT over UltraLight): group, motion sensor and its measure.
UL_KEY = "4jggokgpepnvsb2uv4s40d59ov"
UL_GROUP = {
    "groups": [
        {
            "apikey": UL_KEY,
            "cbroker": "http://orion:1026",
            "entity_type": "Thing",
            "resource": "/iot/d",
        }
    ]
}
UL_DEVICE = {
    "devices": [
        {
            "device_id": "motion001",
            "entity_name": "urn:ngsi-ld:Motion:001",
            "entity_type": "Motion",
            "timezone": "Europe/Berlin",
            "attributes": [{"object_id": "c", "name": "count", "type": "Integer"}],
            "static_attributes": [
                {"name": "refStore", "type": "Relationship", "value": "urn:ngsi-ld:Store:001"}
            ],
        }
    ]
}
OPENIOT = {"Fiware-Service": "openiot", "Fiware-ServicePath": "/"}


def provision(client: TestClient, path: str, body: dict[str, Any], headers: Any = None) -> None:
    r = client.post(path, json=body, headers=headers or OPENIOT)
    assert r.status_code == 201, r.text


def entity(client: TestClient, entity_id: str, tenant: str = "openiot") -> dict[str, Any]:
    headers = {"NGSILD-Tenant": tenant} if tenant else {}
    r = client.get(f"{ENTITIES}/{entity_id}", headers=headers)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def json_device(client: TestClient) -> None:
    provision(client, "/iot/groups", JSON_GROUP)
    provision(client, "/iot/devices", API_MD_DEVICE)


# -- provisioning ---------------------------------------------------------------------------


def test_documented_group_and_device_are_provisioned_unchanged(client: TestClient) -> None:
    provision(client, "/iot/groups", API_MD_GROUP)
    provision(client, "/iot/devices", API_MD_DEVICE)
    groups = client.get("/iot/groups", headers=OPENIOT).json()
    assert groups["count"] == 1
    group = groups["groups"][0]
    assert group["apikey"] == "801230BJKL23Y9090DSFL123HJK09H324HV8732"
    assert group["trust"] == "8970A9078A803H3BL98PINEQRW8342HBAMS"
    assert (group["service"], group["subservice"]) == ("openiot", "/")
    device = client.get("/iot/devices/DevID1", headers=OPENIOT).json()
    assert device["entity_name"] == "urn:ngsi-ld:Device:TheDevice1"
    assert device["attributes"][0] == {"object_id": "t", "name": "temperature", "type": "Float"}
    listed = client.get("/iot/devices", headers=OPENIOT).json()
    assert [d["device_id"] for d in listed["devices"]] == ["DevID1"]


def test_duplicates_are_refused_with_iot_agent_errors(client: TestClient) -> None:
    provision(client, "/iot/groups", API_MD_GROUP)
    provision(client, "/iot/devices", API_MD_DEVICE)
    r = client.post("/iot/groups", json=API_MD_GROUP, headers=OPENIOT)
    assert r.status_code == 409
    assert r.json()["name"] == "DUPLICATE_GROUP"
    r = client.post("/iot/devices", json=API_MD_DEVICE, headers=OPENIOT)
    assert r.status_code == 409
    assert r.json()["name"] == "DUPLICATE_DEVICE_ID"
    assert "DevID1" in r.json()["message"]


def test_invalid_provisioning_is_a_bad_request(client: TestClient) -> None:
    cases = [
        {"groups": [{"resource": "/iot/json"}]},
        {"groups": [{"apikey": "k", "resource": "/iot/json", "autoprovision": "yes"}]},
        {"groups": [{"apikey": "k", "resource": "/iot/json", "attributes": [{"type": "Float"}]}]},
        {"groups": []},
        {"devices": [{"device_id": "d", "attributes": [{"name": "x", "expression": "t*2"}]}]},
    ]
    for body in cases:
        path = "/iot/groups" if "groups" in body else "/iot/devices"
        r = client.post(path, json=body, headers=OPENIOT)
        assert r.status_code == 400, body
        assert r.json()["name"] == "BAD_REQUEST"
        assert r.json()["message"]
    assert client.get("/iot/groups", headers=OPENIOT).json()["count"] == 0


def test_control_characters_in_identifiers_are_a_bad_request(client: TestClient) -> None:
    # a NUL cannot even be stored by PostgreSQL: said plainly, on both engines, with nothing kept
    cases = [
        ("/iot/groups", {"groups": [{"apikey": "k\x00", "resource": "/iot/json"}]}, "apikey"),
        ("/iot/groups", {"groups": [{"apikey": "k", "resource": "/iot/\x00"}]}, "resource"),
        ("/iot/devices", {"devices": [{"device_id": "d\x00"}]}, "device_id"),
        ("/iot/devices", {"devices": [{"device_id": "d", "entity_name": "e\n1"}]}, "entity_name"),
    ]
    for path, body, field in cases:
        r = client.post(path, json=body, headers=OPENIOT)
        assert r.status_code == 400, body
        assert r.json()["name"] == "BAD_REQUEST"
        assert f"{field} must not contain control characters" in r.json()["message"]
    assert client.get("/iot/groups", headers=OPENIOT).json()["count"] == 0
    assert client.get("/iot/devices", headers=OPENIOT).json()["count"] == 0


def test_unknown_device_is_not_found(client: TestClient) -> None:
    for method in ("GET", "PUT", "DELETE"):
        r = client.request(method, "/iot/devices/nope", json={}, headers=OPENIOT)
        assert r.status_code == 404
        assert r.json() == {"name": "DEVICE_NOT_FOUND", "message": "no device with id 'nope'"}


def test_group_update_and_delete_also_on_deprecated_services_path(client: TestClient) -> None:
    provision(client, "/iot/services", JSON_GROUP)
    key = {"resource": "/iot/json", "apikey": "1234"}
    r = client.put("/iot/groups", params=key, json={"entity_type": "Sensor"}, headers=OPENIOT)
    assert r.status_code == 204
    assert client.get("/iot/services", headers=OPENIOT).json()["groups"][0]["entity_type"] == (
        "Sensor"
    )
    assert client.delete("/iot/services", params=key, headers=OPENIOT).status_code == 204
    r = client.delete("/iot/groups", params=key, headers=OPENIOT)
    assert r.status_code == 404
    assert r.json()["name"] == "DEVICE_GROUP_NOT_FOUND"


def test_device_update_and_delete(client: TestClient) -> None:
    json_device(client)
    r = client.put("/iot/devices/DevID1", json={"entity_type": "Sensor"}, headers=OPENIOT)
    assert r.status_code == 204
    assert client.get("/iot/devices/DevID1", headers=OPENIOT).json()["entity_type"] == "Sensor"
    assert client.delete("/iot/devices/DevID1", headers=OPENIOT).status_code == 204
    assert client.get("/iot/devices/DevID1", headers=OPENIOT).status_code == 404


def test_services_are_separate_tenants(client: TestClient) -> None:
    provision(client, "/iot/devices", API_MD_DEVICE)
    assert client.get("/iot/devices/DevID1").status_code == 404
    other = {"Fiware-Service": "smartgondor"}
    assert client.get("/iot/devices", headers=other).json()["count"] == 0
    r = client.get("/iot/devices", headers={"Fiware-Service": "no-dashes"})
    assert r.status_code == 400


# -- south-bound ----------------------------------------------------------------------------


def test_json_measures_update_the_entity_with_mapped_types(client: TestClient) -> None:
    json_device(client)
    r = client.post("/iot/json", params={"k": "1234", "i": "DevID1"}, json={"h": 70, "t": 15})
    assert r.status_code == 200, r.text
    doc = entity(client, "urn:ngsi-ld:Device:TheDevice1")
    assert doc["type"] == "Device"
    assert doc["temperature"]["value"] == 15.0
    assert isinstance(doc["temperature"]["value"], float)
    assert doc["humidity"]["value"] == 70.0
    assert "observedAt" in doc["temperature"]


def test_json_single_attribute_endpoint(client: TestClient) -> None:
    json_device(client)
    r = client.post("/iot/json/attrs/t", params={"k": "1234", "i": "DevID1"}, content=b"21.5")
    assert r.status_code == 200, r.text
    assert entity(client, "urn:ngsi-ld:Device:TheDevice1")["temperature"]["value"] == 21.5
    r = client.post("/iot/json/attrs/t", params={"k": "1234", "i": "DevID1"}, content=b"{")
    assert r.status_code == 400
    assert entity(client, "urn:ngsi-ld:Device:TheDevice1")["temperature"]["value"] == 21.5


def test_about_counts_measures_by_outcome(client: TestClient) -> None:
    json_device(client)
    client.post("/iot/json", params={"k": "1234", "i": "DevID1"}, json={"t": 15})
    client.post("/iot/json", params={"k": "1234", "i": "DevID1"}, content=b"[")
    client.post("/iot/json", params={"k": "nokey", "i": "DevID1"}, json={"t": 15})
    about = client.get("/iot/about").json()
    assert about["mqtt"] is None
    assert about["measures"] == {
        "accepted": 1,
        "refused:BAD_REQUEST": 1,
        "refused:DEVICE_GROUP_NOT_FOUND": 1,
    }


def test_json_multi_measure_with_device_timestamps_and_unit_code(client: TestClient) -> None:
    provision(client, "/iot/groups", JSON_GROUP)
    device = {
        "devices": [
            {
                "device_id": "gauge1",
                "entity_type": "WaterObserved",
                "attributes": [
                    {
                        "object_id": "l",
                        "name": "waterLevel",
                        "type": "Number",
                        "metadata": {"unitCode": {"type": "Text", "value": "MTR"}},
                    }
                ],
            }
        ]
    }
    provision(client, "/iot/devices", device)
    measures = [
        {"l": 1.2, "TimeInstant": "2026-11-25T10:00:00Z"},
        {"l": 1.4, "TimeInstant": "2026-11-25T10:10:00Z"},
    ]
    r = client.post("/iot/json", params={"k": "1234", "i": "gauge1"}, json=measures)
    assert r.status_code == 200, r.text
    level = entity(client, "urn:ngsi-ld:WaterObserved:gauge1")["waterLevel"]
    assert level["value"] == 1.4
    assert level["unitCode"] == "MTR"
    assert level["observedAt"].startswith("2026-11-25T10:10:00")
    # Both readings of the message were written, not just the last one.
    r = client.get(
        "/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:WaterObserved:gauge1",
        headers={"NGSILD-Tenant": "openiot"},
    )
    assert [i["value"] for i in r.json()["waterLevel"]] == [1.2, 1.4]


def test_ultralight_tutorial_measure_post_and_get(client: TestClient) -> None:
    provision(client, "/iot/groups", UL_GROUP)
    provision(client, "/iot/devices", UL_DEVICE)
    r = client.post(
        "/iot/d",
        params={"k": UL_KEY, "i": "motion001"},
        content=b"c|1",
        headers={"Content-Type": "text/plain"},
    )
    assert r.status_code == 200, r.text
    doc = entity(client, "urn:ngsi-ld:Motion:001")
    assert doc["count"]["value"] == 1
    assert doc["refStore"] == {"type": "Relationship", "object": "urn:ngsi-ld:Store:001"}
    params = {"k": UL_KEY, "i": "motion001", "d": "c|2", "t": "2026-11-25T09:30:00Z"}
    assert client.get("/iot/d", params=params).status_code == 200
    count = entity(client, "urn:ngsi-ld:Motion:001")["count"]
    assert count["value"] == 2
    assert count["observedAt"].startswith("2026-11-25T09:30:00")


def test_ultralight_leading_timestamp_becomes_observed_at(client: TestClient) -> None:
    provision(client, "/iot/groups", UL_GROUP)
    r = client.post(
        "/iot/d", params={"k": UL_KEY, "i": "lamp1"}, content=b"2016-06-13T00:35:30Z|lle|100"
    )
    assert r.status_code == 200, r.text
    lle = entity(client, "urn:ngsi-ld:Thing:lamp1")["lle"]
    # Unmapped UltraLight values are untyped strings.
    assert lle["value"] == "100"
    assert lle["observedAt"].startswith("2016-06-13T00:35:30")


def test_autoprovision_creates_the_device(client: TestClient) -> None:
    provision(client, "/iot/groups", JSON_GROUP)
    r = client.post("/iot/json", params={"k": "1234", "i": "sensor42"}, json={"t": 21})
    assert r.status_code == 200, r.text
    assert entity(client, "urn:ngsi-ld:Thing:sensor42")["t"]["value"] == 21
    device = client.get("/iot/devices/sensor42", headers=OPENIOT).json()
    assert device["entity_name"] == "urn:ngsi-ld:Thing:sensor42"


def test_autoprovision_off_refuses_unknown_devices(client: TestClient) -> None:
    group = {"groups": [{**JSON_GROUP["groups"][0], "autoprovision": False}]}
    provision(client, "/iot/groups", group)
    r = client.post("/iot/json", params={"k": "1234", "i": "stranger"}, json={"t": 21})
    assert r.status_code == 404
    assert r.json()["name"] == "DEVICE_NOT_FOUND"
    assert client.get("/iot/devices", headers=OPENIOT).json()["count"] == 0
    r = client.get(f"{ENTITIES}/urn:ngsi-ld:Thing:stranger", headers={"NGSILD-Tenant": "openiot"})
    assert r.status_code == 404


def test_unknown_apikey_is_not_found(client: TestClient) -> None:
    r = client.post("/iot/json", params={"k": "nokey", "i": "d1"}, json={"t": 1})
    assert r.status_code == 404
    assert r.json()["name"] == "DEVICE_GROUP_NOT_FOUND"
    r = client.post("/iot/json", params={"i": "d1"}, json={"t": 1})
    assert r.status_code == 400


def test_default_tenant_when_no_service_header(client: TestClient) -> None:
    client.post("/iot/groups", json=JSON_GROUP).raise_for_status()
    r = client.post("/iot/json", params={"k": "1234", "i": "d1"}, json={"t": 5})
    assert r.status_code == 200, r.text
    assert entity(client, "urn:ngsi-ld:Thing:d1", tenant="")["t"]["value"] == 5


def test_service_header_maps_to_lower_case_tenant(client: TestClient) -> None:
    client.post("/iot/groups", json=JSON_GROUP, headers={"Fiware-Service": "SmartGondor"})
    assert (
        client.post("/iot/json", params={"k": "1234", "i": "d1"}, json={"t": 5}).status_code == 200
    )
    assert entity(client, "urn:ngsi-ld:Thing:d1", tenant="smartgondor")["t"]["value"] == 5


def test_malformed_measures_change_nothing(client: TestClient) -> None:
    json_device(client)
    key = {"k": "1234", "i": "DevID1"}
    assert client.post("/iot/json", params=key, json={"t": 15}).status_code == 200
    bad = [
        client.post("/iot/json", params=key, json=[{"t": 16}, {"t": "hot"}]),
        client.post("/iot/json", params=key, content=b"{not json"),
        client.post("/iot/json", params={**key, "t": "yesterday"}, json={"t": 17}),
    ]
    for r in bad:
        assert r.status_code == 400
        assert r.json()["name"] == "BAD_REQUEST"
        assert r.json()["message"]
    assert entity(client, "urn:ngsi-ld:Device:TheDevice1")["temperature"]["value"] == 15.0


def test_tutorial_services_body_on_the_deprecated_path(client: TestClient) -> None:
    """The FIWARE UltraLight tutorial provisions with {"services": [...]} and a cbroker field."""
    headers = {"fiware-service": "openiot", "fiware-servicepath": "/"}
    r = client.post(
        "/iot/services",
        headers=headers,
        json={
            "services": [
                {
                    "apikey": "4jggokgpepnvsb2uv4s40d59ov",
                    "cbroker": "http://orion:1026",
                    "entity_type": "Thing",
                    "resource": "/iot/d",
                }
            ]
        },
    )
    assert r.status_code == 201, r.text
    r = client.post(
        "/iot/devices",
        headers=headers,
        json={
            "devices": [
                {
                    "device_id": "motion001",
                    "entity_name": "urn:ngsi-ld:Motion:001",
                    "entity_type": "Motion",
                    "attributes": [{"object_id": "c", "name": "count", "type": "Integer"}],
                }
            ]
        },
    )
    assert r.status_code == 201, r.text
    r = client.post(
        "/iot/d",
        params={"k": "4jggokgpepnvsb2uv4s40d59ov", "i": "motion001"},
        content=b"c|3",
        headers={"Content-Type": "text/plain"},
    )
    assert r.status_code in (200, 204), r.text
    got = client.get(
        "/ngsi-ld/v1/entities/urn:ngsi-ld:Motion:001", headers={"NGSILD-Tenant": "openiot"}
    ).json()
    assert got["count"]["value"] == 3
