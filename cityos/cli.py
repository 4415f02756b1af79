"""The `cityos` command."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
import uvicorn

from cityos import __version__
from cityos.settings import Settings, SettingsError, from_env

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _settings(**overrides: object) -> Settings:
    try:
        settings = from_env().with_overrides(**overrides)
        if settings.engine == "sqlite":
            _ = settings.sqlite_path  # a bad URL scheme is refused here
        if error := settings.workers_error():
            raise SettingsError(error)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    return settings


def _check_exposure(settings: Settings) -> None:
    """Refuse auth off beyond loopback; warn loudly about auth off on loopback."""
    refusal = settings.exposure_error()
    if refusal is not None:
        raise click.ClickException(refusal)
    if settings.auth == "off":
        click.echo(
            "WARNING: CITYOS_AUTH=off: anyone who can reach this machine's loopback may write "
            "and administer; set CITYOS_AUTH=on before exposing it",
            err=True,
        )


def run_server(settings: Settings, *, access_log: bool = False) -> None:
    """Serve the app with granian until SIGINT/SIGTERM, then drain and stop.

    granian parses HTTP in Rust: under 1,000 connections it served the portal's snapshots at
    twice uvicorn's rate without uvicorn's multi-second tail, and its RSGI interface answers
    them in one call (bench/RESULTS.md, issue 5). Its worker builds the app from the
    environment, so the settings travel there as CITYOS_*.
    """
    from granian import Granian
    from granian.constants import Interfaces

    from cityos.app import create_app
    from cityos.bus.base import redact
    from cityos.datadir import check_database
    from cityos.storage.sqlite import SchemaError

    _check_exposure(settings)
    check_database(settings)
    try:
        create_app(settings)  # refuse bad settings here, with a message, not in the worker
        _check_port(settings.host, settings.port)
    except (SettingsError, SchemaError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    os.environ.update(
        {
            "CITYOS_HOST": settings.host,
            "CITYOS_PORT": str(settings.port),
            "CITYOS_DATA_DIR": str(settings.data_dir),
            "CITYOS_WORKERS": str(settings.workers),
        }
    )
    workers = f", {settings.workers} workers" if settings.workers > 1 else ""
    bus = f", bus: {redact(settings.bus_url)}" if settings.bus_url else ""
    click.echo(
        f"cityos {__version__}: NGSI-LD at http://{settings.host}:{settings.port}/ngsi-ld/v1 "
        f"(data: {settings.database_label}{workers}{bus})",
        err=True,
    )
    Granian(
        "cityos.app:rsgi_app_from_env",
        address=settings.host,
        port=settings.port,
        interface=Interfaces.RSGI,
        websockets=False,
        factory=True,
        workers=settings.workers,
        respawn_failed_workers=True,  # a worker that dies is started again
        backlog=4096,
        log_access=access_log,
        workers_kill_timeout=30,
    ).serve()


def _check_port(host: str, port: int) -> None:
    """Fail early and plainly when the address is taken (granian would print a backtrace)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


class GracefulServer(uvicorn.Server):
    """uvicorn's server, ending with exit status 0 after a graceful SIGTERM/SIGINT shutdown.

    uvicorn re-raises the signal once it has shut down, so a clean stop would look like a
    crash (status 143) to process supervisors and scripts.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {s: signal.signal(s, self.handle_exit) for s in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


F = TypeVar("F", bound=Callable[..., Any])


def server_options(command: F) -> F:
    """Add the --host, --port and --data-dir options every server command takes."""
    command = click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Folder for the SQLite database [env CITYOS_DATA_DIR; ./cityos-data]",
    )(command)
    command = click.option(
        "--port", type=int, default=None, help="TCP port [env CITYOS_PORT; 8000]"
    )(command)
    return click.option(
        "--host", default=None, help="Interface to listen on [env CITYOS_HOST; 127.0.0.1]"
    )(command)


@click.group()
@click.version_option(__version__, prog_name="cityos")
def main() -> None:
    """cityos: a City OS (NGSI-LD context broker and data platform)."""


@main.command()
@server_options
@click.option("--access-log/--no-access-log", default=False, help="Log every request")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes; above 1 needs PostgreSQL and CITYOS_BUS_URL [env CITYOS_WORKERS; 1]",
)
def serve(
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    access_log: bool,
    workers: int | None,
) -> None:
    """Run the cityos server (NGSI-LD API under /ngsi-ld/v1, health at /-/health)."""
    settings = _settings(host=host, port=port, data_dir=data_dir, workers=workers)
    run_server(settings, access_log=access_log)


#: about 2.5 minutes for the 21 simulated hours of typhoon-2019
DEFAULT_DEMO_SPEED = 500.0


@main.command()
@server_options
@click.option(
    "--scenario",
    type=click.Choice(["typhoon-2019"]),
    default="typhoon-2019",
    show_default=True,
    help="Scenario to replay",
)
@click.option(
    "--speed",
    type=click.FloatRange(min=1.0),
    default=DEFAULT_DEMO_SPEED,
    show_default=True,
    help="Simulated seconds per real second",
)
@click.option("--once", is_flag=True, help="Run the scenario to its end, print a summary, exit")
@click.option(
    "--serve/--no-serve",
    default=True,
    help="--no-serve: only load the Sano data set and provision its devices, then exit",
)
def demo(
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    scenario: str,
    speed: float,
    once: bool,
    serve: bool,
) -> None:
    """Run the Sano demo: a server, the data set, and a typhoon replayed by simulated devices."""
    import asyncio

    settings = _settings(host=host, port=port, data_dir=data_dir)
    if not serve:
        n = asyncio.run(_demo_load(settings))
        click.echo(
            f"loaded {n} demo entities of Sano (佐野市) into {settings.database_label}", err=True
        )
        return
    asyncio.run(_demo_serve(settings, scenario, speed, once))


async def _demo_key(app: Any, settings: Settings) -> str | None:
    """With auth on, give the demo's devices and staff a key of their own (valid one day)."""
    if settings.auth != "on":
        return None
    import time

    _, key = await app.identity.store.create_key(
        "cityos-demo", roles=["steward", "operator"], tenants=[""], expires=time.time() + 86400
    )
    return str(key)


