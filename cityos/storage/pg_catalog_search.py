"""package_search on PostgreSQL: parsed clauses to SQL, counts, facets and bm25-ranked pages.

The search text is SQLite's FTS5 input (pre-tokenized, space-joined: CJK bigrams and words), so
no PostgreSQL parser or dictionary touches it: a phrase matches where ' t1 t2 ' occurs in
' column ' (strpos), a GIN index over each row's distinct tokens (tsvector) narrowing the rows
first. Ranking recomputes FTS5's bm25 (k1 1.2, b 0.75, instances counted with regexp_count)
with the same floating-point operations in the same order, so pages come in SQLite's order.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

from cityos.catalog.search import All, And, Clause, Equals, Match, Not, Query, Range
from cityos.storage.pg_index import Conn
from cityos.storage.sqlite_catalog import _SORTS, _conjuncts, _is_fallback

#: FTS5's bm25 constants
_K1: Final = 1.2
_B: Final = 0.75
#: SQLite's NOCASE and lower() fold ASCII letters only
_UPPER: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_FOLD: Final = str.maketrans(_UPPER, _UPPER.lower())
#: FTS5's 'ascii' tokenizer: every ASCII character but letters and digits separates tokens
_SEPARATORS: Final = re.compile(r"[\x00-\x2f\x3a-\x40\x5b-\x60\x7b-\x7f]+")
#: longer tokens cannot be tsvector lexemes: they are matched by strpos alone
_MAX_LEXEME: Final = 2046
_TEXT_COLUMNS: Final = ("title", "notes", "body")

_COLUMNS: Final = {
    "id": "d.id",
    "name": "d.name",
    "state": "d.state",
    "license_id": "d.license_id",
    "type": "d.type",
    "organization": "d.org_name",
    "owner_org": "d.owner_org",
    # JSON text as stored; SQLite's json_extract reads the same values
    "author": "(SELECT x.doc::jsonb ->> 'author' FROM catalog_dataset_docs x WHERE x.ds = d.rid)",
    "maintainer": "(SELECT x.doc::jsonb ->> 'maintainer' FROM catalog_dataset_docs x "
    "WHERE x.ds = d.rid)",
    "version": "(SELECT x.doc::jsonb ->> 'version' FROM catalog_dataset_docs x WHERE x.ds = d.rid)",
}
#: field -> (table, column, folds ASCII case)
_JOINS: Final = {
    "tags": ("catalog_dataset_tags", "tag", False),
    "groups": ("catalog_dataset_groups", "grp", False),
    "res_format": ("catalog_resources", "format", True),
}
_FACET_COLUMNS: Final = {
    "organization": "d.org_name",
    "license_id": "d.license_id",
    "type": "d.type",
    "state": "d.state",
    "private": "CASE WHEN d.private THEN 'true' ELSE 'false' END",
}


def fold(sql: str) -> str:
    """Return SQL lowering the ASCII letters of an expression, as SQLite's lower() does."""
    return f"translate({sql}, '{_UPPER}', '{_UPPER.lower()}')"


def fts_tokens(text: str) -> list[str]:
    """Return the tokens FTS5's 'ascii' tokenizer makes of text (ASCII letters lowered)."""
    return [t.translate(_FOLD) for t in _SEPARATORS.split(text) if t]


def lexemes(tokens: list[str]) -> list[str]:
    """Return the distinct tokens that fit in a tsvector."""
    return [t for t in dict.fromkeys(tokens) if len(t.encode()) < _MAX_LEXEME]


class Args:
    """Positional parameters of one statement ($1, $2...)."""

    def __init__(self, *values: Any) -> None:
        self.values: list[Any] = list(values)

    def __call__(self, value: Any, cast: str = "") -> str:
        """Add a value; return its placeholder (with a cast when given)."""
        self.values.append(value)
        return f"${len(self.values)}{cast}"


def _phrase_tokens(m: Match) -> list[str]:
    return fts_tokens(" ".join(m.tokens))


def _columns(m: Match) -> tuple[str, ...]:
    return (m.column,) if m.column else _TEXT_COLUMNS


def phrase_condition(m: Match, args: Args) -> str:
    """Return an SQL condition on a search row `f`: the phrase occurs in m's column(s)."""
    toks = _phrase_tokens(m)
    if not toks:
        return "FALSE"  # FTS5 matches no row with an empty phrase
    needle = args(" " + " ".join(toks) + " ")
    found = " OR ".join(f"strpos(' ' || f.{c} || ' ', {needle}) > 0" for c in _columns(m))
    lex = lexemes(toks)
    if not lex:
        return f"({found})"
    query = " & ".join("'" + t.replace("\\", "\\\\").replace("'", "''") + "'" for t in lex)
    return f"f.lexemes @@ {args(query, '::tsquery')} AND ({found})"


