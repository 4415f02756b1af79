"""CKAN actions: the datastore (datastore_create, _upsert, _search, _search_sql, _info, _delete).

Rows live in storage/sqlite_datastore.py; parameters are validated by catalog/datastore.py.
Reads are public for resources of public datasets (checked through resource_show and
package_show); writes need a user, and creating a table marks the resource
`datastore_active` through resource_patch.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlencode

import orjson

from cityos.catalog import datastore as ds
from cityos.catalog import registry, sqlcheck
from cityos.catalog.dump_api import dump_url
from cityos.catalog.errors import CkanError, NotFound, ValidationError
from cityos.catalog.registry import Context, Params, action
from cityos.storage.sqlite_datastore import CreateSpec

METHODS = ("upsert", "insert", "update")


def _resource_id(params: Params) -> str:
    rid = params.get("resource_id", params.get("id"))
    if not isinstance(rid, str) or not rid.strip():
        raise ValidationError({"resource_id": ["Missing value"]})
    return rid.strip()


def _json(params: Params, key: str) -> Any:
    """Return a parameter that may arrive as JSON text (GET, forms) or as a value."""
    value = params.get(key)
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            raise ValidationError({key: ["is not valid JSON"]}) from None
    return value


def _records(params: Params) -> list[Any]:
    records = _json(params, "records")
    if records is None:
        return []
    if not isinstance(records, list):
        raise ValidationError({"records": ["must be a list of objects"]})
    return records


async def _table(ctx: Context, name: str) -> ds.Table:
    table = await ctx.catalog.datastore.table(name)
    if table is None:
        raise NotFound(f'Resource "{name}" was not found.')
    return table


async def check_readable(ctx: Context, rid: str) -> None:
    """Raise unless the caller may read the resource (its dataset is public, or a user)."""
    if ctx.system:
        return
    # resource_show refuses resources of private (or draft, deleted) datasets to anonymous
    # callers, and NotFound for a table whose resource is gone
    await registry.call(ctx, "resource_show", {"id": rid})


@action("datastore_create", write=True)
async def datastore_create(ctx: Context, params: Params) -> dict[str, Any]:
    """Create a resource's table (or add fields and records to it)."""
    resource = _json(params, "resource")
    if resource is not None:
        if not isinstance(resource, dict) or not resource.get("package_id"):
            raise ValidationError({"resource": ["must be an object with a package_id"]})
        created = await registry.call(ctx, "resource_create", dict(resource))
        rid = str(created["id"])
        if not created.get("url"):  # no file of its own: downloads come from the table
            url = dump_url(ctx.base_url or ctx.catalog.base_url, rid)
            await registry.call(ctx, "resource_patch", {"id": rid, "url": url})
    else:
        rid = _resource_id(params)
        await registry.call(ctx, "resource_show", {"id": rid})
    raw_fields = params.get("fields")
    fields = ds.parse_fields(raw_fields) if raw_fields not in (None, "", []) else None
    pk = params.get("primary_key")
    indexes = params.get("indexes")
    spec = CreateSpec(
        resource_id=rid,
        fields=tuple(fields) if fields is not None else None,
        primary_key=tuple(ds.name_list(pk, "primary_key")) if pk is not None else None,
        indexes=tuple(ds.name_list(indexes, "indexes")) if indexes is not None else None,
        aliases=tuple(ds.name_list(params.get("aliases"), "aliases")),
    )
    try:
        table = await ctx.catalog.datastore.create(spec, _records(params))
    except CkanError:
        if resource is not None:  # all or nothing: the resource made for the table goes too
            with contextlib.suppress(CkanError):
                await registry.call(ctx, "resource_delete", {"id": rid})
        raise
    await registry.call(ctx, "resource_patch", {"id": rid, "datastore_active": True})
    return {
        "resource_id": rid,
        "fields": [f.describe() for f in table.fields],
        "primary_key": list(table.primary_key),
        "indexes": list(table.indexes),
        "aliases": list(table.aliases),
        "method": "insert",
    }


@action("datastore_upsert", write=True)
async def datastore_upsert(ctx: Context, params: Params) -> dict[str, Any]:
    """Insert, update or upsert records (upsert and update match on the primary key)."""
    table = await _table(ctx, _resource_id(params))
    method = params.get("method") or "upsert"
    if method not in METHODS:
        raise ValidationError({"method": [f"must be one of {', '.join(METHODS)}"]})
    records = _records(params)
    await ctx.catalog.datastore.upsert(table.resource_id, records, method)
    out: dict[str, Any] = {"resource_id": table.resource_id, "method": method}
    if ds.parse_bool(params.get("include_records"), "include_records", False):
        out["records"] = records
    return out