async def _demo_load(settings: Settings) -> int:
    """Load the data set through the public API of an in-process app (no socket)."""
    import httpx

    from cityos.app import create_app
    from cityos.demo import runner
    from cityos.demo.catalog import publish_live_datasets

    app: Any = create_app(settings)
    async with app.lifespan(app):
        transport = httpx.ASGITransport(app=app)
        key = await _demo_key(app, settings)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://cityos.demo", headers=headers
        ) as c:
            n: int = await runner.prepare(c)
        await publish_live_datasets(app.catalog)
        return n


async def _demo_serve(settings: Settings, name: str, speed: float, once: bool) -> None:
    """Serve the app and run the scenario against it over HTTP (and MQTT when configured)."""
    import asyncio

    from cityos.app import create_app
    from cityos.datadir import check_database
    from cityos.demo import runner
    from cityos.demo.catalog import publish_live_datasets
    from cityos.demo.scenario import SCENARIOS
    from cityos.storage.sqlite import SchemaError

    _check_exposure(settings)
    check_database(settings)
    try:
        app = create_app(settings)
    except (SettingsError, SchemaError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    server = GracefulServer(config)
    base = f"http://{settings.host}:{settings.port}"
    click.echo(f"cityos {__version__} demo: {base}/ngsi-ld/v1 (data: {settings.database_label})")
    _demo_urls(base)  # open them while the scenario unfolds
    serving = asyncio.create_task(server.serve())

    async def play() -> runner.Summary:
        while not server.started:  # the catalog's tables exist once the app has started
            if serving.done():
                raise runner.DemoError("the server did not start")
            await asyncio.sleep(0.05)
        await publish_live_datasets(app.catalog)  # type: ignore[attr-defined]
        key = await _demo_key(app, settings)
        return await runner.run(base, SCENARIOS[name](), speed, mqtt=settings.mqtt, api_key=key)

    playing = asyncio.create_task(play())
    await asyncio.wait({serving, playing}, return_when=asyncio.FIRST_COMPLETED)
    if not playing.done():  # Ctrl-C, or the server could not start
        playing.cancel()
        with contextlib.suppress(asyncio.CancelledError, runner.DemoError):
            await playing
        await serving
        if not server.started:
            raise SystemExit(1)
        return
    try:
        summary = playing.result()
    except (runner.DemoError, OSError) as exc:
        server.should_exit = True
        await serving
        raise click.ClickException(str(exc)) from None
    for line in summary.lines():
        click.echo(line)
    if once:
        server.should_exit = True
    else:
        click.echo("serving until Ctrl-C", err=True)
    await serving


@main.command()
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write the site into (created if needed)",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder holding the SQLite database [env CITYOS_DATA_DIR; ./cityos-data]",
)
@click.option(
    "--surge/--no-surge",
    default=None,
    help="Publish the top page as the light page or not [default: the server's switch]",
)
def publish(to: Path, data_dir: Path | None, surge: bool | None) -> None:
    """Write a full copy of the resident portal (HTML, JSON, assets) into a folder."""
    import asyncio

    settings = _settings(data_dir=data_dir)
    for w in asyncio.run(_publish(settings, to, surge)):
        state = "written" if w.changed else "unchanged"
        gz = f" (+ .gz {w.gz_size} bytes)" if w.gz_size is not None else ""
        click.echo(f"{state:9} {w.path}  {w.size} bytes{gz}")
    click.echo(f"published the portal into {to}", err=True)


