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
        ("/dataset", None),
    ],
)
def test_paths_map_to_their_areas(path: str, area: str | None) -> None:
    assert areas.area_of(path) == area
    assert by_table(path) == area


@given(st.text(alphabet="/abcdefghijklmnopqrstuvwxyz-_:.0123456789", max_size=40))
def test_the_fast_path_agrees_with_the_table(tail: str) -> None:
    path = "/ngsi-ld/v1/" + tail
    assert areas.area_of(path) == by_table(path)
