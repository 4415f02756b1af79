"""SQLite table of the catalog's live datasets: dataset name -> the NGSI-LD query behind it."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from cityos.storage.sqlite import DumpRow, DumpTable, SqliteStorage, dump_tables, load_tables

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

    #: (dump section, table, order, rowid too?) of what `cityos export` keeps
    DUMP_TABLES: Final[tuple[DumpTable, ...]] = (("live_dataset", "catalog_live", "rowid", False),)

    @staticmethod
    def dump_rows(conn: sqlite3.Connection) -> Iterator[tuple[str, DumpRow]]:
        """Yield the live dataset definitions."""
        return dump_tables(conn, LiveStore.DUMP_TABLES)

    @staticmethod
    def load_rows(conn: sqlite3.Connection, section: str, rows: Sequence[DumpRow]) -> None:
        """Store dumped rows of a section of dump_rows, keeping their keys."""
        load_tables(conn, LiveStore.DUMP_TABLES, section, rows)

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
