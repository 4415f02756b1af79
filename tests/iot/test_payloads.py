"""IoT Agent payloads parse and map to NGSI-LD attributes, or are refused whole."""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cityos.iot.payloads import (
    MAX_BODY_BYTES,
    MAX_KEY_LENGTH,
    MAX_MEASURES,
    AttributeMapping,
    MeasureMapping,
    Measures,
    PayloadError,
    StaticAttribute,
    parse_json,
    parse_single,
    parse_ul,
    to_attributes,
    to_updates,
)

NOW = datetime(2024, 7, 1, 12, 0, tzinfo=UTC)
NOW_TEXT = "2024-07-01T12:00:00.000000Z"

# The device of iotagent-node-lib doc/api.md.
DEVICE = MeasureMapping(
    attributes=(
        AttributeMapping(object_id="t", name="temperature", type="Float"),
        AttributeMapping(object_id="h", name="humidity", type="Float"),
    )
)


# -- JSON ------------------------------------------------------------------------------------


def test_json_object_from_the_iot_agent_manual() -> None:
    assert parse_json(b'{"h":70,"t":15}') == [Measures({"h": 70, "t": 15})]


def test_json_array_is_one_update_per_element() -> None:
    got = parse_json(b'[{"t":15},{"t":16,"h":70}]')
    assert [m.values for m in got] == [{"t": 15}, {"t": 16, "h": 70}]


def test_json_time_instant_becomes_the_device_timestamp() -> None:
    (m,) = parse_json(b'{"t":15,"TimeInstant":"2016-06-13T00:35:30+09:00"}')
    assert m.values == {"t": 15}
    assert m.timestamp == datetime(2016, 6, 12, 15, 35, 30, tzinfo=UTC)


def test_json_geojson_measure_is_kept() -> None:
    body = b'{"location":{"type":"Point","coordinates":[133.5,33.5]}}'
    assert parse_json(body)[0].values["location"]["coordinates"] == [133.5, 33.5]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty body"),
        (b"  \n", "empty body"),
        (b"[]", "empty array"),
        (b"{}", "no measures"),
        (b'"t"', "got a string"),
        (b"15", "got a number"),
        (b"null", "got null"),
        (b"[[1,2]]", "element [0]: expected an object of measures, got an array"),
        (b'[{"t":1}, 3]', "element [1]: expected an object of measures, got a number"),
        (b'{"t":', "invalid JSON"),
        (b'{"t":NaN}', "invalid JSON"),
        (b'{"t":1}\xff', "not valid UTF-8 at byte 7"),
        (b'{"":1}', "empty measure key"),
        (b'{"a\\u0001b":1}', "control character"),
        (b'{"t":1,"TimeInstant":"yesterday"}', "TimeInstant: 'yesterday' is not an ISO 8601"),
        (b'{"t":1,"TimeInstant":"2016-02-30T00:00:00Z"}', "not a valid date-time"),
    ],
)
def test_json_refusals_say_why(body: bytes, message: str) -> None:
    with pytest.raises(PayloadError) as err:
        parse_json(body)
    assert message in str(err.value)


def test_json_limits() -> None:
    with pytest.raises(PayloadError, match="exceeds the limit"):
        parse_json(b'{"t":"' + b"x" * MAX_BODY_BYTES + b'"}')
    many = b"[" + b",".join(b'{"t":1}' for _ in range(MAX_MEASURES + 1)) + b"]"
    with pytest.raises(PayloadError, match=f"more than {MAX_MEASURES} measures"):
        parse_json(many)
    assert len(parse_json(b"[" + b",".join(b'{"t":1}' for _ in range(MAX_MEASURES)) + b"]")) == (
        MAX_MEASURES
    )


# -- UltraLight 2.0 --------------------------------------------------------------------------


def test_ul_measures_from_the_iot_agent_manual() -> None:
    assert parse_ul("t|15|k|abc") == [Measures({"t": "15", "k": "abc"})]


def test_ul_groups_are_separate_updates() -> None:
    assert parse_ul("gps|1.2/3.4#t|10") == [Measures({"gps": "1.2/3.4"}), Measures({"t": "10"})]


def test_ul_leading_timestamp() -> None:
    (m,) = parse_ul("2016-06-13T00:35:30Z|lle|100")
    assert m == Measures({"lle": "100"}, datetime(2016, 6, 13, 0, 35, 30, tzinfo=UTC))


