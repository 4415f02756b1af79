"""Handlers for /jsonldContexts (GS CIM 009 v1.8 clause 6.30): the broker as context server."""

from __future__ import annotations

import contextlib

import orjson
from starlette.requests import Request
from starlette.responses import Response

from cityos.broker.api import params
from cityos.broker.api.common import Broker, parse_json, read_body
from cityos.broker.errors import NgsiError, ResourceNotFound, UnsupportedMediaType
from cityos.bus import CacheDrop
from cityos.http import media
from cityos.http.routing import Handler
from cityos.jsonld.loader import PROJECT_CONTEXTS, PROJECT_PATH
from cityos.jsonld.store import ContextKind

PATH = "/ngsi-ld/v1/jsonldContexts"
KV_NAMESPACE = "jsonld-hosted"
#: the name of the Hosted contexts on the bus (key: a context's local id)
HOSTED_CACHE = "jsonld.hosted"


def _json(content: object, status: int = 200, mtype: str = media.JSON) -> Response:
    return Response(orjson.dumps(content), status, media_type=mtype)


async def restore(broker: Broker) -> None:
    """Load the Hosted contexts persisted in storage into the loader."""
    records = [orjson.loads(v) for _, v in await broker.store.kv_list(KV_NAMESPACE)]
    broker.loader.store.restore(records)


def routes(broker: Broker) -> list[tuple[str, str, Handler]]:
    """Return the routes of the @context server."""
    loader = broker.loader

    async def hosted_changed(event: CacheDrop) -> None:
        # another worker added or deleted a Hosted context: make ours what is stored
        if event.name != HOSTED_CACHE or event.key is None:
            return
        stored = await broker.store.kv_get(KV_NAMESPACE, event.key)
        if stored is not None:
            loader.store.restore([orjson.loads(stored)])
            return
        with contextlib.suppress(NgsiError):
            if loader.store.find(event.key).kind == ContextKind.HOSTED:
                loader.store.remove(event.key)

    broker.cluster.on(CacheDrop, hosted_changed)

    async def list_contexts(request: Request) -> Response:
        qp = request.query_params
        params.check_known(qp, ("details", "kind"))
        return _json(loader.store.listing(details=params.flag(qp, "details"), kind=qp.get("kind")))

    async def add_context(request: Request) -> Response:
        params.check_known(request.query_params, ())
        ctype = media.content_type(request.headers.get("content-type"))
        if ctype not in (media.JSON, media.LD_JSON):
            raise UnsupportedMediaType(
                f"Content-Type: {ctype or 'missing'}; expected application/json or "
                "application/ld+json"
            )
        body = parse_json(await read_body(request, broker.settings.max_body))
        entry = await loader.add_hosted(body)
        await broker.store.kv_put(KV_NAMESPACE, entry.local_id, orjson.dumps(entry.record()))
        await broker.cluster.publish(CacheDrop(HOSTED_CACHE, entry.local_id))
        return Response(b"", 201, {"Location": entry.url})

    async def get_context(request: Request) -> Response:
        qp = request.query_params
        params.check_known(qp, ("details",))
        details = params.flag(qp, "details")
        body = loader.store.serve(request.path_params["context_id"], details=details)
        return _json(body, mtype=media.JSON if details else media.LD_JSON)

    async def delete_context(request: Request) -> Response:
        qp = request.query_params
        params.check_known(qp, ("reload",))
        entry = await loader.delete(
            request.path_params["context_id"], reload=params.flag(qp, "reload")
        )
        if entry.kind == ContextKind.HOSTED:
            await broker.store.kv_delete(KV_NAMESPACE, entry.local_id)
            await broker.cluster.publish(CacheDrop(HOSTED_CACHE, entry.local_id))
        return Response(b"", 204)

    shipped = {name: path.read_bytes() for name, path in PROJECT_CONTEXTS.items()}

    async def project_context(request: Request) -> Response:
        body = shipped.get(request.path_params["name"])
        if body is None:
            raise ResourceNotFound(f"no project @context named {request.path_params['name']!r}")
        headers = {"Cache-Control": "public, max-age=3600"}
        return Response(body, 200, headers, media_type=media.LD_JSON)

    return [
        ("GET", PROJECT_PATH + "/{name}", project_context),
        ("GET", PATH, list_contexts),
        ("POST", PATH, add_context),
        ("GET", PATH + "/{context_id:path}", get_context),
        ("DELETE", PATH + "/{context_id:path}", delete_context),
    ]
