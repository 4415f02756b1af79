"""Handlers for /entities/{id} and its attributes (GS CIM 009 clauses 6.5 to 6.7)."""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from cityos.broker import clock, visibility
from cityos.broker.api import params
from cityos.broker.api.common import (
    Broker,
    begin,
    created,
    json_response,
    no_content,
    require_tenant,
)
from cityos.broker.entities import EntityService, UpdateResult, not_found
from cityos.broker.errors import BadRequestData
from cityos.broker.normalize import check_entity_id, is_uri
from cityos.broker.render import render_entity, render_geojson_feature
from cityos.http import media
from cityos.http.routing import Handler

BASE = "/ngsi-ld/v1"


def _entity_id(request: Request) -> str:
    return check_entity_id(request.path_params["entity_id"], "entityId")


def _update_response(result: UpdateResult, compact: object) -> Response:
    if not result.not_updated:
        return no_content()
    import orjson

    return Response(orjson.dumps(result.body(compact)), 207, media_type=media.JSON)


def routes(broker: Broker) -> list[tuple[str, str, Handler]]:
    """Return the routes of the entity and attribute operations."""

    def service(call_tenant: str, ctx: object) -> EntityService:
        return EntityService(broker.store, call_tenant, ctx, clock.now())  # type: ignore[arg-type]

    async def create_entity(request: Request) -> Response:
        params.check_known(request.query_params, ())
        call = await begin(broker, request, body=True)
        doc = await service(call.tenant, call.ctx).create(call.body)
        return created(f"{BASE}/entities/{quote(doc['id'], safe=':/')}")

    async def retrieve_entity(request: Request) -> Response:
        qp = request.query_params
        params.check_known(qp, params.RENDER_PARAMS)
        call = await begin(broker, request, offered=(media.JSON, media.LD_JSON, media.GEO_JSON))
        entity_id = _entity_id(request)
        opts = params.render_options(qp, call.ctx, query=False)
        await require_tenant(broker, call.tenant)
        doc = await broker.store.get(call.tenant, entity_id)
        if doc is None or not visibility.readable(doc):
            # one the caller may not see is missing to it: no hint that it exists
            raise not_found(entity_id)
        if call.accept == media.GEO_JSON:
            body = render_geojson_feature(
                doc, call.ctx, opts, params.geometry_property(qp, call.ctx)
            )
            if isinstance(call.ctx.source, (str, list)):
                body["@context"] = call.ctx.source
            return json_response(call, body)
        return json_response(call, render_entity(doc, call.ctx, opts))

    async def replace_entity(request: Request) -> Response:
        params.check_known(request.query_params, ())
        call = await begin(broker, request, body=True)
        await service(call.tenant, call.ctx).replace(_entity_id(request), call.body)
        return no_content()

    async def merge_entity(request: Request) -> Response:
        params.check_known(request.query_params, ("options",))
        params.options(request.query_params, frozenset({"noOverwrite"}))
        call = await begin(broker, request, body=True, merge_patch=True)
        await service(call.tenant, call.ctx).merge(_entity_id(request), call.body)
        return no_content()

    async def delete_entity(request: Request) -> Response:
        params.check_known(request.query_params, ())
        call = await begin(broker, request)
        await require_tenant(broker, call.tenant)
        await service(call.tenant, call.ctx).delete(_entity_id(request))
        return no_content()

    async def append_attrs(request: Request) -> Response:
        params.check_known(request.query_params, ("options",))
        opts = params.options(request.query_params, frozenset({"noOverwrite"}))
        call = await begin(broker, request, body=True)
        result = await service(call.tenant, call.ctx).append(
            _entity_id(request), call.body, overwrite="noOverwrite" not in opts
        )
        return _update_response(result, call.ctx.compact_iri)

    async def update_attrs(request: Request) -> Response:
        params.check_known(request.query_params, ())
        call = await begin(broker, request, body=True, merge_patch=True)
        result = await service(call.tenant, call.ctx).update(_entity_id(request), call.body)
        return _update_response(result, call.ctx.compact_iri)

    async def patch_attr(request: Request) -> Response:
        params.check_known(request.query_params, ())
        call = await begin(broker, request, body=True, merge_patch=True)
        await service(call.tenant, call.ctx).patch_attribute(
            _entity_id(request), request.path_params["attr"], call.body
        )
        return no_content()

    async def replace_attr(request: Request) -> Response:
        params.check_known(request.query_params, ())
        call = await begin(broker, request, body=True)
        await service(call.tenant, call.ctx).replace_attribute(
            _entity_id(request), request.path_params["attr"], call.body
        )
        return no_content()

    async def delete_attr(request: Request) -> Response:
        qp = request.query_params
        params.check_known(qp, ("datasetId", "deleteAll"))
        dataset_id = qp.get("datasetId")
        if dataset_id is not None and not is_uri(dataset_id):
            raise BadRequestData(f"datasetId: {dataset_id!r} is not a valid URI")
        delete_all = qp.get("deleteAll") == "true"
        if qp.get("deleteAll") not in (None, "true", "false"):
            raise BadRequestData("deleteAll: must be true or false")
        call = await begin(broker, request)
        await require_tenant(broker, call.tenant)
        await service(call.tenant, call.ctx).delete_attribute(
            _entity_id(request), request.path_params["attr"], dataset_id, delete_all
        )
        return no_content()

    return [
        ("POST", BASE + "/entities", create_entity),
        ("GET", BASE + "/entities/{entity_id}", retrieve_entity),
        ("PUT", BASE + "/entities/{entity_id}", replace_entity),
        ("PATCH", BASE + "/entities/{entity_id}", merge_entity),
        ("DELETE", BASE + "/entities/{entity_id}", delete_entity),
        ("POST", BASE + "/entities/{entity_id}/attrs", append_attrs),
        ("PATCH", BASE + "/entities/{entity_id}/attrs", update_attrs),
        ("PATCH", BASE + "/entities/{entity_id}/attrs/{attr}", patch_attr),
        ("PUT", BASE + "/entities/{entity_id}/attrs/{attr}", replace_attr),
        ("DELETE", BASE + "/entities/{entity_id}/attrs/{attr}", delete_attr),
    ]