def test_ul_each_group_keeps_its_own_timestamp() -> None:
    first, second = parse_ul("2016-06-13T00:35:30Z|t|1#t|2")
    assert first.timestamp is not None
    assert second.timestamp is None


def test_ul_accepts_bytes_a_trailing_line_break_and_empty_values() -> None:
    assert parse_ul(b"t|15|s|\r\n") == [Measures({"t": "15", "s": ""})]


def test_ul_values_stay_text() -> None:
    assert parse_ul("n|007|b|true")[0].values == {"n": "007", "b": "true"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty body"),
        ("t", "group 1 at offset 0: odd number of fields (1)"),
        ("t|1|h", "group 1 at offset 0: odd number of fields (3)"),
        ("t|1#h|2|x", "group 2 at offset 4: odd number of fields (3)"),
        ("t|1#", "group 2 at offset 4: empty group"),
        ("#t|1", "group 1 at offset 0: empty group"),
        ("t|1|h|2||3", "key at offset 8: empty key"),
        ("|1", "key at offset 0: empty key"),
        ("t|1|t|2", "key 't' repeated"),
        ("2016-13-01T00:00:00Z|t|1", "not a valid date-time"),
        ("2016-06-13|t|1", "'2016-06-13' is not a timestamp"),
        ("2016-06-13T00:35:30Z", "timestamp without measures"),
        ("t|1\x00", "control character '\\x00' at offset 3"),
        ("t|a\tb", "control character '\\t' at offset 3"),
        ("t|1\nh|2", "control character '\\n' at offset 3"),
    ],
)
def test_ul_refusals_give_the_position(text: str, message: str) -> None:
    with pytest.raises(PayloadError) as err:
        parse_ul(text)
    assert message in str(err.value)


def test_ul_limits() -> None:
    with pytest.raises(PayloadError, match="exceeds the limit"):
        parse_ul("t|" + "x" * MAX_BODY_BYTES)
    with pytest.raises(PayloadError, match="not valid UTF-8"):
        parse_ul(b"t|\xc3")
    with pytest.raises(PayloadError, match=f"more than {MAX_MEASURES}"):
        parse_ul("#".join(f"t|{i}" for i in range(MAX_MEASURES + 1)))


# -- single attribute ------------------------------------------------------------------------


def test_single_json_values() -> None:
    assert parse_single("t", b"15", "json") == Measures({"t": 15})
    assert parse_single("s", b'"on"', "json") == Measures({"s": "on"})


def test_single_json_binary_is_hex_encoded() -> None:
    assert parse_single("raw", b"\x01\xffab", "json") == Measures({"raw": "01ff6162"})


def test_single_ul_value_is_text() -> None:
    assert parse_single("t", b"15\n", "ul") == Measures({"t": "15"})


@pytest.mark.parametrize(
    ("attr", "body", "proto", "message"),
    [
        ("t", b"", "json", "empty value for 't'"),
        ("t", b"", "ul", "empty value for 't'"),
        ("", b"1", "json", "empty measure key"),
        ("t", b"[1,2]", "json", "arrays are not accepted"),
        ("t", b"a\x01", "ul", "control character"),
        ("t", b"\xff", "ul", "not valid UTF-8"),
    ],
)
def test_single_refusals(attr: str, body: bytes, proto: Any, message: str) -> None:
    with pytest.raises(PayloadError) as err:
        parse_single(attr, body, proto)
    assert message in str(err.value)


# -- robustness ------------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_payload_error(body: bytes) -> None:
    for parse in (parse_json, parse_ul):
        with contextlib.suppress(PayloadError):
            parse(body)
    for proto in ("json", "ul"):
        with contextlib.suppress(PayloadError):
            parse_single("t", body, proto)  # type: ignore[arg-type]


@given(st.text(max_size=300))
def test_arbitrary_text_only_raises_payload_error(text: str) -> None:
    with contextlib.suppress(PayloadError):
        for measures in parse_ul(text):
            to_attributes(measures, DEVICE, now=NOW)


_ul_token = st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="|#"))


