"""HTTP routes of the portal: the published files under /public/ and the surge switch."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from cityos.broker.api.common import Broker, parse_json, read_body
from cityos.bus import CacheDrop, SnapshotDue
from cityos.http import media
from cityos.http.routing import Handler
from cityos.portal import surge
from cityos.portal.publisher import Builder, Publisher
from cityos.portal.static import PublicFiles, PublicFront, cache_policy
from cityos.settings import Settings
from cityos.storage import engines
from cityos.storage.base import Storage
from cityos.storage.sqlite import SqliteStorage

log = logging.getLogger("cityos.portal")

MAX_ADMIN_BODY = 4096
#: how long PUT /admin/portal/surge waits for the pages it switched to be published
SWITCH_WAIT = 10.0
#: on the bus: the portal's snapshot is due (a change; the surge switch), and it was published
PORTAL = "portal"
PORTAL_SURGE = "portal.surge"
PORTAL_PUBLISHED = "portal.published"


def site_builder(store: Storage, *, tenant: str = "", tile_url: str | None = None) -> Builder:
    """Return a Builder making the resident portal of one tenant."""

    async def build(*, surge: bool) -> dict[str, bytes]:
        from cityos.portal.site import build_site

        return await build_site(store, tenant=tenant, tile_url=tile_url, surge=surge)

    return build


def _noop(conn: sqlite3.Connection) -> None:
    """Commit nothing: awaited, it means every write queued before it has committed."""


def public_files(settings: Settings) -> PublicFiles:
    """Return the server's view of the published folder (one per app: routes and front)."""
    return PublicFiles(settings.data_dir / "public", cache_policy(settings))


def portal_routes(
    broker: Broker, builder: Builder | None = None, *, files: PublicFiles | None = None
) -> list[tuple[str, str, Handler]]:
    """Return the /public/ and /admin/portal/ routes, and publish the site while running."""
    store = broker.store
    files = files or public_files(broker.settings)

    async def barrier() -> None:
        # SQLite's writes queue behind one writer: wait for those queued before now;
        # PostgreSQL's are committed when their call returns
        if isinstance(store, SqliteStorage):
            await store.write(_noop)

    cluster = broker.cluster
    publisher = Publisher(
        files.root,
        builder or site_builder(store, tile_url=broker.settings.portal_tile_url),
        barrier=barrier,
        on_publish=files.forget,
        leader=cluster.is_leader,
        relay=lambda: cluster.publish(SnapshotDue(PORTAL)),
    )
    engines.on_change(store, publisher.note)
    switched: list[asyncio.Future[None]] = []  # surge switches waiting for the leader's build
    lead: list[asyncio.Future[bool]] = []  # the build on taking the lead

    async def start() -> None:
        publisher.surge = (await surge.load(store)).surge
        await publisher.start()

    async def stop() -> None:
        for task in lead:
            task.cancel()
        lead.clear()
        await publisher.stop()

    broker.on_start.append(start)
    broker.on_stop.append(stop)

    async def leader_publish(hurry: bool) -> bool:
        publisher.surge = (await surge.load(store)).surge  # perhaps switched in another worker
        if not hurry:
            publisher.poke()
            return True
        try:
            await asyncio.wait_for(publisher.publish_now(), SWITCH_WAIT)
        except Exception:  # the switch is stored; the publisher keeps retrying
            log.exception("portal: publishing after the surge switch failed")
            return False
        return True

    async def due(event: SnapshotDue) -> None:
        # another worker saw portal data change, or switched the surge mode
        if event.name not in (PORTAL, PORTAL_SURGE) or not cluster.is_leader():
            return
        surged = event.name == PORTAL_SURGE
        if await leader_publish(hurry=surged) and surged:
            await cluster.publish(CacheDrop(PORTAL_PUBLISHED))

    def published(event: CacheDrop) -> None:
        if event.name == PORTAL_PUBLISHED:
            for fut in switched:
                if not fut.done():
                    fut.set_result(None)
            switched.clear()

    def took_lead() -> None:
        # the last leader may have died with a build due: build once now, in the surge mode stored
        lead.append(asyncio.ensure_future(leader_publish(hurry=False)))

    cluster.on(SnapshotDue, due)
    cluster.on(CacheDrop, published)
    cluster.leadership.on_gain.append(took_lead)

    async def get_surge(_: Request) -> Response:
        return _json((await surge.load(store)).to_json())

    async def put_surge(request: Request) -> Response:
        on = surge.parse_switch(parse_json(await read_body(request, MAX_ADMIN_BODY)))
        state = await surge.save(store, on)
        if cluster.is_leader():
            published = await leader_publish(hurry=True)
        else:  # the leader builds; wait for its word that the files are out
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            switched.append(fut)
            await cluster.publish(SnapshotDue(PORTAL_SURGE))
            try:
                await asyncio.wait_for(fut, SWITCH_WAIT)
                published = True
            except TimeoutError:
                published = False
        return _json({**state.to_json(), "published": published})

    return [
        ("GET", "/public", files.handle),
        ("GET", "/public/{path:path}", files.handle),
        ("GET", "/admin/portal/surge", get_surge),
        ("PUT", "/admin/portal/surge", put_surge),
    ]


def portal_front(app: ASGIApp, files: PublicFiles) -> PublicFront:
    """Wrap the app so /public/ is answered before its middleware and routing (the fast path)."""
    return PublicFront(app, files)


def _json(doc: object) -> Response:
    return Response(orjson.dumps(doc), 200, media_type=media.JSON)
