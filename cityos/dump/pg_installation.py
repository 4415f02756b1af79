"""A PostgreSQL installation: its database, the stores that dump and load it, its files."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cityos.dump.format import DumpError
from cityos.settings import Settings
from cityos.storage import pg_dump_entities, pg_dump_history, pg_schema
from cityos.storage.pg_audit import PgAuditStore
from cityos.storage.pg_auth import PgAuthStore
from cityos.storage.pg_catalog import PgCatalogStore
from cityos.storage.pg_datastore import PgDatastoreStore
from cityos.storage.pg_index import Conn
from cityos.storage.pg_iot import PgIotStore
from cityos.storage.pg_live import PgLiveStore
from cityos.storage.pg_subscriptions import PostgresSubscriptionStore
from cityos.storage.pg_users import PgUserStore
from cityos.storage.sqlite import DumpRow
from cityos.storage.sqlite_subscriptions import SubscriptionStore

PgDumper = Callable[[Conn], AsyncIterator[tuple[str, DumpRow]]]
PgLoader = Callable[[Conn, str, Sequence[DumpRow]], Awaitable[None]]


class _Twin:
    """What a PostgreSQL store offers a dump: its sections and how to dump and load them."""

    def __init__(self, sections: Sequence[str], dump: PgDumper, load: PgLoader) -> None:
        self.sections = tuple(sections)
        self.dump = dump
        self.load = load


def _twin(store: Any, sections: Sequence[str]) -> _Twin:
    return _Twin(sections, store.dump_rows, store.load_rows)


#: the stores of the database other than the entities, in the dump order of installation.py's
#: TABLE_STORES (the SQLite twins), then the datastore
TABLE_TWINS: Final = (
    _twin(pg_dump_history, pg_dump_history.SECTIONS),
    _twin(PostgresSubscriptionStore, [t[0] for t in SubscriptionStore.DUMP_TABLES]),
    _twin(PgIotStore, PgIotStore.DUMP_SECTIONS),
    _twin(PgAuthStore, PgAuthStore.DUMP_SECTIONS),
    _twin(PgUserStore, PgUserStore.DUMP_SECTIONS),
    _twin(PgAuditStore, PgAuditStore.DUMP_SECTIONS),
    _twin(PgLiveStore, PgLiveStore.DUMP_SECTIONS),
    _twin(PgCatalogStore, PgCatalogStore.DUMP_SECTIONS),
)
DATASTORE: Final = _twin(PgDatastoreStore, PgDatastoreStore.DUMP_SECTIONS)
#: every dumper of the database, in dump order (sequences come between them and the datastore)
MAIN_DUMPERS: Final[tuple[PgDumper, ...]] = (
    pg_dump_entities.dump_rows,
    *(t.dump for t in TABLE_TWINS),
)


def table_loaders() -> dict[str, PgLoader]:
    """Return the loader of each section kept as table rows (not entities, sequences, files)."""
    return {s: t.load for t in (*TABLE_TWINS, DATASTORE) for s in t.sections}


@dataclass(frozen=True, slots=True)
class PgInstallation:
    """An installation on PostgreSQL: the database URL, and the uploaded files on disk."""

    url: str
    #: the database, named for people (no user, no password)
    label: str
    files: Path

    @classmethod
    def of(cls, settings: Settings) -> PgInstallation:
        """Return the installation a PostgreSQL configuration uses."""
        assert settings.database_url is not None
        return cls(
            settings.database_url, settings.database_label, settings.data_dir / "catalog" / "files"
        )

    def staged_files(self) -> Path:
        """Return where an import writes the uploaded files before moving them into place."""
        return self.files.with_name(self.files.name + ".importing")

    async def check_schema(self, conn: Conn) -> None:
        """Raise DumpError unless the database holds the schema of this cityos."""
        if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
            raise DumpError(f"no cityos installation in {self.label}; check CITYOS_DATABASE_URL")
        done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        known = {m.version for m in pg_schema.migrations()}
        if done != known:
            raise DumpError(
                f"the schema of {self.label} is not this cityos's (migrations {sorted(done)}, "
                f"expected {sorted(known)}); run `cityos db upgrade` with the matching cityos"
            )

    async def contents(self, conn: Conn) -> str | None:
        """Return what this installation already holds (first thing found), None if empty."""
        for dump in (*MAIN_DUMPERS, DATASTORE.dump):
            rows = dump(conn)
            try:
                async for section, row in rows:
                    # the migrations write the audit log's empty head: that is no content
                    if section != "audit_head" or row.get("seq"):
                        return f"{section} records in {self.label}"
            finally:
                close = getattr(rows, "aclose", None)  # ends the generator's open cursor
                if close is not None:
                    await close()
        if self.files.is_dir() and any(p.is_file() for p in self.files.rglob("*")):
            return f"uploaded files in {self.files}"
        return None
