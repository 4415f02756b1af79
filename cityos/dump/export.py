"""Write a whole installation into one dump file, from read snapshots (the server may run)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from pathlib import Path

from cityos.dump.format import DumpError, DumpWriter
from cityos.dump.installation import FILE, MAIN_DUMPERS, SEQUENCE, Installation
from cityos.dump.pg_export import export_postgres
from cityos.dump.pg_installation import PgInstallation
from cityos.dump.records import Progress, Tally, file_pieces, file_record, writer_put
from cityos.storage.sqlite import dump_sequences, open_snapshot
from cityos.storage.sqlite_datastore import DatastoreStore


def export_installation(
    inst: Installation | PgInstallation, out: Path, progress: Progress = lambda n, section: None
) -> Counter[str]:
    """Dump every section of inst into out; return how many records each section got."""
    if isinstance(inst, PgInstallation):
        return asyncio.run(export_postgres(inst, out, progress))
    if not inst.db.exists():
        raise DumpError(f"no installation at {inst.db}; check --data-dir")
    tally = Tally(progress)
    # Both snapshots are taken before anything is read, back to back: each database is
    # exactly as of one moment, and the two moments are apart by microseconds.
    main = open_snapshot(inst.db)
    datastore = open_snapshot(inst.datastore) if inst.datastore.exists() else None
    try:
        with DumpWriter(out) as writer:
            put = writer_put(writer, tally)
            for dump in MAIN_DUMPERS:
                for section, row in dump(main):
                    put(section, row)
            for row in dump_sequences(main):
                put(SEQUENCE, row)
            if datastore is not None:
                for section, row in DatastoreStore.dump_rows(datastore):
                    put(section, row)
            for piece in file_pieces(inst.files):
                put(FILE, file_record(*piece))
    except (sqlite3.Error, OSError) as exc:
        raise DumpError(f"export failed: {exc}") from None
    finally:
        main.close()
        if datastore is not None:
            datastore.close()
    return tally.counts
