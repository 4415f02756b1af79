"""SQLite index of attribute values, and the compilers from q, scopeQ and type to SQL.

Every attribute instance of an entity contributes rows to ``attr_index``: one per value it
can be compared with (each element of an array, each string of a languageMap, ...), one for
its JSON object values (for ``attr[k.m]`` paths), and rows for its sub-attributes and its
``observedAt``/``unitCode``/``datasetId`` under a longer path. Paths are interned in
``attr_paths`` so index entries stay small.

A row's ``t`` tells how its value compares, so that ``level>5`` never matches a string value
(SQLite would otherwise order every text after every number):

    0 the instance exists but has no comparable value     3 boolean (v is 0 or 1)
    1 number                                              4 JSON object (text in j)
    2 string (also IRIs, vocab, language strings)         5 DateTime as canonical UTC text

DateTime strings are indexed twice, as written (kind 2, for string equality and regex) and
canonical (kind 5, for DateTime literals), so ``2026-01-01T09:00:00+09:00`` equals
``2026-01-01T00:00:00Z`` and ``...:00Z`` sorts with ``...:00.000000Z``.

The SQL produced by the compilers is a boolean expression over an ``entities`` row aliased
``e``, for the engine to AND into its WHERE clause.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any, Final

import orjson

from cityos.broker.model import CORE_MEMBERS, VALUE_MEMBER, Doc, Instance
from cityos.broker.qlang import (
    And,
    AttrPath,
    Compare,
    Date,
    DateTime,
    Exists,
    Match,
    Or,
    QExpr,
    Range,
    Scalar,
    ScopeAnd,
    ScopeExpr,
    ScopeOr,
    ScopeTerm,
    Time,
    ValueList,
    canonical_datetime,
)
from cityos.broker.typesel import TypeAnd, TypeExpr, TypeName

ATTR_INDEX_DDL: Final = """
CREATE TABLE IF NOT EXISTS attr_paths(pid INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS attr_index(
    rid INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    t INTEGER NOT NULL,
    v,
    j TEXT
);
CREATE INDEX IF NOT EXISTS attr_index_rid ON attr_index(rid, pid, t, v);
CREATE INDEX IF NOT EXISTS attr_index_value ON attr_index(pid, t, v, rid);
"""

#: joins the IRIs of a sub-attribute path; IRIs and attribute names never contain a space
PATH_SEP: Final = " "
#: instance members indexed under ``<attribute path> <member>``
INDEXED_MEMBERS: Final = ("observedAt", "unitCode", "datasetId")

MARKER, NUMBER, STRING, BOOLEAN, JSON, DATETIME = range(6)

Row = tuple[int, str, int, Any, str | None]

_LOOKS_DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")
# Literals that a VocabProperty may hold in expanded form (a term or a compact IRI).
_TERM = re.compile(r"[A-Za-z_][\w\-]*(?::[\w\-]+)?")
_PID = "(SELECT pid FROM attr_paths WHERE path=?)"
_SQL_OP: Final = {"==": "=", "!=": "=", ">": ">", ">=": ">=", "<": "<", "<=": "<="}


# -- writing the index -------------------------------------------------------------------------
def _scalar_rows(value: Any, out: list[tuple[int, Any, str | None]]) -> None:
    if isinstance(value, bool):
        out.append((BOOLEAN, int(value), None))
    elif isinstance(value, int):
        out.append((NUMBER, value if -(2**63) <= value < 2**63 else float(value), None))
    elif isinstance(value, float):
        out.append((NUMBER, value, None))
    elif isinstance(value, str):
        out.append((STRING, value, None))
        if _LOOKS_DATETIME.match(value):
            canon = canonical_datetime(value)
            if canon is not None:
                out.append((DATETIME, canon, None))
    elif isinstance(value, dict):
        if "@value" in value and not isinstance(value["@value"], dict | list):
            _scalar_rows(value["@value"], out)  # a typed literal such as {"@type": "DateTime"}
        else:
            out.append((JSON, None, orjson.dumps(value).decode()))
    elif isinstance(value, list):
        out.append((JSON, None, orjson.dumps(value).decode()))


def _value_rows(value: Any, out: list[tuple[int, Any, str | None]]) -> None:
    """Add the rows for a value; an array contributes each element (q matches any of them)."""
    if isinstance(value, list):
        for item in value:
            _scalar_rows(item, out)
    else:
        _scalar_rows(value, out)


def _instance_rows(rid: int, path: str, inst: Instance, rows: dict[Row, None]) -> None:
    atype = inst.get("type", "Property")
    value = inst.get(VALUE_MEMBER.get(atype, "value"))
    vals: list[tuple[int, Any, str | None]] = []
    if atype == "LanguageProperty" and isinstance(value, dict):
        for text in value.values():
            _value_rows(text, vals)
        vals.append((JSON, None, orjson.dumps(value).decode()))
    elif value is not None:
        _value_rows(value, vals)
    if not vals:
        vals.append((MARKER, None, None))
    for t, v, j in vals:
        rows[(rid, path, t, v, j)] = None
    for member in INDEXED_MEMBERS:
        text = inst.get(member)
        if isinstance(text, str):
            sub: list[tuple[int, Any, str | None]] = []
            _scalar_rows(text, sub)
            for t, v, j in sub:
                rows[(rid, path + PATH_SEP + member, t, v, j)] = None
    for key, sub_inst in inst.items():
        if key not in CORE_MEMBERS and isinstance(sub_inst, dict):
            _instance_rows(rid, path + PATH_SEP + key, sub_inst, rows)


def index_rows(rid: int, doc: Doc, names: Iterable[str] | None = None) -> list[Row]:
    """Return the attr_index rows ``(rid, path, t, v, j)`` of a document (or of some attributes)."""
    rows: dict[Row, None] = {}  # a dict keeps first-seen order and drops duplicates
    attrs = doc.get("attrs", {})
    for name in attrs if names is None else names:
        for inst in attrs.get(name, ()):
            _instance_rows(rid, name, inst, rows)
    return list(rows)


class PathIds:
    """The writer's cache of interned attribute paths (path -> attr_paths.pid).

    A pid inserted inside a transaction that later rolls back no longer exists, so the owner
    calls forget() after every rollback.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def ids(self, conn: sqlite3.Connection, paths: Iterable[str]) -> dict[str, int]:
        """Return the pid of every path, interning the new ones."""
        known = self._ids
        missing = [p for p in set(paths) if p not in known]
        if missing:
            conn.executemany(
                "INSERT OR IGNORE INTO attr_paths(path) VALUES(?)", [(p,) for p in missing]
            )
            for p in missing:
                known[p] = conn.execute("SELECT pid FROM attr_paths WHERE path=?", (p,)).fetchone()[
                    0
                ]
        return known

    def forget(self) -> None:
        """Drop the cache (after a rollback)."""
        self._ids.clear()


def _with_pids(conn: sqlite3.Connection, rows: list[Row], paths: PathIds) -> list[tuple[Any, ...]]:
    pids = paths.ids(conn, (r[1] for r in rows))
    return [(rid, pids[path], t, v, j) for rid, path, t, v, j in rows]


def insert_index(
    conn: sqlite3.Connection, rid: int, doc: Doc, paths: PathIds | None = None
) -> None:
    """Write the index rows of a stored document (call delete_index first on rewrite)."""
    rows = index_rows(rid, doc)
    if rows:
        conn.executemany(
            "INSERT INTO attr_index(rid, pid, t, v, j) VALUES(?, ?, ?, ?, ?)",
            _with_pids(conn, rows, paths or PathIds()),
        )


def delete_index(conn: sqlite3.Connection, rid: int) -> None:
    """Remove the index rows of an entity."""
    conn.execute("DELETE FROM attr_index WHERE rid=?", (rid,))


@lru_cache(maxsize=512)
def _compiled(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None


def _regexp(pattern: str, value: Any) -> bool:
    if not isinstance(value, str) or not isinstance(pattern, str):
        return False
    rx = _compiled(pattern)
    return rx is not None and rx.search(value) is not None


def register_functions(conn: sqlite3.Connection) -> None:
    """Install REGEXP(pattern, value): a Python regex search with compiled patterns cached."""
    conn.create_function("REGEXP", 2, _regexp, deterministic=True)


# -- compiling q -------------------------------------------------------------------------------
def _path_iri(path: AttrPath, expand: Callable[[str], str]) -> str:
    parts = [expand(path.names[0])]
    parts.extend(n if n in INDEXED_MEMBERS else expand(n) for n in path.names[1:])
    return PATH_SEP.join(parts)


def _literal(value: Scalar) -> tuple[int, Any]:
    """Return the index kind and SQL parameter a literal compares as."""
    if isinstance(value, bool):
        return BOOLEAN, int(value)
    if isinstance(value, int | float):
        return NUMBER, value
    if isinstance(value, DateTime):
        return DATETIME, canonical_datetime(value.text)
    if isinstance(value, Date | Time):
        return STRING, value.text
    return STRING, value


class Dialect:
    """The SQL spellings that differ between engines, as SQLite writes them.

    Compiled SQL uses ``?`` placeholders whatever the dialect; an engine with numbered
    placeholders renumbers them (the compilers never inline a literal that could hold one).
    """

    true = "1"
    #: rows ``s(value)`` of the scopes of entity ``e``
    scopes = "json_each(e.doc, '$.scope') s"
    #: the JSON path (a parameter) exists in index row ``a``
    json_present = "json_type(a.j, ?) IS NOT NULL"
    #: ends a check made beside an equality lookup so that it stays a check of each row (the
    #: lookup drives the query, whatever the planner estimates of the check)
    per_row = ""
    #: every condition is a check of each candidate row, none drives the query (set when
    #: the candidates come in order from elsewhere: a walk of a type's entities)
    walk = False

    def col(self, kind: int) -> str:
        """Return the index column holding values of a kind."""
        return "a.v"

    def pid(self, path: str) -> tuple[str, list[Any]]:
        """Return the expression of an attribute path's pid, and its parameters."""
        return _PID, [path]

    def equal(self, kind: int, params: list[Any]) -> tuple[str, list[Any]]:
        """Return 'index row ``a`` holds a value of kind equal to one of params'."""
        if len(params) > 1:
            return f"a.t={kind} AND {self.col(kind)} IN ({','.join('?' * len(params))})", params
        return f"a.t={kind} AND {self.col(kind)}=?", params

    def regex(self, subject: str) -> str:
        """Return 'subject matches the pattern parameter'."""
        return f"REGEXP(?, {subject})"

    def json_path(self, keys: tuple[str, ...]) -> Any:
        """Return the parameter addressing keys inside a JSON value."""
        return _json_path(keys)

    def json_each(self, cond: str) -> tuple[str, int]:
        """Return 'an element ``j`` at the path in ``a.j`` meets cond' and its path uses."""
        # json_each over a scalar yields that scalar, over an array its elements; objects are
        # excluded so that attr[k]==5 does not match {"k": {"x": 5}}.
        return (
            f"json_type(a.j, ?) <> 'object' AND "
            f"EXISTS (SELECT 1 FROM json_each(a.j, ?) j WHERE {cond})",
            2,
        )

    def json_text(self) -> tuple[str, str]:
        """Return the type test and the expression of a JSON element ``j`` that is a string."""
        return "j.type='text'", "j.value"

    def json_scalar(self, value: Scalar) -> tuple[str, str, Any]:
        """Return the type test, value expression and parameter (or None) of a JSON literal."""
        if isinstance(value, bool):
            return f"j.type='{'true' if value else 'false'}'", "", None
        if isinstance(value, int | float):
            return "j.type IN ('integer','real')", "j.value", value
        if isinstance(value, DateTime | Date | Time):
            return "j.type='text'", "j.value", value.text
        return "j.type='text'", "j.value", value


SQLITE: Final = Dialect()

Cond = tuple[str, list[Any]]


class _Compiler:
    """Build SQL for one q AST; each condition carries its own parameters, in text order."""

    def __init__(self, expand: Callable[[str], str], dialect: Dialect = SQLITE) -> None:
        self.expand = expand
        self.d = dialect
        #: inside an AND that has a lookup to drive by: other checks are made per row
        self.beside_lookup = False

    def expr(self, node: QExpr) -> Cond:
        if isinstance(node, And | Or):
            joiner = " AND " if isinstance(node, And) else " OR "
            saved = self.beside_lookup
            if isinstance(node, And) and any(_is_lookup(x) for x in node.items):
                self.beside_lookup = True
            try:
                parts = [self.expr(x) for x in node.items]
            finally:
                self.beside_lookup = saved
            return "(" + joiner.join(p[0] for p in parts) + ")", [x for p in parts for x in p[1]]
        if isinstance(node, Exists):
            sql, params = self.present(node.path)
            return ("NOT " + sql if node.negated else sql), params
        if isinstance(node, Match):
            if node.path.keys:
                test, subject = self.d.json_text()
                cond = self.json_each(
                    node.path, (f"{test} AND {self.d.regex(subject)}", [node.pattern])
                )
            else:
                cond = (f"a.t={STRING} AND {self.d.regex(self.d.col(STRING))}", [node.pattern])
            return self.absent(node.path, cond) if node.negated else self.exists(node.path, cond)
        op = _SQL_OP[node.op]
        if node.path.keys:
            cond = self.json_each(node.path, self.json_value_cond(op, node.value))
        else:
            cond = self.value_cond(op, node.value)
        if node.op == "!=":
            return self.absent(node.path, cond)
        lookup = node.op == "==" and not node.path.keys
        return self.exists(node.path, cond, lookup=lookup)

    def exists(self, path: AttrPath, cond: Cond, *, lookup: bool = False) -> Cond:
        """Return 'some index row of the path satisfies cond'.

        A lookup (an equality, usually selective) is written as ``e.rid IN (...)`` so that
        SQLite may drive the query from the value index; other conditions are checked per
        candidate row, which suits ranges and existence tests that match many entities.
        """
        where = f" AND {cond[0]}" if cond[0] else ""
        pid, pid_params = self.d.pid(_path_iri(path, self.expand))
        params = [*pid_params, *cond[1]]
        if self.d.walk:
            # the candidate's own index rows by (rid, pid), fenced: whatever the statistics
            # (none before a table is first analyzed), no index of values can be chosen to
            # scan every entity's values for each candidate
            return (
                "EXISTS (SELECT 1 FROM (SELECT * FROM attr_index x WHERE x.rid=e.rid "
                f"AND x.pid={pid} OFFSET 0) a WHERE {self.d.true}{where})",
                params,
            )
        if lookup:
            return f"e.rid IN (SELECT a.rid FROM attr_index a WHERE a.pid={pid}{where})", params
        per_row = self.beside_lookup
        return (
            f"EXISTS (SELECT 1 FROM attr_index a WHERE a.rid=e.rid AND a.pid={pid}{where}"
            f"{self.d.per_row if per_row else ''})",
            params,
        )

    def present(self, path: AttrPath) -> Cond:
        if not path.keys:
            return self.exists(path, ("", []))
        cond = f"a.t={JSON} AND {self.d.json_present}"
        return self.exists(path, (cond, [self.d.json_path(path.keys)]))

    def absent(self, path: AttrPath, cond: Cond) -> Cond:
        """Return 'the path exists and none of its values satisfies cond' (the != rule)."""
        present, p1 = self.present(path)
        some, p2 = self.exists(path, cond)
        return f"({present} AND NOT {some})", [*p1, *p2]

    def json_each(self, path: AttrPath, cond: Cond) -> Cond:
        sql, uses = self.d.json_each(cond[0])
        return f"a.t={JSON} AND {sql}", [self.d.json_path(path.keys)] * uses + cond[1]

    def value_cond(self, op: str, value: Any) -> Cond:
        if isinstance(value, Range):
            kind, low = _literal(value.low)
            col = self.d.col(kind)
            return f"a.t={kind} AND {col} BETWEEN ? AND ?", [low, _literal(value.high)[1]]
        if isinstance(value, ValueList):
            by_kind: dict[int, list[Any]] = {}
            for item in value.items:
                kind, param = _literal(item)
                by_kind.setdefault(kind, []).extend(self.variants(item, param, kind))
            parts = [self.d.equal(kind, ps) for kind, ps in by_kind.items()]
            return (
                "(" + " OR ".join(f"({sql})" for sql, _ in parts) + ")",
                [x for _, ps in parts for x in ps],
            )
        kind, param = _literal(value)
        if op == "=":
            return self.d.equal(kind, self.variants(value, param, kind))
        return f"a.t={kind} AND {self.d.col(kind)}{op}?", [param]

    def variants(self, value: Scalar, param: Any, kind: int) -> list[Any]:
        return _variants(value, param, kind, self.expand)

    def json_value_cond(self, op: str, value: Any) -> Cond:
        if isinstance(value, Range):
            test, subject, low = self.d.json_scalar(value.low)
            high = self.d.json_scalar(value.high)[2]
            return f"{test} AND {subject or 'j.value'} BETWEEN ? AND ?", [low, high]
        items = value.items if isinstance(value, ValueList) else (value,)
        parts: list[str] = []
        params: list[Any] = []
        for item in items:
            test, subject, param = self.d.json_scalar(item)
            if param is None:
                parts.append(test)
            else:
                parts.append(f"({test} AND {subject}{op}?)")
                params.append(param)
        return (parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"), params


def _is_lookup(node: QExpr) -> bool:
    """Tell whether a q term is an equality on an attribute's value (see _Compiler.exists)."""
    if isinstance(node, And | Or | Exists | Match):
        return False
    return bool(node.op == "==" and not node.path.keys)


def _variants(value: Scalar, param: Any, kind: int, expand: Callable[[str], str]) -> list[Any]:
    """Return the literal and, for a term, its expansion (VocabProperty values are IRIs)."""
    if kind == STRING and isinstance(value, str) and _TERM.fullmatch(value):
        iri = expand(value)
        if iri != value:
            return [param, iri]
    return [param]


def text_lookup(node: QExpr, expand: Callable[[str], str]) -> tuple[str, list[str]] | None:
    """Return (attribute path IRI, the strings it may equal) of a text equality q term.

    The strings are those the index compares (a term and its expansion); None when the term
    is anything else (a number, a range, a path into a JSON value, another operator).
    """
    if not isinstance(node, Compare) or node.op != "==" or node.path.keys:
        return None
    if isinstance(node.value, Range):
        return None
    items = node.value.items if isinstance(node.value, ValueList) else (node.value,)
    values: list[str] = []
    for item in items:
        kind, param = _literal(item)
        if kind != STRING:
            return None
        values.extend(_variants(item, param, kind, expand))
    return _path_iri(node.path, expand), values


def _json_path(keys: tuple[str, ...]) -> str:
    return "$" + "".join(f'."{k}"' for k in keys)


def compile_q(
    expr: QExpr, expand: Callable[[str], str] = str, dialect: Dialect = SQLITE
) -> tuple[str, list[Any]]:
    """Compile a q AST to a SQL condition on the entity row ``e`` and its parameters."""
    return _Compiler(expand, dialect).expr(expr)


# -- compiling scopeQ --------------------------------------------------------------------------
def _scope_cond(term: ScopeTerm, params: list[Any], dialect: Dialect) -> str:
    segs = term.segments
    if "+" not in segs:
        if not segs or segs[-1] != "#":
            params.append("/" + "/".join(segs))
            return "s.value=?"
        if len(segs) == 1:
            return dialect.true  # /# matches every scope
        prefix = "/" + "/".join(segs[:-1])
        params.extend([prefix, len(prefix) + 1, prefix + "/"])
        return "(s.value=? OR substr(s.value, 1, ?)=?)"
    parts = ["[^/]+" if s == "+" else re.escape(s) for s in segs if s != "#"]
    tail = "(?:/.*)?" if segs[-1] == "#" else ""
    params.append("^/" + "/".join(parts) + tail + r"\Z")
    return dialect.regex("s.value")


def compile_scope_q(expr: ScopeExpr, dialect: Dialect = SQLITE) -> tuple[str, list[Any]]:
    """Compile a scopeQ AST to a SQL condition on the scopes in ``e.doc``."""
    params: list[Any] = []

    def walk(node: ScopeExpr) -> str:
        if isinstance(node, ScopeTerm):
            cond = _scope_cond(node, params, dialect)
            return f"EXISTS (SELECT 1 FROM {dialect.scopes} WHERE {cond})"
        joiner = " AND " if isinstance(node, ScopeAnd) else " OR "
        assert isinstance(node, ScopeAnd | ScopeOr)
        return "(" + joiner.join(walk(x) for x in node.items) + ")"

    return walk(expr), params


# -- compiling type selections -----------------------------------------------------------------
def compile_type_selection(
    expr: TypeExpr, expand: Callable[[str], str] = str, tenant: str | None = None
) -> tuple[str, list[Any]]:
    """Compile a type selection to a SQL condition on ``e``'s types, expanding each name.

    Without ``tenant`` (the default) each candidate row is checked, correlated on
    ``e.tenant``: cheapest when the type is common and a LIMIT stops the scan early. With
    ``tenant`` the condition is ``e.rid IN (...)``, which costs building the list of the
    type's entities first (~4 ms per 33k) but is bounded for rare types.
    """
    params: list[Any] = []

    def names_cond(names: list[str]) -> str:
        marks = ",".join("?" * len(names))
        if tenant is None:
            # e.type1 answers for the many entities with one type without a lookup
            params.extend(names)
            params.extend(names)
            return (
                f"(e.type1 IN ({marks}) OR EXISTS (SELECT 1 FROM entity_types t "
                f"WHERE t.tenant=e.tenant AND t.type IN ({marks}) AND t.rid=e.rid))"
            )
        params.append(tenant)
        params.extend(names)
        return f"e.rid IN (SELECT rid FROM entity_types WHERE tenant=? AND type IN ({marks}))"

    def walk(node: TypeExpr) -> str:
        if isinstance(node, TypeName):
            return names_cond([expand(node.name)])
        if isinstance(node, TypeAnd):
            return "(" + " AND ".join(walk(x) for x in node.items) + ")"
        names = [expand(x.name) for x in node.items if isinstance(x, TypeName)]
        parts = [names_cond(names)] if names else []
        parts.extend(walk(x) for x in node.items if not isinstance(x, TypeName))
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    return walk(expr), params


def update_index(
    conn: sqlite3.Connection, rid: int, old: Doc, new: Doc, paths: PathIds | None = None
) -> None:
    """Rewrite only the index rows that differ between two versions of a document."""
    paths = paths or PathIds()
    old_attrs, new_attrs = old.get("attrs", {}), new.get("attrs", {})
    changed = [
        n for n in old_attrs.keys() | new_attrs.keys() if old_attrs.get(n) != new_attrs.get(n)
    ]
    if not changed:
        return
    before = index_rows(rid, old, changed)
    after = index_rows(rid, new, changed)
    before_set = set(before)
    after_set = set(after)
    gone = [r for r in before if r not in after_set]
    added = [r for r in after if r not in before_set]
    if gone:
        conn.executemany(
            "DELETE FROM attr_index WHERE rid=? AND pid=? AND t=? AND v IS ? AND j IS ?",
            _with_pids(conn, gone, paths),
        )
    if added:
        conn.executemany(
            "INSERT INTO attr_index(rid, pid, t, v, j) VALUES(?, ?, ?, ?, ?)",
            _with_pids(conn, added, paths),
        )
