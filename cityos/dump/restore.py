"""Load a dump into an empty installation: built aside, moved into place only when complete."""

from __future__ import annotations

import base64
import binascii
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Final

from cityos.catalog.errors import CkanError
from cityos.dump.export import PROGRESS_EVERY, Progress
from cityos.dump.format import DumpError, DumpReader, decode_row
from cityos.dump.installation import (
    DATASTORE_SECTIONS,
    ENTITY_SECTIONS,
    FILE,
    SEQUENCE,
    Installation,
    table_loaders,
)
from cityos.storage.sqlite import DumpRow, SqliteStorage, load_sequence
from cityos.storage.sqlite_audit import AuditStore
from cityos.storage.sqlite_auth import AuthStore
from cityos.storage.sqlite_catalog import CatalogStore
from cityos.storage.sqlite_datastore import DatastoreStore
from cityos.storage.sqlite_history import SqliteHistory
from cityos.storage.sqlite_iot import IotStore
from cityos.storage.sqlite_live import LiveStore
from cityos.storage.sqlite_subscriptions import Registry, SubscriptionStore
from cityos.storage.sqlite_users import UserStore

#: records per writer job: big enough to load fast, small enough to keep memory flat
BATCH: Final = 1000

Write = Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]


def _batches(
    records: Iterator[tuple[str, dict[str, Any]]],
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Group consecutive records of one section, BATCH at most."""
    section, batch = "", list[dict[str, Any]]()
    for s, record in records:
        if batch and (s != section or len(batch) >= BATCH):
            yield section, batch
            batch = []
        section = s
        batch.append(record)
    if batch:
        yield section, batch


def _safe(rel: str) -> PurePosixPath:
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or ".." in path.parts:
        raise DumpError(f"the dump names a file outside the files folder: {rel!r}")
    return path


def _write_pieces(root: Path, pieces: Sequence[DumpRow]) -> None:
    for piece in pieces:
        path = root / _safe(str(piece["path"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        offset = int(piece["offset"])
        if offset != (path.stat().st_size if path.exists() else 0):
            raise DumpError(f"the dump's pieces of {piece['path']} are out of order")
        try:
            data = base64.b64decode(piece["data"], validate=True)
        except binascii.Error:
            raise DumpError(f"the dump's piece of {piece['path']} is not base64") from None
        with path.open("ab" if offset else "wb") as f:
            f.write(data)


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
            _write_pieces(self.staged.files, batch)
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
    source: Path, inst: Installation, progress: Progress = lambda n, section: None
) -> Counter[str]:
    """Load the dump at source into inst, which must be empty; return records per section."""
    found = inst.contents()
    if found is not None:
        raise DumpError(
            f"the target installation is not empty ({found}); import-dump only fills an "
            "empty one. Point --data-dir at a new folder."
        )
    reader = DumpReader(source)  # refuses a foreign or newer file before anything is made
    staged = inst.staging()
    counts: Counter[str] = Counter()
    try:
        staged.remove()  # what an interrupted import left behind
        target = _Target(staged)
        await target.start()
        try:
            for section, batch in _batches(reader.records()):
                await target.load(section, batch)
                before = sum(counts.values())
                counts[section] += len(batch)
                if before // PROGRESS_EVERY != sum(counts.values()) // PROGRESS_EVERY:
                    progress(sum(counts.values()), section)
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
    return counts
