"""The PostgreSQL rules of datastore_search_sql: which functions a SELECT may call, and which
relations its plan may read.

PostgreSQL has no authorizer callback like SQLite's, so the policy has three layers: the
statement runs as a role that may only SELECT the datastore schema, in a READ ONLY
transaction with a statement_timeout (storage/pg_datastore.py); `called_functions` scans the
text for calls and `check_functions` refuses any function outside an allowlist (set_config,
pg_advisory_lock, query_to_xml... would otherwise act beyond one read); `plan_relations`
walks EXPLAIN's plan for every table read, so a system catalog is refused like SQLite's
sqlite_master.
"""

from __future__ import annotations

import re
from typing import Any, Final

from cityos.catalog.errors import NotAuthorized, ValidationError


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: functions a datastore SELECT may call (aggregates, window, math, text, dates, JSON, sets)
ALLOWED_FUNCTIONS: Final = _words(
    """
    count sum avg min max string_agg array_agg json_agg jsonb_agg json_object_agg
    jsonb_object_agg bool_and bool_or every stddev stddev_pop stddev_samp variance var_pop
    var_samp percentile_cont percentile_disc mode corr covar_pop covar_samp regr_slope
    regr_intercept regr_count regr_r2
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value
    nth_value
    abs ceil ceiling floor round trunc sqrt cbrt power pow exp ln log log10 mod sign pi
    degrees radians sin cos tan asin acos atan atan2 width_bucket div gcd lcm
    length char_length character_length octet_length lower upper initcap substr substring
    left right lpad rpad ltrim rtrim btrim trim replace translate reverse repeat concat
    concat_ws position strpos split_part starts_with regexp_replace regexp_match
    regexp_matches regexp_split_to_array regexp_split_to_table to_char to_number to_date
    to_timestamp md5 ascii chr normalize
    coalesce nullif greatest least date_trunc date_part extract age make_date make_time
    make_timestamp make_interval justify_days justify_hours
    json_extract_path json_extract_path_text jsonb_extract_path jsonb_extract_path_text
    json_array_length jsonb_array_length json_array_elements json_array_elements_text
    jsonb_array_elements jsonb_array_elements_text json_each json_each_text jsonb_each
    jsonb_each_text json_object_keys jsonb_object_keys json_typeof jsonb_typeof to_json
    to_jsonb json_build_object jsonb_build_object json_build_array jsonb_build_array
    row_to_json jsonb_pretty
    generate_series unnest array_length cardinality array_to_string string_to_array
    array_position array_remove array_append
    """
)
#: words followed by "(" that are syntax, not calls
_SYNTAX: Final = _words(
    """
    select from where in exists values as over filter within group cast any all some array
    row using on and or not join lateral case when then else with recursive union intersect
    except by having limit offset is like ilike between distinct interval materialized into
    table only partition rows range order window fetch tablesample returning cube rollup
    grouping sets numeric decimal varchar char character bit timestamp time float
    """
)
#: words that read session state without parentheses
_BARE_DENIED: Final = frozenset(
    {"current_user", "session_user", "current_role", "current_schema", "current_catalog", "user"}
)
_TOKEN: Final = re.compile(
    r"""
      (?P<space>\s+|--[^\n]*|/\*.*?(?:\*/|$))
    | (?P<estring>[Ee]'(?:[^'\\]|\\.|'')*(?:'|$))
    | (?P<string>'(?:[^']|'')*(?:'|$))
    | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z_0-9]*|)\$.*?(?:\$(?P=tag)\$|$))
    | (?P<quoted>"(?:[^"]|"")*(?:"|$))
    | (?P<word>[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*)
    | (?P<other>::|.)
    """,
    re.DOTALL | re.VERBOSE,
)


def _tokens(sql: str) -> list[tuple[str, str]]:
    """Return (kind, text) of the significant tokens: word (lower case), quoted (a quoted
    identifier, unquoted), string, other."""
    out: list[tuple[str, str]] = []
    for m in _TOKEN.finditer(sql):
        kind = m.lastgroup or "other"
        if kind == "tag":  # the tag group closes last inside a dollar-quoted string
            kind = "dollar"
        text = m.group(kind)
        if kind == "space":
            continue
        if kind == "word":
            out.append(("word", text.lower()))
        elif kind == "quoted":
            out.append(("quoted", text[1:-1].replace('""', '"')))
        elif kind in ("string", "estring", "dollar"):
            out.append(("string", text))
        else:
            out.append(("other", text))
    return out


def called_functions(sql: str) -> list[str]:
    """Return the (possibly schema-qualified) names the statement calls, in order."""
    toks = _tokens(sql)
    calls: list[str] = []
    #: per parenthesis depth: whether we are in a WITH list (names there are CTE names)
    in_with = [False]
    for i, (kind, text) in enumerate(toks):
        prev = toks[i - 1] if i else ("other", "(")
        nxt = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if kind == "other" and text == "(":
            in_with.append(False)
            continue
        if kind == "other" and text == ")":
            if len(in_with) > 1:
                in_with.pop()
            continue
        if kind == "word" and text in _BARE_DENIED:
            raise ValidationError({"query": [f'"{text}" is not allowed']})
        if kind == "word" and text == "with" and prev == ("other", "("):
            in_with[-1] = True  # a WITH list starts (not WITH ORDINALITY / TIME ZONE)
        elif kind == "word" and text in ("select", "values", "table"):
            in_with[-1] = False
        if kind not in ("word", "quoted") or nxt != ("other", "("):
            continue
        qualified = prev == ("other", ".")
        if prev in (("word", "as"), ("other", "::")):
            continue  # an alias's column list AS t(a, b), a type modifier ::numeric(10, 2)
        if in_with[-1] and not qualified:
            continue  # a CTE's name and column list: WITH c(x) AS (...)
        if kind == "word" and text in _SYNTAX and not qualified:
            continue
        name = text
        if qualified and i >= 2 and toks[i - 2][0] in ("word", "quoted"):
            name = f"{toks[i - 2][1]}.{text}"
        calls.append(name)
    return calls


def check_functions(sql: str) -> None:
    """Raise ValidationError naming the first function call outside the allowlist."""
    for name in called_functions(sql):
        schema, _, func = name.rpartition(".")
        if schema not in ("", "pg_catalog") or func not in ALLOWED_FUNCTIONS:
            raise ValidationError({"query": [f'function "{name}" is not allowed']})


def plan_relations(plan: Any, schema: str) -> set[str]:
    """Return the tables of `schema` an EXPLAIN (VERBOSE, FORMAT JSON) plan reads; raise
    NotAuthorized for a relation of any other schema (the system catalogs)."""
    found: set[str] = set()
    stack: list[Any] = [plan]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        rel = node.get("Relation Name")
        if isinstance(rel, str):
            if node.get("Schema") != schema:
                raise NotAuthorized(f'Not authorized to access system tables ("{rel}")')
            found.add(rel)
        stack.extend(v for v in node.values() if isinstance(v, list | dict))
    return found
