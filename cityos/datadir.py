"""Commands that work on a data dir's SQLite file without a server (tokens, keys, audit)."""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, TypeVar

import click

from cityos.bus.events import Event
from cityos.settings import Settings
from cityos.storage.base import Storage

T = TypeVar("T")

#: the --data-dir option every such command takes
DATA_DIR: Final = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder holding the SQLite database [env CITYOS_DATA_DIR; ./cityos-data]",
)


def check_database(settings: Settings) -> None:
    """Refuse a database written by a newer cityos, with a message rather than a traceback.

    PostgreSQL: bring its schema up to date first (what every worker would do at start), so
    that workers start on an upgraded schema and an unreachable or newer database is said once.
    """
    from cityos.storage.sqlite import SchemaError, check_schema

    if settings.engine == "postgresql":
        _upgrade_postgres(settings)
        return
    try:
        check_schema(settings.sqlite_path)
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from None


def _upgrade_postgres(settings: Settings) -> None:
    import asyncpg

    from cityos.storage import pg_schema

    assert settings.database_url is not None
    url = settings.database_url
    try:
        # on a thread of its own: a caller may be inside a running event loop (the demo)
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, pg_schema.upgrade(url)).result()
    except pg_schema.SchemaError as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise click.ClickException(
            f"cannot reach the database {settings.database_label}: {exc}"
        ) from None


def with_storage(data_dir: Path | None, job: Callable[[Storage], Awaitable[T]]) -> T:
    """Open the installation's database (created if needed), run job on it, close it."""
    from cityos.app import make_storage
    from cityos.cli import _settings

    settings = _settings(data_dir=data_dir)
    check_database(settings)

    async def run() -> T:
        store = make_storage(settings)
        try:
            await store.start()
        except OSError as exc:
            raise click.ClickException(f"cannot reach the database: {exc}") from None
        try:
            return await job(store)
        finally:
            await store.close()

    return asyncio.run(run())


def cli_actor() -> str:
    """Return who runs a command, as the audit log names them (`cli:<login name>`)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "cli"


def tell_running_workers(data_dir: Path | None, event: Event) -> None:
    """After a revocation by a command: tell the installation's running workers at once over
    its bus, or say how long they may still accept the key or token they cached."""
    from cityos.auth.context import CACHE_TTL
    from cityos.cli import _settings
    from cityos.cluster.node import tell_workers

    settings = _settings(data_dir=data_dir)
    if not asyncio.run(tell_workers(settings.bus_url, settings.bus_namespace, event)):
        click.echo(
            f"running servers stop accepting it within {CACHE_TTL:.0f} s "
            "(at once when CITYOS_BUS_URL names their bus)",
            err=True,
        )
