"""Render stored (expanded) entities as NGSI-LD response bodies (GS CIM 009 clauses 4.5, 4.15).

Three representations are produced from the same stored document: *normalized* (lossless),
*concise* (types dropped where a reader can infer them, lone Property values written bare) and
*simplified* / keyValues (attribute -> value). GeoJSON output (clause 4.5.17) wraps any of them
in Features. Every function builds new dicts in one pass and never mutates the stored document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from cityos.broker.model import CORE_MEMBERS, LOCATION, NGSI_LD, Doc, Instance

__all__ = [
    "EntityRenderer",
    "RenderOptions",
    "TermCompactor",
    "parse_lang",
    "pick_language",
    "render_entity",
    "render_geojson_collection",
    "render_geojson_feature",
]

Format = Literal["normalized", "keyValues", "simplified", "concise"]

_NORMALIZED: Final = 0
_CONCISE: Final = 1
_SIMPLIFIED: Final = 2
_FORMATS: Final[dict[str, int]] = {
    "normalized": _NORMALIZED,
    "concise": _CONCISE,
    "keyValues": _SIMPLIFIED,
    "simplified": _SIMPLIFIED,
}
_SYSTEM: Final = frozenset({"createdAt", "modifiedAt", "deletedAt"})
_VOCAB_MEMBERS: Final = frozenset({"vocab", "objectType", "previousVocab"})
_SCOPE_IRI: Final = NGSI_LD + "scope"
_GEOJSON_TYPES: Final = frozenset(
    {"Point", "LineString", "Polygon", "MultiPoint", "MultiLineString", "MultiPolygon"}
)
# Members that make a JSON object read as an attribute instance rather than a Property value
# when it appears bare in a concise payload (see normalize.Normalizer.instance).
_INSTANCE_MARKERS: Final = frozenset(
    {"type", "value", "object", "languageMap", "json", "vocab", "valueList", "objectList"}
)


class TermCompactor(Protocol):
    """The part of a request's active @context that rendering needs."""

    def compact_iri(self, iri: str) -> str: ...

    def compact_vocab_value(self, v: str) -> str: ...


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """How one request wants its entities represented."""

    format: Format = "normalized"
    sys_attrs: bool = False
    #: the ``lang`` query parameter, e.g. "ja", "*" or "ja,en;q=0.8"
    lang: str | None = None
    #: expanded attribute IRIs to keep; may contain "id" and "type"
    pick: frozenset[str] | None = None
    #: expanded attribute IRIs to drop; may contain "id" and "type"
    omit: frozenset[str] | None = None
    #: datasetIds of the instances to keep; "@none" keeps the default instance
    dataset_ids: frozenset[str] | None = None


def render_entity(doc: Doc, ctx: TermCompactor, opts: RenderOptions) -> dict[str, Any]:
    """Render one stored entity in the representation the options ask for."""
    return EntityRenderer(ctx, opts).entity(doc)


def render_geojson_feature(
    doc: Doc, ctx: TermCompactor, opts: RenderOptions, geoproperty: str = LOCATION
) -> dict[str, Any]:
    """Render one stored entity as a GeoJSON Feature whose geometry is geoproperty's value."""
    return EntityRenderer(ctx, opts).feature(doc, geoproperty)


def render_geojson_collection(
    docs: list[Doc], ctx: TermCompactor, opts: RenderOptions, geoproperty: str = LOCATION
) -> dict[str, Any]:
    """Render stored entities as a GeoJSON FeatureCollection."""
    renderer = EntityRenderer(ctx, opts)
    return {
        "type": "FeatureCollection",
        "features": [renderer.feature(doc, geoproperty) for doc in docs],
    }


def parse_lang(lang: str) -> tuple[str, ...]:
    """Return the language ranges of a lang parameter, lower-cased, best first (RFC 9110 q)."""
    ranked: list[tuple[float, int, str]] = []
    for pos, part in enumerate(lang.split(",")):
        tag, _, params = part.partition(";")
        tag = tag.strip().lower()
        if not tag:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, val = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(val)
                except ValueError:
                    q = 1.0
        if q > 0:
            ranked.append((-q, pos, tag))
    ranked.sort()
    return tuple(tag for _, _, tag in ranked)


