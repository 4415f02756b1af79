"""Parse IoT Agent device payloads (JSON, UltraLight 2.0) and map measures to NGSI-LD attributes.

Pure functions: no I/O, no clock (the caller passes ``now``). Every function either returns a
complete result or raises :class:`PayloadError` naming the offending key or position, so a
message is never half-applied.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final, Literal

import orjson

from cityos.broker.errors import BadRequestData
from cityos.broker.normalize import check_name, is_uri

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_KEY_LENGTH",
    "MAX_MEASURES",
    "AttributeMapping",
    "MeasureMapping",
    "Measures",
    "PayloadError",
    "StaticAttribute",
    "parse_json",
    "parse_single",
    "parse_ul",
    "to_attributes",
    "to_updates",
]

MAX_BODY_BYTES: Final = 256 * 1024
MAX_MEASURES: Final = 1000  # key/value pairs in one message, across all of its groups
MAX_KEY_LENGTH: Final = 256

# iotagent-node-lib convention: a measure named TimeInstant carries the device timestamp.
TIMESTAMP_KEY: Final = "TimeInstant"
_RENAMED: Final = {"id": "measure_id", "type": "measure_type"}
_INT64 = (-(2**63), 2**63 - 1)

_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?"
    r"(Z|[+-][0-9]{2}:?[0-9]{2})?"
)
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER_TEXT_LIMIT = 64  # longer numeric strings are not sensor readings


class PayloadError(ValueError):
    """A device payload or measure that cannot be accepted; the message names where and why."""


@dataclass(frozen=True, slots=True)
class Measures:
    """One set of measures from a device, sent to the broker as one update."""

    values: dict[str, Any]  # measure key -> JSON value (always a string from UltraLight)
    timestamp: datetime | None = None  # the device's own timestamp, timezone-aware


class Kind(Enum):
    """How a declared IoT Agent attribute type converts a measure."""

    NUMBER = "number"
    FLOAT = "float"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    TEXT = "text"
    DATETIME = "datetime"
    GEO = "geo"
    RELATIONSHIP = "relationship"
    NATIVE = "native"  # unknown or structured types: the value is kept as sent


# IoT Agent provisioning files spell types freely ("Float", "float", "geo:point"...).
_KINDS: Final = {
    "number": Kind.NUMBER,
    "float": Kind.FLOAT,
    "double": Kind.FLOAT,
    "integer": Kind.INTEGER,
    "int": Kind.INTEGER,
    "boolean": Kind.BOOLEAN,
    "bool": Kind.BOOLEAN,
    "text": Kind.TEXT,
    "string": Kind.TEXT,
    "datetime": Kind.DATETIME,
    "iso8601": Kind.DATETIME,
    "geo:point": Kind.GEO,
    "geo:json": Kind.GEO,
    "geoproperty": Kind.GEO,
    "relationship": Kind.RELATIONSHIP,
}


def kind_of(attr_type: str) -> Kind:
    """Return the conversion a declared attribute type asks for."""
    return _KINDS.get(attr_type.lower(), Kind.NATIVE)


@dataclass(frozen=True, slots=True)
class AttributeMapping:
    """One provisioned active attribute: measure key ``object_id`` -> attribute ``name``."""

    name: str
    type: str = "Text"
    object_id: str | None = None  # None: the measure key is the attribute name
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_attribute_name(self.name, "attribute name")
        _check_metadata(self.name, self.metadata)

    @property
    def key(self) -> str:
        """Return the measure key this attribute is read from."""
        return self.object_id if self.object_id is not None else self.name


@dataclass(frozen=True, slots=True)
class StaticAttribute:
    """An attribute added with the same value to every update of a device."""

    name: str
    type: str
    value: Any
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_attribute_name(self.name, "static attribute name")
        _check_metadata(self.name, self.metadata)


@dataclass(frozen=True, slots=True)
class MeasureMapping:
    """How a device's measures become entity attributes (a group merged with its device)."""

    attributes: tuple[AttributeMapping, ...] = ()
    static_attributes: tuple[StaticAttribute, ...] = ()
    explicit_attrs: bool = False  # True: measures without a mapping are dropped
    timestamp: bool = True  # True: every measured attribute gets observedAt

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for attr in self.attributes:
            if attr.key in seen:
                raise ValueError(f"object_id {attr.key!r} is mapped twice")
            seen.add(attr.key)

    def by_key(self) -> dict[str, AttributeMapping]:
        """Return the attribute mappings indexed by measure key."""
        return {attr.key: attr for attr in self.attributes}


