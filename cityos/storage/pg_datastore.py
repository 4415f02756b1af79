"""The datastore on PostgreSQL: one table per resource, in a schema of its own.

The twin of ``sqlite_datastore.DatastoreStore``: same calls, answers, errors and order.
Columns keep SQLite's storage classes (text, bigint, double precision; booleans as 0/1
smallint; dates, times, JSON and arrays as text), so records, sorting and dumps are the same
on both engines. Metadata (``datastore_tables``, ``datastore_aliases``) sits beside the other
cityos tables; migration 0007 made both and the reader role of datastore_search_sql.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import asyncpg
import orjson

from cityos.catalog import sqlcheck
from cityos.catalog.datastore import Condition, SearchQuery, Table, coerce_record
from cityos.catalog.errors import IntegrityError, NotAuthorized, NotFound, ValidationError
from cityos.storage import pg_datastore_read as read
from cityos.storage.datastore_rows import (
    CreateSpec,
    alias_taken,
    check_write_method,
    fields_json,
    key_not_found,
    parse_fields_json,
    plan_create,
    table_from_meta,
    update_key,
)
from cityos.storage.pg_datastore_read import arg, table_sql
from cityos.storage.pg_index import Conn
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import DumpRow
from cityos.storage.sqlite_datastore import SearchResult, SqlResult, q

#: kind -> column type: SQLite's storage classes (see the module docstring)
PG_TYPES: Final = {
    "text": "text",
    "int": "bigint",
    "float": "double precision",
    "bool": "smallint",
    "date": "text",
    "time": "text",
    "timestamp": "text",
    "json": "text",
}
#: PostgreSQL's identifier limit, in bytes: a longer table name would be cut short
MAX_RESOURCE_ID: Final = 63
#: first key of the advisory locks of datastore writes ("datastore" would not fit in int4)
_LOCK_SPACE: Final = 0x44530007
_BAD_ROW: Final = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)


async def _config(conn: Conn) -> tuple[str, str | None]:
    row = await conn.fetchrow("SELECT schema_name, reader_role FROM datastore_config")
    if row is None:
        raise RuntimeError("the datastore is not set up: migration 0007 is missing")
    return row[0], row[1]


async def load_table(conn: Conn, name: str) -> Table | None:
    """Return the table of a resource id or alias."""
    row = await conn.fetchrow(
        "SELECT t.resource_id, t.fields, t.primary_key, t.indexes, ARRAY(SELECT a.alias "
        "FROM datastore_aliases a WHERE a.resource_id = t.resource_id) FROM datastore_tables t "
        "WHERE t.resource_id = coalesce((SELECT resource_id FROM datastore_aliases "
        "WHERE alias=$1), $1)",
        name,
    )
    return None if row is None else table_from_meta(*row)


def _index_name(*parts: str) -> str:
    # hashed: "<resource id>__i_<field>" could pass the 63-byte limit and be cut to a clash
    return "ix_" + hashlib.sha1("\x00".join(parts).encode()).hexdigest()[:40]


def _column(kind: str, array: bool) -> str:
    kind = "text" if array else kind
    # "C": text sorts and compares by code point whatever the locale, as on SQLite
    return 'text COLLATE "C"' if PG_TYPES[kind] == "text" else PG_TYPES[kind]


def _upsert_sql(name: str, table: Table, cols: tuple[str, ...]) -> str:
    """Return the statement upserting one record by primary key: an update when the key
    exists, else an insert (its ON CONFLICT only settles a race with another worker)."""
    # not a bare INSERT ... ON CONFLICT: it would draw an _id for every key that exists, and
    # new rows' ids would stop following SQLite's
    types = {f.id: PG_TYPES["text" if f.array else f.kind] for f in table.fields}
    pk = table.primary_key
    arg = {c: f"${i}::{types[c]}" for i, c in enumerate(cols, start=1)}
    key = " AND ".join(f"{q(k)} = {arg[k]}" for k in pk)
    target = ", ".join(q(c) for c in pk)
    updates = [c for c in cols if c not in pk]
    insert = f"INSERT INTO {name}({', '.join(q(c) for c in cols)}) SELECT "
    insert += ", ".join(arg[c] for c in cols)
    if not updates:
        return (
            f"{insert} WHERE NOT EXISTS (SELECT FROM {name} WHERE {key}) "
            f"ON CONFLICT({target}) DO NOTHING"
        )
    sets = ", ".join(f"{q(c)} = {arg[c]}" for c in updates)
    excluded = ", ".join(f"{q(c)} = EXCLUDED.{q(c)}" for c in updates)
    return (
        f"WITH u AS (UPDATE {name} SET {sets} WHERE {key} RETURNING 1) {insert} "
        f"WHERE NOT EXISTS (SELECT FROM u) ON CONFLICT({target}) DO UPDATE SET {excluded}"
    )


async def _lock(conn: Conn, rid: str) -> None:
    # creates, drops and alterations of one table wait for each other, across workers
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_SPACE, rid)


async def _bump_ids(conn: Conn, name: str) -> None:
    # rows written with their own _id: the next generated one follows the largest, as SQLite
    await conn.execute(
        f"SELECT setval(pg_get_serial_sequence($1, '_id'), m) "
        f"FROM (SELECT max(_id) AS m FROM {name}) AS s WHERE m IS NOT NULL",
        name,
    )


async def _insert(
    conn: Conn, schema: str, table: Table, records: Sequence[Any], method: str
) -> int:
    fields = {f.id: f for f in table.fields}
    name = table_sql(schema, table.resource_id)
    pk = table.primary_key
    batch: list[tuple[Any, ...]] = []
    batch_cols: tuple[str, ...] | None = None
    own_ids = False

    async def flush() -> None:
        nonlocal batch
        if not batch or batch_cols is None:
            return
        if not batch_cols:  # records that set no field
            sql = f"INSERT INTO {name} DEFAULT VALUES"
        elif method == "upsert" and pk:
            sql = _upsert_sql(name, table, batch_cols)
        else:
            marks = ", ".join(f"${i}" for i in range(1, len(batch_cols) + 1))
            sql = f"INSERT INTO {name}({', '.join(q(c) for c in batch_cols)}) VALUES ({marks})"
        try:
            await conn.executemany(sql, batch)
        except _BAD_ROW as exc:
            raise ValidationError({"records": [f"duplicate key or bad row: {exc}"]}) from None
        batch = []

    done = 0
    for i, rec in enumerate(records, start=1):
        values = coerce_record(fields, rec, i, keep_id=method != "insert" and not pk)
        key = update_key(values, pk, method, i)
        if key is not None:
            await flush()
            params: list[Any] = []
            where = " AND ".join(f"{q(k)} = {arg(params, values[k])}" for k in key)
            sets = ", ".join(f"{q(c)} = {arg(params, values[c])}" for c in values if c not in key)
            try:
                if sets:
                    status = await conn.execute(f"UPDATE {name} SET {sets} WHERE {where}", *params)
                    changed = int(status.split()[-1])
                else:
                    changed = await conn.fetchval(
                        f"SELECT count(*) FROM {name} WHERE {where}", *params
                    )
                if changed == 0:
                    if method == "update":
                        raise key_not_found(values, key, i)
                    marks = ", ".join(f"${n}" for n in range(1, len(values) + 1))
                    await conn.execute(
                        f"INSERT INTO {name}({', '.join(q(c) for c in values)}) VALUES ({marks})",
                        *values.values(),
                    )
                    own_ids = own_ids or "_id" in values
            except _BAD_ROW as exc:
                raise ValidationError({"records": [f"duplicate key or bad row: {exc}"]}) from None
            done += 1
            continue
        values.pop("_id", None)
        cols = tuple(values)
        if cols != batch_cols or len(batch) >= 5000:
            await flush()
            batch_cols = cols
        batch.append(tuple(values.values()))
        done += 1
    await flush()
    if own_ids:
        await _bump_ids(conn, name)
    return done


async def _create_indexes(conn: Conn, schema: str, table: Table) -> None:
    rid, name = table.resource_id, table_sql(schema, table.resource_id)
    if table.primary_key:
        cols = ", ".join(q(c) for c in table.primary_key)
        try:
            await conn.execute(
                f"CREATE UNIQUE INDEX IF NOT EXISTS {q(_index_name(rid))} ON {name}({cols})"
            )
        except asyncpg.UniqueViolationError:
            raise IntegrityError(
                f"primary key ({', '.join(table.primary_key)}) is not unique in the records"
            ) from None
    for field in table.indexes:
        index = q(_index_name(rid, field))
        await conn.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {name}({q(field)})")


async def create_table(conn: Conn, spec: CreateSpec, records: Sequence[Any]) -> Table:
    """Create the table (or add fields to it) and insert records, in the caller's
    transaction."""
    schema, reader = await _config(conn)
    rid = spec.resource_id
    if len(rid.encode()) > MAX_RESOURCE_ID:
        msg = f"longer than {MAX_RESOURCE_ID} bytes, PostgreSQL's limit for a table name"
        raise ValidationError({"resource_id": [msg]})
    await _lock(conn, rid)
    plan = plan_create(await load_table(conn, rid), spec, records)
    table, name = plan.table, table_sql(schema, rid)
    for alias in spec.aliases:
        owner = await conn.fetchval(
            "SELECT resource_id FROM datastore_aliases WHERE alias=$1 UNION ALL "
            "SELECT resource_id FROM datastore_tables WHERE resource_id=$1",
            alias,
        )
        refused = alias_taken(alias, rid, owner)
        if refused is not None:
            raise refused
    if plan.fresh:
        cols = "".join(f", {q(f.id)} {_column(f.kind, f.array)}" for f in table.fields)
        await conn.execute(
            f"CREATE TABLE {name}(_id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY{cols})"
        )
        if reader is not None:
            await conn.execute(f"GRANT SELECT ON {name} TO {q(reader)}")
        await _insert(conn, schema, table, records, "insert")  # indexes after a bulk load
        await _create_indexes(conn, schema, table)
    else:
        for f in plan.added:
            await conn.execute(
                f"ALTER TABLE {name} ADD COLUMN {q(f.id)} {_column(f.kind, f.array)}"
            )
        old = await load_table(conn, rid)
        if old is not None and table.primary_key != old.primary_key:
            await conn.execute(f"DROP INDEX IF EXISTS {q(schema)}.{q(_index_name(rid))}")
        await _create_indexes(conn, schema, table)
        await _insert(conn, schema, table, records, "insert")
    await conn.execute(
        "INSERT INTO datastore_tables(resource_id, fields, primary_key, indexes) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (resource_id) DO UPDATE SET "
        "fields=EXCLUDED.fields, primary_key=EXCLUDED.primary_key, indexes=EXCLUDED.indexes",
        rid,
        fields_json(table.fields),
        orjson.dumps(list(table.primary_key)).decode(),
        orjson.dumps(list(table.indexes)).decode(),
    )
    for alias in spec.aliases:
        await conn.execute(
            "INSERT INTO datastore_aliases VALUES ($1, $2) "
            "ON CONFLICT (alias) DO UPDATE SET resource_id=EXCLUDED.resource_id",
            alias,
            rid,
        )
    found = await load_table(conn, rid)
    assert found is not None
    return found


async def _delete(conn: Conn, rid: str, conditions: Sequence[Condition] | None) -> int:
    schema, _ = await _config(conn)
    table = await load_table(conn, rid)
    if table is None:
        raise NotFound(f'Resource "{rid}" was not found.')
    rid = table.resource_id
    name = table_sql(schema, rid)
    if conditions is None:
        await _lock(conn, rid)
        count: int = await conn.fetchval(f"SELECT count(*) FROM {name}")
        await conn.execute(f"DROP TABLE {name}")
        await conn.execute("DELETE FROM datastore_tables WHERE resource_id=$1", rid)
        await conn.execute("DELETE FROM datastore_aliases WHERE resource_id=$1", rid)
        return count
    params: list[Any] = []
    where = " AND ".join(read.condition(c, params) for c in conditions) or "true"
    status = await conn.execute(f"DELETE FROM {name} WHERE {where}", *params)
    return int(status.split()[-1])


class PgDatastoreStore:
    """Tables of rows behind resources, in the PostgreSQL database of a PostgresStorage."""

    #: dump sections, with the rows of DatastoreStore.dump_rows
    DUMP_SECTIONS: Final = ("datastore_table", "datastore_row")

    def __init__(self, store: PostgresStorage) -> None:
        self._store = store
        self._schema = ""
        self._reader: str | None = None

    async def start(self) -> None:
        """Read where the tables live (migration 0007, applied by PostgresStorage.start())."""
        async with self._store.pool.acquire() as conn:
            self._schema, self._reader = await _config(conn)

    async def close(self) -> None:
        """Do nothing: the connections belong to the PostgresStorage."""

    @staticmethod
    async def dump_rows(conn: Conn) -> AsyncIterator[tuple[str, DumpRow]]:
        """Yield each table's definition (fields, keys, indexes, aliases), then its rows."""
        schema, _ = await _config(conn)
        metas = await conn.fetch("SELECT resource_id FROM datastore_tables ORDER BY resource_id")
        for (rid,) in metas:
            table = await load_table(conn, rid)
            assert table is not None
            fields = await conn.fetchval(
                "SELECT fields FROM datastore_tables WHERE resource_id=$1", rid
            )
            yield (
                "datastore_table",
                {
                    "resource_id": rid,
                    "fields": orjson.loads(fields),
                    "primary_key": list(table.primary_key),
                    "indexes": list(table.indexes),
                    "aliases": list(table.aliases),
                },
            )
            async for row in conn.cursor(f"SELECT * FROM {table_sql(schema, rid)} ORDER BY _id"):
                yield "datastore_row", {"resource_id": rid, "row": dict(row.items())}

    @staticmethod
    async def load_rows(conn: Conn, section: str, rows: Sequence[DumpRow]) -> None:
        """Create dumped tables (with their indexes) or insert dumped rows, keeping their _id."""
        if section not in PgDatastoreStore.DUMP_SECTIONS:
            raise ValueError(f"not a section of the datastore: {section!r}")
        schema, _ = await _config(conn)
        touched: set[str] = set()
        for r in rows:
            if section == "datastore_table":
                spec = CreateSpec(
                    r["resource_id"],
                    parse_fields_json(orjson.dumps(r["fields"]).decode()),
                    tuple(r["primary_key"]),
                    tuple(r["indexes"]),
                    tuple(r["aliases"]),
                )
                await create_table(conn, spec, [])
                continue
            values, name = r["row"], table_sql(schema, r["resource_id"])
            marks = ", ".join(f"${n}" for n in range(1, len(values) + 1))
            await conn.execute(
                f"INSERT INTO {name}({', '.join(q(c) for c in values)}) VALUES ({marks})",
                *values.values(),
            )
            touched.add(name)
        for name in sorted(touched):
            await _bump_ids(conn, name)

    async def load_dump(self, section: str, rows: Sequence[DumpRow]) -> None:
        """Store dumped records of a section of dump_rows in one transaction."""
        async with self._store.pool.acquire() as conn, conn.transaction():
            await self.load_rows(conn, section, rows)

    # -- the operations --------------------------------------------------------------------

    async def table(self, name: str) -> Table | None:
        """Return the table of a resource id or alias, or None."""
        async with self._store.pool.acquire() as conn:
            return await load_table(conn, name)

    async def create(self, spec: CreateSpec, records: Sequence[Any]) -> Table:
        """Create the table (or add fields to it) and insert records, all or nothing."""
        async with self._store.pool.acquire() as conn, conn.transaction():
            return await create_table(conn, spec, records)

    async def upsert(self, rid: str, records: Sequence[Any], method: str) -> int:
        """Insert, update or upsert records, all or nothing; return how many."""
        async with self._store.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    table = await load_table(conn, rid)
                    if table is None:
                        raise NotFound(f'Resource "{rid}" was not found.')
                    check_write_method(table, records, method)
                    return await _insert(conn, self._schema, table, records, method)
            except asyncpg.UndefinedTableError:  # another worker dropped it meanwhile
                raise NotFound(f'Resource "{rid}" was not found.') from None

    async def delete(self, rid: str, conditions: Sequence[Condition] | None) -> int:
        """Drop the table (conditions None) or delete matching rows; return rows deleted."""
        async with self._store.pool.acquire() as conn, conn.transaction():
            return await _delete(conn, rid, conditions)

    async def search(self, table: Table, query: SearchQuery) -> SearchResult:
        """Return a page of records (and the total) of a validated query."""
        async with self._store.pool.acquire() as conn:
            try:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    return await read.search(conn, self._schema, table, query)
            except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as exc:
                # the table changed (dropped, altered) between metadata and query
                raise NotFound(f'Resource "{table.resource_id}" was not found: {exc}') from None

    async def count(self, rid: str) -> int:
        """Return the number of rows of a table."""
        n: int = await self._store.pool.fetchval(
            f"SELECT count(*) FROM {table_sql(self._schema, rid)}"
        )
        return n

    @staticmethod
    async def _table_names(conn: Conn) -> set[str]:
        return {r for (r,) in await conn.fetch("SELECT resource_id FROM datastore_tables")}

    async def tables_read_by(self, sql: str) -> set[str]:
        """Return the datastore tables a SELECT reads; raise ValidationError when it is not
        one read-only statement over datastore tables."""
        async with self._store.pool.acquire() as conn:
            known = await self._table_names(conn)
            try:
                async with conn.transaction(readonly=True):
                    await read.restrict(conn, self._schema, self._reader, sqlcheck.TIME_LIMIT)
                    return await read.relations(conn, self._schema, sql)
            except asyncpg.PostgresError as exc:
                raise read.sql_error(exc, known) from None

    async def run_sql(
        self,
        sql: str,
        tables: set[str],
        *,
        seconds: float = sqlcheck.TIME_LIMIT,
        cap: int = sqlcheck.ROW_CAP,
    ) -> SqlResult:
        """Run a checked SELECT reading only `tables`, stopped after `seconds`."""
        async with self._store.pool.acquire() as conn:
            known = await self._table_names(conn)
            try:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    await read.restrict(conn, self._schema, self._reader, seconds)
                    extra = await read.relations(conn, self._schema, sql) - tables
                    if extra:
                        raise NotAuthorized(f'Not authorized to read "{sorted(extra)[0]}"')
                    stmt = await conn.prepare(sql)
                    columns = [a.name for a in stmt.get_attributes()]
                    cursor = await stmt.cursor()
                    rows = await cursor.fetch(cap + 1)
            except asyncpg.PostgresError as exc:
                raise read.sql_error(exc, known) from None
        out = [tuple(read.plain(v) for v in row) for row in rows]
        return SqlResult(columns, out[:cap], len(out) > cap)