def compile_clause(clause: Clause, args: Args) -> str:
    """Return an SQL condition on the dataset row `d` for a parsed clause."""
    if isinstance(clause, All):
        return "TRUE"
    if isinstance(clause, Match):
        if _is_fallback(clause):
            cols = " || ' ' || ".join(f"f.{c}" for c in _columns(clause))
            return (
                "d.rid IN (SELECT ds FROM catalog_fts f "
                f"WHERE strpos({cols}, {args(clause.tokens[0])}) > 0)"
            )
        return f"d.rid IN (SELECT ds FROM catalog_fts f WHERE {phrase_condition(clause, args)})"
    if isinstance(clause, Equals):
        return _compile_equals(clause, args)
    if isinstance(clause, Range):
        col = f"d.{clause.field}"
        parts = []
        if clause.lo is not None:
            parts.append(f"{col} >= {args(clause.lo)}")
        if clause.hi is not None:
            parts.append(f"{col} <= {args(clause.hi)}")
        return " AND ".join(parts) or "TRUE"
    if isinstance(clause, Not):
        # as on SQLite, NOT of a NULL comparison (a dataset without a license...) is not true
        return f"NOT ({compile_clause(clause.clause, args)})"
    if isinstance(clause, And):
        return "(" + " AND ".join(compile_clause(c, args) for c in clause.clauses) + ")"
    return "(" + " OR ".join(compile_clause(c, args) for c in clause.clauses) + ")"


def _compile_equals(clause: Equals, args: Args) -> str:
    if clause.field == "private":
        if clause.value == "*":
            return "TRUE"
        return "d.private" if clause.value == "true" else "NOT d.private"
    prefix = clause.value.endswith("*") and len(clause.value) > 1
    value = clause.value[:-1] if prefix else clause.value
    if clause.field in _JOINS:
        table, col, folds = _JOINS[clause.field]
        if clause.value == "*":
            return f"d.rid IN (SELECT ds FROM {table})"
        left, right = (fold(col), fold(args(value))) if folds else (col, args(value))
        test = f"starts_with({left}, {right})" if prefix else f"{left} = {right}"
        return f"d.rid IN (SELECT ds FROM {table} WHERE {test})"
    col = _COLUMNS[clause.field]
    if clause.value == "*":
        return f"coalesce({col}, '') <> ''"
    if prefix:
        return f"starts_with({col}, {args(value)})"
    return f"{col} = {args(value)}"


def split_rank(clause: Clause) -> tuple[list[Match], Clause]:
    """Split the required text terms (ranked by bm25) off a clause; return them and the rest."""
    parts = _conjuncts(clause)
    ranked = [c for c in parts if isinstance(c, Match) and not _is_fallback(c)]
    if not ranked:
        return [], clause
    rest = [c for c in parts if not (isinstance(c, Match) and not _is_fallback(c))]
    return ranked, (And(tuple(rest)) if rest else All())


def _visibility(query: Query, states: list[str], args: Args) -> list[str]:
    vis = [f"d.state = ANY({args(states, '::text[]')})"]
    if not query.include_private:
        vis.append("NOT d.private")
    return vis


async def count_and_facets(
    conn: Conn, query: Query, states: list[str]
) -> tuple[int, dict[str, list[tuple[str, int]]]]:
    """Return the number of matches and the facets, in one statement over the matched set."""
    args = Args()
    where = " AND ".join([*_visibility(query, states, args), compile_clause(query.where, args)])
    wanted = [n for n in query.facet_fields if n in _FACET_COLUMNS]
    select = ", ".join(["d.rid AS r", *(f"{_FACET_COLUMNS[n]} AS c_{n}" for n in wanted)])
    parts = ["SELECT -1, NULL::text, count(*) FROM m"]
    for i, name in enumerate(query.facet_fields):
        if name in _JOINS:
            table, col, _ = _JOINS[name]
            # (tag, ds) and (grp, ds) are keys; a dataset may hold two resources of one format
            n = "count(DISTINCT t.ds)" if table == "catalog_resources" else "count(*)"
            parts.append(
                f"SELECT {i}, t.{col}::text, {n} FROM m JOIN {table} t "
                f"ON t.ds = m.r WHERE t.{col} <> '' GROUP BY t.{col}"
            )
        else:
            c = f"c_{name}"
            parts.append(
                f"SELECT {i}, {c}::text, count(*) FROM m WHERE coalesce({c}, '') <> '' GROUP BY {c}"
            )
    rows = await conn.fetch(
        f"WITH m AS MATERIALIZED (SELECT {select} FROM catalog_datasets d WHERE {where}) "
        + " UNION ALL ".join(parts),
        *args.values,
    )
    total = 0
    found: list[list[tuple[str, int]]] = [[] for _ in query.facet_fields]
    mincount = max(query.facet_mincount, 0)
    for i, value, n in rows:
        if i < 0:
            total = int(n)
        elif n >= mincount:
            found[i].append((str(value), int(n)))
    facets = {}
    for name, items in zip(query.facet_fields, found, strict=True):
        items.sort(key=lambda item: (-item[1], item[0]))
        facets[name] = items if query.facet_limit < 0 else items[: query.facet_limit]
    return total, facets


