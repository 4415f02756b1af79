"""Validate FIWARE IoT Agent config groups and devices, and merge them into a MeasureMapping.

Accepts the JSON of the IoT Agent north-bound API (``iotagent-node-lib/doc/api.md``) as is, so
existing provisioning files carry over. Errors carry the IoT Agent's own ``name`` and a status.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cityos.iot.payloads import AttributeMapping, MeasureMapping, StaticAttribute

__all__ = [
    "DEFAULT_ENTITY_TYPE",
    "Device",
    "Group",
    "IotError",
    "entity_id_for",
    "mapping_for",
    "parse_device",
    "parse_group",
    "service_of",
    "service_path_of",
]

# The IoT Agent's entity type when neither the device nor its group names one.
DEFAULT_ENTITY_TYPE: Final = "Thing"
_SERVICE = re.compile(r"[A-Za-z0-9_]{1,50}")
_SERVICE_PATH = re.compile(r"/[A-Za-z0-9_/]{0,50}")
#: no identifier or name may hold a control character (NUL cannot even be stored in PostgreSQL)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Attribute options that change values in ways cityos does not implement: refused, not ignored.
_UNSUPPORTED_ATTR_KEYS: Final = ("expression", "entity_name", "entity_type", "skipValue")


class IotError(Exception):
    """An error reported as the IoT Agent does: ``{"name": ..., "message": ...}``."""

    def __init__(self, name: str, message: str, status: int) -> None:
        super().__init__(message)
        self.name = name
        self.message = message
        self.status = status

    def body(self) -> dict[str, str]:
        """Return the error body the IoT Agent sends."""
        return {"name": self.name, "message": self.message}


def bad_request(message: str) -> IotError:
    """Return a 400 BAD_REQUEST error."""
    return IotError("BAD_REQUEST", message, 400)


@dataclass(frozen=True, slots=True)
class Group:
    """A config group: the apikey devices use and the defaults of their entities."""

    apikey: str
    resource: str
    entity_type: str | None
    attributes: tuple[AttributeMapping, ...]
    static_attributes: tuple[StaticAttribute, ...]
    explicit_attrs: bool | None
    autoprovision: bool
    timestamp: bool | None
    doc: dict[str, Any]  # the provisioning JSON as sent, returned by GET
    expected_interval: int | None = None  # cityos: seconds between reports at most (heartbeat)
    active_interval: int | None = None  # cityos: the same while its gauge's water is up


@dataclass(frozen=True, slots=True)
class Device:
    """A provisioned device: its id, its entity and its own attribute mappings."""

    device_id: str
    apikey: str | None
    entity_name: str | None
    entity_type: str | None
    attributes: tuple[AttributeMapping, ...]
    static_attributes: tuple[StaticAttribute, ...]
    explicit_attrs: bool | None
    timestamp: bool | None
    doc: dict[str, Any]
    expected_interval: int | None = None
    active_interval: int | None = None


def service_of(header: str | None) -> str:
    """Return the cityos tenant of a Fiware-Service header ('' is the default tenant)."""
    if header is None or header == "":
        return ""
    if not _SERVICE.fullmatch(header):
        raise bad_request(
            f"Fiware-Service: {header[:60]!r} must be 1-50 letters, digits or underscores"
        )
    # Orion and the IoT Agents treat service names case-insensitively, in lower case.
    return header.lower()


def service_path_of(header: str | None) -> str:
    """Return the Fiware-ServicePath of a request ('/' when absent)."""
    if header is None or header == "":
        return "/"
    if not _SERVICE_PATH.fullmatch(header):
        raise bad_request(f"Fiware-ServicePath: {header[:60]!r} must start with '/'")
    return header


def parse_group(doc: Any) -> Group:
    """Validate one element of ``{"groups": [...]}``."""
    if not isinstance(doc, dict):
        raise bad_request("a group must be a JSON object")
    apikey = _required(doc, "apikey", "group")
    resource = doc.get("resource")
    # MQTT-only groups (as in FIWARE's IoT over MQTT tutorial) give "" as their resource.
    if not isinstance(resource, str) or (resource and not resource.startswith("/")):
        raise bad_request(
            f"group resource: must be a path starting with '/' or \"\" (MQTT), got {resource!r}"
        )
    if _CONTROL.search(resource):
        raise bad_request("group: resource must not contain control characters")
    entity_type = _string(doc, "entity_type", "group") or _string(doc, "type", "group")
    autoprovision = _flag(doc, "autoprovision", "group")
    return Group(
        apikey=apikey,
        resource=resource,
        entity_type=entity_type,
        attributes=_attributes(doc.get("attributes"), f"group {apikey!r}"),
        static_attributes=_statics(doc.get("static_attributes"), f"group {apikey!r}"),
        explicit_attrs=_flag(doc, "explicitAttrs", "group"),
        autoprovision=True if autoprovision is None else autoprovision,
        timestamp=_flag(doc, "timestamp", "group"),
        doc=dict(doc),
        expected_interval=_seconds(doc, "expected_interval", f"group {apikey!r}"),
        active_interval=_seconds(doc, "active_interval", f"group {apikey!r}"),
    )


def parse_device(doc: Any) -> Device:
    """Validate one element of ``{"devices": [...]}``."""
    if not isinstance(doc, dict):
        raise bad_request("a device must be a JSON object")
    device_id = _required(doc, "device_id", "device")
    where = f"device {device_id!r}"
    return Device(
        device_id=device_id,
        apikey=_string(doc, "apikey", where),
        entity_name=_string(doc, "entity_name", where),
        entity_type=_string(doc, "entity_type", where),
        attributes=_attributes(doc.get("attributes"), where),
        static_attributes=_statics(doc.get("static_attributes"), where),
        explicit_attrs=_flag(doc, "explicitAttrs", where),
        timestamp=_flag(doc, "timestamp", where),
        doc=dict(doc),
        expected_interval=_seconds(doc, "expected_interval", where),
        active_interval=_seconds(doc, "active_interval", where),
    )


def entity_type_for(device: Device, group: Group | None) -> str:
    """Return the entity type of a device's entity."""
    return device.entity_type or (group.entity_type if group else None) or DEFAULT_ENTITY_TYPE


