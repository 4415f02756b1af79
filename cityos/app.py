"""create_app(settings): the cityos ASGI application, assembled in one place."""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp

from cityos import __version__
from cityos.admin.routes import admin_routes
from cityos.auth.context import KEYS_CACHE, TOKENS_CACHE, Identity
from cityos.auth.oidc import OidcVerifier
from cityos.auth.policy import Policy
from cityos.auth.ratelimit import Limit
from cityos.auth.sessions import Sessions
from cityos.auth.users import Accounts
from cityos.broker.api import batch, discovery, entities, query, subscriptions, temporal
from cityos.broker.api import contexts as contexts_api
from cityos.broker.api.common import Broker
from cityos.bus import CacheDrop
from cityos.catalog.api import catalog_routes
from cityos.catalog.dcat_api import dcat_routes
from cityos.catalog.dump_api import dump_routes
from cityos.catalog.files_api import files_routes
from cityos.catalog.pages import pages_routes
from cityos.catalog.service import Catalog
from cityos.cluster import Cluster
from cityos.http.middleware.auth import AuthMiddleware
from cityos.http.middleware.errors import ErrorMiddleware, not_found_app
from cityos.http.middleware.security import CorsMiddleware, SecurityHeadersMiddleware
from cityos.http.middleware.slashes import TrailingSlashMiddleware
from cityos.http.routing import grouped
from cityos.http.rsgi import RsgiBridge
from cityos.iot import api as iot_api
from cityos.jsonld.loader import PROJECT_CONTEXTS, PROJECT_PATH, ContextLoader
from cityos.portal.api import portal_front, portal_routes, public_files
from cityos.portal.static import PublicFiles
from cityos.safety import rules
from cityos.settings import Settings, from_env
from cityos.storage import engines
from cityos.storage.base import Storage
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import SqliteStorage


def make_storage(settings: Settings) -> Storage:
    """Return the storage engine the settings name."""
    if settings.engine == "postgresql" and settings.database_url is not None:
        return PostgresStorage(settings.database_url)
    return SqliteStorage(
        settings.sqlite_path, sync=settings.sqlite_sync, query_threads=settings.query_threads
    )


def app_from_env() -> ASGIApp:
    """Return the ASGI app configured by the CITYOS_* environment."""
    return create_app(from_env())


def rsgi_app_from_env() -> RsgiBridge:
    """Return the app as granian's RSGI worker runs it (the factory `cityos serve` names).

    /public/ files are answered on RSGI's fast lane; everything else goes to the ASGI app.
    """
    app = create_app(from_env())
    files: PublicFiles = app.files  # type: ignore[attr-defined]
    bridge = RsgiBridge(app, lifespan=app.lifespan, fast=files.rsgi)  # type: ignore[attr-defined]
    tune_gc()
    return bridge


