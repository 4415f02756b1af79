"""`cityos export` and `cityos import-dump` between SQLite and PostgreSQL, through the real CLI.

One file format for both engines: a dump of either loads into either, and a round trip through
the other engine gives back the same dump, record for record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from conftest import pg_rows, pg_schema_url
from dump_helpers import (
    CITY2,
    PASSWORD,
    E,
    build,
    cli,
    create_bins,
    dump_lines,
    files,
    free_port,
    make_client,
    observe,
    raw_lines,
    sections,
    write_lines,
)

from cityos.auth.users import Accounts
from cityos.dump import installation, pg_installation
from cityos.storage.pg_auth import PgAuthStore
from cityos.storage.pg_users import PgUserStore
from cityos.storage.postgres import PostgresStorage

SENSOR_1 = "urn:ngsi-ld:WaterLevelObserved:akiyama-1"
SENSOR_2 = "urn:ngsi-ld:WaterLevelObserved:akiyama-2"
#: every section an installation with something everywhere dumps
EVERY_SECTION = (
    "entity", "history_entity", "history_type", "history_instance", "subscription", "outbox",
    "iot_group", "iot_device", "key", "user", "audit", "audit_head", "live_dataset",
    "catalog_dataset", "catalog_group", "catalog_resource", "catalog_search", "datastore_table",
    "datastore_row", "file", "sequence", "tenant",
)  # fmt: skip


def export(data_dir: Path, out: Path, url: str | None = None) -> Path:
    result = cli("export", str(out), "--data-dir", str(data_dir), url=url)
    assert result.exit_code == 0, result.output
    return out


def load(dump: Path, data_dir: Path, url: str | None = None) -> str:
    result = cli("import-dump", str(dump), "--data-dir", str(data_dir), url=url)
    assert result.exit_code == 0, result.output
    return result.output


@dataclass
class Trip:
    """SQLite (source) -> PostgreSQL (pg) -> SQLite (back), and the dump of each."""

    source: Path
    pg_dir: Path
    pg: str
    back: Path
    first: Path
    second: Path
    third: Path
    key: str
    import_out: str
    #: `cityos audit head` of the source, and of PostgreSQL right after the import
    heads: tuple[str, str]


@pytest.fixture(scope="module")
def trip(tmp_path_factory: pytest.TempPathFactory, pg_database: str) -> Trip:
    root = tmp_path_factory.mktemp("engines")
    src, pg_dir, back = root / "src", root / "pg", root / "back"
    key = build(src)
    first = export(src, root / "first.jsonl.gz")
    pg = pg_schema_url(pg_database)  # an empty schema: the import makes the tables
    import_out = load(first, pg_dir, pg)
    heads = (
        cli("audit", "head", "--data-dir", str(src)).output,
        cli("audit", "head", "--data-dir", str(pg_dir), url=pg).output,
    )
    second = export(pg_dir, root / "second.jsonl.gz", pg)
    load(second, back)
    third = export(back, root / "third.jsonl.gz")
    return Trip(src, pg_dir, pg, back, first, second, third, key, import_out, heads)


def test_sqlite_to_postgresql_to_sqlite_gives_the_same_dump(trip: Trip) -> None:
    found = sections(trip.first)
    for section in EVERY_SECTION:
        assert found.get(section), section
    assert "into postgresql://" in trip.import_out
    assert dump_lines(trip.second) == dump_lines(trip.first)  # PostgreSQL dumps as SQLite does
    assert dump_lines(trip.third) == dump_lines(trip.first)


def test_postgresql_serves_the_imported_installation(trip: Trip) -> None:
    before, after = observe(trip.source), observe(trip.pg_dir, trip.pg)
    assert len(after["sensors"]) == 2
    assert len(after["city2"]) == 1
    assert [i["value"] for i in after["history"]["waterLevel"]] == [1.5, 2.9]
    assert after == before
    assert files(trip.pg_dir) == files(trip.source) != {}
    with make_client(trip.pg_dir, trip.pg) as c:
        got = c.get(f"{E}/{SENSOR_1}")
        assert got.status_code == 200
        assert got.json()["waterLevel"]["value"] == 2.9
        near = c.get(
            E,
            params={
                "type": "WaterLevelObserved",
                "georel": "near;maxDistance==200",
                "geometry": "Point",
                "coordinates": "[139.5802,36.3144]",
            },
        )
        assert near.status_code == 200, near.text
        assert [e["id"] for e in near.json()] == [SENSOR_2, SENSOR_1]


def test_the_key_and_the_staff_account_work_on_postgresql(trip: Trip) -> None:
    with make_client(trip.pg_dir, trip.pg, auth="on") as c:
        assert c.get(E, params={"type": "Shelter"}, headers={"X-API-Key": trip.key}).is_success
        wrong = c.get(E, params={"type": "Shelter"}, headers={"X-API-Key": trip.key + "x"})
        assert wrong.status_code == 401

    async def sign_ins() -> tuple[bool, bool]:
        store = PostgresStorage(trip.pg, pool_size=1)
        await store.start()
        try:
            accounts = Accounts(PgUserStore(store))
            good = await accounts.sign_in("hanako", PASSWORD)
            bad = await accounts.sign_in("hanako", PASSWORD + "!")
            assert await PgAuthStore(store).find(trip.key) is not None
            return good.ok, bad.ok
        finally:
            await store.close()

    assert asyncio.run(sign_ins()) == (True, False)


def test_the_audit_chain_verifies_on_postgresql_with_the_same_head(trip: Trip) -> None:
    source_head, pg_head = trip.heads
    assert pg_head == source_head
    seq, digest = source_head.split()[:2]
    verdict = cli(
        "audit", "verify", "--expect-head", seq, digest, "--data-dir", str(trip.pg_dir),
        url=trip.pg,
    )  # fmt: skip
    assert verdict.exit_code == 0, verdict.output


def test_postgresql_to_sqlite_to_postgresql_gives_the_same_dump(
    tmp_path: Path, pg_database: str
) -> None:
    pg_src, pg_dst = pg_schema_url(pg_database), pg_schema_url(pg_database)
    key = build(tmp_path / "src", pg_src)
    first = export(tmp_path / "src", tmp_path / "first.jsonl.gz", pg_src)
    load(first, tmp_path / "lite")
    second = export(tmp_path / "lite", tmp_path / "second.jsonl.gz")
    load(second, tmp_path / "dst", pg_dst)
    third = export(tmp_path / "dst", tmp_path / "third.jsonl.gz", pg_dst)
    for section in EVERY_SECTION:
        assert sections(first).get(section), section
    assert key.encode() not in b"\n".join(dump_lines(first))
    assert dump_lines(second) == dump_lines(first)
    assert dump_lines(third) == dump_lines(first)
    seen = observe(tmp_path / "dst", pg_dst)
    assert seen == observe(tmp_path / "src", pg_src)
    assert seen == observe(tmp_path / "lite")
    with make_client(tmp_path / "dst", pg_dst) as c:
        # writes after the load get new keys: nothing collides with a loaded row
        patch = {"waterLevel": {"type": "Property", "value": 3.1}}
        assert c.patch(f"{E}/{SENSOR_1}/attrs", json=patch).status_code == 204
        bin_ = {"id": "urn:ngsi-ld:Bin:1", "type": "Bin", "fill": {"type": "Property", "value": 7}}
        assert c.post(E, json=bin_, headers=CITY2).status_code == 201
        got = c.get("/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:Bin:1", headers=CITY2)
        assert got.json()["fill"][0]["value"] == 7
        history = c.get(f"/ngsi-ld/v1/temporal/entities/{SENSOR_1}").json()["waterLevel"]
        assert [i["value"] for i in history] == [1.5, 2.9, 3.1]
        assert len({i["instanceId"] for i in history}) == 3


# -- refusals: a PostgreSQL target is filled completely or not at all -------------------------


def _before_trailer(rows: list[bytes], extra: bytes) -> list[bytes]:
    trailer = orjson.dumps({"section": "end", "record": {"records": len(rows) - 1}})
    return [*rows[:-1], extra, trailer]


def _duplicate_entity(rows: list[bytes]) -> list[bytes]:
    entity = next(r for r in rows if orjson.loads(r).get("section") == "entity")
    return _before_trailer(rows, entity)


def _unknown_section(rows: list[bytes]) -> list[bytes]:
    return _before_trailer(rows, orjson.dumps({"section": "from-the-future", "record": {}}))


def assert_empty(data_dir: Path, url: str) -> None:
    """The installation holds no record and no uploaded file, and nothing half-imported."""
    out = data_dir.parent / f"{data_dir.name}-check.jsonl.gz"
    export(data_dir, out, url)
    assert sections(out) == {"audit_head": 1, "end": 1}
    assert not list(data_dir.rglob("*.importing"))
    assert not [p for p in data_dir.rglob("*") if p.is_file()]


def test_a_non_empty_postgresql_is_refused_and_kept(trip: Trip, tmp_path: Path) -> None:
    before = export(trip.pg_dir, tmp_path / "before.jsonl.gz", trip.pg)
    result = cli("import-dump", str(trip.first), "--data-dir", str(trip.pg_dir), url=trip.pg)
    assert result.exit_code == 1
    assert "not empty" in result.output
    assert "postgresql://" in result.output
    after = export(trip.pg_dir, tmp_path / "after.jsonl.gz", trip.pg)
    assert dump_lines(after) == dump_lines(before)
    assert not list(trip.pg_dir.rglob("*.importing"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda rows: rows[: len(rows) * 3 // 4], "cut off"),
        (_unknown_section, "from-the-future"),
        (_duplicate_entity, "nothing was imported"),
    ],
    ids=["truncated", "unknown-section-at-the-end", "duplicate-entity-at-the-end"],
)
def test_a_damaged_dump_leaves_postgresql_empty(
    trip: Trip,
    tmp_path: Path,
    pg_database: str,
    damage: Callable[[list[bytes]], list[bytes]],
    message: str,
) -> None:
    bad = write_lines(tmp_path / "bad.jsonl.gz", damage(raw_lines(trip.first)))
    url, target = pg_schema_url(pg_database), tmp_path / "target"
    result = cli("import-dump", str(bad), "--data-dir", str(target), url=url)
    assert result.exit_code == 1
    assert message in result.output
    assert_empty(target, url)
    # the failed import left nothing in the way of a good one
    load(trip.first, target, url)
    assert dump_lines(export(target, tmp_path / "good.jsonl.gz", url)) == dump_lines(trip.first)


def test_export_of_a_database_without_cityos_says_so(tmp_path: Path, pg_database: str) -> None:
    url = pg_schema_url(pg_database)
    result = cli("export", str(tmp_path / "d.jsonl.gz"), "--data-dir", str(tmp_path), url=url)
    assert result.exit_code == 1
    assert "no cityos installation" in result.output
    assert not list(tmp_path.glob("d.jsonl.gz*"))


def test_many_records_load_into_postgresql_in_batches(tmp_path: Path, pg_database: str) -> None:
    src, out = tmp_path / "src", tmp_path / "many.jsonl.gz"
    with make_client(src) as c:
        create_bins(c, 2500, 500)
    exported = cli("export", str(out), "--data-dir", str(src))
    total = int(exported.output.split("exported ")[1].split()[0])
    assert total > 3 * 1000  # entities and their history: several batches of each
    url = pg_schema_url(pg_database)
    assert f"imported {total} records" in load(out, tmp_path / "pg", url)
    # the import leaves statistics behind: PostgreSQL plans for 2,500 entities, not for none
    planned = pg_rows(url, "SELECT reltuples FROM pg_class WHERE oid = 'entities'::regclass")
    assert planned == [(2500,)]
    with make_client(tmp_path / "pg", url) as c:
        r = c.get(E, params={"type": "Bin", "q": "fill>2489", "count": "true"})
        assert r.headers["NGSILD-Results-Count"] == "10"
        r = c.get("/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:Bin:2499")
        assert r.json()["fill"][0]["value"] == 2499


def test_an_unreachable_postgresql_is_said_plainly(trip: Trip, tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    for args in (("export", str(tmp_path / "d.jsonl.gz")), ("import-dump", str(trip.first))):
        result = cli(*args, "--data-dir", str(tmp_path / "data"), url=url)
        assert result.exit_code == 1
        assert "cannot reach postgresql://127.0.0.1" in result.output
        assert "Traceback" not in result.output
    assert not list(tmp_path.rglob("*.jsonl.gz*"))
    assert not (tmp_path / "data").exists()


def test_every_sqlite_section_has_a_postgresql_loader() -> None:
    lite = set(installation.table_loaders()) | installation.DATASTORE_SECTIONS
    pg = set(pg_installation.table_loaders())
    assert pg == lite
    assert not pg & installation.ENTITY_SECTIONS  # loaded by pg_dump_entities, with indexes
