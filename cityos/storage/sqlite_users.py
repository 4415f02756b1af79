"""SQLite tables of staff accounts and their sessions, in the broker's file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, Final

import orjson

from cityos.auth import users
from cityos.auth.sessions import ABSOLUTE_SECONDS, IDLE_SECONDS, Session
from cityos.auth.users import User
from cityos.storage.sqlite import DumpRow, DumpTable, SqliteStorage, dump_tables, load_tables

DDL: Final = (
    """CREATE TABLE IF NOT EXISTS auth_users(
        name TEXT PRIMARY KEY,
        display_name TEXT NOT NULL,
        roles TEXT NOT NULL,
        tenants TEXT NOT NULL,
        password TEXT NOT NULL,
        created REAL NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        last_login REAL,
        failures INTEGER NOT NULL DEFAULT 0,
        first_failure REAL,
        locked_until REAL
    )""",
    """CREATE TABLE IF NOT EXISTS auth_sessions(
        digest TEXT PRIMARY KEY,
        user TEXT NOT NULL REFERENCES auth_users(name) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        created REAL NOT NULL,
        last_seen REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS auth_sessions_user ON auth_sessions(user)",
)
_COLUMNS: Final = (
    "name, display_name, roles, tenants, created, disabled, last_login, failures, "
    "first_failure, locked_until"
)
_USER_COLUMNS: Final = ", ".join(f"u.{c.strip()}" for c in _COLUMNS.split(","))


def _user(row: tuple[Any, ...]) -> User:
    name, display, roles, tenants, created, disabled, last_login, failures, first, locked = row
    return User(
        name=name,
        display_name=display,
        roles=tuple(orjson.loads(roles)),
        tenants=tuple(orjson.loads(tenants)),
        created=created,
        disabled=bool(disabled),
        last_login=last_login,
        failures=failures,
        first_failure=first,
        locked_until=locked,
    )


def _get(conn: sqlite3.Connection, name: str) -> User | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM auth_users WHERE name=?", (name,)).fetchone()
    return None if row is None else _user(row)


def _end_sessions(conn: sqlite3.Connection, name: str) -> None:
    conn.execute("DELETE FROM auth_sessions WHERE user=?", (name,))


