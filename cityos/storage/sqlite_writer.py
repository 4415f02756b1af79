"""One writer thread per SQLite file, committing queued jobs in groups.

Every write in cityos is a job: a function run against the writer's connection. The thread
takes whatever jobs are queued (up to a bound), runs each inside its own SAVEPOINT so one
failing job leaves no trace, commits the group once, and only then resolves the callers'
futures: a write is acknowledged only after its transaction is committed.

Jobs must not open savepoints of their own: in SQLite a nested savepoint makes every write
inside it several times slower (measured: 20,000 entity inserts took 15.8 s instead of 3.2 s).
A batch of entities is therefore queued as one job per entity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("cityos.storage")

MAX_GROUP = 512
#: the writer tops up the background checkpoints when the WAL file is larger than this,
#: at most once per CHECKPOINT_EVERY seconds. Below it the WAL restarts by itself as soon as
#: writes pause; only a sustained write flood reaches it, and then a short stall of the
#: writer (waiting for the checkpoint) is the price of a bounded WAL file.
WAL_LIMIT = 1024 * 1024 * 1024
CHECKPOINT_EVERY = 10.0

Job = Callable[[sqlite3.Connection], Any]


@dataclass(slots=True)
class _Pending:
    job: Job
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


def _resolve(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.cancelled():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class Writer:
    """Serialise all writes to one SQLite connection with group commit."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        on_rollback: Callable[[], None] = lambda: None,
        wal_path: Path | None = None,
    ) -> None:
        self._connect = connect
        self._wal_path = wal_path
        self._on_rollback = on_rollback
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="cityos-sqlite-writer", daemon=True)
        self._started = threading.Event()
        self._closed = False
        self._start_error: Exception | None = None

    def start(self) -> None:
        """Start the writer thread and wait until its connection is open."""
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    def enqueue(self, job: Job) -> asyncio.Future[Any]:
        """Queue a job for the next group; the future resolves once it is committed."""
        if self._closed:
            raise RuntimeError("storage is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Pending(job, loop, fut))
        return fut

    async def submit(self, job: Job) -> Any:
        """Run a job in the next group; return its result once committed."""
        return await self.enqueue(job)

    def close(self) -> None:
        """Drain the queue, commit what is pending and stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        try:
            conn = self._connect()
        except Exception as exc:  # noqa: BLE001  (reported to start())
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        stopping = False
        last_checkpoint = time.monotonic()
        try:
            while not stopping:
                first = self._queue.get()
                if first is None:
                    break
                group = [first]
                while len(group) < MAX_GROUP:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stopping = True
                        break
                    group.append(nxt)
                self._run_group(conn, group)
                now = time.monotonic()
                if now - last_checkpoint >= CHECKPOINT_EVERY and self._wal_size() > WAL_LIMIT:
                    self._top_up_checkpoint(conn)
                    last_checkpoint = now
        finally:
            conn.close()

    def _wal_size(self) -> int:
        if self._wal_path is None:
            return 0
        try:
            return self._wal_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _top_up_checkpoint(self, conn: sqlite3.Connection) -> None:
        # The Checkpointer thread copies most of the WAL in the background, but the WAL file
        # only restarts from its beginning once a checkpoint has caught up with the last
        # commit, which never happens while commits keep coming. Between two groups the
        # writer is idle, so a checkpoint here finishes the frames left and keeps the WAL
        # from growing without bound.
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            log.exception("WAL checkpoint failed; will retry")

    def _run_group(self, conn: sqlite3.Connection, group: list[_Pending]) -> None:
        results: list[tuple[Any, Exception | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for p in group:
                conn.execute("SAVEPOINT job")
                try:
                    res = p.job(conn)
                except Exception as exc:  # noqa: BLE001  (the job's error goes to its caller)
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    self._on_rollback()
                    results.append((None, exc))
                else:
                    conn.execute("RELEASE job")
                    results.append((res, None))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.exception("group commit failed; %d writes rolled back", len(group))
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._on_rollback()
            results = [(None, exc) for _ in group]
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, Any]]] = {}
        for p, (res, err) in zip(group, results, strict=True):
            by_loop.setdefault(p.loop, []).append((p.future, res, err))
        for loop, items in by_loop.items():
            # A closed loop (shutdown) has nobody waiting for the answer.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve_all, items)


def _resolve_all(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, res, err in items:
        _resolve(fut, res, err)


class Checkpointer:
    """Copy the WAL back into the database file on a thread of its own.

    The writer runs with automatic checkpoints off, so the fsyncs of a checkpoint never
    stall a group commit. PASSIVE checkpoints never block the writer or readers; the last
    one, at close, truncates the WAL.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], interval: float = 0.5) -> None:
        self._connect = connect
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="cityos-sqlite-checkpoint", daemon=True
        )

    def start(self) -> None:
        """Start checkpointing in the background."""
        self._thread.start()

    def close(self) -> None:
        """Stop, after a final checkpoint that empties the WAL."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        conn = self._connect()
        try:
            while not self._stop.wait(self._interval):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    log.exception("WAL checkpoint failed; will retry")
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                log.exception("final WAL checkpoint failed; the WAL will be replayed at start")
        finally:
            conn.close()
