"""API keys: shown once, stored hashed, found only while active; `cityos keys` over a real file."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest
from click.testing import CliRunner
from conftest import database_exists, database_text, engine_env, storage_of

from cityos.auth import keys
from cityos.auth.keys import KeyInputError
from cityos.auth.keys_cli import keys_group
from cityos.auth.policy import Operation, Policy
from cityos.storage import engines
from cityos.storage.engines import Keys as AuthStore

T = TypeVar("T")
NOW = 1_780_000_000.0  # 2026-05-28


def with_store(path: Path, job: Callable[[AuthStore], Awaitable[T]]) -> T:
    """Run job on the API keys of the installation in path (SQLite or PostgreSQL)."""
    store = storage_of(path)

    async def run() -> T:
        await store.start()
        try:
            auth = engines.keys(store)
            await auth.setup()
            return await job(auth)
        finally:
            await store.close()

    return asyncio.run(run())


# -- the key itself ------------------------------------------------------------------------------


def test_a_key_has_the_documented_shape_and_a_unique_secret() -> None:
    made = [keys.new_key() for _ in range(50)]
    for k in made:
        mark, prefix, secret = k.plaintext[:4], k.plaintext[4:12], k.plaintext[13:]
        assert (mark, k.plaintext[12]) == ("cok_", "_")
        assert prefix == k.prefix
        assert len(secret) == 43
        assert keys.prefix_of(k.plaintext) == k.prefix
        assert k.digest == keys.digest(k.plaintext) != k.plaintext
    assert len({k.plaintext for k in made}) == 50


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "cok_",
        "cok_0123abcd",
        "cok_0123ABCD_" + "a" * 43,  # upper-case hex
        "cok_0123abcd_" + "a" * 42,
        "cok_0123abcd_" + "a" * 44,
        "cok_0123abcd_" + "a" * 42 + "=",
        "Bearer cok_0123abcd_" + "a" * 43,
        "cityos_" + "a" * 43,
    ],
)
def test_a_malformed_key_has_no_prefix(presented: str) -> None:
    assert keys.prefix_of(presented) is None


def test_matching_compares_the_whole_key() -> None:
    k = keys.new_key()
    assert keys.matches(k.digest, k.plaintext)
    tampered = k.plaintext[:-1] + ("A" if k.plaintext[-1] != "A" else "B")
    assert not keys.matches(k.digest, tampered)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90d", NOW + 90 * 86400),
        ("12h", NOW + 12 * 3600),
        ("30m", NOW + 1800),
        ("4w", NOW + 28 * 86400),
        ("2027-01-01", datetime(2027, 1, 1, tzinfo=UTC).timestamp()),
        ("2027-01-01T09:00:00+09:00", datetime(2027, 1, 1, tzinfo=UTC).timestamp()),
    ],
)
def test_expiry_is_a_duration_or_a_date(text: str, expected: float) -> None:
    assert keys.parse_expiry(text, NOW) == expected


@pytest.mark.parametrize("text", ["0d", "soon", "90 days", "2020-01-01", "-5d"])
def test_a_bad_or_past_expiry_is_refused(text: str) -> None:
    with pytest.raises(KeyInputError):
        keys.parse_expiry(text, NOW)


def test_roles_tenants_and_scopes_are_checked() -> None:
    assert keys.check_roles(["app", "steward", "app"]) == ("app", "steward")
    assert keys.check_tenants(["sano", "", "sano"]) == ("", "sano")
    assert keys.check_tenants(["sano", "*"]) == ("*",)
    assert keys.check_scopes([]) == ("*",)
    assert keys.check_scopes(["entities:read", "catalog:*"]) == ("catalog:*", "entities:read")
    for bad in (
        lambda: keys.check_roles(["root"]),
        lambda: keys.check_roles([]),
        lambda: keys.check_tenants([]),
        lambda: keys.check_tenants(["a/b"]),
        lambda: keys.check_scopes(["entities"]),
        lambda: keys.check_scopes(["entities:delete"]),
        lambda: keys.check_scopes(["weather:read"]),
        lambda: keys.check_name("  "),
    ):
        with pytest.raises(KeyInputError):
            bad()


# -- the store -----------------------------------------------------------------------------------


def test_a_created_key_is_found_and_acts_with_its_roles_and_tenants(tmp_path: Path) -> None:
    async def job(auth: AuthStore) -> None:
        cred, plaintext = await auth.create_key(
            "flood app", roles=["app"], tenants=["sano"], scopes=["entities:read"], now=NOW
        )
        found = await auth.find(plaintext, now=NOW + 1)
        assert found == cred
        principal = found.principal()
        policy = Policy()
        read = Operation("read", "entities", "sano", ("Building",))
        assert policy.decide(principal, read).allowed
        assert not policy.decide(principal, Operation("write", "entities", "sano")).allowed
        assert policy.decide(principal, Operation("read", "entities", "other", ("X",))).hide

    with_store(tmp_path, job)


def test_only_the_hash_is_stored(tmp_path: Path) -> None:
    _, plaintext = with_store(
        tmp_path, lambda auth: auth.create_key("a", roles=["admin"], tenants=["*"])
    )
    dumped = database_text(tmp_path)
    assert plaintext not in dumped
    assert plaintext[13:] not in dumped  # not even the secret part
    assert keys.digest(plaintext) in dumped


def test_unknown_tampered_and_malformed_keys_are_not_found(tmp_path: Path) -> None:
    async def job(auth: AuthStore) -> None:
        _, plaintext = await auth.create_key("a", roles=["admin"], tenants=["*"], now=NOW)
        other = keys.new_key().plaintext
        same_prefix = plaintext[:13] + other[13:]
        for presented in (other, same_prefix, plaintext + "x", "garbage", ""):
            assert await auth.find(presented, now=NOW) is None
        assert await auth.find(plaintext, now=NOW) is not None

    with_store(tmp_path, job)


def test_a_revoked_key_stops_working_and_stays_listed(tmp_path: Path) -> None:
    async def job(auth: AuthStore) -> None:
        cred, plaintext = await auth.create_key("dev", roles=["app"], tenants=[""], now=NOW)
        revoked = await auth.revoke(cred.prefix, now=NOW + 5)
        assert revoked is not None
        assert revoked.revoked == NOW + 5
        assert await auth.find(plaintext, now=NOW + 6) is None
        again = await auth.revoke(cred.prefix, now=NOW + 50)
        assert again is not None
        assert again.revoked == NOW + 5  # the first revocation time is kept
        assert await auth.revoke("00000000") is None
        [listed] = await auth.list_keys()
        assert (listed.prefix, listed.revoked) == (cred.prefix, NOW + 5)

    with_store(tmp_path, job)


def test_an_expired_key_stops_working_at_its_expiry(tmp_path: Path) -> None:
    async def job(auth: AuthStore) -> None:
        _, plaintext = await auth.create_key(
            "temp", roles=["operator"], tenants=["*"], expires=NOW + 60, now=NOW
        )
        assert await auth.find(plaintext, now=NOW + 59.9) is not None
        assert await auth.find(plaintext, now=NOW + 60) is None

    with_store(tmp_path, job)


def test_last_used_is_written_at_most_once_a_minute(tmp_path: Path) -> None:
    async def job(auth: AuthStore) -> None:
        cred, _ = await auth.create_key("busy", roles=["app"], tenants=["*"], now=NOW)
        assert await auth.touch(cred.id, now=NOW + 1)
        assert not await auth.touch(cred.id, now=NOW + 30)
        assert await auth.touch(cred.id, now=NOW + 61)
        [listed] = await auth.list_keys()
        assert listed.last_used == NOW + 61

    with_store(tmp_path, job)


def test_another_process_touching_a_moment_ago_is_not_overwritten(tmp_path: Path) -> None:
    made = with_store(tmp_path, lambda auth: auth.create_key("k", roles=["app"], tenants=["*"]))
    cred = made[0]
    assert with_store(tmp_path, lambda auth: auth.touch(cred.id, now=NOW))
    # a second process (its own AuthStore, no memory of the first) a few seconds later
    assert not with_store(tmp_path, lambda auth: auth.touch(cred.id, now=NOW + 10))
    [listed] = with_store(tmp_path, lambda auth: auth.list_keys())
    assert listed.last_used == NOW


def test_the_store_refuses_bad_input_and_writes_nothing(tmp_path: Path) -> None:
    async def job(auth: AuthStore) -> None:
        with pytest.raises(KeyInputError):
            await auth.create_key("x", roles=["root"], tenants=["*"])
        with pytest.raises(KeyInputError):
            await auth.create_key("x", roles=["app"], tenants=["*"], expires=NOW - 1, now=NOW)
        assert await auth.list_keys() == []

    with_store(tmp_path, job)


# -- `cityos keys` -------------------------------------------------------------------------------


def keys_cli(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    runner = CliRunner(env=engine_env(tmp_path))
    result = runner.invoke(keys_group, [*args, "--data-dir", str(tmp_path)])
    return result.exit_code, result.stdout, result.stderr


def test_cli_create_prints_the_key_once_and_list_never_shows_it(tmp_path: Path) -> None:
    code, out, err = keys_cli(
        tmp_path,
        "create", "--name", "river app", "--role", "app", "--tenant", "sano",
        "--scope", "entities:read", "--scope", "temporal:read", "--expires", "90d",
    )  # fmt: skip
    assert code == 0, err
    plaintext = out.strip()
    assert keys.prefix_of(plaintext) is not None
    assert "not shown again" in err
    code, out, err = keys_cli(tmp_path, "list")
    assert code == 0, err
    prefix = plaintext[4:12]
    assert prefix in out
    assert "river app" in out
    assert "tenants=sano" in out
    assert "scopes=entities:read,temporal:read" in out
    assert "last_used=never" in out
    assert "active" in out
    assert plaintext not in out
    assert plaintext[13:] not in out
    assert keys.digest(plaintext) not in out
    found = with_store(tmp_path, lambda auth: auth.find(plaintext))
    assert found is not None
    assert found.expires is not None


def test_cli_revoke_makes_the_key_useless(tmp_path: Path) -> None:
    code, out, err = keys_cli(
        tmp_path, "create", "--name", "gauge 7", "--role", "app", "--tenant", ""
    )
    assert code == 0, err
    plaintext = out.strip()
    code, out, err = keys_cli(tmp_path, "revoke", plaintext[4:12])
    assert code == 0, err
    assert out.startswith("revoked:")
    assert with_store(tmp_path, lambda auth: auth.find(plaintext)) is None
    code, out, _ = keys_cli(tmp_path, "list")
    assert "tenants=(default)" in out
    assert "  revoked 20" in out
    code, out, _ = keys_cli(tmp_path, "revoke", "cok_" + plaintext[4:12])
    assert code == 0
    assert out.startswith("was already revoked:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "--name", "x", "--role", "root", "--tenant", "a"], "root"),
        (["create", "--name", "x", "--role", "app"], "--tenant"),
        (["create", "--name", "x", "--role", "app", "--tenant", "a b"], "tenant name"),
        (["create", "--name", "x", "--role", "app", "--tenant", "a", "--scope", "all"], "scope"),
        (["create", "--name", "x", "--role", "app", "--tenant", "a", "--expires", "1y"], "expiry"),
        (["create", "--name", " ", "--role", "app", "--tenant", "a"], "name"),
        (["revoke", "abc"], "prefix"),
    ],
)
def test_cli_refuses_bad_input_and_creates_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    code, _, err = keys_cli(tmp_path, *args)
    assert code == 2
    assert message in err
    assert not database_exists(tmp_path)


def test_cli_revoking_an_unknown_prefix_fails(tmp_path: Path) -> None:
    code, _, err = keys_cli(tmp_path, "revoke", "0123abcd")
    assert code == 1
    assert "no key has the prefix 0123abcd" in err
