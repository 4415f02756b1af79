"""Turn request payloads (normalized or concise NGSI-LD) into stored, expanded documents.

Every check that can refuse a payload happens here, before anything is written, so a bad
request changes nothing. Error details name the offending member.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Protocol

from cityos.broker.errors import BadRequestData
from cityos.broker.geo import validate_geojson
from cityos.broker.model import ATTRIBUTE_TYPES, CORE_MEMBERS, VALUE_MEMBER, Doc, Instance

MAX_DEPTH = 16
GEOJSON_TYPES = frozenset(
    {"Point", "LineString", "Polygon", "MultiPoint", "MultiLineString", "MultiPolygon"}
)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"{}|\\^`]+$")
# Attribute names must be usable in q, attrs and URL paths (GS CIM 009 clause 4.6.2).
_FORBIDDEN_NAME = re.compile(r"[\s<>\"'=;()\[\]{}\\^`|,?&#%]|[\x00-\x1f\x7f]")
_SCOPE = re.compile(r"^/[^\s/#+]*(/[^\s/#+]+)*$")
#: members the broker sets itself; values sent by clients are ignored
SYSTEM_MEMBERS = frozenset({"createdAt", "modifiedAt", "deletedAt", "instanceId"})


class Expander(Protocol):
    def expand_term(self, term: str) -> str: ...

    def expand_vocab_value(self, value: str) -> str: ...


def is_uri(value: object) -> bool:
    """Return whether a value is an absolute URI as NGSI-LD requires for ids."""
    return isinstance(value, str) and len(value) <= 2048 and _URI.match(value) is not None


def parse_datetime(value: object, field: str) -> str:
    """Validate an ISO 8601 DateTime and return it unchanged."""
    if not isinstance(value, str):
        raise BadRequestData(f"{field}: must be a DateTime string, got {type(value).__name__}")
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise BadRequestData(f"{field}: {value!r} is not a valid ISO 8601 DateTime") from None
    if "T" not in value:
        raise BadRequestData(f"{field}: {value!r} is not a valid ISO 8601 DateTime")
    return value


def check_name(name: str, field: str) -> None:
    """Refuse attribute names that cannot be used in queries and URLs."""
    if not name or len(name) > 512 or _FORBIDDEN_NAME.search(name):
        raise BadRequestData(f"{field}: invalid attribute name {name!r}")


def check_entity_id(value: object, field: str = "id") -> str:
    """Validate an entity id (an absolute URI)."""
    if not isinstance(value, str):
        raise BadRequestData(f"{field}: must be a string URI")
    if not is_uri(value):
        raise BadRequestData(f"{field}: {value!r} is not a valid URI")
    return value


def expand_types(value: object, ctx: Expander, field: str = "type") -> list[str]:
    """Validate and expand an entity's type member (a string or a list of strings)."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise BadRequestData(f"{field}: must not be empty")
    out: list[str] = []
    for t in items:
        if not isinstance(t, str) or not t:
            raise BadRequestData(f"{field}: each type must be a non-empty string")
        check_name(t, field)
        iri = ctx.expand_term(t)
        if iri not in out:
            out.append(iri)
    return out


def parse_scope(value: object) -> list[str]:
    """Validate a scope member (a string or list of strings such as '/Sano/Akiyama')."""
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for s in items:
        if not isinstance(s, str) or not _SCOPE.match(s):
            raise BadRequestData(f"scope: {s!r} is not a valid scope (e.g. '/Sano/Akiyama')")
        if s not in out:
            out.append(s)
    return out


def _infer_type(value: dict[str, Any]) -> str:
    for member in ("object", "languageMap", "json", "vocab", "valueList", "objectList"):
        if member in value:
            return {
                "object": "Relationship",
                "languageMap": "LanguageProperty",
                "json": "JsonProperty",
                "vocab": "VocabProperty",
                "valueList": "ListProperty",
                "objectList": "ListRelationship",
            }[member]
    inner = value.get("value")
    if isinstance(inner, dict) and inner.get("type") in GEOJSON_TYPES and "coordinates" in inner:
        return "GeoProperty"
    return "Property"


def _depth(value: Any, limit: int) -> bool:
    """Return whether a JSON value nests deeper than limit."""
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return True
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return False


