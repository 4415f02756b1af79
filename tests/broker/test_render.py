"""Rendering stored entities as normalized, concise, simplified and GeoJSON NGSI-LD bodies."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cityos.broker.model import LOCATION, NGSI_LD
from cityos.broker.render import (
    RenderOptions,
    parse_lang,
    pick_language,
    render_entity,
    render_geojson_collection,
    render_geojson_feature,
)

V = "https://example.org/v/"
T = "2026-11-25T10:00:00.000000Z"
T2 = "2026-11-26T08:30:00.000000Z"
POINT = {"type": "Point", "coordinates": [139.6, 36.3]}


class FakeContext:
    """Compacts IRIs under the example vocabulary (and the core ones) to short terms."""

    def __init__(self) -> None:
        self.terms = {LOCATION: "location", NGSI_LD + "scope": "scope"}

    def compact_iri(self, iri: str) -> str:
        if iri in self.terms:
            return self.terms[iri]
        return iri[len(V) :] if iri.startswith(V) else iri

    def compact_vocab_value(self, v: str) -> str:
        return v[len(V) :] if v.startswith(V) else v


CTX = FakeContext()


def sys(inst: dict[str, Any], when: str = T) -> dict[str, Any]:
    return {**inst, "createdAt": when, "modifiedAt": when}


def river_doc() -> dict[str, Any]:
    """One entity holding every attribute type, as the broker stores it."""
    return {
        "id": "urn:ngsi-ld:WaterLevelObserved:akiyama-1",
        "type": [V + "WaterLevelObserved"],
        "scope": ["/Sano/Akiyama"],
        "createdAt": T,
        "modifiedAt": T2,
        "attrs": {
            V + "waterLevel": [
                sys({"type": "Property", "value": 1.42, "unitCode": "MTR", "observedAt": T2})
            ],
            LOCATION: [sys({"type": "GeoProperty", "value": POINT})],
            V + "refRiver": [
                sys(
                    {
                        "type": "Relationship",
                        "object": "urn:ngsi-ld:River:akiyama",
                        "objectType": V + "River",
                    }
                )
            ],
            V + "name": [
                sys({"type": "LanguageProperty", "languageMap": {"ja": "秋山川", "en": "Akiyama"}})
            ],
            V + "raw": [sys({"type": "JsonProperty", "json": {"type": "reading", "mm": 1420}})],
            V + "category": [sys({"type": "VocabProperty", "vocab": V + "river"})],
            V + "tags": [sys({"type": "VocabProperty", "vocab": [V + "river", "urn:x:flood"]})],
            V + "history": [sys({"type": "ListProperty", "valueList": [1.2, 1.3, 1.42]})],
            V + "route": [
                sys(
                    {
                        "type": "ListRelationship",
                        "objectList": ["urn:ngsi-ld:Gauge:1", "urn:ngsi-ld:Gauge:2"],
                    }
                )
            ],
        },
    }


def render(doc: dict[str, Any], **opts: Any) -> dict[str, Any]:
    return render_entity(doc, CTX, RenderOptions(**opts))


# -- normalized ------------------------------------------------------------------------------
def test_normalized_renders_every_attribute_type_with_compacted_names() -> None:
    assert render(river_doc()) == {
        "id": "urn:ngsi-ld:WaterLevelObserved:akiyama-1",
        "type": "WaterLevelObserved",
        "scope": "/Sano/Akiyama",
        "waterLevel": {"type": "Property", "value": 1.42, "unitCode": "MTR", "observedAt": T2},
        "location": {"type": "GeoProperty", "value": POINT},
        "refRiver": {
            "type": "Relationship",
            "object": "urn:ngsi-ld:River:akiyama",
            "objectType": "River",
        },
        "name": {"type": "LanguageProperty", "languageMap": {"ja": "秋山川", "en": "Akiyama"}},
        "raw": {"type": "JsonProperty", "json": {"type": "reading", "mm": 1420}},
        "category": {"type": "VocabProperty", "vocab": "river"},
        "tags": {"type": "VocabProperty", "vocab": ["river", "urn:x:flood"]},
        "history": {"type": "ListProperty", "valueList": [1.2, 1.3, 1.42]},
        "route": {
            "type": "ListRelationship",
            "objectList": [{"object": "urn:ngsi-ld:Gauge:1"}, {"object": "urn:ngsi-ld:Gauge:2"}],
        },
    }


def test_several_types_and_scopes_render_as_lists() -> None:
    doc = {"id": "urn:x:1", "type": [V + "A", V + "B"], "scope": ["/a", "/b"], "attrs": {}}
    assert render(doc) == {"id": "urn:x:1", "type": ["A", "B"], "scope": ["/a", "/b"]}


def test_rendering_never_changes_the_stored_document() -> None:
    doc = river_doc()
    doc["attrs"][V + "waterLevel"][0][V + "quality"] = sys({"type": "Property", "value": "ok"})
    before = copy.deepcopy(doc)
    for fmt in ("normalized", "concise", "keyValues"):
        render(doc, format=fmt, lang="en")
        render_geojson_feature(doc, CTX, RenderOptions(format=fmt), LOCATION)
    assert doc == before


# -- system attributes -----------------------------------------------------------------------
def nested_doc() -> dict[str, Any]:
    """A Property with a sub-Property that itself has a sub-Relationship."""
    calibrated = sys({"type": "Relationship", "object": "urn:ngsi-ld:Person:sato"})
    accuracy = sys({"type": "Property", "value": 0.01, V + "calibratedBy": calibrated})
    return {
        "id": "urn:x:1",
        "type": [V + "Gauge"],
        "createdAt": T,
        "modifiedAt": T2,
        "deletedAt": T2,
        "attrs": {
            V + "waterLevel": [sys({"type": "Property", "value": 1.4, V + "accuracy": accuracy})]
        },
    }


def test_system_members_appear_only_with_sys_attrs_at_every_level() -> None:
    plain = render(nested_doc())
    assert plain == {
        "id": "urn:x:1",
        "type": "Gauge",
        "waterLevel": {
            "type": "Property",
            "value": 1.4,
            "accuracy": {
                "type": "Property",
                "value": 0.01,
                "calibratedBy": {"type": "Relationship", "object": "urn:ngsi-ld:Person:sato"},
            },
        },
    }
    full = render(nested_doc(), sys_attrs=True)
    assert (full["createdAt"], full["modifiedAt"], full["deletedAt"]) == (T, T2, T2)
    level = full["waterLevel"]
    assert level["createdAt"] == level["modifiedAt"] == T
    assert level["accuracy"]["createdAt"] == T
    assert level["accuracy"]["calibratedBy"]["modifiedAt"] == T


def test_simplified_with_sys_attrs_shows_only_entity_timestamps() -> None:
    out = render(nested_doc(), format="keyValues", sys_attrs=True)
    assert out == {
        "id": "urn:x:1",
        "type": "Gauge",
        "createdAt": T,
        "modifiedAt": T2,
        "deletedAt": T2,
        "waterLevel": 1.4,
    }


# -- sub-attributes --------------------------------------------------------------------------
def test_concise_sub_attributes_are_concise_too() -> None:
    assert render(nested_doc(), format="concise") == {
        "id": "urn:x:1",
        "type": "Gauge",
        "waterLevel": {
            "value": 1.4,
            "accuracy": {"value": 0.01, "calibratedBy": {"object": "urn:ngsi-ld:Person:sato"}},
        },
    }


def test_value_only_sub_attribute_collapses_to_its_value_in_concise() -> None:
    doc = {
        "id": "urn:x:1",
        "type": [V + "Gauge"],
        "attrs": {
            V + "waterLevel": [
                {
                    "type": "Property",
                    "value": 1.4,
                    V + "quality": {"type": "Property", "value": "good"},
                }
            ]
        },
    }
    assert render(doc, format="concise")["waterLevel"] == {"value": 1.4, "quality": "good"}
    assert render(doc, format="keyValues")["waterLevel"] == 1.4


# -- concise ---------------------------------------------------------------------------------
def test_concise_drops_inferable_types_and_writes_lone_values_bare() -> None:
    out = render(river_doc(), format="concise")
    assert out == {
        "id": "urn:ngsi-ld:WaterLevelObserved:akiyama-1",
        "type": "WaterLevelObserved",
        "scope": "/Sano/Akiyama",
        "waterLevel": {"value": 1.42, "unitCode": "MTR", "observedAt": T2},
        "location": {"value": POINT},
        "refRiver": {"object": "urn:ngsi-ld:River:akiyama", "objectType": "River"},
        "name": {"languageMap": {"ja": "秋山川", "en": "Akiyama"}},
        "raw": {"json": {"type": "reading", "mm": 1420}},
        "category": {"vocab": "river"},
        "tags": {"vocab": ["river", "urn:x:flood"]},
        "history": {"valueList": [1.2, 1.3, 1.42]},
        "route": {
            "objectList": [{"object": "urn:ngsi-ld:Gauge:1"}, {"object": "urn:ngsi-ld:Gauge:2"}]
        },
    }


@pytest.mark.parametrize(
    "value",
    [5, "high", True, [1, 2], {"street": "Honcho 1", "city": "Sano"}, [], [{"a": 1}]],
)
def test_concise_property_with_only_a_plain_value_is_that_value(value: Any) -> None:
    doc = {
        "id": "urn:x:1",
        "type": [V + "T"],
        "attrs": {V + "p": [{"type": "Property", "value": value}]},
    }
    assert render(doc, format="concise")["p"] == value


@pytest.mark.parametrize(
    "value",
    [
        {"type": "Feature", "name": "x"},
        {"value": 3, "unit": "m"},
        {"object": "urn:x:2"},
        {"languageMap": {"en": "x"}},
        [{"type": "Property", "value": 1}],
        [{"value": 1}, {"value": 2}],
    ],
)
def test_concise_keeps_the_value_member_when_a_bare_value_would_be_misread(value: Any) -> None:
    doc = {
        "id": "urn:x:1",
        "type": [V + "T"],
        "attrs": {V + "p": [{"type": "Property", "value": value}]},
    }
    assert render(doc, format="concise")["p"] == {"value": value}


def test_concise_keeps_property_type_for_a_geojson_shaped_value() -> None:
    # a Property (not GeoProperty) whose value looks like GeoJSON would otherwise come back
    # as a GeoProperty when the client sends it again
    doc = {
        "id": "urn:x:1",
        "type": [V + "T"],
        "attrs": {V + "p": [{"type": "Property", "value": POINT}]},
    }
    assert render(doc, format="concise")["p"] == {"type": "Property", "value": POINT}


# -- several instances (datasetId) -----------------------------------------------------------
def multi_doc() -> dict[str, Any]:
    return {
        "id": "urn:x:1",
        "type": [V + "Gauge"],
        "attrs": {
            V + "waterLevel": [
                {"type": "Property", "value": 1.4},
                {"type": "Property", "value": 1.5, "datasetId": "urn:ds:radar"},
            ]
        },
    }


def test_normalized_multi_instance_attribute_is_an_array_of_instances() -> None:
    assert render(multi_doc())["waterLevel"] == [
        {"type": "Property", "value": 1.4},
        {"type": "Property", "value": 1.5, "datasetId": "urn:ds:radar"},
    ]


def test_concise_multi_instance_items_stay_objects() -> None:
    # a bare 1.4 inside the array would turn the attribute into one array-valued Property
    assert render(multi_doc(), format="concise")["waterLevel"] == [
        {"value": 1.4},
        {"value": 1.5, "datasetId": "urn:ds:radar"},
    ]


def test_simplified_multi_instance_attribute_is_a_dataset_map() -> None:
    assert render(multi_doc(), format="keyValues")["waterLevel"] == {
        "dataset": {"@none": 1.4, "urn:ds:radar": 1.5}
    }


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        (
            frozenset({"urn:ds:radar"}),
            {"type": "Property", "value": 1.5, "datasetId": "urn:ds:radar"},
        ),
        (frozenset({"@none"}), {"type": "Property", "value": 1.4}),
    ],
)
def test_dataset_ids_select_instances(wanted: frozenset[str], expected: Any) -> None:
    assert render(multi_doc(), dataset_ids=wanted)["waterLevel"] == expected


def test_attribute_without_a_selected_instance_is_left_out() -> None:
    out = render(multi_doc(), dataset_ids=frozenset({"urn:ds:other"}))
    assert out == {"id": "urn:x:1", "type": "Gauge"}


# -- simplified ------------------------------------------------------------------------------
def test_simplified_renders_each_attribute_type_as_its_value() -> None:
    assert render(river_doc(), format="keyValues") == {
        "id": "urn:ngsi-ld:WaterLevelObserved:akiyama-1",
        "type": "WaterLevelObserved",
        "scope": "/Sano/Akiyama",
        "waterLevel": 1.42,
        "location": POINT,
        "refRiver": "urn:ngsi-ld:River:akiyama",
        "name": {"languageMap": {"ja": "秋山川", "en": "Akiyama"}},
        "raw": {"json": {"type": "reading", "mm": 1420}},
        "category": {"vocab": "river"},
        "tags": {"vocab": ["river", "urn:x:flood"]},
        "history": [1.2, 1.3, 1.42],
        "route": ["urn:ngsi-ld:Gauge:1", "urn:ngsi-ld:Gauge:2"],
    }


def test_simplified_alias_matches_key_values() -> None:
    assert render(river_doc(), format="simplified") == render(river_doc(), format="keyValues")


# -- lang ------------------------------------------------------------------------------------
def test_lang_turns_a_language_property_into_a_property_in_that_language() -> None:
    assert render(river_doc(), lang="en")["name"] == {
        "type": "Property",
        "value": "Akiyama",
        "lang": "en",
    }
    assert render(river_doc(), lang="ja", format="concise")["name"] == {
        "value": "秋山川",
        "lang": "ja",
    }
    assert render(river_doc(), lang="ja", format="keyValues")["name"] == "秋山川"


def test_lang_reaches_language_sub_attributes() -> None:
    doc = {
        "id": "urn:x:1",
        "type": [V + "T"],
        "attrs": {
            V + "p": [
                {
                    "type": "Property",
                    "value": 1,
                    V + "label": {"type": "LanguageProperty", "languageMap": {"en": "one"}},
                }
            ]
        },
    }
    assert render(doc, lang="en")["p"]["label"] == {
        "type": "Property",
        "value": "one",
        "lang": "en",
    }


def test_lang_leaves_other_attribute_types_alone() -> None:
    with_lang = render(river_doc(), lang="en")
    without = render(river_doc())
    del with_lang["name"], without["name"]
    assert with_lang == without


@pytest.mark.parametrize(
    ("lang", "expected"),
    [
        ("ja", ("ja", "秋山川")),
        ("EN", ("en", "Akiyama")),
        ("de,en;q=0.8,ja;q=0.9", ("ja", "秋山川")),
        ("fr-CH,fr;q=0.9,en;q=0.8,*;q=0.5", ("en", "Akiyama")),
        ("ja-JP", ("ja", "秋山川")),
        ("*", ("ja", "秋山川")),
        ("ko", ("ja", "秋山川")),
        ("ja;q=0,en", ("en", "Akiyama")),
    ],
)
def test_lang_picks_the_best_matching_language(lang: str, expected: tuple[str, str]) -> None:
    assert pick_language({"ja": "秋山川", "en": "Akiyama"}, parse_lang(lang)) == expected


def test_lang_any_prefers_a_tagged_text_over_the_untagged_one() -> None:
    assert pick_language({"@none": "Akiyama-gawa", "en": "Akiyama"}, ("*",)) == ("en", "Akiyama")


def test_lang_range_matches_a_longer_regional_tag() -> None:
    assert pick_language({"de": "Fluss", "en-GB": "river"}, parse_lang("en")) == ("en-GB", "river")


def test_lang_without_a_match_falls_back_to_the_untagged_text() -> None:
    lmap = {"ja": "秋山川", "@none": "Akiyama-gawa"}
    assert pick_language(lmap, parse_lang("ko")) == (None, "Akiyama-gawa")
    doc = {
        "id": "urn:x:1",
        "type": [V + "T"],
        "attrs": {V + "name": [{"type": "LanguageProperty", "languageMap": lmap}]},
    }
    assert render(doc, lang="ko")["name"] == {"type": "Property", "value": "Akiyama-gawa"}


# -- pick / omit -----------------------------------------------------------------------------
def test_pick_keeps_only_the_listed_members() -> None:
    assert render(river_doc(), pick=frozenset({V + "waterLevel"})) == {
        "waterLevel": {"type": "Property", "value": 1.42, "unitCode": "MTR", "observedAt": T2}
    }
    out = render(river_doc(), pick=frozenset({"id", "type", V + "refRiver"}), format="keyValues")
    assert out == {
        "id": "urn:ngsi-ld:WaterLevelObserved:akiyama-1",
        "type": "WaterLevelObserved",
        "refRiver": "urn:ngsi-ld:River:akiyama",
    }


def test_omit_drops_the_listed_members() -> None:
    out = render(river_doc(), omit=frozenset({"id", V + "name", NGSI_LD + "scope"}))
    assert out["type"] == "WaterLevelObserved"
    assert set(out) == {
        "type",
        "waterLevel",
        "location",
        "refRiver",
        "raw",
        "category",
        "tags",
        "history",
        "route",
    }


def test_pick_can_keep_scope() -> None:
    out = render(river_doc(), pick=frozenset({"id", NGSI_LD + "scope"}))
    assert out == {"id": "urn:ngsi-ld:WaterLevelObserved:akiyama-1", "scope": "/Sano/Akiyama"}


# -- GeoJSON ---------------------------------------------------------------------------------
def test_geojson_feature_carries_the_geoproperty_as_geometry() -> None:
    feature = render_geojson_feature(river_doc(), CTX, RenderOptions(format="keyValues"), LOCATION)
    assert feature["id"] == "urn:ngsi-ld:WaterLevelObserved:akiyama-1"
    assert feature["type"] == "Feature"
    assert feature["geometry"] == POINT
    props = feature["properties"]
    assert "id" not in props
    assert props["type"] == "WaterLevelObserved"
    assert props["waterLevel"] == 1.42
    assert props["location"] == POINT


def test_geojson_feature_normalized_properties_and_other_geoproperty() -> None:
    doc = river_doc()
    area = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}
    doc["attrs"][NGSI_LD + "observationSpace"] = [{"type": "GeoProperty", "value": area}]
    feature = render_geojson_feature(doc, CTX, RenderOptions(), NGSI_LD + "observationSpace")
    assert feature["geometry"] == area
    assert feature["properties"]["location"] == {"type": "GeoProperty", "value": POINT}


def test_geojson_geometry_is_null_without_the_geoproperty() -> None:
    doc = {
        "id": "urn:x:1",
        "type": [V + "T"],
        "attrs": {V + "p": [{"type": "Property", "value": 1}]},
    }
    feature = render_geojson_feature(doc, CTX, RenderOptions(), LOCATION)
    assert feature == {
        "id": "urn:x:1",
        "type": "Feature",
        "geometry": None,
        "properties": {"type": "T", "p": {"type": "Property", "value": 1}},
    }


def test_geojson_geometry_prefers_the_default_instance() -> None:
    other = {"type": "Point", "coordinates": [0, 0]}
    doc = {
        "id": "urn:x:1",
        "type": [V + "T"],
        "attrs": {
            LOCATION: [
                {"type": "GeoProperty", "value": other, "datasetId": "urn:ds:gps"},
                {"type": "GeoProperty", "value": POINT},
            ]
        },
    }
    assert render_geojson_feature(doc, CTX, RenderOptions(), LOCATION)["geometry"] == POINT


def test_geojson_collection_holds_one_feature_per_entity() -> None:
    second = river_doc()
    second["id"] = "urn:ngsi-ld:WaterLevelObserved:akiyama-2"
    body = render_geojson_collection(
        [river_doc(), second], CTX, RenderOptions(format="concise"), LOCATION
    )
    assert body["type"] == "FeatureCollection"
    assert [f["id"] for f in body["features"]] == [
        "urn:ngsi-ld:WaterLevelObserved:akiyama-1",
        "urn:ngsi-ld:WaterLevelObserved:akiyama-2",
    ]
    assert body["features"][1]["properties"]["category"] == {"vocab": "river"}
    assert render_geojson_collection([], CTX, RenderOptions(), LOCATION) == {
        "type": "FeatureCollection",
        "features": [],
    }
