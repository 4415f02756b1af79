"""What the datastore stores, engine-neutral: table metadata and the checks of a write.

Both datastore engines (sqlite_datastore, pg_datastore) import these, so that they accept
and refuse the same table definitions and records with the same messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from cityos.catalog.datastore import Field, Table, infer_fields, parse_type
from cityos.catalog.errors import ValidationError


@dataclass(frozen=True, slots=True)
class CreateSpec:
    resource_id: str
    fields: tuple[Field, ...] | None  # None: infer from the records
    primary_key: tuple[str, ...] | None
    indexes: tuple[str, ...] | None
    aliases: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CreatePlan:
    """What a create does to a table: its new definition and the fields it adds."""

    table: Table  # without aliases
    added: tuple[Field, ...]
    fresh: bool  # the table does not exist yet


def parse_fields_json(text: str) -> tuple[Field, ...]:
    """Return the fields stored as JSON by fields_json."""
    parsed = []
    for f in orjson.loads(text):
        reported, kind, array = parse_type(f["type"])
        parsed.append(Field(f["id"], reported, kind, array, f.get("info") or {}))
    return tuple(parsed)


def table_from_meta(rid: str, fields: str, pk: str, indexes: str, aliases: Sequence[str]) -> Table:
    """Return a Table from its stored metadata columns and aliases."""
    return Table(
        rid,
        parse_fields_json(fields),
        tuple(orjson.loads(pk)),
        tuple(orjson.loads(indexes)),
        tuple(sorted(aliases)),
    )


def fields_json(fields: Sequence[Field]) -> str:
    """Return fields as the JSON text the metadata stores."""
    return orjson.dumps(
        [{"id": f.id, "type": f.type, **({"info": f.info} if f.info else {})} for f in fields]
    ).decode()


def plan_create(old: Table | None, spec: CreateSpec, records: Sequence[Any]) -> CreatePlan:
    """Return what creating (or extending) a table does; raise ValidationError when the
    definition is refused (aliases are checked by the engine, against the database)."""
    rid = spec.resource_id
    if old is not None and old.resource_id != rid:
        raise ValidationError({"resource_id": [f'"{rid}" is an alias of another resource']})
    declared = list(spec.fields) if spec.fields is not None else infer_fields(records)
    fields: list[Field] = list(old.fields) if old else []
    known = {f.id: f for f in fields}
    added: list[Field] = []
    for f in declared:
        prev = known.get(f.id)
        if prev is None:
            added.append(f)
        elif prev.type != f.type:
            raise ValidationError(
                {"fields": [f'field "{f.id}" is {prev.type}; its type cannot change to {f.type}']}
            )
    fields += added
    names = {f.id for f in fields}
    pk = (
        tuple(spec.primary_key)
        if spec.primary_key is not None
        else (old.primary_key if old else ())
    )
    for k in pk:
        key_field = next((x for x in fields if x.id == k), None)
        if key_field is None or not key_field.scalar:
            raise ValidationError({"primary_key": [f'"{k}" is not a field of the table']})
    if spec.indexes is not None:
        indexes = tuple(spec.indexes)
    elif old is not None:
        indexes = old.indexes + tuple(f.id for f in added if f.scalar)
    else:
        indexes = tuple(f.id for f in fields if f.scalar)
    for k in indexes:
        if k not in names:
            raise ValidationError({"indexes": [f'"{k}" is not a field of the table']})
    if not fields and not records:
        raise ValidationError({"fields": ["a new table needs fields or records"]})
    return CreatePlan(Table(rid, tuple(fields), pk, indexes, ()), tuple(added), old is None)


def alias_taken(alias: str, rid: str, owner: str | None) -> ValidationError | None:
    """Return the error when `alias` (owned by resource `owner`, if any) cannot name rid."""
    if (owner is not None and owner != rid) or alias == rid:
        return ValidationError({"aliases": [f'alias "{alias}" is already in use']})
    return None


def check_write_method(table: Table, records: Sequence[Any], method: str) -> None:
    """Raise when an update or upsert of a table without primary key lacks _id."""
    if (
        method != "insert"
        and not table.primary_key
        and any(isinstance(r, dict) and "_id" not in r for r in records)
    ):
        msg = f'the table has no primary key: "{method}" needs _id in every record'
        raise ValidationError({"method": [msg]})


def update_key(
    values: dict[str, Any], pk: tuple[str, ...], method: str, row: int
) -> tuple[str, ...] | None:
    """Return the key columns a record is updated by (None: a plain insert); raise when the
    record lacks one of them."""
    if method == "upsert" and pk and any(values.get(k) is None for k in pk):
        absent = next(k for k in pk if values.get(k) is None)
        raise ValidationError({"records": [f'row {row}: the key field "{absent}" is missing']})
    if not (method == "update" or (method == "upsert" and not pk)):
        return None
    key = tuple(pk) if pk else ("_id",)
    missing = [k for k in key if values.get(k) is None]
    if missing:
        raise ValidationError({"records": [f'row {row}: the key field "{missing[0]}" is missing']})
    return key


def key_not_found(values: dict[str, Any], key: tuple[str, ...], row: int) -> ValidationError:
    """Return the error of an update whose key matches no row."""
    shown = ", ".join(f"{k}={values[k]!r}" for k in key)
    return ValidationError({"records": [f"row {row}: key {shown} not found"]})