class Normalizer:
    """Expand one request's payload with its @context."""

    def __init__(self, ctx: Expander, now: str) -> None:
        self.ctx = ctx
        self.now = now

    # -- attributes ------------------------------------------------------------------------
    def attribute(self, name: str, raw: Any, field: str, depth: int = 0) -> list[Instance]:
        """Return the instances of one attribute from its payload form."""
        if isinstance(raw, list) and raw and all(_looks_like_instance(x) for x in raw):
            out: list[Instance] = []
            seen: set[str | None] = set()
            for i, item in enumerate(raw):
                inst = self.instance(item, f"{field}[{i}]", depth)
                ds = inst.get("datasetId")
                if ds in seen:
                    raise BadRequestData(
                        f"{field}: datasetId {ds!r} appears more than once"
                        if ds
                        else f"{field}: more than one instance without datasetId"
                    )
                seen.add(ds)
                out.append(inst)
            return out
        return [self.instance(raw, field, depth)]

    def instance(self, raw: Any, field: str, depth: int = 0) -> Instance:
        """Validate and expand one attribute instance (normalized or concise form)."""
        if depth > MAX_DEPTH:
            raise BadRequestData(f"{field}: sub-attributes nest deeper than {MAX_DEPTH} levels")
        if not isinstance(raw, dict):
            if raw is None:
                raise BadRequestData(f"{field}: null is not a valid attribute value")
            if _depth(raw, 64):
                raise BadRequestData(f"{field}: value nests too deeply")
            return {"type": "Property", "value": raw, "createdAt": self.now, "modifiedAt": self.now}
        atype = raw.get("type")
        if atype is None:
            if any(m in raw for m in VALUE_MEMBER.values()):
                atype = _infer_type(raw)
            else:
                # concise form: a bare JSON object is a Property value
                if _depth(raw, 64):
                    raise BadRequestData(f"{field}: value nests too deeply")
                return {
                    "type": "Property",
                    "value": raw,
                    "createdAt": self.now,
                    "modifiedAt": self.now,
                }
        elif atype in GEOJSON_TYPES and "coordinates" in raw and "value" not in raw:
            validate_geojson(raw, field)
            return {
                "type": "GeoProperty",
                "value": raw,
                "createdAt": self.now,
                "modifiedAt": self.now,
            }
        if atype not in ATTRIBUTE_TYPES:
            raise BadRequestData(
                f"{field}: unknown attribute type {atype!r} "
                f"(expected one of {', '.join(sorted(ATTRIBUTE_TYPES))})"
            )
        member = VALUE_MEMBER[atype]
        if member not in raw:
            raise BadRequestData(f"{field}: a {atype} needs a '{member}' member")
        inst: Instance = {"type": atype}
        inst[member] = self._value(atype, raw[member], f"{field}.{member}")
        for key, val in raw.items():
            if key in ("type", member) or key in SYSTEM_MEMBERS:
                continue
            sub_field = f"{field}.{key}"
            if key == "datasetId":
                if not is_uri(val):
                    raise BadRequestData(f"{sub_field}: must be a URI")
                inst["datasetId"] = val
            elif key == "observedAt":
                inst["observedAt"] = parse_datetime(val, sub_field)
            elif key == "unitCode":
                if not isinstance(val, str) or not val:
                    raise BadRequestData(f"{sub_field}: must be a non-empty string")
                inst["unitCode"] = val
            elif key == "objectType":
                if atype not in ("Relationship", "ListRelationship"):
                    raise BadRequestData(f"{sub_field}: only Relationships have an objectType")
                inst["objectType"] = self._object_type(val, sub_field)
            elif key == "lang":
                if not isinstance(val, str):
                    raise BadRequestData(f"{sub_field}: must be a language tag string")
                inst["lang"] = val
            elif key == "expiresAt":
                inst["expiresAt"] = parse_datetime(val, sub_field)
            elif key in CORE_MEMBERS:
                raise BadRequestData(f"{sub_field}: member not allowed in a {atype}")
            elif key == "@context":
                continue
            else:
                check_name(key, sub_field)
                inst[self.ctx.expand_term(key)] = self.instance(val, sub_field, depth + 1)
        inst["createdAt"] = self.now
        inst["modifiedAt"] = self.now
        return inst

    def _object_type(self, val: Any, field: str) -> Any:
        items = val if isinstance(val, list) else [val]
        if not items or not all(isinstance(v, str) and v for v in items):
            raise BadRequestData(f"{field}: must be a type name or a list of them")
        out = [self.ctx.expand_vocab_value(v) for v in items]
        return out if isinstance(val, list) else out[0]

    def _value(self, atype: str, val: Any, field: str) -> Any:
        if val is None:
            raise BadRequestData(f"{field}: must not be null")
        if _depth(val, 64):
            raise BadRequestData(f"{field}: value nests too deeply")
        if atype == "GeoProperty":
            validate_geojson(val, field)
        elif atype == "Relationship":
            items = val if isinstance(val, list) else [val]
            if not items or not all(is_uri(v) for v in items):
                raise BadRequestData(f"{field}: a Relationship's object must be a URI")
        elif atype == "ListRelationship":
            if not isinstance(val, list) or not all(
                is_uri(v) or (isinstance(v, dict) and is_uri(v.get("object"))) for v in val
            ):
                raise BadRequestData(f"{field}: objectList must be a list of URIs")
            val = [v["object"] if isinstance(v, dict) else v for v in val]
        elif atype == "LanguageProperty":
            if not isinstance(val, dict) or not val:
                raise BadRequestData(f"{field}: languageMap must be a non-empty object")
            for tag, text in val.items():
                if not re.fullmatch(r"[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*|@none", tag):
                    raise BadRequestData(f"{field}: {tag!r} is not a language tag")
                if not isinstance(text, str) and not (
                    isinstance(text, list) and all(isinstance(t, str) for t in text)
                ):
                    raise BadRequestData(f"{field}.{tag}: must be a string or list of strings")
        elif atype == "VocabProperty":
            items = val if isinstance(val, list) else [val]
            if not items or not all(isinstance(v, str) and v for v in items):
                raise BadRequestData(f"{field}: vocab must be a string or list of strings")
            out = [self.ctx.expand_vocab_value(v) for v in items]
            val = out if isinstance(val, list) else out[0]
        elif atype == "ListProperty":
            if not isinstance(val, list):
                raise BadRequestData(f"{field}: valueList must be a JSON array")
            val = [v["value"] if isinstance(v, dict) and "value" in v else v for v in val]
        return val

    # -- entities --------------------------------------------------------------------------
    def attributes(
        self, payload: dict[str, Any], skip: frozenset[str]
    ) -> dict[str, list[Instance]]:
        """Return the expanded attributes of a payload, ignoring the members in skip."""
        attrs: dict[str, list[Instance]] = {}
        for key, raw in payload.items():
            if key in skip:
                continue
            check_name(key, key)
            iri = self.ctx.expand_term(key)
            if iri in attrs:
                raise BadRequestData(f"{key}: attribute given twice (after @context expansion)")
            attrs[iri] = self.attribute(key, raw, key)
        return attrs

    def entity(self, payload: Any, *, require_type: bool = True) -> Doc:
        """Validate and expand a whole entity for create or replace."""
        if not isinstance(payload, dict):
            raise BadRequestData("the entity must be a JSON object")
        if "id" not in payload:
            raise BadRequestData("id: missing (every entity needs an id)")
        entity_id = check_entity_id(payload["id"])
        if "type" not in payload:
            if require_type:
                raise BadRequestData("type: missing (every entity needs a type)")
            types: list[str] = []
        else:
            types = expand_types(payload["type"], self.ctx)
        doc: Doc = {"id": entity_id, "type": types}
        if "scope" in payload:
            doc["scope"] = parse_scope(payload["scope"])
        doc["createdAt"] = self.now
        doc["modifiedAt"] = self.now
        doc["attrs"] = self.attributes(payload, ENTITY_SKIP)
        return doc


ENTITY_SKIP = frozenset({"id", "type", "scope", "@context", "createdAt", "modifiedAt", "deletedAt"})


def _looks_like_instance(item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    t = item.get("type")
    if t in ATTRIBUTE_TYPES:
        return True
    return t is None and any(m in item for m in VALUE_MEMBER.values())
