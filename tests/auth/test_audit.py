"""The audit log: canonical hashing, chained appends, tampering found where it happened, the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from conftest import database_rows, database_sql, engine_env, make_client, storage_of

from cityos.auth.audit import (
    GENESIS,
    AuditError,
    Entry,
    Head,
    Record,
    canonical,
    chain,
    content_hash,
    record_from_dict,
    timestamp,
    verify_chain,
)
from cityos.auth.audit_cli import audit_group
from cityos.storage import engines
from cityos.storage.engines import Audit
from cityos.storage.pg_audit import PgAuditStore
from cityos.storage.postgres import PostgresStorage
from cityos.storage.sqlite import SqliteStorage
from cityos.storage.sqlite_audit import AuditStore

T = TypeVar("T")
START = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def ticking() -> Callable[[], datetime]:
    """Return a clock that advances one second per reading."""
    seconds = iter(range(1_000_000))
    return lambda: START + timedelta(seconds=next(seconds))


def with_audit(tmp_path: Path, job: Callable[[Audit], Awaitable[T]]) -> T:
    """Run job on the audit log of the installation in tmp_path (SQLite or PostgreSQL)."""
    store = storage_of(tmp_path)

    async def main() -> T:
        await store.start()
        try:
            audit: Audit = (
                PgAuditStore(store, clock=ticking())
                if isinstance(store, PostgresStorage)
                else AuditStore(engines.sqlite(store), clock=ticking())
            )
            await audit.setup()
            return await job(audit)
        finally:
            await store.close()

    return asyncio.run(main())


def entry(n: int) -> Entry:
    return Entry(
        actor=f"key:cok_ab12cd{n:02}",
        action="entity.update",
        target=f"urn:ngsi-ld:WaterLevelObserved:akiyama-{n}",
        tenant="sano",
        detail={"attrs": ["waterLevel"], "n": n},
    )


def seed(tmp_path: Path, count: int) -> list[Record]:
    async def job(audit: Audit) -> list[Record]:
        return [await audit.append(entry(n)) for n in range(1, count + 1)]

    return with_audit(tmp_path, job)


def tamper(tmp_path: Path, *statements: str) -> None:
    database_sql(tmp_path, *statements)


CONTENT = "seq, at, actor, action, target, tenant, outcome, detail, prev"


def rehash(tmp_path: Path, seq: int) -> None:
    """Recompute record seq's hash after an edit, as a careful forger would."""
    [row] = database_rows(tmp_path, f"SELECT {CONTENT} FROM audit_log WHERE seq={seq}")
    content = dict(zip(CONTENT.split(", "), row, strict=True))
    content["detail"] = json.loads(content["detail"])
    tamper(tmp_path, f"UPDATE audit_log SET hash='{content_hash(content)}' WHERE seq={seq}")


# -- the pure part ---------------------------------------------------------------------------


def test_canonical_form_sorts_keys_without_spaces_in_utf8() -> None:
    assert canonical({"b": 1, "a": ["避難", 2.5]}) == '{"a":["避難",2.5],"b":1}'.encode()
    with pytest.raises(AuditError):
        canonical({"x": float("nan")})


def test_a_record_hashes_every_field_but_its_hash() -> None:
    record = chain(entry(1), seq=1, at=START, prev=GENESIS)
    assert record.at == "2026-11-25T09:00:00.000000Z"
    assert record.prev == "0" * 64
    fields = {k: v for k, v in record.as_dict().items() if k != "hash"}
    assert set(fields) == {
        "seq",
        "at",
        "actor",
        "action",
        "target",
        "tenant",
        "outcome",
        "detail",
        "prev",
    }
    expected = hashlib.sha256(
        json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    assert record.hash == expected
    second = chain(entry(2), seq=2, at=START, prev=record.hash)
    assert second.prev == record.hash


def test_timestamps_are_utc_with_microseconds() -> None:
    tokyo = datetime(2026, 11, 25, 18, 0, 0, 1500, tzinfo=UTC).astimezone(ZoneInfo("Asia/Tokyo"))
    assert tokyo.hour == 3  # the next day in Japan
    assert timestamp(tokyo) == "2026-11-25T18:00:00.001500Z"
    with pytest.raises(AuditError, match="timezone"):
        timestamp(datetime(2026, 11, 25))


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"actor": ""}, "actor"),
        ({"action": "create"}, "action"),
        ({"action": "Entity.Create"}, "action"),
        ({"outcome": "maybe"}, "outcome"),
        ({"detail": ["not", "an", "object"]}, "detail"),
        ({"detail": {"blob": "x" * 5000}}, "detail"),
        ({"detail": {"level": float("inf")}}, "canonical JSON"),
        ({"target": "\ud800"}, "canonical JSON"),
        ({"target": "x" * 1001}, "target"),
    ],
)
def test_entries_that_cannot_be_recorded_are_refused(
    fields: dict[str, Any], complaint: str
) -> None:
    base: dict[str, Any] = {"actor": "system", "action": "entity.create"}
    with pytest.raises(AuditError, match=complaint):
        Entry(**{**base, **fields})


