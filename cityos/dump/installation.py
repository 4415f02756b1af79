"""Where an installation keeps its data, which stores dump what, and whether it is empty."""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cityos.settings import Settings
from cityos.storage.sqlite import DumpRow, SqliteStorage, open_snapshot
from cityos.storage.sqlite_audit import AuditStore
from cityos.storage.sqlite_auth import AuthStore
from cityos.storage.sqlite_catalog import CatalogStore
from cityos.storage.sqlite_datastore import DatastoreStore
from cityos.storage.sqlite_history import SqliteHistory
from cityos.storage.sqlite_iot import IotStore
from cityos.storage.sqlite_live import LiveStore
from cityos.storage.sqlite_subscriptions import SubscriptionStore
from cityos.storage.sqlite_users import UserStore

Dumper = Callable[[sqlite3.Connection], Iterator[tuple[str, DumpRow]]]
Loader = Callable[[sqlite3.Connection, str, Sequence[DumpRow]], None]

#: the stores of cityos.db whose tables load with their keys kept, in dump order
TABLE_STORES: Final = (
    SqliteHistory,
    SubscriptionStore,
    IotStore,
    AuthStore,
    UserStore,
    AuditStore,
    LiveStore,
    CatalogStore,
)
#: what cityos.db holds, in dump order (the entities first: they are the bulk)
MAIN_DUMPERS: Final[tuple[Dumper, ...]] = (
    SqliteStorage.dump_rows,
    *(store.dump_rows for store in TABLE_STORES),
)
#: sections of SqliteStorage.dump_rows
ENTITY_SECTIONS: Final = frozenset({"tenant", "entity", "kv"})
SEQUENCE: Final = "sequence"
DATASTORE_SECTIONS: Final = frozenset({"datastore_table", "datastore_row"})
FILE: Final = "file"


def _first_record(path: Path, dumpers: Sequence[Dumper]) -> str | None:
    """Return the section of the first record a database would dump, None if it holds none."""
    conn = open_snapshot(path)
    try:
        for dump in dumpers:
            for section, row in dump(conn):
                # setup() writes the audit log's empty head: that is no content
                if section != "audit_head" or row.get("seq"):
                    return section
        return None
    finally:
        conn.close()


def table_loaders() -> dict[str, Loader]:
    """Return the loader of each section kept as table rows."""
    return {t[0]: store.load_rows for store in TABLE_STORES for t in store.DUMP_TABLES}


@dataclass(frozen=True, slots=True)
class Installation:
    """The files of one installation: the main database, the datastore, uploaded files."""

    db: Path
    datastore: Path
    files: Path

    @classmethod
    def of(cls, settings: Settings) -> Installation:
        """Return the installation a configuration uses."""
        return cls(
            settings.sqlite_path,
            settings.data_dir / "datastore.db",
            settings.data_dir / "catalog" / "files",
        )

    def staging(self) -> Installation:
        """Return where an import builds this installation before moving it into place."""
        return Installation(*(p.with_name(p.name + ".importing") for p in self._paths()))

    def _paths(self) -> tuple[Path, Path, Path]:
        return self.db, self.datastore, self.files

    def contents(self) -> str | None:
        """Return what this installation already holds (first thing found), None if empty."""
        for path, dumpers in (
            (self.db, MAIN_DUMPERS),
            (self.datastore, (DatastoreStore.dump_rows,)),
        ):
            if path.exists():
                try:
                    found = _first_record(path, dumpers)
                except sqlite3.Error as exc:
                    return f"{path} cannot be read: {exc}"
                if found is not None:
                    return f"{found} records in {path}"
        if self.files.is_dir() and any(p.is_file() for p in self.files.rglob("*")):
            return f"uploaded files in {self.files}"
        return None

    def remove(self) -> None:
        """Delete the databases (with their WAL files) and the files folder."""
        for db in (self.db, self.datastore):
            for suffix in ("", "-wal", "-shm", "-journal"):
                db.with_name(db.name + suffix).unlink(missing_ok=True)
        if self.files.is_dir():
            shutil.rmtree(self.files)

    def replace_by(self, staged: Installation) -> None:
        """Move a complete staged installation into this (empty) one's place.

        The main database moves last: until it is there, the target is no installation.
        """
        self.remove()
        self.files.parent.mkdir(parents=True, exist_ok=True)
        if staged.files.is_dir():
            os.replace(staged.files, self.files)
        else:
            self.files.mkdir(parents=True, exist_ok=True)
        os.replace(staged.datastore, self.datastore)
        os.replace(staged.db, self.db)
