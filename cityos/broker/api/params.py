"""Query-string parameters of the NGSI-LD API, parsed into typed values."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from starlette.datastructures import QueryParams

from cityos.broker import geo, qlang, typesel
from cityos.broker.errors import BadRequestData, TooManyResults
from cityos.broker.model import LOCATION
from cityos.broker.normalize import check_name, is_uri
from cityos.broker.render import RenderOptions
from cityos.jsonld.context import ActiveContext
from cityos.storage.base import EntityQuery

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
FORMATS = {
    "normalized": "normalized",
    "keyValues": "keyValues",
    "simplified": "keyValues",
    "concise": "concise",
}
RENDER_PARAMS = frozenset(
    {
        "attrs",
        "pick",
        "omit",
        "options",
        "format",
        "lang",
        "sysAttrs",
        "geometryProperty",
        "local",
        "datasetId",
        "contextSourceInfo",
        "join",
        "joinLevel",
        "containedBy",
        "csf",
        "entityMap",
        "via",
    }
)
#: the parameters that select entities (GET /entities filters, also used by purge)
FILTER_PARAMS = frozenset(
    {"id", "idPattern", "type", "q", "scopeQ", "georel", "geometry", "coordinates", "geoproperty"}
)
QUERY_PARAMS = RENDER_PARAMS | FILTER_PARAMS | frozenset({"limit", "offset", "count"})


def check_known(params: QueryParams, allowed: Iterable[str]) -> None:
    """Refuse unknown or repeated query parameters."""
    allowed = frozenset(allowed)
    for key in params:
        if key not in allowed:
            raise BadRequestData(f"{key}: unknown query parameter")
        if len(params.getlist(key)) > 1:
            raise BadRequestData(f"{key}: given more than once")


def split_list(raw: str, field: str) -> list[str]:
    items = [x.strip() for x in raw.split(",")]
    if not raw or any(not x for x in items):
        raise BadRequestData(f"{field}: empty item in the comma-separated list {raw!r}")
    return items


def options(params: QueryParams, allowed: frozenset[str]) -> set[str]:
    raw = params.get("options")
    if raw is None:
        return set()
    opts = set(split_list(raw, "options"))
    unknown = opts - allowed
    if unknown:
        raise BadRequestData(
            f"options: unknown value(s) {', '.join(sorted(unknown))} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )
    return opts


def flag(params: Mapping[str, Any], name: str) -> bool:
    raw = params.get(name)
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    if raw not in ("true", "false"):
        raise BadRequestData(f"{name}: must be true or false, got {raw!r}")
    return bool(raw == "true")


def integer(params: Mapping[str, Any], name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequestData(f"{name}: must be a non-negative integer, got {raw!r}") from None
    if value < 0:
        raise BadRequestData(f"{name}: must be a non-negative integer, got {raw!r}")
    return value


def text(params: Mapping[str, Any], name: str) -> str | None:
    raw = params.get(name)
    if raw is None or isinstance(raw, str):
        return raw
    raise BadRequestData(f"{name}: must be a string")


def attr_names(raw: str | None, field: str, ctx: ActiveContext) -> frozenset[str] | None:
    """Expand a comma-separated list of attribute names (id and type stay as they are)."""
    if raw is None:
        return None
    out = set()
    for name in split_list(raw, field):
        if name in ("id", "type"):
            out.add(name)
            continue
        check_name(name, field)
        out.add(ctx.expand_term(name))
    return frozenset(out)


def render_options(params: QueryParams, ctx: ActiveContext, *, query: bool) -> RenderOptions:
    """Return how the entities of a response are to be rendered."""
    opts = options(
        params,
        frozenset(
            {"keyValues", "simplified", "concise", "normalized", "sysAttrs", "count"}
            if query
            else {"keyValues", "simplified", "concise", "normalized", "sysAttrs"}
        ),
    )
    fmt = "normalized"
    chosen = [o for o in opts if o in FORMATS]
    if params.get("format") is not None:
        f = params["format"]
        if f not in FORMATS:
            raise BadRequestData(f"format: {f!r} is not one of normalized, keyValues, concise")
        chosen.append(f)
    if len({FORMATS[c] for c in chosen}) > 1:
        raise BadRequestData(f"options/format: conflicting formats {', '.join(sorted(chosen))}")
    if chosen:
        fmt = FORMATS[chosen[0]]
    attrs = attr_names(params.get("attrs"), "attrs", ctx)
    pick = attr_names(params.get("pick"), "pick", ctx)
    omit = attr_names(params.get("omit"), "omit", ctx)
    if attrs is not None and pick is not None:
        raise BadRequestData("pick: cannot be combined with attrs")
    if attrs is not None:
        pick = attrs | {"id", "type"}
    lang = params.get("lang")
    if lang is not None and not lang.strip():
        raise BadRequestData("lang: must not be empty")
    dataset_ids = None
    raw_ds = params.get("datasetId")
    if raw_ds is not None:
        dataset_ids = frozenset(split_list(raw_ds, "datasetId"))
        for ds in dataset_ids:
            if ds != "@none" and not is_uri(ds):
                raise BadRequestData(f"datasetId: {ds!r} is not a URI (or @none)")
    return RenderOptions(
        format=fmt,  # type: ignore[arg-type]
        sys_attrs="sysAttrs" in opts or flag(params, "sysAttrs"),
        lang=lang,
        pick=pick,
        omit=omit,
        dataset_ids=dataset_ids,
    )


def geometry_property(params: QueryParams, ctx: ActiveContext) -> str:
    raw = params.get("geometryProperty")
    if raw is None:
        return LOCATION
    check_name(raw, "geometryProperty")
    return ctx.expand_term(raw)


def entity_query(params: Mapping[str, Any], ctx: ActiveContext) -> EntityQuery:
    """Build the storage query of GET /entities (or the same members of a POST Query)."""
    ids: tuple[str, ...] = ()
    raw_ids = text(params, "id")
    if raw_ids is not None:
        ids = tuple(split_list(raw_ids, "id"))
        for i in ids:
            if not is_uri(i):
                raise BadRequestData(f"id: {i!r} is not a valid URI")
    id_pattern = text(params, "idPattern")
    if id_pattern is not None:
        qlang.check_regex(id_pattern, "idPattern")
    raw_type, raw_q, raw_scope = (text(params, k) for k in ("type", "q", "scopeQ"))
    geo_q = None
    geoproperty = None
    if any(params.get(k) is not None for k in ("georel", "geometry", "coordinates")):
        gp = text(params, "geoproperty") or "location"
        check_name(gp, "geoproperty")
        geo_q = geo.parse_geoquery(
            text(params, "georel"), text(params, "geometry"), params.get("coordinates"), gp
        )
        geoproperty = ctx.expand_term(gp)
    elif params.get("geoproperty") is not None:
        raise BadRequestData("geoproperty: given without georel, geometry and coordinates")
    attrs = attr_names(text(params, "attrs"), "attrs", ctx) or frozenset()
    limit = integer(params, "limit", DEFAULT_LIMIT)
    if limit > MAX_LIMIT:
        raise TooManyResults(f"limit: {limit} exceeds the maximum of {MAX_LIMIT}")
    return EntityQuery(
        ids=ids,
        id_pattern=id_pattern,
        types=typesel.parse_type_selection(raw_type) if raw_type is not None else None,
        q=qlang.parse_q(raw_q) if raw_q is not None else None,
        scope_q=qlang.parse_scope_q(raw_scope) if raw_scope is not None else None,
        geo=geo_q,
        geoproperty=geoproperty,
        attrs=frozenset(a for a in attrs if a not in ("id", "type")),
        expand=ctx.expand_term,
        limit=limit,
        offset=integer(params, "offset", 0),
        count=flag(params, "count"),
    )
