"""PostgreSQL tables of the audit log: the chained records and their head.

Several workers append at once, so an append first takes a transaction-level advisory lock
(`LOCK_KEY`): appends then chain one after another in lock order, across processes, and the
lock is released when the append's transaction commits or rolls back. `append_in` does the
same inside a transaction that is already open (an entity change hook, a key change): the
record then commits or rolls back with the change it describes, and other appends wait for
that transaction to end. A refused or failed request must be recorded with `append`, in a
transaction of its own, so that the refusal's rollback keeps its record.

`append` group-commits: the records asked for while an append transaction runs wait for it,
then all go together in the next one (one lock, one chain read, one head update, one commit),
each caller still answered only once its record is committed.
"""

from __future__ import annotations

import asyncio
import logging
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

log = logging.getLogger("cityos.audit")

#: the advisory lock that serializes appends ("cityaudt" in ASCII)
LOCK_KEY: Final = int.from_bytes(b"cityaudt", "big")
_PAGE: Final = 1000
#: most records in one group commit
_BATCH: Final = 500
#: the records of a group commit, sent as one array per column
_INSERT_ALL: Final = (
    f"INSERT INTO audit_log({COLUMNS}) SELECT * FROM unnest($1::bigint[], $2::text[], "
    "$3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], "
    "$10::text[])"
)


class PgAuditStore:
    """The hash-chained audit log in the PostgreSQL database (migration 0005)."""

    def __init__(self, store: PostgresStorage, *, clock: Callable[[], datetime] = utc_now) -> None:
        self._store = store
        self._clock = clock
        #: entries waiting for the next group commit, with the future each caller awaits
        self._queue: list[tuple[Entry, asyncio.Future[Record]]] = []
        self._flusher: asyncio.Task[None] | None = None

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
        """Record entry as the next record, committed before this returns; return the record.

        Appends asked for at once share one transaction (group commit); the record is in a
        transaction of no other change, so a caller's own rollback never takes it away.
        """
        future: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        self._queue.append((entry, future))
        flusher = self._flusher
        if flusher is None or flusher.done() or flusher.get_loop() is not future.get_loop():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        """Commit the queued entries, a batch per transaction, until none is left."""
        await asyncio.sleep(0)  # let the appends of this turn of the loop join the first batch
        while self._queue:
            batch, self._queue = self._queue[:_BATCH], self._queue[_BATCH:]
            try:
                if len(batch) > 1:
                    try:
                        records = await self._commit([entry for entry, _ in batch])
                    except Exception:  # noqa: BLE001 (retried one by one just below)
                        log.warning("a group of audit records failed; retrying one by one")
                    else:
                        for (_, future), record in zip(batch, records, strict=True):
                            if not future.done():
                                future.set_result(record)
                        continue
                # alone, or after a failed batch: one bad entry must not cost the others
                for entry, future in batch:
                    await self._commit_one(entry, future)
            finally:
                # cancelled (the loop is shutting down): its callers must not wait forever
                for _, future in batch:
                    future.cancel()

    async def _commit_one(self, entry: Entry, future: asyncio.Future[Record]) -> None:
        try:
            (record,) = await self._commit([entry])
        except Exception as exc:  # noqa: BLE001 (handed to the caller, who awaits it)
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(record)

    async def _commit(self, entries: Sequence[Entry]) -> list[Record]:
        async with self._store.pool.acquire() as conn, conn.transaction():
            return await self._append_all(conn, entries)

    async def append_in(self, conn: Conn, entry: Entry) -> Record:
        """Record entry inside a transaction that is already open on conn; return the record."""
        (record,) = await self._append_all(conn, [entry])
        return record

    async def _append_all(self, conn: Conn, entries: Sequence[Entry]) -> list[Record]:
        """Chain entries after the last record, in order, inside conn's open transaction."""
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        last = await conn.fetchrow("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        seq, prev = (last[0], last[1]) if last else (0, GENESIS)
        records: list[Record] = []
        for entry in entries:
            seq += 1
            record = chain(entry, seq=seq, at=self._clock(), prev=prev)
            records.append(record)
            prev = record.hash
        columns = list(zip(*(row_values(r) for r in records), strict=True))
        await conn.execute(_INSERT_ALL, *columns)
        await conn.execute(
            "INSERT INTO audit_head(id, seq, hash) VALUES (1, $1, $2) "
            "ON CONFLICT (id) DO UPDATE SET seq=excluded.seq, hash=excluded.hash",
            seq,
            prev,
        )
        return records

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
