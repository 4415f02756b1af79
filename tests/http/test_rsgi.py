"""`cityos serve` runs the app under granian's RSGI interface: the snapshots' fast lane and the
bridge to the ASGI app, checked through a real server process."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator

import httpx
import orjson
import pytest
from conftest import running_server, wait_for

pytestmark = pytest.mark.server
ENTITIES = "/ngsi-ld/v1/entities"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("rsgi") / "data"
    with running_server(data, {"CITYOS_MAX_BODY": "200000"}) as url:

        def published() -> bool:
            return httpx.get(f"{url}/public/water-levels.json", timeout=1).status_code == 200

        wait_for(published, "the first publish", timeout=30)
        yield url


def test_snapshots_get_gzip_validators_304_and_head(base: str) -> None:
    url = f"{base}/public/assets/portal.css"
    r = httpx.get(url, headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "gzip"
    assert r.headers["content-type"] == "text/css; charset=utf-8"
    assert "stale-while-revalidate=" in r.headers["cache-control"]
    assert r.headers["vary"] == "Accept-Encoding"
    raw = httpx.get(url, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers
    assert r.content == raw.content  # httpx has un-gzipped it
    assert int(r.headers["content-length"]) < len(raw.content) / 2
    tag = r.headers["etag"]
    again = httpx.get(url, headers={"Accept-Encoding": "gzip", "If-None-Match": tag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == tag
    since = httpx.get(url, headers={"If-Modified-Since": r.headers["last-modified"]})
    assert since.status_code == 304
    head = httpx.head(url, headers={"Accept-Encoding": "identity"})
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(raw.content)
    assert httpx.get(f"{base}/public/", follow_redirects=False).headers["content-type"] == (
        "text/html; charset=utf-8"
    )


def test_misses_and_other_methods_get_the_apps_errors(base: str) -> None:
    r = httpx.get(f"{base}/public/no-such-page.html")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert "no such file: /public/no-such-page.html" in r.json()["detail"]
    r = httpx.post(f"{base}/public/water-levels.json", content=b"{}")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET"
    assert httpx.get(f"{base}/public/../cityos.db").status_code == 404


def test_api_requests_cross_the_bridge_unchanged(base: str) -> None:
    eid = "urn:ngsi-ld:WaterObserved:rsgi-1"
    entity = {
        "id": eid,
        "type": "WaterObserved",
        "name": {"type": "Property", "value": "秋山川 大橋"},
        "height": {"type": "Property", "value": 1.25},
    }
    r = httpx.post(f"{base}{ENTITIES}", json=entity)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"{ENTITIES}/{eid}"
    q = urllib.parse.quote('name=="秋山川 大橋"')
    r = httpx.get(f"{base}{ENTITIES}?type=WaterObserved&q={q}&options=keyValues")
    assert r.status_code == 200, r.text
    assert [e["id"] for e in r.json()] == [eid]
    assert r.json()[0]["name"] == "秋山川 大橋"
    r = httpx.get(f"{base}{ENTITIES}/{eid}", headers={"Accept": "application/geo+json"})
    assert r.headers["content-type"].startswith("application/geo+json")


def test_chunked_bodies_are_read_and_oversized_ones_refused_whole(base: str) -> None:
    def pieces(body: bytes, size: int) -> Iterator[bytes]:
        for i in range(0, len(body), size):
            yield body[i : i + size]

    entity = {"id": "urn:ngsi-ld:Thing:chunked", "type": "Thing", "n": {"value": 1}}
    r = httpx.post(
        f"{base}{ENTITIES}",
        content=pieces(orjson.dumps(entity), 7),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 201, r.text
    big = [
        {"id": f"urn:ngsi-ld:Thing:big-{i}", "type": "Thing", "pad": {"value": "x" * 1000}}
        for i in range(300)
    ]
    r = httpx.post(
        f"{base}/ngsi-ld/v1/entityOperations/create",
        content=pieces(orjson.dumps(big), 4096),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413, r.text
    assert httpx.get(f"{base}{ENTITIES}/urn:ngsi-ld:Thing:big-0").status_code == 404


def test_a_refused_upgrade_leaves_the_server_serving(base: str) -> None:
    r = httpx.get(
        f"{base}/ngsi-ld/v1/types",
        headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"},
    )
    assert r.status_code < 500
    assert httpx.get(f"{base}/-/health").status_code == 200
