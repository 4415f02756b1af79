"""The catalog's facet index in memory: one bitset per facet value.

A bitset is a Python int whose bit r is set when the dataset of rowid r holds the value; a
search's matched set is one such int too, so a facet count is `(matched & value).bit_count()`
and the number of matches `matched.bit_count()`: microseconds each, where SQL joined tens of
thousands of tag and format rows per search. An index mirrors one catalog generation (the
trigger-bumped counter of sqlite_catalog.py) and is rebuilt from SQL when the counter moves.

Bitsets go to the most frequent values first, within a memory budget; the rarer rest (the
"tail", e.g. tags used by a dataset or two in a large catalog) is kept per dataset and counted
by walking the matched rows, and only when a facet's first `limit` values are not settled by
the bitsets already.
"""

from __future__ import annotations

import heapq
import itertools
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from cityos.catalog.search import All, And, Clause, Equals, Or

#: what the bitsets of one index may take; a value's bitset is (its highest rowid / 8) bytes
FACET_MEMORY: Final = 32 * 1024 * 1024
#: SQL filters whose matches an index keeps (a bitset each, e.g. 1.25 kB at 10,000 datasets)
FILTERS_KEPT: Final = 256
#: the facet fields of package_search, with how to read (value, rowid) pairs in value order
_JOIN_SOURCES: Final = {
    "tags": "SELECT tag, ds FROM catalog_dataset_tags WHERE tag != '' ORDER BY tag, ds",
    "groups": "SELECT grp, ds FROM catalog_dataset_groups WHERE grp != '' ORDER BY grp, ds",
    # a dataset may hold two resources of one format: it counts once
    "res_format": "SELECT DISTINCT format, ds FROM catalog_resources WHERE format != '' "
    "ORDER BY format, ds",
}
_COLUMN_FIELDS: Final = ("organization", "license_id", "type", "state", "private")
#: fields whose `field:value` filters read the bitsets (res_format ignores case: SQL answers)
_EXACT_FILTERS: Final = frozenset({"tags", "groups", "organization", "license_id", "type", "state"})


def bits_of(rowids: Sequence[int]) -> int:
    """Return the bitset of these rowids."""
    if not rowids:
        return 0
    buf = bytearray((max(rowids) >> 3) + 1)
    for r in rowids:
        buf[r >> 3] |= 1 << (r & 7)
    return int.from_bytes(buf, "little")


