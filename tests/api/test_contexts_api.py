"""The broker as a JSON-LD context server (/jsonldContexts) and offline preloaded contexts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_client, sensor
from starlette.testclient import TestClient
from test_entities_api import problem

C = "/ngsi-ld/v1/jsonldContexts"
E = "/ngsi-ld/v1/entities"
SANO = {
    "@context": {
        "sano": "https://data.city.sano.tochigi.jp/ns#",
        "waterLevel": "sano:waterLevel",
        "WaterLevelObserved": "sano:WLO",
    }
}


def link(url: str) -> dict[str, str]:
    return {
        "Link": f'<{url}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
    }


@pytest.mark.parametrize(
    "version", ["", "-v1.0", "-v1.3", "-v1.4", "-v1.5", "-v1.6", "-v1.7", "-v1.8", "-v1.9"]
)
def test_every_core_context_url_resolves_offline(client: TestClient, version: str) -> None:
    url = f"https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context{version}.jsonld"
    r = client.post(E, json=sensor(), headers=link(url))
    assert r.status_code == 201, r.text
    got = client.get(f"{E}/urn:ngsi-ld:WaterLevelObserved:akiyama-1", headers=link(url)).json()
    assert got["waterLevel"]["value"] == 1.5


def test_hosted_context_lifecycle(client: TestClient) -> None:
    urls = client.get(C).json()
    assert any("ngsi-ld-core-context" in u for u in urls)
    r = client.post(C, json=SANO)
    assert r.status_code == 201, r.text
    url = r.headers["location"]
    assert url.startswith("http://127.0.0.1:8000/ngsi-ld/v1/jsonldContexts/")
    local_id = url.rsplit("/", 1)[1]
    assert client.get(f"{C}/{local_id}").json() == SANO
    # the hosted context works as a request context, without any network
    assert client.post(E, json=sensor(), headers=link(url)).status_code == 201
    raw = client.get(f"{E}/urn:ngsi-ld:WaterLevelObserved:akiyama-1").json()
    assert raw["type"] == "https://data.city.sano.tochigi.jp/ns#WLO"
    assert "https://data.city.sano.tochigi.jp/ns#waterLevel" in raw
    details = client.get(C, params={"details": "true"}).json()
    mine = next(d for d in details if d["URL"] == url)
    assert mine["kind"] == "Hosted"
    assert mine["numberOfHits"] >= 1
    assert client.delete(f"{C}/{local_id}").status_code == 204
    problem(client.get(f"{C}/{local_id}"), 404, "ResourceNotFound")


def test_hosted_contexts_survive_restart(tmp_path: Path) -> None:
    with make_client(tmp_path) as c:
        url = c.post(C, json=SANO).headers["location"]
    with make_client(tmp_path) as c:
        assert url in c.get(C).json()
        assert c.post(E, json=sensor(), headers=link(url)).status_code == 201


def test_bad_context_documents(client: TestClient) -> None:
    problem(client.post(C, json=[1]), 400, "BadRequestData")
    problem(client.post(C, json={"no": "context"}), 400, "BadRequestData")
    problem(client.post(C, json={"@context": {"x": {"@id": 5}}}), 400, "BadRequestData")
    r = client.post(C, content=b"{", headers={"Content-Type": "application/json"})
    problem(r, 400, "InvalidRequest")
    core = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
    problem(client.delete(f"{C}/{core}"), 400, "BadRequestData")
    problem(client.delete(f"{C}/nope"), 404, "ResourceNotFound")


def test_null_context_is_rejected(client: TestClient) -> None:
    r = client.post(
        E, json={**sensor(), "@context": None}, headers={"Content-Type": "application/ld+json"}
    )
    problem(r, 400, "BadRequestData")


def test_preloaded_context_dir(tmp_path: Path) -> None:
    folder = tmp_path / "contexts"
    folder.mkdir()
    (folder / "sano.jsonld").write_text(json.dumps(SANO), encoding="utf-8")
    url = "https://example.org/sano/context.jsonld"
    (folder / "index.json").write_text(json.dumps({url: "sano.jsonld"}), encoding="utf-8")
    with make_client(tmp_path / "data", context_dir=folder) as c:
        assert c.post(E, json=sensor(), headers=link(url)).status_code == 201
        got = c.get(f"{E}/urn:ngsi-ld:WaterLevelObserved:akiyama-1", headers=link(url)).json()
        assert got["type"] == "WaterLevelObserved"
        raw = c.get(f"{E}/urn:ngsi-ld:WaterLevelObserved:akiyama-1").json()
        assert raw["type"] == "https://data.city.sano.tochigi.jp/ns#WLO"


def test_broken_context_dir_fails_at_start(tmp_path: Path) -> None:
    folder = tmp_path / "contexts"
    folder.mkdir()
    (folder / "index.json").write_text('{"https://x.org/c.jsonld": "missing.jsonld"}')
    with pytest.raises(ValueError, match=r"missing\.jsonld"):
        make_client(tmp_path / "data", context_dir=folder)
