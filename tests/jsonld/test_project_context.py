"""The project @context ships in the package, is served, and resolves without any download."""

from __future__ import annotations

from starlette.testclient import TestClient

URL = "http://127.0.0.1:8000/contexts/cityos-sano-v1.jsonld"  # the default base URL
E = "/ngsi-ld/v1/entities"


def test_the_project_context_is_served(client: TestClient) -> None:
    r = client.get("/contexts/cityos-sano-v1.jsonld")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/ld+json")
    terms = r.json()["@context"]
    for term in ("WaterObserved", "floodAlertLevel", "EvacuationShelter", "crowdingLevel"):
        assert term in terms
    assert client.get("/contexts/nope.jsonld").status_code == 404


def test_entities_written_with_it_read_the_same_without_it(client: TestClient) -> None:
    # remote contexts are off in tests: this only works because the file ships in the package
    link = {"Link": f'<{URL}>; rel="http://www.w3.org/ns/json-ld#context"'}
    shelter = {
        "id": "urn:ngsi-ld:EvacuationShelter:ctx-test",
        "type": "EvacuationShelter",
        "capacity": {"type": "Property", "value": 100},
        "occupancy": {"type": "Property", "value": 70},
        "openingStatus": {"type": "Property", "value": "open"},
    }
    r = client.post(E, json=shelter, headers=link)
    assert r.status_code == 201, r.text
    plain = client.get(f"{E}/{shelter['id']}", params={"options": "keyValues"}).json()
    linked = client.get(
        f"{E}/{shelter['id']}", params={"options": "keyValues"}, headers=link
    ).json()
    assert plain["type"] == linked["type"] == "EvacuationShelter"
    assert plain["crowdingLevel"] == linked["crowdingLevel"] == "crowded"
