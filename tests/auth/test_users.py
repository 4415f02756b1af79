"""Staff accounts: argon2id passwords, lockout, sessions, and `cityos users` over a real file."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner
from conftest import database_rows, database_text, engine_env, storage_of

from cityos.auth import users
from cityos.auth.sessions import ABSOLUTE_SECONDS, IDLE_SECONDS, Sessions
from cityos.auth.users import Accounts, Passwords, UserInputError
from cityos.auth.users_cli import users_group
from cityos.storage import engines
from cityos.storage.engines import Users as UserStore

T = TypeVar("T")
NOW = 1_780_000_000.0  # 2026-05-28
PASSWORD = "correct horse battery"
#: cheap argon2id parameters: the tests hash often
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def with_store(path: Path, job: Callable[[UserStore], Awaitable[T]]) -> T:
    """Run job on the staff accounts of the installation in path (SQLite or PostgreSQL)."""
    store = storage_of(path)

    async def run() -> T:
        await store.start()
        try:
            found = engines.users(store)
            await found.setup()
            return await job(found)
        finally:
            await store.close()

    return asyncio.run(run())


def accounts(store: UserStore, clock: Clock, hasher: PasswordHasher = FAST) -> Accounts:
    return Accounts(store, passwords=Passwords(hasher), clock=clock)


def stored_hash(path: Path, name: str) -> str:
    [row] = database_rows(path, f"SELECT password FROM auth_users WHERE name='{name}'")
    return str(row[0])


# -- passwords -------------------------------------------------------------------------------------


def test_passwords_are_stored_as_argon2id_and_only_the_right_one_signs_in(tmp_path: Path) -> None:
    clock = Clock()

    async def job(store: UserStore) -> tuple[str, ...]:
        acc = accounts(store, clock, PasswordHasher())  # the real defaults
        await acc.create("tanaka", PASSWORD, roles=["admin"], tenants=[""])
        right = await acc.sign_in("tanaka", PASSWORD)
        wrong = await acc.sign_in("tanaka", PASSWORD + "!")
        return right.result, wrong.result

    assert with_store(tmp_path, job) == ("ok", "failed")
    digest = stored_hash(tmp_path, "tanaka")
    assert digest.startswith("$argon2id$")
    assert PASSWORD not in digest


def test_a_hash_with_old_parameters_is_replaced_at_sign_in(tmp_path: Path) -> None:
    clock = Clock()
    newer = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)

    async def job(store: UserStore) -> tuple[bool, bool, str]:
        await accounts(store, clock).create("sato", PASSWORD, roles=["steward"], tenants=[""])
        first = await accounts(store, clock, newer).sign_in("sato", PASSWORD)
        again = await accounts(store, clock, newer).sign_in("sato", PASSWORD)
        return first.rehashed, again.rehashed, again.result

    before = "m=8,t=1,p=1"
    assert with_store(tmp_path, job) == (True, False, "ok")
    assert before not in stored_hash(tmp_path, "sato")
    assert "m=16,t=2,p=1" in stored_hash(tmp_path, "sato")


@pytest.mark.parametrize(
    ("name", "password", "roles", "message"),
    [
        ("a b", PASSWORD, ["admin"], "not a user name"),
        ("", PASSWORD, ["admin"], "not a user name"),
        ("x" * 65, PASSWORD, ["admin"], "not a user name"),
        ("kato", "short", ["admin"], "at least 12"),
        ("kato", "x" * 1025, ["admin"], "at most 1024"),
        ("kato", PASSWORD, ["app"], "not a role for people"),
        ("kato", PASSWORD, [], "at least one role"),
    ],
)
def test_bad_account_input_is_refused_and_stores_nothing(
    tmp_path: Path, name: str, password: str, roles: list[str], message: str
) -> None:
    async def job(store: UserStore) -> int:
        with pytest.raises(UserInputError, match=message):
            await accounts(store, Clock()).create(name, password, roles=roles, tenants=[""])
        return len(await store.list_users())

    assert with_store(tmp_path, job) == 0


def test_a_taken_name_is_refused(tmp_path: Path) -> None:
    async def job(store: UserStore) -> None:
        acc = accounts(store, Clock())
        await acc.create("ito", PASSWORD, roles=["admin"], tenants=[""])
        with pytest.raises(UserInputError, match="exists already"):
            await acc.create("ito", PASSWORD + "2", roles=["steward"], tenants=[""])

    with_store(tmp_path, job)
    kept = with_store(tmp_path, lambda s: s.get("ito"))
    assert kept is not None
    assert kept.roles == ("admin",)


# -- lockout ---------------------------------------------------------------------------------------


def test_five_wrong_passwords_lock_the_account_for_fifteen_minutes(tmp_path: Path) -> None:
    clock = Clock()

    async def job(store: UserStore) -> list[str]:
        acc = accounts(store, clock)
        await acc.create("suzuki", PASSWORD, roles=["admin"], tenants=[""])
        seen = []
        for _ in range(users.MAX_FAILURES):
            clock.now += 60
            seen.append((await acc.sign_in("suzuki", "wrong password!")).result)
        clock.now += 60
        seen.append((await acc.sign_in("suzuki", PASSWORD)).result)  # right, but locked
        clock.now += users.LOCK_SECONDS - 61
        seen.append((await acc.sign_in("suzuki", PASSWORD)).result)  # still locked
        clock.now += 2
        seen.append((await acc.sign_in("suzuki", PASSWORD)).result)
        return seen

    assert with_store(tmp_path, job) == ["failed"] * 4 + ["locked", "locked", "locked", "ok"]


def test_failures_spread_over_more_than_the_window_do_not_lock(tmp_path: Path) -> None:
    clock = Clock()

    async def job(store: UserStore) -> list[str]:
        acc = accounts(store, clock)
        await acc.create("mori", PASSWORD, roles=["admin"], tenants=[""])
        seen = []
        for _ in range(8):
            clock.now += users.FAILURE_WINDOW / 4 + 1  # four fit in no window
            seen.append((await acc.sign_in("mori", "wrong password!")).result)
        seen.append((await acc.sign_in("mori", PASSWORD)).result)
        return seen

    assert with_store(tmp_path, job) == ["failed"] * 8 + ["ok"]


def test_a_right_password_resets_the_count(tmp_path: Path) -> None:
    clock = Clock()

    async def job(store: UserStore) -> list[str]:
        acc = accounts(store, clock)
        await acc.create("abe", PASSWORD, roles=["admin"], tenants=[""])
        seen = []
        for attempt in [*["bad password!!"] * 4, PASSWORD, *["bad password!!"] * 4, PASSWORD]:
            seen.append((await acc.sign_in("abe", attempt)).result)
        return seen

    assert with_store(tmp_path, job) == (["failed"] * 4 + ["ok"]) * 2


def test_unknown_disabled_and_wrong_cost_the_same_hashing_work(tmp_path: Path) -> None:
    slow = PasswordHasher(time_cost=3, memory_cost=32768, parallelism=1)

    async def job(store: UserStore) -> dict[str, float]:
        acc = accounts(store, Clock(), slow)
        await acc.create("hara", PASSWORD, roles=["admin"], tenants=[""])
        await acc.create("off", PASSWORD, roles=["admin"], tenants=[""])
        await store.set_disabled("off", True)
        await acc.sign_in("nobody", PASSWORD)  # the dummy hash is made once, at first use
        spent: dict[str, list[float]] = {"wrong": [], "unknown": [], "disabled": []}
        for _ in range(3):
            for case, name in (("wrong", "hara"), ("unknown", "nobody"), ("disabled", "off")):
                started = time.perf_counter()
                outcome = await acc.sign_in(name, "wrong password!")
                spent[case].append(time.perf_counter() - started)
                assert not outcome.ok
        return {case: sorted(times)[1] for case, times in spent.items()}

    medians = with_store(tmp_path, job)
    # an unknown or disabled name is verified against a dummy hash: no quick "no such user"
    assert medians["unknown"] > medians["wrong"] * 0.5
    assert medians["disabled"] > medians["wrong"] * 0.5


# -- sessions --------------------------------------------------------------------------------------


def test_a_session_ends_after_thirty_idle_minutes(tmp_path: Path) -> None:
    clock = Clock()

    async def job(store: UserStore) -> list[bool]:
        user = await accounts(store, clock).create("ueda", PASSWORD, roles=["admin"], tenants=[""])
        sessions = Sessions(store, clock=clock)
        token, _ = await sessions.start(user)
        seen = []
        clock.now += IDLE_SECONDS - 5
        seen.append(await sessions.find(token) is not None)  # used: idle time starts again
        clock.now += IDLE_SECONDS - 5
        seen.append(await sessions.find(token) is not None)
        clock.now += IDLE_SECONDS + 1
        seen.append(await sessions.find(token) is not None)
        clock.now -= IDLE_SECONDS  # gone for good, not merely hidden
        seen.append(await sessions.find(token) is not None)
        return seen

    assert with_store(tmp_path, job) == [True, True, False, False]


def test_a_session_ends_after_eight_hours_however_busy(tmp_path: Path) -> None:
    clock = Clock()

    async def job(store: UserStore) -> tuple[int, bool]:
        user = await accounts(store, clock).create("oda", PASSWORD, roles=["admin"], tenants=[""])
        sessions = Sessions(store, clock=clock)
        token, _ = await sessions.start(user)
        alive = 0
        while await sessions.find(token) is not None:
            alive += 1
            clock.now += 20 * 60
        return alive, clock.now - NOW > ABSOLUTE_SECONDS

    alive, past = with_store(tmp_path, job)
    assert past
    assert alive == int(ABSOLUTE_SECONDS // (20 * 60)) + 1


def test_only_the_digest_of_a_session_token_is_stored(tmp_path: Path) -> None:
    async def job(store: UserStore) -> str:
        user = await accounts(store, Clock()).create(
            "kudo", PASSWORD, roles=["admin"], tenants=[""]
        )
        token, _ = await Sessions(store).start(user)
        return token

    token = with_store(tmp_path, job)
    dump = database_text(tmp_path)
    assert "kudo" in dump  # the account is there
    assert token not in dump
    assert len(token) >= 43  # 32 random bytes


@pytest.mark.parametrize("change", ["password", "disable", "delete"])
def test_a_new_password_disabling_or_deleting_ends_every_session(
    tmp_path: Path, change: str
) -> None:
    async def job(store: UserStore) -> tuple[bool, bool]:
        acc = accounts(store, Clock(time.time()))
        user = await acc.create("noda", PASSWORD, roles=["admin"], tenants=[""])
        sessions = Sessions(store)
        tokens = [(await sessions.start(user))[0] for _ in range(2)]
        before = all([await sessions.find(t) is not None for t in tokens])
        if change == "password":
            await acc.set_password("noda", PASSWORD + " new")
        elif change == "disable":
            await store.set_disabled("noda", True)
        else:
            await store.delete("noda")
        after = any([await sessions.find(t) is not None for t in tokens])
        return before, after

    assert with_store(tmp_path, job) == (True, False)


# -- cityos users ----------------------------------------------------------------------------------


def cli(tmp_path: Path, *args: str, stdin: str | None = None) -> tuple[int, str]:
    runner = CliRunner(env=engine_env(tmp_path))
    result = runner.invoke(users_group, [*args, "--data-dir", str(tmp_path)], input=stdin)
    return result.exit_code, result.output


def audit_actions(tmp_path: Path) -> list[tuple[str, str, str]]:
    rows = database_rows(tmp_path, "SELECT actor, action, target FROM audit_log ORDER BY seq")
    return [(a.split(":")[0], b, c) for a, b, c in rows]


def test_users_cli_round_trip_is_audited(tmp_path: Path) -> None:
    code, _ = cli(
        tmp_path, "create", "tanaka", "--role", "admin", "--tenant", "*",
        "--display-name", "田中 一郎", "--password-stdin", stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert code == 0
    code, out = cli(tmp_path, "create", "sato", "--role", "steward", stdin=f"{PASSWORD}\n" * 2)
    assert code == 0, out  # asked twice at the prompt

    code, out = cli(tmp_path, "list", "--json")
    listed = {u["name"]: u for u in json.loads(out)["users"]}
    assert listed["tanaka"]["display_name"] == "田中 一郎"
    assert listed["tanaka"]["tenants"] == ["*"]
    assert listed["sato"]["tenants"] == [""]
    assert {u["state"] for u in listed.values()} == {"active"}
    assert "argon2" not in out

    code, out = cli(tmp_path, "list")
    assert code == 0
    header, sato, tanaka = out.splitlines()
    assert header.split()[:2] == ["NAME", "DISPLAY"]
    assert sato.split()[:5] == ["sato", "-", "steward", "(default)", "active"]
    assert tanaka.split()[:6] == ["tanaka", "田中", "一郎", "admin", "*", "active"]
    # columns line up on a terminal: 田中 一郎 takes 9 columns, as many as "DISPLAY N" does
    assert header.index("ROLES") == sato.index("steward") == tanaka.index("admin") + 4

    assert cli(tmp_path, "passwd", "sato", "--password-stdin", stdin="another long one\n")[0] == 0
    assert cli(tmp_path, "disable", "sato")[0] == 0
    assert json.loads(cli(tmp_path, "list", "--json")[1])["users"][0]["state"] == "disabled"
    assert cli(tmp_path, "enable", "sato")[0] == 0
    assert cli(tmp_path, "unlock", "sato")[0] == 0
    assert cli(tmp_path, "delete", "sato")[0] == 0
    assert [u["name"] for u in json.loads(cli(tmp_path, "list", "--json")[1])["users"]] == [
        "tanaka"
    ]

    async def sign_in(store: UserStore) -> str:
        return (await Accounts(store).sign_in("tanaka", PASSWORD)).result

    assert with_store(tmp_path, sign_in) == "ok"
    assert audit_actions(tmp_path) == [
        ("cli", "user.create", "user:tanaka"),
        ("cli", "user.create", "user:sato"),
        ("cli", "user.passwd", "user:sato"),
        ("cli", "user.disable", "user:sato"),
        ("cli", "user.enable", "user:sato"),
        ("cli", "user.unlock", "user:sato"),
        ("cli", "user.delete", "user:sato"),
    ]


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        (["create", "a b", "--role", "admin", "--password-stdin"], PASSWORD, 2, "not a user name"),
        (["create", "kato", "--role", "app", "--password-stdin"], PASSWORD, 2, "'app' is not"),
        (["create", "kato", "--role", "admin", "--password-stdin"], "short\n", 2, "at least 12"),
        (["create", "kato", "--role", "admin", "--tenant", "a b", "--password-stdin"], PASSWORD,
         2, "not a tenant name"),
        (["create", "tanaka", "--role", "steward", "--password-stdin"], PASSWORD, 1, "exists"),
        (["create", "kato", "--role", "admin"], f"{PASSWORD}\nother password!\n", 1, "match"),
        (["passwd", "nobody", "--password-stdin"], PASSWORD, 1, "no user is called nobody"),
        (["disable", "nobody"], None, 1, "no user is called nobody"),
        (["enable", "nobody"], None, 1, "no user is called nobody"),
        (["unlock", "nobody"], None, 1, "no user is called nobody"),
        (["delete", "nobody"], None, 1, "no user is called nobody"),
    ],
)  # fmt: skip
def test_users_cli_errors_exit_nonzero_and_change_nothing(
    tmp_path: Path, args: list[str], stdin: str | None, code: int, message: str
) -> None:
    made = cli(tmp_path, "create", "tanaka", "--role", "admin", "--password-stdin", stdin=PASSWORD)
    assert made[0] == 0
    before = cli(tmp_path, "list", "--json")[1]
    records = audit_actions(tmp_path)
    exit_code, out = cli(tmp_path, *args, stdin=stdin)
    assert exit_code == code, out
    assert message in out
    assert cli(tmp_path, "list", "--json")[1] == before
    assert audit_actions(tmp_path) == records
