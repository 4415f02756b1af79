"""The NGSI-LD Query Language (GS CIM 009 clause 4.9) and scope queries (clause 4.19).

``parse_q`` turns the text of a ``q`` parameter into a typed, immutable AST that storage
engines compile to their own query language; ``unparse_q`` writes it back canonically.
Precedence: ``;`` (AND) binds tighter than ``|`` (OR); parentheses group. Every syntax error
raises ``BadRequestData`` naming the 0-based character position.

Attribute paths: ``attr``, ``attr.sub.subsub`` (sub-attributes, or the core members
``observedAt``, ``unitCode``, ``datasetId`` of an instance), and ``attr[k.m]`` or
``attr[k][m]`` (keys inside the attribute's JSON value). Values: numbers, quoted strings with
JSON escapes, ``true``/``false``, DateTime, Date, Time, and unquoted URIs or words (kept as
strings). ``==``/``!=`` also take value lists ``1,2,3`` and inclusive ranges ``1..5``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time
from functools import lru_cache
from typing import Final, NoReturn

from cityos.broker.errors import BadRequestData

MAX_LENGTH: Final = 8192
MAX_DEPTH: Final = 32
MAX_REGEX_LENGTH: Final = 512

#: members of an attribute instance that a path may address after the attribute name
CORE_PATH_MEMBERS: Final = frozenset({"observedAt", "unitCode", "datasetId"})

COMPARE_OPS: Final = ("==", "!=", ">=", "<=", ">", "<")


@dataclass(frozen=True, slots=True)
class DateTime:
    """An ISO 8601 DateTime literal, kept as written."""

    text: str


@dataclass(frozen=True, slots=True)
class Date:
    """An ISO 8601 date literal such as 2026-01-01."""

    text: str


@dataclass(frozen=True, slots=True)
class Time:
    """An ISO 8601 time literal such as 10:00:00Z."""

    text: str


Scalar = bool | int | float | str | DateTime | Date | Time


@dataclass(frozen=True, slots=True)
class Range:
    """An inclusive range ``low..high``."""

    low: Scalar
    high: Scalar


@dataclass(frozen=True, slots=True)
class ValueList:
    """A list ``a,b,c``: ``==`` matches any of them, ``!=`` none of them."""

    items: tuple[Scalar, ...]


Value = Scalar | Range | ValueList


@dataclass(frozen=True, slots=True)
class AttrPath:
    """An attribute, its sub-attribute path and an optional path into its JSON value."""

    names: tuple[str, ...]
    keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Compare:
    path: AttrPath
    op: str  # one of COMPARE_OPS
    value: Value


@dataclass(frozen=True, slots=True)
class Match:
    """``path~=pattern`` (or ``!~=`` when negated): a regular expression search."""

    path: AttrPath
    pattern: str
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Exists:
    """A bare path (the attribute exists) or ``!path`` (it does not)."""

    path: AttrPath
    negated: bool = False


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[QExpr, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[QExpr, ...]


QExpr = Compare | Match | Exists | And | Or


@dataclass(frozen=True, slots=True)
class ScopeTerm:
    """A scope pattern: segments, where ``+`` is one level and a final ``#`` any depth."""

    segments: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ScopeAnd:
    items: tuple[ScopeExpr, ...]


@dataclass(frozen=True, slots=True)
class ScopeOr:
    items: tuple[ScopeExpr, ...]


ScopeExpr = ScopeTerm | ScopeAnd | ScopeOr

