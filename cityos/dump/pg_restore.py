"""Load a dump into an empty PostgreSQL installation, in one transaction: all or nothing.

The uploaded files are written aside and moved into place once the transaction commits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Final

import asyncpg

from cityos.catalog.errors import CkanError
from cityos.dump.format import DumpError, DumpReader, decode_row
from cityos.dump.installation import ENTITY_SECTIONS, FILE, SEQUENCE
from cityos.dump.pg_installation import PgInstallation, table_loaders
from cityos.dump.records import Progress, Tally, batches, write_pieces
from cityos.storage import pg_dump_entities, pg_schema
from cityos.storage.pg_index import Conn, PathIds

#: the advisory lock an import holds, so that two imports never fill one database at once
LOCK_KEY: Final = int.from_bytes(b"citydump", "big")


class _Target:
    """Where an import writes: the transaction's connection and the staged files folder."""

    def __init__(self, conn: Conn, files: Path) -> None:
        self.conn = conn
        self.files = files
        self.paths = PathIds()
        self.tables = table_loaders()

    async def load(self, section: str, batch: list[dict[str, Any]]) -> None:
        """Store one batch of records of a section."""
        if section == FILE:
            write_pieces(self.files, batch)
            return
        if section == "datastore_row":
            rows = [{**r, "row": decode_row(r["row"])} for r in batch]
        else:
            rows = [decode_row(r) for r in batch]
        if section in ENTITY_SECTIONS:
            await pg_dump_entities.load_rows(self.conn, section, rows, self.paths)
        elif section == SEQUENCE:
            for r in rows:
                await pg_dump_entities.load_sequence(self.conn, r["table"], int(r["seq"]))
        elif section in self.tables:
            await self.tables[section](self.conn, section, rows)
        else:
            raise DumpError(f"the dump has a section this cityos does not know: {section!r}")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)


def _place(staged: Path, files: Path) -> None:
    """Move the staged files folder to files (which holds no file: the import checked)."""
    _remove(files)
    files.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, files)


log = logging.getLogger("cityos.dump")


async def _sequences(conn: Conn) -> list[tuple[str, str, int | None, int]]:
    """Return (schema, name, last value or None if unused, start) of the schema's sequences."""
    rows = await conn.fetch(
        "SELECT schemaname, sequencename, last_value, start_value FROM pg_sequences "
        "WHERE schemaname = ANY(current_schemas(false))"
    )
    return [(r[0], r[1], r[2], r[3]) for r in rows]


async def _restore(conn: Conn, sequences: list[tuple[str, str, int | None, int]]) -> None:
    """Put sequences back as they were: a rollback does not undo what took their numbers."""
    for schema, name, last, start in sequences:
        await conn.execute(
            "SELECT setval(format('%I.%I', $1::text, $2::text)::regclass, $3, $4)",
            schema,
            name,
            start if last is None else last,
            last is not None,
        )


async def _connect(inst: PgInstallation) -> asyncpg.Connection:
    """Bring the schema up to date (an empty database gets every migration), then connect."""
    try:
        await pg_schema.upgrade(inst.url)
        return await asyncpg.connect(inst.url)
    except pg_schema.SchemaError as exc:
        raise DumpError(str(exc)) from None
    except (OSError, asyncpg.PostgresError) as exc:
        raise DumpError(f"cannot reach {inst.label}: {exc}") from None


async def _fill(conn: Conn, inst: PgInstallation, reader: DumpReader, tally: Tally) -> None:
    """Load every record in one transaction; on failure leave the database as it was."""
    sequences = await _sequences(conn)
    loading = False
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            found = await inst.contents(conn)
            if found is not None:
                raise DumpError(
                    f"the target installation is not empty ({found}); import-dump only "
                    "fills an empty one. Point CITYOS_DATABASE_URL at an empty database."
                )
            staged = inst.staged_files()
            _remove(staged)  # what an interrupted import left behind
            staged.mkdir(parents=True)
            target = _Target(conn, staged)
            loading = True
            for section, batch in batches(reader.records()):
                await target.load(section, batch)
                tally.add(section, len(batch))
    except BaseException:
        if loading:  # never when refused: the sequences may be another installation's, live
            # best effort: the error that stopped the import is the one to report
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await _restore(conn, sequences)
        raise


async def _analyze(conn: Conn) -> None:
    """Gather the statistics query plans rely on, for the tables just filled (committed).

    Autovacuum would get to them later (never, where it is off); till then PostgreSQL plans
    a million entities as if the tables were empty.
    """
    tables = await conn.fetch(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
        "WHERE schemaname = current_schema()"
    )
    for (table,) in tables:
        try:
            await conn.execute(f"ANALYZE {table}")
        except asyncpg.PostgresError as exc:  # the data is in: a missing statistic is no loss
            log.warning("ANALYZE %s after the import failed: %s", table, exc)


async def import_postgres(source: Path, inst: PgInstallation, progress: Progress) -> Counter[str]:
    """Load the dump at source into the empty PostgreSQL installation inst."""
    reader = DumpReader(source)  # refuses a foreign or newer file before anything is made
    tally = Tally(progress)
    staged = inst.staged_files()
    try:
        conn = await _connect(inst)
        try:
            await _fill(conn, inst, reader, tally)
            await _analyze(conn)
        finally:
            await conn.close()
    except (asyncpg.PostgresError, asyncpg.InterfaceError, CkanError, KeyError, TypeError,
            ValueError) as exc:  # fmt: skip
        _remove(staged)
        raise DumpError(
            f"the dump does not load ({type(exc).__name__}: {exc}); nothing was imported"
        ) from None
    except BaseException:
        _remove(staged)
        raise
    finally:
        reader.close()
    try:
        _place(staged, inst.files)
    except OSError as exc:  # committed: the staged files are the only copy, keep them
        raise DumpError(
            f"the database is imported, but the uploaded files could not be moved into place "
            f"({exc}); move {staged} to {inst.files}"
        ) from None
    return tally.counts
