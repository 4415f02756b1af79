"""`cityos users`: create, list and change the staff accounts that sign in to /admin/."""

from __future__ import annotations

import sys
import time
import unicodedata
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import click
import orjson

from cityos.auth import users
from cityos.auth.audit import Entry
from cityos.auth.users import STAFF_ROLES, Accounts, User, UserInputError
from cityos.datadir import DATA_DIR, cli_actor, with_storage
from cityos.storage import engines
from cityos.storage.base import Storage
from cityos.storage.engines import Users

T = TypeVar("T")


def _run(
    data_dir: Path | None,
    job: Callable[[Accounts], Awaitable[T]],
    audit: Callable[[T], Entry | None] | None = None,
) -> T:
    """Run job on the accounts of the data dir, then append its audit record (if any)."""

    async def run(store: Storage) -> T:
        found = engines.users(store)
        await found.setup()
        result = await job(Accounts(found))
        entry = None if audit is None else audit(result)
        if entry is not None:
            log = engines.audit(store)
            await log.setup()
            await log.append(entry)
        return result

    return with_storage(data_dir, run)


def _entry(action: str, user: User | None, **detail: object) -> Entry | None:
    """Return the audit record of a change to user (None: nothing changed, nothing recorded)."""
    if user is None:
        return None
    return Entry(cli_actor(), action, f"user:{user.name}", detail=detail)


def _password(stdin: bool) -> str:
    """Read a new password from standard input's first line, or a prompt asked twice."""
    if stdin:
        text = sys.stdin.readline().rstrip("\r\n")
    else:
        text = click.prompt(
            "Password (new)", hide_input=True, confirmation_prompt="Password (again)"
        )
    try:
        return users.check_password(text)
    except UserInputError as exc:
        raise click.UsageError(str(exc)) from None


def _when(t: float | None) -> str:
    if t is None:
        return "never"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _state(u: User, now: float) -> str:
    if u.disabled:
        return "disabled"
    return f"locked until {_when(u.locked_until)}" if u.locked(now) else "active"


def _missing(name: str) -> click.ClickException:
    return click.ClickException(f"no user is called {name}")


PASSWORD_STDIN = click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input's first line"
)
NAME = click.argument("name")


@click.group("users")
def users_group() -> None:
    """Create, list and change staff accounts (they sign in to the /admin/ pages)."""


@users_group.command("create")
@NAME
@click.option(
    "--role",
    "roles",
    multiple=True,
    required=True,
    type=click.Choice(sorted(STAFF_ROLES)),
    help="A role of the user (repeat for several)",
)
@click.option(
    "--tenant",
    "tenants",
    multiple=True,
    help="A tenant the user belongs to (repeat; '' is the default tenant, '*' every tenant; "
    "none given: the default tenant)",
)
@click.option("--display-name", default="", help="The user's name as people read it")
@PASSWORD_STDIN
@DATA_DIR
def create(
    name: str,
    roles: tuple[str, ...],
    tenants: tuple[str, ...],
    display_name: str,
    password_stdin: bool,
    data_dir: Path | None,
) -> None:
    """Create the account NAME; its password is asked twice (or read with --password-stdin)."""
    try:
        # everything is checked before a password is asked and the database opened
        users.check_name(name)
        users.check_display_name(display_name)
        users.check_tenants(tenants or ("",))
    except UserInputError as exc:
        raise click.UsageError(str(exc)) from None
    password = _password(password_stdin)

    async def job(accounts: Accounts) -> User | str:
        try:
            return await accounts.create(
                name, password, roles=roles, tenants=tenants or ("",), display_name=display_name
            )
        except UserInputError as exc:
            return str(exc)

    made = _run(
        data_dir,
        job,
        lambda u: (
            None
            if isinstance(u, str)
            else _entry("user.create", u, roles=list(u.roles), tenants=list(u.tenants))
        ),
    )
    if isinstance(made, str):
        raise click.ClickException(made)
    click.echo(f"user {made.name} created: roles={','.join(made.roles)}", err=True)


@users_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table")
@DATA_DIR
def list_(as_json: bool, data_dir: Path | None) -> None:
    """Show every account: name, roles, tenants, state, times (never a password)."""
    found = _run(data_dir, lambda accounts: accounts.store.list_users())
    now = time.time()
    if as_json:
        click.echo(orjson.dumps({"users": [u.as_dict(now) for u in found]}).decode())
        return
    rows = [("NAME", "DISPLAY NAME", "ROLES", "TENANTS", "STATE", "CREATED", "LAST LOGIN")]
    for u in found:
        tenants = ",".join("(default)" if t == "" else t for t in u.tenants)
        rows.append(
            (u.name, u.display_name or "-", ",".join(u.roles), tenants, _state(u, now),
             _when(u.created), _when(u.last_login))
        )  # fmt: skip
    widths = [max(_columns(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell + " " * (w - _columns(cell)) for cell, w in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())
    if not found:
        click.echo("no users", err=True)


@users_group.command("passwd")
@NAME
@PASSWORD_STDIN
@DATA_DIR
def passwd(name: str, password_stdin: bool, data_dir: Path | None) -> None:
    """Give NAME a new password; their open sessions end."""
    password = _password(password_stdin)
    found = _run(
        data_dir,
        lambda accounts: accounts.set_password(name, password),
        lambda u: _entry("user.passwd", u),
    )
    if found is None:
        raise _missing(name)
    click.echo(f"password of {name} changed; their sessions ended", err=True)


def _change(
    action: str, change: Callable[[Users, str], Awaitable[User | None]], done: str
) -> Callable[[str, Path | None], None]:
    """Return the command applying change to the named account and auditing it as action."""

    def command(name: str, data_dir: Path | None) -> None:
        found = _run(
            data_dir,
            lambda accounts: change(accounts.store, name),
            lambda u: _entry(action, u),
        )
        if found is None:
            raise _missing(name)
        click.echo(f"{name} {done}", err=True)

    return command


def _register(name: str, doc: str, command: Callable[[str, Path | None], None]) -> None:
    command.__doc__ = doc
    users_group.command(name)(DATA_DIR(NAME(command)))


_register(
    "disable",
    "Disable NAME: they cannot sign in, and their sessions end.",
    _change("user.disable", lambda s, n: s.set_disabled(n, True), "disabled"),
)
_register(
    "enable",
    "Enable NAME again.",
    _change("user.enable", lambda s, n: s.set_disabled(n, False), "enabled"),
)
_register(
    "unlock",
    "Lift the lock of NAME after too many wrong passwords.",
    _change("user.unlock", lambda s, n: s.unlock(n), "unlocked"),
)
_register(
    "delete",
    "Delete NAME and end their sessions (the audit log keeps what they did).",
    _change("user.delete", lambda s, n: s.delete(n), "deleted"),
)


def _columns(text: str) -> int:
    """Return how many terminal columns text takes (full-width Japanese takes two each)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
