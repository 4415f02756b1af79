"""Write a whole installation into one dump file, from read snapshots (the server may run)."""

from __future__ import annotations

import base64
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from cityos.dump.format import DumpError, DumpWriter
from cityos.dump.installation import FILE, MAIN_DUMPERS, SEQUENCE, Installation
from cityos.storage.sqlite import dump_sequences, open_snapshot
from cityos.storage.sqlite_datastore import DatastoreStore

#: uploaded files travel in pieces of this size, so no line holds a whole large file
FILE_CHUNK: Final = 1024 * 1024
#: report progress every this many records
PROGRESS_EVERY: Final = 25_000

Progress = Callable[[int, str], None]


def export_installation(
    inst: Installation, out: Path, progress: Progress = lambda n, section: None
) -> Counter[str]:
    """Dump every section of inst into out; return how many records each section got."""
    if not inst.db.exists():
        raise DumpError(f"no installation at {inst.db}; check --data-dir")
    counts: Counter[str] = Counter()
    # Both snapshots are taken before anything is read, back to back: each database is
    # exactly as of one moment, and the two moments are apart by microseconds.
    main = open_snapshot(inst.db)
    datastore = open_snapshot(inst.datastore) if inst.datastore.exists() else None
    try:
        with DumpWriter(out) as writer:

            def put(section: str, record: dict[str, object]) -> None:
                writer.write(section, record)
                counts[section] += 1
                if writer.count % PROGRESS_EVERY == 0:
                    progress(writer.count, section)

            for dump in MAIN_DUMPERS:
                for section, row in dump(main):
                    put(section, row)
            for row in dump_sequences(main):
                put(SEQUENCE, row)
            if datastore is not None:
                for section, row in DatastoreStore.dump_rows(datastore):
                    put(section, row)
            for rel, offset, data in _file_pieces(inst.files):
                put(FILE, {"path": rel, "offset": offset, "data": base64.b64encode(data).decode()})
    except (sqlite3.Error, OSError) as exc:
        raise DumpError(f"export failed: {exc}") from None
    finally:
        main.close()
        if datastore is not None:
            datastore.close()
    return counts


def _file_pieces(root: Path) -> Iterator[tuple[str, int, bytes]]:
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