@action("datastore_delete", write=True)
async def datastore_delete(ctx: Context, params: Params) -> dict[str, Any]:
    """Delete a resource's table, or only the rows matching `filters`."""
    table = await _table(ctx, _resource_id(params))
    raw = params.get("filters")
    out: dict[str, Any] = {"resource_id": table.resource_id}
    if raw in (None, "", {}):
        await ctx.catalog.datastore.delete(table.resource_id, None)
        with contextlib.suppress(NotFound):  # the resource itself is gone: nothing to mark
            await registry.call(
                ctx, "resource_patch", {"id": table.resource_id, "datastore_active": False}
            )
        return out
    conditions = ds.parse_filters(table, raw)
    await ctx.catalog.datastore.delete(table.resource_id, conditions)
    out["filters"] = _json(params, "filters")
    return out


def _links(rid: str, params: Params, query: ds.SearchQuery) -> dict[str, str]:
    kept: list[tuple[str, str]] = []
    for key, value in params.items():
        if key in ("offset", "resource_id", "id"):
            continue
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        kept.append((key, text))
    base = "/api/3/action/datastore_search?"
    start = urlencode([("resource_id", rid), *kept])
    nxt = urlencode([("offset", str(query.offset + query.limit)), ("resource_id", rid), *kept])
    return {"start": base + start, "next": base + nxt}


@action("datastore_search")
async def datastore_search(ctx: Context, params: Params) -> dict[str, Any]:
    """Return a page of a resource's records, filtered, searched and sorted."""
    table = await _table(ctx, _resource_id(params))
    query = ds.parse_search(table, params)
    await check_readable(ctx, table.resource_id)
    found = await ctx.catalog.datastore.search(table, query)
    out: dict[str, Any] = {
        "resource_id": table.resource_id,
        "fields": [f.describe() for f in query.columns],
        "records": found.records,
        "_links": _links(table.resource_id, params, query),
        "limit": query.limit,
        "include_total": query.include_total,
        "records_format": query.records_format,
        "total_was_estimated": False,
        "total_estimation_threshold": None,
    }
    if found.total is not None:
        out["total"] = found.total
    for key in ("offset", "q", "full_text", "sort", "distinct"):
        if params.get(key) not in (None, ""):
            out[key] = _json(params, key) if key == "q" else params[key]
    if params.get("filters") not in (None, ""):
        out["filters"] = _json(params, "filters")
    return out


def _sql_type(values: list[Any]) -> str:
    for v in values:
        if isinstance(v, bool):
            return "bool"
        if isinstance(v, int):
            return "int8"
        if isinstance(v, float):
            return "float8"
        if isinstance(v, str):
            return "text"
        if isinstance(v, bytes):
            return "bytea"
    return "text"


@action("datastore_search_sql")
async def datastore_search_sql(ctx: Context, params: Params) -> dict[str, Any]:
    """Run one read-only SELECT over datastore tables (named by resource id, quoted)."""
    sql = sqlcheck.check_text(params.get("sql"))
    store = ctx.catalog.datastore
    tables = await store.tables_read_by(sql)
    for rid in sorted(tables):
        await check_readable(ctx, rid)
    found = await store.run_sql(sql, tables)
    fields = [
        {"id": name, "type": _sql_type([row[i] for row in found.rows if row[i] is not None])}
        for i, name in enumerate(found.columns)
    ]
    records = [
        {
            name: (v.hex() if isinstance(v, bytes) else v)
            for name, v in zip(found.columns, row, strict=True)
        }
        for row in found.rows
    ]
    out: dict[str, Any] = {"sql": sql, "records": records, "fields": fields}
    if found.truncated:
        out["records_truncated"] = True
    return out


@action("datastore_info")
async def datastore_info(ctx: Context, params: Params) -> dict[str, Any]:
    """Describe a resource's table: its row count, aliases, keys and fields."""
    table = await _table(ctx, _resource_id(params))
    await check_readable(ctx, table.resource_id)
    count = await ctx.catalog.datastore.count(table.resource_id)
    fields = [
        {
            **f.describe(),
            "schema": {
                "native_type": f.type,
                "is_index": f.id in table.indexes or f.id in table.primary_key,
                "uniquekey": list(table.primary_key) == [f.id],
                "notnull": False,
            },
        }
        for f in table.fields
    ]
    return {
        "meta": {
            "id": table.resource_id,
            "count": count,
            "aliases": list(table.aliases),
            "primary_key": list(table.primary_key),
            "indexes": list(table.indexes),
            "table_type": "BASE TABLE",
        },
        "fields": fields,
    }