def test_an_exported_chain_verifies_without_the_database() -> None:
    records: list[Record] = []
    prev = GENESIS
    for n in range(1, 4):
        records.append(chain(entry(n), seq=n, at=START, prev=prev))
        prev = records[-1].hash
    lines = [canonical(r.as_dict()).decode() for r in records]
    back = [record_from_dict(json.loads(line)) for line in lines]
    by_hash = {r.hash: r.seq for r in back}
    verdict = verify_chain(back, head=Head(3, prev), seq_of_hash=by_hash.get)
    assert verdict.ok
    assert verdict.message == f"audit log intact: 3 records, head {prev}"
    with pytest.raises(AuditError, match="lacks the field 'hash'"):
        record_from_dict({k: v for k, v in records[0].as_dict().items() if k != "hash"})


# -- the store -------------------------------------------------------------------------------


def test_concurrent_appends_form_one_gapless_chain(tmp_path: Path) -> None:
    async def job(audit: Audit) -> tuple[list[Record], list[Record], Any, Head]:
        made = await asyncio.gather(*(audit.append(entry(n % 100)) for n in range(200)))
        return list(made), await audit.records(limit=500), await audit.verify(), await audit.head()

    made, stored, verdict, head = with_audit(tmp_path, job)
    assert sorted(r.seq for r in made) == list(range(1, 201))
    assert stored == sorted(made, key=lambda r: r.seq)
    for before, after in itertools.pairwise(stored):
        assert after.prev == before.hash
    assert verdict.ok, verdict.message
    assert (verdict.records, verdict.head) == (200, Head(200, stored[-1].hash))
    assert head == Head(200, stored[-1].hash)


def test_an_empty_log_is_intact(tmp_path: Path) -> None:
    verdict = with_audit(tmp_path, lambda audit: audit.verify())
    assert verdict.ok
    assert verdict.message == f"audit log intact: 0 records, head {GENESIS}"


@pytest.mark.sqlite_only(
    "the SQLite store's synchronous append_in; both engines: tests/storage/test_auth_engines.py"
)
def test_a_record_appended_inside_a_failed_write_goes_with_it(tmp_path: Path) -> None:
    async def main() -> list[Record]:
        store = SqliteStorage(tmp_path / "cityos.db")
        await store.start()
        try:
            audit = AuditStore(store)
            await audit.setup()
            return await job(store, audit)
        finally:
            await store.close()

    async def job(store: SqliteStorage, audit: AuditStore) -> list[Record]:
        def failing(conn: sqlite3.Connection) -> None:
            audit.append_in(conn, Entry("user:tanaka", "entity.create", "urn:x:1"))
            raise RuntimeError("the entity write failed")

        with pytest.raises(RuntimeError):
            await store.write(failing)
        await audit.append(Entry("user:tanaka", "entity.create", "urn:x:1", outcome="error"))
        return await audit.records()

    records = asyncio.run(main())
    assert [(r.seq, r.outcome) for r in records] == [(1, "error")]


