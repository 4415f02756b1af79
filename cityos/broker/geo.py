"""GeoJSON geometry validation (RFC 7946) and NGSI-LD geo-queries (GS CIM 009 clause 4.10).

Geo-queries compare an entity's geometry (the *target*) with the query's geometry (the
*reference*): ``within`` means the target lies within the reference. Distances are meters on
the WGS84 ellipsoid, computed in a local tangent plane around the reference, which is exact
to well under 0.1 % at city scale; beyond 100 km a spherical great-circle distance is used.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final

import orjson
import shapely
from shapely.errors import GEOSException
from shapely.geometry import shape
from shapely.ops import nearest_points
from shapely.validation import explain_validity

from cityos.broker.errors import BadRequestData

MAX_POSITIONS: Final = 100_000
GEOMETRY_TYPES: Final = (
    "Point",
    "LineString",
    "Polygon",
    "MultiPoint",
    "MultiLineString",
    "MultiPolygon",
)
RELATIONS: Final = ("near", "within", "contains", "intersects", "equals", "disjoint", "overlaps")
_GEOJSON_MEMBERS: Final = frozenset({"type", "coordinates", "bbox"})
_DISTANCE = re.compile(r"(maxDistance|minDistance)==([0-9]{1,12}(?:\.[0-9]{1,9})?)")

# WGS84 ellipsoid
_A: Final = 6378137.0
_F: Final = 1 / 298.257223563
_E2: Final = _F * (2 - _F)
_MEAN_RADIUS: Final = 6371008.8
_MIN_RADIUS: Final = _A * (1 - _E2)  # meridional radius at the equator, the smallest one
_FLAT_LIMIT_M: Final = 100_000.0


# -- validation -------------------------------------------------------------------------


class _Budget:
    """Count positions so a huge geometry is refused before it costs much."""

    __slots__ = ("field", "left")

    def __init__(self, field: str) -> None:
        self.field = field
        self.left = MAX_POSITIONS

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise BadRequestData(f"{self.field}: more than {MAX_POSITIONS} positions")


def _position(pos: Any, field: str, where: str) -> None:
    if type(pos) is not list or not 2 <= len(pos) <= 3:
        raise BadRequestData(f"{field}: {where} must be an array of 2 or 3 numbers")
    for n in pos:
        # bool is an int subclass; JSON true is not a coordinate
        if type(n) is not float and type(n) is not int:
            raise BadRequestData(f"{field}: {where} must be an array of 2 or 3 numbers")
    lon, lat = pos[0], pos[1]
    if not -180 <= lon <= 180:
        raise BadRequestData(f"{field}: {where} longitude {lon} is outside [-180, 180]")
    if not -90 <= lat <= 90:
        raise BadRequestData(f"{field}: {where} latitude {lat} is outside [-90, 90]")
    # the range test also refuses NaN, infinities and integers too large for a float
    if len(pos) == 3 and not -1e12 <= pos[2] <= 1e12:
        raise BadRequestData(f"{field}: {where} altitude {pos[2]} is not a plausible height")


def _array(value: Any, field: str, what: str, minimum: int, budget: _Budget) -> list[Any]:
    if type(value) is not list:
        raise BadRequestData(f"{field}: {what} must be an array")
    if len(value) < minimum:
        need = "must not be empty" if minimum == 1 else f"needs at least {minimum} positions"
        raise BadRequestData(f"{field}: {what} {need}")
    budget.take(len(value))
    return value


def _is_position(pos: Any) -> bool:
    if type(pos) is not list or not 2 <= len(pos) <= 3:
        return False
    for n in pos:
        if type(n) is not float and type(n) is not int:
            return False
    return (
        -180 <= pos[0] <= 180 and -90 <= pos[1] <= 90 and (len(pos) == 2 or -1e12 <= pos[2] <= 1e12)
    )


def _positions(positions: list[Any], field: str, what: str) -> None:
    for i, pos in enumerate(positions):
        # the quick test first: building a message per position would dominate big shapes
        if not _is_position(pos):
            _position(pos, field, f"{what} position {i}")


def _line(value: Any, field: str, what: str, budget: _Budget) -> None:
    _positions(_array(value, field, what, 2, budget), field, what)


def _polygon(value: Any, field: str, what: str, budget: _Budget) -> None:
    if type(value) is not list or not value:
        raise BadRequestData(f"{field}: {what} must be a non-empty array of rings")
    for r, ring in enumerate(value):
        name = f"{what} ring {r}"
        positions = _array(ring, field, name, 4, budget)
        _positions(positions, field, name)
        if positions[0] != positions[-1]:
            raise BadRequestData(f"{field}: {name} is not closed")


def validate_geojson(value: Any, field: str) -> None:
    """Refuse anything that is not a well-formed RFC 7946 geometry (GeometryCollection excluded)."""
    if not isinstance(value, dict):
        raise BadRequestData(f"{field}: a GeoJSON geometry must be a JSON object")
    gtype = value.get("type")
    if gtype not in GEOMETRY_TYPES:
        raise BadRequestData(
            f"{field}: unsupported GeoJSON type {gtype!r} (expected one of "
            f"{', '.join(GEOMETRY_TYPES)})"
        )
    extra = value.keys() - _GEOJSON_MEMBERS
    if extra:
        raise BadRequestData(f"{field}: unexpected GeoJSON member(s) {', '.join(sorted(extra))}")
    if "coordinates" not in value:
        raise BadRequestData(f"{field}: a {gtype} needs 'coordinates'")
    coords = value["coordinates"]
    if gtype == "Point":
        _position(coords, field, "Point")
    else:
        budget = _Budget(field)
        if gtype == "LineString":
            _line(coords, field, "LineString", budget)
        elif gtype == "Polygon":
            _polygon(coords, field, "Polygon", budget)
        else:
            parts = _array(coords, field, gtype, 1, budget)
            for i, part in enumerate(parts):
                what = f"{gtype} member {i}"
                if gtype == "MultiPoint":
                    _position(part, field, what)
                elif gtype == "MultiLineString":
                    _line(part, field, what, budget)
                else:
                    _polygon(part, field, what, budget)
    if "bbox" in value:
        box = value["bbox"]
        if (
            type(box) is not list
            or len(box) not in (4, 6)
            or any(type(n) is not float and type(n) is not int for n in box)
        ):
            raise BadRequestData(f"{field}: bbox must be an array of 4 or 6 numbers")


def geometry_bbox(geometry: dict[str, Any]) -> tuple[float, float, float, float]:
    """Return (minx, miny, maxx, maxy) of a validated GeoJSON geometry."""
    coords = geometry["coordinates"]
    if geometry["type"] == "Point":
        x, y = float(coords[0]), float(coords[1])
        return x, y, x, y
    xs: list[float] = []
    ys: list[float] = []
    stack: list[Any] = [coords]
    while stack:
        item = stack.pop()
        if item and type(item[0]) is list:
            stack.extend(item)
        elif item:
            xs.append(item[0])
            ys.append(item[1])
    if not xs:
        raise ValueError("geometry has no positions")
    return float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))


# -- distances ---------------------------------------------------------------------------


def meters_per_degree(lat: float) -> tuple[float, float]:
    """Return meters per degree of (longitude, latitude) at a latitude on WGS84."""
    s = math.sin(math.radians(lat))
    w = 1 - _E2 * s * s
    n = _A / math.sqrt(w)
    m = _A * (1 - _E2) / (w * math.sqrt(w))
    return math.radians(n * math.cos(math.radians(lat))), math.radians(m)


def point_distance_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Return the distance in meters between two WGS84 positions."""
    dlon = (lon2 - lon1 + 180.0) % 360.0 - 180.0
    dlat = lat2 - lat1
    kx, ky = meters_per_degree((lat1 + lat2) / 2)
    flat = math.hypot(dlon * kx, dlat * ky)
    if flat <= _FLAT_LIMIT_M:
        return flat
    # far apart the tangent plane bends too much: use the great circle
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(dlon) / 2) ** 2
    )
    return 2 * _MEAN_RADIUS * math.asin(min(1.0, math.sqrt(h)))