def rowids_of(bits: int) -> list[int]:
    """Return the rowids of a bitset, ascending."""
    out: list[int] = []
    for i, byte in enumerate(bits.to_bytes((bits.bit_length() + 7) // 8, "little")):
        if byte:
            base = i << 3
            out.extend(base + j for j in range(8) if byte >> j & 1)
    return out


def _rank(item: tuple[str, int]) -> tuple[int, str]:
    """Facet order: most datasets first, then by value."""
    return -item[1], item[0]


@dataclass(slots=True)
class _Field:
    """One facet field: values with a bitset, most frequent first, and the tail."""

    names: list[str] = field(default_factory=list)
    bits: list[int] = field(default_factory=list)
    #: datasets holding each value, in every state (an upper bound of any count)
    freq: list[int] = field(default_factory=list)
    #: value -> its index in names
    position: dict[str, int] = field(default_factory=dict)
    #: rowid -> its values that have no bitset
    tail: dict[int, list[str]] = field(default_factory=dict)
    #: the largest frequency of a tail value (0: no tail)
    tail_freq: int = 0

    def top(self, matched: int, limit: int, mincount: int) -> list[tuple[str, int]]:
        """Return the values held in `matched` (count >= mincount) in facet order, cut at limit.

        Values are counted most frequent first; counting stops once no value left could
        enter the first `limit` (its frequency bounds its count).
        """
        found: list[tuple[str, int]] = []
        check = 32
        tail = self.tail_freq >= mincount
        for i, (name, bits, freq) in enumerate(zip(self.names, self.bits, self.freq, strict=True)):
            if freq < mincount:
                tail = False  # the tail is rarer still
                break
            if i == check:
                check *= 2
                if _settled(found, limit, freq):
                    tail = False
                    break
            n = (matched & bits).bit_count()
            if n >= mincount:
                found.append((name, n))
        if tail and not _settled(found, limit, self.tail_freq):
            counts: Counter[str] = Counter()
            for r in rowids_of(matched):
                values = self.tail.get(r)
                if values is not None:
                    counts.update(values)
            found += [(v, n) for v, n in counts.items() if n >= mincount]
        found.sort(key=_rank)
        return found if limit < 0 else found[:limit]


def _settled(found: list[tuple[str, int]], limit: int, bound: int) -> bool:
    """Whether no value counted at most `bound` can enter the first `limit` of found."""
    if limit < 0:
        return False
    if limit == 0:
        return True
    if len(found) < limit:
        return False
    last = heapq.nsmallest(limit, found, key=_rank)[-1]
    # a value of equal count could still come first by its name
    return last[1] > bound


@dataclass(slots=True)
class FacetIndex:
    """Bitsets of the facet values and of the datasets' states at one catalog generation."""

    generation: int
    states: dict[str, int]
    private: int
    #: every dataset
    everything: int
    fields: dict[str, _Field]
    #: bytes held by the bitsets
    size: int
    #: seconds the build took
    build_s: float
    #: recent SQL filters' matches (e.g. a word's datasets): SQL statement -> bitset
    _filters: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def filter_bits(self, key: str, run: Callable[[], int]) -> int:
        """Return the bitset of an SQL filter, from the recent ones or run(), kept."""
        with self._lock:
            bits = self._filters.get(key)
        if bits is None:
            bits = run()
            with self._lock:
                if len(self._filters) >= FILTERS_KEPT:
                    del self._filters[next(iter(self._filters))]
                self._filters[key] = bits
        return bits

    @classmethod
    def build(
        cls, conn: sqlite3.Connection, generation: int, memory: int = FACET_MEMORY
    ) -> FacetIndex:
        """Read the catalog's facet values from SQL (conn's snapshot, at `generation`)."""
        t0 = time.perf_counter()
        pairs: dict[str, dict[str, list[int]]] = {name: {} for name in _COLUMN_FIELDS}
        org, lic, typ, _, priv = (pairs[name] for name in _COLUMN_FIELDS)
        state: dict[str, list[int]] = {}
        private_rows: list[int] = []
        for r, o, li, ty, st, pr in conn.execute(
            "SELECT rowid, org_name, license_id, type, state, private FROM catalog_datasets"
        ):
            if o:
                org.setdefault(str(o), []).append(r)
            if li:
                lic.setdefault(str(li), []).append(r)
            if ty:
                typ.setdefault(str(ty), []).append(r)
            state.setdefault(str(st), []).append(r)
            if pr:
                private_rows.append(r)
        all_rows = [r for rows in state.values() for r in rows]
        pairs["state"] = {value: rows for value, rows in state.items() if value}
        priv_set = set(private_rows)
        if private_rows:
            priv["true"] = private_rows
        public_rows = [r for r in all_rows if r not in priv_set]
        if public_rows:
            priv["false"] = public_rows
        for name, sql in _JOIN_SOURCES.items():
            pairs[name] = {
                str(value): [r for _, r in group]
                for value, group in itertools.groupby(conn.execute(sql), key=lambda p: p[0])
            }
        # bitsets go to the most frequent values of all fields until the budget is spent, so
        # in each field no value of the tail is more frequent than one with a bitset
        ranked = sorted(
            (-len(rows), name, value)
            for name, values in pairs.items()
            for value, rows in values.items()
        )
        fields = {name: _Field() for name in pairs}
        size = 0
        full = False
        for neg, name, value in ranked:
            rows = pairs[name][value]
            freq = -neg
            need = (max(rows) >> 3) + 1
            f = fields[name]
            full = full or size + need > memory
            if not full:
                size += need
                f.position[value] = len(f.names)
                f.names.append(value)
                f.bits.append(bits_of(rows))
                f.freq.append(freq)
            else:
                f.tail_freq = max(f.tail_freq, freq)
                for r in rows:
                    f.tail.setdefault(r, []).append(value)
        return cls(
            generation=generation,
            states={value: bits_of(rows) for value, rows in state.items()},
            private=bits_of(private_rows),
            everything=bits_of(all_rows),
            fields=fields,
            size=size,
            build_s=time.perf_counter() - t0,
        )

    def visible(self, states: Iterable[str], include_private: bool) -> int:
        """Return the bitset of the datasets in these states (public ones only, unless asked)."""
        bits = 0
        for s in states:
            bits |= self.states.get(s, 0)
        return bits if include_private else bits & ~self.private

    def matches(self, clause: Clause, sql: Callable[[Clause], int]) -> int:
        """Return the bitset of the datasets a clause matches, in any state.

        Exact values of facet fields, AND and OR of them are bitset operations; the rest
        (words, prefixes, ranges, NOT, values of a tail) is `sql(clause)`, one statement
        for all such terms of an AND.
        """
        if isinstance(clause, All):
            return self.everything
        if isinstance(clause, Equals) and _exact(clause):
            if clause.field == "private":
                return self.private if clause.value == "true" else self.everything & ~self.private
            f = self.fields[clause.field]
            if clause.value in f.position:
                return f.bits[f.position[clause.value]]
            if not f.tail:
                return 0  # no dataset holds it
        if isinstance(clause, And):
            rest = [c for c in clause.clauses if not _exact(c)]
            bits = self.everything
            if rest:
                bits = sql(rest[0] if len(rest) == 1 else And(tuple(rest)))
            for c in clause.clauses:
                if _exact(c):
                    bits &= self.matches(c, sql)
            return bits
        if isinstance(clause, Or) and _exact(clause):
            bits = 0
            for c in clause.clauses:
                bits |= self.matches(c, sql)
            return bits
        return sql(clause)

    def facets(
        self, matched: int, names: Iterable[str], limit: int, mincount: int
    ) -> dict[str, list[tuple[str, int]]]:
        """Return each facet's values held in `matched`, as package_search orders and cuts them."""
        mincount = max(mincount, 1)  # a value none of the matches holds is never listed
        return {name: self.fields[name].top(matched, limit, mincount) for name in names}


def _exact(clause: Clause) -> bool:
    """Whether bitsets answer a clause (exact values of facet fields, AND and OR of them)."""
    if isinstance(clause, Equals):
        if clause.field == "private":
            return clause.value in ("true", "false")
        return clause.field in _EXACT_FILTERS and clause.value != "" and clause.value[-1] != "*"
    if isinstance(clause, And | Or):
        return all(_exact(c) for c in clause.clauses)
    return False


class FacetIndexHolder:
    """The index of the newest catalog generation, shared by the reader threads."""

    def __init__(self, memory: int = FACET_MEMORY) -> None:
        self.memory = memory
        self._lock = threading.Lock()
        self._index: FacetIndex | None = None
        self._seen = -1

    @property
    def current(self) -> FacetIndex | None:
        """Return the last index built, if any."""
        return self._index

    def get(self, conn: sqlite3.Connection, generation: int) -> FacetIndex | None:
        """Return the index of `generation` (conn's snapshot), building it if worth it.

        None tells the caller to count with SQL: a reader on an older snapshot than the
        index, and the first search after a write (writes in a burst, each followed by one
        search, would otherwise rebuild the index every time; a second search builds it).
        """
        index = self._index
        if index is not None and index.generation == generation:
            return index
        with self._lock:
            index = self._index
            if index is not None and index.generation >= generation:
                return index if index.generation == generation else None
            if self._seen != generation:
                self._seen = generation
                return None
            index = FacetIndex.build(conn, generation, self.memory)
            self._index = index
            return index
