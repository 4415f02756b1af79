"""Handlers for /subscriptions (GS CIM 009 v1.8 clauses 5.8 and 6.10-6.11), and their wiring."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import Response

from cityos.broker import clock, visibility
from cityos.broker import subscriptions as model
from cityos.broker.api import params
from cityos.broker.api.common import Broker, begin, created, json_response, no_content
from cityos.broker.errors import AlreadyExists, NgsiError, ResourceNotFound, TooManyResults
from cityos.broker.model import Doc
from cityos.broker.notify import Periodic, Sender
from cityos.http.routing import Handler
from cityos.jsonld.context import ActiveContext
from cityos.storage import engines
from cityos.storage.pg_subscriptions import PostgresSubscriptionStore
from cityos.storage.sqlite import SqliteStorage
from cityos.storage.sqlite_subscriptions import Registry

BASE = "/ngsi-ld/v1/subscriptions"
log = logging.getLogger("cityos.subscriptions")

#: id(broker) -> its running sender, for tests that drive delivery with their own clock
SENDERS: dict[int, Sender] = {}
#: id(broker) -> its periodic notifier, for tests that drive timeInterval with their own times
PERIODICS: dict[int, Periodic] = {}


def sender_of(broker: Broker) -> Sender:
    """Return the notification sender of a running broker."""
    return SENDERS[id(broker)]


def periodic_of(broker: Broker) -> Periodic:
    """Return the periodic (timeInterval) notifier of a running broker."""
    return PERIODICS[id(broker)]


def _not_found(sub_id: str) -> ResourceNotFound:
    return ResourceNotFound(f"subscription {sub_id!r} not found")


def _sub_id(request: Request) -> str:
    raw: str = request.path_params["sub_id"]
    return raw


def routes(broker: Broker) -> list[tuple[str, str, Handler]]:
    """Return the subscription routes; register matching and delivery with the broker."""
    store = broker.store
    subs = engines.subscriptions(store, Registry())
    sender = Sender(subs)
    periodic = Periodic(subs, store)

    async def notification_context(doc: Doc, fallback: ActiveContext) -> ActiveContext:
        source = doc.get("jsonldContext", doc.get("context"))
        try:
            return await broker.loader.resolve(source)
        except NgsiError as exc:
            log.warning(
                "subscription %s: @context %r unavailable (%s); notifying with %r",
                doc["id"],
                source,
                exc.detail,
                fallback.source,
            )
            return fallback

    async def start() -> None:
        await subs.setup()
        lives = [
            model.Live.build(tenant, doc, await notification_context(doc, broker.loader.default()))
            for tenant, doc in await subs.load()
        ]

        def install(_: object) -> None:
            for live in lives:
                subs.registry.put(live)

        if isinstance(store, SqliteStorage):
            await store.write(install)  # on the writer thread, which matches changes
        else:
            install(None)
        SENDERS[id(broker)] = sender
        await sender.start()
        PERIODICS[id(broker)] = periodic
        await periodic.start()

    async def stop() -> None:
        await periodic.stop()
        PERIODICS.pop(id(broker), None)
        await sender.stop()
        SENDERS.pop(id(broker), None)
        if isinstance(subs, PostgresSubscriptionStore):
            await subs.close()

    broker.on_start.append(start)
    broker.on_stop.append(stop)

    async def create(request: Request) -> Response:
        params.check_known(request.query_params, ())
        call = await begin(broker, request, body=True)
        doc, jsonld_context = model.validate(call.body, call.ctx, clock.now())
        visibility.check_watch(call.tenant, doc.get("entities"))
        ctx = await broker.loader.resolve(jsonld_context) if jsonld_context else call.ctx
        if not await subs.insert(model.Live.build(call.tenant, doc, ctx)):
            raise AlreadyExists(f"subscription {doc['id']!r} already exists")
        return created(f"{BASE}/{quote(doc['id'], safe=':')}")

    async def list_subs(request: Request) -> Response:
        qp = request.query_params
        params.check_known(qp, ("limit", "offset", "count", "options"))
        opts = params.options(qp, frozenset({"sysAttrs", "count"}))
        call = await begin(broker, request)
        limit = params.integer(qp, "limit", params.DEFAULT_LIMIT)
        if limit > params.MAX_LIMIT:
            raise TooManyResults(f"limit: {limit} exceeds the maximum of {params.MAX_LIMIT}")
        offset = params.integer(qp, "offset", 0)
        rows, total = await subs.page(call.tenant, limit, offset)
        now = clock.now()
        body = [model.render(d, c, call.ctx, now, "sysAttrs" in opts) for d, c in rows]
        headers: dict[str, str] = {}
        if params.flag(qp, "count") or "count" in opts:
            headers["NGSILD-Results-Count"] = str(total)
        if limit and offset + limit < total:
            nxt: dict[str, Any] = dict(qp)
            nxt["offset"] = str(offset + limit)
            headers["Link"] = f'<{request.url.path}?{urlencode(nxt)}>; rel="next"'
        return json_response(call, body, headers=headers)

    async def retrieve(request: Request) -> Response:
        qp = request.query_params
        params.check_known(qp, ("options",))
        opts = params.options(qp, frozenset({"sysAttrs"}))
        call = await begin(broker, request)
        found = await subs.get(call.tenant, _sub_id(request))
        if found is None:
            raise _not_found(_sub_id(request))
        doc, counters = found
        return json_response(call, model.render(doc, counters, call.ctx, clock.now(), bool(opts)))

    async def update(request: Request) -> Response:
        params.check_known(request.query_params, ())
        call = await begin(broker, request, body=True, merge_patch=True)
        sub_id = _sub_id(request)
        found = await subs.get(call.tenant, sub_id)
        if found is None:
            raise _not_found(sub_id)
        doc, jsonld_context = model.validate(call.body, call.ctx, clock.now(), old=found[0])
        visibility.check_watch(call.tenant, doc.get("entities"))
        current = subs.registry.get(call.tenant, sub_id)
        if jsonld_context:
            ctx = await broker.loader.resolve(jsonld_context)
        elif current is not None:
            ctx = current.ctx
        else:
            ctx = await notification_context(doc, broker.loader.default())
        version = current.version + 1 if current is not None else 0
        if not await subs.replace(model.Live.build(call.tenant, doc, ctx, version)):
            raise _not_found(sub_id)
        return no_content()

    async def delete(request: Request) -> Response:
        params.check_known(request.query_params, ())
        call = await begin(broker, request)
        if not await subs.delete(call.tenant, _sub_id(request)):
            raise _not_found(_sub_id(request))
        return no_content()

    return [
        ("POST", BASE, create),
        ("GET", BASE, list_subs),
        ("GET", BASE + "/{sub_id}", retrieve),
        ("PATCH", BASE + "/{sub_id}", update),
        ("DELETE", BASE + "/{sub_id}", delete),
    ]
