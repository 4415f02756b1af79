"""Publishing snapshots: atomic writes, untouched unchanged files, coalesced fresh rebuilds."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cityos.broker.model import DEFAULT_VOCAB
from cityos.portal.publisher import MANIFEST, Publisher, write_files
from cityos.storage.base import Mutation
from cityos.storage.sqlite import SqliteStorage

GAUGE = "urn:ngsi-ld:WaterObserved:sano-akiyama-ohashi"
PAGE = ("<p>秋山川 大橋 2.31 m</p>" * 100).encode()


def test_files_are_written_with_gz_siblings_when_that_saves_space(tmp_path: Path) -> None:
    report = write_files(tmp_path, {"index.html": PAGE, "a.json": b"{}", "map.png": bytes(500)})
    assert {w.path: w.changed for w in report} == {
        "index.html": True,
        "a.json": True,
        "map.png": True,
    }
    assert (tmp_path / "index.html").read_bytes() == PAGE
    assert gzip.decompress((tmp_path / "index.html.gz").read_bytes()) == PAGE
    assert not (tmp_path / "a.json.gz").exists()  # two bytes: gzip would only add
    assert not (tmp_path / "map.png.gz").exists()  # not a compressible type
    assert oct((tmp_path / "index.html").stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_unchanged_files_are_left_alone(tmp_path: Path) -> None:
    write_files(tmp_path, {"index.html": PAGE, "alerts.json": b"[]"})
    before = {n: (tmp_path / n).stat() for n in ("index.html", "index.html.gz", "alerts.json")}
    time.sleep(0.01)
    report = write_files(tmp_path, {"index.html": PAGE, "alerts.json": b'[{"level": 4}]'})
    assert {w.path: w.changed for w in report} == {"index.html": False, "alerts.json": True}
    for name in ("index.html", "index.html.gz"):
        after = (tmp_path / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before[name].st_ino, before[name].st_mtime_ns)
    assert (tmp_path / "alerts.json").stat().st_ino != before["alerts.json"].st_ino


def test_files_a_build_no_longer_makes_are_removed(tmp_path: Path) -> None:
    (tmp_path / "robots.txt").write_bytes(b"User-agent: *\n")  # the operator's, not ours
    write_files(tmp_path, {"index.html": PAGE, "shelters/old.html": PAGE})
    write_files(tmp_path, {"index.html": PAGE})
    assert not (tmp_path / "shelters" / "old.html").exists()
    assert not (tmp_path / "shelters" / "old.html.gz").exists()
    assert (tmp_path / "robots.txt").exists()
    assert (tmp_path / MANIFEST).exists()


@pytest.mark.parametrize("name", ["../escape.html", ".hidden", "a//b.html", "/abs.html", ""])
def test_names_that_cannot_be_served_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="not servable"):
        write_files(tmp_path / "public", {"index.html": PAGE, name: b"x"})
    assert not (tmp_path / "public").exists()


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    versions = [b"a" * 2_000_000, b"b" * 3_000_000]
    write_files(tmp_path, {"big.json": versions[0]})
    seen: set[int] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            data = (tmp_path / "big.json").read_bytes()
            assert data in versions, len(data)
            seen.add(len(data))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(20):
            write_files(tmp_path, {"big.json": versions[(i + 1) % 2]})
    finally:
        done.set()
        reader.join()
    assert seen == {2_000_000, 3_000_000}
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "big.json", "big.json.gz"]


# -- the publisher on a real store -----------------------------------------------------------


def gauge(level: float, type_: str = "WaterObserved", entity_id: str = GAUGE) -> Mutation:
    doc = {
        "id": entity_id,
        "type": [DEFAULT_VOCAB + type_],
        "createdAt": "2026-11-25T10:00:00Z",
        "modifiedAt": "2026-11-25T10:00:00Z",
        "attrs": {DEFAULT_VOCAB + "waterLevel": [{"type": "Property", "value": level}]},
    }
    return Mutation(entity_id, lambda _cur: doc)


class LevelSite:
    """A tiny site builder: one JSON file with the gauge's level, read from the store."""

    def __init__(self, store: SqliteStorage, fail_first: int = 0) -> None:
        self.store = store
        self.calls = 0
        self.fail_first = fail_first

    async def __call__(self, *, surge: bool) -> dict[str, bytes]:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise RuntimeError("template error")
        doc = await self.store.get("", GAUGE)
        level = doc["attrs"][DEFAULT_VOCAB + "waterLevel"][0]["value"] if doc else None
        return {"level.json": f'{{"level": {level}, "surge": {str(surge).lower()}}}'.encode()}


