"""GeoJSON validation, geo-query parsing and exact matching."""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cityos.broker.errors import BadRequestData
from cityos.broker.geo import (
    MAX_POSITIONS,
    GeoQuery,
    geometry_bbox,
    parse_geoquery,
    point_distance_m,
    validate_geojson,
)

CITY_HALL = [139.57833, 36.3145]  # Sano City Hall, 1 Takasago-cho
STATION = [139.5890, 36.3125]  # near Sano Station, about 1 km east
SQUARE = [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]


def vincenty_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Distance on the WGS84 ellipsoid by Vincenty's inverse formula (the test's reference)."""
    a, f = 6378137.0, 1 / 298.257223563
    b = a * (1 - f)
    u1 = math.atan((1 - f) * math.tan(math.radians(lat1)))
    u2 = math.atan((1 - f) * math.tan(math.radians(lat2)))
    big_l = math.radians(lon2 - lon1)
    lam = big_l
    for _ in range(200):
        sin_l, cos_l = math.sin(lam), math.cos(lam)
        sin_s = math.hypot(
            math.cos(u2) * sin_l, math.cos(u1) * math.sin(u2) - math.sin(u1) * math.cos(u2) * cos_l
        )
        cos_s = math.sin(u1) * math.sin(u2) + math.cos(u1) * math.cos(u2) * cos_l
        sigma = math.atan2(sin_s, cos_s)
        sin_a = math.cos(u1) * math.cos(u2) * sin_l / sin_s
        cos2_a = 1 - sin_a**2
        cos_2sm = cos_s - 2 * math.sin(u1) * math.sin(u2) / cos2_a if cos2_a else 0.0
        c = f / 16 * cos2_a * (4 + f * (4 - 3 * cos2_a))
        prev = lam
        lam = big_l + (1 - c) * f * sin_a * (
            sigma + c * sin_s * (cos_2sm + c * cos_s * (-1 + 2 * cos_2sm**2))
        )
        if abs(lam - prev) < 1e-12:
            break
    u_sq = cos2_a * (a * a - b * b) / (b * b)
    big_a = 1 + u_sq / 16384 * (4096 + u_sq * (-768 + u_sq * (320 - 175 * u_sq)))
    big_b = u_sq / 1024 * (256 + u_sq * (-128 + u_sq * (74 - 47 * u_sq)))
    d_sigma = (
        big_b
        * sin_s
        * (
            cos_2sm
            + big_b
            / 4
            * (
                cos_s * (-1 + 2 * cos_2sm**2)
                - big_b / 6 * cos_2sm * (-3 + 4 * sin_s**2) * (-3 + 4 * cos_2sm**2)
            )
        )
    )
    return b * big_a * (sigma - d_sigma)


def refused(value: Any) -> str:
    with pytest.raises(BadRequestData) as exc:
        validate_geojson(value, "location")
    return exc.value.detail


def point(c: list[Any]) -> dict[str, Any]:
    return {"type": "Point", "coordinates": c}


def polygon(x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Polygon", "coordinates": [ring]}


# -- validation --------------------------------------------------------------------------

VALID = [
    point([139.5, 36.3]),
    point([139.5, 36.3, 42.5]),
    point([-180, -90]),
    {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
    {"type": "Polygon", "coordinates": SQUARE},
    {
        "type": "Polygon",
        "coordinates": [*SQUARE, [[2, 2], [3, 2], [3, 3], [2, 2]]],
    },
    {"type": "MultiPoint", "coordinates": [[0, 0], [1, 1]]},
    {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]], [[2, 2], [3, 3]]]},
    {"type": "MultiPolygon", "coordinates": [SQUARE, [[[20, 20], [21, 20], [21, 21], [20, 20]]]]},
    {"type": "Point", "coordinates": [1, 2], "bbox": [1, 2, 1, 2]},
]


@pytest.mark.parametrize("geometry", VALID, ids=lambda g: str(g["type"]))
def test_valid_geometries_pass(geometry: dict[str, Any]) -> None:
    validate_geojson(geometry, "location")


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ([1, 2], "location: a GeoJSON geometry must be a JSON object"),
        ({"type": "Circle", "coordinates": [1, 2]}, "location: unsupported GeoJSON type 'Circle'"),
        (
            {"type": "GeometryCollection", "geometries": []},
            "location: unsupported GeoJSON type 'GeometryCollection'",
        ),
        ({"type": "Point"}, "location: a Point needs 'coordinates'"),
        (
            {"type": "Point", "coordinates": [1, 2], "crs": {}},
            "location: unexpected GeoJSON member(s) crs",
        ),
        (point([1]), "location: Point must be an array of 2 or 3 numbers"),
        (point([1, 2, 3, 4]), "location: Point must be an array of 2 or 3 numbers"),
        (point(["1", 2]), "location: Point must be an array of 2 or 3 numbers"),
        (point([True, 2]), "location: Point must be an array of 2 or 3 numbers"),
        (point([None, 2]), "location: Point must be an array of 2 or 3 numbers"),
        (point([180.5, 0]), "location: Point longitude 180.5 is outside [-180, 180]"),
        (point([0, -91]), "location: Point latitude -91 is outside [-90, 90]"),
        (point([0, 0, math.inf]), "location: Point altitude inf is not a plausible height"),
        (point([0, math.nan]), "location: Point latitude nan is outside [-90, 90]"),
        (
            {"type": "LineString", "coordinates": [[0, 0]]},
            "location: LineString needs at least 2 positions",
        ),
        (
            {"type": "LineString", "coordinates": [[0, 0], [0, 95]]},
            "location: LineString position 1 latitude 95 is outside [-90, 90]",
        ),
        ({"type": "LineString", "coordinates": {}}, "location: LineString must be an array"),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]},
            "location: Polygon ring 0 is not closed",
        ),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]},
            "location: Polygon ring 0 needs at least 4 positions",
        ),
        (
            {"type": "Polygon", "coordinates": [*SQUARE, [[2, 2], [3, 2], [3, 3], [2, 3]]]},
            "location: Polygon ring 1 is not closed",
        ),
        (
            {"type": "Polygon", "coordinates": []},
            "location: Polygon must be a non-empty array of rings",
        ),
        (
            {"type": "MultiPoint", "coordinates": []},
            "location: MultiPoint must not be empty",
        ),
        (
            {"type": "MultiPoint", "coordinates": [[0, 0], [0]]},
            "location: MultiPoint member 1 must be an array of 2 or 3 numbers",
        ),
        (
            {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]], [[0, 0]]]},
            "location: MultiLineString member 1 needs at least 2 positions",
        ),
        (
            {"type": "MultiPolygon", "coordinates": [SQUARE, [[[0, 0], [1, 0], [1, 1], [0, 1]]]]},
            "location: MultiPolygon member 1 ring 0 is not closed",
        ),
        (
            {"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 0.5], [0, 0]]]]},
            None,  # valid: closes
        ),
        (
            {"type": "Point", "coordinates": [1, 2], "bbox": [1, 2]},
            "location: bbox must be an array of 4 or 6 numbers",
        ),
    ],
)
def test_invalid_geometries_are_refused_with_a_precise_detail(
    value: Any, detail: str | None
) -> None:
    if detail is None:
        validate_geojson(value, "location")
    else:
        assert refused(value).startswith(detail)


def test_nesting_where_a_number_belongs_is_refused() -> None:
    assert refused(point([[1, 2], 3])) == "location: Point must be an array of 2 or 3 numbers"
    deep: Any = [0, 0]
    for _ in range(200):
        deep = [deep]
    assert refused({"type": "MultiPoint", "coordinates": [deep]}) == (
        "location: MultiPoint member 0 must be an array of 2 or 3 numbers"
    )


def test_too_many_positions_are_refused() -> None:
    line = [[0.0, 0.0]] * (MAX_POSITIONS + 1)
    assert refused({"type": "LineString", "coordinates": line}) == (
        f"location: more than {MAX_POSITIONS} positions"
    )
    validate_geojson({"type": "LineString", "coordinates": line[:MAX_POSITIONS]}, "location")


def test_bbox_of_geometries() -> None:
    assert geometry_bbox(point([139.5, 36.3])) == (139.5, 36.3, 139.5, 36.3)
    multi = {
        "type": "MultiPolygon",
        "coordinates": [SQUARE, [[[20, -5], [21, 20], [21, 21], [20, -5]]]],
    }
    assert geometry_bbox(multi) == (0, -5, 21, 21)


@given(
    lon=st.floats(-180, 180, allow_nan=False),
    lat=st.floats(-90, 90, allow_nan=False),
    alt=st.none() | st.floats(-1e4, 1e4, allow_nan=False),
)
def test_random_points_round_trip_through_json_and_validation(
    lon: float, lat: float, alt: float | None
) -> None:
    coords = [lon, lat] if alt is None else [lon, lat, alt]
    geometry = orjson.loads(orjson.dumps(point(coords)))
    validate_geojson(geometry, "location")
    assert geometry["coordinates"] == coords


@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    ),
    st.sampled_from(
        ["Point", "LineString", "Polygon", "MultiPoint", "MultiLineString", "MultiPolygon", "Nope"]
    ),
)
def test_validation_raises_only_bad_request_data(coordinates: Any, gtype: str) -> None:
    detail = "location: (accepted)"
    try:
        validate_geojson({"type": gtype, "coordinates": coordinates}, "location")
    except BadRequestData as exc:
        detail = exc.detail
    assert detail.startswith("location: ")


# -- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("georel", "relation", "max_d", "min_d"),
    [
        ("near;maxDistance==2000", "near", 2000.0, None),
        ("near;minDistance==10.5", "near", None, 10.5),
        ("near;minDistance==10;maxDistance==20", "near", 20.0, 10.0),
        ("within", "within", None, None),
        ("contains", "contains", None, None),
        ("intersects", "intersects", None, None),
        ("equals", "equals", None, None),
        ("disjoint", "disjoint", None, None),
        ("overlaps", "overlaps", None, None),
    ],
)
def test_every_georel_parses(
    georel: str, relation: str, max_d: float | None, min_d: float | None
) -> None:
    q = parse_geoquery(georel, "Point", "[139.5, 36.3]", "location")
    assert (q.georel, q.max_distance, q.min_distance) == (relation, max_d, min_d)
    assert q.reference == point([139.5, 36.3])
    assert q.geoproperty == "location"


def test_coordinates_as_json_string_or_array_give_the_same_query() -> None:
    ring = "[[[139.5,36.3],[139.6,36.3],[139.6,36.4],[139.5,36.3]]]"
    from_get = parse_geoquery("within", "Polygon", ring, "observationSpace")
    from_post = parse_geoquery("within", "Polygon", orjson.loads(ring), "observationSpace")
    assert from_get == from_post
    assert hash(from_get) == hash(from_post)
    assert from_get.geoproperty == "observationSpace"


def test_geoproperty_defaults_to_location() -> None:
    assert parse_geoquery("within", "Polygon", SQUARE, None).geoproperty == "location"


@pytest.mark.parametrize(
    ("args", "detail"),
    [
        ((None, "Point", "[1,2]"), "georel: missing"),
        (("within", None, "[1,2]"), "geometry: missing"),
        (("within", "Point", None), "coordinates: missing"),
        (("inside", "Point", "[1,2]"), "georel: unknown relation 'inside'"),
        (("near", "Point", "[1,2]"), "georel: near needs maxDistance"),
        (("near;maxDistance=5", "Point", "[1,2]"), "georel: 'maxDistance=5' is not"),
        (("near;maxDistance==-5", "Point", "[1,2]"), "georel: 'maxDistance==-5' is not"),
        (("near;maxDistance==nan", "Point", "[1,2]"), "georel: 'maxDistance==nan' is not"),
        (("near;maxDistance==1;maxDistance==2", "Point", "[1,2]"), "georel: maxDistance given"),
        (("near;minDistance==9;maxDistance==2", "Point", "[1,2]"), "georel: minDistance is larger"),
        (("within;maxDistance==2", "Point", "[1,2]"), "georel: within takes no modifiers"),
        (("within", "point", "[1,2]"), "geometry: unsupported geometry 'point'"),
        (("within", "Point", "[1,2"), "coordinates: not a valid JSON array"),
        (("within", "Point", "[1,200]"), "coordinates: Point latitude 200 is outside"),
        (
            ("within", "Polygon", "[[[0,0],[1,0],[1,1],[0,1]]]"),
            "coordinates: Polygon ring 0 is not closed",
        ),
        (
            ("within", "Polygon", "[[[0,0],[1,1],[1,0],[0,1],[0,0]]]"),
            "coordinates: Polygon is not valid (Self-intersection",
        ),
    ],
)
def test_parse_errors_name_the_parameter(args: tuple[Any, Any, Any], detail: str) -> None:
    with pytest.raises(BadRequestData) as exc:
        parse_geoquery(*args, "location")
    assert exc.value.detail.startswith(detail)


@given(st.text(max_size=60), st.text(max_size=20), st.text(max_size=80))
def test_parser_raises_only_bad_request_data_on_arbitrary_strings(
    georel: str, geometry: str, coordinates: str
) -> None:
    with contextlib.suppress(BadRequestData):
        parse_geoquery(georel, geometry, coordinates, "location")


@given(
    st.sampled_from(["near;maxDistance==", "near;minDistance==", "within", "intersects"]),
    st.text(alphabet="0123456789.;=e-", max_size=12),
    st.lists(st.floats() | st.integers(-(2**63), 2**63 - 1) | st.booleans(), max_size=4).map(
        orjson.dumps
    ),
)
def test_parser_raises_only_bad_request_data_on_near_miss_input(
    georel: str, tail: str, coordinates: bytes
) -> None:
    with contextlib.suppress(BadRequestData):
        parse_geoquery(georel + tail, "Point", coordinates.decode(), "location")


# -- distances and matching ----------------------------------------------------------------


def test_city_hall_to_station_distance_matches_the_ellipsoid() -> None:
    q = parse_geoquery("near;maxDistance==2000", "Point", orjson.dumps(CITY_HALL).decode())
    d = q.distance_m(point(STATION))
    expected = vincenty_m(*CITY_HALL, *STATION)
    assert 950 < expected < 1050
    assert abs(d - expected) / expected < 1e-4


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((139.45, 36.25), (139.70, 36.50)),  # across Sano, ~36 km
        ((139.5783, 36.3145), (139.5783, 36.4145)),  # due north, 11 km
        ((139.5783, 36.3145), (139.6783, 36.3145)),  # due east, 9 km
        ((139.5783, 36.3145), (139.7671, 35.6812)),  # Sano to Tokyo Station, ~72 km
        ((139.5783, 36.3145), (135.5023, 34.6937)),  # Sano to Osaka, ~410 km
        ((179.99, 0.0), (-179.99, 0.0)),  # across the antimeridian, 2.2 km
    ],
)
def test_point_distances_within_a_fraction_of_a_percent(
    a: tuple[float, float], b: tuple[float, float]
) -> None:
    expected = vincenty_m(*a, *b)
    tolerance = 1e-3 if expected < 100_000 else 5e-3
    assert abs(point_distance_m(*a, *b) - expected) / expected < tolerance


def test_near_max_distance_includes_and_excludes_around_the_true_distance() -> None:
    d = vincenty_m(*CITY_HALL, *STATION)
    ref = orjson.dumps(CITY_HALL).decode()
    assert parse_geoquery(f"near;maxDistance=={d * 1.002:.1f}", "Point", ref).matches(
        point(STATION)
    )
    assert not parse_geoquery(f"near;maxDistance=={d * 0.998:.1f}", "Point", ref).matches(
        point(STATION)
    )
    assert parse_geoquery(f"near;minDistance=={d * 0.998:.1f}", "Point", ref).matches(
        point(STATION)
    )
    assert not parse_geoquery(f"near;minDistance=={d * 1.002:.1f}", "Point", ref).matches(
        point(STATION)
    )
    ring = parse_geoquery("near;minDistance==500;maxDistance==2000", "Point", ref)
    assert ring.matches(point(STATION))
    assert not ring.matches(point(CITY_HALL))


def test_near_measures_to_the_closest_part_of_a_shape() -> None:
    # a north-south road 0.01° east of the city hall: 0.01° of longitude at 36.31° N
    lon, lat = CITY_HALL
    road = {"type": "LineString", "coordinates": [[lon + 0.01, lat - 0.1], [lon + 0.01, lat + 0.1]]}
    q = parse_geoquery("near;maxDistance==1000", "Point", orjson.dumps(CITY_HALL).decode())
    expected = vincenty_m(lon, lat, lon + 0.01, lat)
    assert abs(q.distance_m(road) - expected) / expected < 1e-3
    assert q.matches(road)
    block = polygon(lon - 0.001, lat - 0.001, lon + 0.001, lat + 0.001)
    assert q.distance_m(block) == 0.0


def test_relations_between_polygons() -> None:
    big = polygon(0, 0, 10, 10)
    inner = polygon(2, 2, 4, 4)
    straddling = polygon(8, 8, 12, 12)
    touching = polygon(10, 0, 12, 2)
    far = polygon(20, 20, 21, 21)

    def rel(georel: str, target: dict[str, Any], ref: dict[str, Any] = big) -> bool:
        return parse_geoquery(georel, ref["type"], ref["coordinates"]).matches(target)

    assert rel("within", inner)
    assert not rel("within", straddling)
    assert not rel("within", big, inner)
    assert rel("contains", big, inner)
    assert not rel("contains", inner)
    assert rel("intersects", straddling)
    assert rel("intersects", touching)
    assert not rel("intersects", far)
    assert rel("overlaps", straddling)
    assert not rel("overlaps", inner)
    assert not rel("overlaps", touching)
    assert rel("disjoint", far)
    assert not rel("disjoint", touching)
    assert rel("equals", polygon(0, 0, 10, 10))
    # the same square starting at another corner is topologically equal
    assert rel(
        "equals",
        {"type": "Polygon", "coordinates": [[[10, 10], [0, 10], [0, 0], [10, 0], [10, 10]]]},
    )
    assert not rel("equals", inner)


def test_points_against_a_polygon() -> None:
    q = parse_geoquery("within", "Polygon", SQUARE)
    assert q.matches(point([5, 5]))
    assert q.matches(point([5, 5, 100]))
    assert not q.matches(point([10, 5]))  # on the boundary is not within
    assert parse_geoquery("intersects", "Polygon", SQUARE).matches(point([10, 5]))
    assert parse_geoquery("equals", "Point", "[5, 5]").matches(point([5, 5]))


def test_a_self_intersecting_stored_polygon_still_gets_answers() -> None:
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    validate_geojson(bowtie, "location")  # structurally fine, topologically not
    assert parse_geoquery("within", "Polygon", SQUARE).matches(bowtie)
    assert not parse_geoquery("disjoint", "Polygon", SQUARE).matches(bowtie)


def test_bbox_bounds_matching_geometries() -> None:
    assert parse_geoquery("within", "Polygon", SQUARE).bbox() == (0, 0, 10, 10)
    assert parse_geoquery("disjoint", "Polygon", SQUARE).bbox() is None
    assert parse_geoquery("near;minDistance==5", "Point", "[1,2]").bbox() is None
    q = parse_geoquery("near;maxDistance==2000", "Point", orjson.dumps(CITY_HALL).decode())
    box = q.bbox()
    assert box is not None
    minx, miny, maxx, maxy = box
    lon, lat = CITY_HALL
    # the box reaches a bit beyond 2 km in each direction, not much further
    for edge in ((minx, lat), (maxx, lat), (lon, miny), (lon, maxy)):
        assert 2000 < vincenty_m(lon, lat, *edge) < 2050


def test_bbox_wraps_to_all_longitudes_at_the_antimeridian_and_poles() -> None:
    at_180 = parse_geoquery("near;maxDistance==5000", "Point", "[179.99, 0]").bbox()
    assert at_180 is not None
    assert (at_180[0], at_180[2]) == (-180.0, 180.0)
    pole = parse_geoquery("near;maxDistance==5000", "Point", "[10, 89.99]").bbox()
    assert pole is not None
    assert (pole[0], pole[2], pole[3]) == (-180.0, 180.0, 90.0)


@given(
    lon=st.floats(139.45, 139.70),
    lat=st.floats(36.25, 36.50),
    bearing=st.floats(0, 2 * math.pi),
    dist=st.floats(1, 5000),
)
def test_near_bbox_never_excludes_a_match(
    lon: float, lat: float, bearing: float, dist: float
) -> None:
    target = [
        lon + dist * math.sin(bearing) / (111_320 * math.cos(math.radians(lat))),
        lat + dist * math.cos(bearing) / 110_950,
    ]
    # the target lies exactly at maxDistance, the hardest case for the box
    q = GeoQuery("near", "Point", (lon, lat), max_distance=point_distance_m(lon, lat, *target))
    box = q.bbox()
    assert box is not None
    assert q.matches(point(target))
    assert box[0] <= target[0] <= box[2]
    assert box[1] <= target[1] <= box[3]


def test_one_query_used_from_several_threads_agrees() -> None:
    q = parse_geoquery("within", "Polygon", "[[[0,0],[10,0],[10,10],[0,10],[0,0]]]")
    targets = [point([x / 7, x / 9]) for x in range(200)]
    expected = [q.matches(t) for t in targets]
    results: list[list[bool]] = []

    def work() -> None:
        results.append([q.matches(t) for t in targets])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4