# -- parsing ---------------------------------------------------------------------------------


def parse_json(body: bytes) -> list[Measures]:
    """Parse a JSON measure object, or an array of them (one update per element)."""
    text = _decode(body)
    if not text.strip():
        raise PayloadError("empty body: expected a JSON object of measures")
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"invalid JSON: {exc}") from None
    if isinstance(doc, dict):
        elements, multi = [doc], False
    elif isinstance(doc, list):
        if not doc:
            raise PayloadError("empty array: expected at least one object of measures")
        elements, multi = doc, True
    else:
        raise PayloadError(f"expected a JSON object of measures, got {_json_type(doc)}")
    result: list[Measures] = []
    total = 0
    for i, element in enumerate(elements):
        where = f"element [{i}]" if multi else "the body"
        if not isinstance(element, dict):
            raise PayloadError(
                f"{where}: expected an object of measures, got {_json_type(element)}"
            )
        values = dict(element)
        timestamp = None
        if TIMESTAMP_KEY in values:
            stamp = values.pop(TIMESTAMP_KEY)
            timestamp = _parse_timestamp(stamp, f"{where}, {TIMESTAMP_KEY}")
        if not values:
            raise PayloadError(f"{where}: no measures")
        for key in values:
            _check_key(key, f"{where}")
        total += len(values)
        _check_count(total)
        result.append(Measures(values, timestamp))
    return result


def parse_ul(text: str | bytes) -> list[Measures]:
    """Parse an UltraLight 2.0 message: ``[timestamp|]k|v|k|v`` groups separated by ``#``."""
    if isinstance(text, bytes):
        text = _decode(text)
    else:
        _check_size(len(text.encode("utf-8", "surrogatepass")))
    # Devices often end a message with a line break; it is framing, not content.
    text = text.rstrip("\r\n")
    if not text:
        raise PayloadError("empty body: expected UltraLight measures such as 't|15'")
    _check_characters(text)
    result: list[Measures] = []
    total = 0
    offset = 0
    for number, group in enumerate(text.split("#"), start=1):
        measures = _parse_ul_group(group, number, offset)
        total += len(measures.values)
        _check_count(total)
        result.append(measures)
        offset += len(group) + 1
    return result


def parse_single(attr: str, body: bytes, proto: Literal["json", "ul"]) -> Measures:
    """Parse the raw value sent on a single-attribute topic or request."""
    _check_key(attr, "attribute")
    if proto == "ul":
        text = _decode(body).rstrip("\r\n")
        if not text:
            raise PayloadError(f"empty value for {attr!r}")
        _check_characters(text)
        return Measures({attr: text})
    _check_size(len(body))
    if not body.strip():
        raise PayloadError(f"empty value for {attr!r}")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        # As the IoT Agent does: a value that is not JSON is binary, stored hex-encoded.
        return Measures({attr: body.hex()})
    if isinstance(value, list):
        raise PayloadError(
            f"value for {attr!r}: arrays are not accepted on a single-attribute topic; "
            "send them as an array of measure objects to the attrs topic"
        )
    return Measures({attr: value})


def _parse_ul_group(group: str, number: int, offset: int) -> Measures:
    where = f"group {number} at offset {offset}"
    if not group:
        raise PayloadError(f"{where}: empty group")
    fields = group.split("|")
    timestamp = None
    if len(fields) % 2:
        stamp = fields[0]
        if not _TIMESTAMP.fullmatch(stamp):
            raise PayloadError(
                f"{where}: odd number of fields ({len(fields)}); expected key|value pairs, "
                f"optionally after an ISO 8601 timestamp, and {stamp[:40]!r} is not a timestamp"
            )
        timestamp = _parse_timestamp(stamp, f"{where}, timestamp")
        fields = fields[1:]
        offset += len(stamp) + 1
        if not fields:
            raise PayloadError(f"{where}: a timestamp without measures")
    values: dict[str, Any] = {}
    for i in range(0, len(fields), 2):
        key, value = fields[i], fields[i + 1]
        at = f"{where}, key at offset {offset}"
        if not key:
            raise PayloadError(f"{at}: empty key")
        _check_key(key, at)
        if key in values:
            raise PayloadError(f"{at}: key {key!r} repeated in the group")
        values[key] = value
        offset += len(key) + len(value) + 2
    return Measures(values, timestamp)


