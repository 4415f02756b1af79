"""PostgreSQL table of the catalog's live datasets: dataset name -> the NGSI-LD query behind it.

The twin of ``sqlite_live.LiveStore``: same calls, same answers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Final

from cityos.storage.pg_index import Conn
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import DumpRow
from cityos.storage.sqlite_live import LiveDefinition


class PgLiveStore:
    """Live dataset definitions in the PostgreSQL database of a PostgresStorage."""

    def __init__(self, store: PostgresStorage) -> None:
        self._store = store

    #: dump sections, with the columns of LiveStore.dump_rows
    DUMP_SECTIONS: Final = ("live_dataset",)

    @staticmethod
    async def dump_rows(conn: Conn) -> AsyncIterator[tuple[str, DumpRow]]:
        """Yield the live dataset definitions, as LiveStore dumps them."""
        rows = await conn.fetch(
            "SELECT name, tenant, query, created FROM catalog_live ORDER BY rid"
        )
        for row in rows:
            yield "live_dataset", dict(row.items())

    @staticmethod
    async def load_rows(conn: Conn, section: str, rows: Sequence[DumpRow]) -> None:
        """Store dumped rows of a section of dump_rows; a row with a taken name replaces it."""
        if section != "live_dataset":
            raise ValueError(f"not a section of the live dataset store: {section!r}")
        await conn.executemany(
            "INSERT INTO catalog_live(name, tenant, query, created) VALUES($1, $2, $3, $4) "
            "ON CONFLICT (name) DO UPDATE SET tenant=EXCLUDED.tenant, query=EXCLUDED.query, "
            "created=EXCLUDED.created",
            [(r["name"], r["tenant"], r["query"], float(r["created"])) for r in rows],
        )

    async def setup(self) -> None:
        """Do nothing: migration 0004, applied by PostgresStorage.start(), made the table."""

    async def save(self, d: LiveDefinition) -> None:
        """Add or replace a definition."""
        await self._store.pool.execute(
            "INSERT INTO catalog_live(name, tenant, query, created) VALUES($1, $2, $3, $4) "
            "ON CONFLICT (name) DO UPDATE SET tenant=EXCLUDED.tenant, query=EXCLUDED.query",
            d.name,
            d.tenant,
            d.query,
            time.time(),
        )

    async def delete(self, name: str) -> None:
        """Forget a definition (its dataset stays in the catalog as it was)."""
        await self._store.pool.execute("DELETE FROM catalog_live WHERE name=$1", name)

    async def all(self) -> list[LiveDefinition]:
        """Return every definition, by name."""
        rows = await self._store.pool.fetch(
            "SELECT name, tenant, query FROM catalog_live ORDER BY name"
        )
        return [LiveDefinition(*row) for row in rows]
