"""`cityos token`: create, list and revoke the catalog's API tokens (stored as sha256)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click

from cityos.auth.context import TOKENS_CACHE
from cityos.bus import CacheDrop
from cityos.datadir import DATA_DIR, tell_running_workers, with_storage
from cityos.storage import engines
from cityos.storage.base import Storage
from cityos.storage.engines import CatalogMeta
from cityos.storage.sqlite_catalog import TokenInfo

T = TypeVar("T")


def _run(data_dir: Path | None, job: Callable[[CatalogMeta], Awaitable[T]]) -> T:
    """Run job on the catalog's store of the data dir."""

    async def run(store: Storage) -> T:
        meta = engines.catalog(store)
        await meta.setup()
        return await job(meta)

    return with_storage(data_dir, run)


@click.group("token")
def token_group() -> None:
    """Create, list and revoke the catalog's API tokens."""


@token_group.command("create")
@click.option("--user", required=True, help="The user the token acts as")
@DATA_DIR
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
@DATA_DIR
def list_(data_dir: Path | None) -> None:
    """Show every token: its prefix, user, creation and last use."""
    tokens = _run(data_dir, lambda meta: meta.list_tokens())
    for t in tokens:
        click.echo(_line(t))
    if not tokens:
        click.echo("no tokens", err=True)


@token_group.command("revoke")
@click.argument("prefix")
@DATA_DIR
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
    tell_running_workers(data_dir, CacheDrop(TOKENS_CACHE))
