"""Every endpoint x role x tenant over the real app with CITYOS_AUTH=on: allowed or refused.

The table is written out by hand (not computed from the policy): a cell says whether that
caller's request must succeed (2xx) or be refused (401/403, or 404 where the caller may not
learn that a thing or a tenant exists). The tenant `sano` is public, as a city's own is;
`ashikaga` is a closed tenant that exists.

Columns: anon (no credential); admin, steward, operator (keys of "" and sano); reader (an app
key with every `:read` scope); writer (an app key with `*`); foreign (an admin key of ashikaga,
calling sano); hidden (the admin key of sano, calling ashikaga).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import make_client
from starlette.testclient import TestClient

COLUMNS = ("anon", "admin", "steward", "operator", "reader", "writer", "foreign", "hidden")
READ_SCOPES = tuple(
    f"{area}:read"
    for area in ("entities", "temporal", "subscriptions", "iot", "catalog", "datastore")
)
KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    # column: roles, tenants, scopes
    "admin": (("admin",), ("", "sano"), ("*",)),
    "steward": (("steward",), ("", "sano"), ("*",)),
    "operator": (("operator",), ("", "sano"), ("*",)),
    "reader": (("app",), ("", "sano"), READ_SCOPES),
    "writer": (("app",), ("", "sano"), ("*",)),
    "foreign": (("admin",), ("ashikaga",), ("*",)),
    "hidden": (("admin",), ("", "sano"), ("*",)),
}
E = "/ngsi-ld/v1/entities"
A = "/api/3/action/"
_serial = itertools.count()


def building(n: int) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:Building:b{n}",
        "type": "Building",
        "name": {"type": "Property", "value": f"佐野市役所 {n}"},
    }


def gauge(n: int) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:WaterObserved:g{n}",
        "type": "WaterObserved",
        "waterLevel": {"type": "Property", "value": 1.0, "observedAt": "2026-11-25T10:00:00Z"},
    }


@dataclass
class Call:
    """One request: what it sends, given a fresh number and the admin's helper for set-up."""

    method: str
    path: str
    json: Any = None
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    name: str
    #: Y or - per column, in COLUMNS order
    expect: str
    make: Callable[[int, Setup], Call]
    #: the area's tenant is the installation's (catalog, portal): no tenant header counts
    single_tenant: bool = False


class Setup:
    """Prepare what a request acts on, with the admin key, in the tenant the request names."""

    def __init__(self, client: TestClient, admin: str, tenant: str) -> None:
        self.client, self.admin, self.tenant = client, admin, tenant

    def post(self, path: str, body: Any) -> None:
        headers = {"Authorization": f"Bearer {self.admin}", "NGSILD-Tenant": self.tenant}
        r = self.client.post(path, json=body, headers=headers)
        assert r.status_code in (200, 201, 204), (path, r.text)

    def entity(self, doc: dict[str, Any]) -> str:
        self.post(E, doc)
        return str(doc["id"])


def sub(type_: str) -> dict[str, Any]:
    return {
        "type": "Subscription",
        "entities": [{"type": type_}],
        "notification": {"endpoint": {"uri": "http://127.0.0.1:9/notify"}},
    }


GROUP = {"services": [{"apikey": "k{n}", "entity_type": "Thing", "resource": "/iot/json"}]}

