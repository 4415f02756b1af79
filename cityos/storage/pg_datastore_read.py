"""Reads of the PostgreSQL datastore: datastore_search as SQL, and datastore_search_sql run
as the datastore's read-only role (see pg_datastore_sql.py for the policy)."""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Collection
from typing import Any, Final

import asyncpg
import orjson

from cityos.catalog.datastore import Condition, SearchQuery, Table, render_records
from cityos.catalog.errors import CkanError, NotAuthorized, ValidationError
from cityos.storage import pg_datastore_sql
from cityos.storage.pg_index import Conn
from cityos.storage.sqlite_datastore import SearchResult, q

#: the error of every statement that is not one read-only SELECT (as on SQLite)
READ_ONLY: Final = "only reading is allowed (no writes, PRAGMA, ATTACH or DDL)"
_DENIED: Final = re.compile(r"permission denied for \w+ (.+)$")


def table_sql(schema: str, rid: str) -> str:
    """Return the quoted, schema-qualified name of a resource's table."""
    return f"{q(schema)}.{q(rid)}"


def arg(params: list[Any], value: Any) -> str:
    """Append a parameter; return its placeholder."""
    params.append(value)
    return f"${len(params)}"


def condition(cond: Condition, params: list[Any]) -> str:
    """Return the SQL of one filter condition, appending its parameters."""
    col = q(cond.field.id)
    if cond.op != "in":
        return f"{col} {cond.op} {arg(params, cond.values[0])}"
    values = [v for v in cond.values if v is not None]
    parts: list[str] = []
    if len(values) == 1:
        parts.append(f"{col} = {arg(params, values[0])}")
    elif values:
        parts.append(f"{col} IN ({', '.join(arg(params, v) for v in values)})")
    if len(values) != len(cond.values):
        parts.append(f"{col} IS NULL")
    return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"


def _where(table: Table, query: SearchQuery, params: list[Any]) -> str:
    clauses = [condition(c, params) for c in query.conditions]
    text_cols = [q(f.id) for f in table.text_fields]
    for m in query.matches:
        like = "%" + m.term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        # ILIKE: SQLite's LIKE and its FTS5 trigram index both ignore (ASCII) case
        if m.field is not None:
            clauses.append(f"CAST({q(m.field.id)} AS text) ILIKE {arg(params, like)} ESCAPE '\\'")
            continue
        cols = text_cols or [f"CAST({q(f.id)} AS text)" for f in table.fields]
        if not cols:
            clauses.append("false")
            continue
        p = arg(params, like)
        clauses.append("(" + " OR ".join(f"{c} ILIKE {p} ESCAPE '\\'" for c in cols) + ")")
    return (" WHERE " + " AND ".join(clauses)) if clauses else ""


def _order(query: SearchQuery) -> str:
    # NULLS FIRST/LAST: SQLite sorts NULL before every value
    parts = []
    for f, desc in query.sort:
        col = q(f.id)
        if query.distinct and f not in query.columns:
            col = f"{'max' if desc else 'min'}({col})"  # any value of the group, as SQLite
        parts.append(f"{col} {'DESC NULLS LAST' if desc else 'ASC NULLS FIRST'}")
    if query.distinct:
        # then by value: SQLite walks the first column's index (every scalar field has one)
        parts.extend(f"{q(f.id)} ASC NULLS FIRST" for f in query.columns)
    else:
        parts.append("_id")
    return ", ".join(parts)


async def search(conn: Conn, schema: str, table: Table, query: SearchQuery) -> SearchResult:
    """Return a page of records and the total, read from one snapshot."""
    name = table_sql(schema, table.resource_id)
    params: list[Any] = []
    where = _where(table, query, params)
    cols = ", ".join(q(f.id) for f in query.columns)
    # GROUP BY, not DISTINCT: PostgreSQL refuses a DISTINCT sorted by a column it drops
    group = f" GROUP BY {cols}" if query.distinct else ""
    sql = f"SELECT {cols} FROM {name}{where}{group} ORDER BY {_order(query)}"
    sql += f" LIMIT ${len(params) + 1} OFFSET ${len(params) + 2}"
    rows = await conn.fetch(sql, *params, query.limit, query.offset)
    total: int | None = None
    if query.include_total:
        if query.distinct:
            count = f"SELECT count(*) FROM (SELECT DISTINCT {cols} FROM {name}{where}) AS d"
        else:
            count = f"SELECT count(*) FROM {name}{where}"
        total = await conn.fetchval(count, *params)
    found = render_records(query.columns, [tuple(r) for r in rows], query.records_format)
    return SearchResult(found, total)


# -- datastore_search_sql -------------------------------------------------------------------


async def restrict(conn: Conn, schema: str, role: str | None, seconds: float) -> None:
    """Make the current (read-only) transaction run as the reader role, see only the
    datastore schema and stop statements after `seconds`."""
    if role is not None:
        await conn.execute(f"SET LOCAL ROLE {q(role)}")
    await conn.execute(
        "SELECT set_config('search_path', $1, true), set_config('statement_timeout', $2, true),"
        " set_config('standard_conforming_strings', 'on', true)",
        q(schema),
        f"{max(1, int(seconds * 1000))}ms",
    )


async def relations(conn: Conn, schema: str, sql: str) -> set[str]:
    """Return the datastore tables a checked statement's plan reads."""
    pg_datastore_sql.check_functions(sql)
    plan = await conn.fetchval("EXPLAIN (VERBOSE, FORMAT JSON) " + sql)
    return pg_datastore_sql.plan_relations(orjson.loads(plan), schema)


def sql_error(exc: asyncpg.PostgresError, tables: Collection[str]) -> CkanError:
    """Return the CKAN error of a failed datastore_search_sql statement (`tables`: the
    datastore's tables, which the reader role may read but not change)."""
    if isinstance(exc, asyncpg.QueryCanceledError):
        return ValidationError({"query": ["Query took too long"]})
    if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
        return ValidationError({"query": [READ_ONLY]})
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        m = _DENIED.match(str(exc))
        name = m.group(1) if m else str(exc)
        if name in tables:  # a write or a row lock of a datastore table
            return ValidationError({"query": [READ_ONLY]})
        return NotAuthorized(f'Not authorized to access system tables ("{name}")')
    if "multiple commands" in str(exc):
        return ValidationError({"query": ["Only a single SELECT statement is allowed"]})
    return ValidationError({"query": [str(exc)]})


def plain(value: Any) -> Any:
    """Return a result value as SQLite would give it (numbers, text, bytes or None)."""
    if isinstance(value, bool):
        return int(value)
    if value is None or isinstance(value, int | float | str | bytes):
        return value
    if isinstance(value, decimal.Decimal):
        if value.is_finite() and value == value.to_integral_value():
            return int(value)
        return float(value)
    if isinstance(value, dt.date | dt.time | dt.datetime):
        return value.isoformat()
    if isinstance(value, list | tuple | dict):
        return orjson.dumps(value, default=str).decode()
    return str(value)