@given(st.dictionaries(_ul_token.filter(bool), _ul_token, min_size=1, max_size=20))
def test_ul_round_trips_any_well_formed_group(values: dict[str, str]) -> None:
    text = "|".join(f"{k}|{v}" for k, v in values.items())
    if text.rstrip("\r\n") != text or any(len(k) > MAX_KEY_LENGTH for k in values):
        return  # a trailing line break is framing; long keys are refused on purpose
    assert parse_ul(text) == [Measures(values)]


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=20),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
        max_size=10,
    )
)
def test_any_json_measure_maps_or_is_refused(values: dict[str, Any]) -> None:
    mapping = MeasureMapping(
        attributes=(
            AttributeMapping(object_id="n", name="n", type="Number"),
            AttributeMapping(object_id="b", name="b", type="Boolean"),
            AttributeMapping(object_id="p", name="location", type="geo:point"),
        )
    )
    with contextlib.suppress(PayloadError):
        to_attributes(Measures(values), mapping, now=NOW)


# -- mapping ---------------------------------------------------------------------------------


def test_ul_strings_become_numbers_with_observed_at() -> None:
    (m,) = parse_ul("t|15|h|70.5")
    assert to_attributes(m, DEVICE, now=NOW) == {
        "temperature": {"type": "Property", "value": 15.0, "observedAt": NOW_TEXT},
        "humidity": {"type": "Property", "value": 70.5, "observedAt": NOW_TEXT},
    }


def test_device_timestamp_wins_over_now() -> None:
    (m,) = parse_ul("2016-06-13T00:35:30Z|t|15")
    attrs = to_attributes(m, DEVICE, now=NOW)
    assert attrs["temperature"]["observedAt"] == "2016-06-13T00:35:30.000000Z"


def test_timestamp_off_adds_no_observed_at() -> None:
    mapping = MeasureMapping(attributes=DEVICE.attributes, timestamp=False)
    assert "observedAt" not in to_attributes(Measures({"t": "1"}), mapping, now=NOW)["temperature"]


@pytest.mark.parametrize(
    ("attr_type", "value", "expected"),
    [
        ("Number", "15", 15),
        ("Number", "-1.5e2", -150.0),
        ("Number", 3, 3),
        ("Float", "15", 15.0),
        ("Integer", "42", 42),
        ("Integer", 42.0, 42),
        ("Boolean", "true", True),
        ("Boolean", "0", False),
        ("Boolean", False, False),
        ("Text", 12, "12"),
        ("Text", "abc", "abc"),
        (
            "DateTime",
            "2016-06-13T09:35:30+09:00",
            {"@type": "DateTime", "@value": "2016-06-13T00:35:30.000000Z"},
        ),
        ("StructuredValue", {"a": [1]}, {"a": [1]}),
    ],
)
def test_declared_types_convert(attr_type: str, value: Any, expected: Any) -> None:
    mapping = MeasureMapping(
        attributes=(AttributeMapping(object_id="x", name="x", type=attr_type),)
    )
    got = to_attributes(Measures({"x": value}), mapping, now=NOW)["x"]["value"]
    assert got == expected
    assert type(got) is type(expected)


def test_geo_point_becomes_geojson_longitude_first() -> None:
    mapping = MeasureMapping(
        attributes=(AttributeMapping(object_id="p", name="location", type="geo:point"),)
    )
    attrs = to_attributes(Measures({"p": "33.56, 133.53"}), mapping, now=NOW)
    assert attrs["location"] == {
        "type": "GeoProperty",
        "value": {"type": "Point", "coordinates": [133.53, 33.56]},
        "observedAt": NOW_TEXT,
    }


def test_relationship_points_to_an_entity() -> None:
    mapping = MeasureMapping(
        attributes=(AttributeMapping(object_id="r", name="refRiver", type="Relationship"),)
    )
    attrs = to_attributes(Measures({"r": "urn:ngsi-ld:River:akiyama"}), mapping, now=NOW)
    assert attrs["refRiver"]["object"] == "urn:ngsi-ld:River:akiyama"
    assert attrs["refRiver"]["type"] == "Relationship"


