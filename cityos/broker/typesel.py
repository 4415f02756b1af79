"""The entity type selection language of the ``type`` parameter (GS CIM 009 clause 4.17).

``A,B`` and ``A|B`` select entities of type A or B; ``A;B`` entities that have both types;
parentheses group, and ``;`` binds tighter than ``,``/``|``. Names are terms or full IRIs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NoReturn

from cityos.broker.errors import BadRequestData

MAX_LENGTH: Final = 8192
MAX_DEPTH: Final = 32

_NAME = re.compile(r"[^\s,;|()\"'\\<>\[\]{}^`\x00-\x1f\x7f]+")


@dataclass(frozen=True, slots=True)
class TypeName:
    name: str


@dataclass(frozen=True, slots=True)
class TypeAnd:
    """The entity has every one of these types."""

    items: tuple[TypeExpr, ...]


@dataclass(frozen=True, slots=True)
class TypeOr:
    """The entity has at least one of these types."""

    items: tuple[TypeExpr, ...]


TypeExpr = TypeName | TypeAnd | TypeOr


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def fail(self, message: str) -> NoReturn:
        raise BadRequestData(f"Invalid type: {message} at position {self.i}")

    def unexpected(self) -> NoReturn:
        if self.i >= len(self.s):
            self.fail("unexpected end")
        self.fail(f"unexpected {self.s[self.i]!r}")

    def skip_ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t":
            self.i += 1

    def take(self, token: str) -> bool:
        self.skip_ws()
        if self.s.startswith(token, self.i):
            self.i += len(token)
            return True
        return False

    def disjunction(self, depth: int) -> TypeExpr:
        items = [self.conjunction(depth)]
        while self.take(",") or self.take("|"):
            items.append(self.conjunction(depth))
        flat: list[TypeExpr] = []
        for x in items:
            flat.extend(x.items if isinstance(x, TypeOr) else (x,))
        return flat[0] if len(flat) == 1 else TypeOr(tuple(flat))

    def conjunction(self, depth: int) -> TypeExpr:
        items = [self.primary(depth)]
        while self.take(";"):
            items.append(self.primary(depth))
        flat: list[TypeExpr] = []
        for x in items:
            flat.extend(x.items if isinstance(x, TypeAnd) else (x,))
        return flat[0] if len(flat) == 1 else TypeAnd(tuple(flat))

    def primary(self, depth: int) -> TypeExpr:
        if self.take("("):
            if depth >= MAX_DEPTH:
                self.fail(f"parentheses nest deeper than {MAX_DEPTH}")
            inner = self.disjunction(depth + 1)
            if not self.take(")"):
                self.unexpected()
            return inner
        self.skip_ws()
        m = _NAME.match(self.s, self.i)
        if m is None:
            if self.i >= len(self.s):
                self.fail("expected a type name, found the end")
            self.fail(f"expected a type name, found {self.s[self.i]!r}")
        self.i = m.end()
        return TypeName(m.group())


def parse_type_selection(text: str) -> TypeExpr:
    """Parse the value of a ``type`` parameter."""
    if len(text) > MAX_LENGTH:
        raise BadRequestData(f"Invalid type: longer than {MAX_LENGTH} characters")
    p = _Parser(text)
    expr = p.disjunction(0)
    p.skip_ws()
    if p.i < len(p.s):
        p.unexpected()
    return expr


def map_type_names(expr: TypeExpr, fn: Callable[[str], str]) -> TypeExpr:
    """Return the selection with every type name passed through fn (e.g. @context expansion)."""
    if isinstance(expr, TypeName):
        return TypeName(fn(expr.name))
    items = tuple(map_type_names(x, fn) for x in expr.items)
    return TypeAnd(items) if isinstance(expr, TypeAnd) else TypeOr(items)


def type_names(expr: TypeExpr) -> set[str]:
    """Return every type name the selection mentions."""
    if isinstance(expr, TypeName):
        return {expr.name}
    out: set[str] = set()
    for x in expr.items:
        out |= type_names(x)
    return out


def unparse_type_selection(expr: TypeExpr) -> str:
    """Write a type selection as canonical text."""
    if isinstance(expr, TypeName):
        return expr.name
    if isinstance(expr, TypeAnd):
        return ";".join(
            f"({unparse_type_selection(x)})" if isinstance(x, TypeOr) else unparse_type_selection(x)
            for x in expr.items
        )
    return ",".join(unparse_type_selection(x) for x in expr.items)
