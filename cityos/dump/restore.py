"""Load a dump into an empty installation: built aside, moved into place only when complete."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cityos.catalog.errors import CkanError
from cityos.dump.format import DumpError, DumpReader, decode_row
from cityos.dump.installation import (
    DATASTORE_SECTIONS,
    ENTITY_SECTIONS,
    FILE,
    SEQUENCE,
    Installation,
    table_loaders,
)
from cityos.dump.pg_installation import PgInstallation
from cityos.dump.pg_restore import import_postgres
from cityos.dump.records import Progress, Tally, batches, write_pieces
from cityos.storage.sqlite import SqliteStorage, load_sequence
from cityos.storage.sqlite_audit import AuditStore
from cityos.storage.sqlite_auth import AuthStore
from cityos.storage.sqlite_catalog import CatalogStore
from cityos.storage.sqlite_datastore import DatastoreStore
from cityos.storage.sqlite_history import SqliteHistory
from cityos.storage.sqlite_iot import IotStore
from cityos.storage.sqlite_live import LiveStore
from cityos.storage.sqlite_subscriptions import Registry, SubscriptionStore
from cityos.storage.sqlite_users import UserStore

Write = Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]


class _Target:
    """The staged stores an import writes into (no change hooks: nothing is re-derived)."""

    def __init__(self, staged: Installation) -> None:
        self.staged = staged
        self.main = SqliteStorage(staged.db)
        self.datastore = DatastoreStore(staged.datastore)
        self.tables = table_loaders()

    async def start(self) -> None:
        await self.main.start()
        await SqliteHistory(self.main).start()
        for store in (
            SubscriptionStore(self.main, Registry()),
            IotStore(self.main),
            AuthStore(self.main),
            UserStore(self.main),
            AuditStore(self.main),
            LiveStore(self.main),
            CatalogStore(self.main),
        ):
            await store.setup()
        await self.datastore.start()
        self.staged.files.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        await self.datastore.close()
        await self.main.close()

    async def load(self, section: str, batch: list[dict[str, Any]]) -> None:
        """Store one batch of records of a section."""
        if section == FILE:
            write_pieces(self.staged.files, batch)
            return
        if section in DATASTORE_SECTIONS:
            rows = [
                {**r, "row": decode_row(r["row"])} if section == "datastore_row" else r
                for r in batch
            ]
            await self.datastore.load_dump(section, rows)
            return
        rows = [decode_row(r) for r in batch]
        if section in ENTITY_SECTIONS:
            await self.main.write(lambda c: self.main.load_rows(c, section, rows))
        elif section == SEQUENCE:

            def sequences(conn: sqlite3.Connection) -> None:
                for r in rows:
                    load_sequence(conn, r["table"], int(r["seq"]))

            await self.main.write(sequences)
        elif section in self.tables:
            loader = self.tables[section]
            await self.main.write(lambda c: loader(c, section, rows))
        else:
            raise DumpError(f"the dump has a section this cityos does not know: {section!r}")


async def import_dump(
    source: Path,
    inst: Installation | PgInstallation,
    progress: Progress = lambda n, section: None,
) -> Counter[str]:
    """Load the dump at source into inst, which must be empty; return records per section."""
    if isinstance(inst, PgInstallation):
        return await import_postgres(source, inst, progress)
    found = inst.contents()
    if found is not None:
        raise DumpError(
            f"the target installation is not empty ({found}); import-dump only fills an "
            "empty one. Point --data-dir at a new folder."
        )
    reader = DumpReader(source)  # refuses a foreign or newer file before anything is made
    staged = inst.staging()
    tally = Tally(progress)
    try:
        staged.remove()  # what an interrupted import left behind
        target = _Target(staged)
        await target.start()
        try:
            for section, batch in batches(reader.records()):
                await target.load(section, batch)
                tally.add(section, len(batch))
        finally:
            await target.close()
        inst.replace_by(staged)
    except (sqlite3.Error, CkanError, KeyError, TypeError, ValueError) as exc:
        staged.remove()
        raise DumpError(
            f"the dump does not load ({type(exc).__name__}: {exc}); nothing was imported"
        ) from None
    except BaseException:
        staged.remove()
        raise
    finally:
        reader.close()
    return tally.counts
