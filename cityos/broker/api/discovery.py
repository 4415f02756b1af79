"""Handlers for /types and /attributes (GS CIM 009 clauses 5.7.5 to 5.7.8)."""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import Response

from cityos.broker import visibility
from cityos.broker.api import params
from cityos.broker.api.common import Broker, begin, json_response, require_tenant
from cityos.broker.errors import ResourceNotFound
from cityos.broker.normalize import check_name
from cityos.http.routing import Handler

BASE = "/ngsi-ld/v1"


def _list_id(kind: str, names: list[str]) -> str:
    digest = hashlib.sha1("\n".join(names).encode(), usedforsecurity=False).hexdigest()[:16]
    return f"urn:ngsi-ld:{kind}:{digest}"


def routes(broker: Broker) -> list[tuple[str, str, Handler]]:
    """Return the routes of type and attribute discovery."""

    async def list_types(request: Request) -> Response:
        params.check_known(request.query_params, ("details", "local"))
        details = params.flag(request.query_params, "details")
        call = await begin(broker, request)
        await require_tenant(broker, call.tenant)
        infos = visibility.readable_types(await broker.store.types(call.tenant))
        c = call.ctx.compact_iri
        if details:
            return json_response(
                call,
                [
                    {
                        "id": i.type,
                        "type": "EntityType",
                        "typeName": c(i.type),
                        "attributeNames": sorted(c(a) for a in i.attributes),
                    }
                    for i in infos
                ],
            )
        names = sorted(c(i.type) for i in infos)
        return json_response(
            call,
            {"id": _list_id("EntityTypeList", names), "type": "EntityTypeList", "typeList": names},
        )

    async def get_type(request: Request) -> Response:
        params.check_known(request.query_params, ("local",))
        call = await begin(broker, request)
        name = request.path_params["type"]
        check_name(name, "type")
        iri = call.ctx.expand_term(name)
        await require_tenant(broker, call.tenant)
        types = visibility.readable_types(await broker.store.types(call.tenant))
        info = next((i for i in types if i.type == iri), None)
        if info is None:
            raise ResourceNotFound(f"no entity of type {name!r} exists")
        c = call.ctx.compact_iri
        return json_response(
            call,
            {
                "id": iri,
                "type": "EntityTypeInfo",
                "typeName": c(iri),
                "entityCount": info.entity_count,
                "attributeDetails": [
                    {
                        "id": a,
                        "type": "Attribute",
                        "attributeName": c(a),
                        "attributeTypes": sorted(kinds),
                    }
                    for a, kinds in sorted(info.attributes.items())
                ],
            },
        )

    async def list_attributes(request: Request) -> Response:
        params.check_known(request.query_params, ("details", "local"))
        details = params.flag(request.query_params, "details")
        call = await begin(broker, request)
        await require_tenant(broker, call.tenant)
        infos = await broker.store.attributes(call.tenant, visibility.type_filter())
        c = call.ctx.compact_iri
        if details:
            return json_response(
                call,
                [
                    {
                        "id": i.name,
                        "type": "Attribute",
                        "attributeName": c(i.name),
                        "typeNames": sorted(c(t) for t in i.types),
                    }
                    for i in infos
                ],
            )
        names = sorted(c(i.name) for i in infos)
        return json_response(
            call,
            {
                "id": _list_id("AttributeList", names),
                "type": "AttributeList",
                "attributeList": names,
            },
        )

    async def get_attribute(request: Request) -> Response:
        params.check_known(request.query_params, ("local",))
        call = await begin(broker, request)
        name = request.path_params["attr"]
        check_name(name, "attrId")
        iri = call.ctx.expand_term(name)
        await require_tenant(broker, call.tenant)
        attrs = await broker.store.attributes(call.tenant, visibility.type_filter())
        info = next((i for i in attrs if i.name == iri), None)
        if info is None:
            raise ResourceNotFound(f"no entity has an attribute {name!r}")
        c = call.ctx.compact_iri
        return json_response(
            call,
            {
                "id": iri,
                "type": "Attribute",
                "attributeName": c(iri),
                "attributeCount": info.count,
                "attributeTypes": sorted(info.attribute_types),
                "typeNames": sorted(c(t) for t in info.types),
            },
        )

    return [
        ("GET", BASE + "/types", list_types),
        ("GET", BASE + "/types/{type}", get_type),
        ("GET", BASE + "/attributes", list_attributes),
        ("GET", BASE + "/attributes/{attr}", get_attribute),
    ]
