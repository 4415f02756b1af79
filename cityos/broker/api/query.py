"""Handlers for querying and purging entities (GET/DELETE /entities, POST .../query)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from cityos.broker import visibility
from cityos.broker.api import params
from cityos.broker.api.common import Broker, Call, begin, json_response, no_content, require_tenant
from cityos.broker.errors import BadRequestData, OperationNotSupported
from cityos.broker.render import RenderOptions, render_entity, render_geojson_collection
from cityos.http import media
from cityos.http.routing import Handler
from cityos.storage.base import EntityQuery

BASE = "/ngsi-ld/v1"


async def _run(
    broker: Broker, request: Request, call: Call, query: EntityQuery, opts: RenderOptions
) -> Response:
    if not call.tenant or await broker.store.tenant_exists(call.tenant):
        result = await broker.store.query(call.tenant, query)
        docs, count = result.docs, result.count
    else:
        await require_tenant(broker, call.tenant)
        docs, count = [], 0
    headers: dict[str, str] = {}
    if query.count:
        headers["NGSILD-Results-Count"] = str(count if count is not None else len(docs))
    if query.limit and len(docs) == query.limit:
        nxt = dict(request.query_params)
        nxt["offset"] = str(query.offset + query.limit)
        headers["Link"] = f'<{request.url.path}?{urlencode(nxt)}>; rel="next"'
    if call.accept == media.GEO_JSON:
        gp = params.geometry_property(request.query_params, call.ctx)
        body: Any = render_geojson_collection(docs, call.ctx, opts, gp)
        if not isinstance(call.ctx.source, str):
            body["@context"] = call.ctx.source
        resp = json_response(call, body, headers=headers)
    else:
        resp = json_response(
            call, [render_entity(d, call.ctx, opts) for d in docs], headers=headers
        )
    return resp


def query_from_body(body: Any, qp: QueryParams) -> dict[str, Any]:
    """Translate a Query data type (clause 5.2.23) into the GET parameters it means."""
    if not isinstance(body, dict):
        raise BadRequestData("the Query must be a JSON object")
    if body.get("type") != "Query":
        raise BadRequestData('type: a Query must have "type": "Query"')
    allowed = {
        "type",
        "entities",
        "attrs",
        "pick",
        "omit",
        "q",
        "geoQ",
        "scopeQ",
        "lang",
        "csf",
        "temporalQ",
        "@context",
        "local",
        "datasetId",
    }
    for key in body:
        if key not in allowed:
            raise BadRequestData(f"{key}: not a member of the Query data type")
    out: dict[str, Any] = dict(qp.items())
    ents = body.get("entities")
    if ents is not None:
        if not isinstance(ents, list) or not ents or not all(isinstance(e, dict) for e in ents):
            raise BadRequestData("entities: must be a non-empty array of EntitySelector objects")
        for e in ents:
            for key in e:
                if key not in ("id", "idPattern", "type"):
                    raise BadRequestData(f"entities: {key!r} is not an EntitySelector member")
        if len(ents) == 1:
            e = ents[0]
            if "id" in e:
                out["id"] = _str(e["id"], "entities[0].id")
            if "idPattern" in e:
                out["idPattern"] = _str(e["idPattern"], "entities[0].idPattern")
            if "type" in e:
                out["type"] = _str(e["type"], "entities[0].type")
        elif all(set(e) == {"type"} for e in ents):
            out["type"] = ",".join(f"({_str(e['type'], 'entities.type')})" for e in ents)
        elif all("id" in e and "idPattern" not in e for e in ents):
            out["id"] = ",".join(_str(e["id"], "entities.id") for e in ents)
            types = {e.get("type") for e in ents}
            if None not in types:
                out["type"] = ",".join(f"({_str(t, 'entities.type')})" for t in types)
        else:
            raise OperationNotSupported(
                "entities: several selectors mixing idPattern with other selectors are not "
                "supported; send one query per selector"
            )
    for key in ("attrs", "pick", "omit"):
        if key in body:
            val = body[key]
            if not isinstance(val, list) or not all(isinstance(a, str) for a in val) or not val:
                raise BadRequestData(f"{key}: must be a non-empty array of attribute names")
            out[key] = ",".join(val)
    for key in ("q", "scopeQ", "lang"):
        if key in body:
            out[key] = _str(body[key], key)
    if "geoQ" in body:
        g = body["geoQ"]
        if not isinstance(g, dict):
            raise BadRequestData("geoQ: must be an object with geometry, coordinates and georel")
        for key in g:
            if key not in ("geometry", "coordinates", "georel", "geoproperty"):
                raise BadRequestData(f"geoQ: {key!r} is not a GeoQuery member")
        out["georel"] = g.get("georel")
        out["geometry"] = g.get("geometry")
        out["coordinates"] = g.get("coordinates")
        if "geoproperty" in g:
            out["geoproperty"] = g["geoproperty"]
    return out


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequestData(f"{field}: must be a non-empty string")
    return value


def _limits(qp: QueryParams) -> dict[str, Any]:
    return {
        "limit": params.integer(qp, "limit", params.DEFAULT_LIMIT),
        "offset": params.integer(qp, "offset", 0),
        "count": params.flag(qp, "count"),
    }


def routes(broker: Broker) -> list[tuple[str, str, Handler]]:
    """Return the routes of the query and purge operations."""

    async def query_entities(request: Request) -> Response:
        qp = request.query_params
        params.check_known(qp, params.QUERY_PARAMS)
        call = await begin(broker, request, offered=(media.JSON, media.LD_JSON, media.GEO_JSON))
        query = visibility.narrow(params.entity_query(qp, call.ctx))
        opts = params.render_options(qp, call.ctx, query=True)
        return await _run(broker, request, call, query, opts)

    async def post_query(request: Request) -> Response:
        qp = request.query_params
        params.check_known(qp, params.QUERY_PARAMS)
        call = await begin(
            broker, request, body=True, offered=(media.JSON, media.LD_JSON, media.GEO_JSON)
        )
        merged = query_from_body(call.body, qp)
        merged.update(_limits(qp))
        query = visibility.narrow(
            params.entity_query({k: v for k, v in merged.items() if v is not None}, call.ctx)
        )
        render_qp = QueryParams(
            {k: v for k, v in merged.items() if k in params.RENDER_PARAMS and isinstance(v, str)}
        )
        opts = params.render_options(render_qp, call.ctx, query=True)
        return await _run(broker, request, call, query, opts)

    async def purge_entities(request: Request) -> Response:
        qp = request.query_params
        params.check_known(qp, params.FILTER_PARAMS)
        if qp.get("type") is None and qp.get("id") is None and qp.get("idPattern") is None:
            raise BadRequestData("type: purging entities needs at least type, id or idPattern")
        call = await begin(broker, request)
        await require_tenant(broker, call.tenant)
        query = params.entity_query(qp, call.ctx)
        await broker.store.purge(call.tenant, query)
        return no_content()

    return [
        ("GET", BASE + "/entities", query_entities),
        ("DELETE", BASE + "/entities", purge_entities),
        ("POST", BASE + "/entityOperations/query", post_query),
    ]
