"""The q and scopeQ languages: what expressions mean, how they are written back, what is refused."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityos.broker.errors import BadRequestData
from cityos.broker.qlang import (
    MAX_DEPTH,
    MAX_LENGTH,
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
    ScopeOr,
    ScopeTerm,
    Time,
    ValueList,
    canonical_datetime,
    parse_q,
    parse_scope_q,
    unparse_q,
    unparse_scope_q,
)


def p(*names: str, keys: tuple[str, ...] = ()) -> AttrPath:
    return AttrPath(names, keys)


def error(text: str) -> str:
    with pytest.raises(BadRequestData) as exc:
        parse_q(text)
    return exc.value.detail


@pytest.mark.parametrize(
    ("text", "op"),
    [("a==1", "=="), ("a!=1", "!="), ("a>1", ">"), ("a>=1", ">="), ("a<1", "<"), ("a<=1", "<=")],
)
def test_every_comparison_operator(text: str, op: str) -> None:
    assert parse_q(text) == Compare(p("a"), op, 1)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("42", 42),
        ("-7", -7),
        ("2.5", 2.5),
        ("1e3", 1000.0),
        ("-1.5E-2", -0.015),
        ("true", True),
        ("false", False),
        ('"hello world"', "hello world"),
        ('""', ""),
        ('"say \\"hi\\"\\n\\u00e9\\\\"', 'say "hi"\né\\'),
        ('"\\ud83c\\udf0a"', "🌊"),
        ('"1"', "1"),
        ("2026-01-01T00:00:00Z", DateTime("2026-01-01T00:00:00Z")),
        ("2026-01-01T09:00:00.5+09:00", DateTime("2026-01-01T09:00:00.5+09:00")),
        ("2026-01-01", Date("2026-01-01")),
        ("10:30:00Z", Time("10:30:00Z")),
        ("urn:ngsi-ld:River:akiyama", "urn:ngsi-ld:River:akiyama"),
        ("https://example.org/a.b/c", "https://example.org/a.b/c"),
        ("Sano", "Sano"),
    ],
)
def test_literals(raw: str, value: Scalar) -> None:
    node = parse_q(f"a=={raw}")
    assert isinstance(node, Compare)
    assert node.value == value
    assert type(node.value) is type(value)


def test_integers_beyond_64_bits_become_floats() -> None:
    node = parse_q("a==123456789012345678901234567890")
    assert isinstance(node, Compare)
    assert node.value == pytest.approx(1.2345678901234568e29)
    assert isinstance(node.value, float)


def test_value_list_and_range() -> None:
    assert parse_q("a==1,2,3") == Compare(p("a"), "==", ValueList((1, 2, 3)))
    assert parse_q('a!="x",true') == Compare(p("a"), "!=", ValueList(("x", True)))
    assert parse_q("a==1..5") == Compare(p("a"), "==", Range(1, 5))
    assert parse_q("a==1.5..2.5") == Compare(p("a"), "==", Range(1.5, 2.5))
    assert parse_q("t==2026-01-01T00:00:00Z..2026-02-01T00:00:00Z") == Compare(
        p("t"), "==", Range(DateTime("2026-01-01T00:00:00Z"), DateTime("2026-02-01T00:00:00Z"))
    )
    assert parse_q('a=="a".."m"') == Compare(p("a"), "==", Range("a", "m"))


def test_and_binds_tighter_than_or() -> None:
    a, b, c = (Exists(p(x)) for x in "abc")
    assert parse_q("a;b|c") == Or((And((a, b)), c))
    assert parse_q("a|b;c") == Or((a, And((b, c))))
    assert parse_q("(a|b);c") == And((Or((a, b)), c))
    assert parse_q("((a));((b;c))") == And((a, b, c))
    assert parse_q("a|(b|c)") == Or((a, b, c))


def test_blanks_around_tokens_are_tolerated() -> None:
    assert parse_q(" ( a == 1 ; b ) ") == And((Compare(p("a"), "==", 1), Exists(p("b"))))


def test_paths() -> None:
    assert parse_q("a.b.c==1") == Compare(p("a", "b", "c"), "==", 1)
    assert parse_q("a.observedAt>2026-01-01T00:00:00Z").path == p("a", "observedAt")  # type: ignore[union-attr]
    assert parse_q("a[k.m]==1") == Compare(p("a", keys=("k", "m")), "==", 1)
    assert parse_q("a[k][m]==1") == parse_q("a[k.m]==1")
    assert parse_q("a.b[k]") == Exists(p("a", "b", keys=("k",)))
    assert parse_q("schema:name==x").path == p("schema:name")  # type: ignore[union-attr]


def test_existence_and_non_existence() -> None:
    assert parse_q("a") == Exists(p("a"))
    assert parse_q("!a") == Exists(p("a"), negated=True)
    assert parse_q("!a.b;c") == And((Exists(p("a", "b"), negated=True), Exists(p("c"))))


def test_regex_quoted_and_unquoted() -> None:
    assert parse_q('a~="^Sa\\d+"') == Match(p("a"), "^Sa\\d+")
    assert parse_q("a!~=^x") == Match(p("a"), "^x", negated=True)
    # an unquoted pattern keeps its groups and ends at a top-level ; or |
    assert parse_q("a~=(?i)sano(x|y);b") == And((Match(p("a"), "(?i)sano(x|y)"), Exists(p("b"))))
    assert parse_q("a~=[;|]x|b") == Or((Match(p("a"), "[;|]x"), Exists(p("b"))))


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("a==1;b)", "Invalid q: unexpected ')' at position 6"),
        ("(a==1", "Invalid q: unexpected end at position 5"),
        ("a==", "Invalid q: expected a value, found the end at position 3"),
        ("==1", "Invalid q: expected an attribute name, found '=' at position 0"),
        ("a==1;", "Invalid q: expected an attribute name, found the end at position 5"),
        ("a=1", "Invalid q: unexpected '=' at position 1"),
        ('a=="abc', "Invalid q: unterminated string at position 3"),
        ("a>true", "Invalid q: > cannot compare with a boolean at position 2"),
        ("a>1,2", "Invalid q: a value list needs == or !=, not > at position 2"),
        ("a<1..2", "Invalid q: a range needs == or !=, not < at position 2"),
        ('a==1.."z"', "Invalid q: a range needs two values of one comparable kind at position 6"),
        (
            "a==true..false",
            "Invalid q: a range needs two values of one comparable kind at position 9",
        ),
        ("a==2026-02-30", "Invalid q: '2026-02-30' is not a valid date at position 3"),
        (
            "a==2026-13-01T00:00:00Z",
            "Invalid q: '2026-13-01T00:00:00Z' is not a valid DateTime at position 3",
        ),
        ("a==25:00:00", "Invalid q: '25:00:00' is not a valid time at position 3"),
        ("a==1e999", "Invalid q: number 1e999 is out of range at position 3"),
        ('a=="\\u12"', "Invalid q: bad \\u escape at position 4"),
        ('a=="\\udc00"', "Invalid q: lone surrogate in \\u escape at position 4"),
        ("a[k", "Invalid q: unexpected end at position 3"),
        ("a.", "Invalid q: expected an attribute name, found the end at position 2"),
        ("a b", "Invalid q: unexpected 'b' at position 2"),
        ("", "Invalid q: empty query"),
        ("a~=", "Invalid q: expected a regular expression at position 3"),
    ],
)
def test_syntax_errors_name_the_position(text: str, detail: str) -> None:
    assert error(text) == detail


def test_bad_regexes_are_refused() -> None:
    assert error('a~="[a-"').startswith("Invalid q: bad regular expression '[a-'")
    assert "nests quantifiers" in error('a~="(a+)+$"')
    assert "nests quantifiers" in error('a~="(\\\\w+\\\\s?)*x"')
    assert "longer than" in error('a~="' + "x" * 600 + '"')


def test_hostile_sizes_are_refused() -> None:
    assert "longer than 8192" in error("a" * (MAX_LENGTH + 1))
    deep = "(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1)
    assert "nest deeper than 32" in error(deep)
    ok = "(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH
    assert parse_q(ok) == Exists(p("a"))


def test_unparse_is_canonical() -> None:
    assert unparse_q(parse_q("a[k.m]==true,1")) == "a[k][m]==true,1"
    assert unparse_q(parse_q("(a|b);c")) == "(a|b);c"
    assert unparse_q(parse_q("a;b|c")) == "a;b|c"
    assert unparse_q(parse_q("r==urn:x:1")) == 'r=="urn:x:1"'
    assert unparse_q(parse_q("a~=^x\\d")) == 'a~="^x\\\\d"'


def test_canonical_datetime_sorts_as_text() -> None:
    assert canonical_datetime("2026-01-01T09:00:00+09:00") == "2026-01-01T00:00:00.000000Z"
    assert canonical_datetime("2026-01-01T00:00:00Z") == "2026-01-01T00:00:00.000000Z"
    assert canonical_datetime("2026-01-01T00:00:00.5Z") == "2026-01-01T00:00:00.500000Z"
    assert canonical_datetime("not a date") is None


# -- scopeQ ----------------------------------------------------------------------------------
def test_scope_queries() -> None:
    assert parse_scope_q("/Sano/Akiyama") == ScopeTerm(("Sano", "Akiyama"))
    assert parse_scope_q("/Sano/#") == ScopeTerm(("Sano", "#"))
    assert parse_scope_q("/+/Akiyama") == ScopeTerm(("+", "Akiyama"))
    assert parse_scope_q("/") == ScopeTerm(())
    assert parse_scope_q("/a;/b|/c") == ScopeOr(
        (ScopeAnd((ScopeTerm(("a",)), ScopeTerm(("b",)))), ScopeTerm(("c",)))
    )
    assert parse_scope_q("/a;(/b|/c)") == ScopeAnd(
        (ScopeTerm(("a",)), ScopeOr((ScopeTerm(("b",)), ScopeTerm(("c",)))))
    )
    assert unparse_scope_q(parse_scope_q("/a;(/b|/c/#)")) == "/a;(/b|/c/#)"


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("Sano", "Invalid scopeQ: expected a scope starting with '/' at position 0"),
        ("/Sano/#/x", "Invalid scopeQ: '#' must be the last scope segment at position 7"),
        ("/Sano/", "Invalid scopeQ: expected a scope segment, found the end at position 6"),
        ("/a|", "Invalid scopeQ: expected a scope, found the end at position 3"),
        ("/a+", "Invalid scopeQ: unexpected '+' at position 2"),
        ("", "Invalid scopeQ: empty query"),
    ],
)
def test_scope_syntax_errors(text: str, detail: str) -> None:
    with pytest.raises(BadRequestData) as exc:
        parse_scope_q(text)
    assert exc.value.detail == detail


# -- properties ------------------------------------------------------------------------------
_names = st.text(string.ascii_letters + string.digits + "_-:/@", min_size=1, max_size=8).filter(
    lambda s: s[0] not in "-:/"
)
_paths = st.builds(
    AttrPath,
    st.lists(_names, min_size=1, max_size=3).map(tuple),
    st.lists(_names, max_size=2).map(tuple),
)
_dt = st.datetimes().map(lambda d: DateTime(d.isoformat(timespec="seconds") + "Z"))
_numbers = st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
_comparable: st.SearchStrategy[Scalar] = (
    _numbers
    | st.text(max_size=10)
    | _dt
    | st.dates().map(lambda d: Date(d.isoformat()))
    | st.times().map(lambda t: Time(t.isoformat(timespec="seconds")))
)
_scalars: st.SearchStrategy[Scalar] = _comparable | st.booleans()


def _compare() -> st.SearchStrategy[QExpr]:
    ranged = st.one_of(
        st.tuples(_numbers, _numbers),
        st.tuples(st.text(max_size=5), st.text(max_size=5)),
        st.tuples(_dt, _dt),
    ).map(lambda t: Range(*t))
    equality = st.builds(
        Compare,
        _paths,
        st.sampled_from(["==", "!="]),
        _scalars
        | ranged
        | st.lists(_scalars, min_size=2, max_size=4).map(lambda xs: ValueList(tuple(xs))),
    )
    ordering = st.builds(Compare, _paths, st.sampled_from([">", ">=", "<", "<="]), _comparable)
    return equality | ordering


_leaves = (
    _compare()
    | st.builds(Exists, _paths, st.booleans())
    | st.builds(Match, _paths, st.sampled_from(["^a", "x|y", "\\d+", '"q"', "[;)]"]), st.booleans())
)


def _flat(kind: type[And] | type[Or], items: list[QExpr]) -> QExpr:
    out: list[QExpr] = []
    for x in items:
        out.extend(x.items if isinstance(x, kind) else (x,))
    return kind(tuple(out))


_exprs = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: _flat(And, xs))
        | st.lists(inner, min_size=2, max_size=3).map(lambda xs: _flat(Or, xs))
    ),
    max_leaves=8,
)


@given(_exprs)
@settings(max_examples=300)
def test_generated_asts_round_trip(expr: QExpr) -> None:
    assert parse_q(unparse_q(expr)) == expr


@given(
    st.text(alphabet=st.sampled_from(list('ab.[]()!=<>~;|,"\\ 0123456789-:TZe/#+')), max_size=40)
    | st.text(max_size=40)
)
@settings(max_examples=500)
def test_arbitrary_text_fails_only_with_bad_request(text: str) -> None:
    try:
        expr = parse_q(text)
    except BadRequestData:
        return
    assert parse_q(unparse_q(expr)) == expr


@given(st.text(alphabet=st.sampled_from(list("/ab+#;|() ")), max_size=30))
@settings(max_examples=300)
def test_arbitrary_scope_text_fails_only_with_bad_request(text: str) -> None:
    try:
        expr = parse_scope_q(text)
    except BadRequestData:
        return
    assert parse_scope_q(unparse_scope_q(expr)) == expr
