"""CITYOS_AUTH=on: anyone reads public safety data; everything else, and other tenants, is closed.

Through the real app: queries, entities by id, counts, /types and /attributes, the temporal
API, subscriptions and their notifications, the catalog's private datasets, and tenants.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Receiver, make_client, make_key
from starlette.testclient import TestClient

E = "/ngsi-ld/v1/entities"
GAUGE = {
    "id": "urn:ngsi-ld:WaterObserved:sano-ohashi",
    "type": "WaterObserved",
    "waterLevel": {"type": "Property", "value": 2.1, "observedAt": "2026-11-25T10:00:00Z"},
    "name": {"type": "Property", "value": "秋山川 大橋"},
}
PATIENT = {
    "id": "urn:ngsi-ld:Person:resident-1",
    "type": "Person",
    "heartRate": {"type": "Property", "value": 71, "observedAt": "2026-11-25T10:00:00Z"},
    "name": {"type": "Property", "value": "佐野 花子"},
}
NOWHERE = "urn:ngsi-ld:Person:nobody"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path, auth="on") as c:
        yield c


def auth(key: str, tenant: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if tenant is not None:
        headers["NGSILD-Tenant"] = tenant
    return headers


@pytest.fixture
def steward(client: TestClient) -> str:
    key = make_key(client, "steward")
    for doc in (GAUGE, PATIENT):
        assert client.post(E, json=doc, headers=auth(key)).status_code == 201
    return key


def ids(resp: Any) -> list[str]:
    assert resp.status_code == 200, resp.text
    return sorted(e["id"] for e in resp.json())


# -- entities -----------------------------------------------------------------------------------


def test_anyone_reads_public_types_a_key_reads_the_rest(client: TestClient, steward: str) -> None:
    assert ids(client.get(E, params={"type": "WaterObserved"})) == [GAUGE["id"]]
    assert ids(client.get(E, params={"type": "Person"}, headers=auth(steward))) == [PATIENT["id"]]
    # a query naming a restricted type is refused, not silently emptied
    r = client.get(E, params={"type": "Person"})
    assert r.status_code == 401
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/Unauthorized"
    assert r.json()["detail"] == "reading entities of type Person needs a credential"
    r = client.get(E, params={"type": "WaterObserved,Person"})
    assert r.status_code == 401
    r = client.post(
        "/ngsi-ld/v1/entityOperations/query",
        json={"type": "Query", "entities": [{"type": "Person"}]},
    )
    assert r.status_code == 401


def test_a_query_without_a_type_sees_only_public_entities_and_counts_them(
    client: TestClient, steward: str
) -> None:
    everything = {"q": 'name!="x"', "count": "true"}
    r = client.get(E, params=everything)
    assert ids(r) == [GAUGE["id"]]
    assert r.headers["NGSILD-Results-Count"] == "1"
    r = client.get(E, params=everything, headers=auth(steward))
    assert ids(r) == sorted([GAUGE["id"], PATIENT["id"]])
    assert r.headers["NGSILD-Results-Count"] == "2"
    # by id, without a type: the restricted one is simply not there
    both = ",".join([GAUGE["id"], PATIENT["id"]])
    assert ids(client.get(E, params={"id": both})) == [GAUGE["id"]]


def test_a_restricted_entity_is_answered_exactly_as_a_missing_one(
    client: TestClient, steward: str
) -> None:
    hidden = client.get(f"{E}/{PATIENT['id']}")
    missing = client.get(f"{E}/{NOWHERE}")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["type"] == missing.json()["type"]
    assert hidden.json()["detail"].replace(PATIENT["id"], "X") == missing.json()["detail"].replace(
        NOWHERE, "X"
    )
    assert client.get(f"{E}/{PATIENT['id']}", headers=auth(steward)).status_code == 200
    assert client.get(f"{E}/{GAUGE['id']}").json()["name"]["value"] == "秋山川 大橋"


def test_a_key_without_the_read_right_sees_what_anyone_sees(
    client: TestClient, steward: str
) -> None:
    iot_only = make_key(client, "app", scopes=("iot:*",))
    r = client.get(E, params={"type": "Person"}, headers=auth(iot_only))
    assert r.status_code == 403
    assert r.json()["detail"] == "this credential may not read entities of type Person"
    assert client.get(f"{E}/{PATIENT['id']}", headers=auth(iot_only)).status_code == 404
    assert ids(client.get(E, params={"type": "WaterObserved"}, headers=auth(iot_only))) == [
        GAUGE["id"]
    ]
    reader = make_key(client, "app", scopes=("entities:read",))
    assert ids(client.get(E, params={"type": "Person"}, headers=auth(reader))) == [PATIENT["id"]]


def test_types_and_attributes_show_only_what_may_be_read(client: TestClient, steward: str) -> None:
    assert client.get("/ngsi-ld/v1/types").json()["typeList"] == ["WaterObserved"]
    assert client.get("/ngsi-ld/v1/types", headers=auth(steward)).json()["typeList"] == [
        "Person",
        "WaterObserved",
    ]
    assert client.get("/ngsi-ld/v1/types/Person").status_code == 404
    assert client.get("/ngsi-ld/v1/types/Person", headers=auth(steward)).status_code == 200
    attrs = client.get("/ngsi-ld/v1/attributes").json()["attributeList"]
    assert attrs == ["name", "waterLevel"]
    assert "heartRate" in client.get("/ngsi-ld/v1/attributes", headers=auth(steward)).text
    assert client.get("/ngsi-ld/v1/attributes/heartRate").status_code == 404
    # counts do not include what the caller cannot see (both entities have a name)
    name = client.get("/ngsi-ld/v1/attributes/name").json()
    assert (name["attributeCount"], name["typeNames"]) == (1, ["WaterObserved"])
    name = client.get("/ngsi-ld/v1/attributes/name", headers=auth(steward)).json()
    assert (name["attributeCount"], sorted(name["typeNames"])) == (2, ["Person", "WaterObserved"])


def test_history_follows_the_same_rules(client: TestClient, steward: str) -> None:
    t = "/ngsi-ld/v1/temporal/entities"
    assert client.get(t, params={"type": "Person"}).status_code == 401
    assert ids(client.get(t, params={"type": "WaterObserved"})) == [GAUGE["id"]]
    assert ids(client.get(t, params={"attrs": "name"})) == [GAUGE["id"]]
    assert client.get(f"{t}/{PATIENT['id']}").status_code == 404
    assert client.get(f"{t}/{PATIENT['id']}", headers=auth(steward)).status_code == 200
    assert client.get(f"{t}/{GAUGE['id']}").status_code == 200


# -- subscriptions ------------------------------------------------------------------------------


def sub(uri: str, type_: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "Subscription",
        "notification": {"endpoint": {"uri": uri}},
    }
    if type_ is None:
        body["watchedAttributes"] = ["name"]
    else:
        body["entities"] = [{"type": type_}]
    return body


def test_subscriptions_need_a_key_and_the_right_to_read_what_they_watch(
    client: TestClient, steward: str, receiver: Receiver
) -> None:
    s = "/ngsi-ld/v1/subscriptions"
    assert client.get(s).status_code == 401
    assert client.post(s, json=sub(receiver.url, "WaterObserved")).status_code == 401
    watcher = make_key(client, "app", scopes=("subscriptions:*",))
    r = client.post(s, json=sub(receiver.url, "Person"), headers=auth(watcher))
    assert r.status_code == 403
    assert "Person" in r.json()["detail"]
    r = client.post(s, json=sub(receiver.url, None), headers=auth(watcher))
    assert r.status_code == 403  # watchedAttributes alone would watch every type
    r = client.post(s, json=sub(receiver.url, "WaterObserved"), headers=auth(watcher))
    assert r.status_code == 201
    assert (
        client.post(s, json=sub(receiver.url, "Person"), headers=auth(steward)).status_code == 201
    )
    assert len(client.get(s, headers=auth(watcher)).json()) == 2


def test_notifications_never_cross_tenants(client: TestClient, receiver: Receiver) -> None:
    a = make_key(client, "steward", tenants=("sano",))
    b = make_key(client, "steward", tenants=("ashikaga",))
    r = client.post(
        "/ngsi-ld/v1/subscriptions",
        json=sub(receiver.url, "WaterObserved"),
        headers=auth(a, "sano"),
    )
    assert r.status_code == 201
    other = {**GAUGE, "id": "urn:ngsi-ld:WaterObserved:ashikaga-1"}
    assert client.post(E, json=other, headers=auth(b, "ashikaga")).status_code == 201
    assert client.post(E, json=GAUGE, headers=auth(a, "sano")).status_code == 201
    notes = receiver.wait(1)
    time.sleep(0.5)  # give a wrong notification the time to arrive
    assert [n["data"][0]["id"] for n in notes] == [GAUGE["id"]]


# -- tenants ------------------------------------------------------------------------------------


def test_another_tenant_is_indistinguishable_from_a_missing_one(client: TestClient) -> None:
    a = make_key(client, "admin", tenants=("sano",))
    b = make_key(client, "admin", tenants=("ashikaga",))
    assert client.post(E, json=PATIENT, headers=auth(b, "ashikaga")).status_code == 201
    for path, params in [
        (E, {"type": "Person", "count": "true"}),
        (f"{E}/{PATIENT['id']}", {}),
        ("/ngsi-ld/v1/types", {}),
        ("/ngsi-ld/v1/attributes/heartRate", {}),
        ("/ngsi-ld/v1/subscriptions", {}),
        ("/ngsi-ld/v1/temporal/entities", {"type": "Person"}),
    ]:
        there = client.get(path, params=params, headers=auth(a, "ashikaga"))
        nowhere = client.get(path, params=params, headers=auth(a, "nowhere"))
        assert there.status_code == nowhere.status_code == 404, path
        assert there.json() == {
            **nowhere.json(),
            "detail": nowhere.json()["detail"].replace("nowhere", "ashikaga"),
        }
        # and nobody without a credential reads a tenant that is not public
        assert (
            client.get(path, params=params, headers={"NGSILD-Tenant": "ashikaga"}).status_code
            == 401
        )
    assert ids(client.get(E, params={"type": "Person"}, headers=auth(b, "ashikaga"))) == [
        PATIENT["id"]
    ]


def test_public_tenants_are_a_setting(tmp_path: Path) -> None:
    with make_client(tmp_path, auth="on", public_tenants="sano") as client:
        key = make_key(client, "steward", tenants=("sano",))
        assert client.post(E, json=GAUGE, headers=auth(key, "sano")).status_code == 201
        r = client.get(E, params={"type": "WaterObserved"}, headers={"NGSILD-Tenant": "sano"})
        assert ids(r) == [GAUGE["id"]]
        # the default tenant is no longer public
        assert client.get(E, params={"type": "WaterObserved"}).status_code == 401


def test_public_types_are_a_setting(tmp_path: Path) -> None:
    with make_client(tmp_path, auth="on", public_types="Person") as client:
        key = make_key(client, "steward")
        for doc in (GAUGE, PATIENT):
            assert client.post(E, json=doc, headers=auth(key)).status_code == 201
        assert ids(client.get(E, params={"type": "Person"})) == [PATIENT["id"]]
        assert client.get(E, params={"type": "WaterObserved"}).status_code == 401


# -- the catalog --------------------------------------------------------------------------------


def test_private_datasets_are_seen_only_by_those_who_read_the_catalog(client: TestClient) -> None:
    steward = make_key(client, "steward")
    a = "/api/3/action/"
    for name, private in (("rivers", False), ("checkups", True)):
        r = client.post(
            a + "package_create", json={"name": name, "private": private}, headers=auth(steward)
        )
        assert r.status_code == 200, r.text

    def names(headers: dict[str, str]) -> list[str]:
        r = client.get(a + "package_search", params={"include_private": "true"}, headers=headers)
        return sorted(p["name"] for p in r.json()["result"]["results"])

    assert names({}) == ["rivers"]
    assert names(auth(steward)) == ["checkups", "rivers"]
    iot_only = make_key(client, "app", scopes=("iot:*",))
    assert names(auth(iot_only)) == ["rivers"]
    assert client.get(a + "package_show", params={"id": "checkups"}).status_code == 403
    assert (
        client.get(a + "package_show", params={"id": "checkups"}, headers=auth(steward)).status_code
        == 200
    )


def test_a_catalog_write_sent_as_a_get_is_checked_and_audited(client: TestClient) -> None:
    reader = make_key(client, "app", scopes=("catalog:read",))
    r = client.get("/api/3/action/package_create", params={"name": "sneaky"}, headers=auth(reader))
    assert r.status_code == 403
    assert r.json()["error"]["__type"] == "Authorization Error"
    assert client.get("/api/3/action/package_show", params={"id": "sneaky"}).status_code == 404
    assert client.portal is not None
    client.portal.call(client.app.guard.drain)  # type: ignore[attr-defined]
    records = client.portal.call(client.app.audit.records)  # type: ignore[attr-defined]
    last = records[-1]
    assert (last.action, last.outcome, last.target) == (
        "catalog.get",
        "denied",
        "/api/3/action/package_create",
    )


def test_a_live_dataset_publishes_only_what_its_readers_may_read(
    client: TestClient, steward: str
) -> None:
    live = "/api/3/action/cityos_live_dataset_create"

    def define(name: str, query: str, **extra: Any) -> Any:
        body = {"name": name, "query": query, **extra}
        return client.post(live, json=body, headers=auth(steward))

    r = define("residents", "type=Person")
    assert r.status_code == 409
    assert "public live dataset" in r.json()["error"]["private"][0]
    assert client.get("/api/3/action/package_show", params={"id": "residents"}).status_code == 404
    assert define("residents", "type=Person", private=True).status_code == 200
    assert define("gauges", "type=WaterObserved").status_code == 200
    # nor another tenant's entities, which the steward cannot read
    r = define("elsewhere", "type=WaterObserved", tenant="ashikaga", private=True)
    assert r.status_code == 403
    assert "may not read" in r.json()["error"]["message"]
