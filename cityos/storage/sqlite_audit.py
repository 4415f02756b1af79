"""SQLite tables of the audit log, in the broker's file: the chained records and their head.

An append reads the last record, inserts the next one and moves the head, all inside one
writer job, so concurrent appends chain in the writer's order. `AuditStore.append_in` does
the same inside a job that is already running (a change hook, a key change): the record then
commits or rolls back with the change it describes. A refused or failed request must be
recorded with `append`, in a job of its own, so that the refusal's rollback keeps its record.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Final

from cityos.auth.audit import (
    EMPTY,
    GENESIS,
    AuditError,
    Entry,
    Head,
    Record,
    Unreadable,
    Verdict,
    chain,
    utc_now,
    verify_chain,
)
from cityos.storage.audit_rows import COLUMNS, parse_row, row_values
from cityos.storage.sqlite import DumpRow, DumpTable, SqliteStorage, dump_tables, load_tables

# STRICT: a value of the wrong type cannot be stored, so verification only meets text it
# can hash. No index on hash: appends stay one B-tree insert; verification looks a hash up
# (a scan) only once it has found a problem.
DDL: Final = (
    """CREATE TABLE IF NOT EXISTS audit_log(
        seq INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        tenant TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev TEXT NOT NULL,
        hash TEXT NOT NULL
    ) STRICT""",
    # one row: the latest (seq, hash), so a deleted last record is noticed
    """CREATE TABLE IF NOT EXISTS audit_head(
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL
    ) STRICT""",
)

_PAGE: Final = 1000


class AuditStore:
    """The hash-chained audit log in the broker's SQLite file."""

    def __init__(self, store: SqliteStorage, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._store = store
        self._clock = clock

    #: (dump section, table, order, rowid too?) of what `cityos export` keeps
    DUMP_TABLES: Final[tuple[DumpTable, ...]] = (
        ("audit", "audit_log", "seq", False),
        ("audit_head", "audit_head", "id", False),
    )

    @staticmethod
    def dump_rows(conn: sqlite3.Connection) -> Iterator[tuple[str, DumpRow]]:
        """Yield the audit log and its head, exactly as stored."""
        return dump_tables(conn, AuditStore.DUMP_TABLES)

    @staticmethod
    def load_rows(conn: sqlite3.Connection, section: str, rows: Sequence[DumpRow]) -> None:
        """Store dumped rows of a section of dump_rows, keeping their keys."""
        load_tables(conn, AuditStore.DUMP_TABLES, section, rows)

    async def setup(self) -> None:
        """Create the tables if needed."""

        def run(conn: sqlite3.Connection) -> None:
            for ddl in DDL:
                conn.execute(ddl)
            conn.execute(
                "INSERT OR IGNORE INTO audit_head(id, seq, hash) VALUES (1, 0, ?)", (GENESIS,)
            )

        await self._store.write(run)

    async def append(self, entry: Entry) -> Record:
        """Record entry as the next record, in a writer job of its own; return the record."""
        record: Record = await self._store.write(lambda conn: self.append_in(conn, entry))
        return record

    def append_in(self, conn: sqlite3.Connection, entry: Entry) -> Record:
        """Record entry inside a writer job that is already running; return the record."""
        last = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
        record = chain(entry, seq=seq, at=self._clock(), prev=prev)
        conn.execute(
            f"INSERT INTO audit_log({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row_values(record),
        )
        conn.execute(
            "INSERT INTO audit_head(id, seq, hash) VALUES (1, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET seq=excluded.seq, hash=excluded.hash",
            (record.seq, record.hash),
        )
        return record

    async def records(self, after_seq: int = 0, limit: int = _PAGE) -> list[Record]:
        """Return up to limit records with seq above after_seq, in order."""

        def run(conn: sqlite3.Connection) -> list[Record]:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            )
            out: list[Record] = []
            for row in rows:
                item = parse_row(row)
                if isinstance(item, Unreadable):
                    raise AuditError(f"record {item.seq} cannot be read: {item.reason}")
                out.append(item)
            return out

        result: list[Record] = await self._store.read(run)
        return result

    async def last(self, action: str) -> Record | None:
        """Return the latest record of an action (e.g. the policy in force), or None."""

        def run(conn: sqlite3.Connection) -> Record | None:
            row = conn.execute(
                f"SELECT {COLUMNS} FROM audit_log WHERE action = ? ORDER BY seq DESC LIMIT 1",
                (action,),
            ).fetchone()
            if row is None:
                return None
            item = parse_row(row)
            if isinstance(item, Unreadable):
                raise AuditError(f"record {item.seq} cannot be read: {item.reason}")
            return item

        result: Record | None = await self._store.read(run)
        return result

    async def head(self) -> Head:
        """Return the stored head: the latest record's seq and hash."""

        def run(conn: sqlite3.Connection) -> Head:
            return _head(conn) or EMPTY

        result: Head = await self._store.read(run)
        return result

    async def verify(self, expect: Head | None = None) -> Verdict:
        """Walk the whole chain in one read snapshot; return the first problem or intact.

        expect is a head kept elsewhere earlier (`cityos audit head`), which must still be
        in the log with the same hash.
        """

        def run(conn: sqlite3.Connection) -> Verdict:
            def seq_of_hash(hash_: str) -> int | None:
                found = conn.execute(
                    "SELECT seq FROM audit_log WHERE hash=? ORDER BY seq LIMIT 1", (hash_,)
                ).fetchone()
                return None if found is None else int(found[0])

            return verify_chain(
                _walk(conn), head=_head(conn), seq_of_hash=seq_of_hash, expect=expect
            )

        result: Verdict = await self._store.read(run)
        return result


def _head(conn: sqlite3.Connection) -> Head | None:
    row = conn.execute("SELECT seq, hash FROM audit_head WHERE id=1").fetchone()
    return None if row is None else Head(row[0], row[1])


def _walk(conn: sqlite3.Connection) -> Iterator[Record | Unreadable]:
    cursor = conn.execute(f"SELECT {COLUMNS} FROM audit_log ORDER BY seq")
    while rows := cursor.fetchmany(_PAGE):
        for row in rows:
            yield parse_row(row)
