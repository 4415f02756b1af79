"""Entity and attribute operations over HTTP (GS CIM 009 clauses 6.4 to 6.7)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import LD, sensor
from starlette.testclient import TestClient

E = "/ngsi-ld/v1/entities"
SID = "urn:ngsi-ld:WaterLevelObserved:akiyama-1"
PROBLEM = "https://uri.etsi.org/ngsi-ld/errors/"


def problem(resp: Any, status: int, kind: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = resp.json()
    assert body["type"] == PROBLEM + kind
    assert body["status"] == status
    return body


def test_create_then_retrieve_round_trips(client: TestClient) -> None:
    r = client.post(E, json=sensor())
    assert r.status_code == 201
    assert r.headers["location"] == f"{E}/{SID}"
    got = client.get(f"{E}/{SID}").json()
    assert got["id"] == SID
    assert got["type"] == "WaterLevelObserved"
    assert got["waterLevel"] == {
        "type": "Property",
        "value": 1.5,
        "unitCode": "MTR",
        "observedAt": "2026-11-25T10:00:00Z",
    }
    assert got["name"]["value"] == "秋山川 1"
    assert got["refRiver"] == {"type": "Relationship", "object": "urn:ngsi-ld:River:akiyama"}
    assert got["location"]["value"]["type"] == "Point"
    assert "createdAt" not in got


def test_create_twice_is_already_exists(client: TestClient) -> None:
    assert client.post(E, json=sensor()).status_code == 201
    problem(client.post(E, json=sensor(level=9)), 409, "AlreadyExists")
    assert client.get(f"{E}/{SID}").json()["waterLevel"]["value"] == 1.5


def test_sys_attrs_are_set_and_shown_on_request(client: TestClient) -> None:
    client.post(E, json=sensor())
    got = client.get(f"{E}/{SID}", params={"options": "sysAttrs"}).json()
    assert got["createdAt"].endswith("Z")
    assert got["modifiedAt"] >= got["createdAt"]
    assert "createdAt" in got["waterLevel"]


def test_retrieve_missing_is_404(client: TestClient) -> None:
    body = problem(client.get(f"{E}/urn:ngsi-ld:X:nope"), 404, "ResourceNotFound")
    assert "urn:ngsi-ld:X:nope" in body["detail"]


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"type": "T"}, "id"),
        ({"id": "not a uri", "type": "T"}, "id"),
        ({"id": "urn:x:1"}, "type"),
        ({"id": "urn:x:1", "type": "T", "a": {"type": "Nonsense", "value": 1}}, "a"),
        ({"id": "urn:x:1", "type": "T", "a": {"type": "Property"}}, "a"),
        ({"id": "urn:x:1", "type": "T", "a": {"type": "Relationship", "object": "no uri"}}, "a"),
        (
            {
                "id": "urn:x:1",
                "type": "T",
                "location": {
                    "type": "GeoProperty",
                    "value": {"type": "Point", "coordinates": [500, 1]},
                },
            },
            "location",
        ),
        (
            {
                "id": "urn:x:1",
                "type": "T",
                "a": {"type": "Property", "value": 1, "observedAt": "yesterday"},
            },
            "observedAt",
        ),
        ({"id": "urn:x:1", "type": "T", "a": {"type": "Property", "value": None}}, "a"),
        ({"id": "urn:x:1", "type": "T", "bad name": 1}, "bad name"),
        ({"id": "urn:x:1", "type": 5}, "type"),
        (
            {
                "id": "urn:x:1",
                "type": "T",
                "a": {"type": "Property", "value": 1, "datasetId": "nope"},
            },
            "datasetId",
        ),
        ({"id": "urn:x:1", "type": "T", "scope": "no-slash"}, "scope"),
        ([1, 2], "object"),
    ],
)
def test_invalid_entities_are_rejected_and_nothing_is_stored(
    client: TestClient, payload: Any, needle: str
) -> None:
    body = problem(client.post(E, json=payload), 400, "BadRequestData")
    assert needle in body["detail"]
    assert client.get(E, params={"type": "T"}).json() == []


def test_malformed_json_is_invalid_request(client: TestClient) -> None:
    r = client.post(E, content=b'{"id": ', headers={"Content-Type": "application/json"})
    problem(r, 400, "InvalidRequest")


def test_wrong_content_type_is_415(client: TestClient) -> None:
    r = client.post(E, content=b"id=1", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_huge_body_is_413_and_changes_nothing(client: TestClient) -> None:
    big = sensor(description={"type": "Property", "value": "x" * (10 * 1024 * 1024)})
    r = client.post(E, json=big)
    assert r.status_code == 413
    assert r.headers["content-type"].startswith("application/problem+json")
    problem(client.get(f"{E}/{SID}"), 404, "ResourceNotFound")


def test_deep_nesting_is_rejected(client: TestClient) -> None:
    value: Any = 1
    for _ in range(200):
        value = {"a": value}
    r = client.post(E, json=sensor(deep={"type": "Property", "value": value}))
    problem(r, 400, "BadRequestData")
    deeper = b'{"id":"urn:x:1","type":"T","a":' + b"[" * 5000 + b"]" * 5000 + b"}"
    r = client.post(E, content=deeper, headers={"Content-Type": "application/json"})
    assert r.status_code == 400


def test_concise_input_is_accepted(client: TestClient) -> None:
    r = client.post(
        E,
        json={
            "id": "urn:ngsi-ld:Shelter:sano-1",
            "type": "Shelter",
            "name": "佐野市役所",
            "capacity": 120,
            "open": True,
            "owner": {"object": "urn:ngsi-ld:Organization:sano"},
            "location": {"type": "Point", "coordinates": [139.578, 36.314]},
            "label": {"languageMap": {"ja": "避難所", "en": "Shelter"}},
        },
    )
    assert r.status_code == 201, r.text
    got = client.get(f"{E}/urn:ngsi-ld:Shelter:sano-1").json()
    assert got["name"] == {"type": "Property", "value": "佐野市役所"}
    assert got["capacity"]["value"] == 120
    assert got["owner"]["type"] == "Relationship"
    assert got["location"]["type"] == "GeoProperty"
    assert got["label"]["type"] == "LanguageProperty"


def test_replace_entity(client: TestClient) -> None:
    client.post(E, json=sensor())
    r = client.put(f"{E}/{SID}", json={"type": "WaterLevelObserved", "waterLevel": 3.0})
    assert r.status_code == 204, r.text
    got = client.get(f"{E}/{SID}").json()
    assert got["waterLevel"]["value"] == 3.0
    assert "name" not in got
    assert "location" not in got
    problem(client.put(f"{E}/urn:x:none", json={"type": "T"}), 404, "ResourceNotFound")


def test_merge_entity_patches_and_deletes_with_null(client: TestClient) -> None:
    client.post(E, json=sensor())
    r = client.patch(
        f"{E}/{SID}",
        json={"waterLevel": {"value": 2.5}, "name": "urn:ngsi-ld:null", "status": "warning"},
    )
    assert r.status_code == 204, r.text
    got = client.get(f"{E}/{SID}").json()
    assert got["waterLevel"]["value"] == 2.5
    assert got["waterLevel"]["unitCode"] == "MTR"  # merged, not replaced
    assert "name" not in got
    assert got["status"]["value"] == "warning"


def test_delete_entity(client: TestClient) -> None:
    client.post(E, json=sensor())
    assert client.delete(f"{E}/{SID}").status_code == 204
    problem(client.get(f"{E}/{SID}"), 404, "ResourceNotFound")
    problem(client.delete(f"{E}/{SID}"), 404, "ResourceNotFound")


def test_append_attributes_with_and_without_no_overwrite(client: TestClient) -> None:
    client.post(E, json=sensor())
    r = client.post(f"{E}/{SID}/attrs", json={"waterLevel": 4.0, "alert": "flood"})
    assert r.status_code == 204, r.text
    r = client.post(
        f"{E}/{SID}/attrs", params={"options": "noOverwrite"}, json={"waterLevel": 9.9, "extra": 1}
    )
    assert r.status_code == 207
    body = r.json()
    assert body["updated"] == ["extra"]
    assert body["notUpdated"][0]["attributeName"] == "waterLevel"
    got = client.get(f"{E}/{SID}").json()
    assert got["waterLevel"]["value"] == 4.0
    assert got["alert"]["value"] == "flood"
    assert got["extra"]["value"] == 1


def test_update_attributes_reports_missing_ones(client: TestClient) -> None:
    client.post(E, json=sensor())
    r = client.patch(f"{E}/{SID}/attrs", json={"waterLevel": 2.0, "missing": 1})
    assert r.status_code == 207
    assert r.json()["notUpdated"][0]["attributeName"] == "missing"
    got = client.get(f"{E}/{SID}").json()
    assert got["waterLevel"] == {"type": "Property", "value": 2.0}
    assert "missing" not in got


def test_partial_attribute_update_keeps_other_members(client: TestClient) -> None:
    client.post(E, json=sensor())
    r = client.patch(f"{E}/{SID}/attrs/waterLevel", json={"value": 3.3})
    assert r.status_code == 204, r.text
    wl = client.get(f"{E}/{SID}").json()["waterLevel"]
    assert wl == {
        "type": "Property",
        "value": 3.3,
        "unitCode": "MTR",
        "observedAt": "2026-11-25T10:00:00Z",
    }
    problem(client.patch(f"{E}/{SID}/attrs/nope", json={"value": 1}), 404, "ResourceNotFound")
    problem(
        client.patch(f"{E}/urn:x:none/attrs/waterLevel", json={"value": 1}), 404, "ResourceNotFound"
    )


def test_partial_update_of_relationship(client: TestClient) -> None:
    client.post(E, json=sensor())
    r = client.patch(f"{E}/{SID}/attrs/refRiver", json={"object": "urn:ngsi-ld:River:watarase"})
    assert r.status_code == 204, r.text
    got = client.get(f"{E}/{SID}").json()
    assert got["refRiver"]["object"] == "urn:ngsi-ld:River:watarase"
    r = client.patch(f"{E}/{SID}/attrs/refRiver", json={"object": "not a uri"})
    problem(r, 400, "BadRequestData")
    assert client.get(f"{E}/{SID}").json()["refRiver"]["object"] == "urn:ngsi-ld:River:watarase"


def test_replace_attribute(client: TestClient) -> None:
    client.post(E, json=sensor())
    r = client.put(f"{E}/{SID}/attrs/waterLevel", json={"type": "Property", "value": 0.5})
    assert r.status_code == 204, r.text
    assert client.get(f"{E}/{SID}").json()["waterLevel"] == {"type": "Property", "value": 0.5}
    problem(client.put(f"{E}/{SID}/attrs/nope", json={"value": 1}), 404, "ResourceNotFound")


def test_multi_instance_attributes_with_dataset_id(client: TestClient) -> None:
    client.post(
        E,
        json=sensor(
            temperature=[
                {"type": "Property", "value": 10, "datasetId": "urn:ngsi-ld:Dataset:sensorA"},
                {"type": "Property", "value": 11, "datasetId": "urn:ngsi-ld:Dataset:sensorB"},
                {"type": "Property", "value": 12},
            ]
        ),
    )
    temps = client.get(f"{E}/{SID}").json()["temperature"]
    assert sorted(t["value"] for t in temps) == [10, 11, 12]
    r = client.delete(
        f"{E}/{SID}/attrs/temperature", params={"datasetId": "urn:ngsi-ld:Dataset:sensorA"}
    )
    assert r.status_code == 204
    temps = client.get(f"{E}/{SID}").json()["temperature"]
    assert sorted(t["value"] for t in temps) == [11, 12]
    r = client.delete(f"{E}/{SID}/attrs/temperature", params={"datasetId": "urn:x:nope"})
    problem(r, 404, "ResourceNotFound")
    assert (
        client.delete(f"{E}/{SID}/attrs/temperature", params={"deleteAll": "true"}).status_code
        == 204
    )
    assert "temperature" not in client.get(f"{E}/{SID}").json()


def test_duplicate_dataset_ids_are_rejected(client: TestClient) -> None:
    r = client.post(
        E,
        json=sensor(
            temperature=[
                {"type": "Property", "value": 10, "datasetId": "urn:a"},
                {"type": "Property", "value": 11, "datasetId": "urn:a"},
            ]
        ),
    )
    problem(r, 400, "BadRequestData")


def test_sub_properties_and_relationships(client: TestClient) -> None:
    client.post(
        E,
        json=sensor(
            waterLevel={
                "type": "Property",
                "value": 2.0,
                "measuredBy": {"type": "Relationship", "object": "urn:ngsi-ld:Device:wl-1"},
                "quality": {
                    "type": "Property",
                    "value": "good",
                    "checkedBy": {"type": "Relationship", "object": "urn:ngsi-ld:Person:a"},
                },
            }
        ),
    )
    wl = client.get(f"{E}/{SID}").json()["waterLevel"]
    assert wl["measuredBy"]["object"] == "urn:ngsi-ld:Device:wl-1"
    assert wl["quality"]["checkedBy"]["object"] == "urn:ngsi-ld:Person:a"


def test_all_attribute_kinds_round_trip(client: TestClient) -> None:
    r = client.post(
        E,
        json={
            "id": "urn:x:kinds",
            "type": "T",
            "p": {"type": "Property", "value": {"nested": [1, 2]}},
            "j": {"type": "JsonProperty", "json": {"any": {"thing": True}}},
            "v": {"type": "VocabProperty", "vocab": "Flood"},
            "lp": {"type": "LanguageProperty", "languageMap": {"ja": "避難所", "en": "Shelter"}},
            "lst": {"type": "ListProperty", "valueList": [3, 1, 2]},
            "lr": {"type": "ListRelationship", "objectList": ["urn:a:1", "urn:a:2"]},
            "rel": {"type": "Relationship", "object": "urn:a:3", "objectType": "Building"},
        },
    )
    assert r.status_code == 201, r.text
    got = client.get(f"{E}/urn:x:kinds").json()
    assert got["p"]["value"] == {"nested": [1, 2]}
    assert got["j"] == {"type": "JsonProperty", "json": {"any": {"thing": True}}}
    assert got["v"] == {"type": "VocabProperty", "vocab": "Flood"}
    assert got["lp"]["languageMap"] == {"ja": "避難所", "en": "Shelter"}
    assert got["lst"]["valueList"] == [3, 1, 2]
    assert got["lr"]["objectList"] == [{"object": "urn:a:1"}, {"object": "urn:a:2"}]
    assert got["rel"]["objectType"] == "Building"


def test_formats_key_values_and_concise(client: TestClient) -> None:
    client.post(E, json=sensor())
    kv = client.get(f"{E}/{SID}", params={"options": "keyValues"}).json()
    assert kv["waterLevel"] == 1.5
    assert kv["refRiver"] == "urn:ngsi-ld:River:akiyama"
    assert kv == client.get(f"{E}/{SID}", params={"format": "simplified"}).json()
    concise = client.get(f"{E}/{SID}", params={"format": "concise"}).json()
    assert concise["name"] == "秋山川 1"
    assert concise["waterLevel"]["value"] == 1.5
    assert "type" not in concise["waterLevel"]
    problem(client.get(f"{E}/{SID}", params={"format": "fancy"}), 400, "BadRequestData")
    problem(client.get(f"{E}/{SID}", params={"options": "bogus"}), 400, "BadRequestData")
    problem(
        client.get(f"{E}/{SID}", params={"options": "keyValues", "format": "concise"}),
        400,
        "BadRequestData",
    )


def test_pick_omit_attrs(client: TestClient) -> None:
    client.post(E, json=sensor())
    got = client.get(f"{E}/{SID}", params={"attrs": "waterLevel"}).json()
    assert set(got) == {"id", "type", "waterLevel"}
    got = client.get(f"{E}/{SID}", params={"pick": "waterLevel"}).json()
    assert set(got) == {"waterLevel"}
    got = client.get(f"{E}/{SID}", params={"omit": "waterLevel,name"}).json()
    assert set(got) == {"id", "type", "location", "refRiver"}


def test_lang_selects_a_language(client: TestClient) -> None:
    client.post(
        E,
        json=sensor(
            label={
                "type": "LanguageProperty",
                "languageMap": {"ja": "秋山川", "en": "Akiyama River"},
            }
        ),
    )
    got = client.get(f"{E}/{SID}", params={"lang": "en"}).json()
    assert got["label"]["value"] == "Akiyama River"
    assert got["label"]["lang"] == "en"
    got = client.get(f"{E}/{SID}", params={"lang": "ja", "options": "keyValues"}).json()
    assert got["label"] == "秋山川"


def test_unknown_query_parameter_is_rejected(client: TestClient) -> None:
    client.post(E, json=sensor())
    problem(client.get(f"{E}/{SID}", params={"bogus": "1"}), 400, "BadRequestData")


def test_method_not_allowed_is_a_problem(client: TestClient) -> None:
    r = client.request("POST", f"{E}/{SID}", json={})
    assert r.status_code == 405
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "GET" in r.headers["allow"]


def test_unknown_path_is_a_problem(client: TestClient) -> None:
    problem(client.get("/ngsi-ld/v1/nothing-here"), 404, "ResourceNotFound")


def test_trailing_slash_is_accepted(client: TestClient) -> None:
    assert client.post(E + "/", json=sensor()).status_code == 201
    assert client.get(f"{E}/{SID}/").status_code == 200


def test_json_ld_context_in_body(client: TestClient) -> None:
    ctx = {"wl": "https://example.org/ns#waterLevel", "Sensor": "https://example.org/ns#Sensor"}
    r = client.post(
        E, json={"@context": [ctx], "id": "urn:x:ld", "type": "Sensor", "wl": 1}, headers=LD
    )
    assert r.status_code == 201, r.text
    # Without the context the attribute has its full IRI
    got = client.get(f"{E}/urn:x:ld").json()
    assert got["https://example.org/ns#waterLevel"]["value"] == 1
    assert got["type"] == "https://example.org/ns#Sensor"
    # With it, the short names come back, and ld+json carries the context
    got = client.get(f"{E}/urn:x:ld", headers={"Accept": "application/ld+json"}).json()
    assert "@context" in got


def test_context_errors(client: TestClient) -> None:
    # ld+json without @context
    r = client.post(E, json=sensor(), headers=LD)
    problem(r, 400, "BadRequestData")
    # json with @context in the body
    r = client.post(E, json={**sensor(), "@context": "https://x.org/c.jsonld"})
    problem(r, 400, "BadRequestData")
    # ld+json with a Link header as well
    link = '<https://x.org/c.jsonld>; rel="http://www.w3.org/ns/json-ld#context"'
    r = client.post(
        E, json={**sensor(), "@context": "https://x.org/c.jsonld"}, headers={**LD, "Link": link}
    )
    problem(r, 400, "BadRequestData")


def test_unreachable_remote_context_is_503(client: TestClient) -> None:
    link = '<https://unreachable.example/ctx.jsonld>; rel="http://www.w3.org/ns/json-ld#context"'
    r = client.post(E, json=sensor(), headers={"Link": link})
    problem(r, 503, "LdContextNotAvailable")
    problem(client.get(f"{E}/{SID}"), 404, "ResourceNotFound")


def test_not_acceptable(client: TestClient) -> None:
    client.post(E, json=sensor())
    r = client.get(f"{E}/{SID}", headers={"Accept": "text/html"})
    problem(r, 406, "NotAcceptable")
    r = client.get(f"{E}/{SID}", headers={"Accept": "application/*"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")


def test_geojson_representation(client: TestClient) -> None:
    client.post(E, json=sensor())
    r = client.get(f"{E}/{SID}", headers={"Accept": "application/geo+json"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/geo+json")
    body = r.json()
    assert body["type"] == "Feature"
    assert body["id"] == SID
    assert body["geometry"]["type"] == "Point"


def test_tenants_are_isolated(client: TestClient) -> None:
    t = {"NGSILD-Tenant": "sano"}
    assert client.post(E, json=sensor(), headers=t).status_code == 201
    problem(client.get(f"{E}/{SID}"), 404, "ResourceNotFound")
    assert client.get(f"{E}/{SID}", headers=t).status_code == 200
    r = client.get(f"{E}/{SID}", headers={"NGSILD-Tenant": "ashikaga"})
    problem(r, 404, "NonexistentTenant")
    r = client.get(E, params={"type": "WaterLevelObserved"}, headers={"NGSILD-Tenant": "nobody"})
    problem(r, 404, "NonexistentTenant")
    problem(
        client.get(f"{E}/{SID}", headers={"NGSILD-Tenant": "bad tenant!"}), 400, "BadRequestData"
    )


def test_retrieve_selected_dataset_ids(client: TestClient) -> None:
    client.post(
        E,
        json=sensor(
            temperature=[
                {"type": "Property", "value": 10, "datasetId": "urn:ngsi-ld:Dataset:a"},
                {"type": "Property", "value": 12},
            ]
        ),
    )
    got = client.get(f"{E}/{SID}", params={"datasetId": "urn:ngsi-ld:Dataset:a"}).json()
    assert got["temperature"]["value"] == 10
    got = client.get(f"{E}/{SID}", params={"datasetId": "@none"}).json()
    assert got["temperature"]["value"] == 12
    problem(client.get(f"{E}/{SID}", params={"datasetId": "not a uri"}), 400, "BadRequestData")
