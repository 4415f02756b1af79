"""The datastore's pure parts: field types, value coercion, and search parameters as queries.

Parameters arrive as CKAN clients send them (strings from a query string, typed values from a
JSON body); everything here validates them against a table's fields and raises a CKAN
`ValidationError` naming the parameter, so storage only ever sees typed, checked queries.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any, Final

import orjson

from cityos.catalog.errors import ValidationError

#: CKAN's default and maximum page size (ckan.datastore.search.rows_max)
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 32000
RECORDS_FORMATS: Final = ("objects", "lists", "csv", "tsv")
MAX_FIELD_ID: Final = 63  # PostgreSQL's identifier length, kept for portability

#: declared type -> (reported type, kind); the reported names are PostgreSQL's, as CKAN shows
_TYPES: Final[dict[str, tuple[str, str]]] = {
    "text": ("text", "text"),
    "varchar": ("text", "text"),
    "int": ("int4", "int"),
    "integer": ("int4", "int"),
    "int4": ("int4", "int"),
    "int2": ("int2", "int"),
    "smallint": ("int2", "int"),
    "int8": ("int8", "int"),
    "bigint": ("int8", "int"),
    "float": ("float8", "float"),
    "float8": ("float8", "float"),
    "double precision": ("float8", "float"),
    "float4": ("float4", "float"),
    "real": ("float4", "float"),
    "numeric": ("numeric", "float"),
    "bool": ("bool", "bool"),
    "boolean": ("bool", "bool"),
    "date": ("date", "date"),
    "time": ("time", "time"),
    "timestamp": ("timestamp", "timestamp"),
    "json": ("json", "json"),
}
#: kind -> the column's SQLite type (arrays and json are JSON text)
SQL_TYPES: Final = {
    "text": "TEXT",
    "int": "INTEGER",
    "float": "REAL",
    "bool": "INTEGER",
    "date": "TEXT",
    "time": "TEXT",
    "timestamp": "TEXT",
    "json": "TEXT",
}
_INT_RANGE: Final = (-(2**63), 2**63 - 1)
_TRUE: Final = frozenset({"true", "t", "1", "yes", "y", "on"})
_FALSE: Final = frozenset({"false", "f", "0", "no", "n", "off"})


@dataclass(frozen=True, slots=True)
class Field:
    """One column: its id, CKAN type name, kind (storage family) and whether it is an array."""

    id: str
    type: str
    kind: str
    array: bool = False
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def scalar(self) -> bool:
        """Whether the column holds one comparable value (filters, sort, indexes)."""
        return not self.array and self.kind != "json"

    def describe(self) -> dict[str, Any]:
        """Return the field as CKAN lists it."""
        out: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.info:
            out["info"] = self.info
        return out


ID_FIELD: Final = Field("_id", "int", "int")


@dataclass(frozen=True, slots=True)
class Table:
    """A resource's table as its metadata describes it."""

    resource_id: str
    fields: tuple[Field, ...]
    primary_key: tuple[str, ...] = ()
    indexes: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    def field(self, name: str) -> Field | None:
        """Return the field (or `_id`) called name."""
        if name == "_id":
            return ID_FIELD
        for f in self.fields:
            if f.id == name:
                return f
        return None

    @property
    def text_fields(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.kind == "text" and not f.array)


# -- field declarations ---------------------------------------------------------------------


def parse_type(raw: Any) -> tuple[str, str, bool]:
    """Return (reported type, kind, array) of a declared CKAN type; raise ValueError."""
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("type must be a non-empty string")
    name = " ".join(raw.strip().lower().split())
    array = False
    if name.startswith("_"):
        array, name = True, name[1:]
    elif name.endswith("[]"):
        array, name = True, name[:-2]
    known = _TYPES.get(name)
    if known is None or (array and known[1] == "json"):
        raise ValueError(f'type "{raw}" is not supported (use one of {", ".join(_TYPES)})')
    reported, kind = known
    return ("_" + reported if array else reported), kind, array


