"""Publish the portal's static snapshots into a folder whenever the data they show changes.

The storage writer calls `Publisher.hook` inside each transaction; it only notes that a
portal entity changed and wakes the event loop. The loop then rebuilds at most once per
`interval` seconds, and writes only the files whose bytes differ, each atomically (a temp
file in the same folder, then rename), so readers and nginx never see half a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import orjson

from cityos.broker.model import DEFAULT_VOCAB, Doc
from cityos.portal.static import COMPRESSIBLE, clean_path
from cityos.storage.base import Change

log = logging.getLogger("cityos.portal")

#: the entity types the pages show (expanded with the default vocabulary)
PORTAL_TYPES: Final = frozenset(
    DEFAULT_VOCAB + name
    for name in ("WaterObserved", "WeatherObserved", "EvacuationShelter", "Alert")
)
#: the list of what the last publish wrote, so files a later build drops are removed
MANIFEST: Final = ".published.json"


class Builder(Protocol):
    """Build every file of the site: relative path -> bytes."""

    def __call__(self, *, surge: bool) -> Awaitable[dict[str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class Written:
    """What publishing did to one file."""

    path: str
    size: int
    gz_size: int | None  # size of the .gz sibling, None when there is none
    changed: bool


def write_files(root: Path, files: Mapping[str, bytes]) -> list[Written]:
    """Write files into root atomically, leave unchanged ones untouched, drop removed ones."""
    for name in files:
        if not name or clean_path(name) != name:
            raise ValueError(f"the site builder returned a file name not servable: {name!r}")
    root.mkdir(parents=True, exist_ok=True)
    # assets before the pages that link them, so a new page never points at a missing file
    order = sorted(files, key=lambda n: (n.endswith(".html"), n))
    report = [_write_one(root, name, files[name]) for name in order]
    previous = _read_manifest(root)
    for gone in sorted(previous - set(files)):
        if clean_path(gone) == gone:
            for stale in (root / gone, root / (gone + ".gz")):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
    if previous != set(files):
        atomic_write(root / MANIFEST, orjson.dumps(sorted(files)))
    return report


def _write_one(root: Path, name: str, data: bytes) -> Written:
    target = root / name
    gz_target = root / (name + ".gz")
    changed = _differs(target, data)
    gz_size: int | None = None
    if os.path.splitext(name)[1] in COMPRESSIBLE:
        if changed or not gz_target.exists():
            packed = gzip.compress(data, compresslevel=9, mtime=0)  # mtime=0: same bytes each time
            if len(packed) < len(data):
                # the sibling first: a new file never sits next to an older .gz for long
                atomic_write(gz_target, packed)
                gz_size = len(packed)
            else:
                with contextlib.suppress(FileNotFoundError):
                    gz_target.unlink()
        else:
            gz_size = gz_target.stat().st_size
    if changed:
        atomic_write(target, data)
    return Written(name, len(data), gz_size, changed)


def _differs(target: Path, data: bytes) -> bool:
    try:
        if target.stat().st_size != len(data):
            return True
        return target.read_bytes() != data
    except FileNotFoundError:
        return True


def _read_manifest(root: Path) -> set[str]:
    try:
        names = orjson.loads((root / MANIFEST).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return set()
    return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()


def atomic_write(target: Path, data: bytes) -> None:
    """Replace target with data in one rename; readers see the old or the new file, whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # a dotfile in the same folder: never served, and os.replace stays on one file system
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; nginx usually runs as another user
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _shows(doc: Doc | None) -> bool:
    return doc is not None and not PORTAL_TYPES.isdisjoint(doc.get("type", ()))