class UserStore:
    """Staff accounts and sessions in the broker's SQLite file."""

    def __init__(self, store: SqliteStorage) -> None:
        self._store = store

    #: (dump section, table, order, rowid too?) of what `cityos export` keeps
    DUMP_TABLES: Final[tuple[DumpTable, ...]] = (("user", "auth_users", "rowid", False),)

    @staticmethod
    def dump_rows(conn: sqlite3.Connection) -> Iterator[tuple[str, DumpRow]]:
        """Yield the staff accounts with their password hashes (sessions are not kept)."""
        return dump_tables(conn, UserStore.DUMP_TABLES)

    @staticmethod
    def load_rows(conn: sqlite3.Connection, section: str, rows: Sequence[DumpRow]) -> None:
        """Store dumped rows of a section of dump_rows, keeping their keys."""
        load_tables(conn, UserStore.DUMP_TABLES, section, rows)

    async def setup(self) -> None:
        """Create the tables if needed."""

        def run(conn: sqlite3.Connection) -> None:
            for ddl in DDL:
                conn.execute(ddl)

        await self._store.write(run)

    # -- accounts ----------------------------------------------------------------------------------
    async def insert(self, user: User, password_hash: str) -> bool:
        """Store a new account; return False (and change nothing) if the name is taken."""

        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT OR IGNORE INTO auth_users(name, display_name, roles, tenants, password, "
                "created) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    user.name,
                    user.display_name,
                    orjson.dumps(user.roles).decode(),
                    orjson.dumps(user.tenants).decode(),
                    password_hash,
                    user.created,
                ),
            )
            return cur.rowcount > 0

        result: bool = await self._store.write(run)
        return result

    async def get(self, name: str) -> User | None:
        """Return the account called name, or None."""
        result: User | None = await self._store.read(lambda conn: _get(conn, name))
        return result

    async def get_with_hash(self, name: str) -> tuple[User, str] | None:
        """Return the account called name and its password hash, or None."""

        def run(conn: sqlite3.Connection) -> tuple[User, str] | None:
            row = conn.execute(
                f"SELECT password, {_COLUMNS} FROM auth_users WHERE name=?", (name,)
            ).fetchone()
            return None if row is None else (_user(row[1:]), row[0])

        result: tuple[User, str] | None = await self._store.read(run)
        return result

    async def list_users(self) -> list[User]:
        """Return every account, by name."""

        def run(conn: sqlite3.Connection) -> list[User]:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM auth_users ORDER BY name")
            return [_user(row) for row in rows]

        result: list[User] = await self._store.read(run)
        return result

    async def set_password(
        self, name: str, password_hash: str, *, end_sessions: bool
    ) -> User | None:
        """Store a new password hash (ending the user's sessions if asked); None if unknown."""

        def run(conn: sqlite3.Connection) -> User | None:
            conn.execute("UPDATE auth_users SET password=? WHERE name=?", (password_hash, name))
            if end_sessions:
                _end_sessions(conn, name)
            return _get(conn, name)

        result: User | None = await self._store.write(run)
        return result

    async def set_disabled(self, name: str, disabled: bool) -> User | None:
        """Disable (ending every session) or enable an account; None if unknown."""

        def run(conn: sqlite3.Connection) -> User | None:
            conn.execute("UPDATE auth_users SET disabled=? WHERE name=?", (int(disabled), name))
            if disabled:
                _end_sessions(conn, name)
            return _get(conn, name)

        result: User | None = await self._store.write(run)
        return result

    async def unlock(self, name: str) -> User | None:
        """Lift a lock and forget counted failures; None if unknown."""

        def run(conn: sqlite3.Connection) -> User | None:
            conn.execute(
                "UPDATE auth_users SET failures=0, first_failure=NULL, locked_until=NULL "
                "WHERE name=?",
                (name,),
            )
            return _get(conn, name)

        result: User | None = await self._store.write(run)
        return result

    async def delete(self, name: str) -> User | None:
        """Delete an account and its sessions; return what it was, or None if unknown."""

        def run(conn: sqlite3.Connection) -> User | None:
            found = _get(conn, name)
            if found is not None:
                _end_sessions(conn, name)
                conn.execute("DELETE FROM auth_users WHERE name=?", (name,))
            return found

        result: User | None = await self._store.write(run)
        return result

    async def record_failure(self, name: str, now: float) -> User | None:
        """Count a wrong password at now (locking on too many); return the account after."""

        def run(conn: sqlite3.Connection) -> User | None:
            # read and update in one writer job: concurrent attempts are all counted
            found = _get(conn, name)
            if found is None:
                return None
            after = users.after_failure(found, now)
            conn.execute(
                "UPDATE auth_users SET failures=?, first_failure=?, locked_until=? WHERE name=?",
                (after.failures, after.first_failure, after.locked_until, name),
            )
            return after

        result: User | None = await self._store.write(run)
        return result

    async def record_login(self, name: str, now: float) -> User | None:
        """Note a successful sign-in at now and forget counted failures."""

        def run(conn: sqlite3.Connection) -> User | None:
            conn.execute(
                "UPDATE auth_users SET last_login=?, failures=0, first_failure=NULL, "
                "locked_until=NULL WHERE name=?",
                (now, name),
            )
            found = _get(conn, name)
            return None if found is None else replace(found, last_login=now)

        result: User | None = await self._store.write(run)
        return result

    # -- sessions ----------------------------------------------------------------------------------
    async def insert_session(self, session: Session) -> None:
        """Store a new session, dropping sessions that have expired meanwhile."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM auth_sessions WHERE last_seen < ? OR created < ?",
                (session.created - IDLE_SECONDS, session.created - ABSOLUTE_SECONDS),
            )
            conn.execute(
                "INSERT INTO auth_sessions(digest, user, csrf, created, last_seen) "
                "VALUES (?, ?, ?, ?, ?)",
                (session.digest, session.user, session.csrf, session.created, session.last_seen),
            )

        await self._store.write(run)

    async def get_session(self, digest: str) -> tuple[Session, User] | None:
        """Return the session with this token digest and its user, or None."""

        def run(conn: sqlite3.Connection) -> tuple[Session, User] | None:
            row = conn.execute(
                f"SELECT s.digest, s.user, s.csrf, s.created, s.last_seen, {_USER_COLUMNS} "
                "FROM auth_sessions s JOIN auth_users u ON u.name = s.user WHERE s.digest=?",
                (digest,),
            ).fetchone()
            return None if row is None else (Session(*row[:5]), _user(row[5:]))

        result: tuple[Session, User] | None = await self._store.read(run)
        return result

    async def touch_session(self, digest: str, now: float) -> None:
        """Note that a session was used at now."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE auth_sessions SET last_seen=? WHERE digest=?", (now, digest))

        await self._store.write(run)

    async def delete_session(self, digest: str) -> None:
        """End the session with this token digest."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM auth_sessions WHERE digest=?", (digest,))

        await self._store.write(run)

    async def count_sessions(self, name: str) -> int:
        """Return how many sessions a user has open (expired ones not yet dropped included)."""

        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT count(*) FROM auth_sessions WHERE user=?", (name,))
            return int(row.fetchone()[0])

        result: int = await self._store.read(run)
        return result
