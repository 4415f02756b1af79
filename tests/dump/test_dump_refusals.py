"""What `cityos import-dump` refuses, and that a refused or failed import changes nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from dump_helpers import cli, create_bins, make_client, sensor
from dump_helpers import raw_lines as lines
from dump_helpers import write_lines as write

E = "/ngsi-ld/v1/entities"


@pytest.fixture(scope="module")
def dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a dump of the Sano demo installation."""
    root = tmp_path_factory.mktemp("dump")
    assert cli("demo", "--no-serve", "--data-dir", str(root / "src")).exit_code == 0
    out = root / "sano.jsonl.gz"
    assert cli("export", str(out), "--data-dir", str(root / "src")).exit_code == 0
    return out


def assert_untouched(target: Path) -> None:
    """The target holds no database, no files and nothing an import left half-done."""
    assert [p for p in target.rglob("*") if p.is_file()] == []


def imported(source: Path, target: Path) -> Any:
    return cli("import-dump", str(source), "--data-dir", str(target))


def test_a_non_empty_installation_is_refused_and_kept(dump: Path) -> None:
    target = dump.parent / "src"
    before = hashlib.sha256((target / "cityos.db").read_bytes()).hexdigest()
    result = imported(dump, target)
    assert result.exit_code == 1
    assert "not empty" in result.output
    assert hashlib.sha256((target / "cityos.db").read_bytes()).hexdigest() == before
    assert not list(target.glob("*.importing*"))


def test_an_initialised_but_empty_installation_is_filled(dump: Path, tmp_path: Path) -> None:
    assert cli("audit", "head", "--data-dir", str(tmp_path)).exit_code == 0  # makes the tables
    assert (tmp_path / "cityos.db").exists()
    assert imported(dump, tmp_path).exit_code == 0
    with make_client(tmp_path) as c:
        assert c.get(E, params={"type": "WaterObserved"}).json()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda rows: rows[: len(rows) // 2], "cut off"),
        (lambda rows: [*rows[:5], b"{not json", *rows[6:]], "damaged at line 6"),
        (lambda rows: [*rows[:5], *rows[6:]], "trailer counts"),
        (lambda rows: [*rows, rows[3]], "after its trailer"),
    ],
    ids=["truncated", "garbled-line", "lost-line", "after-trailer"],
)
def test_a_damaged_dump_imports_nothing(
    dump: Path, tmp_path: Path, damage: Any, message: str
) -> None:
    bad = write(tmp_path / "bad.jsonl.gz", damage(lines(dump)))
    target = tmp_path / "target"
    result = imported(bad, target)
    assert result.exit_code == 1
    assert message in result.output
    assert_untouched(target)


def test_a_cut_off_gzip_stream_imports_nothing(dump: Path, tmp_path: Path) -> None:
    data = dump.read_bytes()
    bad = tmp_path / "cut.jsonl.gz"
    bad.write_bytes(data[: len(data) * 2 // 3])
    result = imported(bad, tmp_path / "target")
    assert result.exit_code == 1
    assert "cut off" in result.output
    assert_untouched(tmp_path / "target")


def test_a_dump_failing_at_its_end_leaves_nothing(dump: Path, tmp_path: Path) -> None:
    rows = lines(dump)
    strange = orjson.dumps({"section": "from-the-future", "record": {}})
    trailer = orjson.dumps({"section": "end", "record": {"records": len(rows) - 1}})
    bad = write(tmp_path / "bad.jsonl.gz", [*rows[:-1], strange, trailer])
    result = imported(bad, tmp_path / "target")
    assert result.exit_code == 1
    assert "from-the-future" in result.output
    assert_untouched(tmp_path / "target")


def test_a_newer_format_is_refused(dump: Path, tmp_path: Path) -> None:
    rows = lines(dump)
    header = {**orjson.loads(rows[0]), "version": 2}
    newer = write(tmp_path / "newer.jsonl.gz", [orjson.dumps(header), *rows[1:]])
    result = imported(newer, tmp_path / "target")
    assert result.exit_code == 1
    assert "format 2" in result.output
    assert "Upgrade cityos" in result.output
    assert_untouched(tmp_path / "target")


def test_a_file_that_is_no_dump_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "notes.txt"
    plain.write_text("hello\n")
    other = write(tmp_path / "other.jsonl.gz", [b'{"format": "something-else"}'])
    for path in (plain, other):
        result = imported(path, tmp_path / "target")
        assert result.exit_code == 1
        assert "not a cityos dump" in result.output
    assert_untouched(tmp_path / "target")


def test_a_dump_naming_a_file_outside_the_folder_is_refused(dump: Path, tmp_path: Path) -> None:
    rows = lines(dump)
    evil = orjson.dumps({"section": "file", "record": {"path": "../x", "offset": 0, "data": ""}})
    trailer = orjson.dumps({"section": "end", "record": {"records": len(rows) - 1}})
    bad = write(tmp_path / "evil.jsonl.gz", [*rows[:-1], evil, trailer])
    result = imported(bad, tmp_path / "target")
    assert result.exit_code == 1
    assert "outside the files folder" in result.output
    assert not (tmp_path / "x").exists()
    assert_untouched(tmp_path / "target")


def test_export_without_an_installation_says_so(tmp_path: Path) -> None:
    result = cli("export", str(tmp_path / "d.jsonl.gz"), "--data-dir", str(tmp_path / "none"))
    assert result.exit_code == 1
    assert "no installation" in result.output
    assert not list(tmp_path.glob("d.jsonl.gz*"))


def test_export_while_the_server_runs_sees_committed_writes(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "live.jsonl.gz"
    with make_client(data) as c:
        for n in range(1, 4):
            assert c.post(E, json=sensor(n)).status_code == 201
        result = cli("export", str(out), "--data-dir", str(data))
        assert result.exit_code == 0, result.output
        assert c.post(E, json=sensor(9)).status_code == 201  # the server still writes
    entities = [r for r in lines(out) if orjson.loads(r).get("section") == "entity"]
    assert len(entities) == 3


def test_many_entities_stream_with_progress(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "many.jsonl.gz"
    with make_client(data) as c:
        create_bins(c, 12_000, 1000)
    exported = cli("export", str(out), "--data-dir", str(data))
    assert "exported 25000 records" in exported.output
    result = imported(out, tmp_path / "copy")
    assert result.exit_code == 0, result.output
    assert "imported 25000 records" in result.output
    with make_client(tmp_path / "copy") as c:
        r = c.get(E, params={"type": "Bin", "q": "fill>11990", "count": "true"})
        assert r.headers["NGSILD-Results-Count"] == "9"
