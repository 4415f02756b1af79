"""The `cityos` command."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cityos import __version__
from cityos.settings import Settings, SettingsError, from_env


def _settings(**overrides: object) -> Settings:
    try:
        settings = from_env().with_overrides(**overrides)
        _ = settings.sqlite_path
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    return settings


def run_server(settings: Settings, *, access_log: bool = False) -> None:
    """Serve the app with uvicorn until SIGINT/SIGTERM, then drain and stop."""
    import uvicorn

    from cityos.app import create_app

    try:
        app = create_app(settings)
    except (SettingsError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"cityos {__version__}: NGSI-LD at http://{settings.host}:{settings.port}/ngsi-ld/v1 "
        f"(data: {settings.sqlite_path})",
        err=True,
    )
    uvicorn.run(
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


@click.group()
@click.version_option(__version__, prog_name="cityos")
def main() -> None:
    """cityos: a City OS (NGSI-LD context broker and data platform)."""


@main.command()
@click.option("--host", default=None, help="Interface to listen on [env CITYOS_HOST; 127.0.0.1]")
@click.option("--port", type=int, default=None, help="TCP port [env CITYOS_PORT; 8000]")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the SQLite database [env CITYOS_DATA_DIR; ./cityos-data]",
)
@click.option("--access-log/--no-access-log", default=False, help="Log every request")
def serve(host: str | None, port: int | None, data_dir: Path | None, access_log: bool) -> None:
    """Run the cityos server (NGSI-LD API under /ngsi-ld/v1, health at /-/health)."""
    run_server(_settings(host=host, port=port, data_dir=data_dir), access_log=access_log)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
