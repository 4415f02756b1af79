"""The `cityos` command."""

from __future__ import annotations

import contextlib
import signal
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
        _ = settings.sqlite_path
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    return settings


def run_server(settings: Settings, *, access_log: bool = False) -> None:
    """Serve the app with uvicorn until SIGINT/SIGTERM, then drain and stop."""
    from cityos.app import create_app
    from cityos.storage.sqlite import SchemaError, check_schema

    try:
        check_schema(settings.sqlite_path)
        app = create_app(settings)
    except (SettingsError, SchemaError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"cityos {__version__}: NGSI-LD at http://{settings.host}:{settings.port}/ngsi-ld/v1 "
        f"(data: {settings.sqlite_path})",
        err=True,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="auto",
        http="auto",
        lifespan="on",
        access_log=access_log,
        log_level="info",
        timeout_graceful_shutdown=30,
    )
    server = GracefulServer(config)
    server.run()
    if not server.started:
        raise SystemExit(1)


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
def serve(host: str | None, port: int | None, data_dir: Path | None, access_log: bool) -> None:
    """Run the cityos server (NGSI-LD API under /ngsi-ld/v1, health at /-/health)."""
    run_server(_settings(host=host, port=port, data_dir=data_dir), access_log=access_log)


@main.command()
@server_options
@click.option("--serve/--no-serve", default=True, help="Start the server after loading")
def demo(host: str | None, port: int | None, data_dir: Path | None, serve: bool) -> None:
    """Load Sano's demo river gauges and shelters, then run the server."""
    import asyncio

    from cityos.app import create_app
    from cityos.demo.seed import seed

    settings = _settings(host=host, port=port, data_dir=data_dir)

    async def load() -> int:
        # through the whole app, so history and subscriptions see the demo data arrive
        app: Any = create_app(settings)
        async with app.lifespan(app):
            return await seed(app.broker.store)

    n = asyncio.run(load())
    base = f"http://{settings.host}:{settings.port}/ngsi-ld/v1"
    click.echo(f"loaded {n} demo entities of Sano (佐野市) into {settings.sqlite_path}", err=True)
    click.echo(f"  try: curl '{base}/entities?type=WaterObserved&options=keyValues'", err=True)
    click.echo(
        f"  try: curl '{base}/entities?type=PointOfInterest&georel=near;maxDistance==2000"
        "&geometry=Point&coordinates=%5B139.5783,36.3144%5D&lang=ja'",
        err=True,
    )
    if serve:
        run_server(settings)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
