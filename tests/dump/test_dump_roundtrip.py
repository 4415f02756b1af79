"""`cityos export` then `cityos import-dump` through the real CLI: nothing is lost on the way."""

from __future__ import annotations

import asyncio
import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from dump_helpers import cli, free_port, make_client, sensor

from cityos.auth.users import Accounts
from cityos.storage.sqlite import SqliteStorage
from cityos.storage.sqlite_auth import AuthStore
from cityos.storage.sqlite_users import UserStore

E = "/ngsi-ld/v1/entities"
API = "/api/3/action/"
PASSWORD = "a long enough passphrase 2026"
CITY2 = {"NGSILD-Tenant": "city2"}


def dump_lines(path: Path) -> list[bytes]:
    """Return a dump's lines, the header without its creation time."""
    with gzip.open(path, "rb") as f:
        lines = f.read().splitlines()
    header = orjson.loads(lines[0])
    del header["created"]
    return [orjson.dumps(header), *lines[1:]]


def sections(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in dump_lines(path)[1:]:
        section = orjson.loads(line)["section"]
        counts[section] = counts.get(section, 0) + 1
    return counts


def observe(data_dir: Path) -> dict[str, Any]:
    """Return what users see of an installation through its public APIs."""
    with make_client(data_dir) as c:
        seen: dict[str, Any] = {
            "sensors": c.get(E, params={"type": "WaterLevelObserved", "limit": 1000}).json(),
            "city2": c.get(E, params={"type": "WaterLevelObserved"}, headers=CITY2).json(),
            "shelters": c.get(E, params={"type": "EvacuationShelter", "limit": 1000}).json(),
            "history": c.get(
                "/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:WaterLevelObserved:akiyama-1",
                params={"attrs": "waterLevel"},
            ).json(),
            "packages": c.get(API + "package_list").json()["result"],
            "organizations": c.get(API + "organization_list").json()["result"],
            "search": c.get(API + "package_search", params={"q": "避難"}).json()["result"],
        }
        resources = [
            r["id"]
            for name in seen["packages"]
            for r in c.get(API + "package_show", params={"id": name}).json()["result"]["resources"]
        ]
        seen["datastore"] = {
            rid: [
                c.get(API + "datastore_search", params={"resource_id": rid, **q}).json()
                for q in ({}, {"q": "佐野"})
            ]
            for rid in resources
        }
        seen["live"] = c.get(API + "package_show", params={"id": "sano-river-levels"}).json()
    return seen


def files(root: Path) -> dict[str, bytes]:
    base = root / "catalog" / "files"
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*") if p.is_file()}


@dataclass
class Trip:
    source: Path
    target: Path
    first: Path
    second: Path
    key: str
    export_out: str
    import_out: str


def build(src: Path) -> str:
    """Make an installation with something in every section; return its API key."""
    assert cli("demo", "--no-serve", "--data-dir", str(src)).exit_code == 0
    made = cli(
        "keys",
        "create",
        "--name",
        "gateway",
        "--role",
        "app",
        "--tenant",
        "",
        "--data-dir",
        str(src),
    )
    assert made.exit_code == 0, made.output
    key = re.search(r"cok_\S+", made.output)
    assert key is not None
    user = cli(
        "users", "create", "hanako", "--role", "operator", "--password-stdin",
        "--data-dir", str(src), stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert user.exit_code == 0, user.output
    with make_client(src) as c:
        for n in (1, 2):
            assert c.post(E, json=sensor(n)).status_code == 201
        assert c.post(E, json=sensor(7, level=0.4), headers=CITY2).status_code == 201
        # nobody listens there: the notification stays in the outbox
        body = {
            "type": "Subscription",
            "entities": [{"type": "WaterLevelObserved"}],
            "notification": {"endpoint": {"uri": f"http://127.0.0.1:{free_port()}/notify"}},
        }
        assert c.post("/ngsi-ld/v1/subscriptions", json=body).status_code == 201
        patch = {"waterLevel": {"type": "Property", "value": 2.9}}
        r = c.patch(E + "/urn:ngsi-ld:WaterLevelObserved:akiyama-1/attrs", json=patch)
        assert r.status_code == 204, r.text
    return key.group(0)


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