def entity_id_for(device: Device, group: Group | None) -> str:
    """Return the NGSI-LD id of a device's entity (``urn:ngsi-ld:<type>:<name>``)."""
    entity_type = entity_type_for(device, group)
    name = device.entity_name or device.device_id
    # The IoT Agent in NGSI-LD mode rewrites ids that are not URNs the same way.
    return name if name.startswith("urn:") else f"urn:ngsi-ld:{entity_type}:{name}"


def mapping_for(device: Device, group: Group | None) -> MeasureMapping:
    """Merge a group's mappings with its device's (the device wins on the same measure key)."""
    attrs: dict[str, AttributeMapping] = {}
    for attr in (group.attributes if group else ()) + device.attributes:
        attrs[attr.key] = attr
    statics: dict[str, StaticAttribute] = {}
    for static in (group.static_attributes if group else ()) + device.static_attributes:
        statics[static.name] = static
    explicit = device.explicit_attrs
    if explicit is None and group is not None:
        explicit = group.explicit_attrs
    timestamp = device.timestamp
    if timestamp is None and group is not None:
        timestamp = group.timestamp
    try:
        return MeasureMapping(
            attributes=tuple(attrs.values()),
            static_attributes=tuple(statics.values()),
            explicit_attrs=bool(explicit),
            timestamp=True if timestamp is None else timestamp,
        )
    except ValueError as exc:
        raise bad_request(f"device {device.device_id!r}: {exc}") from None


def _seconds(doc: Mapping[str, Any], key: str, where: str) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 366 * 86400:
        raise bad_request(f"{where}: {key} must be a whole number of seconds, 1 to 31622400")
    return value


def _required(doc: Mapping[str, Any], key: str, where: str) -> str:
    value = _string(doc, key, where)
    if value is None:
        raise bad_request(f"{where}: {key} is required")
    return value


def _string(doc: Mapping[str, Any], key: str, where: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise bad_request(f"{where}: {key} must be a non-empty string")
    if _CONTROL.search(value):
        raise bad_request(f"{where}: {key} must not contain control characters")
    return value


def _flag(doc: Mapping[str, Any], key: str, where: str) -> bool | None:
    value = doc.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise bad_request(f"{where}: {key} must be true or false")


def _entries(value: Any, what: str, where: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise bad_request(f"{where}: {what} must be an array of objects")
    return value


def _attributes(value: Any, where: str) -> tuple[AttributeMapping, ...]:
    result: list[AttributeMapping] = []
    for i, entry in enumerate(_entries(value, "attributes", where)):
        at = f"{where}, attributes[{i}]"
        for key in _UNSUPPORTED_ATTR_KEYS:
            if key in entry:
                raise bad_request(f"{at}: {key} is not supported by cityos")
        name = _required(entry, "name", at)
        metadata = entry.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise bad_request(f"{at}: metadata must be an object")
        try:
            result.append(
                AttributeMapping(
                    name=name,
                    type=_string(entry, "type", at) or "Text",
                    object_id=_string(entry, "object_id", at),
                    metadata=metadata,
                )
            )
        except ValueError as exc:
            raise bad_request(f"{at}: {exc}") from None
    keys = [a.key for a in result]
    for key in keys:
        if keys.count(key) > 1:
            raise bad_request(f"{where}: measure {key!r} is mapped twice")
    return tuple(result)


def _statics(value: Any, where: str) -> tuple[StaticAttribute, ...]:
    result: list[StaticAttribute] = []
    for i, entry in enumerate(_entries(value, "static_attributes", where)):
        at = f"{where}, static_attributes[{i}]"
        name = _required(entry, "name", at)
        if entry.get("value") is None:
            raise bad_request(f"{at}: value is required")
        metadata = entry.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise bad_request(f"{at}: metadata must be an object")
        try:
            result.append(
                StaticAttribute(
                    name=name,
                    type=_string(entry, "type", at) or "Text",
                    value=entry["value"],
                    metadata=metadata,
                )
            )
        except ValueError as exc:
            raise bad_request(f"{at}: {exc}") from None
    return tuple(result)