def _decode(body: bytes) -> str:
    _check_size(len(body))
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"body is not valid UTF-8 at byte {exc.start}") from None


def _check_size(size: int) -> None:
    if size > MAX_BODY_BYTES:
        raise PayloadError(f"body of {size} bytes exceeds the limit of {MAX_BODY_BYTES} bytes")


def _check_count(total: int) -> None:
    if total > MAX_MEASURES:
        raise PayloadError(f"more than {MAX_MEASURES} measures in one message")


def _check_characters(text: str) -> None:
    for i, char in enumerate(text):
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise PayloadError(f"control character {char!r} at offset {i}")


def _check_key(key: str, where: str) -> None:
    if not key:
        raise PayloadError(f"{where}: empty measure key")
    if len(key) > MAX_KEY_LENGTH:
        raise PayloadError(f"{where}: measure key longer than {MAX_KEY_LENGTH} characters")
    for char in key:
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise PayloadError(f"{where}: control character {char!r} in key {key[:40]!r}")


def _parse_timestamp(value: object, where: str) -> datetime:
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        raise PayloadError(f"{where}: {str(value)[:40]!r} is not an ISO 8601 date-time")
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise PayloadError(f"{where}: {value!r} is not a valid date-time") from None
    # A device clock without a zone is taken as UTC, the IoT Agent's own assumption.
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def _json_type(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


# -- mapping ---------------------------------------------------------------------------------


def to_updates(
    messages: Iterable[Measures], mapping: MeasureMapping, *, now: datetime
) -> list[dict[str, dict[str, Any]]]:
    """Map every measure set of a message, refusing the whole message if one fails."""
    return [to_attributes(measures, mapping, now=now) for measures in messages]


def to_attributes(
    measures: Measures, mapping: MeasureMapping, *, now: datetime
) -> dict[str, dict[str, Any]]:
    """Map one measure set to NGSI-LD attribute fragments (normalized form)."""
    mapped = mapping.by_key()
    observed = _format_time(measures.timestamp or now) if mapping.timestamp else None
    result: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for key, value in measures.values.items():
        attr = mapped.get(key)
        metadata: Mapping[str, Any] = {}
        if attr is None:
            if mapping.explicit_attrs:
                continue
            name, attr_type = _RENAMED.get(key, key), ""
            try:
                check_name(name, "measure")
            except BadRequestData:
                raise PayloadError(f"measure {key!r}: not a valid attribute name") from None
        else:
            name, attr_type, metadata = attr.name, attr.type, attr.metadata
        if name in sources:
            raise PayloadError(
                f"measures {sources[name]!r} and {key!r} both map to attribute {name!r}"
            )
        sources[name] = key
        fragment = _fragment(value, attr_type, f"measure {key!r}")
        _add_metadata(fragment, metadata)
        if observed is not None:
            fragment["observedAt"] = observed
        result[name] = fragment
    for static in mapping.static_attributes:
        # A measured value of the same name is newer than the provisioned one.
        if static.name not in result:
            fragment = _fragment(static.value, static.type, f"static attribute {static.name!r}")
            _add_metadata(fragment, static.metadata)
            result[static.name] = fragment
    return result


def _fragment(value: Any, attr_type: str, where: str) -> dict[str, Any]:
    if value is None:
        raise PayloadError(f"{where}: null is not a value")
    kind = kind_of(attr_type) if attr_type else Kind.NATIVE
    if kind is Kind.RELATIONSHIP:
        if not is_uri(value):
            raise PayloadError(f"{where}: a Relationship needs a URI, got {_show(value)}")
        return {"type": "Relationship", "object": value}
    if kind is Kind.GEO:
        return {"type": "GeoProperty", "value": _to_geo(value, where)}
    return {"type": "Property", "value": _convert(value, kind, attr_type, where)}


def _convert(value: Any, kind: Kind, attr_type: str, where: str) -> Any:
    if kind in (Kind.NUMBER, Kind.FLOAT, Kind.INTEGER):
        number = _to_number(value, kind, where, attr_type)
        if kind is Kind.FLOAT:
            return float(number)
        return number
    if kind is Kind.BOOLEAN:
        return _to_bool(value, where)
    if kind is Kind.TEXT:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return str(value)
        raise PayloadError(f"{where}: Text needs a string, got {_json_type(value)}")
    if kind is Kind.DATETIME:
        stamp = _parse_timestamp(value, where)
        return {"@type": "DateTime", "@value": _format_time(stamp)}
    return value


def _to_number(value: Any, kind: Kind, where: str, attr_type: str) -> int | float:
    number: int | float
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise PayloadError(f"{where}: {attr_type} needs a number, got {_json_type(value)}")
    if isinstance(value, str):
        text = value.strip()
        if len(text) > _NUMBER_TEXT_LIMIT or not _NUMBER.fullmatch(text):
            raise PayloadError(f"{where}: {value[:40]!r} is not a number ({attr_type})")
        number = int(text) if _INTEGER.fullmatch(text) else float(text)
    else:
        number = value
    if isinstance(number, float):
        if not math.isfinite(number):
            raise PayloadError(f"{where}: {_show(value)} is out of range ({attr_type})")
        if kind is Kind.INTEGER:
            if not number.is_integer():
                raise PayloadError(f"{where}: {_show(value)} is not an integer ({attr_type})")
            number = int(number)
    if isinstance(number, int) and not _INT64[0] <= number <= _INT64[1]:
        raise PayloadError(f"{where}: {_show(value)} is out of range ({attr_type})")
    return number


def _to_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "false", "0"):
        return value.strip().lower() in ("true", "1")
    if isinstance(value, int) and value in (0, 1):
        return value == 1
    raise PayloadError(f"{where}: {_show(value)} is not a Boolean (true/false/1/0)")


