"""The rules of datastore_search_sql: one read-only SELECT over datastore tables, time-limited.

Text checks catch the obvious (not a SELECT); the real guard is SQLite's authorizer, which
sees every table a statement reads and every operation it would do, whatever the spelling
(comments, CTEs, subqueries). `Authorizer` is that policy; the store installs it on a
read-only connection (see storage/sqlite_datastore.py) together with a `Deadline`.
"""

from __future__ import annotations

import re
import sqlite3
import time
from typing import Final

from cityos.catalog.errors import CkanError, NotAuthorized, ValidationError

TIME_LIMIT: Final = 5.0  # seconds
ROW_CAP: Final = 32000  # rows returned at most; more sets records_truncated
MAX_SQL: Final = 100_000  # characters
#: table-valued functions a SELECT may use on JSON columns
_TABLE_FUNCTIONS: Final = frozenset({"json_each", "json_tree"})
_SYSTEM_PREFIXES: Final = ("sqlite_", "pragma_")
_COMMENT: Final = re.compile(r"\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$)", re.DOTALL)


def check_text(sql: object) -> str:
    """Return the statement if it is text starting with SELECT or WITH; else raise."""
    if not isinstance(sql, str) or not sql.strip():
        raise ValidationError({"sql": ["Missing value"]})
    if len(sql) > MAX_SQL:
        raise ValidationError({"sql": [f"longer than {MAX_SQL} characters"]})
    if "\x00" in sql:
        raise ValidationError({"sql": ["contains a NUL character"]})
    pos = 0
    while m := _COMMENT.match(sql, pos):
        if m.end() == pos:
            break
        pos = m.end()
    word = re.match(r"[A-Za-z]+", sql[pos:])
    if word is None or word.group(0).lower() not in ("select", "with"):
        raise ValidationError({"sql": ["Only a single SELECT statement is allowed"]})
    return sql


class Denied(Exception):
    """The statement tried something the policy forbids (kept for the error message)."""


class Authorizer:
    """SQLite authorizer: allow reads of the given tables and nothing that changes or reveals
    anything else. `read` collects the tables the statement reads."""

    def __init__(self, tables: frozenset[str], schema: frozenset[str] = frozenset()) -> None:
        self.tables = tables
        #: every other name in the file (lower case): never readable, even by count(*)
        self.schema = frozenset(n.lower() for n in schema)
        self.read: set[str] = set()
        self.denied: list[str] = []
        self.denied_tables: list[str] = []

    def __call__(
        self, code: int, arg1: str | None, arg2: str | None, db: str | None, src: str | None
    ) -> int:
        if code == sqlite3.SQLITE_SELECT or code == sqlite3.SQLITE_RECURSIVE:
            return sqlite3.SQLITE_OK
        if code == sqlite3.SQLITE_FUNCTION:
            return sqlite3.SQLITE_OK
        if code == sqlite3.SQLITE_READ:
            if arg1 in _TABLE_FUNCTIONS:
                return sqlite3.SQLITE_OK
            if db in (None, "main") and arg1 in self.tables:
                self.read.add(arg1)
                return sqlite3.SQLITE_OK
            if db is None and arg2 == "" and arg1 is not None and not self._system(arg1):
                # count(*) over a CTE or subquery: SQLite reports it without a database
                return sqlite3.SQLITE_OK
            self.denied_tables.append(str(arg1))
            return sqlite3.SQLITE_DENY
        self.denied.append("only reading is allowed (no writes, PRAGMA, ATTACH or DDL)")
        return sqlite3.SQLITE_DENY

    def _system(self, name: str) -> bool:
        low = name.lower()
        return low in self.schema or low.startswith(_SYSTEM_PREFIXES) or low == "dbstat"


class Deadline:
    """A progress handler that stops a statement after `seconds`."""

    def __init__(self, seconds: float = TIME_LIMIT) -> None:
        self.until = time.monotonic() + seconds
        self.expired = False

    def __call__(self) -> int:
        if time.monotonic() > self.until:
            self.expired = True
            return 1
        return 0


def sql_error(exc: sqlite3.Error, auth: Authorizer, deadline: Deadline | None) -> CkanError:
    """Return the CKAN error for a failed statement (CKAN's types: system tables are an
    authorization error, anything else a validation error of `query`)."""
    if deadline is not None and deadline.expired:
        return ValidationError({"query": ["Query took too long"]})
    if auth.denied_tables:
        name = auth.denied_tables[0]
        return NotAuthorized(f'Not authorized to access system tables ("{name}")')
    if auth.denied:
        return ValidationError({"query": [auth.denied[0]]})
    if isinstance(exc, sqlite3.ProgrammingError) and "one statement" in str(exc):
        return ValidationError({"query": ["Only a single SELECT statement is allowed"]})
    return ValidationError({"query": [str(exc)]})
