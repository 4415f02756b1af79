"""The entity type selection language of the type parameter."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityos.broker.errors import BadRequestData
from cityos.broker.typesel import (
    TypeAnd,
    TypeName,
    TypeOr,
    map_type_names,
    parse_type_selection,
    type_names,
    unparse_type_selection,
)

A, B, C = TypeName("A"), TypeName("B"), TypeName("C")


@pytest.mark.parametrize(
    ("text", "expr"),
    [
        ("A", A),
        ("A,B", TypeOr((A, B))),
        ("A|B", TypeOr((A, B))),
        ("A,B|C", TypeOr((A, B, C))),
        ("A;B", TypeAnd((A, B))),
        ("A;B,C", TypeOr((TypeAnd((A, B)), C))),
        ("A,B;C", TypeOr((A, TypeAnd((B, C))))),
        ("(A,B);C", TypeAnd((TypeOr((A, B)), C))),
        ("((A))", A),
        (" A , B ", TypeOr((A, B))),
        (
            "https://smartdatamodels.org/dataModel.Environment/WaterLevelObserved,schema:Place",
            TypeOr(
                (
                    TypeName(
                        "https://smartdatamodels.org/dataModel.Environment/WaterLevelObserved"
                    ),
                    TypeName("schema:Place"),
                )
            ),
        ),
    ],
)
def test_parse(text: str, expr: object) -> None:
    assert parse_type_selection(text) == expr


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("", "Invalid type: expected a type name, found the end at position 0"),
        ("A,", "Invalid type: expected a type name, found the end at position 2"),
        ("(A", "Invalid type: unexpected end at position 2"),
        ("A)", "Invalid type: unexpected ')' at position 1"),
        ("A B", "Invalid type: unexpected 'B' at position 2"),
        ("A;;B", "Invalid type: expected a type name, found ';' at position 2"),
        ('"A"', "Invalid type: expected a type name, found '\"' at position 0"),
    ],
)
def test_errors(text: str, detail: str) -> None:
    with pytest.raises(BadRequestData) as exc:
        parse_type_selection(text)
    assert exc.value.detail == detail


def test_hostile_input_is_refused() -> None:
    with pytest.raises(BadRequestData, match="nest deeper"):
        parse_type_selection("(" * 40 + "A" + ")" * 40)
    with pytest.raises(BadRequestData, match="longer than"):
        parse_type_selection("A," * 5000 + "A")


def test_map_and_names() -> None:
    expr = parse_type_selection("(A,B);C")
    mapped = map_type_names(expr, lambda t: "https://example.org/" + t)
    assert unparse_type_selection(mapped) == (
        "(https://example.org/A,https://example.org/B);https://example.org/C"
    )
    assert type_names(expr) == {"A", "B", "C"}


_names = st.sampled_from(["A", "B", "C", "schema:D", "https://x.org/ns#E"]).map(TypeName)


def _flat(kind: type[TypeAnd] | type[TypeOr], xs: list[object]) -> object:
    out: list[object] = []
    for x in xs:
        out.extend(x.items if isinstance(x, kind) else (x,))
    return kind(tuple(out))  # type: ignore[arg-type]


_exprs = st.recursive(
    _names,
    lambda inner: (
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: _flat(TypeAnd, xs))
        | st.lists(inner, min_size=2, max_size=3).map(lambda xs: _flat(TypeOr, xs))
    ),
    max_leaves=8,
)


@given(_exprs)
@settings(max_examples=200)
def test_round_trip(expr: TypeName | TypeAnd | TypeOr) -> None:
    assert parse_type_selection(unparse_type_selection(expr)) == expr


@given(st.text(alphabet=st.sampled_from(list("AB,;|() :/")), max_size=30) | st.text(max_size=30))
@settings(max_examples=300)
def test_arbitrary_text_fails_only_with_bad_request(text: str) -> None:
    try:
        expr = parse_type_selection(text)
    except BadRequestData:
        return
    assert parse_type_selection(unparse_type_selection(expr)) == expr