async def _publish(settings: Settings, to: Path, surge: bool | None) -> list[Any]:
    """Open the store (not the whole app: no publisher, no MQTT), build once, write to `to`."""
    import asyncio

    from cityos.app import make_storage
    from cityos.datadir import check_database
    from cityos.portal import surge as surge_switch
    from cityos.portal.api import site_builder
    from cityos.portal.publisher import write_files

    if settings.engine == "sqlite" and not settings.sqlite_path.exists():
        raise click.ClickException(f"no database at {settings.sqlite_path}; check --data-dir")
    check_database(settings)
    store = make_storage(settings)
    await store.start()
    try:
        if surge is None:
            surge = (await surge_switch.load(store)).surge
        files = await site_builder(store, tile_url=settings.portal_tile_url)(surge=surge)
    finally:
        await store.close()
    try:
        return await asyncio.to_thread(write_files, to, files)
    except OSError as exc:
        raise click.ClickException(f"cannot write into {to}: {exc}") from None


@main.command()
@click.argument("state", type=click.Choice(["on", "off", "status"]))
@click.option(
    "--url",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="Base URL of the running cityos server",
)
@click.option(
    "--key",
    envvar="CITYOS_API_KEY",
    default=None,
    help="An operator's API key, needed when the server runs with CITYOS_AUTH=on "
    "[env CITYOS_API_KEY]",
)
def surge(state: str, url: str, key: str | None) -> None:
    """Switch surge mode (the top page becomes the light text-only page) on a running server."""
    import httpx

    endpoint = url.rstrip("/") + "/admin/portal/surge"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        if state == "status":
            r = httpx.get(endpoint, timeout=5, headers=headers)
        else:
            # the server answers once the switched pages are published
            r = httpx.put(endpoint, json={"surge": state == "on"}, timeout=30, headers=headers)
    except httpx.TransportError as exc:
        raise click.ClickException(
            f"cannot reach cityos at {url} ({exc}); is `cityos serve` running there?"
        ) from None
    if r.status_code != 200:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise click.ClickException(f"{endpoint} answered {r.status_code}: {detail}")
    doc = r.json()
    mode = "on (the top page is the light page)" if doc.get("surge") else "off"
    click.echo(f"surge mode is {mode}; switched at {doc.get('changedAt') or 'never'}")
    if doc.get("published") is False:
        click.echo("warning: the pages are not republished yet; see the server log", err=True)


def _demo_urls(base: str) -> None:
    api = f"{base}/ngsi-ld/v1"
    near = "georel=near;maxDistance==3000&geometry=Point&coordinates=%5B139.5783,36.3144%5D"
    gauge = "urn:ngsi-ld:WaterObserved:sano-akiyama-ohashi"
    click.echo("open:")
    click.echo(f"  resident portal (住民向けページ): {base}/public/  (English: {base}/public/en/)")
    click.echo(f"  open data catalog (オープンデータ): {base}/dataset")
    click.echo(f"  administration (管理: keys, staff, audit log): {base}/admin/")
    for what, url in (
        ("river gauges", f"{api}/entities?type=WaterObserved&options=keyValues&lang=ja"),
        ("flood alerts", f"{api}/entities?type=Alert&options=keyValues"),
        ("shelters near the city hall", f"{api}/entities?type=EvacuationShelter&{near}&lang=ja"),
        (
            "the Akiyama at Ohashi, history",
            f"{api}/temporal/entities/{gauge}?attrs=waterLevel&options=temporalValues",
        ),
        ("AEDs", f"{api}/entities?type=PointOfInterest&q=category==%22defibrillator%22"),
        ("catalog API (CKAN)", f"{base}/api/3/action/package_search?q=%E9%81%BF%E9%9B%A3"),
        ("DCAT", f"{base}/catalog.ttl"),
    ):
        click.echo(f"  {what}: {url}")


def _register_commands() -> None:
    from cityos.auth.audit_cli import audit_group
    from cityos.auth.keys_cli import keys_group
    from cityos.auth.users_cli import users_group
    from cityos.catalog.standard.cli import import_command
    from cityos.catalog.tokens_cli import token_group
    from cityos.db_cli import db_group
    from cityos.dump.cli import export_command
    from cityos.dump.cli import import_command as import_dump_command

    main.add_command(db_group)
    main.add_command(token_group)
    main.add_command(import_command)
    main.add_command(keys_group)
    main.add_command(audit_group)
    main.add_command(users_group)
    main.add_command(export_command)
    main.add_command(import_dump_command)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
