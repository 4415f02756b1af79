"""ActiveContext against pyld: the fast path must expand names exactly as JSON-LD does."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import orjson
import pytest
from pyld import jsonld

from cityos.broker.errors import BadRequestData
from cityos.jsonld.context import ActiveContext, process
from cityos.jsonld.loader import CORE_FILE, CORE_URLS, ContextLoader
from cityos.jsonld.store import Origin

CORE_DOC: dict[str, Any] = orjson.loads(CORE_FILE.read_bytes())
CORE_URL = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
NGSI = "https://uri.etsi.org/ngsi-ld/"
DEFAULT = NGSI + "default-context/"

# Smart-data-models style: one term per attribute, prefixes, typed terms.
SDM = {
    "@context": {
        "schema": "https://schema.org/",
        "sdm": "https://smartdatamodels.org/",
        "env": "https://smartdatamodels.org/dataModel.Environment/",
        "WaterLevelObserved": "env:WaterLevelObserved",
        "River": "https://smartdatamodels.org/dataModel.Environment/River",
        "waterLevel": "env:waterLevel",
        "alternateName": "schema:alternateName",
        "refRiver": {"@id": "env:refRiver", "@type": "@id"},
        "dateObserved": {"@id": "sdm:dateObserved", "@type": "schema:DateTime"},
        "alertCategory": {"@id": "env:alertCategory", "@type": "@vocab"},
        "Flooding": "env:Flooding",
    }
}
# A city vocabulary: its own @vocab, @id-less terms, @protected, @version, a scoped context.
SANO = {
    "@context": {
        "@version": 1.1,
        "@protected": True,
        "@vocab": "https://sano.example.org/ns#",
        "ex": "https://sano.example.org/terms/",
        "Sensor": "ex:Sensor",
        "feeds": {"@type": "@id"},
        "reading": {"@id": "ex:reading", "@context": {"inner": "ex:inner"}},
        "battery": {"@id": "ex:battery", "@type": "@json"},
    }
}
# Several local contexts in one array: later ones refine earlier ones.
LAYERED = [
    {"ex": "http://example.org/", "temp": "ex:temperature", "Room": "ex:Room"},
    {"temp": "http://example.org/celsius", "hum": {"@id": "ex:humidity"}, "ex2": "ex:sub/"},
]
SAMPLE_NAMES = [
    "waterLevel",
    "alternateName",
    "refRiver",
    "dateObserved",
    "alertCategory",
    "temp",
    "hum",
    "feeds",
    "reading",
    "battery",
    "undefinedThing",
    "schema:name",
    "ex:flow",
    "ex2:deep",
    "ngsi-ld:foo",
    "https://other.example.com/attr",
    "urn:x:attr",
    "location",
    "name",
    "description",
]


def _pyld_loader(docs: dict[str, Any]) -> Any:
    def load(url: str, options: Any = None) -> dict[str, Any]:
        if url not in docs:
            raise jsonld.JsonLdError("offline test loader", "loading document failed", url)
        return {"contextUrl": None, "documentUrl": url, "document": copy.deepcopy(docs[url])}

    return load


def _docs(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    docs = dict.fromkeys(CORE_URLS, CORE_DOC)
    docs["https://w3id.org/security/data-integrity/v2"] = {"@context": {}}
    docs.update(extra or {})
    return docs


def _with_core(user: list[Any]) -> list[Any]:
    """Return the context pyld should see: the user's contexts, then the core context.

    NGSI-LD lets a user @vocab win over the core's default one, so the core goes in
    without its @vocab when the user set one.
    """
    if any(isinstance(c, dict) and c.get("@vocab") for c in user):
        core = {k: v for k, v in CORE_DOC["@context"].items() if k != "@vocab"}
        return [*user, core]
    return [*user, CORE_URL]


def _entity(names: list[str], types: list[str]) -> dict[str, Any]:
    entity: dict[str, Any] = {"id": "urn:ngsi-ld:Thing:1", "type": types}
    for n in names:
        entity[n] = {
            "type": "Property",
            "value": 1,
            "observedAt": "2026-11-25T10:00:00Z",
            "unitCode": "MTR",
        }
    return entity


def _expand_with_pyld(
    user: list[Any], names: list[str], types: list[str], docs: dict[str, Any]
) -> dict[str, Any]:
    doc = {"@context": _with_core(user), **_entity(names, types)}
    out = jsonld.expand(doc, {"documentLoader": _pyld_loader(docs)})
    assert len(out) == 1
    result: dict[str, Any] = out[0]
    return result


def _active(user: list[Any], docs: dict[str, Any] | None = None) -> ActiveContext:
    loader = ContextLoader(remote_fetch=False)
    for url, doc in (docs or {}).items():
        if url not in CORE_URLS and not url.startswith("https://w3id.org/"):
            loader.store.put_cached(url, doc, Origin.PRELOADED)
    return asyncio.run(loader.resolve(user))


CASES = [
    pytest.param([SDM["@context"]], ["WaterLevelObserved", "River"], id="smart-data-models"),
    pytest.param([SANO["@context"]], ["Sensor", "Thing"], id="vocab-override"),
    pytest.param(LAYERED, ["Room", "ex:Pump", "Other"], id="layered"),
    pytest.param(
        [SDM["@context"], LAYERED[0], SANO["@context"]], ["Room", "River"], id="all-together"
    ),
    pytest.param(
        ["https://contexts.example.org/sdm.jsonld", LAYERED[0]], ["River", "Room"], id="by-url"
    ),
]


@pytest.mark.parametrize(("user", "types"), CASES)
def test_terms_expand_as_pyld_expands_them(user: list[Any], types: list[str]) -> None:
    docs = _docs({"https://contexts.example.org/sdm.jsonld": SDM})
    expected = _expand_with_pyld(user, SAMPLE_NAMES, types, docs)
    ctx = _active(user, docs)

    assert [ctx.expand_term(t) for t in types] == expected["@type"]
    ours = {ctx.expand_term(n) for n in SAMPLE_NAMES}
    assert ours == set(expected) - {"@id", "@type"}
    # sub-attribute names and the attribute type go through the same context
    first = expected[ctx.expand_term("waterLevel")][0]
    assert ctx.expand_term("observedAt") in first
    assert ctx.expand_term("unitCode") in first
    assert first["@type"] == [ctx.expand_term("Property")]


@pytest.mark.parametrize(("user", "types"), CASES)
def test_vocab_values_expand_as_pyld_expands_them(user: list[Any], types: list[str]) -> None:
    docs = _docs({"https://contexts.example.org/sdm.jsonld": SDM})
    entity = {
        "@context": _with_core(user),
        "id": "urn:ngsi-ld:Thing:1",
        "type": types[0],
        "category": {"type": "VocabProperty", "vocab": ["Flooding", "Room", "free", "ex:x"]},
        "refRiver": {"type": "Relationship", "object": "urn:r:1", "objectType": "River"},
    }
    out = jsonld.expand(entity, {"documentLoader": _pyld_loader(docs)})[0]
    ctx = _active(user, docs)
    category = out[ctx.expand_term("category")][0]
    vocab = [v["@id"] for v in category[ctx.expand_term("vocab")]]
    assert vocab == [ctx.expand_vocab_value(v) for v in ["Flooding", "Room", "free", "ex:x"]]
    rel = out[ctx.expand_term("refRiver")][0]
    assert rel[ctx.expand_term("objectType")][0]["@id"] == ctx.expand_vocab_value("River")


@pytest.mark.parametrize(("user", "types"), CASES)
def test_compaction_gives_back_the_names_the_client_used(user: list[Any], types: list[str]) -> None:
    docs = _docs({"https://contexts.example.org/sdm.jsonld": SDM})
    ctx = _active(user, docs)
    for name in [*SAMPLE_NAMES, *types, "observedAt", "Property"]:
        assert ctx.compact_iri(ctx.expand_term(name)) == name


def test_default_context_uses_ngsi_ld_default_vocab() -> None:
    ctx = ContextLoader(remote_fetch=False).default()
    assert ctx.source == CORE_URL
    assert ctx.expand_term("waterLevel") == DEFAULT + "waterLevel"
    assert ctx.expand_term("location") == NGSI + "location"
    assert ctx.compact_iri(DEFAULT + "waterLevel") == "waterLevel"
    assert ctx.compact_iri(NGSI + "observationSpace") == "observationSpace"
    # not a term, not under @vocab: the ngsi-ld prefix shortens it
    assert ctx.compact_iri(NGSI + "somethingNew") == "ngsi-ld:somethingNew"
    assert ctx.compact_iri("https://unknown.example.com/x") == "https://unknown.example.com/x"


def test_default_vocab_suffix_that_is_a_core_term_is_not_shortened_to_that_term() -> None:
    ctx = ContextLoader(remote_fetch=False).default()
    iri = DEFAULT + "location"  # a user's own "location" under the default vocab, not the core's
    short = ctx.compact_iri(iri)
    assert short != "location"
    assert ctx.expand_term(short) == iri


def test_core_terms_win_over_user_redefinitions() -> None:
    ctx = _active([{"location": "http://example.org/myLocation", "Property": "http://x/P"}])
    assert ctx.expand_term("location") == NGSI + "location"
    assert ctx.expand_term("Property") == NGSI + "Property"
    assert ctx.compact_iri(NGSI + "location") == "location"


def test_core_term_is_chosen_when_a_user_term_aliases_its_iri() -> None:
    ctx = _active([{"loc": NGSI + "location"}])
    assert ctx.expand_term("loc") == NGSI + "location"
    assert ctx.compact_iri(NGSI + "location") == "location"


def test_shortest_user_term_is_chosen_for_an_iri_with_two_terms() -> None:
    ctx = _active([{"temperature": "http://ex.org/t", "temp": "http://ex.org/t"}])
    assert ctx.compact_iri("http://ex.org/t") == "temp"


def test_user_vocab_null_falls_back_to_the_default_vocab() -> None:
    ctx = _active([{"@vocab": "http://a.example/"}, {"@vocab": None}])
    assert ctx.expand_term("x") == DEFAULT + "x"


@pytest.mark.parametrize(
    "user",
    [
        [{"ex": "http://ex.org/"}, {"@vocab": "ex:things/"}],
        # @vocab is processed before the terms of its own object, so "ex" is no prefix yet
        [{"ex": "http://ex.org/", "@vocab": "ex:things/"}],
        [{"@vocab": "http://ex.org/"}, {"@vocab": "sub/"}],
    ],
)
def test_vocab_may_be_a_compact_iri_or_relative_to_the_previous_vocab(user: list[Any]) -> None:
    expected = _expand_with_pyld(user, ["a"], ["T"], _docs())
    ctx = _active(user)
    assert {ctx.expand_term("a")} == set(expected) - {"@id", "@type"}
    assert ctx.expand_term("a") != DEFAULT + "a"


def test_expanded_term_definition_is_no_prefix_unless_it_says_so() -> None:
    # JSON-LD 1.1: only simple string terms ending in a gen-delim are prefixes
    ctx = _active(
        [{"ex": {"@id": "http://ex.org/"}, "ey": {"@id": "http://ey.org/", "@prefix": True}}]
    )
    assert ctx.expand_term("ex:a") == "ex:a"
    assert ctx.expand_term("ey:a") == "http://ey.org/a"


def test_term_that_maps_to_null_is_expanded_with_vocab() -> None:
    ctx = _active([{"hidden": None}, {"gone": {"@id": None}}])
    assert ctx.expand_term("hidden") == DEFAULT + "hidden"
    assert ctx.expand_term("gone") == DEFAULT + "gone"


def test_vocab_value_mapped_to_a_keyword_stays_a_plain_vocab_iri() -> None:
    ctx = ContextLoader(remote_fetch=False).default()
    assert ctx.expand_vocab_value("id") == DEFAULT + "id"
    assert ctx.compact_vocab_value(DEFAULT + "Flooding") == "Flooding"


@pytest.mark.parametrize(
    ("local", "message"),
    [
        ({"a": "b", "b": "a"}, "cyclic"),
        ({"a": 5}, "'a'"),
        ({"@version": 1.0}, "@version"),
        ({"@vocab": 3}, "@vocab"),
        ({"@vocab": "not absolute"}, "@vocab"),
        ({"a": {"@id": 7}}, "@id must be a string"),
        ({"@context": {"a": "http://x/"}}, "'@context'"),
        ({"a": {"@reverse": "%%%"}}, "absolute IRI"),
    ],
)
def test_invalid_local_contexts_are_rejected_naming_the_problem(
    local: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadRequestData, match="@context") as err:
        process([local])
    assert message in err.value.detail


def test_protected_user_term_cannot_be_redefined_by_a_later_user_context() -> None:
    first = {"@protected": True, "t": "http://ex.org/t"}
    with pytest.raises(BadRequestData, match="'t' is protected"):
        process([first, {"t": "http://ex.org/other"}])
    # the same definition again is allowed, as in JSON-LD
    assert process([first, {"t": "http://ex.org/t"}]).terms["t"].iri == "http://ex.org/t"


def test_scoped_context_and_unused_keywords_are_ignored_without_error() -> None:
    ctx = _active(
        [
            {
                "@base": "http://base.example/",
                "@language": "ja",
                "@propagate": True,
                "obs": {"@id": "http://ex.org/obs", "@context": ["http://nowhere/"], "@nest": "x"},
                "@reservedThing": "ignored",
            }
        ]
    )
    assert ctx.expand_term("obs") == "http://ex.org/obs"


def test_contexts_with_the_same_key_are_equal_and_hash_alike() -> None:
    loader = ContextLoader(remote_fetch=False)
    a = asyncio.run(loader.resolve([{"x": "http://x/"}]))
    b = ActiveContext([{"x": "http://x/"}], process([CORE_DOC["@context"]]), [{"x": "http://x/"}])
    c = ActiveContext([{"x": "http://x/"}], process([CORE_DOC["@context"]]), [{"x": "http://x/"}])
    assert b == c
    assert hash(b) == hash(c)
    assert a.expand_term("x") == b.expand_term("x")
    assert len({b, c}) == 1


def test_memo_stays_bounded_and_answers_stay_right() -> None:
    ctx = ContextLoader(remote_fetch=False).default()
    for i in range(10_000):
        assert ctx.expand_term(f"attr{i}") == f"{DEFAULT}attr{i}"
        assert ctx.compact_iri(f"{DEFAULT}attr{i}") == f"attr{i}"
    assert len(ctx._expand_cache) <= 4096
    assert len(ctx._compact_cache) <= 4096
    assert ctx.expand_term("attr1") == DEFAULT + "attr1"
