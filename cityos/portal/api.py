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

    publisher = Publisher(
        files.root,
        builder or site_builder(store, tile_url=broker.settings.portal_tile_url),
        barrier=barrier,
        on_publish=files.forget,
    )
    engines.on_change(store, publisher.note)

    async def start() -> None:
        publisher.surge = (await surge.load(store)).surge
        await publisher.start()

    broker.on_start.append(start)
    broker.on_stop.append(publisher.stop)

    async def get_surge(_: Request) -> Response:
        return _json((await surge.load(store)).to_json())

    async def put_surge(request: Request) -> Response:
        on = surge.parse_switch(parse_json(await read_body(request, MAX_ADMIN_BODY)))
        state = await surge.save(store, on)
        publisher.surge = on
        published = True
        try:
            await asyncio.wait_for(publisher.publish_now(), SWITCH_WAIT)
        except Exception:  # the switch is stored; the publisher keeps retrying
            log.exception("portal: publishing after the surge switch failed")
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
