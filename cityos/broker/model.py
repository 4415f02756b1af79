"""The broker's internal entity representation.

Entities are stored *expanded*: every attribute name and entity type is a full IRI, so that
two requests using different @contexts address the same data. The stored document is a plain
JSON-serialisable dict (it is written with orjson as-is):

    {
      "id": "urn:ngsi-ld:WaterLevelObserved:akiyama-1",
      "type": ["https://smartdatamodels.org/dataModel.Environment/WaterLevelObserved"],
      "scope": ["/Sano/Akiyama"],                # optional
      "createdAt": "2026-11-25T10:00:00.000000Z",
      "modifiedAt": "2026-11-25T10:00:00.000000Z",
      "attrs": {
        "<attribute IRI>": [<instance>, ...]     # one instance per datasetId (None = default)
      }
    }

An *instance* is a dict holding the NGSI-LD members with their short (core) names:
``type`` (one of ATTRIBUTE_TYPES), the value member for that type (VALUE_MEMBER), and any of
``datasetId`` (IRI), ``observedAt``, ``unitCode``, ``objectType`` (expanded IRI),
``createdAt``, ``modifiedAt``, ``deletedAt``. Any key that is not a core member is a
sub-attribute IRI whose value is a single instance dict of the same form.

Relationship objects, datasetIds and entity ids are IRIs and are never expanded.
``vocab`` values and ``objectType`` are expanded like terms. Keys inside JSON values of a
Property are kept verbatim (not expanded), as Orion-LD does.
"""

from __future__ import annotations

from typing import Any, Final

NGSI_LD: Final = "https://uri.etsi.org/ngsi-ld/"
DEFAULT_VOCAB: Final = "https://uri.etsi.org/ngsi-ld/default-context/"
LOCATION: Final = NGSI_LD + "location"
OBSERVATION_SPACE: Final = NGSI_LD + "observationSpace"
OPERATION_SPACE: Final = NGSI_LD + "operationSpace"

#: attribute type -> the member that carries its value
VALUE_MEMBER: Final[dict[str, str]] = {
    "Property": "value",
    "GeoProperty": "value",
    "Relationship": "object",
    "LanguageProperty": "languageMap",
    "JsonProperty": "json",
    "VocabProperty": "vocab",
    "ListProperty": "valueList",
    "ListRelationship": "objectList",
}
ATTRIBUTE_TYPES: Final = frozenset(VALUE_MEMBER)

#: members of an attribute instance that are not sub-attributes
CORE_MEMBERS: Final = frozenset(
    {
        "type",
        "value",
        "object",
        "languageMap",
        "json",
        "vocab",
        "valueList",
        "objectList",
        "datasetId",
        "observedAt",
        "unitCode",
        "objectType",
        "createdAt",
        "modifiedAt",
        "deletedAt",
        "lang",
        "instanceId",
        "previousValue",
        "previousObject",
        "previousLanguageMap",
        "previousJson",
        "previousVocab",
        "previousValueList",
        "previousObjectList",
        "expiresAt",
    }
)

#: members of an entity that are not attributes
ENTITY_MEMBERS: Final = frozenset(
    {"id", "type", "scope", "createdAt", "modifiedAt", "deletedAt", "@context"}
)

Doc = dict[str, Any]
Instance = dict[str, Any]


def instances(doc: Doc, attr: str) -> list[Instance]:
    """Return the instances of an expanded attribute (empty when absent)."""
    result: list[Instance] = doc.get("attrs", {}).get(attr, [])
    return result


def default_instance(doc: Doc | None, attr: str) -> Instance | None:
    """Return the instance without datasetId of an expanded attribute, if any."""
    if doc is None:
        return None
    for inst in doc.get("attrs", {}).get(attr, ()):
        if inst.get("datasetId") is None:
            found: Instance = inst
            return found
    return None


def sub_attributes(inst: Instance) -> dict[str, Instance]:
    """Return the sub-attributes of an instance, keyed by expanded IRI."""
    return {k: v for k, v in inst.items() if k not in CORE_MEMBERS}