def test_japanese_target_and_detail_survive(tmp_path: Path) -> None:
    shelter = Entry(
        actor="user:田中",
        action="entity.update",
        target="urn:ngsi-ld:EvacuationShelter:佐野市立城北小学校",
        tenant="佐野市",
        detail={"名前": "城北小学校", "混雑": "やや混雑", "占有率": 0.62},
    )

    async def job(audit: Audit) -> tuple[Record, list[Record], Any]:
        made = await audit.append(shelter)
        return made, await audit.records(), await audit.verify()

    made, stored, verdict = with_audit(tmp_path, job)
    assert stored == [made]
    assert made.target.endswith("佐野市立城北小学校")
    assert made.detail == {"名前": "城北小学校", "混雑": "やや混雑", "占有率": 0.62}
    assert verdict.ok
    out = tmp_path / "audit.jsonl"
    result = CliRunner(env=engine_env(tmp_path)).invoke(
        audit_group, ["export", "--output", str(out), "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    assert "城北小学校" in text  # readable UTF-8, not \\u escapes
    assert record_from_dict(json.loads(text)) == made


# -- tampering -------------------------------------------------------------------------------


def swap(a: int, b: int) -> tuple[str, ...]:
    return (
        f"UPDATE audit_log SET seq=-1 WHERE seq={a}",
        f"UPDATE audit_log SET seq={a} WHERE seq={b}",
        f"UPDATE audit_log SET seq={b} WHERE seq=-1",
    )


@pytest.mark.parametrize(
    ("statements", "rehashed", "kind", "seq", "message"),
    [
        pytest.param(
            ["UPDATE audit_log SET actor='user:mallory' WHERE seq=3"],
            None,
            "edited",
            3,
            "content of record 3 does not match its hash",
            id="field-updated",
        ),
        pytest.param(
            ["UPDATE audit_log SET outcome='ok', detail='{}' WHERE seq=5"],
            None,
            "edited",
            5,
            "content of record 5 does not match its hash",
            id="last-record-updated",
        ),
        pytest.param(
            ["UPDATE audit_log SET detail='{not json' WHERE seq=2"],
            None,
            "edited",
            2,
            "content of record 2 does not match its hash (its detail is not JSON)",
            id="detail-garbled",
        ),
        pytest.param(
            ["DELETE FROM audit_log WHERE seq=3"],
            None,
            "deleted",
            3,
            "record 3 is missing (2 is followed by 4)",
            id="middle-deleted",
        ),
        pytest.param(
            ["DELETE FROM audit_log WHERE seq IN (2, 3)"],
            None,
            "deleted",
            2,
            "records 2..3 are missing (1 is followed by 4)",
            id="two-deleted",
        ),
        pytest.param(
            ["DELETE FROM audit_log WHERE seq=1"],
            None,
            "deleted",
            1,
            "record 1 is missing (the log starts at 2)",
            id="first-deleted",
        ),
        pytest.param(
            ["DELETE FROM audit_log WHERE seq=5"],
            None,
            "deleted",
            5,
            "the log ends at 4 but its head says 5",
            id="last-deleted",
        ),
        pytest.param(
            ["DELETE FROM audit_log"],
            None,
            "deleted",
            1,
            "the log ends at 0 but its head says 5",
            id="all-deleted",
        ),
        pytest.param(
            swap(2, 4),
            None,
            "reordered",
            2,
            "record 4 is stored as record 2 (records were reordered)",
            id="two-swapped",
        ),
        pytest.param(
            ['UPDATE audit_log SET detail=\'{"attrs":[],"n":3}\' WHERE seq=3'],
            3,
            "edited",
            3,
            "record 3 was rewritten: record 4 was chained to a different hash",
            id="edited-and-rehashed",
        ),
        pytest.param(
            ["UPDATE audit_log SET actor='system' WHERE seq=5"],
            5,
            "edited",
            5,
            "record 5 was rewritten: its hash is not the one the head holds",
            id="last-edited-and-rehashed",
        ),
        pytest.param(
            [
                "INSERT INTO audit_log SELECT seq+1, at, actor, action, target, tenant, "
                "outcome, detail, hash, hash FROM audit_log WHERE seq=5"
            ],
            6,
            "inserted",
            6,
            "the log goes on to 6 but its head says 5",
            id="appended-behind-its-back",
        ),
        pytest.param(
            ["DELETE FROM audit_head"],
            None,
            "inserted",
            1,
            "the log goes on to 5 but its head says 0",
            id="head-removed",
        ),
    ],
)
def test_tampering_is_found_where_it_happened(
    tmp_path: Path,
    statements: list[str],
    rehashed: int | None,
    kind: str,
    seq: int,
    message: str,
) -> None:
    seed(tmp_path, 5)
    tamper(tmp_path, *statements)
    if rehashed is not None:
        rehash(tmp_path, rehashed)
    verdict = with_audit(tmp_path, lambda audit: audit.verify())
    assert (verdict.ok, verdict.kind, verdict.seq) == (False, kind, seq), verdict.message
    assert verdict.message.startswith(message)


def test_a_rewritten_chain_is_caught_only_by_a_head_kept_elsewhere(tmp_path: Path) -> None:
    records = seed(tmp_path, 4)
    kept = Head(records[2].seq, records[2].hash)
    # The forger edits record 2 and rewrites every later hash and link, and the head.
    tamper(tmp_path, "UPDATE audit_log SET outcome='ok', actor='system' WHERE seq=2")
    prev = records[0].hash
    for seq in range(2, 5):
        [row] = database_rows(tmp_path, f"SELECT {CONTENT} FROM audit_log WHERE seq={seq}")
        content = dict(zip(CONTENT.split(", "), row, strict=True))
        content["detail"], content["prev"] = json.loads(content["detail"]), prev
        prev = content_hash(content)
        tamper(
            tmp_path,
            f"UPDATE audit_log SET prev='{content['prev']}', hash='{prev}' WHERE seq={seq}",
        )
    tamper(tmp_path, f"UPDATE audit_head SET hash='{prev}'")
    assert with_audit(tmp_path, lambda audit: audit.verify()).ok  # the honest limit
    verdict = with_audit(tmp_path, lambda audit: audit.verify(expect=kept))
    assert (verdict.kind, verdict.seq) == ("edited", 3)
    assert "the log was rewritten at or before record 3" in verdict.message
    # a kept head from the future of the log means records were cut off
    later = with_audit(tmp_path, lambda audit: audit.verify(expect=Head(9, "a" * 64)))
    assert (later.kind, later.seq) == ("deleted", 5)


def test_the_log_keeps_recording_after_tampering(tmp_path: Path) -> None:
    seed(tmp_path, 3)
    tamper(tmp_path, "UPDATE audit_log SET target='urn:x:other' WHERE seq=2")

    async def job(audit: Audit) -> tuple[Record, Any]:
        return await audit.append(entry(4)), await audit.verify()

    record, verdict = with_audit(tmp_path, job)
    assert record.seq == 4
    assert (verdict.kind, verdict.seq) == ("edited", 2)


# -- the CLI ---------------------------------------------------------------------------------


def cli(tmp_path: Path, *args: str) -> Any:
    runner = CliRunner(env=engine_env(tmp_path))
    return runner.invoke(audit_group, [*args, "--data-dir", str(tmp_path)])


def test_cli_verify_head_and_export(tmp_path: Path) -> None:
    records = seed(tmp_path, 3)
    ok = cli(tmp_path, "verify")
    assert ok.exit_code == 0, ok.output
    assert ok.stdout == f"audit log intact: 3 records, head {records[-1].hash}\n"
    head = cli(tmp_path, "head")
    assert head.stdout == f"3 {records[-1].hash}\n"
    kept = cli(tmp_path, "verify", "--expect-head", *head.stdout.split())
    assert kept.exit_code == 0, kept.output

    exported = cli(tmp_path, "export")
    assert exported.exit_code == 0, exported.output
    lines = exported.stdout.splitlines()
    assert [record_from_dict(json.loads(line)) for line in lines] == records
    assert lines[0] == canonical(records[0].as_dict()).decode()
    assert "exported 3 records (1..3)" in exported.stderr
    later = cli(tmp_path, "export", "--since", "2")
    assert [json.loads(line)["seq"] for line in later.stdout.splitlines()] == [3]
    none = cli(tmp_path, "export", "--since", "3")
    assert (none.stdout, none.exit_code) == ("", 0)
    assert "exported 0 records" in none.stderr

    tamper(tmp_path, "UPDATE audit_log SET tenant='other' WHERE seq=2")
    bad = cli(tmp_path, "verify")
    assert bad.exit_code == 1
    assert bad.stdout == "audit log damaged: content of record 2 does not match its hash\n"


def test_cli_refuses_a_malformed_expected_head(tmp_path: Path) -> None:
    seed(tmp_path, 1)
    result = cli(tmp_path, "verify", "--expect-head", "1", "not-a-hash")
    assert result.exit_code == 2
    assert "64 lowercase hex digits" in result.output


def test_cli_exports_a_log_longer_than_one_page(tmp_path: Path) -> None:
    async def job(audit: Audit) -> None:
        await asyncio.gather(*(audit.append(entry(n % 100)) for n in range(2500)))

    with_audit(tmp_path, job)
    result = cli(tmp_path, "export", "--since", "1")
    seqs = [json.loads(line)["seq"] for line in result.stdout.splitlines()]
    assert seqs == list(range(2, 2501))
    assert "exported 2499 records (2..2500)" in result.stderr


def test_the_policy_in_force_is_recorded_once_per_change(tmp_path: Path) -> None:
    def policy_records(**overrides: Any) -> list[Record]:
        with make_client(tmp_path, auth="on", **overrides) as client:
            assert client.portal is not None
            found: list[Record] = client.portal.call(client.app.audit.records)  # type: ignore[attr-defined]
        return [r for r in found if r.action == "policy.change"]

    first = policy_records()
    assert len(first) == 1
    assert first[0].actor == "system"
    assert first[0].detail["auth"] == "on"
    assert first[0].detail["public_tenants"] == [""]
    assert "WaterObserved" in first[0].detail["public_types"]
    assert len(policy_records()) == 1  # a restart with the same settings changes nothing
    changed = policy_records(public_types="WaterObserved")
    assert len(changed) == 2
    assert changed[-1].detail["public_types"] == ["WaterObserved"]