def pick_language(lmap: dict[str, Any], ranges: tuple[str, ...]) -> tuple[str | None, Any]:
    """Return (tag, text) of the best languageMap entry for the ranges (clause 4.15).

    A range matches its tag exactly, a longer tag it prefixes ("ja" -> "ja-JP"), or, truncated,
    a shorter one ("ja-JP" -> "ja"); "*" matches any language. Without a match the "@none"
    entry is used (tag None), then the first entry.
    """
    lowered: dict[str, str] | None = None
    for rng in ranges:
        if rng == "*":
            for tag, text in lmap.items():
                if tag != "@none":
                    return tag, text
            continue
        if lowered is None:
            lowered = {t.lower(): t for t in lmap if t != "@none"}
        tag_ = lowered.get(rng)
        if tag_ is not None:
            return tag_, lmap[tag_]
        prefix = rng + "-"
        for low, tag_ in lowered.items():
            if low.startswith(prefix):
                return tag_, lmap[tag_]
        while "-" in rng:
            rng = rng.rsplit("-", 1)[0]
            tag_ = lowered.get(rng)
            if tag_ is not None:
                return tag_, lmap[tag_]
    if "@none" in lmap:
        return None, lmap["@none"]
    tag, text = next(iter(lmap.items()))
    return tag, text


def _bare_ok(value: Any) -> bool:
    """Return whether a Property value can stand alone in concise form without being misread."""
    if isinstance(value, dict):
        return _INSTANCE_MARKERS.isdisjoint(value)
    if isinstance(value, list):
        # a list made only of instance-like objects would read as several instances
        return not value or not all(
            isinstance(v, dict) and not _INSTANCE_MARKERS.isdisjoint(v) for v in value
        )
    return True


def _is_geojson(value: Any) -> bool:
    return (
        isinstance(value, dict) and value.get("type") in _GEOJSON_TYPES and "coordinates" in value
    )