# -- geo-queries -------------------------------------------------------------------------


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def _thaw(value: Any) -> Any:
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value


@dataclass(frozen=True)
class GeoQuery:
    """A parsed geo-query: ``target <georel> reference``, optionally bounded by distances."""

    georel: str
    geometry: str
    coordinates: Any  # nested tuples, so the query is hashable
    geoproperty: str = "location"
    max_distance: float | None = None
    min_distance: float | None = None
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    @property
    def reference(self) -> dict[str, Any]:
        """Return the reference geometry as GeoJSON."""
        return {"type": self.geometry, "coordinates": _thaw(self.coordinates)}

    @cached_property
    def _shape(self) -> Any:
        geom = shape(self.reference)
        shapely.prepare(geom)
        return geom

    @cached_property
    def _origin(self) -> tuple[float, float, float, float]:
        """Return the local projection: (lon0, lat0, meters/deg lon, meters/deg lat)."""
        minx, miny, maxx, maxy = geometry_bbox(self.reference)
        lon0, lat0 = (minx + maxx) / 2, (miny + maxy) / 2
        kx, ky = meters_per_degree(lat0)
        return lon0, lat0, kx, ky

    @cached_property
    def _projected(self) -> Any:
        geom = self._project(shape(self.reference))
        shapely.prepare(geom)
        return geom

    def _project(self, geom: Any) -> Any:
        lon0, lat0, kx, ky = self._origin
        return shapely.transform(geom, lambda c: (c - (lon0, lat0)) * (kx, ky))

    def _unproject(self, point: Any) -> tuple[float, float]:
        lon0, lat0, kx, ky = self._origin
        return lon0 + point.x / kx, lat0 + point.y / ky

    def distance_m(self, geometry: dict[str, Any]) -> float:
        """Return the distance in meters between a GeoJSON geometry and the reference."""
        if self.geometry == "Point" and geometry["type"] == "Point":
            lon, lat = self.coordinates[0], self.coordinates[1]
            c = geometry["coordinates"]
            return point_distance_m(lon, lat, c[0], c[1])
        target = self._project(shape(geometry))
        try:
            with self._lock:
                if self._projected.intersects(target):
                    return 0.0
                a, b = nearest_points(self._projected, target)
        except GEOSException:
            return math.inf  # an invalid stored geometry is near nothing
        # measure between the nearest points again so long distances stay accurate
        return point_distance_m(*self._unproject(a), *self._unproject(b))

    def matches(self, geometry: dict[str, Any]) -> bool:
        """Return whether a GeoJSON geometry (the target) satisfies the query."""
        rel = self.georel
        if rel == "near":
            d = self.distance_m(geometry)
            if self.max_distance is not None and d > self.max_distance:
                return False
            return self.min_distance is None or d >= self.min_distance
        if geometry["type"] == "Point":
            c = geometry["coordinates"]
            target = shapely.Point(c[0], c[1])
        else:
            target = shape(geometry)
        try:
            return self._relate(rel, target)
        except GEOSException:
            # an invalid stored polygon (e.g. self-intersecting) matches nothing
            return False

    def _relate(self, rel: str, target: Any) -> bool:
        ref = self._shape
        # GEOS builds a prepared geometry's indexes lazily: one thread at a time
        with self._lock:
            if rel == "within":
                return bool(ref.contains(target))
            if rel == "contains":
                return bool(ref.within(target))
            if rel == "intersects":
                return bool(ref.intersects(target))
            if rel == "disjoint":
                return bool(ref.disjoint(target))
            if rel == "overlaps":
                return bool(ref.overlaps(target))
            return bool(ref.equals(target))

    def bbox(self) -> tuple[float, float, float, float] | None:
        """Return the lon/lat box every matching geometry intersects (None when unbounded)."""
        if self.georel == "disjoint" or (self.georel == "near" and self.max_distance is None):
            return None
        minx, miny, maxx, maxy = geometry_bbox(self.reference)
        if self.max_distance is None:
            return minx, miny, maxx, maxy
        # a spherical cap with the smallest WGS84 radius and 1 % slack contains every
        # position within the distance on the ellipsoid
        delta = self.max_distance * 1.01 / _MIN_RADIUS
        dlat = math.degrees(delta)
        miny, maxy = max(-90.0, miny - dlat), min(90.0, maxy + dlat)
        cos_lat = math.cos(math.radians(max(abs(miny), abs(maxy))))
        if math.sin(delta) >= cos_lat:
            return -180.0, miny, 180.0, maxy
        dlon = math.degrees(math.asin(math.sin(delta) / cos_lat))
        minx, maxx = minx - dlon, maxx + dlon
        if minx < -180 or maxx > 180:
            return -180.0, miny, 180.0, maxy
        return minx, miny, maxx, maxy