async def _bm25(conn: Conn, ranked: list[Match], args: Args) -> str:
    """Return SQL of the ranked rows `f(r, score)`: FTS5's bm25 of the phrases, negated.

    The corpus figures (rows, tokens, rows holding each phrase) are read first; the score is
    then the same sequence of double operations as FTS5's (fts5_aux.c), so ties and order agree.
    """
    stats = Args()
    hits = ", ".join(f"count(*) FILTER (WHERE {phrase_condition(m, stats)})" for m in ranked)
    row = await conn.fetchrow(
        f"SELECT count(*), coalesce(sum(ntok), 0), {hits} FROM catalog_fts f", *stats.values
    )
    assert row is not None
    n_row, n_tok = int(row[0]), int(row[1])
    avgdl = n_tok / n_row if n_row else 0.0
    terms = []
    conds = []
    for i, m in enumerate(ranked):
        n_hit = int(row[2 + i])
        idf = math.log((n_row - n_hit + 0.5) / (n_hit + 0.5))
        idf = idf if idf > 0.0 else 1e-6
        pattern = args("(?= " + " ".join(_phrase_tokens(m)) + " )")
        freq = " + ".join(f"regexp_count(' ' || f.{c} || ' ', {pattern})" for c in _columns(m))
        f = f"({freq})::float8"
        denom = (
            f"({f} + {args(_K1, '::float8')} * ({args(1 - _B, '::float8')} + "
            f"{args(_B, '::float8')} * f.ntok::float8 / {args(avgdl, '::float8')}))"
        )
        terms.append(
            f"({args(idf, '::float8')} * (({f} * {args(_K1 + 1.0, '::float8')}) / {denom}))"
        )
        conds.append(phrase_condition(m, args))
    return (
        f"WITH f AS MATERIALIZED (SELECT f.ds AS r, -({' + '.join(terms)}) AS rank "
        f"FROM catalog_fts f WHERE {' AND '.join(conds)}) "
    )


async def page(conn: Conn, query: Query, states: list[str]) -> list[str]:
    """Return one page of dataset dicts (JSON) in the query's order (score: bm25 as FTS5's)."""
    ranked, rest = split_rank(query.where)
    if not any(key.field == "score" for key in query.sort):
        ranked, rest = [], query.where  # bm25 of every match only when the order needs it
    args = Args()
    with_ = await _bm25(conn, ranked, args) if ranked else ""
    source = "catalog_datasets d JOIN f ON f.r = d.rid" if ranked else "catalog_datasets d"
    where = " AND ".join([*_visibility(query, states, args), compile_clause(rest, args)])
    order = []
    for key in query.sort:
        if key.field == "score":
            if ranked:  # bm25 negated: lower is better
                order.append("f.rank" if key.desc else "f.rank DESC")
            continue
        order.append(f"{_SORTS[key.field]} {'DESC' if key.desc else 'ASC'}")
    order.append("d.name")
    limit, offset = args(query.rows), args(query.start)
    rids = [
        r[0]
        for r in await conn.fetch(
            f"{with_}SELECT d.rid FROM {source} WHERE {where} ORDER BY {', '.join(order)} "
            f"LIMIT {limit} OFFSET {offset}",
            *args.values,
        )
    ]
    if not rids:
        return []
    found = await conn.fetch(
        "SELECT ds, doc FROM catalog_dataset_docs WHERE ds = ANY($1::bigint[])", rids
    )
    docs = {r[0]: r[1] for r in found}
    return [str(docs[r]) for r in rids]