def check_field_id(name: Any) -> str:
    """Return a valid column id; raise ValueError otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("field id must be a non-empty string")
    if name.startswith("_"):
        raise ValueError(f'field id "{name}" must not start with "_" (reserved)')
    if '"' in name or "\x00" in name or "%" in name:
        raise ValueError(f'field id "{name}" must not contain ", % or NUL')
    if len(name) > MAX_FIELD_ID:
        raise ValueError(f'field id "{name}" is longer than {MAX_FIELD_ID} characters')
    return name


def parse_fields(raw: Any) -> list[Field]:
    """Validate the `fields` parameter of datastore_create."""
    if isinstance(raw, str):
        raw = _json_param(raw, "fields")
    if not isinstance(raw, list):
        raise ValidationError({"fields": ["must be a list of {id, type} objects"]})
    out: list[Field] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValidationError({"fields": [f"field {i + 1} must be an object with an id"]})
        try:
            fid = check_field_id(item.get("id"))
            reported, kind, array = parse_type(item.get("type", "text"))
        except ValueError as exc:
            raise ValidationError({"fields": [str(exc)]}) from None
        if fid in seen:
            raise ValidationError({"fields": [f'field "{fid}" is declared twice']})
        seen.add(fid)
        info = item.get("info") or {}
        if not isinstance(info, dict):
            raise ValidationError({"fields": [f'info of field "{fid}" must be an object']})
        out.append(Field(fid, reported, kind, array, info))
    return out


def infer_fields(records: Sequence[dict[str, Any]]) -> list[Field]:
    """Guess fields from records when none are declared (first non-null value decides)."""
    order: dict[str, Any] = {}
    for rec in records:
        for key, value in rec.items():
            if key == "_id":
                continue
            if order.get(key) is None:
                order[key] = value
    out: list[Field] = []
    for key, value in order.items():
        try:
            check_field_id(key)
        except ValueError as exc:
            raise ValidationError({"records": [str(exc)]}) from None
        if isinstance(value, bool):
            out.append(Field(key, "bool", "bool"))
        elif isinstance(value, int):
            out.append(Field(key, "int8", "int"))
        elif isinstance(value, float):
            out.append(Field(key, "float8", "float"))
        elif isinstance(value, dict | list):
            out.append(Field(key, "json", "json"))
        else:
            out.append(Field(key, "text", "text"))
    return out


def name_list(raw: Any, param: str) -> list[str]:
    """Return a list of names from a list, a JSON list text or a comma-separated string."""
    if raw is None:
        return []
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            raw = _json_param(text, param)
        else:
            return [p.strip().strip('"') for p in text.split(",") if p.strip()]
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ValidationError({param: ["must be a list of field names or a comma string"]})
    return [x.strip() for x in raw]


# -- values -----------------------------------------------------------------------------------


def _scalar(kind: str, value: Any) -> Any:
    if kind == "text":
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return str(value)
        raise ValueError("expected text")
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return None
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError("expected an integer, got a boolean")
        if (isinstance(value, float) and value.is_integer()) or (
            isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value)
        ):
            value = int(value)
        if not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
            raise ValueError(f"integer {value} is out of range")
        return value
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError("expected a number, got a boolean")
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        if not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        return number
    if kind == "bool":
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int) and value in (0, 1):
            return value
        if isinstance(value, str) and value.lower() in _TRUE:
            return 1
        if isinstance(value, str) and value.lower() in _FALSE:
            return 0
        raise ValueError(f"expected a boolean, got {value!r}")
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO 8601 {kind} string, got {value!r}")
    try:
        if kind == "date":
            return date.fromisoformat(value).isoformat()
        if kind == "time":
            return time.fromisoformat(value).isoformat()
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"expected an ISO 8601 {kind}, got {value!r}") from None
    if stamp.tzinfo is not None:  # stored without a zone, in UTC, as CKAN's timestamp
        stamp = stamp.astimezone(UTC).replace(tzinfo=None)
    return stamp.isoformat()


def coerce(f: Field, value: Any) -> Any:
    """Return the value as stored in the column of field f; raise ValueError when it does
    not fit."""
    if value is None:
        return None
    if f.kind == "json":
        try:
            return orjson.dumps(value).decode()
        except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits
            raise ValueError(f"not storable as JSON: {exc}") from None
    if f.array:
        if isinstance(value, str) and value.strip().startswith("["):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise ValueError("expected a list") from None
        if not isinstance(value, list):
            value = [value]
        return orjson.dumps([_scalar(f.kind, v) for v in value]).decode()
    return _scalar(f.kind, value)


def output_converter(f: Field) -> Callable[[Any], Any] | None:
    """Return how a stored value becomes the JSON value of a record (None: as is)."""
    if f.kind == "bool" and not f.array:
        return _to_bool
    if f.array and f.kind == "bool":
        return _to_bool_list
    if f.array or f.kind == "json":
        return _to_json
    return None


def _to_bool(v: Any) -> Any:
    return None if v is None else bool(v)


def _to_json(v: Any) -> Any:
    return None if v is None else orjson.loads(v)


def _to_bool_list(v: Any) -> Any:
    return None if v is None else [None if x is None else bool(x) for x in orjson.loads(v)]


def coerce_record(
    fields: dict[str, Field], record: Any, row: int, *, keep_id: bool = False
) -> dict[str, Any]:
    """Return a record's stored values by field id; raise ValidationError naming the row."""
    if not isinstance(record, dict):
        raise ValidationError({"records": [f"row {row}: must be an object"]})
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key == "_id":
            if keep_id:
                try:
                    out["_id"] = _scalar("int", value)
                except ValueError as exc:
                    raise ValidationError({"records": [f'row {row}: field "_id": {exc}']}) from None
            continue
        f = fields.get(key)
        if f is None:
            known = ", ".join(fields) or "none"
            msg = f'row {row}: field "{key}" is not in the table (fields: {known})'
            raise ValidationError({"records": [msg]})
        try:
            out[key] = coerce(f, value)
        except ValueError as exc:
            raise ValidationError({"records": [f'row {row}: field "{key}": {exc}']}) from None
    return out


