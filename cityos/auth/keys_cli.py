"""`cityos keys`: create, list and revoke API keys for apps and devices."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import click

from cityos.auth import keys
from cityos.auth.audit import Entry
from cityos.auth.context import KEYS_CACHE
from cityos.auth.keys import Credential, KeyInputError
from cityos.auth.policy import ROLES
from cityos.bus import CacheDrop
from cityos.datadir import DATA_DIR, cli_actor, tell_running_workers, with_storage
from cityos.storage import engines
from cityos.storage.base import Storage
from cityos.storage.engines import Keys

T = TypeVar("T")


def _audited(action: str, prefix: str, cred: Credential | None) -> Entry:
    """Return the audit record of a key change (no key found: an error)."""
    if cred is None:
        return Entry(cli_actor(), action, f"key:{prefix}", outcome="error", detail={"found": False})
    return Entry(
        actor=cli_actor(),
        action=action,
        target=f"key:{cred.prefix}",
        tenant=",".join(cred.tenants)[:200],
        detail={"name": cred.name, "roles": list(cred.roles)},
    )


def _run(
    data_dir: Path | None,
    job: Callable[[Keys], Awaitable[T]],
    audit: Callable[[T], Entry] | None = None,
) -> T:
    """Run job on the key store of the data dir, then append its audit record."""

    async def run(store: Storage) -> T:
        auth = engines.keys(store)
        await auth.setup()
        result = await job(auth)
        if audit is not None:
            log = engines.audit(store)
            await log.setup()
            await log.append(audit(result))
        return result

    return with_storage(data_dir, run)


def _when(t: float | None, never: str = "never") -> str:
    if t is None:
        return never
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _tenants(c: Credential) -> str:
    return ",".join("(default)" if t == "" else t for t in c.tenants)


def _line(c: Credential, now: float) -> str:
    if c.revoked is not None:
        state = f"revoked {_when(c.revoked)}"
    elif not c.active(now):
        state = "expired"
    else:
        state = "active"
    return (
        f"{c.prefix}  {c.name}  roles={','.join(c.roles)}  tenants={_tenants(c)}  "
        f"scopes={','.join(c.scopes)}  created={_when(c.created)}  "
        f"expires={_when(c.expires)}  last_used={_when(c.last_used)}  {state}"
    )


@click.group("keys")
def keys_group() -> None:
    """Create, list and revoke API keys for apps and devices."""


@keys_group.command("create")
@click.option("--name", required=True, help="What the key is for (an app, a device, a person)")
@click.option(
    "--role",
    "roles",
    multiple=True,
    required=True,
    type=click.Choice(sorted(ROLES)),
    help="A role of the key (repeat for several)",
)
@click.option(
    "--tenant",
    "tenants",
    multiple=True,
    required=True,
    help="A tenant the key belongs to (repeat; '' is the default tenant, '*' every tenant)",
)
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    help="area:action the key may use, e.g. entities:read (repeat; default '*': its roles' all)",
)
@click.option("--expires", default=None, help="When it expires: 90d, 12h, 4w, 2027-01-01")
@DATA_DIR
def create(
    name: str,
    roles: tuple[str, ...],
    tenants: tuple[str, ...],
    scopes: tuple[str, ...],
    expires: str | None,
    data_dir: Path | None,
) -> None:
    """Make a key and print it (once: only its hash is kept)."""
    now = time.time()
    try:
        # everything is checked before the database is opened
        keys.check_name(name)
        keys.check_tenants(tenants)
        keys.check_scopes(scopes)
        until = None if expires is None else keys.parse_expiry(expires, now)
    except KeyInputError as exc:
        raise click.UsageError(str(exc)) from None
    cred, plaintext = _run(
        data_dir,
        lambda auth: auth.create_key(
            name, roles=roles, tenants=tenants, scopes=scopes, expires=until, now=now
        ),
        lambda made: _audited("key.create", made[0].prefix, made[0]),
    )
    click.echo(plaintext)
    click.echo(
        f"key {cred.prefix} ({cred.name}) created; keep it now, it is not shown again", err=True
    )


@keys_group.command("list")
@DATA_DIR
def list_(data_dir: Path | None) -> None:
    """Show every key: prefix, name, roles, tenants, scopes, times (never the key)."""
    found = _run(data_dir, lambda auth: auth.list_keys())
    now = time.time()
    for c in found:
        click.echo(_line(c, now))
    if not found:
        click.echo("no keys", err=True)


@keys_group.command("revoke")
@click.argument("prefix")
@DATA_DIR
def revoke(prefix: str, data_dir: Path | None) -> None:
    """Revoke the key whose prefix (as `list` shows it) is PREFIX.

    Running servers stop accepting it at once when CITYOS_BUS_URL names their bus, else
    within 30 seconds (they trust a key they looked up that long).
    """
    try:
        prefix = keys.check_prefix(prefix)
    except KeyInputError as exc:
        raise click.UsageError(str(exc)) from None
    before = time.time()
    found = _run(
        data_dir,
        lambda auth: auth.revoke(prefix),
        lambda cred: _audited("key.revoke", prefix, cred),
    )
    if found is None:
        raise click.ClickException(f"no key has the prefix {prefix}")
    assert found.revoked is not None
    already = "was already revoked" if found.revoked < before else "revoked"
    click.echo(f"{already}: {_line(found, time.time())}")
    tell_running_workers(data_dir, CacheDrop(KEYS_CACHE, prefix))
