"""What every engine's export and import share: counting records, batches, uploaded files."""

from __future__ import annotations

import base64
import binascii
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Final

from cityos.dump.format import DumpError, DumpWriter

#: uploaded files travel in pieces of this size, so no line holds a whole large file
FILE_CHUNK: Final = 1024 * 1024
#: report progress every this many records
PROGRESS_EVERY: Final = 25_000
#: records per load: big enough to load fast, small enough to keep memory flat
BATCH: Final = 1000

Progress = Callable[[int, str], None]


class Tally:
    """Count records per section, reporting progress every PROGRESS_EVERY records."""

    def __init__(self, progress: Progress) -> None:
        self.counts: Counter[str] = Counter()
        self._progress = progress
        self._total = 0

    def add(self, section: str, n: int = 1) -> None:
        """Count n more records of section."""
        before = self._total
        self._total += n
        self.counts[section] += n
        if before // PROGRESS_EVERY != self._total // PROGRESS_EVERY:
            self._progress(self._total, section)


def writer_put(writer: DumpWriter, tally: Tally) -> Callable[[str, dict[str, Any]], None]:
    """Return put(section, record): write one record and count it."""

    def put(section: str, record: dict[str, Any]) -> None:
        writer.write(section, record)
        tally.add(section)

    return put


def file_pieces(root: Path) -> Iterator[tuple[str, int, bytes]]:
    """Yield (path relative to root, offset, bytes) for every file under root, in path order."""
    if not root.is_dir():
        return
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        with path.open("rb") as f:
            offset = 0
            # an empty file is still one (empty) piece, so it is restored too
            while (data := f.read(FILE_CHUNK)) or offset == 0:
                yield rel, offset, data
                offset += len(data)
                if not data:
                    break


def file_record(rel: str, offset: int, data: bytes) -> dict[str, Any]:
    """Return the record of one piece of an uploaded file."""
    return {"path": rel, "offset": offset, "data": base64.b64encode(data).decode()}


def batches(
    records: Iterator[tuple[str, dict[str, Any]]],
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Group consecutive records of one section, BATCH at most."""
    section, batch = "", list[dict[str, Any]]()
    for s, record in records:
        if batch and (s != section or len(batch) >= BATCH):
            yield section, batch
            batch = []
        section = s
        batch.append(record)
    if batch:
        yield section, batch


def _safe(rel: str) -> PurePosixPath:
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or ".." in path.parts:
        raise DumpError(f"the dump names a file outside the files folder: {rel!r}")
    return path


def write_pieces(root: Path, pieces: Sequence[dict[str, Any]]) -> None:
    """Append dumped pieces of uploaded files under root, checking they come in order."""
    for piece in pieces:
        path = root / _safe(str(piece["path"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        offset = int(piece["offset"])
        if offset != (path.stat().st_size if path.exists() else 0):
            raise DumpError(f"the dump's pieces of {piece['path']} are out of order")
        try:
            data = base64.b64decode(piece["data"], validate=True)
        except binascii.Error:
            raise DumpError(f"the dump's piece of {piece['path']} is not base64") from None
        with path.open("ab" if offset else "wb") as f:
            f.write(data)
