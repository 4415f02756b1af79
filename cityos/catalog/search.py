"""package_search's parameters parsed into a typed query (a subset of Solr's syntax).

Supported: free words (all must match), "phrases", field:value, field:"quoted value",
field:prefix* and field:* on exact fields, -field:value (and NOT, +), *:*, AND / OR / NOT
between terms, parentheses, field:(a OR b), and ranges field:[a TO b] (or NOW) on
metadata_modified / metadata_created. Anything else raises
SearchQueryError (HTTP 400), never another exception.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Final

from cityos.catalog import text
from cityos.catalog.errors import SearchQueryError

#: fields matched as text (None: every text field)
TEXT_FIELDS: Final = {"text": None, "title": "title", "notes": "notes"}
#: fields matched exactly
EXACT_FIELDS: Final = frozenset(
    {
        "id",
        "name",
        "tags",
        "organization",
        "owner_org",
        "groups",
        "res_format",
        "license_id",
        "state",
        "type",
        "private",
        "author",
        "maintainer",
        "version",
    }
)
RANGE_FIELDS: Final = frozenset({"metadata_modified", "metadata_created"})
SORT_FIELDS: Final = frozenset(
    {
        "score",
        "name",
        "title",
        "title_string",
        "metadata_modified",
        "metadata_created",
        "num_resources",
        "num_tags",
    }
)
FACET_FIELDS: Final = frozenset(
    {"tags", "organization", "groups", "res_format", "license_id", "private", "type", "state"}
)
DEFAULT_SORT: Final = "score desc, metadata_modified desc"
MAX_DEPTH: Final = 32
MAX_QUERY: Final = 4096


@dataclass(frozen=True, slots=True)
class All:
    """Every dataset (*:*)."""


@dataclass(frozen=True, slots=True)
class Match:
    """Text containing the phrase of these tokens; column None means any text column."""

    column: str | None
    tokens: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Equals:
    """An exact field value ('*': the field has any value)."""

    field: str
    value: str


@dataclass(frozen=True, slots=True)
class Range:
    """lo <= field <= hi on an ISO timestamp field; None is open."""

    field: str
    lo: str | None
    hi: str | None


@dataclass(frozen=True, slots=True)
class Not:
    clause: Clause


@dataclass(frozen=True, slots=True)
class And:
    clauses: tuple[Clause, ...]


@dataclass(frozen=True, slots=True)
class Or:
    clauses: tuple[Clause, ...]


Clause = All | Match | Equals | Range | Not | And | Or


@dataclass(frozen=True, slots=True)
class SortKey:
    field: str
    desc: bool


_LEX: Final = re.compile(
    r"""
    (?P<ws>\s+)
    | (?P<lp>\()
    | (?P<rp>\))
    | (?P<phrase>"(?:[^"\\]|\\.)*")
    | (?P<range>[\[{][^\]}]*[\]}])
    | (?P<all>\*:\*)
    | (?P<sign>[-+!](?=[^\s]))
    | (?P<field>[A-Za-z_][\w.]*:)
    | (?P<op>&&|\|\|)
    | (?P<word>(?:[^\s()"\\\[\]{}]|\\.)+)
    """,
    re.VERBOSE,
)


def _lex(q: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(q):
        m = _LEX.match(q, pos)
        if m is None:
            raise SearchQueryError(f"cannot parse the query at character {pos + 1}: {q[pos:]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append((kind, m.group()))
    return out


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


class _Parser:
    def __init__(self, q: str) -> None:
        self.toks = _lex(q)
        self.i = 0
        self.depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def parse(self) -> Clause:
        if not self.toks:
            return All()
        clause = self.expr(None)
        if self.peek() is not None:
            raise SearchQueryError(f"unexpected {self.peek()[1]!r} in the query")  # type: ignore[index]
        return clause

    def expr(self, field: str | None) -> Clause:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise SearchQueryError("the query nests parentheses too deeply")
        ors = [self.and_expr(field)]
        while self._is_op("OR", "||"):
            self.take()
            ors.append(self.and_expr(field))
        self.depth -= 1
        return ors[0] if len(ors) == 1 else Or(tuple(ors))

    def _is_op(self, *names: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] in ("word", "op") and tok[1] in names

    def and_expr(self, field: str | None) -> Clause:
        ands = [self.unary(field)]
        while True:
            tok = self.peek()
            if tok is None or tok[0] == "rp" or self._is_op("OR", "||"):
                break
            if self._is_op("AND", "&&"):
                self.take()
            ands.append(self.unary(field))
        return ands[0] if len(ands) == 1 else And(tuple(ands))

    def unary(self, field: str | None) -> Clause:
        if self._is_op("NOT"):
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise SearchQueryError("the query nests NOT too deeply")
            inner = self.unary(field)
            self.depth -= 1
            return Not(inner)
        tok = self.peek()
        if tok is not None and tok[0] == "sign":
            self.take()
            inner = self.primary(field)
            return inner if tok[1] == "+" else Not(inner)
        return self.primary(field)

    def primary(self, field: str | None) -> Clause:
        tok = self.peek()
        if tok is None:
            raise SearchQueryError("the query ends where a term was expected")
        kind, value = self.take()
        if kind == "lp":
            inner = self.expr(field)
            if self.peek() is None or self.take()[0] != "rp":
                raise SearchQueryError("a parenthesis is not closed in the query")
            return inner
        if kind == "field":
            if field is not None:
                raise SearchQueryError(f"a field inside the field {field!r}")
            name = value[:-1]
            if name == "*":
                raise SearchQueryError("unknown field '*'")
            if self.peek() is None:
                raise SearchQueryError(f"the field {name!r} has no value")
            return self.primary(_check_field(name))
        if kind == "phrase":
            return _term(field, _unescape(value[1:-1]))
        if kind == "range":
            return _range(field, value)
        if kind == "all":
            return All()
        if kind in ("word", "op"):
            return _term(field, _unescape(value))
        if kind == "sign":
            raise SearchQueryError(f"a {value!r} with nothing after it")
        raise SearchQueryError(f"unexpected {value!r} in the query")


def _check_field(name: str) -> str:
    if name in TEXT_FIELDS or name in EXACT_FIELDS or name in RANGE_FIELDS:
        return name
    raise SearchQueryError(f"unknown field {name!r}; searchable fields: {_field_names()}")


def _field_names() -> str:
    return ", ".join(sorted({*TEXT_FIELDS, *EXACT_FIELDS, *RANGE_FIELDS}))


def _term(field: str | None, value: str) -> Clause:
    if field is None or field in TEXT_FIELDS:
        column = TEXT_FIELDS[field] if field is not None else None
        if value == "*":
            return All()
        toks = tuple(text.tokens(value))
        # punctuation alone (e.g. "・") matches everything, as an empty Solr clause would
        return Match(column, toks) if toks else All()
    if field in RANGE_FIELDS:
        if value == "*":
            return Range(field, None, None)
        return Range(field, _timestamp(value), _timestamp(value, upper=True))
    if field == "private":
        if value.lower() not in ("true", "false", "*"):
            raise SearchQueryError(f"private: must be true or false, not {value!r}")
        return Equals(field, value.lower())
    return Equals(field, value)


_DATE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z?)?$")


def _timestamp(value: str, *, upper: bool = False) -> str:
    """Return an ISO value comparable with stored timestamps (no Z, microseconds)."""
    if value.upper().startswith("NOW"):
        from datetime import UTC, datetime

        if value.upper() != "NOW":
            raise SearchQueryError(f"date math is not supported: {value!r}")
        return datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")
    if not _DATE.match(value):
        raise SearchQueryError(f"not an ISO date or timestamp: {value!r}")
    value = value.rstrip("Z")
    if "T" not in value:
        return value + ("T23:59:59.999999" if upper else "T00:00:00.000000")
    if "." not in value:
        value += ".999999" if upper else ".000000"
    return value.ljust(26, "0")


def _range(field: str | None, raw: str) -> Clause:
    if field not in RANGE_FIELDS:
        raise SearchQueryError(
            f"ranges work on {', '.join(sorted(RANGE_FIELDS))}, not {field or 'free text'}"
        )
    body = raw[1:-1].strip()
    parts = re.split(r"\s+TO\s+", body)
    if len(parts) != 2:
        raise SearchQueryError(f"a range needs the form [a TO b], not {raw!r}")
    lo, hi = (p.strip() for p in parts)
    return Range(
        field,
        None if lo == "*" else _timestamp(lo),
        None if hi == "*" else _timestamp(hi, upper=True),
    )


def parse_query(q: str | None, fq: list[str] | None = None) -> Clause:
    """Return the clause matching q AND every fq."""
    clauses: list[Clause] = []
    for part in [q or "", *(fq or [])]:
        if len(part) > MAX_QUERY:
            raise SearchQueryError(f"a query longer than {MAX_QUERY} characters")
        clause = _Parser(part).parse()
        if not isinstance(clause, All):
            clauses.append(clause)
    if not clauses:
        return All()
    return clauses[0] if len(clauses) == 1 else And(tuple(clauses))


def parse_sort(sort: str | None) -> list[SortKey]:
    """Parse 'field dir, field dir' (dir asc or desc)."""
    keys: list[SortKey] = []
    for part in (sort or DEFAULT_SORT).split(","):
        words = part.split()
        if not words:
            continue
        if len(words) > 2 or words[0] not in SORT_FIELDS:
            raise SearchQueryError(
                f"cannot sort on {part.strip()!r}; sortable: {', '.join(sorted(SORT_FIELDS))}"
            )
        direction = words[1].lower() if len(words) == 2 else "asc"
        if direction not in ("asc", "desc"):
            raise SearchQueryError(f"sort direction must be asc or desc, not {words[1]!r}")
        field = "title" if words[0] == "title_string" else words[0]
        keys.append(SortKey(field, direction == "desc"))
    return keys or parse_sort(DEFAULT_SORT)


def parse_facet_fields(raw: object) -> list[str]:
    """Parse facet.field: a JSON list of names (text from a query string) or a list."""
    if raw is None:
        return []
    value: object = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError:
            value = [raw]  # facet.field=tags, as some clients send it
        if isinstance(value, str):
            value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SearchQueryError("facet.field must be a JSON list of field names")
    for name in value:
        if name not in FACET_FIELDS:
            raise SearchQueryError(
                f"cannot facet on {name!r}; facet fields: {', '.join(sorted(FACET_FIELDS))}"
            )
    return list(dict.fromkeys(value))


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed package_search."""

    where: Clause
    sort: list[SortKey]
    rows: int
    start: int
    facet_fields: list[str]
    facet_limit: int  # < 0: unlimited
    facet_mincount: int
    include_private: bool
    include_drafts: bool
    include_deleted: bool
