"""Write a PostgreSQL installation into a dump file, from one read snapshot (the server may run).

The records are those a SQLite installation dumps, section for section and row for row, so
the file loads into either engine.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import asyncpg

from cityos.dump.format import DumpError, DumpWriter
from cityos.dump.installation import FILE, SEQUENCE
from cityos.dump.pg_installation import DATASTORE, MAIN_DUMPERS, PgInstallation
from cityos.dump.records import Progress, Tally, file_pieces, file_record, writer_put
from cityos.storage import pg_dump_entities


async def export_postgres(inst: PgInstallation, out: Path, progress: Progress) -> Counter[str]:
    """Dump every section of the PostgreSQL installation into out; return records per section."""
    tally = Tally(progress)
    try:
        conn = await asyncpg.connect(inst.url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise DumpError(f"cannot reach {inst.label}: {exc}") from None
    try:
        await inst.check_schema(conn)
        # one snapshot for everything: the dump is the database as of one moment
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            with DumpWriter(out) as writer:
                put = writer_put(writer, tally)
                for dump in MAIN_DUMPERS:
                    async for section, row in dump(conn):
                        put(section, row)
                async for row in pg_dump_entities.dump_sequences(conn):
                    put(SEQUENCE, row)
                async for section, row in DATASTORE.dump(conn):
                    put(section, row)
                for piece in file_pieces(inst.files):
                    put(FILE, file_record(*piece))
    except asyncpg.PostgresError as exc:
        raise DumpError(f"export failed: {exc}") from None
    finally:
        await conn.close()
    return tally.counts
