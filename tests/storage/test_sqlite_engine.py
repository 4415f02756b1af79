"""The SQLite engine: failed writes leave no trace, including in the interned-path cache."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cityos.broker import qlang
from cityos.storage import sqlite_geo
from cityos.storage.base import EntityQuery, Mutation
from cityos.storage.sqlite import SqliteStorage

#: both engines: tests/storage/test_*_engines.py
pytestmark = pytest.mark.sqlite_only("the SQLite engine's writer and its path cache")

T = "https://x.org/T"


def doc(i: int, **attrs: Any) -> dict[str, Any]:
    return {
        "id": f"urn:x:{i}",
        "type": [T],
        "createdAt": "2026-01-01T00:00:00Z",
        "modifiedAt": "2026-01-01T00:00:00Z",
        "attrs": {k: [{"type": "Property", "value": v}] for k, v in attrs.items()},
    }


def put(d: dict[str, Any]) -> Mutation:
    return Mutation(d["id"], lambda _cur: d)


def test_failure_after_indexing_rolls_back_and_later_writes_stay_queryable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run() -> None:
        st = SqliteStorage(tmp_path / "t.db")
        await st.start()
        try:
            real = sqlite_geo.write_geo
            calls = {"n": 0}

            def flaky(conn: Any, rid: int, d: dict[str, Any]) -> None:
                calls["n"] += 1
                if calls["n"] == 1:
                    raise ValueError("disk on fire")  # after attr_index rows were written
                real(conn, rid, d)

            monkeypatch.setattr(sqlite_geo, "write_geo", flaky)
            first = await st.apply("", [put(doc(1, https_x_org_fresh=5))])
            assert first[0].error is not None
            assert await st.get("", "urn:x:1") is None
            # the path interned by the failed write was rolled back; a new write must
            # intern it again, or q would silently miss the entity
            second = await st.apply("", [put(doc(2, https_x_org_fresh=7))])
            assert second[0].ok
            q = qlang.parse_q("https_x_org_fresh>6")
            result = await st.query("", EntityQuery(q=q, count=True))
            assert [d["id"] for d in result.docs] == ["urn:x:2"]
            assert result.count == 1
        finally:
            await st.close()

    asyncio.run(run())


def test_group_of_writes_isolates_a_failing_one(tmp_path: Path) -> None:
    async def run() -> None:
        st = SqliteStorage(tmp_path / "t.db")
        await st.start()
        try:

            def boom(_cur: Any) -> Any:
                raise KeyError("bad mutation")

            outcomes = await asyncio.gather(
                st.apply("", [put(doc(1, a=1))]),
                st.apply("", [Mutation("urn:x:2", boom)]),
                st.apply("", [put(doc(3, a=3))]),
            )
            assert [o[0].ok for o in outcomes] == [True, False, True]
            assert await st.get("", "urn:x:1") is not None
            assert await st.get("", "urn:x:2") is None
            assert await st.get("", "urn:x:3") is not None
        finally:
            await st.close()

    asyncio.run(run())


def test_close_commits_every_acknowledged_write(tmp_path: Path) -> None:
    async def write_then_close() -> None:
        st = SqliteStorage(tmp_path / "t.db")
        await st.start()
        await asyncio.gather(*(st.apply("", [put(doc(i, a=i))]) for i in range(300)))
        await st.close()

    async def count() -> int | None:
        st = SqliteStorage(tmp_path / "t.db")
        await st.start()
        try:
            return (await st.query("", EntityQuery(count=True, limit=0))).count
        finally:
            await st.close()

    asyncio.run(write_then_close())
    assert asyncio.run(count()) == 300
    assert not (tmp_path / "t.db-wal").exists() or (tmp_path / "t.db-wal").stat().st_size == 0


def test_database_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    import sqlite3

    from cityos.storage.sqlite import SchemaError

    conn = sqlite3.connect(tmp_path / "old.db")
    conn.execute("CREATE TABLE entities(rid INTEGER PRIMARY KEY, doc TEXT)")
    conn.execute("PRAGMA user_version=0")
    conn.commit()
    conn.close()

    async def run() -> None:
        st = SqliteStorage(tmp_path / "old.db")
        await st.start()

    with pytest.raises(SchemaError, match="schema 0"):
        asyncio.run(run())


def test_wal_stays_bounded_under_a_write_flood(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cityos.storage import sqlite_writer

    monkeypatch.setattr(sqlite_writer, "WAL_LIMIT", 256 * 1024)
    monkeypatch.setattr(sqlite_writer, "CHECKPOINT_EVERY", 0.0)
    wal = tmp_path / "t.db-wal"
    biggest = 0

    async def run() -> None:
        nonlocal biggest
        st = SqliteStorage(tmp_path / "t.db")
        await st.start()

        async def watch() -> None:
            nonlocal biggest
            while True:
                if wal.exists():
                    biggest = max(biggest, wal.stat().st_size)
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        try:
            # a flood: every write queued at once, committed in back-to-back groups, so the
            # background checkpoints never catch up (without the limit the WAL passes 15 MB)
            await asyncio.gather(
                *(st.apply("", [put(doc(i, a=i, b=str(i)))]) for i in range(10000))
            )
        finally:
            watcher.cancel()
            await st.close()

    asyncio.run(run())
    assert biggest < 6 * 1024 * 1024, f"WAL grew to {biggest} bytes"


def test_change_hooks_see_every_change_inside_the_transaction(tmp_path: Path) -> None:
    from cityos.broker import typesel
    from cityos.storage.base import Change

    seen: list[tuple[str, bool, bool]] = []

    def hook(conn: Any, change: Change) -> None:
        # the hook runs inside the writer's transaction: it sees the new state
        row = conn.execute("SELECT count(*) FROM entities WHERE id=?", (change.entity_id,))
        assert row.fetchone()[0] == (0 if change.new is None else 1)
        seen.append((change.entity_id, change.old is None, change.new is None))
        if change.entity_id == "urn:x:9":
            raise ValueError("hook refuses")  # rolls the change back

    async def run() -> None:
        st = SqliteStorage(tmp_path / "t.db")
        st.add_change_hook(hook)
        await st.start()
        try:
            await st.apply("", [put(doc(1, a=1)), put(doc(2, a=2))])
            await st.apply("", [put(doc(1, a=5))])
            refused = await st.apply("", [put(doc(9, a=9))])
            assert refused[0].error is not None
            assert await st.get("", "urn:x:9") is None
            await st.purge("", EntityQuery(types=typesel.parse_type_selection(T)))
        finally:
            await st.close()

    asyncio.run(run())
    assert seen == [
        ("urn:x:1", True, False),
        ("urn:x:2", True, False),
        ("urn:x:1", False, False),
        ("urn:x:9", True, False),
        ("urn:x:1", False, True),
        ("urn:x:2", False, True),
    ]