# -- search parameters -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Condition:
    """field IN values (op "in"; None among values means IS NULL) or field <op> value."""

    field: Field
    op: str
    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class TextMatch:
    """A substring to find in one field, or in every text field when field is None."""

    term: str
    field: Field | None = None


@dataclass(frozen=True, slots=True)
class SearchQuery:
    columns: tuple[Field, ...]
    conditions: tuple[Condition, ...] = ()
    matches: tuple[TextMatch, ...] = ()
    sort: tuple[tuple[Field, bool], ...] = ()  # (field, descending)
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    distinct: bool = False
    include_total: bool = True
    records_format: str = "objects"


_RANGE_OPS: Final = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">=", "eq": "="}


def _json_param(raw: str, param: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValidationError({param: ["is not valid JSON"]}) from None


def parse_bool(raw: Any, param: str, default: bool) -> bool:
    """Return a boolean parameter given as a bool or as CKAN's strings."""
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _TRUE:
        return True
    if isinstance(raw, str) and raw.strip().lower() in _FALSE:
        return False
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    raise ValidationError({param: [f"must be true or false, got {raw!r}"]})


def parse_int(raw: Any, param: str, default: int, maximum: int | None = None) -> int:
    """Return a non-negative integer parameter (capped at maximum, as CKAN does)."""
    if raw is None or raw == "":
        return default
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and re.fullmatch(r"\s*\d{1,18}\s*", raw):
        value = int(raw)
    if value is None or value < 0:
        raise ValidationError({param: [f"must be a natural number, got {raw!r}"]})
    return value if maximum is None else min(value, maximum)


def parse_filters(table: Table, raw: Any) -> tuple[Condition, ...]:
    """Return the conditions of CKAN's `filters`: field -> value, list of values or ranges."""
    if raw is None or raw == "":
        return ()
    if isinstance(raw, str):
        raw = _json_param(raw, "filters")
    if not isinstance(raw, dict):
        raise ValidationError({"filters": ["must be a JSON object of field -> value(s)"]})
    out: list[Condition] = []
    for name, value in raw.items():
        f = table.field(name)
        if f is None:
            raise ValidationError({"filters": [f'field "{name}" not in table']})
        try:
            if isinstance(value, dict):
                for op, v in value.items():
                    sql_op = _RANGE_OPS.get(op)
                    if sql_op is None or v is None or not f.scalar:
                        raise ValueError(f"unsupported range {op!r}")
                    out.append(Condition(f, sql_op, (_filter_value(f, v),)))
                continue
            values = value if isinstance(value, list) else [value]
            if not values:
                raise ValueError("an empty list matches nothing")
            out.append(Condition(f, "in", tuple(_filter_value(f, v) for v in values)))
        except ValueError as exc:
            raise ValidationError({"filters": [f'field "{name}": {exc}']}) from None
    return tuple(out)


def _filter_value(f: Field, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, dict | list):
        if f.scalar:
            raise ValueError("expected a value")
        try:
            return orjson.dumps(value).decode()
        except orjson.JSONEncodeError as exc:
            raise ValueError(str(exc)) from None
    if not f.scalar:
        if isinstance(value, str):
            return value
        raise ValueError("filter a json or array field with its JSON text")
    if f.kind == "text" and not isinstance(value, str):
        return str(value)
    return _scalar(f.kind, value)


def parse_q(table: Table, raw: Any) -> tuple[TextMatch, ...]:
    """Return the text matches of `q`: words (all must match) or field -> words."""
    if raw is None or raw == "":
        return ()
    if isinstance(raw, str) and raw.strip().startswith("{"):
        raw = _json_param(raw, "q")
    if isinstance(raw, str):
        return tuple(TextMatch(word) for word in raw.split())
    if not isinstance(raw, dict):
        raise ValidationError({"q": ["must be a string or an object of field -> text"]})
    out: list[TextMatch] = []
    for name, text in raw.items():
        f = table.field(name)
        if f is None:
            raise ValidationError({"q": [f'field "{name}" not in table']})
        if not isinstance(text, str):
            raise ValidationError({"q": [f'field "{name}": the text must be a string']})
        out.extend(TextMatch(word, f) for word in text.split())
    return tuple(out)


def _full_text(table: Table, raw: Any) -> tuple[TextMatch, ...]:
    """Return CKAN's `full_text`: words searched in every text field, like a string `q`."""
    if raw is None or raw == "":
        return ()
    if not isinstance(raw, str):
        raise ValidationError({"full_text": ["must be a string"]})
    return tuple(TextMatch(word) for word in raw.split())


_SORT_DIR: Final = re.compile(r"^(.*?)\s+(asc|desc)$", re.IGNORECASE)


def parse_sort(table: Table, raw: Any) -> tuple[tuple[Field, bool], ...]:
    """Return `sort` ("a asc, b desc" or a list of such parts) as (field, descending)."""
    if raw is None or raw == "":
        return ()
    if isinstance(raw, str):
        parts = raw.split(",")
    elif isinstance(raw, list) and all(isinstance(p, str) for p in raw):
        parts = [q for p in raw for q in p.split(",")]
    else:
        raise ValidationError({"sort": ['must be a string like "name asc, year desc"']})
    out: list[tuple[Field, bool]] = []
    for part in parts:
        text = part.strip()
        if not text:
            continue
        desc = False
        m = _SORT_DIR.match(text)
        if m:
            text, desc = m.group(1).strip(), m.group(2).lower() == "desc"
        name = text[1:-1] if len(text) > 1 and text[0] == text[-1] == '"' else text
        f = table.field(name)
        if f is None:
            raise ValidationError({"sort": [f'field "{name}" not in table']})
        out.append((f, desc))
    return tuple(out)


def parse_search(table: Table, params: dict[str, Any]) -> SearchQuery:
    """Validate datastore_search's parameters against a table."""
    names = name_list(params.get("fields"), "fields")
    if names:
        columns: list[Field] = []
        for name in names:
            f = table.field(name)
            if f is None:
                raise ValidationError({"fields": [f'field "{name}" not in table']})
            columns.append(f)
    else:
        columns = [ID_FIELD, *table.fields]
    fmt = params.get("records_format") or "objects"
    if fmt not in RECORDS_FORMATS:
        raise ValidationError({"records_format": [f"must be one of {', '.join(RECORDS_FORMATS)}"]})
    return SearchQuery(
        columns=tuple(columns),
        conditions=parse_filters(table, params.get("filters")),
        matches=parse_q(table, params.get("q")) + _full_text(table, params.get("full_text")),
        sort=parse_sort(table, params.get("sort")),
        limit=parse_int(params.get("limit"), "limit", DEFAULT_LIMIT, MAX_LIMIT),
        offset=parse_int(params.get("offset"), "offset", 0),
        distinct=parse_bool(params.get("distinct"), "distinct", False),
        include_total=parse_bool(params.get("include_total"), "include_total", True),
        records_format=fmt,
    )


# -- records formats --------------------------------------------------------------------------


def render_records(
    columns: Sequence[Field], rows: Iterable[Sequence[Any]], fmt: str
) -> list[Any] | str:
    """Return rows as CKAN's records: objects, lists, or CSV/TSV text (no header)."""
    convs = [(i, c) for i, f in enumerate(columns) if (c := output_converter(f)) is not None]
    if fmt in ("csv", "tsv"):
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
        for row in rows:
            writer.writerow(_csv_cell(f, v) for f, v in zip(columns, row, strict=True))
        return buf.getvalue()
    if convs:
        fixed: list[Sequence[Any]] = []
        for row in rows:
            vals = list(row)
            for i, conv in convs:
                vals[i] = conv(vals[i])
            fixed.append(vals)
        rows = fixed
    if fmt == "lists":
        return [list(row) for row in rows]
    names = [f.id for f in columns]
    return [dict(zip(names, row, strict=True)) for row in rows]


def _csv_cell(f: Field, value: Any) -> Any:
    if value is None:
        return ""
    if f.kind == "bool" and not f.array:
        return "true" if value else "false"
    return value
