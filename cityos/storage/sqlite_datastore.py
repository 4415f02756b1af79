"""The datastore: one SQLite table per resource in <data-dir>/datastore.db.

Each resource's rows live in a real table named by the resource id, with typed columns,
an `_id INTEGER PRIMARY KEY`, a unique index on the primary key and an index per filterable
column. Text columns also feed an FTS5 trigram index ("<id>__fts", kept by triggers) so `q`
finds Japanese substrings of three characters or more; shorter words fall back to LIKE.
Writes go through one writer thread (group commit, see sqlite_writer.py); reads run on a
small pool of read-only connections.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from cityos.catalog import sqlcheck
from cityos.catalog.datastore import (
    SQL_TYPES,
    Condition,
    Field,
    SearchQuery,
    Table,
    coerce_record,
    parse_type,
    render_records,
)
from cityos.catalog.errors import IntegrityError, NotFound, ValidationError
from cityos.storage.datastore_rows import (
    CreateSpec as CreateSpec,  # re-exported: the actions import it from here
)
from cityos.storage.datastore_rows import (
    alias_taken,
    check_write_method,
    fields_json,
    key_not_found,
    plan_create,
    table_from_meta,
    update_key,
)
from cityos.storage.sqlite import DumpRow
from cityos.storage.sqlite_writer import Checkpointer, Writer

META: Final = (
    """CREATE TABLE IF NOT EXISTS _datastore_tables(
        resource_id TEXT PRIMARY KEY,
        fields TEXT NOT NULL,       -- [{id, type, info}]
        primary_key TEXT NOT NULL,  -- [field id]
        indexes TEXT NOT NULL       -- [field id]
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS _datastore_aliases(
        alias TEXT PRIMARY KEY, resource_id TEXT NOT NULL
    ) WITHOUT ROWID""",
)
READ_THREADS: Final = 2


def q(name: str) -> str:
    """Quote an identifier (field ids never contain a double quote; see check_field_id)."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class SearchResult:
    records: list[Any] | str
    total: int | None


@dataclass(frozen=True, slots=True)
class SqlResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool


def _table_from_row(conn: sqlite3.Connection, row: tuple[str, str, str, str]) -> Table:
    rid, fields, pk, indexes = row
    aliases = [
        a
        for (a,) in conn.execute("SELECT alias FROM _datastore_aliases WHERE resource_id=?", (rid,))
    ]
    return table_from_meta(rid, fields, pk, indexes, aliases)


def load_table(conn: sqlite3.Connection, name: str) -> Table | None:
    """Return the table of a resource id or alias."""
    row = conn.execute(
        "SELECT resource_id, fields, primary_key, indexes FROM _datastore_tables "
        "WHERE resource_id = coalesce((SELECT resource_id FROM _datastore_aliases "
        "WHERE alias=?), ?)",
        (name, name),
    ).fetchone()
    return None if row is None else _table_from_row(conn, row)


def _where(table: Table, query: SearchQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for cond in query.conditions:
        clauses.append(_condition(cond, params))
    fts = f"{table.resource_id}__fts"
    text_cols = [q(f.id) for f in table.text_fields]
    for m in query.matches:
        like = "%" + m.term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        if m.field is not None:
            clauses.append(f"CAST({q(m.field.id)} AS TEXT) LIKE ? ESCAPE '\\'")
            params.append(like)
        elif text_cols and len(m.term) >= 3:
            clauses.append(f"_id IN (SELECT rowid FROM {q(fts)} WHERE {q(fts)} MATCH ?)")
            params.append('"' + m.term.replace('"', '""') + '"')
        else:
            cols = text_cols or [f"CAST({q(f.id)} AS TEXT)" for f in table.fields]
            if not cols:
                clauses.append("0")
                continue
            clauses.append("(" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in cols) + ")")
            params.extend([like] * len(cols))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _condition(cond: Condition, params: list[Any]) -> str:
    col = q(cond.field.id)
    if cond.op != "in":
        params.append(cond.values[0])
        return f"{col} {cond.op} ?"
    values = [v for v in cond.values if v is not None]
    parts: list[str] = []
    if len(values) == 1:
        parts.append(f"{col} = ?")
    elif values:
        parts.append(f"{col} IN ({', '.join('?' * len(values))})")
    params.extend(values)
    if len(values) != len(cond.values):
        parts.append(f"{col} IS NULL")
    return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"


class Totals:
    """Totals of recent queries on one read connection, kept while nothing is committed.

    Counting a filter that matches 100,000 of 1,000,000 rows walks 100,000 index entries
    (2.5 ms, measured), five times the cost of the page itself. `PRAGMA data_version`
    changes whenever any connection, of any process, commits to the file; the cache is
    emptied then, so a total is never stale.
    """

    MAX = 1024

    def __init__(self) -> None:
        self.version = -1
        self.totals: dict[tuple[str, tuple[Any, ...]], int] = {}

    def check(self, conn: sqlite3.Connection) -> None:
        """Forget every total if something was committed since the last check (call it
        before the read transaction starts, so a total never outlives its snapshot)."""
        version: int = conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self.version:
            self.totals.clear()
            self.version = version

    def count(self, conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
        key = (sql, tuple(params))
        total = self.totals.get(key)
        if total is None:
            if len(self.totals) >= self.MAX:
                self.totals.clear()
            total = self.totals[key] = conn.execute(sql, params).fetchone()[0]
        return total


def _search(
    conn: sqlite3.Connection, table: Table, query: SearchQuery, totals: Totals
) -> SearchResult:
    name = q(table.resource_id)
    where, params = _where(table, query)
    cols = ", ".join(q(f.id) for f in query.columns)
    order = ", ".join(f"{q(f.id)} {'DESC' if desc else 'ASC'}" for f, desc in query.sort)
    if not query.distinct:
        order = f"{order}, _id" if order else "_id"
    sql = f"SELECT {'DISTINCT ' if query.distinct else ''}{cols} FROM {name}{where}"
    if order:
        sql += f" ORDER BY {order}"
    sql += " LIMIT ? OFFSET ?"
    totals.check(conn)
    conn.execute("BEGIN")  # the page and the total from one snapshot
    try:
        rows = conn.execute(sql, [*params, query.limit, query.offset]).fetchall()
        total: int | None = None
        if query.include_total:
            if query.distinct:
                count = f"SELECT count(*) FROM (SELECT DISTINCT {cols} FROM {name}{where})"
            else:
                count = f"SELECT count(*) FROM {name}{where}"
            total = totals.count(conn, count, params)
    finally:
        conn.execute("COMMIT")
    return SearchResult(render_records(query.columns, rows, query.records_format), total)


# -- writes ---------------------------------------------------------------------------------


def _create_fts(conn: sqlite3.Connection, table: Table, *, fill: bool) -> None:
    rid = table.resource_id
    fts, name = f"{rid}__fts", q(rid)
    for suffix in ("ai", "ad", "au"):
        conn.execute(f"DROP TRIGGER IF EXISTS {q(f'{rid}__{suffix}')}")
    conn.execute(f"DROP TABLE IF EXISTS {q(fts)}")
    cols = [q(f.id) for f in table.text_fields]
    if not cols:
        return
    col_list = ", ".join(cols)
    new = ", ".join(f"new.{c}" for c in cols)
    old = ", ".join(f"old.{c}" for c in cols)
    conn.execute(
        f"CREATE VIRTUAL TABLE {q(fts)} USING fts5({col_list}, content={q(rid)}, "
        "content_rowid='_id', tokenize='trigram')"
    )
    conn.execute(
        f"CREATE TRIGGER {q(rid + '__ai')} AFTER INSERT ON {name} BEGIN "
        f"INSERT INTO {q(fts)}(rowid, {col_list}) VALUES (new._id, {new}); END"
    )
    conn.execute(
        f"CREATE TRIGGER {q(rid + '__ad')} AFTER DELETE ON {name} BEGIN "
        f"INSERT INTO {q(fts)}({q(fts)}, rowid, {col_list}) VALUES ('delete', old._id, {old}); END"
    )
    conn.execute(
        f"CREATE TRIGGER {q(rid + '__au')} AFTER UPDATE ON {name} BEGIN "
        f"INSERT INTO {q(fts)}({q(fts)}, rowid, {col_list}) VALUES ('delete', old._id, {old}); "
        f"INSERT INTO {q(fts)}(rowid, {col_list}) VALUES (new._id, {new}); END"
    )
    if fill:
        conn.execute(f"INSERT INTO {q(fts)}({q(fts)}) VALUES ('rebuild')")


def _create_indexes(conn: sqlite3.Connection, table: Table) -> None:
    rid = table.resource_id
    if table.primary_key:
        cols = ", ".join(q(c) for c in table.primary_key)
        try:
            conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {q(rid + '__pk')} ON {q(rid)}({cols})")
        except sqlite3.IntegrityError:
            raise IntegrityError(
                f"primary key ({', '.join(table.primary_key)}) is not unique in the records"
            ) from None
    for name in table.indexes:
        conn.execute(f"CREATE INDEX IF NOT EXISTS {q(rid + '__i_' + name)} ON {q(rid)}({q(name)})")


def _insert(conn: sqlite3.Connection, table: Table, records: Sequence[Any], method: str) -> int:
    fields = {f.id: f for f in table.fields}
    name = q(table.resource_id)
    pk = table.primary_key
    done = 0
    batch: list[tuple[Any, ...]] = []
    batch_cols: tuple[str, ...] | None = None

    def flush() -> None:
        nonlocal batch
        if not batch or batch_cols is None:
            return
        if not batch_cols:  # records that set no field
            for _ in batch:
                conn.execute(f"INSERT INTO {name} DEFAULT VALUES")
            batch = []
            return
        cols = ", ".join(q(c) for c in batch_cols)
        # One statement per batch, rows as a JSON array: per-row statements make the FTS5
        # index flush after every row inside the writer's savepoint (5x slower, measured).
        picks = ", ".join(f"value->>{i}" for i in range(len(batch_cols)))
        sql = f"INSERT INTO {name}({cols}) SELECT {picks} FROM json_each(?) WHERE true"
        if method == "upsert" and pk:
            updates = [c for c in batch_cols if c not in pk]
            target = ", ".join(q(c) for c in pk)
            if updates:
                sets = ", ".join(f"{q(c)}=excluded.{q(c)}" for c in updates)
                sql += f" ON CONFLICT({target}) DO UPDATE SET {sets}"
            else:
                sql += f" ON CONFLICT({target}) DO NOTHING"
        try:
            conn.execute(sql, (orjson.dumps(batch).decode(),))
        except sqlite3.IntegrityError as exc:
            raise ValidationError({"records": [f"duplicate key or bad row: {exc}"]}) from None
        batch = []

    for i, rec in enumerate(records, start=1):
        values = coerce_record(fields, rec, i, keep_id=method != "insert" and not pk)
        key = update_key(values, pk, method, i)
        if key is not None:
            sets = [c for c in values if c not in key]
            where = " AND ".join(f"{q(k)} = ?" for k in key)
            args = [values[k] for k in key]
            changed = 0
            if sets:
                cur = conn.execute(
                    f"UPDATE {name} SET {', '.join(f'{q(c)} = ?' for c in sets)} WHERE {where}",
                    [*(values[c] for c in sets), *args],
                )
                changed = cur.rowcount
            else:
                changed = conn.execute(
                    f"SELECT count(*) FROM {name} WHERE {where}", args
                ).fetchone()[0]
            if changed == 0:
                if method == "update":
                    raise key_not_found(values, key, i)
                conn.execute(
                    f"INSERT INTO {name}({', '.join(q(c) for c in values)}) "
                    f"VALUES ({', '.join('?' * len(values))})",
                    list(values.values()),
                )
            done += 1
            continue
        values.pop("_id", None)
        cols = tuple(values)
        if cols != batch_cols or len(batch) >= 5000:
            flush()
            batch_cols = cols
        batch.append(tuple(values.values()))
        done += 1
    flush()
    return done


def _create(conn: sqlite3.Connection, spec: CreateSpec, records: Sequence[Any]) -> Table:
    rid = spec.resource_id
    old = load_table(conn, rid)
    plan = plan_create(old, spec, records)
    table, added = plan.table, plan.added
    fields, pk, indexes = table.fields, table.primary_key, table.indexes
    for alias in spec.aliases:
        owner = conn.execute(
            "SELECT resource_id FROM _datastore_aliases WHERE alias=? UNION ALL "
            "SELECT resource_id FROM _datastore_tables WHERE resource_id=?",
            (alias, alias),
        ).fetchone()
        refused = alias_taken(alias, rid, None if owner is None else owner[0])
        if refused is not None:
            raise refused
    if plan.fresh:
        cols = ", ".join(f"{q(f.id)} {'TEXT' if f.array else SQL_TYPES[f.kind]}" for f in fields)
        conn.execute(f"CREATE TABLE {q(rid)}(_id INTEGER PRIMARY KEY{', ' if cols else ''}{cols})")
        _insert(conn, table, records, "insert")  # indexes after a bulk load are cheaper
        _create_indexes(conn, table)
        _create_fts(conn, table, fill=True)
    else:
        for f in added:
            kind = "TEXT" if f.array else SQL_TYPES[f.kind]
            conn.execute(f"ALTER TABLE {q(rid)} ADD COLUMN {q(f.id)} {kind}")
        if old is not None and pk != old.primary_key:
            conn.execute(f"DROP INDEX IF EXISTS {q(rid + '__pk')}")
        _create_indexes(conn, table)
        if any(f.kind == "text" and not f.array for f in added):
            _create_fts(conn, table, fill=True)
        _insert(conn, table, records, "insert")
    conn.execute(
        "INSERT OR REPLACE INTO _datastore_tables(resource_id, fields, primary_key, indexes) "
        "VALUES (?, ?, ?, ?)",
        (
            rid,
            fields_json(fields),
            orjson.dumps(list(pk)).decode(),
            orjson.dumps(list(indexes)).decode(),
        ),
    )
    for alias in spec.aliases:
        conn.execute("INSERT OR REPLACE INTO _datastore_aliases VALUES (?, ?)", (alias, rid))
    found = load_table(conn, rid)
    assert found is not None
    return found


def _delete(conn: sqlite3.Connection, rid: str, conditions: Sequence[Condition] | None) -> int:
    table = load_table(conn, rid)
    if table is None:
        raise NotFound(f'Resource "{rid}" was not found.')
    rid = table.resource_id
    if conditions is None:
        count: int = conn.execute(f"SELECT count(*) FROM {q(rid)}").fetchone()[0]
        for suffix in ("ai", "ad", "au"):
            conn.execute(f"DROP TRIGGER IF EXISTS {q(f'{rid}__{suffix}')}")
        conn.execute(f"DROP TABLE IF EXISTS {q(rid + '__fts')}")
        conn.execute(f"DROP TABLE {q(rid)}")
        conn.execute("DELETE FROM _datastore_tables WHERE resource_id=?", (rid,))
        conn.execute("DELETE FROM _datastore_aliases WHERE resource_id=?", (rid,))
        return count
    params: list[Any] = []
    where = " AND ".join(_condition(c, params) for c in conditions) or "1"
    return conn.execute(f"DELETE FROM {q(rid)} WHERE {where}", params).rowcount


def _schema_names(conn: sqlite3.Connection) -> frozenset[str]:
    return frozenset(n for (n,) in conn.execute("SELECT name FROM sqlite_master"))


class DatastoreStore:
    """Tables of rows behind resources, in a SQLite file of their own."""

    def __init__(self, path: Path, *, read_threads: int = READ_THREADS) -> None:
        self.path = path
        self._writer: Writer | None = None
        self._checkpointer: Checkpointer | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._read_threads = read_threads
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA mmap_size=268435456")
        conn.execute("PRAGMA temp_store=MEMORY")
        return conn

    def _open_writer(self) -> sqlite3.Connection:
        conn = self._open()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        for stmt in META:
            conn.execute(stmt)
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    def _totals(self) -> Totals:
        totals: Totals | None = getattr(self._local, "totals", None)
        if totals is None:
            totals = self._local.totals = Totals()
        return totals

    @staticmethod
    def dump_rows(conn: sqlite3.Connection) -> Iterator[tuple[str, DumpRow]]:
        """Yield each table's definition (fields, keys, indexes, aliases), then its rows."""
        if not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name='_datastore_tables'"
        ).fetchone():
            return
        for meta in conn.execute(
            "SELECT resource_id, fields, primary_key, indexes FROM _datastore_tables "
            "ORDER BY resource_id"
        ).fetchall():
            table = _table_from_row(conn, meta)
            rid = table.resource_id
            yield (
                "datastore_table",
                {
                    "resource_id": rid,
                    "fields": orjson.loads(meta[1]),
                    "primary_key": list(table.primary_key),
                    "indexes": list(table.indexes),
                    "aliases": list(table.aliases),
                },
            )
            cur = conn.execute(f"SELECT * FROM {q(rid)} ORDER BY _id")
            names = [d[0] for d in cur.description]
            for row in cur:
                yield (
                    "datastore_row",
                    {"resource_id": rid, "row": dict(zip(names, row, strict=True))},
                )

    @staticmethod
    def load_rows(conn: sqlite3.Connection, section: str, rows: Sequence[DumpRow]) -> None:
        """Create dumped tables (indexes, search) or insert dumped rows, keeping their _id."""
        for r in rows:
            if section == "datastore_table":
                fields = []
                for f in r["fields"]:
                    reported, kind, array = parse_type(f["type"])
                    fields.append(Field(f["id"], reported, kind, array, f.get("info") or {}))
                spec = CreateSpec(
                    r["resource_id"],
                    tuple(fields),
                    tuple(r["primary_key"]),
                    tuple(r["indexes"]),
                    tuple(r["aliases"]),
                )
                _create(conn, spec, [])
                continue
            values = r["row"]
            conn.execute(
                f"INSERT INTO {q(r['resource_id'])}({', '.join(q(c) for c in values)}) "
                f"VALUES ({', '.join('?' * len(values))})",
                list(values.values()),
            )

    async def load_dump(self, section: str, rows: Sequence[DumpRow]) -> None:
        """Store dumped records of a section of dump_rows in one writer job."""
        await self._write(lambda conn: self.load_rows(conn, section, rows))

    async def start(self) -> None:
        """Open the file (creating it and the metadata tables)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = Writer(
            self._open_writer, wal_path=self.path.with_name(self.path.name + "-wal")
        )
        await asyncio.to_thread(self._writer.start)
        self._checkpointer = Checkpointer(self._open)
        self._checkpointer.start()
        self._pool = ThreadPoolExecutor(self._read_threads, thread_name_prefix="cityos-datastore")

    async def close(self) -> None:
        """Finish pending writes and close the file."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.close)
            self._writer = None
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.close)
            self._checkpointer = None

    async def _read(self, job: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._pool is None:
            raise RuntimeError("the datastore is not started")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: job(self._reader()))

    async def _write(self, job: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._writer is None:
            raise RuntimeError("the datastore is not started")
        return await self._writer.submit(job)

    # -- the operations --------------------------------------------------------------------

    async def table(self, name: str) -> Table | None:
        """Return the table of a resource id or alias, or None."""
        result: Table | None = await self._read(lambda conn: load_table(conn, name))
        return result

    async def create(self, spec: CreateSpec, records: Sequence[Any]) -> Table:
        """Create the table (or add fields to it) and insert records, all or nothing."""
        result: Table = await self._write(lambda conn: _create(conn, spec, records))
        return result

    async def upsert(self, rid: str, records: Sequence[Any], method: str) -> int:
        """Insert, update or upsert records, all or nothing; return how many."""

        def run(conn: sqlite3.Connection) -> int:
            table = load_table(conn, rid)
            if table is None:
                raise NotFound(f'Resource "{rid}" was not found.')
            check_write_method(table, records, method)
            return _insert(conn, table, records, method)

        result: int = await self._write(run)
        return result

    async def delete(self, rid: str, conditions: Sequence[Condition] | None) -> int:
        """Drop the table (conditions None) or delete matching rows; return rows deleted."""
        result: int = await self._write(lambda conn: _delete(conn, rid, conditions))
        return result

    async def search(self, table: Table, query: SearchQuery) -> SearchResult:
        """Return a page of records (and the total) of a validated query."""

        def run(conn: sqlite3.Connection) -> SearchResult:
            try:
                return _search(conn, table, query, self._totals())
            except sqlite3.OperationalError as exc:
                # the table changed (dropped, altered) between metadata and query
                raise NotFound(f'Resource "{table.resource_id}" was not found: {exc}') from None

        result: SearchResult = await self._read(run)
        return result

    async def count(self, rid: str) -> int:
        """Return the number of rows of a table."""

        def run(conn: sqlite3.Connection) -> int:
            n: int = conn.execute(f"SELECT count(*) FROM {q(rid)}").fetchone()[0]
            return n

        result: int = await self._read(run)
        return result

    async def tables_read_by(self, sql: str) -> set[str]:
        """Return the datastore tables a SELECT reads; raise ValidationError when it is not
        one read-only statement over datastore tables."""

        def run(conn: sqlite3.Connection) -> set[str]:
            tables = frozenset(
                r for (r,) in conn.execute("SELECT resource_id FROM _datastore_tables")
            )
            auth = sqlcheck.Authorizer(tables, _schema_names(conn))
            conn.set_authorizer(auth)
            try:
                conn.execute("EXPLAIN " + sql).fetchall()
            except sqlite3.Error as exc:
                raise sqlcheck.sql_error(exc, auth, None) from None
            finally:
                conn.set_authorizer(None)
            return auth.read

        result: set[str] = await self._read(run)
        return result

    async def run_sql(
        self,
        sql: str,
        tables: set[str],
        *,
        seconds: float = sqlcheck.TIME_LIMIT,
        cap: int = sqlcheck.ROW_CAP,
    ) -> SqlResult:
        """Run a checked SELECT reading only `tables`, stopped after `seconds`."""

        def run(conn: sqlite3.Connection) -> SqlResult:
            auth = sqlcheck.Authorizer(frozenset(tables), _schema_names(conn))
            deadline = sqlcheck.Deadline(seconds)
            conn.set_authorizer(auth)
            conn.set_progress_handler(deadline, 1000)
            try:
                cur = conn.execute(sql)
                rows = cur.fetchmany(cap + 1)
                columns = [d[0] for d in cur.description or ()]
                cur.close()
            except sqlite3.Error as exc:
                raise sqlcheck.sql_error(exc, auth, deadline) from None
            finally:
                conn.set_progress_handler(None, 0)
                conn.set_authorizer(None)
            return SqlResult(columns, rows[:cap], len(rows) > cap)

        result: SqlResult = await self._read(run)
        return result