class Publisher:
    """Rebuild the site into root after portal data changes, at most once per interval."""

    def __init__(
        self,
        root: Path,
        builder: Builder,
        *,
        tenant: str = "",
        interval: float = 1.0,
        barrier: Callable[[], Awaitable[object]] | None = None,
        max_retry: float = 30.0,
        on_publish: Callable[[], None] | None = None,
        leader: Callable[[], bool] = lambda: True,
        relay: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.root = root
        self.surge = False
        self.builds = 0  # finished builds, for tests and logs
        self.last_error: Exception | None = None
        self._builder = builder
        self._tenant = tenant
        self._interval = interval
        # awaited before each build: lets the transaction that called the hook commit first
        self._barrier = barrier
        self._max_retry = max_retry
        self._on_publish = on_publish  # called after files changed (the server's file cache)
        # several workers: the leader builds; the others relay that a build is due
        self._leader = leader
        self._relay = relay
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        self._dirty = False  # set on the writer thread, cleared on the loop
        self._waiters: list[asyncio.Future[list[Written]]] = []
        self._task: asyncio.Task[None] | None = None
        self._last = -float("inf")

    def note(self, change: Change) -> None:
        """Note a change (a storage change listener: may run on the writer thread, never blocks)."""
        if change.tenant == self._tenant and (_shows(change.new) or _shows(change.old)):
            self.poke()

    def poke(self) -> None:
        """Ask for a rebuild; safe from any thread."""
        loop = self._loop
        if loop is None or self._dirty:
            return
        self._dirty = True
        with contextlib.suppress(RuntimeError):  # the loop is closing: nothing to publish to
            loop.call_soon_threadsafe(self._wake.set)

    async def start(self) -> None:
        """Start publishing, beginning with a full build.

        The leader's first build is done before this returns, so a server that says it is
        ready serves snapshots of the data it has, not ones left by an earlier run.
        """
        # events of this loop: an app may be started again in another one (tests do)
        self._wake, self._hurry = asyncio.Event(), asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self._leader():
            try:
                await self._build()
                self.builds += 1
                self._last = time.monotonic()
            except Exception:  # the loop below retries
                log.exception("portal build failed; retrying at once (the first build)")
                self._wake.set()
        else:
            self._wake.set()  # tells the leader
        self._task = asyncio.create_task(self._run(), name="cityos-portal-publisher")

    async def stop(self) -> None:
        """Stop publishing (a file being written is finished; files are replaced whole)."""
        self._loop = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for fut in self._waiters:
            fut.cancel()
        self._waiters = []

    async def publish_now(self) -> list[Written]:
        """Rebuild right away (not waiting for the interval) and return what was written."""
        if self._task is None:
            raise RuntimeError("the publisher is not running")
        fut: asyncio.Future[list[Written]] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._hurry.set()
        self._wake.set()
        return await fut

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            delay = self._last + self._interval - time.monotonic()
            if delay > 0 and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), delay)
            self._wake.clear()
            self._hurry.clear()
            self._dirty = False
            if not self._leader() and self._relay is not None:
                self._last = time.monotonic()
                try:
                    await self._relay()
                except Exception:  # the leader rebuilds at the next change anyway
                    log.exception("portal: telling the leader to publish failed")
                continue
            waiters, self._waiters = self._waiters, []
            self._last = time.monotonic()
            try:
                written = await self._build()
            except Exception as exc:  # logged and retried: publishing goes on
                self.last_error = exc
                failures += 1
                retry = min(self._max_retry, self._interval * 2**failures)
                log.exception("portal build failed; retrying in %.0f s", retry)
                for fut in waiters:
                    if not fut.done():
                        fut.set_exception(exc)
                asyncio.get_running_loop().call_later(retry, self.poke)
                continue
            failures = 0
            self.last_error = None
            self.builds += 1
            for fut in waiters:
                if not fut.done():
                    fut.set_result(written)

    async def _build(self) -> list[Written]:
        began = time.monotonic()
        if self._barrier is not None:
            await self._barrier()
        files = await self._builder(surge=self.surge)
        written = await asyncio.to_thread(write_files, self.root, files)
        n = sum(w.changed for w in written)
        if n and self._on_publish is not None:
            self._on_publish()
        if n:
            log.info(
                "portal: published %d changed files of %d into %s in %.0f ms",
                n,
                len(written),
                self.root,
                (time.monotonic() - began) * 1000,
            )
        return written
