"""`cityos token`: create, list and revoke the catalog's API tokens (stored as sha256)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click

from cityos.storage.sqlite_catalog import CatalogStore, TokenInfo

T = TypeVar("T")

_DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder holding the SQLite database [env CITYOS_DATA_DIR; ./cityos-data]",
)


def _run(data_dir: Path | None, job: Callable[[CatalogStore], Awaitable[T]]) -> T:
    """Open the database (created if needed), run job on the catalog's store, close."""
    from cityos.cli import _settings
    from cityos.storage.sqlite import SchemaError, SqliteStorage, check_schema

    settings = _settings(data_dir=data_dir)
    try:
        check_schema(settings.sqlite_path)
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from None

    async def run() -> T:
        store = SqliteStorage(settings.sqlite_path)
        await store.start()
        try:
            meta = CatalogStore(store)
            await meta.setup()
            return await job(meta)
        finally:
            await store.close()

    return asyncio.run(run())


@click.group("token")
def token_group() -> None:
    """Create, list and revoke the catalog's API tokens."""


@token_group.command("create")
@click.option("--user", required=True, help="The user the token acts as")
@_DATA_DIR
def create(user: str, data_dir: Path | None) -> None:
    """Make a token and print it (once: only its hash is kept)."""
    if not user.strip():
        raise click.UsageError("--user must not be empty")
    token = _run(data_dir, lambda meta: meta.create_token(user.strip()))
    click.echo(token)
    click.echo(f"token for {user.strip()} created; keep it now, it is not shown again", err=True)


def _line(t: TokenInfo) -> str:
    return f"{t.prefix}…  {t.user:20}  created {t.created}  last used {t.last_used or 'never'}"


@token_group.command("list")
@_DATA_DIR
def list_(data_dir: Path | None) -> None:
    """Show every token: its prefix, user, creation and last use."""
    tokens = _run(data_dir, lambda meta: meta.list_tokens())
    for t in tokens:
        click.echo(_line(t))
    if not tokens:
        click.echo("no tokens", err=True)


@token_group.command("revoke")
@click.argument("prefix")
@_DATA_DIR
def revoke(prefix: str, data_dir: Path | None) -> None:
    """Revoke the token whose prefix (as `list` shows it) starts with PREFIX."""
    prefix = prefix.rstrip("…")
    if len(prefix) < 8:
        raise click.UsageError("give at least 8 characters of the token's prefix")
    found = _run(data_dir, lambda meta: meta.revoke_tokens(prefix))
    if not found:
        raise click.ClickException(f"no token starts with {prefix}")
    if len(found) > 1:
        raise click.ClickException(
            f"{len(found)} tokens start with {prefix}; give more characters (nothing revoked)"
        )
    click.echo(f"revoked {_line(found[0])}")