@pytest.mark.parametrize(
    ("attr_type", "value", "message"),
    [
        ("Float", "abc", "measure 'x': 'abc' is not a number"),
        ("Number", "1_000", "is not a number"),
        ("Number", "nan", "is not a number"),
        ("Number", "1e999", "out of range"),
        ("Number", True, "needs a number, got a boolean"),
        ("Integer", "1.5", "is not an integer"),
        ("Integer", "99999999999999999999", "out of range"),
        ("Boolean", "yes", "is not a Boolean"),
        ("Text", {"a": 1}, "Text needs a string"),
        ("DateTime", "soon", "not an ISO 8601"),
        ("geo:point", "33.5", "is not 'lat,lon'"),
        ("geo:point", "95,10", "outside latitude/longitude"),
        ("geo:point", "a,b", "is not 'lat,lon'"),
        ("GeoProperty", {"type": "Point"}, "needs 'type' and 'coordinates'"),
        ("Relationship", "not a uri", "needs a URI"),
        ("Text", None, "null is not a value"),
    ],
)
def test_unconvertible_values_name_the_key(attr_type: str, value: Any, message: str) -> None:
    mapping = MeasureMapping(
        attributes=(AttributeMapping(object_id="x", name="x", type=attr_type),)
    )
    with pytest.raises(PayloadError) as err:
        to_attributes(Measures({"x": value}), mapping, now=NOW)
    assert message in str(err.value)


def test_one_bad_measure_refuses_the_whole_message() -> None:
    messages = parse_ul("t|15#t|hot")
    with pytest.raises(PayloadError, match="'hot' is not a number"):
        to_updates(messages, DEVICE, now=NOW)


def test_unit_code_and_other_metadata() -> None:
    mapping = MeasureMapping(
        attributes=(
            AttributeMapping(
                object_id="l",
                name="waterLevel",
                type="Number",
                metadata={"unitCode": {"type": "Text", "value": "MTR"}, "accuracy": 0.01},
            ),
        )
    )
    attrs = to_attributes(Measures({"l": "2.35"}), mapping, now=NOW)
    assert attrs["waterLevel"] == {
        "type": "Property",
        "value": 2.35,
        "unitCode": "MTR",
        "accuracy": {"type": "Property", "value": 0.01},
        "observedAt": NOW_TEXT,
    }


def test_unmapped_keys_keep_their_names_and_id_type_are_renamed() -> None:
    attrs = to_attributes(Measures({"t": "1", "x": "2", "id": "a", "type": "b"}), DEVICE, now=NOW)
    assert list(attrs) == ["temperature", "x", "measure_id", "measure_type"]
    assert attrs["x"]["value"] == "2"


def test_explicit_attrs_drops_unmapped_keys() -> None:
    mapping = MeasureMapping(attributes=DEVICE.attributes, explicit_attrs=True)
    assert list(to_attributes(Measures({"t": "1", "x": "2"}), mapping, now=NOW)) == ["temperature"]


def test_unmapped_key_that_is_no_attribute_name_is_refused() -> None:
    with pytest.raises(PayloadError, match="measure 'a b': not a valid attribute name"):
        to_attributes(Measures({"a b": 1}), DEVICE, now=NOW)


def test_two_keys_on_one_attribute_are_refused() -> None:
    with pytest.raises(PayloadError, match="'t' and 'temperature' both map to attribute"):
        to_attributes(Measures({"t": 1, "temperature": 2}), DEVICE, now=NOW)


def test_static_attributes_join_every_update() -> None:
    mapping = MeasureMapping(
        attributes=DEVICE.attributes,
        static_attributes=(
            StaticAttribute(name="location", type="geo:point", value="33.5,133.5"),
            StaticAttribute(name="refRiver", type="Relationship", value="urn:ngsi-ld:River:hata"),
        ),
    )
    first, second = to_updates(parse_ul("t|1#t|2"), mapping, now=NOW)
    for attrs in (first, second):
        assert attrs["location"] == {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [133.5, 33.5]},
        }
        assert attrs["refRiver"]["object"] == "urn:ngsi-ld:River:hata"
    assert second["temperature"]["value"] == 2.0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: AttributeMapping(name="a b"), "invalid attribute name"),
        (lambda: AttributeMapping(name="id"), "reserved for the entity"),
        (lambda: AttributeMapping(name="x", metadata={"value": 1}), "metadata 'value' is reserved"),
        (lambda: AttributeMapping(name="x", metadata={"unitCode": 3}), "unitCode must be"),
        (
            lambda: MeasureMapping(attributes=(AttributeMapping(name="a", object_id="t"),) * 2),
            "object_id 't' is mapped twice",
        ),
    ],
)
def test_bad_mappings_are_refused(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make()
