"""PostgreSQL schema migrations: versioned SQL files applied once, in order, under a lock.

Migrations live in ``cityos/storage/migrations/NNNN_name.sql``. Each pending one runs in the
same transaction as the ``schema_migrations`` row recording it, and that transaction first
takes a transaction-level advisory lock, so workers starting together apply them once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

#: the advisory lock key of migrations ("cityos" in ASCII)
LOCK_KEY = 0x636974796F73

_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


class SchemaError(RuntimeError):
    """The database holds migrations this version of cityos does not know."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Return the migrations shipped with cityos, oldest first."""
    found: list[Migration] = []
    for entry in (resources.files("cityos.storage") / "migrations").iterdir():
        m = _NAME.fullmatch(entry.name)
        if m is not None:
            found.append(Migration(int(m.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda x: x.version)
    return found


async def apply_pending(conn: asyncpg.Connection) -> list[int]:
    """Apply the migrations a database lacks; return the versions applied."""
    known = migrations()
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations("
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        newest = max((m.version for m in known), default=0)
        unknown = sorted(v for v in done if v > newest)
        if unknown:
            raise SchemaError(
                f"the database has schema migration(s) {unknown} from a newer cityos; this "
                f"version knows migrations up to {newest}. Upgrade cityos."
            )
        for m in known:
            if m.version in done:
                continue
            await conn.execute(m.sql)
            await conn.execute("INSERT INTO schema_migrations(version) VALUES($1)", m.version)
            applied.append(m.version)
    return applied


async def upgrade(url: str) -> list[int]:
    """Bring the database at url to the current schema; return the versions applied."""
    conn = await asyncpg.connect(url)
    try:
        return await apply_pending(conn)
    finally:
        await conn.close()
