"""The Sano data set is well-formed, inside Sano, accepted by the API, and its context expands."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import make_client
from pyld import jsonld

from cityos.demo import sano
from cityos.jsonld.loader import CORE_FILE, CORE_URLS
from cityos.safety.flood import ReferenceLevels

CONTEXT_FILE = Path(sano.__file__).parents[1] / "jsonld" / "contexts" / "cityos-sano-v1.jsonld"
CONTEXT_URL = "https://cityos.example/contexts/cityos-sano-v1.jsonld"
DEFAULT = "https://uri.etsi.org/ngsi-ld/default-context/"
MODELS = Path(__file__).parents[2] / "docs" / "models.md"


def test_reference_levels_rise_strictly() -> None:
    for g in sano.GAUGES:
        # ReferenceLevels refuses any line at or below the one before it.
        ReferenceLevels(g.standby, g.caution, g.evacuation_judgement, g.danger, g.overflow_start)
        if g.observation_start is not None:
            assert g.observation_start < g.standby, g.slug
    assert any(g.crisis_management and g.overflow_start for g in sano.GAUGES)


def test_the_data_set_covers_both_rivers_and_enough_places() -> None:
    rivers = [g.river_ja for g in sano.GAUGES]
    assert rivers.count("秋山川") >= 3
    assert rivers.count("旗川") >= 2
    assert len(sano.RAIN_GAUGES) >= 3
    assert len(sano.SHELTERS) >= 20
    assert len(sano.AEDS) >= 10


def test_ids_are_unique_and_follow_the_scheme() -> None:
    ids = sano.entity_ids()
    assert len(ids) == len(set(ids))
    prefixes = {
        "WaterObserved": "urn:ngsi-ld:WaterObserved:sano-",
        "WeatherObserved": "urn:ngsi-ld:WeatherObserved:sano-",
        "EvacuationShelter": "urn:ngsi-ld:EvacuationShelter:sano-",
        "PointOfInterest": "urn:ngsi-ld:PointOfInterest:sano-aed-",
    }
    for e in sano.entities():
        assert e["id"].startswith(prefixes[e["type"]]), e["id"]


def test_every_place_is_inside_sano() -> None:
    (west, south), (east, north) = sano.SANO_BOUNDS
    for e in sano.entities():
        lon, lat = e["location"]["value"]["coordinates"]
        assert west <= lon <= east, e["id"]
        assert south <= lat <= north, e["id"]


def test_shelters_carry_every_attribute_of_the_model() -> None:
    attrs = {
        "name", "nameKana", "address", "location", "designation", "hazardTypes", "capacity",
        "openingStatus", "occupancy", "feverSpaceAvailable", "feverSpaceCapacity",
        "petsAccepted", "barrierFree",
    }  # fmt: skip
    for e in sano.entities():
        if e["type"] == "EvacuationShelter":
            assert set(e) - {"id", "type"} == attrs, e["id"]
            assert e["openingStatus"]["value"] == "closed"
            assert e["occupancy"]["value"] == 0
            assert set(e["name"]["languageMap"]) == {"ja", "en"}


def test_every_entity_is_accepted_by_the_api(tmp_path: Path) -> None:
    entities = sano.entities()
    with make_client(tmp_path) as c:
        r = c.post("/ngsi-ld/v1/entityOperations/upsert", json=entities)
        assert r.status_code == 201, r.text
        for etype, n in (("EvacuationShelter", len(sano.SHELTERS)), ("WaterObserved", 8)):
            r = c.get("/ngsi-ld/v1/entities", params={"type": etype, "count": "true"})
            assert r.headers["NGSILD-Results-Count"] == str(n)
        r = c.get(
            "/ngsi-ld/v1/entities",
            params={"type": "PointOfInterest", "q": 'category=="defibrillator"', "count": "true"},
        )
        assert r.headers["NGSILD-Results-Count"] == str(len(sano.AEDS))


def _loader(docs: dict[str, Any]) -> Any:
    def load(url: str, options: Any = None) -> dict[str, Any]:
        if url not in docs:
            raise jsonld.JsonLdError("offline test loader", "loading document failed", url)
        return {"contextUrl": None, "documentUrl": url, "document": copy.deepcopy(docs[url])}

    return load


def _documented_terms() -> set[str]:
    """Return the entity types (section titles) and attributes (table rows) of docs/models.md."""
    terms: set[str] = set()
    in_attributes = False
    for line in MODELS.read_text(encoding="utf-8").splitlines():
        if line.startswith("| attribute"):
            in_attributes = True
        elif not line.startswith("|"):
            in_attributes = False
        if (in_attributes and line.startswith("| `")) or line.startswith("## "):
            names = line.split("|")[1] if line.startswith("|") else line
            terms.update(n for n in names.split("`")[1::2] if n.isidentifier())
    return terms


@pytest.mark.parametrize("with_context", [True, False], ids=["with-sano-context", "core-only"])
def test_context_expands_every_entity_to_the_default_vocabulary(with_context: bool) -> None:
    core = json.loads(CORE_FILE.read_text(encoding="utf-8"))
    docs: dict[str, Any] = dict.fromkeys(CORE_URLS, core)
    docs["https://w3id.org/security/data-integrity/v2"] = {"@context": {}}  # imported by the core
    docs[CONTEXT_URL] = json.loads(CONTEXT_FILE.read_text(encoding="utf-8"))
    core_url = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
    context = [CONTEXT_URL, core_url] if with_context else [core_url]
    for entity in sano.entities():
        out = jsonld.expand({"@context": context, **entity}, {"documentLoader": _loader(docs)})
        assert out[0]["@type"] == [DEFAULT + entity["type"]]
        for name in set(entity) - {"id", "type"}:
            iri = core["@context"].get(name)
            if iri is None:
                expected = DEFAULT + name
            else:
                expected = iri.replace("ngsi-ld:", "https://uri.etsi.org/ngsi-ld/")
            assert expected in out[0], (entity["id"], name)


def test_context_names_every_documented_term_outside_the_core() -> None:
    ctx = json.loads(CONTEXT_FILE.read_text(encoding="utf-8"))["@context"]
    core = json.loads(CORE_FILE.read_text(encoding="utf-8"))["@context"]
    assert "@vocab" not in ctx
    # Redefining a protected core term would make the context unusable after the core.
    assert not set(ctx) & set(core)
    assert all(iri == DEFAULT + term for term, iri in ctx.items())
    wanted = (_documented_terms() | {"defibrillator", "Device"}) - set(core)
    assert wanted <= set(ctx), wanted - set(ctx)
