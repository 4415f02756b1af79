"""Commands that work on a data dir's SQLite file without a server (tokens, keys, audit)."""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final, TypeVar

import click

from cityos.storage.sqlite import SqliteStorage

T = TypeVar("T")

#: the --data-dir option every such command takes
DATA_DIR: Final = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder holding the SQLite database [env CITYOS_DATA_DIR; ./cityos-data]",
)


def with_storage(data_dir: Path | None, job: Callable[[SqliteStorage], Awaitable[T]]) -> T:
    """Open the data dir's database (created if needed), run job on it, close it."""
    from cityos.cli import _settings
    from cityos.storage.sqlite import SchemaError, check_schema

    settings = _settings(data_dir=data_dir)
    try:
        check_schema(settings.sqlite_path)
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from None

    async def run() -> T:
        store = SqliteStorage(settings.sqlite_path)
        await store.start()
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
