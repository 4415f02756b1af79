"""SQLite table of the catalog's live datasets: dataset name -> the NGSI-LD query behind it."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Final

from cityos.storage.sqlite import SqliteStorage

DDL: Final = """CREATE TABLE IF NOT EXISTS catalog_live(
    name TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    query TEXT NOT NULL,
    created REAL NOT NULL
)"""


@dataclass(frozen=True, slots=True)
class LiveDefinition:
    name: str  # the catalog dataset's name
    tenant: str  # whose entities (NGSILD-Tenant; "" is the default)
    query: str  # NGSI-LD query parameters, e.g. "type=WaterObserved&q=..."


class LiveStore:
    """Live dataset definitions in the broker's SQLite file."""

    def __init__(self, store: SqliteStorage) -> None:
        self._store = store

    async def setup(self) -> None:
        """Create the table if needed."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(DDL)

        await self._store.write(run)

    async def save(self, d: LiveDefinition) -> None:
        """Add or replace a definition."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO catalog_live(name, tenant, query, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET tenant=excluded.tenant, query=excluded.query",
                (d.name, d.tenant, d.query, time.time()),
            )

        await self._store.write(run)

    async def delete(self, name: str) -> None:
        """Forget a definition (its dataset stays in the catalog as it was)."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM catalog_live WHERE name=?", (name,))

        await self._store.write(run)

    async def all(self) -> list[LiveDefinition]:
        """Return every definition, by name."""

        def run(conn: sqlite3.Connection) -> list[LiveDefinition]:
            rows = conn.execute("SELECT name, tenant, query FROM catalog_live ORDER BY name")
            return [LiveDefinition(*row) for row in rows]

        result: list[LiveDefinition] = await self._store.read(run)
        return result