ROWS = [
    # -- NGSI-LD entities ------------------------------------------------------------- columns:
    #                                                  anon admin stew oper read writ forg hidd
    Row(
        "query public type",
        "YYYYYYY-",
        lambda n, s: Call("GET", E, params={"type": "WaterObserved"}),
    ),
    Row(
        "query restricted type",
        "-YYYYY--",
        lambda n, s: Call("GET", E, params={"type": "Building"}),
    ),
    Row(
        "query without type, count",
        "YYYYYYY-",
        lambda n, s: Call("GET", E, params={"q": 'name=="x"', "count": "true"}),
    ),
    Row(
        "retrieve public entity", "YYYYYYY-", lambda n, s: Call("GET", f"{E}/{s.entity(gauge(n))}")
    ),
    Row(
        "retrieve restricted entity",
        "-YYYYY--",
        lambda n, s: Call("GET", f"{E}/{s.entity(building(n))}"),
    ),
    Row("create entity", "-YY--Y--", lambda n, s: Call("POST", E, json=building(n))),
    Row(
        "update attributes",
        "-YY--Y--",
        lambda n, s: Call(
            "PATCH",
            f"{E}/{s.entity(building(n))}/attrs",
            json={"name": {"type": "Property", "value": "x"}},
        ),
    ),
    Row("delete entity", "-YY--Y--", lambda n, s: Call("DELETE", f"{E}/{s.entity(building(n))}")),
    Row(
        "batch upsert",
        "-YY--Y--",
        lambda n, s: Call("POST", "/ngsi-ld/v1/entityOperations/upsert", json=[building(n)]),
    ),
    Row(
        "POST query restricted",
        "-YYYYY--",
        lambda n, s: Call(
            "POST",
            "/ngsi-ld/v1/entityOperations/query",
            json={"type": "Query", "entities": [{"type": "Building"}]},
        ),
    ),
    Row("types", "YYYYYYY-", lambda n, s: Call("GET", "/ngsi-ld/v1/types")),
    Row("attributes", "YYYYYYY-", lambda n, s: Call("GET", "/ngsi-ld/v1/attributes")),
    # -- temporal ---------------------------------------------------------------------
    Row(
        "temporal query restricted",
        "-YYYYY--",
        lambda n, s: Call("GET", "/ngsi-ld/v1/temporal/entities", params={"type": "Building"}),
    ),
    Row(
        "temporal query public",
        "YYYYYYY-",
        lambda n, s: Call("GET", "/ngsi-ld/v1/temporal/entities", params={"type": "WaterObserved"}),
    ),
    Row(
        "temporal create",
        "-YY--Y--",
        lambda n, s: Call("POST", "/ngsi-ld/v1/temporal/entities", json=building(n)),
    ),
    # -- subscriptions ----------------------------------------------------------------
    Row("list subscriptions", "-YY-YY--", lambda n, s: Call("GET", "/ngsi-ld/v1/subscriptions")),
    Row(
        "subscribe public type",
        "-YY--Y--",
        lambda n, s: Call("POST", "/ngsi-ld/v1/subscriptions", json=sub("WaterObserved")),
    ),
    Row(
        "subscribe restricted type",
        "-YY--Y--",
        lambda n, s: Call("POST", "/ngsi-ld/v1/subscriptions", json=sub("Building")),
    ),
    # -- IoT provisioning -------------------------------------------------------------
    Row("list groups", "-Y-YYY--", lambda n, s: Call("GET", "/iot/services")),
    Row(
        "create group",
        "-Y-Y-Y--",
        lambda n, s: Call(
            "POST",
            "/iot/services",
            json={"services": [{**GROUP["services"][0], "apikey": f"k{n}"}]},
        ),
    ),
    Row("list devices", "-Y-YYY--", lambda n, s: Call("GET", "/iot/devices")),
    # -- the catalog (the installation's: tenant headers do not count) ------------------
    Row(
        "search datasets",
        "YYYYYYYY",
        lambda n, s: Call("GET", A + "package_search"),
        single_tenant=True,
    ),
    Row(
        "show private dataset",
        "-YY-YY-Y",
        lambda n, s: Call("GET", A + "package_show", params={"id": "private-checkups"}),
        single_tenant=True,
    ),
    Row(
        "show public dataset",
        "YYYYYYYY",
        lambda n, s: Call("GET", A + "package_show", params={"id": "river-levels"}),
        single_tenant=True,
    ),
    Row(
        "create dataset",
        "-YY--Y-Y",
        lambda n, s: Call("POST", A + "package_create", json={"name": f"ds-{n}"}),
        single_tenant=True,
    ),
    Row(
        "create dataset by GET",
        "-YY--Y-Y",
        lambda n, s: Call("GET", A + "package_create", params={"name": f"ds-{n}"}),
        single_tenant=True,
    ),
    Row(
        "datastore search public",
        "YYYYYYYY",
        lambda n, s: Call("GET", A + "datastore_search", params={"resource_id": "levels-csv"}),
        single_tenant=True,
    ),
    # -- the portal's surge switch --------------------------------------------------------
    Row(
        "read surge switch",
        "-Y-Y---Y",
        lambda n, s: Call("GET", "/admin/portal/surge"),
        single_tenant=True,
    ),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    tmp: Path = tmp_path_factory.mktemp("matrix")
    with make_client(tmp, auth="on", public_tenants="-,sano") as client:
        store = client.app.identity.store  # type: ignore[attr-defined]
        keys: dict[str, str] = {}
        assert client.portal is not None
        for column, (roles, tenants, scopes) in KEYS.items():
            create = functools.partial(
                store.create_key, column, roles=roles, tenants=tenants, scopes=scopes
            )
            keys[column] = str(client.portal.call(create)[1])
        admin = {"Authorization": f"Bearer {keys['admin']}"}
        # the closed tenant exists, and holds something
        foreign = {"Authorization": f"Bearer {keys['foreign']}", "NGSILD-Tenant": "ashikaga"}
        assert client.post(E, json=building(0), headers=foreign).status_code == 201
        sano = {**admin, "NGSILD-Tenant": "sano"}
        assert client.post(E, json=gauge(0), headers=sano).status_code == 201
        for name, private in (("river-levels", False), ("private-checkups", True)):
            r = client.post(
                A + "package_create", json={"name": name, "private": private}, headers=admin
            )
            assert r.status_code == 200, r.text
        r = client.post(
            A + "datastore_create",
            json={
                "resource": {"package_id": "river-levels", "name": "levels"},
                "fields": [{"id": "level", "type": "numeric"}],
                "records": [{"level": 1.5}],
            },
            headers=admin,
        )
        assert r.status_code == 200, r.text
        rid = r.json()["result"]["resource_id"]
        yield client, {**keys, "_rid": rid}


CASES = [pytest.param(row, column, id=f"{row.name}-{column}") for row in ROWS for column in COLUMNS]


@pytest.mark.parametrize(("row", "column"), CASES)
def test_matrix(world: tuple[TestClient, dict[str, str]], row: Row, column: str) -> None:
    client, keys = world
    allowed = row.expect[COLUMNS.index(column)] == "Y"
    tenant = "ashikaga" if column == "hidden" else "sano"
    n = next(_serial)
    call = row.make(
        n, Setup(client, keys["admin"] if column != "hidden" else keys["foreign"], tenant)
    )
    if "resource_id" in call.params:
        call.params["resource_id"] = keys["_rid"]
    headers: dict[str, str] = {"NGSILD-Tenant": tenant, "Fiware-Service": tenant}
    if column != "anon":
        headers["Authorization"] = f"Bearer {keys[column]}"
    r = client.request(call.method, call.path, json=call.json, params=call.params, headers=headers)
    if allowed:
        assert 200 <= r.status_code < 300, (r.status_code, r.text)
    else:
        assert r.status_code in (401, 403, 404), (r.status_code, r.text)
        if column == "anon" and r.status_code != 404:
            # CKAN itself answers a private dataset with 403 to everyone; the rest say 401
            assert r.status_code == (403 if "private" in row.name else 401)
        if column == "hidden" and not row.single_tenant:
            # exactly what a tenant that does not exist gets
            assert r.status_code == 404
            assert "tenant 'ashikaga' does not exist" in r.text
        assert "佐野市役所" not in r.text  # nothing restricted leaks into an error