# -- lexical rules ---------------------------------------------------------------------------
_NAME = re.compile(r"[^\s.\[\]=!<>~;|(),\"'\\\x00-\x1f\x7f]+")
_KEY = re.compile(r"[^\s.\[\]\"\\\x00-\x1f\x7f]+")
# An unquoted value never starts with an operator character, so `a>>1` is an error, not ">1".
_RAW = re.compile(r"(?![=<>!~])(?:[^\s;|(),\"'\\.\x00-\x1f\x7f]|\.(?!\.))+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?(?:Z|[+-]\d\d:?\d\d)?")
_DATE = re.compile(r"\d{4}-\d\d-\d\d")
_TIME = re.compile(r"\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?")
_SEGMENT = re.compile(r"[^\s/;|()#+\"\\\x00-\x1f\x7f]+")
_ESCAPES: Final = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
# A quantified group that itself contains a quantifier, e.g. (a+)+ or (\w*x)*: the shape of
# patterns whose backtracking explodes. Refusing it keeps a single request from pinning a core.
_NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)(?:[+*]|\{\d*,)")


@lru_cache(maxsize=8192)  # sensors send the same few timestamps over and over
def canonical_datetime(text: str) -> str | None:
    """Return an ISO DateTime as UTC with microseconds (sortable as text), or None if invalid."""
    body = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        dt = datetime.fromisoformat(body.replace(",", "."))
    except ValueError:
        return None
    if dt.tzinfo is not None:
        offset = dt.utcoffset()
        if offset:
            dt = dt - offset
        dt = dt.replace(tzinfo=None)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_regex(pattern: str, what: str = "q", pos: int = 0) -> None:
    """Refuse an invalid, oversized or catastrophically backtracking regular expression."""
    where = f" at position {pos}"
    if len(pattern) > MAX_REGEX_LENGTH:
        raise BadRequestData(
            f"Invalid {what}: regular expression longer than {MAX_REGEX_LENGTH}{where}"
        )
    if _NESTED_QUANTIFIER.search(pattern):
        raise BadRequestData(
            f"Invalid {what}: regular expression {pattern!r} nests quantifiers (e.g. (a+)+), "
            f"which may never finish{where}"
        )
    try:
        re.compile(pattern)
    except re.error as exc:
        raise BadRequestData(
            f"Invalid {what}: bad regular expression {pattern!r} ({exc.msg}){where}"
        ) from None
    except (RecursionError, OverflowError):
        raise BadRequestData(f"Invalid {what}: bad regular expression {pattern!r}{where}") from None


class _Parser:
    def __init__(self, text: str, what: str) -> None:
        if len(text) > MAX_LENGTH:
            raise BadRequestData(f"Invalid {what}: longer than {MAX_LENGTH} characters")
        self.s = text
        self.i = 0
        self.what = what

    # -- helpers --------------------------------------------------------------------------
    def fail(self, message: str, pos: int | None = None) -> NoReturn:
        raise BadRequestData(
            f"Invalid {self.what}: {message} at position {self.i if pos is None else pos}"
        )

    def unexpected(self) -> NoReturn:
        if self.i >= len(self.s):
            self.fail("unexpected end")
        self.fail(f"unexpected {self.s[self.i]!r}")

    def skip_ws(self) -> None:
        s, i = self.s, self.i
        while i < len(s) and s[i] in " \t":
            i += 1
        self.i = i

    def peek(self, token: str) -> bool:
        return self.s.startswith(token, self.i)

    def take(self, token: str) -> bool:
        if self.s.startswith(token, self.i):
            self.i += len(token)
            return True
        return False

    def finish(self) -> None:
        self.skip_ws()
        if self.i < len(self.s):
            self.unexpected()

    # -- boolean structure, shared by q and scopeQ --------------------------------------------
    def disjunction(self, depth: int, term: Callable[[], object]) -> list[list[object]]:
        """Parse ``and (| and)*`` as a list of AND groups; term parses one leaf."""
        groups = [self.conjunction(depth, term)]
        while True:
            self.skip_ws()
            if not self.take("|"):
                return groups
            groups.append(self.conjunction(depth, term))

    def conjunction(self, depth: int, term: Callable[[], object]) -> list[object]:
        items = [self.primary(depth, term)]
        while True:
            self.skip_ws()
            if not self.take(";"):
                return items
            items.append(self.primary(depth, term))

    def primary(self, depth: int, term: Callable[[], object]) -> object:
        self.skip_ws()
        if self.peek("("):
            if depth >= MAX_DEPTH:
                self.fail(f"parentheses nest deeper than {MAX_DEPTH}")
            self.i += 1
            inner = self.disjunction(depth + 1, term)
            self.skip_ws()
            if not self.take(")"):
                self.unexpected()
            return ("group", inner)
        return term()

    # -- q terms --------------------------------------------------------------------------
    def q_term(self) -> QExpr:
        if self.take("!"):
            return Exists(self.path(), negated=True)
        path = self.path()
        self.skip_ws()
        if self.take("~="):
            return Match(path, self.regex())
        if self.take("!~="):
            return Match(path, self.regex(), negated=True)
        for op in COMPARE_OPS:
            if self.take(op):
                return Compare(path, op, self.value(op))
        return Exists(path)

    def path(self) -> AttrPath:
        names = [self.name(_NAME, "an attribute name")]
        while self.take("."):
            names.append(self.name(_NAME, "an attribute name"))
        keys: list[str] = []
        while self.take("["):
            keys.append(self.name(_KEY, "a key"))
            while self.take("."):
                keys.append(self.name(_KEY, "a key"))
            if not self.take("]"):
                self.unexpected()
        return AttrPath(tuple(names), tuple(keys))

    def name(self, pattern: re.Pattern[str], what: str) -> str:
        m = pattern.match(self.s, self.i)
        if m is None:
            if self.i >= len(self.s):
                self.fail(f"expected {what}, found the end")
            self.fail(f"expected {what}, found {self.s[self.i]!r}")
        self.i = m.end()
        return m.group()

    def value(self, op: str) -> Value:
        self.skip_ws()
        start = self.i
        first = self.scalar()
        if self.peek(".."):
            self.i += 2
            high_start = self.i
            high = self.scalar()
            if op not in ("==", "!="):
                self.fail(f"a range needs == or !=, not {op}", start)
            if _kind(first) != _kind(high) or _kind(first) == "bool":
                self.fail("a range needs two values of one comparable kind", high_start)
            return Range(first, high)
        if self.peek(","):
            items = [first]
            while self.take(","):
                items.append(self.scalar())
            if op not in ("==", "!="):
                self.fail(f"a value list needs == or !=, not {op}", start)
            return ValueList(tuple(items))
        if op not in ("==", "!=") and isinstance(first, bool):
            self.fail(f"{op} cannot compare with a boolean", start)
        return first

    def scalar(self) -> Scalar:
        start = self.i
        if self.peek('"'):
            return self.quoted()
        m = _RAW.match(self.s, self.i)
        if m is None:
            if self.i >= len(self.s):
                self.fail("expected a value, found the end")
            self.fail(f"expected a value, found {self.s[self.i]!r}")
        self.i = m.end()
        return self.classify(m.group(), start)

    def classify(self, raw: str, start: int) -> Scalar:
        if raw == "true":
            return True
        if raw == "false":
            return False
        if _NUMBER.fullmatch(raw):
            if "." not in raw and "e" not in raw and "E" not in raw:
                n = int(raw)
                return n if -(2**63) <= n < 2**63 else float(n)
            f = float(raw)
            if math.isinf(f):
                self.fail(f"number {raw} is out of range", start)
            return f
        if _DATETIME.fullmatch(raw):
            if canonical_datetime(raw) is None:
                self.fail(f"{raw!r} is not a valid DateTime", start)
            return DateTime(raw)
        if _DATE.fullmatch(raw):
            try:
                date.fromisoformat(raw)
            except ValueError:
                self.fail(f"{raw!r} is not a valid date", start)
            return Date(raw)
        if _TIME.fullmatch(raw):
            body = raw[:-1] if raw.endswith("Z") else raw
            try:
                time.fromisoformat(body.replace(",", "."))
            except ValueError:
                self.fail(f"{raw!r} is not a valid time", start)
            return Time(raw)
        return raw

    def quoted(self) -> str:
        start = self.i
        s = self.s
        i = start + 1
        out: list[str] = []
        while True:
            j = i
            while j < len(s) and s[j] not in '"\\':
                j += 1
            out.append(s[i:j])
            if j >= len(s):
                self.fail("unterminated string", start)
            if s[j] == '"':
                self.i = j + 1
                return "".join(out)
            esc = s[j + 1 : j + 2]
            if esc == "u":
                code, i = self.unicode_escape(j)
                out.append(code)
            elif esc in _ESCAPES:
                out.append(_ESCAPES[esc])
                i = j + 2
            elif esc:
                # Unknown escapes stay as written so "\d+" means what a regex user expects.
                out.append("\\" + esc)
                i = j + 2
            else:
                self.fail("unterminated string", start)

    def unicode_escape(self, j: int) -> tuple[str, int]:
        hexa = self.s[j + 2 : j + 6]
        if not re.fullmatch(r"[0-9A-Fa-f]{4}", hexa):
            self.fail("bad \\u escape", j)
        code = int(hexa, 16)
        if 0xD800 <= code < 0xDC00:
            low = self.s[j + 6 : j + 12]
            if re.fullmatch(r"\\u[dD][c-fC-F][0-9A-Fa-f]{2}", low):
                pair = 0x10000 + ((code - 0xD800) << 10) + (int(low[2:], 16) - 0xDC00)
                return chr(pair), j + 12
            self.fail("lone surrogate in \\u escape", j)
        if 0xDC00 <= code < 0xE000:
            self.fail("lone surrogate in \\u escape", j)
        return chr(code), j + 6

    def regex(self) -> str:
        self.skip_ws()
        start = self.i
        pattern = self.quoted() if self.peek('"') else self.raw_regex()
        if not pattern:
            self.fail("expected a regular expression", start)
        check_regex(pattern, self.what, start)
        return pattern

    def raw_regex(self) -> str:
        """Read an unquoted pattern up to a top-level ; | ) or blank."""
        s, i, depth, in_class = self.s, self.i, 0, False
        while i < len(s):
            c = s[i]
            if c == "\\":
                i += 2
                continue
            if in_class:
                in_class = c != "]"
            elif c == "[":
                in_class = True
            elif c == "(":
                depth += 1
            elif c == ")":
                if depth == 0:
                    break
                depth -= 1
            elif depth == 0 and (c in ";|" or c.isspace()):
                break
            i += 1
        i = min(i, len(s))
        pattern = s[self.i : i]
        self.i = i
        return pattern

    # -- scope terms ----------------------------------------------------------------------
    def scope_term(self) -> ScopeTerm:
        if not self.take("/"):
            self.fail(
                "expected a scope starting with '/'"
                if self.i < len(self.s)
                else "expected a scope, found the end"
            )
        segments: list[str] = []
        if self.i >= len(self.s) or self.s[self.i] in ";|) \t":
            return ScopeTerm(())  # the root scope "/"
        while True:
            if self.take("#"):
                segments.append("#")
                if self.peek("/"):
                    self.fail("'#' must be the last scope segment")
                break
            if self.take("+"):
                segments.append("+")
            else:
                segments.append(self.name(_SEGMENT, "a scope segment"))
            if not self.take("/"):
                break
        return ScopeTerm(tuple(segments))


def _kind(value: Scalar) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _build_q(groups: list[list[object]]) -> QExpr:
    ors: list[QExpr] = []
    for group in groups:
        ands: list[QExpr] = []
        for item in group:
            node = _build_q(item[1]) if isinstance(item, tuple) else item
            assert isinstance(node, Compare | Match | Exists | And | Or)
            ands.extend(node.items if isinstance(node, And) else (node,))
        expr = ands[0] if len(ands) == 1 else And(tuple(ands))
        ors.extend(expr.items if isinstance(expr, Or) else (expr,))
    return ors[0] if len(ors) == 1 else Or(tuple(ors))


def _build_scope(groups: list[list[object]]) -> ScopeExpr:
    ors: list[ScopeExpr] = []
    for group in groups:
        ands: list[ScopeExpr] = []
        for item in group:
            node = _build_scope(item[1]) if isinstance(item, tuple) else item
            assert isinstance(node, ScopeTerm | ScopeAnd | ScopeOr)
            ands.extend(node.items if isinstance(node, ScopeAnd) else (node,))
        expr = ands[0] if len(ands) == 1 else ScopeAnd(tuple(ands))
        ors.extend(expr.items if isinstance(expr, ScopeOr) else (expr,))
    return ors[0] if len(ors) == 1 else ScopeOr(tuple(ors))


def parse_q(text: str) -> QExpr:
    """Parse an NGSI-LD q expression."""
    p = _Parser(text, "q")
    p.skip_ws()
    if p.i >= len(p.s):
        raise BadRequestData("Invalid q: empty query")
    groups = p.disjunction(0, p.q_term)
    p.finish()
    return _build_q(groups)


def parse_scope_q(text: str) -> ScopeExpr:
    """Parse an NGSI-LD scopeQ expression such as ``/Sano/Akiyama|/Sano/#``."""
    p = _Parser(text, "scopeQ")
    p.skip_ws()
    if p.i >= len(p.s):
        raise BadRequestData("Invalid scopeQ: empty query")
    groups = p.disjunction(0, p.scope_term)
    p.finish()
    return _build_scope(groups)


# -- writing ---------------------------------------------------------------------------------
def quote(text: str) -> str:
    """Return text as a q quoted string literal."""
    out = ['"']
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c < " " or c == "\x7f":
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _scalar_text(v: Scalar) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return quote(v)
    return v.text


def _value_text(v: Value) -> str:
    if isinstance(v, Range):
        return f"{_scalar_text(v.low)}..{_scalar_text(v.high)}"
    if isinstance(v, ValueList):
        return ",".join(_scalar_text(x) for x in v.items)
    return _scalar_text(v)


def path_text(path: AttrPath) -> str:
    """Return the q text of an attribute path."""
    return ".".join(path.names) + "".join(f"[{k}]" for k in path.keys)


def unparse_q(expr: QExpr) -> str:
    """Write a q AST as canonical text that parses back to the same AST."""
    if isinstance(expr, Exists):
        return ("!" if expr.negated else "") + path_text(expr.path)
    if isinstance(expr, Match):
        op = "!~=" if expr.negated else "~="
        return f"{path_text(expr.path)}{op}{quote(expr.pattern)}"
    if isinstance(expr, Compare):
        return f"{path_text(expr.path)}{expr.op}{_value_text(expr.value)}"
    if isinstance(expr, And):
        return ";".join(
            f"({unparse_q(x)})" if isinstance(x, Or) else unparse_q(x) for x in expr.items
        )
    return "|".join(unparse_q(x) for x in expr.items)


def unparse_scope_q(expr: ScopeExpr) -> str:
    """Write a scopeQ AST as canonical text."""
    if isinstance(expr, ScopeTerm):
        return "/" + "/".join(expr.segments)
    if isinstance(expr, ScopeAnd):
        return ";".join(
            f"({unparse_scope_q(x)})" if isinstance(x, ScopeOr) else unparse_scope_q(x)
            for x in expr.items
        )
    return "|".join(unparse_scope_q(x) for x in expr.items)
