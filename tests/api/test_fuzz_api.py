"""Hostile input through the whole HTTP stack: always a 4xx ProblemDetails, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import make_client, sensor
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

E = "/ngsi-ld/v1/entities"
Q_ALPHABET = st.sampled_from([*"abcxyz019.,;|()[]!=<>~\"'-:/#+ *@%\\", "秋", "\x00"])
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(tmp_path_factory.mktemp("fuzz")) as c:
        assert c.post(E, json=sensor()).status_code == 201
        yield c


def assert_client_error(resp: Any, allowed: tuple[int, ...] = (200,)) -> None:
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert resp.json()["detail"]
    else:
        assert resp.status_code in allowed


@settings(max_examples=300, deadline=None)
@given(q=st.text(Q_ALPHABET, max_size=40))
def test_any_q_is_answered_or_refused(client: TestClient, q: str) -> None:
    assert_client_error(client.get(E, params={"type": "WaterLevelObserved", "q": q}))


@settings(max_examples=200, deadline=None)
@given(
    georel=st.text(Q_ALPHABET, max_size=30) | st.sampled_from(["near;maxDistance==100", "within"]),
    geometry=st.sampled_from(["Point", "Polygon", "LineString", "Blob", ""]),
    coordinates=st.text(Q_ALPHABET, max_size=30) | st.just("[139.5,36.3]"),
)
def test_any_geo_query_is_answered_or_refused(
    client: TestClient, georel: str, geometry: str, coordinates: str
) -> None:
    params = {"georel": georel, "geometry": geometry, "coordinates": coordinates}
    assert_client_error(client.get(E, params=params))


@settings(max_examples=300, deadline=None)
@given(body=json_values)
def test_any_json_body_is_created_or_refused(client: TestClient, body: Any) -> None:
    r = client.post(E, json=body)
    assert_client_error(r, allowed=(201,))


@settings(max_examples=200, deadline=None)
@given(attr=json_values)
def test_any_attribute_value_is_stored_or_refused_and_readable(
    client: TestClient, attr: Any
) -> None:
    r = client.patch(f"{E}/urn:ngsi-ld:WaterLevelObserved:akiyama-1/attrs", json={"fuzz": attr})
    assert_client_error(r, allowed=(204, 207))
    got = client.get(f"{E}/urn:ngsi-ld:WaterLevelObserved:akiyama-1")
    assert got.status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"NaN",
        b'{"id": "urn:x:1", "type": "T", "a": Infinity}',
        b"\xff\xfe",
        b'{"id": "urn:x:1", "type": "T", "a": 1e999}',
    ],
)
def test_non_json_numbers_and_bytes_are_refused(client: TestClient, raw: bytes) -> None:
    r = client.post(E, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
