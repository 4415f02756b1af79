"""API keys, staff accounts, sessions and the audit log, asserted identically on both engines.

PostgreSQL tests are skipped when no server answers at CITYOS_TEST_POSTGRES_URL (default
postgres@127.0.0.1:5432/test), and fail instead when CITYOS_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from conftest import admin_sql

from cityos.auth import keys, users
from cityos.auth.audit import GENESIS, Entry, Head, Record, content_hash
from cityos.auth.keys import KeyInputError
from cityos.auth.sessions import ABSOLUTE_SECONDS, IDLE_SECONDS, Session
from cityos.auth.users import User
from cityos.broker.errors import BadRequestData
from cityos.storage.base import Change, Mutation, Storage
from cityos.storage.pg_audit import PgAuditStore
from cityos.storage.pg_auth import PgAuthStore
from cityos.storage.pg_users import PgUserStore
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import SqliteStorage, open_snapshot
from cityos.storage.sqlite_audit import AuditStore
from cityos.storage.sqlite_auth import AuthStore
from cityos.storage.sqlite_users import UserStore

T = TypeVar("T")
NOW = 1_780_000_000.0  # 2026-05-28
START = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
CONTENT = "seq, at, actor, action, target, tenant, outcome, detail, prev"


def ticking() -> Callable[[], datetime]:
    """Return a clock that advances one second per reading."""
    seconds = iter(range(1_000_000))
    return lambda: START + timedelta(seconds=next(seconds))


@dataclass
class Stores:
    """The three stores of one engine instance (one process's view of the database)."""

    storage: Storage
    keys: Any
    users: Any
    audit: Any


@dataclass
class Engine:
    """One engine under test: makes stores on one database, and reaches it as a forger would."""

    name: str
    make: Callable[[], Storage]
    #: run SQL statements on the database directly, outside cityos
    sql: Callable[..., None]
    #: run a query on the database directly; return its rows
    query: Callable[[str], list[tuple[Any, ...]]]

    def run_many(self, n: int, body: Callable[[list[Stores]], Awaitable[T]]) -> T:
        """Start n instances of the stores (as n workers would), await body(them), close them."""

        async def main() -> T:
            started: list[Stores] = []
            try:
                for _ in range(n):
                    st = self.make()
                    await st.start()
                    started.append(_stores(st))
                    for part in (started[-1].keys, started[-1].users, started[-1].audit):
                        await part.setup()
                return await body(started)
            finally:
                for s in started:
                    await s.storage.close()

        return asyncio.run(main())

    def run(self, body: Callable[[Stores], Awaitable[T]]) -> T:
        """Start the stores, await body(stores), close them; return what body returned."""
        return self.run_many(1, lambda found: body(found[0]))


def _stores(st: Storage) -> Stores:
    if isinstance(st, SqliteStorage):
        return Stores(st, AuthStore(st), UserStore(st), AuditStore(st, clock=ticking()))
    assert isinstance(st, PostgresStorage)
    return Stores(st, PgAuthStore(st), PgUserStore(st), PgAuditStore(st, clock=ticking()))


def _sqlite_sql(path: Path) -> Callable[..., None]:
    def run(*statements: str) -> None:
        conn = sqlite3.connect(path)
        with conn:
            for sql in statements:
                conn.execute(sql)
        conn.close()

    return run


def _sqlite_query(path: Path) -> Callable[[str], list[tuple[Any, ...]]]:
    def run(sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(path)
        try:
            return list(conn.execute(sql))
        finally:
            conn.close()

    return run


def _pg_query(url: str) -> Callable[[str], list[tuple[Any, ...]]]:
    async def fetch(sql: str) -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return lambda sql: asyncio.run(fetch(sql))


def sqlite_engine(path: Path) -> Engine:
    return Engine("sqlite", lambda: SqliteStorage(path), _sqlite_sql(path), _sqlite_query(path))


def pg_engine(url: str) -> Engine:
    return Engine(
        "postgresql",
        lambda: PostgresStorage(url, pool_size=4),
        lambda *statements: asyncio.run(admin_sql(url, *statements)),
        _pg_query(url),
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """Yield each engine in turn, on a fresh empty database."""
    if request.param == "sqlite":
        return sqlite_engine(tmp_path / "cityos.db")
    return pg_engine(request.getfixturevalue("pg_url"))


# -- the twins answer the same calls ---------------------------------------------------------


@pytest.mark.parametrize(
    ("sqlite_cls", "pg_cls"),
    [
        (AuthStore, PgAuthStore),
        (UserStore, PgUserStore),
        (AuditStore, PgAuditStore),
    ],
)
def test_the_postgresql_stores_have_the_sqlite_stores_methods(
    sqlite_cls: type, pg_cls: type
) -> None:
    # dumps are SQLite-only for now; append_in takes each engine's own connection
    skip = {"dump_rows", "load_rows", "append_in", "DUMP_TABLES"}
    assert inspect.iscoroutinefunction(PgAuditStore.append_in)
    assert tuple(t[0] for t in sqlite_cls.DUMP_TABLES) == pg_cls.DUMP_SECTIONS
    names = {n for n in vars(sqlite_cls) if not n.startswith("_") and n not in skip}
    for name in sorted(names | {"__init__"}):
        ours, theirs = getattr(sqlite_cls, name), getattr(pg_cls, name)
        assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs), name
        params = list(inspect.signature(ours).parameters.values())[2 if name == "__init__" else 0 :]
        pg_params = list(inspect.signature(theirs).parameters.values())
        pg_params = pg_params[2 if name == "__init__" else 0 :]
        assert params == pg_params, name
        if name != "__init__":
            assert inspect.signature(ours).return_annotation == (
                inspect.signature(theirs).return_annotation
            ), name


# -- API keys --------------------------------------------------------------------------------


def test_a_created_key_is_found_listed_and_kept_as_given(engine: Engine) -> None:
    async def body(s: Stores) -> None:
        cred, plaintext = await s.keys.create_key(
            "洪水アプリ", roles=["steward", "app"], tenants=["sano", ""], scopes=["entities:read"],
            expires=NOW + 3600, now=NOW,
        )  # fmt: skip
        assert (cred.roles, cred.tenants, cred.scopes) == (
            ("app", "steward"),
            ("", "sano"),
            ("entities:read",),
        )
        assert await s.keys.find(plaintext, now=NOW + 1) == cred
        second, _ = await s.keys.create_key("b", roles=["admin"], tenants=["*"], now=NOW + 2)
        assert await s.keys.list_keys() == [cred, second]  # oldest first
        assert second.id > cred.id

    engine.run(body)


def test_only_the_hash_of_a_key_is_stored(engine: Engine) -> None:
    _, plaintext = engine.run(lambda s: s.keys.create_key("a", roles=["admin"], tenants=["*"]))
    stored = repr(engine.query("SELECT * FROM auth_keys"))
    assert plaintext not in stored
    assert plaintext[13:] not in stored  # not even the secret part
    assert keys.digest(plaintext) in stored


def test_unknown_tampered_and_malformed_keys_are_not_found(engine: Engine) -> None:
    async def body(s: Stores) -> None:
        _, plaintext = await s.keys.create_key("a", roles=["admin"], tenants=["*"], now=NOW)
        other = keys.new_key().plaintext
        same_prefix = plaintext[:13] + other[13:]
        for presented in (other, same_prefix, plaintext + "x", "garbage", ""):
            assert await s.keys.find(presented, now=NOW) is None
        assert await s.keys.find(plaintext, now=NOW) is not None

    engine.run(body)


def test_a_revoked_key_stops_working_and_stays_listed(engine: Engine) -> None:
    async def body(s: Stores) -> None:
        cred, plaintext = await s.keys.create_key("dev", roles=["app"], tenants=[""], now=NOW)
        revoked = await s.keys.revoke(cred.prefix, now=NOW + 5)
        assert revoked is not None
        assert revoked.revoked == NOW + 5
        assert await s.keys.find(plaintext, now=NOW + 6) is None
        again = await s.keys.revoke(cred.prefix, now=NOW + 50)
        assert again is not None
        assert again.revoked == NOW + 5  # the first revocation time is kept
        assert await s.keys.revoke("00000000") is None
        [listed] = await s.keys.list_keys()
        assert (listed.prefix, listed.revoked) == (cred.prefix, NOW + 5)

    engine.run(body)


def test_an_expired_key_stops_working_at_its_expiry(engine: Engine) -> None:
    async def body(s: Stores) -> None:
        _, plaintext = await s.keys.create_key(
            "temp", roles=["operator"], tenants=["*"], expires=NOW + 60, now=NOW
        )
        assert await s.keys.find(plaintext, now=NOW + 59.9) is not None
        assert await s.keys.find(plaintext, now=NOW + 60) is None

    engine.run(body)


def test_last_used_is_written_at_most_once_a_minute_across_workers(engine: Engine) -> None:
    async def body(workers: list[Stores]) -> None:
        one, two = workers
        cred, _ = await one.keys.create_key("busy", roles=["app"], tenants=["*"], now=NOW)
        assert await one.keys.touch(cred.id, now=NOW + 1)
        assert not await one.keys.touch(cred.id, now=NOW + 30)
        # another worker (no memory of the first) a few seconds later
        assert not await two.keys.touch(cred.id, now=NOW + 10)
        assert await one.keys.touch(cred.id, now=NOW + 61)
        [listed] = await two.keys.list_keys()
        assert listed.last_used == NOW + 61

    engine.run_many(2, body)


def test_the_key_store_refuses_bad_input_and_writes_nothing(engine: Engine) -> None:
    async def body(s: Stores) -> None:
        with pytest.raises(KeyInputError):
            await s.keys.create_key("x", roles=["root"], tenants=["*"])
        with pytest.raises(KeyInputError):
            await s.keys.create_key("x", roles=["app"], tenants=["*"], expires=NOW - 1, now=NOW)
        with pytest.raises(KeyInputError):
            await s.keys.create_key("x", roles=["app"], tenants=["a/b"])
        assert await s.keys.list_keys() == []

    engine.run(body)


# -- staff accounts --------------------------------------------------------------------------


def staff(name: str, **changes: Any) -> User:
    base = User(name, f"{name} さん", ("admin",), ("", "sano"), NOW)
    return replace(base, **changes)


def test_an_account_is_stored_once_and_read_back(engine: Engine) -> None:
    async def body(s: Stores) -> None:
        assert await s.users.insert(staff("tanaka"), "$argon2id$one")
        assert not await s.users.insert(staff("tanaka", roles=("steward",)), "$argon2id$two")
        assert await s.users.get("tanaka") == staff("tanaka")
        assert await s.users.get_with_hash("tanaka") == (staff("tanaka"), "$argon2id$one")
        assert await s.users.get("nobody") is None
        assert await s.users.get_with_hash("nobody") is None

    engine.run(body)


def test_accounts_are_listed_by_name_in_code_point_order(engine: Engine) -> None:
    names = ["b", "B", "a", "_x", "Z", "2", "@x", "a.b", "a-b"]

    async def body(s: Stores) -> list[str]:
        for name in names:
            assert await s.users.insert(staff(name), "h")
        return [u.name for u in await s.users.list_users()]

    assert engine.run(body) == sorted(names)


def test_account_changes_return_the_account_after_or_none(engine: Engine) -> None:
    async def body(s: Stores) -> None:
        await s.users.insert(staff("sato"), "old")
        assert await s.users.set_password("sato", "new", end_sessions=False) == staff("sato")
        assert (await s.users.get_with_hash("sato"))[1] == "new"
        assert await s.users.set_disabled("sato", True) == staff("sato", disabled=True)
        assert await s.users.set_disabled("sato", False) == staff("sato")
        for change in (
            s.users.set_password("nobody", "x", end_sessions=True),
            s.users.set_disabled("nobody", True),
            s.users.unlock("nobody"),
            s.users.delete("nobody"),
            s.users.record_failure("nobody", NOW),
            s.users.record_login("nobody", NOW),
        ):
            assert await change is None
        assert await s.users.delete("sato") == staff("sato")
        assert await s.users.get("sato") is None
        assert await s.users.list_users() == []

    engine.run(body)


def test_failures_lock_the_account_and_unlock_or_login_clear_them(engine: Engine) -> None:
    async def body(s: Stores) -> None:
        await s.users.insert(staff("abe"), "h")
        for n in range(1, users.MAX_FAILURES):
            after = await s.users.record_failure("abe", NOW + n)
            assert (after.failures, after.first_failure, after.locked_until) == (n, NOW + 1, None)
        locked = await s.users.record_failure("abe", NOW + 10)
        assert locked.locked_until == NOW + 10 + users.LOCK_SECONDS
        assert await s.users.get("abe") == locked
        assert await s.users.unlock("abe") == staff("abe")
        await s.users.record_failure("abe", NOW + 20)
        logged = await s.users.record_login("abe", NOW + 30)
        assert logged == staff("abe", last_login=NOW + 30)
        assert await s.users.get("abe") == logged

    engine.run(body)


def test_concurrent_failures_from_two_workers_are_all_counted(engine: Engine) -> None:
    async def body(workers: list[Stores]) -> User:
        await workers[0].users.insert(staff("mori"), "h")
        tries = [w.users.record_failure("mori", NOW + 1) for w in workers for _ in range(2)]
        await asyncio.gather(*tries)
        found: User = await workers[1].users.get("mori")
        return found

    assert engine.run_many(2, body).failures == 4


# -- sessions --------------------------------------------------------------------------------


def session(n: int, user: str = "ueda", created: float = NOW) -> Session:
    return Session(f"{n:064x}", user, f"csrf-{n}", created, created)


def test_a_session_is_found_with_its_user_touched_and_ended(engine: Engine) -> None:
    async def body(s: Stores) -> None:
        await s.users.insert(staff("ueda"), "h")
        await s.users.insert_session(session(1))
        await s.users.insert_session(session(2))
        assert await s.users.get_session(session(1).digest) == (session(1), staff("ueda"))
        await s.users.touch_session(session(1).digest, NOW + 60)
        found = await s.users.get_session(session(1).digest)
        assert found[0].last_seen == NOW + 60
        assert await s.users.count_sessions("ueda") == 2
        await s.users.delete_session(session(1).digest)
        assert await s.users.get_session(session(1).digest) is None
        assert await s.users.count_sessions("ueda") == 1
        assert await s.users.get_session("f" * 64) is None

    engine.run(body)


def test_a_new_session_drops_the_expired_ones(engine: Engine) -> None:
    async def body(s: Stores) -> list[bool]:
        await s.users.insert(staff("ueda"), "h")
        later = NOW + ABSOLUTE_SECONDS + 10
        idle = Session("1" * 64, "ueda", "c", later - 60, later - IDLE_SECONDS - 1)
        old = Session("2" * 64, "ueda", "c", NOW, later - 5)  # busy, but too old
        fresh = Session("3" * 64, "ueda", "c", later - 100, later - 5)
        for one in (idle, old, fresh):
            await s.users.insert_session(one)
        await s.users.insert_session(session(4, created=later))
        return [await s.users.get_session(one.digest) is not None for one in (idle, old, fresh)]

    assert engine.run(body) == [False, False, True]


@pytest.mark.parametrize("change", ["password", "keep-sessions", "disable", "delete"])
def test_a_new_password_disabling_or_deleting_ends_every_session(
    engine: Engine, change: str
) -> None:
    async def body(s: Stores) -> int:
        await s.users.insert(staff("noda"), "h")
        await s.users.insert(staff("kudo"), "h")
        for n in range(2):
            await s.users.insert_session(session(n, "noda"))
        await s.users.insert_session(session(9, "kudo"))
        if change in ("password", "keep-sessions"):
            await s.users.set_password("noda", "new", end_sessions=change == "password")
        elif change == "disable":
            await s.users.set_disabled("noda", True)
        else:
            await s.users.delete("noda")
        assert await s.users.count_sessions("kudo") == 1  # other users keep theirs
        count: int = await s.users.count_sessions("noda")
        return count

    assert engine.run(body) == (2 if change == "keep-sessions" else 0)


# -- the audit log ---------------------------------------------------------------------------


def entry(n: int) -> Entry:
    return Entry(
        actor=f"key:cok_ab12cd{n:02}",
        action="entity.update",
        target=f"urn:ngsi-ld:WaterLevelObserved:akiyama-{n}",
        tenant="sano",
        detail={"attrs": ["waterLevel"], "n": n},
    )


def seed(engine: Engine, count: int) -> list[Record]:
    async def body(s: Stores) -> list[Record]:
        return [await s.audit.append(entry(n)) for n in range(1, count + 1)]

    return engine.run(body)


def verify(engine: Engine, expect: Head | None = None) -> Any:
    return engine.run(lambda s: s.audit.verify(expect))


def rehash(engine: Engine, seq: int) -> None:
    """Recompute record seq's hash after an edit, as a careful forger would."""
    [row] = engine.query(f"SELECT {CONTENT} FROM audit_log WHERE seq={seq}")
    content = dict(zip(CONTENT.split(", "), row, strict=True))
    content["detail"] = json.loads(content["detail"])
    engine.sql(f"UPDATE audit_log SET hash='{content_hash(content)}' WHERE seq={seq}")


def test_two_workers_appending_at_once_make_one_gapless_chain(engine: Engine) -> None:
    async def body(workers: list[Stores]) -> tuple[list[Record], list[Record], Any, Head]:
        made = await asyncio.gather(
            *(w.audit.append(entry(n)) for n in range(100) for w in workers)
        )
        one = workers[0].audit
        return list(made), await one.records(limit=500), await one.verify(), await one.head()

    made, stored, verdict, head = engine.run_many(2, body)
    assert sorted(r.seq for r in made) == list(range(1, 201))
    assert stored == sorted(made, key=lambda r: r.seq)
    for before, after in itertools.pairwise(stored):
        assert after.prev == before.hash
    assert verdict.ok, verdict.message
    assert (verdict.records, verdict.head) == (200, Head(200, stored[-1].hash))
    assert head == Head(200, stored[-1].hash)


def test_an_empty_log_is_intact(engine: Engine) -> None:
    async def body(s: Stores) -> tuple[Any, Head, list[Record], Record | None]:
        return (
            await s.audit.verify(),
            await s.audit.head(),
            await s.audit.records(),
            (await s.audit.last("policy.change")),
        )

    verdict, head, records, last = engine.run(body)
    assert verdict.ok
    assert verdict.message == f"audit log intact: 0 records, head {GENESIS}"
    assert (head, records, last) == (Head(0, GENESIS), [], None)


def test_records_page_in_order_and_last_finds_an_action(engine: Engine) -> None:
    async def body(s: Stores) -> None:
        made = [await s.audit.append(entry(n)) for n in range(1, 6)]
        policy = await s.audit.append(Entry("system", "policy.change", detail={"auth": "on"}))
        made.append(await s.audit.append(entry(7)))
        assert await s.audit.records(after_seq=2, limit=2) == made[2:4]
        assert await s.audit.records(after_seq=5) == [policy, made[-1]]
        assert await s.audit.last("policy.change") == policy
        assert await s.audit.last("entity.update") == made[-1]
        assert await s.audit.last("key.create") is None

    engine.run(body)


def test_japanese_target_and_detail_survive(engine: Engine) -> None:
    shelter = Entry(
        actor="user:田中",
        action="entity.update",
        target="urn:ngsi-ld:EvacuationShelter:佐野市立城北小学校",
        tenant="佐野市",
        detail={"名前": "城北小学校", "混雑": "やや混雑", "占有率": 0.62},
    )

    async def body(s: Stores) -> tuple[Record, list[Record], Any]:
        made = await s.audit.append(shelter)
        return made, await s.audit.records(), await s.audit.verify()

    made, stored, verdict = engine.run(body)
    assert stored == [made]
    assert made.detail == {"名前": "城北小学校", "混雑": "やや混雑", "占有率": 0.62}
    assert verdict.ok
    [(detail,)] = engine.query("SELECT detail FROM audit_log")
    assert "城北小学校" in detail  # stored as readable UTF-8, as hashed


def test_a_record_appended_inside_a_failed_transaction_goes_with_it(engine: Engine) -> None:
    async def body(s: Stores) -> list[Record]:
        attempt = Entry("user:tanaka", "entity.create", "urn:x:1")

        async def fail() -> None:
            if isinstance(s.storage, SqliteStorage):

                def failing(conn: sqlite3.Connection) -> None:
                    s.audit.append_in(conn, attempt)
                    raise RuntimeError("the entity write failed")

                await s.storage.write(failing)
                return
            assert isinstance(s.storage, PostgresStorage)
            async with s.storage.pool.acquire() as conn, conn.transaction():
                await s.audit.append_in(conn, attempt)
                raise RuntimeError("the entity write failed")

        with pytest.raises(RuntimeError, match="the entity write failed"):
            await fail()
        await s.audit.append(Entry("user:tanaka", "entity.create", "urn:x:1", outcome="error"))
        records: list[Record] = await s.audit.records()
        return records

    assert [(r.seq, r.outcome) for r in engine.run(body)] == [(1, "error")]


def test_a_record_appended_by_a_change_hook_commits_with_the_entity(engine: Engine) -> None:
    def record_of(change: Change) -> Entry:
        action = "entity.delete" if change.new is None else "entity.upsert"
        return Entry("system", action, change.entity_id, change.tenant)

    def doc(n: int) -> dict[str, Any]:
        stamp = "2026-01-01T00:00:00.000000Z"
        return {"id": f"urn:x:{n}", "type": ["T"], "createdAt": stamp, "modifiedAt": stamp}

    def refuse(change: Change) -> None:
        if change.entity_id == "urn:x:2":
            raise BadRequestData("a later hook refuses it")

    async def body(s: Stores) -> tuple[list[str], list[tuple[str, str]], Any]:
        st, audit = s.storage, s.audit
        if isinstance(st, SqliteStorage):
            st.add_change_hook(lambda conn, change: audit.append_in(conn, record_of(change)))
            st.add_change_hook(lambda _conn, change: refuse(change))
        else:
            assert isinstance(st, PostgresStorage)

            async def hook(conn: Any, change: Change) -> None:
                await audit.append_in(conn, record_of(change))
                refuse(change)

            st.add_change_hook(hook)
        outcomes = await st.apply(
            "sano", [Mutation(f"urn:x:{n}", lambda _c, n=n: doc(n)) for n in (1, 2)]
        )
        await st.apply("sano", [Mutation("urn:x:1", lambda _c: None)])
        found = [o.entity_id for o in outcomes if o.ok]
        records = [(r.action, r.target) for r in await audit.records()]
        return found, records, await audit.verify()

    found, records, verdict = engine.run(body)
    assert found == ["urn:x:1"]
    assert records == [("entity.upsert", "urn:x:1"), ("entity.delete", "urn:x:1")]
    assert verdict.ok, verdict.message


def swap(a: int, b: int) -> tuple[str, ...]:
    return (
        f"UPDATE audit_log SET seq=-1 WHERE seq={a}",
        f"UPDATE audit_log SET seq={a} WHERE seq={b}",
        f"UPDATE audit_log SET seq={b} WHERE seq=-1",
    )


# the cases of tests/auth/test_audit.py, in SQL both engines run
TAMPERING = [
    pytest.param(
        ["UPDATE audit_log SET actor='user:mallory' WHERE seq=3"], None, "edited", 3,
        "content of record 3 does not match its hash", id="field-updated",
    ),
    pytest.param(
        ["UPDATE audit_log SET outcome='ok', detail='{}' WHERE seq=5"], None, "edited", 5,
        "content of record 5 does not match its hash", id="last-record-updated",
    ),
    pytest.param(
        ["UPDATE audit_log SET detail='{not json' WHERE seq=2"], None, "edited", 2,
        "content of record 2 does not match its hash (its detail is not JSON)",
        id="detail-garbled",
    ),
    pytest.param(
        ["UPDATE audit_log SET detail='[1]' WHERE seq=4"], None, "edited", 4,
        "content of record 4 does not match its hash (its detail is not a JSON object)",
        id="detail-not-an-object",
    ),
    pytest.param(
        ["DELETE FROM audit_log WHERE seq=3"], None, "deleted", 3,
        "record 3 is missing (2 is followed by 4)", id="middle-deleted",
    ),
    pytest.param(
        ["DELETE FROM audit_log WHERE seq IN (2, 3)"], None, "deleted", 2,
        "records 2..3 are missing (1 is followed by 4)", id="two-deleted",
    ),
    pytest.param(
        ["DELETE FROM audit_log WHERE seq=1"], None, "deleted", 1,
        "record 1 is missing (the log starts at 2)", id="first-deleted",
    ),
    pytest.param(
        ["DELETE FROM audit_log WHERE seq=5"], None, "deleted", 5,
        "the log ends at 4 but its head says 5", id="last-deleted",
    ),
    pytest.param(
        ["DELETE FROM audit_log"], None, "deleted", 1,
        "the log ends at 0 but its head says 5", id="all-deleted",
    ),
    pytest.param(
        swap(2, 4), None, "reordered", 2,
        "record 4 is stored as record 2 (records were reordered)", id="two-swapped",
    ),
    pytest.param(
        ["UPDATE audit_log SET seq=0 WHERE seq=1"], None, "inserted", 0,
        "record 0 is not part of the chain (records are numbered from 1)", id="renumbered-0",
    ),
    pytest.param(
        ['UPDATE audit_log SET detail=\'{"attrs":[],"n":3}\' WHERE seq=3'], 3, "edited", 3,
        "record 3 was rewritten: record 4 was chained to a different hash",
        id="edited-and-rehashed",
    ),
    pytest.param(
        ["UPDATE audit_log SET actor='system' WHERE seq=5"], 5, "edited", 5,
        "record 5 was rewritten: its hash is not the one the head holds",
        id="last-edited-and-rehashed",
    ),
    pytest.param(
        [
            "INSERT INTO audit_log SELECT seq+1, at, actor, action, target, tenant, "
            "outcome, detail, hash, hash FROM audit_log WHERE seq=5"
        ],
        6, "inserted", 6, "the log goes on to 6 but its head says 5",
        id="appended-behind-its-back",
    ),
    pytest.param(
        ["DELETE FROM audit_head"], None, "inserted", 1,
        "the log goes on to 5 but its head says 0", id="head-removed",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("statements", "rehashed", "kind", "seq", "message"), TAMPERING)
def test_tampering_is_found_where_it_happened(
    engine: Engine,
    statements: list[str],
    rehashed: int | None,
    kind: str,
    seq: int,
    message: str,
) -> None:
    seed(engine, 5)
    engine.sql(*statements)
    if rehashed is not None:
        rehash(engine, rehashed)
    verdict = verify(engine)
    assert (verdict.ok, verdict.kind, verdict.seq) == (False, kind, seq), verdict.message
    assert verdict.message.startswith(message)


def test_a_rewritten_chain_is_caught_only_by_a_head_kept_elsewhere(engine: Engine) -> None:
    records = seed(engine, 4)
    kept = Head(records[2].seq, records[2].hash)
    # The forger edits record 2 and rewrites every later hash and link, and the head.
    engine.sql("UPDATE audit_log SET outcome='ok', actor='system' WHERE seq=2")
    prev = records[0].hash
    for seq in range(2, 5):
        [row] = engine.query(f"SELECT {CONTENT} FROM audit_log WHERE seq={seq}")
        content = dict(zip(CONTENT.split(", "), row, strict=True))
        content["detail"], content["prev"] = json.loads(content["detail"]), prev
        prev = content_hash(content)
        engine.sql(f"UPDATE audit_log SET prev='{content['prev']}', hash='{prev}' WHERE seq={seq}")
    engine.sql(f"UPDATE audit_head SET hash='{prev}'")
    assert verify(engine).ok  # the honest limit
    verdict = verify(engine, kept)
    assert (verdict.kind, verdict.seq) == ("edited", 3)
    assert "the log was rewritten at or before record 3" in verdict.message
    # a kept head from the future of the log means records were cut off
    later = verify(engine, Head(9, "a" * 64))
    assert (later.kind, later.seq) == ("deleted", 5)


def test_the_log_keeps_recording_after_tampering(engine: Engine) -> None:
    seed(engine, 3)
    engine.sql("UPDATE audit_log SET target='urn:x:other' WHERE seq=2")

    async def body(s: Stores) -> tuple[Record, Any]:
        return await s.audit.append(entry(4)), await s.audit.verify()

    record, verdict = engine.run(body)
    assert record.seq == 4
    assert (verdict.kind, verdict.seq) == ("edited", 2)


def test_verification_reads_a_log_longer_than_one_page(engine: Engine) -> None:
    async def body(s: Stores) -> None:
        await asyncio.gather(*(s.audit.append(entry(n % 100)) for n in range(2100)))

    engine.run(body)
    intact = verify(engine)
    assert (intact.ok, intact.records) == (True, 2100)
    engine.sql("UPDATE audit_log SET tenant='other' WHERE seq=2050")
    damaged = verify(engine)
    assert (damaged.kind, damaged.seq, damaged.records) == ("edited", 2050, 2050)


# -- dumps: a SQLite export loads into PostgreSQL and back -----------------------------------
Dump = list[tuple[str, dict[str, Any]]]


async def fill(s: Stores) -> str:
    """Give the stores some of everything a dump keeps; return the plaintext of a key."""
    one, plaintext = await s.keys.create_key(
        "川の見守り", roles=["app"], tenants=["sano", ""], scopes=["entities:read"], now=NOW
    )
    gone, _ = await s.keys.create_key(
        "old", roles=["admin"], tenants=["*"], expires=NOW + 9, now=NOW
    )
    await s.keys.revoke(gone.prefix, now=NOW + 1)
    await s.keys.touch(one.id, now=NOW + 2)
    for name in ("zeta", "abe"):  # dumps list accounts oldest first, not by name
        await s.users.insert(staff(name), f"$argon2id${name}")
    await s.users.set_disabled("zeta", True)
    await s.users.record_failure("abe", NOW + 3)
    await s.users.insert_session(session(1, "abe"))  # sessions are not dumped
    for n in range(1, 4):
        await s.audit.append(entry(n))
    return plaintext


def sqlite_dump(path: Path) -> Dump:
    conn = open_snapshot(path)
    try:
        return [
            item for store in (AuthStore, UserStore, AuditStore) for item in store.dump_rows(conn)
        ]
    finally:
        conn.close()


async def pg_dump(st: PostgresStorage) -> Dump:
    out: Dump = []
    async with st.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        for store in (PgAuthStore, PgUserStore, PgAuditStore):
            out += [item async for item in store.dump_rows(conn)]
    return out


def sections(dump: Dump) -> list[tuple[str, list[dict[str, Any]]]]:
    return [(k, [row for _, row in group]) for k, group in itertools.groupby(dump, lambda i: i[0])]


async def check_loaded(s: Stores, plaintext: str) -> None:
    """Assert what fill() made works on the stores a dump was loaded into."""
    found = await s.keys.find(plaintext, now=NOW + 5)
    assert found is not None
    assert (found.name, found.tenants, found.last_used) == ("川の見守り", ("", "sano"), NOW + 2)
    listed = await s.keys.list_keys()
    later, _ = await s.keys.create_key("new", roles=["app"], tenants=["*"], now=NOW + 6)
    assert later.id > max(k.id for k in listed)  # loaded ids stay taken
    assert (await s.users.get("zeta")).disabled
    assert (await s.users.get_with_hash("abe"))[1] == "$argon2id$abe"
    assert (await s.users.get("abe")).failures == 1
    assert await s.users.count_sessions("abe") == 0
    assert (await s.audit.verify()).ok
    assert (await s.audit.append(entry(4))).seq == 4
    assert (await s.audit.verify()).ok


def test_a_sqlite_dump_loads_into_postgresql_and_dumps_the_same(
    tmp_path: Path, pg_url: str
) -> None:
    path = tmp_path / "cityos.db"
    plaintext = sqlite_engine(path).run(fill)
    dumped = sqlite_dump(path)
    assert [s for s, _ in sections(dumped)] == ["key", "user", "audit", "audit_head"]

    async def body(s: Stores) -> None:
        assert isinstance(s.storage, PostgresStorage)
        loaders = {
            "key": PgAuthStore,
            "user": PgUserStore,
            "audit": PgAuditStore,
            "audit_head": PgAuditStore,
        }
        async with s.storage.pool.acquire() as conn, conn.transaction():
            for section, rows in sections(dumped):
                await loaders[section].load_rows(conn, section, rows)
        assert await pg_dump(s.storage) == dumped
        await check_loaded(s, plaintext)

    pg_engine(pg_url).run(body)


def test_a_postgresql_dump_loads_into_sqlite_and_dumps_the_same(
    tmp_path: Path, pg_url: str
) -> None:
    async def made(s: Stores) -> tuple[str, Dump]:
        plaintext = await fill(s)
        assert isinstance(s.storage, PostgresStorage)
        return plaintext, await pg_dump(s.storage)

    plaintext, dumped = pg_engine(pg_url).run(made)
    assert [s for s, _ in sections(dumped)] == ["key", "user", "audit", "audit_head"]
    path = tmp_path / "cityos.db"

    async def body(s: Stores) -> None:
        assert isinstance(s.storage, SqliteStorage)
        loaders = {
            "key": AuthStore,
            "user": UserStore,
            "audit": AuditStore,
            "audit_head": AuditStore,
        }
        for section, rows in sections(dumped):
            load = loaders[section].load_rows
            await s.storage.write(
                lambda c, load=load, section=section, rows=rows: load(c, section, rows)
            )
        assert sqlite_dump(path) == dumped
        await check_loaded(s, plaintext)

    sqlite_engine(path).run(body)