class EntityRenderer:
    """Render many entities for one request (parses options and memoises terms once)."""

    __slots__ = (
        "_ctx",
        "_dataset_ids",
        "_fmt",
        "_omit",
        "_pick",
        "_ranges",
        "_scope",
        "_sys",
        "_terms",
        "_vocab",
    )

    def __init__(self, ctx: TermCompactor, opts: RenderOptions) -> None:
        self._ctx = ctx
        self._fmt = _FORMATS[opts.format]
        self._sys = opts.sys_attrs
        self._ranges = parse_lang(opts.lang) if opts.lang else None
        self._pick = opts.pick
        self._omit = opts.omit
        self._dataset_ids = opts.dataset_ids
        names = (_SCOPE_IRI, "scope")
        self._scope = (opts.pick is None or not opts.pick.isdisjoint(names)) and (
            opts.omit is None or opts.omit.isdisjoint(names)
        )
        self._terms: dict[str, str] = {}
        self._vocab: dict[str, str] = {}

    # -- names -------------------------------------------------------------------------------
    def _term(self, iri: str) -> str:
        term = self._terms.get(iri)
        if term is None:
            term = self._terms[iri] = self._ctx.compact_iri(iri)
        return term

    def _vocab_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self._vocab_value(v) for v in value]
        term = self._vocab.get(value)
        if term is None:
            term = self._vocab[value] = self._ctx.compact_vocab_value(value)
        return term

    def _keep(self, key: str) -> bool:
        if self._pick is not None and key not in self._pick:
            return False
        return self._omit is None or key not in self._omit

    # -- entities ----------------------------------------------------------------------------
    def entity(self, doc: Doc) -> dict[str, Any]:
        """Render one stored entity."""
        out: dict[str, Any] = {}
        keep = self._keep
        if keep("id"):
            out["id"] = doc["id"]
        types = doc.get("type")
        if types and keep("type"):
            out["type"] = (
                self._term(types[0]) if len(types) == 1 else [self._term(t) for t in types]
            )
        scope = doc.get("scope")
        if scope and self._scope:
            out["scope"] = scope[0] if len(scope) == 1 else list(scope)
        if self._sys:
            for member in ("createdAt", "modifiedAt", "deletedAt"):
                if member in doc:
                    out[member] = doc[member]
        for iri, insts in doc.get("attrs", {}).items():
            if not keep(iri):
                continue
            rendered = self._attribute(insts)
            if rendered is not _ABSENT:
                out[self._term(iri)] = rendered
        return out

    def feature(self, doc: Doc, geoproperty: str = LOCATION) -> dict[str, Any]:
        """Render one stored entity as a GeoJSON Feature (clause 4.5.17)."""
        props = self.entity(doc)
        feature: dict[str, Any] = {}
        entity_id = props.pop("id", None)
        if entity_id is not None:
            feature["id"] = entity_id
        feature["type"] = "Feature"
        feature["geometry"] = self._geometry(doc, geoproperty)
        feature["properties"] = props
        return feature

    def _geometry(self, doc: Doc, geoproperty: str) -> Any:
        insts = self._selected(doc.get("attrs", {}).get(geoproperty, ()))
        inst = next((i for i in insts if "datasetId" not in i), insts[0] if insts else None)
        if inst is None or inst.get("type") != "GeoProperty":
            return None
        return inst.get("value")

    # -- attributes --------------------------------------------------------------------------
    def _selected(self, insts: Any) -> list[Instance]:
        if self._dataset_ids is None:
            return list(insts)
        wanted = self._dataset_ids
        return [i for i in insts if i.get("datasetId", "@none") in wanted]

    def _attribute(self, insts: list[Instance]) -> Any:
        if self._dataset_ids is not None:
            insts = self._selected(insts)
        if not insts:
            return _ABSENT
        if self._fmt == _SIMPLIFIED:
            if len(insts) == 1:
                return self._simple_value(insts[0])
            # several instances: a map keyed by datasetId, "@none" for the default instance
            return {"dataset": {i.get("datasetId", "@none"): self._simple_value(i) for i in insts}}
        if len(insts) == 1:
            return self._instance(insts[0], bare_ok=True)
        # inside an array every item must read as an instance, so none may be bare
        return [self._instance(i, bare_ok=False) for i in insts]

    def _simple_value(self, inst: Instance) -> Any:
        atype = inst.get("type")
        if atype == "Property" or atype == "GeoProperty":
            return inst.get("value")
        if atype == "Relationship":
            return inst.get("object")
        if atype == "LanguageProperty":
            lmap = inst.get("languageMap", {})
            if self._ranges is not None and lmap:
                return pick_language(lmap, self._ranges)[1]
            return {"languageMap": lmap}
        if atype == "JsonProperty":
            return {"json": inst.get("json")}
        if atype == "VocabProperty":
            return {"vocab": self._vocab_value(inst.get("vocab"))}
        if atype == "ListProperty":
            return inst.get("valueList")
        if atype == "ListRelationship":
            return inst.get("objectList")
        return inst.get("value")

    def _instance(self, inst: Instance, *, bare_ok: bool) -> Any:
        """Render one instance in normalized or concise form (sub-attributes recursively)."""
        atype = inst.get("type")
        out: dict[str, Any] = {"type": atype}
        ranges = self._ranges
        lmap: dict[str, Any] = inst.get("languageMap") or {}
        convert = atype == "LanguageProperty" and ranges is not None and bool(lmap)
        if convert:
            tag, text = pick_language(lmap, ranges or ())
            atype = out["type"] = "Property"
            out["value"] = text
            if tag is not None:
                out["lang"] = tag
        sys_attrs = self._sys
        for key, val in inst.items():
            if key in CORE_MEMBERS:
                if key == "type" or (convert and key == "languageMap"):
                    continue
                if key in _SYSTEM:
                    if sys_attrs:
                        out[key] = val
                elif key in _VOCAB_MEMBERS:
                    out[key] = self._vocab_value(val)
                elif key == "objectList":
                    out[key] = [{"object": o} for o in val]
                else:
                    out[key] = val
            else:
                out[self._term(key)] = self._instance(val, bare_ok=True)
        if self._fmt != _CONCISE:
            return out
        if atype == "Property":
            value = out.get("value")
            if _is_geojson(value):
                # without its type a GeoJSON-shaped value would be read back as a GeoProperty
                return out
            if bare_ok and len(out) == 2 and "value" in out and _bare_ok(value):
                return value
        del out["type"]
        return out


class _Absent:
    __slots__ = ()


_ABSENT: Final = _Absent()