def _parse_georel(raw: str) -> tuple[str, float | None, float | None]:
    rel, *mods = raw.split(";")
    if rel not in RELATIONS:
        raise BadRequestData(
            f"georel: unknown relation {rel!r} (expected one of {', '.join(RELATIONS)})"
        )
    if rel != "near":
        if mods:
            raise BadRequestData(f"georel: {rel} takes no modifiers, got {raw!r}")
        return rel, None, None
    if not mods:
        raise BadRequestData("georel: near needs maxDistance==<meters> or minDistance==<meters>")
    found: dict[str, float] = {}
    for mod in mods:
        m = _DISTANCE.fullmatch(mod)
        if m is None:
            raise BadRequestData(
                f"georel: {mod!r} is not maxDistance==<meters> or minDistance==<meters>"
            )
        if m.group(1) in found:
            raise BadRequestData(f"georel: {m.group(1)} given more than once")
        found[m.group(1)] = float(m.group(2))
    lo, hi = found.get("minDistance"), found.get("maxDistance")
    if lo is not None and hi is not None and lo > hi:
        raise BadRequestData("georel: minDistance is larger than maxDistance")
    return rel, hi, lo


def parse_geoquery(
    georel: str | None,
    geometry: str | None,
    coordinates: str | list[Any] | None,
    geoproperty: str | None = "location",
) -> GeoQuery:
    """Parse the georel, geometry, coordinates and geoproperty request parameters."""
    if georel is None:
        raise BadRequestData("georel: missing (required with geometry and coordinates)")
    if geometry is None:
        raise BadRequestData("geometry: missing (required with georel and coordinates)")
    if coordinates is None:
        raise BadRequestData("coordinates: missing (required with georel and geometry)")
    if not isinstance(georel, str):
        raise BadRequestData("georel: must be a string")
    rel, max_d, min_d = _parse_georel(georel)
    if geometry not in GEOMETRY_TYPES:
        raise BadRequestData(
            f"geometry: unsupported geometry {geometry!r} (expected one of "
            f"{', '.join(GEOMETRY_TYPES)})"
        )
    if isinstance(coordinates, str):
        try:
            coords = orjson.loads(coordinates)
        except orjson.JSONDecodeError:
            raise BadRequestData("coordinates: not a valid JSON array") from None
    else:
        coords = coordinates
    validate_geojson({"type": geometry, "coordinates": coords}, "coordinates")
    query = GeoQuery(rel, geometry, _freeze(coords), geoproperty or "location", max_d, min_d)
    if geometry in ("Polygon", "MultiPolygon") and not query._shape.is_valid:
        raise BadRequestData(
            f"coordinates: {geometry} is not valid ({explain_validity(query._shape)})"
        )
    return query
