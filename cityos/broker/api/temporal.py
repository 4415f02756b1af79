"""Handlers for the temporal API under /temporal (GS CIM 009 clauses 6.18 to 6.24).

Choices: instances sent to the temporal API (POST /temporal/entities, .../attrs) go into the
history only; the current entity is left as it is, so back-filling old observations never
overwrites live state. Entity filters `q`, `scopeQ` and geo-queries apply to the entities'
current state; `id`, `idPattern`, `type` and `attrs` to the recorded history.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlencode

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from cityos.broker import clock, visibility
from cityos.broker import temporal as tp
from cityos.broker.api import params
from cityos.broker.api.common import Broker, Call, begin, created, json_response, no_content
from cityos.broker.api.query import query_from_body
from cityos.broker.errors import BadRequestData, NonexistentTenant, ResourceNotFound
from cityos.broker.normalize import ENTITY_SKIP, check_entity_id, check_name, expand_types, is_uri
from cityos.broker.render import RenderOptions
from cityos.http.routing import Handler
from cityos.storage import engines
from cityos.storage.base import EntityQuery
from cityos.storage.sqlite_history import HistorySelection

BASE = "/ngsi-ld/v1/temporal"
TEMPORAL_PARAMS = frozenset(
    {"timerel", "timeAt", "endTimeAt", "timeproperty", "lastN", "aggrMethods", "aggrPeriodDuration"}
)
QUERY_PARAMS = (params.QUERY_PARAMS | TEMPORAL_PARAMS) - {"pick", "omit", "geometryProperty"}
RETRIEVE_PARAMS = (
    frozenset({"attrs", "options", "format", "lang", "sysAttrs", "datasetId", "local"})
    | TEMPORAL_PARAMS
)
_OPTIONS = frozenset({"temporalValues", "aggregatedValues", "sysAttrs", "normalized", "count"})
_FORMATS = {
    "normalized": "normalized",
    "temporalValues": "temporalValues",
    "simplified": "temporalValues",
    "aggregatedValues": "aggregatedValues",
}
_QUERY_PAGE = 1000


def _entity_id(request: Request) -> str:
    return check_entity_id(request.path_params["entity_id"], "entityId")


def _representation(qp: Any) -> tuple[str, bool]:
    """Return the representation (normalized, temporalValues, aggregatedValues) and sysAttrs."""
    opts = params.options(
        QueryParams({"options": qp["options"]}) if "options" in qp else QueryParams(), _OPTIONS
    )
    chosen = {_FORMATS[o] for o in opts if o in _FORMATS}
    fmt = qp.get("format")
    if fmt is not None:
        if fmt not in _FORMATS:
            raise BadRequestData(
                f"format: {fmt!r} is not one of normalized, temporalValues, aggregatedValues"
            )
        chosen.add(_FORMATS[fmt])
    if len(chosen) > 1:
        raise BadRequestData(f"options/format: conflicting representations {sorted(chosen)}")
    return (chosen.pop() if chosen else "normalized"), "sysAttrs" in opts


def _render_options(qp: Any, call: Call, sys_attrs: bool) -> RenderOptions:
    keep = {k: qp[k] for k in ("lang", "datasetId", "sysAttrs") if qp.get(k) is not None}
    opts = params.render_options(QueryParams(keep), call.ctx, query=False)
    return replace(opts, sys_attrs=opts.sys_attrs or sys_attrs)


def routes(broker: Broker) -> list[tuple[str, str, Handler]]:
    """Return the routes of the temporal API and record every change into the history."""
    store = broker.store
    history = engines.history(store)  # records every change from now on
    broker.on_start.append(history.start)
    if broker.settings.history_retention is not None:
        retention = tp.Retention(
            history, broker.settings.history_retention, broker.cluster.is_leader
        )
        broker.on_start.append(retention.start)
        broker.on_stop.append(retention.stop)

    async def require_tenant(tenant: str) -> None:
        if tenant and not (
            await store.tenant_exists(tenant) or await history.tenant_exists(tenant)
        ):
            raise NonexistentTenant(f"tenant {tenant!r} does not exist")

    async def current_ids(tenant: str, query: EntityQuery) -> frozenset[str]:
        """Return the ids of the entities whose current state matches q, scopeQ and geo."""
        ids: set[str] = set()
        offset = 0
        while True:
            page = replace(query, limit=_QUERY_PAGE, offset=offset, count=False)
            docs = (await store.query(tenant, page)).docs
            ids.update(d["id"] for d in docs)
            if len(docs) < _QUERY_PAGE:
                return frozenset(ids)
            offset += _QUERY_PAGE

    async def answer(
        request: Request, call: Call, qp: Any, sel: HistorySelection, single: str | None
    ) -> Response:
        fmt, sys_attrs = _representation(qp)
        tq = tp.temporal_query(qp, aggregated=fmt == "aggregatedValues")
        opts = _render_options(qp, call, sys_attrs)
        attrs = params.attr_names(params.text(qp, "attrs"), "attrs", call.ctx)
        wanted = None if attrs is None else frozenset(a for a in attrs if a not in ("id", "type"))
        await require_tenant(call.tenant)
        entities, count = await history.query(call.tenant, sel, wanted, tq, tp.INSTANCE_LIMIT)
        headers: dict[str, str] = {}
        status = 200
        page = None if tq.aggr_methods else tp.cut_pages(entities, tq.last_n is not None)
        if page is not None:
            status = 206
            headers["Content-Range"] = (
                f"date-time {tp.from_micros(page.first)}-{tp.from_micros(page.last)}/*"
            )
        if fmt == "aggregatedValues":
            bodies = [tp.render_aggregated(e, call.ctx, opts, tq.aggr_methods) for e in entities]
        else:
            simplified = fmt == "temporalValues"
            bodies = [
                tp.render_temporal(e, call.ctx, opts, simplified=simplified) for e in entities
            ]
        if single is not None:
            if not bodies:
                raise ResourceNotFound(f"entity {single!r} has no temporal representation")
            return json_response(call, bodies[0], status, headers)
        if count is not None:
            headers["NGSILD-Results-Count"] = str(count)
        if sel.limit and len(entities) == sel.limit:
            nxt = dict(request.query_params)
            nxt["offset"] = str(sel.offset + sel.limit)
            headers["Link"] = f'<{request.url.path}?{urlencode(nxt)}>; rel="next"'
        return json_response(call, bodies, status, headers)

    async def selection(call: Call, qp: Any) -> HistorySelection:
        query = visibility.narrow(params.entity_query(qp, call.ctx))
        only = None
        if query.q is not None or query.scope_q is not None or query.geo is not None:
            only = await current_ids(call.tenant, replace(query, attrs=frozenset()))
        return HistorySelection(
            ids=query.ids,
            id_pattern=query.id_pattern,
            types=query.types,
            expand=query.expand,
            attrs=query.attrs,
            only=only,
            limit=query.limit,
            offset=query.offset,
            count=query.count,
        )

    async def query_entities(request: Request) -> Response:
        qp = request.query_params
        params.check_known(qp, QUERY_PARAMS)
        call = await begin(broker, request)
        if "count" in params.options(
            QueryParams({"options": qp["options"]}) if "options" in qp else QueryParams(),
            _OPTIONS,
        ):
            qp = QueryParams({**qp, "count": "true"})
        return await answer(request, call, qp, await selection(call, qp), None)

    async def post_query(request: Request) -> Response:
        qp = request.query_params
        params.check_known(qp, QUERY_PARAMS)
        call = await begin(broker, request, body=True)
        body = call.body
        merged = query_from_body(body, qp)
        tq_body = body.get("temporalQ") if isinstance(body, dict) else None
        if tq_body is not None:
            if not isinstance(tq_body, dict):
                raise BadRequestData("temporalQ: must be an object")
            for key, value in tq_body.items():
                if key not in ("timerel", "timeAt", "endTimeAt", "timeproperty", "lastN"):
                    raise BadRequestData(f"temporalQ: {key!r} is not a TemporalQuery member")
                merged[key] = value
        merged = {k: v for k, v in merged.items() if v is not None}
        return await answer(request, call, merged, await selection(call, merged), None)

    async def retrieve_entity(request: Request) -> Response:
        qp = request.query_params
        params.check_known(qp, RETRIEVE_PARAMS)
        call = await begin(broker, request)
        entity_id = _entity_id(request)
        # a restricted reader's selection names the public types: another entity is missing
        narrowed = visibility.narrow(EntityQuery(ids=(entity_id,)))
        sel = HistorySelection(ids=(entity_id,), types=narrowed.types, limit=1)
        return await answer(request, call, qp, sel, entity_id)

    async def create_entity(request: Request) -> Response:
        params.check_known(request.query_params, ())
        call = await begin(broker, request, body=True)
        payload = call.body
        if not isinstance(payload, dict):
            raise BadRequestData("the temporal entity must be a JSON object")
        if "id" not in payload:
            raise BadRequestData("id: missing (every entity needs an id)")
        entity_id = check_entity_id(payload["id"])
        if "type" not in payload:
            raise BadRequestData("type: missing (every entity needs a type)")
        types = expand_types(payload["type"], call.ctx)
        now = clock.now()
        attrs = tp.temporal_attributes(payload, call.ctx, now, ENTITY_SKIP)
        new = await history.add(
            call.tenant, entity_id, types, attrs, tp.to_micros(now), must_exist=False
        )
        if new:
            return created(f"{BASE}/entities/{quote(entity_id, safe=':/')}")
        return no_content()

    async def delete_entity(request: Request) -> Response:
        params.check_known(request.query_params, ())
        call = await begin(broker, request)
        entity_id = _entity_id(request)
        await require_tenant(call.tenant)
        if not await history.delete_entity(call.tenant, entity_id):
            raise ResourceNotFound(f"entity {entity_id!r} has no temporal representation")
        return no_content()

    async def add_attrs(request: Request) -> Response:
        params.check_known(request.query_params, ())
        call = await begin(broker, request, body=True)
        entity_id = _entity_id(request)
        payload = call.body
        if not isinstance(payload, dict):
            raise BadRequestData("the attributes fragment must be a JSON object")
        if "id" in payload and check_entity_id(payload["id"]) != entity_id:
            raise BadRequestData(f"id: {payload['id']!r} does not match the URL's {entity_id!r}")
        types = expand_types(payload["type"], call.ctx) if "type" in payload else []
        now = clock.now()
        attrs = tp.temporal_attributes(payload, call.ctx, now, ENTITY_SKIP)
        await require_tenant(call.tenant)
        added = await history.add(
            call.tenant, entity_id, types, attrs, tp.to_micros(now), must_exist=True
        )
        if added is None:
            raise ResourceNotFound(f"entity {entity_id!r} has no temporal representation")
        return no_content()

    def attr_iri(call: Call, request: Request) -> tuple[str, str]:
        attr = request.path_params["attr"]
        check_name(attr, "attrId")
        return attr, call.ctx.expand_term(attr)

    async def delete_attr(request: Request) -> Response:
        qp = request.query_params
        params.check_known(qp, ("datasetId", "deleteAll"))
        dataset_id = qp.get("datasetId")
        if dataset_id is not None and not is_uri(dataset_id):
            raise BadRequestData(f"datasetId: {dataset_id!r} is not a valid URI")
        every = params.flag(qp, "deleteAll")
        call = await begin(broker, request)
        entity_id = _entity_id(request)
        attr, iri = attr_iri(call, request)
        await require_tenant(call.tenant)
        n = await history.delete_attribute(call.tenant, entity_id, iri, dataset_id, every)
        if n is None:
            raise ResourceNotFound(f"entity {entity_id!r} has no temporal representation")
        if n == 0:
            where = f" with datasetId {dataset_id!r}" if dataset_id else ""
            raise ResourceNotFound(f"attribute {attr!r}{where} has no instances in {entity_id!r}")
        return no_content()

    def instance_of(request: Request) -> int:
        raw = request.path_params["instance_id"]
        iid = tp.parse_instance_id(raw)
        if iid is None:
            if not is_uri(raw):
                raise BadRequestData(f"instanceId: {raw!r} is not a valid URI")
            raise ResourceNotFound(f"instance {raw!r} not found")
        return iid

    async def patch_instance(request: Request) -> Response:
        params.check_known(request.query_params, ())
        call = await begin(broker, request, body=True, merge_patch=True)
        entity_id = _entity_id(request)
        attr, iri = attr_iri(call, request)
        iid = instance_of(request)
        now = clock.now()
        fn = tp.instance_patch(call.body, attr, iri, call.ctx, now)
        await require_tenant(call.tenant)
        done = await history.update_instance(
            call.tenant, entity_id, iri, iid, fn, tp.to_micros(now)
        )
        if done is None:
            raise ResourceNotFound(f"entity {entity_id!r} has no temporal representation")
        if not done:
            raise ResourceNotFound(
                f"instance {request.path_params['instance_id']!r} of {attr!r} not found"
            )
        return no_content()

    async def delete_instance(request: Request) -> Response:
        params.check_known(request.query_params, ())
        call = await begin(broker, request)
        entity_id = _entity_id(request)
        attr, iri = attr_iri(call, request)
        iid = instance_of(request)
        await require_tenant(call.tenant)
        done = await history.delete_instance(call.tenant, entity_id, iri, iid)
        if done is None:
            raise ResourceNotFound(f"entity {entity_id!r} has no temporal representation")
        if not done:
            raise ResourceNotFound(
                f"instance {request.path_params['instance_id']!r} of {attr!r} not found"
            )
        return no_content()

    instance_path = BASE + "/entities/{entity_id}/attrs/{attr}/{instance_id}"
    return [
        ("GET", BASE + "/entities", query_entities),
        ("POST", BASE + "/entities", create_entity),
        ("GET", BASE + "/entities/{entity_id}", retrieve_entity),
        ("DELETE", BASE + "/entities/{entity_id}", delete_entity),
        ("POST", BASE + "/entities/{entity_id}/attrs", add_attrs),
        ("DELETE", BASE + "/entities/{entity_id}/attrs/{attr}", delete_attr),
        ("PATCH", instance_path, patch_instance),
        ("DELETE", instance_path, delete_instance),
        ("POST", BASE + "/entityOperations/query", post_query),
    ]