def _to_geo(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, dict):
        if not isinstance(value.get("type"), str) or "coordinates" not in value:
            raise PayloadError(f"{where}: a GeoJSON geometry needs 'type' and 'coordinates'")
        return value
    if not isinstance(value, str):
        raise PayloadError(f"{where}: a geo:point needs 'lat,lon', got {_json_type(value)}")
    parts = value.split(",")
    if len(parts) != 2:
        raise PayloadError(f"{where}: {value[:40]!r} is not 'lat,lon'")
    try:
        lat, lon = (_to_number(p, Kind.FLOAT, where, "geo:point") for p in parts)
    except PayloadError:
        raise PayloadError(f"{where}: {value[:40]!r} is not 'lat,lon'") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise PayloadError(f"{where}: {value[:40]!r} is outside latitude/longitude range")
    # GeoJSON puts longitude first.
    return {"type": "Point", "coordinates": [float(lon), float(lat)]}


def _add_metadata(fragment: dict[str, Any], metadata: Mapping[str, Any]) -> None:
    for key, meta in metadata.items():
        # Provisioning files use the NGSI-v2 shape {"type": "Text", "value": "CEL"}.
        value = meta["value"] if isinstance(meta, dict) and "value" in meta else meta
        if key == "unitCode":
            fragment["unitCode"] = value
        else:
            fragment[key] = {"type": "Property", "value": value}


_RESERVED_METADATA: Final = frozenset(
    {"type", "value", "object", "observedAt", "datasetId", "createdAt", "modifiedAt", "id"}
)


def _check_attribute_name(name: str, what: str) -> None:
    try:
        check_name(name, what)
    except BadRequestData as exc:
        raise ValueError(exc.detail) from None
    if name in ("id", "type"):
        raise ValueError(f"{what}: {name!r} is reserved for the entity")


def _check_metadata(name: str, metadata: Mapping[str, Any]) -> None:
    for key, meta in metadata.items():
        if key in _RESERVED_METADATA:
            raise ValueError(f"attribute {name!r}: metadata {key!r} is reserved")
        if key == "unitCode":
            value = meta["value"] if isinstance(meta, dict) and "value" in meta else meta
            if not isinstance(value, str) or not value:
                raise ValueError(f"attribute {name!r}: unitCode must be a non-empty string")


def _format_time(stamp: datetime) -> str:
    return stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _show(value: Any) -> str:
    return repr(value)[:40]