def run_with_publisher(
    tmp_path: Path,
    body: Callable[[SqliteStorage, Publisher, LevelSite], Awaitable[None]],
    *,
    interval: float = 1.0,
    fail_first: int = 0,
) -> None:
    async def main() -> None:
        store = SqliteStorage(tmp_path / "cityos.db")
        await store.start()
        site = LevelSite(store, fail_first)
        publisher = Publisher(
            tmp_path / "public",
            site,
            interval=interval,
            barrier=lambda: store.write(lambda _conn: None),
            max_retry=0.2,
        )
        store.add_change_hook(lambda _conn, change: publisher.note(change))
        await publisher.start()
        try:
            await body(store, publisher, site)
        finally:
            await publisher.stop()
            await store.close()

    asyncio.run(main())


def _content(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


async def published(path: Path, want: bytes, within: float) -> float:
    """Wait until path holds want; return how long that took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if _content(path) == want:
            return time.monotonic() - t0
        await asyncio.sleep(0.005)
    got = _content(path)
    raise AssertionError(f"{path} did not become {want!r} within {within} s (holds {got!r})")


def test_a_change_is_published_within_a_second(tmp_path: Path) -> None:
    async def body(store: SqliteStorage, publisher: Publisher, site: LevelSite) -> None:
        out = tmp_path / "public" / "level.json"
        await published(out, b'{"level": None, "surge": false}', 2)  # the first build at start
        await asyncio.sleep(1.0)  # idle, as between two readings
        await store.apply("", [gauge(2.31)])
        took = await published(out, b'{"level": 2.31, "surge": false}', 2)
        assert took < 0.5  # an isolated change does not wait for the coalescing interval
        # right after a build, the next change waits for the interval, and no longer
        await store.apply("", [gauge(2.4)])
        took = await published(out, b'{"level": 2.4, "surge": false}', 3)
        assert 0.5 < took < 1.5

    run_with_publisher(tmp_path, body)


def test_a_burst_of_changes_is_coalesced(tmp_path: Path) -> None:
    async def body(store: SqliteStorage, publisher: Publisher, site: LevelSite) -> None:
        out = tmp_path / "public" / "level.json"
        await published(out, b'{"level": None, "surge": false}', 2)
        before = site.calls
        t0 = time.monotonic()
        for i in range(100):
            await store.apply("", [gauge(float(i))])
        burst = time.monotonic() - t0
        await published(out, b'{"level": 99.0, "surge": false}', 2.5)
        # one build per started interval of the burst, plus the one publishing the end
        assert site.calls - before <= int(burst) + 3, (site.calls - before, burst)

    run_with_publisher(tmp_path, body)


def test_only_the_portal_types_of_the_default_tenant_trigger_builds(tmp_path: Path) -> None:
    async def body(store: SqliteStorage, publisher: Publisher, site: LevelSite) -> None:
        await published(tmp_path / "public" / "level.json", b'{"level": None, "surge": false}', 2)
        calls = site.calls
        await store.apply("", [gauge(1.0, "Building", "urn:ngsi-ld:Building:1")])
        await store.apply("other", [gauge(1.0)])
        await asyncio.sleep(0.3)
        assert site.calls == calls
        await store.apply("", [gauge(1.0, "Alert", "urn:ngsi-ld:Alert:flood-1")])
        await asyncio.sleep(0.3)
        assert site.calls == calls + 1

    run_with_publisher(tmp_path, body, interval=0.05)


def test_a_failing_build_is_logged_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(store: SqliteStorage, publisher: Publisher, site: LevelSite) -> None:
        await published(tmp_path / "public" / "level.json", b'{"level": None, "surge": false}', 3)
        for _ in range(100):  # the file is on disk a moment before the build counts as done
            if publisher.builds:
                break
            await asyncio.sleep(0.01)
        assert (site.calls, publisher.builds) == (3, 1)
        assert publisher.last_error is None

    run_with_publisher(tmp_path, body, interval=0.05, fail_first=2)
    assert caplog.text.count("portal build failed; retrying") == 2
    assert "template error" in caplog.text


def test_publish_now_skips_the_interval_and_builds_with_the_surge_switch(tmp_path: Path) -> None:
    async def body(store: SqliteStorage, publisher: Publisher, site: LevelSite) -> None:
        await published(tmp_path / "public" / "level.json", b'{"level": None, "surge": false}', 2)
        publisher.surge = True
        t0 = time.monotonic()
        written = await publisher.publish_now()
        assert time.monotonic() - t0 < 0.5
        assert [(w.path, w.changed) for w in written] == [("level.json", True)]
        out = (tmp_path / "public" / "level.json").read_bytes()
        assert out == b'{"level": None, "surge": true}'

    run_with_publisher(tmp_path, body, interval=60)


def test_publish_now_reports_a_failed_build(tmp_path: Path) -> None:
    async def body(store: SqliteStorage, publisher: Publisher, site: LevelSite) -> None:
        with pytest.raises(RuntimeError, match="template error"):
            await publisher.publish_now()
        assert publisher.last_error is not None

    run_with_publisher(tmp_path, body, interval=60, fail_first=5)
