"""PostgreSQL tables of the audit log: the chained records and their head.

Several workers append at once, so an append first takes a transaction-level advisory lock
(`LOCK_KEY`): appends then chain one after another in lock order, across processes, and the
lock is released when the append's transaction commits or rolls back. `append_in` does the
same inside a transaction that is already open (an entity change hook, a key change): the
record then commits or rolls back with the change it describes, and other appends wait for
that transaction to end. A refused or failed request must be recorded with `append`, in a
transaction of its own, so that the refusal's rollback keeps its record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

from cityos.auth.audit import (
    EMPTY,
    GENESIS,
    Entry,
    Head,
    Record,
    Unreadable,
    Verdict,
    chain,
    utc_now,
    verify_chain,
)
from cityos.storage.audit_rows import COLUMNS, parse_row, readable, row_values
from cityos.storage.pg_index import Conn
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import DumpRow

T = TypeVar("T")

#: the advisory lock that serializes appends ("cityaudt" in ASCII)
LOCK_KEY: Final = int.from_bytes(b"cityaudt", "big")
_PAGE: Final = 1000


class PgAuditStore:
    """The hash-chained audit log in the PostgreSQL database (migration 0005)."""

    def __init__(self, store: PostgresStorage, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._store = store
        self._clock = clock

    #: dump sections, in the order and with the columns of AuditStore.dump_rows
    DUMP_SECTIONS: Final = ("audit", "audit_head")

    @staticmethod
    async def dump_rows(conn: Conn) -> AsyncIterator[tuple[str, DumpRow]]:
        """Yield the audit log and its head, exactly as stored (conn in a transaction)."""
        for section, sql in (
            ("audit", f"SELECT {COLUMNS} FROM audit_log ORDER BY seq"),
            ("audit_head", "SELECT id, seq, hash FROM audit_head ORDER BY id"),
        ):
            # a cursor, which needs the caller's transaction: the log may be long
            async for row in conn.cursor(sql, prefetch=_PAGE):
                yield section, dict(row.items())

    @staticmethod
    async def load_rows(conn: Conn, section: str, rows: Sequence[DumpRow]) -> None:
        """Store dumped rows of a section of dump_rows, keeping their numbers."""
        if section == "audit":
            names = COLUMNS.split(", ")
            sql = (
                f"INSERT INTO audit_log({COLUMNS}) VALUES "
                "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (seq) DO UPDATE SET "
                + ", ".join(f"{c}=EXCLUDED.{c}" for c in names[1:])
            )
        elif section == "audit_head":
            names = ["id", "seq", "hash"]
            # the migration made the empty log's head: the dump's replaces it
            sql = (
                "INSERT INTO audit_head(id, seq, hash) VALUES ($1, $2, $3) "
                "ON CONFLICT (id) DO UPDATE SET seq=EXCLUDED.seq, hash=EXCLUDED.hash"
            )
        else:
            raise ValueError(f"not a section of the audit log: {section!r}")
        await conn.executemany(sql, [tuple(r[c] for c in names) for r in rows])

    async def setup(self) -> None:
        """Restore the head row if it is missing (the tables come with the migrations)."""
        # as on SQLite: a removed head reads as the empty log's, which verification reports
        await self._store.pool.execute(
            "INSERT INTO audit_head(id, seq, hash) VALUES (1, 0, $1) ON CONFLICT DO NOTHING",
            GENESIS,
        )

    async def append(self, entry: Entry) -> Record:
        """Record entry as the next record, in a transaction of its own; return the record."""
        async with self._store.pool.acquire() as conn, conn.transaction():
            return await self.append_in(conn, entry)

    async def append_in(self, conn: Conn, entry: Entry) -> Record:
        """Record entry inside a transaction that is already open on conn; return the record."""
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        last = await conn.fetchrow("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
        record = chain(entry, seq=seq, at=self._clock(), prev=prev)
        await conn.execute(
            f"INSERT INTO audit_log({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            *row_values(record),
        )
        await conn.execute(
            "INSERT INTO audit_head(id, seq, hash) VALUES (1, $1, $2) "
            "ON CONFLICT (id) DO UPDATE SET seq=excluded.seq, hash=excluded.hash",
            record.seq,
            record.hash,
        )
        return record

    async def records(self, after_seq: int = 0, limit: int = _PAGE) -> list[Record]:
        """Return up to limit records with seq above after_seq, in order."""
        rows = await self._store.pool.fetch(
            f"SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
            after_seq,
            limit,
        )
        return [readable(tuple(row)) for row in rows]

    async def last(self, action: str) -> Record | None:
        """Return the latest record of an action (e.g. the policy in force), or None."""
        row = await self._store.pool.fetchrow(
            f"SELECT {COLUMNS} FROM audit_log WHERE action = $1 ORDER BY seq DESC LIMIT 1",
            action,
        )
        return None if row is None else readable(tuple(row))

    async def head(self) -> Head:
        """Return the stored head: the latest record's seq and hash."""
        async with self._store.pool.acquire() as conn:
            return await _head(conn) or EMPTY

    async def verify(self, expect: Head | None = None) -> Verdict:
        """Walk the whole chain in one read snapshot; return the first problem or intact.

        expect is a head kept elsewhere earlier (`cityos audit head`), which must still be
        in the log with the same hash.
        """
        loop = asyncio.get_running_loop()
        async with self._store.pool.acquire() as conn:  # noqa: SIM117 (the transaction needs conn)
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                head = await _head(conn)
                cursor = await conn.cursor(f"SELECT {COLUMNS} FROM audit_log ORDER BY seq")

                # verify_chain is pure and synchronous: it runs on a thread and reads the
                # log a page at a time through the event loop, so a long log never sits
                # in memory whole
                def call(coro: Coroutine[Any, Any, T]) -> T:
                    return asyncio.run_coroutine_threadsafe(coro, loop).result()

                def walk() -> Iterator[Record | Unreadable]:
                    while rows := call(cursor.fetch(_PAGE)):
                        for row in rows:
                            yield parse_row(tuple(row))

                def seq_of_hash(hash_: str) -> int | None:
                    return call(_seq_of_hash(conn, hash_))

                def run() -> Verdict:
                    return verify_chain(walk(), head=head, seq_of_hash=seq_of_hash, expect=expect)

                return await asyncio.to_thread(run)


async def _head(conn: Conn) -> Head | None:
    row = await conn.fetchrow("SELECT seq, hash FROM audit_head WHERE id=1")
    return None if row is None else Head(row[0], row[1])


async def _seq_of_hash(conn: Conn, hash_: str) -> int | None:
    found = await conn.fetchval(
        "SELECT seq FROM audit_log WHERE hash=$1 ORDER BY seq LIMIT 1", hash_
    )
    return None if found is None else int(found)
