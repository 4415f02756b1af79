"""Monthly partitions of the PostgreSQL history: created on demand and ahead, dropped by age.

``attr_history`` is partitioned by ``t_obs`` (observedAt, in µs) into calendar months (UTC),
one table ``attr_history_yYYYYmMM`` each. Locks keep three kinds of work apart:

- a writer takes ROW EXCLUSIVE on the parent before it checks that its months' partitions
  exist, so no partition it found can be dropped before it commits;
- creators take an advisory lock, then create a plain table and ATTACH it (SHARE UPDATE
  EXCLUSIVE on the parent: readers and writers carry on);
- retention drops a partition with ACCESS EXCLUSIVE on the parent, waiting for the writers
  and readers of the moment.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from cityos.broker.temporal import to_micros
from cityos.storage.pg_index import Conn

#: advisory lock key of partition creation ("cityhp" in ASCII)
CREATE_LOCK: Final = 0x636974796870
_NAME: Final = re.compile(r"attr_history_y(\d{4})m(\d{2})")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_DAY: Final = 86_400_000_000


@dataclass(frozen=True, slots=True)
class Month:
    """One calendar month (UTC) of the history: its partition and its [start, end) in µs."""

    year: int
    month: int

    @classmethod
    def of(cls, micros: int) -> Month:
        """Return the month an instant (µs since the epoch) falls in."""
        dt = _EPOCH + timedelta(microseconds=micros)
        return cls(dt.year, dt.month)

    @classmethod
    def from_name(cls, name: str) -> Month | None:
        """Return the month a partition's name stands for (None: not a partition's name)."""
        m = _NAME.fullmatch(name)
        return None if m is None else cls(int(m.group(1)), int(m.group(2)))

    @property
    def name(self) -> str:
        """Return the partition's table name."""
        return f"attr_history_y{self.year:04d}m{self.month:02d}"

    @property
    def start(self) -> int:
        """Return the first instant of the month (µs)."""
        return to_micros(f"{self.year:04d}-{self.month:02d}-01T00:00:00Z")

    @property
    def end(self) -> int:
        """Return the first instant of the next month (µs)."""
        # by the month's length: the month after December 9999 has no DateTime
        return self.start + calendar.monthrange(self.year, self.month)[1] * _DAY


async def ensure(conn: Conn, instants: Iterable[int]) -> list[str]:
    """Make sure the partitions of these instants exist (in conn's transaction); return those
    created. Until the transaction ends, no partition it found can be dropped."""
    months = {Month.of(t) for t in instants}
    await conn.execute("LOCK TABLE ONLY attr_history IN ROW EXCLUSIVE MODE")
    if not months:
        return []
    by_name = {m.name: m for m in months}
    missing = await conn.fetch(
        "SELECT n FROM unnest($1::text[]) n WHERE to_regclass(n) IS NULL", sorted(by_name)
    )
    if not missing:
        return []
    # creators one at a time; a partition may have appeared while we waited
    await conn.execute("SELECT pg_advisory_xact_lock($1)", CREATE_LOCK)
    created = []
    for (name,) in missing:
        if await conn.fetchval("SELECT to_regclass($1)", name) is not None:
            continue
        m = by_name[name]
        # a plain table then ATTACH: CREATE TABLE ... PARTITION OF would lock out readers
        await conn.execute(f"CREATE TABLE {name} (LIKE attr_history INCLUDING DEFAULTS)")
        await conn.execute(
            f"ALTER TABLE attr_history ATTACH PARTITION {name} "
            f"FOR VALUES FROM ({m.start}) TO ({m.end})"
        )
        created.append(name)
    return created


async def existing(conn: Conn) -> list[Month]:
    """Return the months that have a partition, oldest first."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'attr_history'::regclass"
    )
    months = [Month.from_name(r[0]) for r in rows]
    return sorted((m for m in months if m is not None), key=lambda m: (m.year, m.month))


async def drop_before(conn: Conn, before: int) -> int:
    """Drop every partition wholly before the instant; return how many rows they held."""
    total = 0
    for m in await existing(conn):
        if m.end > before:
            break
        async with conn.transaction():
            # counted under the lock that the drop takes anyway, so the count is exact
            await conn.execute("LOCK TABLE ONLY attr_history IN ACCESS EXCLUSIVE MODE")
            if await conn.fetchval("SELECT to_regclass($1)", m.name) is None:
                continue  # another worker dropped it
            total += int(await conn.fetchval(f"SELECT count(*) FROM {m.name}"))
            await conn.execute(f"DROP TABLE {m.name}")
    return total