#: objects allocated between collections of the youngest generation (Python's default: 700)
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """Collect cyclic garbage less often in a server worker.

    A page of 20 entities allocates thousands of short-lived dicts and lists, which freed by
    reference counting need no collector; at the default threshold the collector ran every few
    requests and took ~15 % of a worker's time (bench/million.py, q text: 610-660 req/s at
    700, 700-770 at 20,000). What exists once the app is built (modules, contexts, caches)
    is frozen out of collections for good.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _share_revocations(cluster: Cluster, identity: Identity) -> None:
    """A key or token revoked in one worker or command stops working in every worker at once."""
    if not cluster.shared:
        return

    async def announce(prefix: str) -> None:
        await cluster.publish(CacheDrop(KEYS_CACHE, prefix))

    def dropped(event: CacheDrop) -> None:
        if event.name == KEYS_CACHE and event.key is not None:
            identity.forget(event.key)
        elif event.name == TOKENS_CACHE:
            identity.forget_tokens()

    identity.announce = announce
    cluster.on(CacheDrop, dropped)


def create_app(settings: Settings) -> ASGIApp:
    """Return the cityos ASGI application for these settings."""
    store = make_storage(settings)
    loader = ContextLoader(
        context_dir=settings.context_dir,
        remote_fetch=settings.remote_contexts,
        hosted_base=settings.base_url + contexts_api.PATH + "/",
        shipped={
            f"{settings.base_url}{PROJECT_PATH}/{name}": path
            for name, path in PROJECT_CONTEXTS.items()
        },
    )
    cluster = Cluster(
        settings.bus_url,
        settings.database_url if settings.engine == "postgresql" else None,
        namespace=settings.bus_namespace,
    )
    broker = Broker(store, loader, settings, cluster)
    if isinstance(store, SqliteStorage | PostgresStorage):
        for rule in rules.RULES:
            store.add_rule(rule)
    ready = False

    @contextlib.asynccontextmanager
    async def lifespan(_: object) -> AsyncIterator[None]:
        nonlocal ready
        await store.start()
        await contexts_api.restore(broker)
        await cluster.start()  # before the jobs: they ask whether this worker leads
        for start in broker.on_start:
            await start()
        ready = True
        try:
            yield
        finally:
            ready = False
            for stop in reversed(broker.on_stop):
                await stop()
            await cluster.stop()
            await loader.close()
            await store.close()

    async def health(_: Request) -> Response:
        status = 200 if ready else 503
        return JSONResponse(
            {"status": "ok" if ready else "starting", "version": __version__}, status
        )

    files = public_files(settings)
    catalog = Catalog(broker)
    keys, audit = engines.keys(store), engines.audit(store)
    broker.on_start.append(keys.setup)
    broker.on_start.append(audit.setup)
    staff = engines.users(store)
    broker.on_start.append(staff.setup)
    accounts = Accounts(staff)
    oidc = OidcVerifier(settings.oidc) if settings.oidc is not None else None
    identity = Identity(keys, token_user=catalog.user_for_token, oidc=oidc)
    _share_revocations(cluster, identity)
    policy = Policy.from_settings(settings.public_types, settings.public_tenants)
    table = (
        entities.routes(broker)
        + query.routes(broker)
        + batch.routes(broker)
        + discovery.routes(broker)
        + contexts_api.routes(broker)
        + subscriptions.routes(broker)
        + temporal.routes(broker)
        + iot_api.routes(broker)
        + portal_routes(broker, files=files)
        + catalog_routes(broker, catalog)
        + files_routes(catalog)
        + dump_routes(catalog)
        + dcat_routes(catalog)
        + pages_routes(catalog)
        + admin_routes(
            accounts=accounts,
            sessions=Sessions(staff),
            identity=identity,
            audit=audit,
            policy=policy,
            enforce=settings.auth == "on",
            https=settings.base_url.startswith("https://"),
        )
    )
    router = Router(
        [Route("/-/health", health, methods=["GET", "HEAD"]), *grouped(table)],
        lifespan=lifespan,
        default=not_found_app(),
        redirect_slashes=False,
    )
    app: ASGIApp = TrailingSlashMiddleware(router)
    app = guard = AuthMiddleware(
        app,
        identity=identity,
        audit=audit,
        policy=policy,
        enforce=settings.auth == "on",
        anonymous_limit=Limit.parse(settings.rate_limit),
        key_limit=Limit.parse(settings.key_rate_limit),
    )
    broker.on_stop.append(guard.drain)  # the last audit records, before storage closes
    # after audit.setup: the policy in force, with the identity provider trusted
    issuer = settings.oidc.issuer if settings.oidc is not None else None
    broker.on_start.append(functools.partial(guard.announce, oidc_issuer=issuer))
    app = ErrorMiddleware(app)
    # CORS outside auth: a browser's preflight carries no key
    app = CorsMiddleware(app, origins=settings.cors_origins)
    app = SecurityHeadersMiddleware(app, tile_url=settings.portal_tile_url)
    app = portal_front(app, files)  # /public/ first; its .files is the RSGI fast lane
    app.broker = broker  # type: ignore[attr-defined]  # for tests and the CLI
    app.catalog = catalog  # type: ignore[attr-defined]  # for tests and the CLI
    app.identity = identity  # type: ignore[attr-defined]  # revocations in this process
    app.audit = audit  # type: ignore[attr-defined]  # for tests
    app.users = accounts  # type: ignore[attr-defined]  # staff accounts, for tests and the CLI
    app.guard = guard  # type: ignore[attr-defined]  # tests wait for its audit records
    app.lifespan = lifespan  # type: ignore[attr-defined]  # run the app's life without serving
    return app
