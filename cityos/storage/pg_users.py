"""PostgreSQL tables of staff accounts and their sessions (migration 0005)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any, Final

import orjson

from cityos.auth import users
from cityos.auth.sessions import ABSOLUTE_SECONDS, IDLE_SECONDS, Session
from cityos.auth.users import User
from cityos.storage.pg_index import Conn
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import DumpRow

_COLUMNS: Final = (
    "name, display_name, roles, tenants, created, disabled, last_login, failures, "
    "first_failure, locked_until"
)
#: the columns of a dumped account, in UserStore's order
_DUMP_COLUMNS: Final = (
    "name", "display_name", "roles", "tenants", "password", "created", "disabled",
    "last_login", "failures", "first_failure", "locked_until",
)  # fmt: skip
_LISTS: Final = ("roles", "tenants")
_USER_COLUMNS: Final = ", ".join(f"u.{c.strip()}" for c in _COLUMNS.split(","))


def _user(row: Any) -> User:
    name, display, roles, tenants, created, disabled, last_login, failures, first, locked = row
    return User(
        name, display, tuple(roles), tuple(tenants), created, disabled, last_login, failures,
        first, locked,
    )  # fmt: skip


async def _get(conn: Conn, name: str, *, lock: bool = False) -> User | None:
    sql = f"SELECT {_COLUMNS} FROM auth_users WHERE name=$1"
    row = await conn.fetchrow(sql + " FOR UPDATE" if lock else sql, name)
    return None if row is None else _user(row)


class PgUserStore:
    """Staff accounts and sessions in the PostgreSQL database."""

    def __init__(self, store: PostgresStorage) -> None:
        self._store = store

    #: dump sections, in the order and with the columns of UserStore.dump_rows
    DUMP_SECTIONS: Final = ("user",)

    @staticmethod
    async def dump_rows(conn: Conn) -> AsyncIterator[tuple[str, DumpRow]]:
        """Yield the staff accounts with their password hashes, oldest first (no sessions)."""
        sql = f"SELECT {', '.join(_DUMP_COLUMNS)} FROM auth_users ORDER BY rid"
        for row in await conn.fetch(sql):
            # SQLite keeps the lists as JSON text and the flag as an integer
            lists = {c: orjson.dumps(row[c]).decode() for c in _LISTS}
            yield "user", {**dict(row.items()), **lists, "disabled": int(row["disabled"])}

    @staticmethod
    async def load_rows(conn: Conn, section: str, rows: Sequence[DumpRow]) -> None:
        """Store dumped rows of a section of dump_rows; an account of a taken name replaces it."""
        if section != "user":
            raise ValueError(f"not a section of the account store: {section!r}")

        def value(row: DumpRow, column: str) -> Any:
            if column in _LISTS:
                return orjson.loads(row[column])
            return bool(row[column]) if column == "disabled" else row[column]

        await conn.executemany(
            f"INSERT INTO auth_users({', '.join(_DUMP_COLUMNS)}) VALUES "
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (name) DO UPDATE SET "
            + ", ".join(f"{c}=EXCLUDED.{c}" for c in _DUMP_COLUMNS[1:]),
            [tuple(value(r, c) for c in _DUMP_COLUMNS) for r in rows],
        )

    async def setup(self) -> None:
        """Do nothing: the tables come with the migrations (PostgresStorage.start)."""

    # -- accounts ----------------------------------------------------------------------------------
    async def insert(self, user: User, password_hash: str) -> bool:
        """Store a new account; return False (and change nothing) if the name is taken."""
        status = await self._store.pool.execute(
            "INSERT INTO auth_users(name, display_name, roles, tenants, password, created) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
            user.name,
            user.display_name,
            list(user.roles),
            list(user.tenants),
            password_hash,
            user.created,
        )
        return bool(status != "INSERT 0 0")

    async def get(self, name: str) -> User | None:
        """Return the account called name, or None."""
        async with self._store.pool.acquire() as conn:
            return await _get(conn, name)

    async def get_with_hash(self, name: str) -> tuple[User, str] | None:
        """Return the account called name and its password hash, or None."""
        row = await self._store.pool.fetchrow(
            f"SELECT password, {_COLUMNS} FROM auth_users WHERE name=$1", name
        )
        return None if row is None else (_user(tuple(row)[1:]), row[0])

    async def list_users(self) -> list[User]:
        """Return every account, by name."""
        rows = await self._store.pool.fetch(f"SELECT {_COLUMNS} FROM auth_users ORDER BY name")
        return [_user(row) for row in rows]

    async def set_password(
        self, name: str, password_hash: str, *, end_sessions: bool
    ) -> User | None:
        """Store a new password hash (ending the user's sessions if asked); None if unknown."""
        async with self._store.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE auth_users SET password=$1 WHERE name=$2", password_hash, name
            )
            if end_sessions:
                await _end_sessions(conn, name)
            return await _get(conn, name)

    async def set_disabled(self, name: str, disabled: bool) -> User | None:
        """Disable (ending every session) or enable an account; None if unknown."""
        async with self._store.pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE auth_users SET disabled=$1 WHERE name=$2", disabled, name)
            if disabled:
                await _end_sessions(conn, name)
            return await _get(conn, name)

    async def unlock(self, name: str) -> User | None:
        """Lift a lock and forget counted failures; None if unknown."""
        row = await self._store.pool.fetchrow(
            "UPDATE auth_users SET failures=0, first_failure=NULL, locked_until=NULL "
            f"WHERE name=$1 RETURNING {_COLUMNS}",
            name,
        )
        return None if row is None else _user(row)

    async def delete(self, name: str) -> User | None:
        """Delete an account and its sessions; return what it was, or None if unknown."""
        # the sessions go with it (ON DELETE CASCADE)
        row = await self._store.pool.fetchrow(
            f"DELETE FROM auth_users WHERE name=$1 RETURNING {_COLUMNS}", name
        )
        return None if row is None else _user(row)

    async def record_failure(self, name: str, now: float) -> User | None:
        """Count a wrong password at now (locking on too many); return the account after."""
        async with self._store.pool.acquire() as conn, conn.transaction():
            # the row lock makes concurrent attempts (from any worker) wait: all are counted
            found = await _get(conn, name, lock=True)
            if found is None:
                return None
            after = users.after_failure(found, now)
            await conn.execute(
                "UPDATE auth_users SET failures=$1, first_failure=$2, locked_until=$3 "
                "WHERE name=$4",
                after.failures,
                after.first_failure,
                after.locked_until,
                name,
            )
            return after

    async def record_login(self, name: str, now: float) -> User | None:
        """Note a successful sign-in at now and forget counted failures."""
        row = await self._store.pool.fetchrow(
            "UPDATE auth_users SET last_login=$1, failures=0, first_failure=NULL, "
            f"locked_until=NULL WHERE name=$2 RETURNING {_COLUMNS}",
            now,
            name,
        )
        return None if row is None else replace(_user(row), last_login=now)

    # -- sessions ----------------------------------------------------------------------------------
    async def insert_session(self, session: Session) -> None:
        """Store a new session, dropping sessions that have expired meanwhile."""
        async with self._store.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM auth_sessions WHERE last_seen < $1 OR created < $2",
                session.created - IDLE_SECONDS,
                session.created - ABSOLUTE_SECONDS,
            )
            await conn.execute(
                "INSERT INTO auth_sessions(digest, user_name, csrf, created, last_seen) "
                "VALUES ($1, $2, $3, $4, $5)",
                session.digest,
                session.user,
                session.csrf,
                session.created,
                session.last_seen,
            )

    async def get_session(self, digest: str) -> tuple[Session, User] | None:
        """Return the session with this token digest and its user, or None."""
        row = await self._store.pool.fetchrow(
            "SELECT s.digest, s.user_name, s.csrf, s.created, s.last_seen, "
            f"{_USER_COLUMNS} FROM auth_sessions s JOIN auth_users u ON u.name = s.user_name "
            "WHERE s.digest=$1",
            digest,
        )
        if row is None:
            return None
        values = tuple(row)
        return Session(*values[:5]), _user(values[5:])

    async def touch_session(self, digest: str, now: float) -> None:
        """Note that a session was used at now."""
        await self._store.pool.execute(
            "UPDATE auth_sessions SET last_seen=$1 WHERE digest=$2", now, digest
        )

    async def delete_session(self, digest: str) -> None:
        """End the session with this token digest."""
        await self._store.pool.execute("DELETE FROM auth_sessions WHERE digest=$1", digest)

    async def count_sessions(self, name: str) -> int:
        """Return how many sessions a user has open (expired ones not yet dropped included)."""
        found = await self._store.pool.fetchval(
            "SELECT count(*) FROM auth_sessions WHERE user_name=$1", name
        )
        return int(found)


async def _end_sessions(conn: Conn, name: str) -> None:
    await conn.execute("DELETE FROM auth_sessions WHERE user_name=$1", name)
