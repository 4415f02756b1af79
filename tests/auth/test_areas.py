"""The path -> policy area table: the NGSI-LD fast path answers exactly as the table does."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cityos.auth import areas


def by_table(path: str) -> str | None:
    for prefix, area in areas.AREAS:
        if areas._under(path, prefix):
            return area
    return None


@pytest.mark.parametrize(
    ("path", "area"),
    [
        ("/ngsi-ld/v1/entities/urn:ngsi-ld:X:1", "entities"),
        ("/ngsi-ld/v1/subscriptions", "subscriptions"),
        ("/ngsi-ld/v1/subscriptions/urn:ngsi-ld:Subscription:1", "subscriptions"),
        ("/ngsi-ld/v1/subscriptionsX", "entities"),
        ("/ngsi-ld/v1/temporal/entities", "temporal"),
        ("/ngsi-ld/v1/jsonldContexts/x", "entities"),
        ("/ngsi-ld/v1", "entities"),
        ("/iot/json", None),
        ("/iot/devices/d1", "iot"),
        ("/api/3/action/datastore_search", "datastore"),
        ("/api/3/action/package_create", "catalog"),
        ("/admin/portal/surge", "portal_admin"),
        ("/dataset", "catalog"),
        ("/dataset/x/resource/y/download/z.csv", "catalog"),
        ("/datastore/dump/r1", "datastore"),
        ("/catalog.ttl", None),
    ],
)
def test_paths_map_to_their_areas(path: str, area: str | None) -> None:
    assert areas.area_of(path) == area
    assert by_table(path) == area


@given(st.text(alphabet="/abcdefghijklmnopqrstuvwxyz-_:.0123456789", max_size=40))
def test_the_fast_path_agrees_with_the_table(tail: str) -> None:
    path = "/ngsi-ld/v1/" + tail
    assert areas.area_of(path) == by_table(path)


def test_every_catalog_action_is_a_read_or_a_write_as_the_catalog_says() -> None:
    import cityos.catalog.actions  # noqa: F401  # registers every action
    from cityos.catalog.registry import ACTIONS

    assert len(ACTIONS) > 20
    for name, found in ACTIONS.items():
        expected = "write" if found.write else "read"
        # whatever the method: CKAN clients send package_create as a GET too
        for method in ("GET", "POST"):
            assert areas.action_of(method, f"/api/3/action/{name}") == expected, name
            assert areas.action_of(method, f"/api/action/{name}") == expected, name


@pytest.mark.parametrize(
    ("method", "path", "action"),
    [
        ("GET", "/ngsi-ld/v1/entities", "read"),
        ("POST", "/ngsi-ld/v1/entityOperations/query", "read"),
        ("POST", "/ngsi-ld/v1/entityOperations/upsert", "write"),
        ("HEAD", "/ngsi-ld/v1/entities/x", "read"),
        ("GET", "/api/3/action/no_such_thing", "write"),  # unknown actions are not free
        ("PUT", "/admin/portal/surge", "write"),
    ],
)
def test_methods_and_action_names_decide_reads(method: str, path: str, action: str) -> None:
    assert areas.action_of(method, path) == action
