"""`cityos db upgrade`: apply the database's pending schema migrations."""

from __future__ import annotations

import asyncio

import click

from cityos.settings import SettingsError, from_env


@click.group("db")
def db_group() -> None:
    """Manage the database schema."""


@db_group.command("upgrade")
@click.option(
    "--database-url",
    envvar="CITYOS_DATABASE_URL",
    help="The database (default: CITYOS_DATABASE_URL)",
)
def upgrade(database_url: str | None) -> None:
    """Apply pending schema migrations (PostgreSQL); SQLite upgrades itself at start."""
    try:
        settings = from_env().with_overrides(database_url=database_url or None)
        if settings.engine == "sqlite":
            _ = settings.sqlite_path  # refuses a URL of another scheme
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    if settings.engine != "postgresql":
        click.echo("SQLite: the schema is created and upgraded when cityos starts; nothing to do")
        return
    from cityos.storage.pg_schema import SchemaError
    from cityos.storage.pg_schema import upgrade as run_upgrade

    assert settings.database_url is not None
    try:
        applied = asyncio.run(run_upgrade(settings.database_url))
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, ConnectionError) as exc:
        raise click.ClickException(f"cannot reach the database: {exc}") from None
    if applied:
        click.echo("applied migrations " + ", ".join(str(v) for v in applied))
    else:
        click.echo("the schema is up to date")
