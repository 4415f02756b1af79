"""Which policy area a request path belongs to: the one table every endpoint is checked by.

The first matching prefix wins. `None` areas are not checked here: the IoT south-bound
measure endpoints keep the IoT Agent's own `k=` apikey, health is for load balancers, and
/public/ is static. POSTs that only query (`entityOperations/query`) are reads.
"""

from __future__ import annotations

from typing import Final, Literal

from cityos.auth.policy import Action, Area

Shape = Literal["ngsi", "ckan", "iot"]

#: path prefix -> area (None: not checked by the access policy)
AREAS: Final[tuple[tuple[str, Area | None], ...]] = (
    ("/-/health", None),
    ("/public", None),
    ("/iot/json", None),  # south-bound measures: authenticated by the group's apikey (k=)
    ("/iot/d", None),
    ("/iot/about", None),
    ("/ngsi-ld/v1/subscriptions", "subscriptions"),
    ("/ngsi-ld/v1/temporal", "temporal"),
    ("/ngsi-ld/v1/jsonldContexts", "entities"),
    ("/ngsi-ld/v1", "entities"),
    ("/iot/groups", "iot"),
    ("/iot/devices", "iot"),
    ("/iot/services", "iot"),
    ("/admin/portal", "portal_admin"),
    ("/api/3/action/datastore_", "datastore"),
    ("/api/action/datastore_", "datastore"),
    ("/api/3/action", "catalog"),
    ("/api/action", "catalog"),
    # the catalog's pages, uploaded files and dumps show datasets as the API does
    ("/dataset", "catalog"),
    ("/organization", "catalog"),
    ("/catalog", "catalog"),
    ("/datastore/dump", "datastore"),
)
#: areas with one instance per installation: the catalog, the portal, keys, the audit log and
#: the demo belong to the default tenant whatever tenant header a request carries
SINGLE_TENANT: Final[frozenset[str]] = frozenset(
    {"catalog", "datastore", "portal_admin", "keys", "audit", "demo"}
)
#: POST paths that read (a query too long for a URL)
QUERY_POSTS: Final = frozenset(
    {"/ngsi-ld/v1/entityOperations/query", "/ngsi-ld/v1/temporal/entityOperations/query"}
)
READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
#: CKAN action names that read, by their ending (CKAN's own naming); every other action is a
#: write whatever the method, since CKAN clients may send any action as a GET
_READ_ACTION_ENDINGS: Final = ("_show", "_list", "_search", "_search_sql", "_info", "_read")
_ACTION_PREFIXES: Final = ("/api/3/action/", "/api/action/")


def _under(path: str, prefix: str) -> bool:
    if prefix.endswith("_"):  # an action name's start
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


#: the NGSI-LD API's areas by the path's first segment after /ngsi-ld/v1/ (the hot path)
_NGSI_PREFIX: Final = "/ngsi-ld/v1/"
_NGSI_SEGMENTS: Final[dict[str, Area]] = {"subscriptions": "subscriptions", "temporal": "temporal"}


def area_of(path: str) -> Area | None:
    """Return the policy area of a path, or None when the policy does not govern it."""
    if path.startswith(_NGSI_PREFIX):  # the same answer as the table, without walking it
        segment = path[len(_NGSI_PREFIX) :].split("/", 1)[0]
        return _NGSI_SEGMENTS.get(segment, "entities")
    for prefix, area in AREAS:
        if _under(path, prefix):
            return area
    return None


def action_of(method: str, path: str) -> Action:
    """Return whether a request reads or writes."""
    if path.startswith("/api/"):
        for prefix in _ACTION_PREFIXES:
            if path.startswith(prefix):
                return catalog_action_of(path[len(prefix) :].rstrip("/"))
    if method in READ_METHODS or (method == "POST" and path.rstrip("/") in QUERY_POSTS):
        return "read"
    return "write"


def catalog_action_of(name: str) -> Action:
    """Return whether a CKAN action reads or writes, from its name (unknown ones write)."""
    return "read" if name.endswith(_READ_ACTION_ENDINGS) else "write"


def shape_of(path: str) -> Shape:
    """Return the error shape clients of this path expect."""
    if path.startswith("/api/"):
        return "ckan"
    if path.startswith("/iot/"):
        return "iot"
    return "ngsi"
