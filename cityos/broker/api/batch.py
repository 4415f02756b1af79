"""Handlers for /entityOperations create, upsert, update, delete and merge (clause 6.14-6.31)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from cityos.broker import clock
from cityos.broker.api import params
from cityos.broker.api.common import Broker, begin
from cityos.broker.entities import EntityService, UpdateResult, not_found
from cityos.broker.errors import AlreadyExists, BadRequestData, NgsiError
from cityos.broker.model import Doc
from cityos.broker.normalize import check_entity_id
from cityos.http import media
from cityos.http.routing import Handler
from cityos.storage.base import Mutation, Outcome

BASE = "/ngsi-ld/v1/entityOperations"
MAX_BATCH = 1000


def _error_entry(entity_id: Any, exc: Exception) -> dict[str, Any]:
    err = exc if isinstance(exc, NgsiError) else BadRequestData(str(exc))
    return {"entityId": entity_id if isinstance(entity_id, str) else None, "error": err.problem()}


def _respond(
    success: list[str],
    errors: list[dict[str, Any]],
    *,
    created_ids: list[str] | None = None,
    all_status: int = 204,
) -> Response:
    if errors:
        body = {"success": success, "errors": errors}
        return Response(orjson.dumps(body), 207, media_type=media.JSON)
    if all_status == 201:
        return Response(orjson.dumps(created_ids or []), 201, media_type=media.JSON)
    return Response(b"", 204)


def routes(broker: Broker) -> list[tuple[str, str, Handler]]:
    """Return the routes of the batch entity operations."""

    async def prepare(
        request: Request, allowed_options: frozenset[str]
    ) -> tuple[Any, list[Any], set[str]]:
        params.check_known(request.query_params, ("options",))
        opts = params.options(request.query_params, allowed_options)
        call = await begin(broker, request, body=True, merge_patch=True, context_in_elements=True)
        if not isinstance(call.body, list):
            raise BadRequestData("the batch body must be a JSON array")
        if len(call.body) > MAX_BATCH:
            raise BadRequestData(f"the batch has {len(call.body)} elements; at most {MAX_BATCH}")
        return call, call.body, opts

    async def element_service(call: Any, item: Any, now: str) -> EntityService:
        ctx = call.ctx
        if isinstance(item, dict) and "@context" in item:
            ctx = await broker.loader.resolve(item["@context"])
        return EntityService(broker.store, call.tenant, ctx, now)

    async def run(
        call: Any, items: list[Any], make: Any
    ) -> tuple[list[str], list[dict[str, Any]], list[Outcome]]:
        """Validate every element, apply the valid ones in one transaction group."""
        now = clock.now()
        errors: list[dict[str, Any]] = []
        mutations: list[Mutation] = []
        for item in items:
            entity_id = item.get("id") if isinstance(item, dict) else item
            try:
                svc = await element_service(call, item, now)
                mutations.append(make(svc, item))
            except NgsiError as exc:
                errors.append(_error_entry(entity_id, exc))
        outcomes = await broker.store.apply(call.tenant, mutations) if mutations else []
        success: list[str] = []
        for o in outcomes:
            if o.error is None:
                success.append(o.entity_id)
            else:
                errors.append(_error_entry(o.entity_id, o.error))
        return success, errors, outcomes

    async def batch_create(request: Request) -> Response:
        call, items, _ = await prepare(request, frozenset())

        def make(svc: EntityService, item: Any) -> Mutation:
            doc = svc.norm.entity(item)

            def fn(cur: Doc | None) -> Doc:
                if cur is not None:
                    raise AlreadyExists(f"entity {doc['id']!r} already exists")
                return doc

            return Mutation(doc["id"], fn)

        success, errors, _ = await run(call, items, make)
        return _respond(success, errors, created_ids=success, all_status=201)

    async def batch_upsert(request: Request) -> Response:
        call, items, opts = await prepare(request, frozenset({"update", "replace"}))
        if {"update", "replace"} <= opts:
            raise BadRequestData("options: update and replace exclude each other")
        update = "update" in opts

        def make(svc: EntityService, item: Any) -> Mutation:
            if update:
                if not isinstance(item, dict):
                    raise BadRequestData("each entity must be a JSON object")
                entity_id = check_entity_id(item.get("id"))
                fn = svc.append_fn(
                    entity_id,
                    item,
                    overwrite=True,
                    only_existing=False,
                    result=UpdateResult(),
                    create=True,
                )
                return Mutation(entity_id, fn)
            doc = svc.norm.entity(item)

            def replace(cur: Doc | None) -> Doc:
                if cur is not None:
                    doc["createdAt"] = cur["createdAt"]
                return doc

            return Mutation(doc["id"], replace)

        success, errors, outcomes = await run(call, items, make)
        created_ids = [o.entity_id for o in outcomes if o.ok and o.created]
        if errors:
            return _respond(success, errors)
        if created_ids:
            return Response(orjson.dumps(created_ids), 201, media_type=media.JSON)
        return Response(b"", 204)

    async def batch_update(request: Request) -> Response:
        call, items, opts = await prepare(request, frozenset({"noOverwrite"}))
        overwrite = "noOverwrite" not in opts

        def make(svc: EntityService, item: Any) -> Mutation:
            if not isinstance(item, dict):
                raise BadRequestData("each entity must be a JSON object")
            entity_id = check_entity_id(item.get("id"))
            fn = svc.append_fn(
                entity_id, item, overwrite=overwrite, only_existing=False, result=UpdateResult()
            )
            return Mutation(entity_id, fn)

        success, errors, _ = await run(call, items, make)
        return _respond(success, errors)

    async def batch_merge(request: Request) -> Response:
        call, items, _ = await prepare(request, frozenset())

        def make(svc: EntityService, item: Any) -> Mutation:
            if not isinstance(item, dict):
                raise BadRequestData("each entity must be a JSON object")
            entity_id = check_entity_id(item.get("id"))
            return Mutation(entity_id, svc.merge_fn(entity_id, item))

        success, errors, _ = await run(call, items, make)
        return _respond(success, errors)

    async def batch_delete(request: Request) -> Response:
        call, items, _ = await prepare(request, frozenset())

        def make(svc: EntityService, item: Any) -> Mutation:
            entity_id = check_entity_id(item, "entityId")

            def fn(cur: Doc | None) -> None:
                if cur is None:
                    raise not_found(entity_id)
                return

            return Mutation(entity_id, fn)

        success, errors, _ = await run(call, items, make)
        return _respond(success, errors)

    return [
        ("POST", BASE + "/create", batch_create),
        ("POST", BASE + "/upsert", batch_upsert),
        ("POST", BASE + "/update", batch_update),
        ("POST", BASE + "/merge", batch_merge),
        ("POST", BASE + "/delete", batch_delete),
    ]
