"""`cityos export` then `cityos import-dump` through the real CLI: nothing is lost on the way."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from dump_helpers import PASSWORD, build, cli, dump_lines, files, make_client, observe, sections

from cityos.auth.users import Accounts
from cityos.storage.sqlite import SqliteStorage
from cityos.storage.sqlite_auth import AuthStore
from cityos.storage.sqlite_users import UserStore


@dataclass
class Trip:
    source: Path
    target: Path
    first: Path
    second: Path
    key: str
    export_out: str
    import_out: str


@pytest.fixture(scope="module")
def trip(tmp_path_factory: pytest.TempPathFactory) -> Trip:
    root = tmp_path_factory.mktemp("trip")
    src, dst = root / "src", root / "dst"
    key = build(src)
    first, second = root / "first.jsonl.gz", root / "second.jsonl.gz"
    exported = cli("export", str(first), "--data-dir", str(src))
    assert exported.exit_code == 0, exported.output
    imported = cli("import-dump", str(first), "--data-dir", str(dst))
    assert imported.exit_code == 0, imported.output
    again = cli("export", str(second), "--data-dir", str(dst))
    assert again.exit_code == 0, again.output
    return Trip(src, dst, first, second, key, exported.output, imported.output)


def test_the_dump_holds_every_section(trip: Trip) -> None:
    found = sections(trip.first)
    for section in (
        "entity", "history_entity", "history_instance", "subscription", "outbox", "iot_group",
        "iot_device", "key", "user", "audit", "audit_head", "live_dataset", "catalog_dataset",
        "catalog_group", "datastore_table", "datastore_row", "file", "sequence",
    ):  # fmt: skip
        assert found.get(section), section
    assert found["end"] == 1
    assert "exported" in trip.export_out
    assert "imported" in trip.import_out


def test_a_second_export_equals_the_first(trip: Trip) -> None:
    assert dump_lines(trip.second) == dump_lines(trip.first)


def test_the_dump_holds_no_secret_in_clear(trip: Trip) -> None:
    text = b"\n".join(dump_lines(trip.first))
    assert trip.key.encode() not in text
    assert PASSWORD.encode() not in text
    assert b"auth_sessions" not in text


def test_the_audit_chain_verifies_with_the_same_head(trip: Trip) -> None:
    head = cli("audit", "head", "--data-dir", str(trip.source))
    seq, digest = head.output.split()[:2]
    verdict = cli("audit", "verify", "--expect-head", seq, digest, "--data-dir", str(trip.target))
    assert verdict.exit_code == 0, verdict.output
    assert cli("audit", "head", "--data-dir", str(trip.target)).output == head.output


def test_users_see_the_same_installation(trip: Trip) -> None:
    before, after = observe(trip.source), observe(trip.target)
    assert len(after["sensors"]) == 2
    assert len(after["city2"]) == 1
    assert after["history"]["waterLevel"]  # the patch's instance came along
    assert any(d[0]["success"] and d[1]["result"]["records"] for d in after["datastore"].values())
    assert after["search"]["count"]
    assert after["live"]["success"]
    assert after == before
    assert files(trip.target) == files(trip.source) != {}


def test_the_key_and_the_user_still_work(trip: Trip) -> None:
    async def check() -> tuple[Any, Any]:
        store = SqliteStorage(trip.target / "cityos.db")
        await store.start()
        try:
            found = await AuthStore(store).find(trip.key)
            signed = await Accounts(UserStore(store)).sign_in("hanako", PASSWORD)
            wrong = await Accounts(UserStore(store)).sign_in("hanako", PASSWORD + "!")
            return found, (signed.ok, wrong.ok)
        finally:
            await store.close()

    found, (ok, wrong) = asyncio.run(check())
    assert found is not None
    assert found.name == "gateway"
    assert ok
    assert not wrong


def test_the_pending_notification_is_still_pending(trip: Trip) -> None:
    with make_client(trip.target) as c:
        subs = c.get("/ngsi-ld/v1/subscriptions").json()
    assert len(subs) == 1
    outbox = [
        orjson.loads(line)["record"]
        for line in dump_lines(trip.second)
        if orjson.loads(line).get("section") == "outbox"
    ]
    assert outbox
    assert outbox[0]["sub_id"] == subs[0]["id"]
