"""Handlers for /subscriptions (GS CIM 009 v1.8 clauses 5.8 and 6.10-6.11), and their wiring."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final
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
from cityos.bus import SubscriptionChanged
from cityos.http.routing import Handler
from cityos.jsonld.context import ActiveContext
from cityos.storage import engines
from cityos.storage.pg_subscriptions import PostgresSubscriptionStore
from cityos.storage.sqlite import SqliteStorage
from cityos.storage.sqlite_subscriptions import Registry

BASE = "/ngsi-ld/v1/subscriptions"
log = logging.getLogger("cityos.subscriptions")

#: seconds between looks at the stored subscriptions when several workers share them
RECONCILE: Final = 30.0
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
    cluster = broker.cluster
    subs = engines.subscriptions(store, Registry(), lease=broker.settings.notify_lease)
    registry = subs.registry

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

    async def build(tenant: str, doc: Doc) -> model.Live:
        ctx = await notification_context(doc, broker.loader.default())
        current = registry.get(tenant, doc["id"])
        return model.Live.build(tenant, doc, ctx, current.version + 1 if current else 0)

    async def install(change: Callable[[], None]) -> None:
        if isinstance(store, SqliteStorage):
            await store.write(lambda _: change())  # on the writer thread, which matches changes
        else:
            change()

    async def reload_one(tenant: str, sub_id: str) -> model.Live | None:
        """Load one subscription as stored now (another worker changed it)."""
        found = await subs.get(tenant, sub_id)
        if found is None:
            await install(lambda: registry.remove(tenant, sub_id))
            return None
        live = await build(tenant, found[0])
        await install(lambda: registry.put(live))
        return live

    async def reload_all(conn: Any = None) -> None:
        """Make the registry what is stored (at start, and when events may have been missed).

        On PostgreSQL with other workers, also on a write's connection before the write is
        matched, when the subscriptions changed since (see PostgresSubscriptionStore.reload).
        """
        loaded = (
            await subs.load(conn)
            if conn is not None and isinstance(subs, PostgresSubscriptionStore)
            else await subs.load()
        )
        stored = {(tenant, doc["id"]): doc for tenant, doc in loaded}
        fresh = []
        for (tenant, sub_id), doc in stored.items():
            current = registry.get(tenant, sub_id)
            if current is None or current.doc != doc:
                fresh.append(await build(tenant, doc))
        gone = [
            (tenant, sub_id)
            for tenant, by_id in registry.by_tenant.items()
            for sub_id in by_id
            if (tenant, sub_id) not in stored
        ]

        def change() -> None:
            for live in fresh:
                registry.put(live)
            for key in gone:
                registry.remove(*key)

        if fresh or gone:
            await install(change)

    async def changed(event: SubscriptionChanged) -> None:
        await reload_one(event.tenant, event.id)

    cluster.on(SubscriptionChanged, changed)
    cluster.on_reconnect(reload_all)
    if cluster.shared and isinstance(subs, PostgresSubscriptionStore):
        subs.reload = reload_all
    sender = Sender(subs, lookup=reload_one if cluster.shared else None)
    periodic = Periodic(subs, store, leader=cluster.is_leader)
    reconciling: list[asyncio.Task[None]] = []

    async def reconcile() -> None:
        # a bus drops events a worker was not connected for: look at the store now and then
        while True:
            await asyncio.sleep(RECONCILE)
            try:
                await reload_all()
            except Exception:
                log.exception("reloading the subscriptions failed; retrying")

    async def start() -> None:
        await subs.setup()
        await reload_all()
        SENDERS[id(broker)] = sender
        await sender.start()
        PERIODICS[id(broker)] = periodic
        await periodic.start()
        if cluster.shared:
            reconciling.append(asyncio.create_task(reconcile(), name="cityos-subs-reconcile"))

    async def stop() -> None:
        for task in reconciling:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        reconciling.clear()
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
        await cluster.publish(SubscriptionChanged(call.tenant, doc["id"]))
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
        await cluster.publish(SubscriptionChanged(call.tenant, sub_id))
        return no_content()

    async def delete(request: Request) -> Response:
        params.check_known(request.query_params, ())
        call = await begin(broker, request)
        if not await subs.delete(call.tenant, _sub_id(request)):
            raise _not_found(_sub_id(request))
        await cluster.publish(SubscriptionChanged(call.tenant, _sub_id(request)))
        return no_content()

    return [
        ("POST", BASE, create),
        ("GET", BASE, list_subs),
        ("GET", BASE + "/{sub_id}", retrieve),
        ("PATCH", BASE + "/{sub_id}", update),
        ("DELETE", BASE + "/{sub_id}", delete),
    ]
