"""Who may do what: one decision for every endpoint, free of HTTP and SQL.

An endpoint describes what a request wants as an `Operation`, asks `Policy.decide` with the
request's `Principal`, and answers the `Decision`: allowed, or its status (401 without a
credential, 403 with one that lacks the right, 404 when the caller may not even learn that
the tenant exists) and a sentence for the error message.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Final, Literal, get_args

from cityos.broker.model import DEFAULT_VOCAB

Kind = Literal["anonymous", "key", "user", "token"]
Action = Literal["read", "write", "admin"]
Area = Literal[
    "entities",
    "subscriptions",
    "temporal",
    "iot",
    "catalog",
    "datastore",
    "portal_admin",
    "keys",
    "audit",
    "demo",
]
Role = Literal["admin", "steward", "operator", "app"]
Visibility = Literal["public", "restricted"]

ACTIONS: Final[frozenset[str]] = frozenset(get_args(Action))
AREAS: Final[frozenset[str]] = frozenset(get_args(Area))
ROLES: Final[frozenset[str]] = frozenset(get_args(Role))
#: a tenant or scope entry that stands for every tenant or every scope
ALL: Final = "*"

#: public safety data anyone may read: river and rain gauges, weather, shelters, alerts and
#: points of interest (AEDs); short names and their IRIs in the default @vocab
PUBLIC_TYPES: Final = (
    "WaterObserved",
    "WeatherObserved",
    "EvacuationShelter",
    "Alert",
    "PointOfInterest",
)

#: what each role may do in its tenants (an app may do only what its scopes say)
_GRANTS: Final[dict[str, frozenset[tuple[str, str]]]] = {
    "admin": frozenset((action, area) for action in ACTIONS for area in AREAS),
    "steward": frozenset(
        (action, area)
        for action in ("read", "write")
        for area in ("entities", "subscriptions", "temporal", "catalog", "datastore")
    ),
    "operator": frozenset(
        {(action, area) for action in ("read", "write") for area in ("iot", "portal_admin", "demo")}
        # operators watch the city: current values and their history, never changing them
        | {("read", "entities"), ("read", "temporal")}
    ),
}
#: the areas an app's scopes can open; managing keys, the audit log, the portal and the demo
#: stays with people, whatever scopes a key was given
_APP_AREAS: Final = frozenset(
    {"entities", "subscriptions", "temporal", "iot", "catalog", "datastore"}
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: an API key, a signed-in user, a catalog token, or nobody."""

    kind: Kind
    id: str = ""
    roles: frozenset[str] = frozenset()
    tenants: frozenset[str] = frozenset()
    #: `area:action` (`entities:read`), `area:*`, or `*`; a key's scopes narrow its roles
    scopes: frozenset[str] = frozenset({ALL})

    def in_tenant(self, tenant: str) -> bool:
        """Return True when this principal belongs to tenant."""
        return ALL in self.tenants or tenant in self.tenants

    def has_scope(self, action: str, area: str) -> bool:
        """Return True when the scopes cover action on area."""
        return bool({ALL, f"{area}:*", f"{area}:{action}"} & self.scopes)


ANONYMOUS: Final = Principal("anonymous")


@dataclass(frozen=True, slots=True)
class Operation:
    """What a request wants to do, as far as the policy needs to know."""

    action: Action
    area: Area
    tenant: str = ""  # NGSILD-Tenant ('' is the default tenant)
    #: the entity types read or written (short names or IRIs); empty when not known
    entity_types: tuple[str, ...] = ()
    #: the dataset's visibility for catalog and datastore calls; None when no one dataset
    #: is concerned (a search, which then lists only what the caller may see)
    visibility: Visibility | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer: allowed, or the status to answer and why."""

    allowed: bool
    reason: str
    #: 200 when allowed; 401 without a credential; 403 with one lacking the right; 404 when
    #: the caller must not learn that the tenant exists (answer exactly as for a missing one)
    status: int = 200

    @property
    def hide(self) -> bool:
        """Return True when the answer must be the same 404 as for something absent."""
        return self.status == 404


def _allow(reason: str) -> Decision:
    return Decision(True, reason)


#: the areas whose public part anyone may read: public entity types, public datasets
PUBLIC_AREAS: Final = frozenset({"entities", "temporal", "catalog", "datastore"})


@dataclass(frozen=True, slots=True)
class Reading:
    """What a caller may read in one area of one tenant: everything, or only its public part.

    Endpoints that cannot know what they will read before reading it (a query without a type,
    an entity by id, a dataset search) narrow or filter by it; see `Policy.reading`.
    """

    everything: bool
    #: the public entity types (short names and IRIs); empty when everything is readable
    public_types: frozenset[str] = frozenset()
    #: True when the caller has no credential (a refusal is then 401, not 403)
    anonymous: bool = False

    def type_readable(self, iri: str) -> bool:
        """Return True when entities of this type (an expanded IRI) may be read."""
        return self.everything or iri in self.public_types

    def refuse(self, what: str) -> Decision:
        """Return the refusal of reading `what` (a phrase: "entities of type Building")."""
        if self.anonymous:
            return Decision(False, f"reading {what} needs a credential", 401)
        return Decision(False, f"this credential may not read {what}", 403)


#: what nothing restricts: auth off, or a caller allowed to read the whole area
EVERYTHING: Final = Reading(everything=True)


@dataclass(frozen=True, slots=True)
class Policy:
    """The access rules: the entity types anyone may read, and the tenants where they may."""

    public_types: frozenset[str] = field(default_factory=lambda: expand_types(PUBLIC_TYPES))
    #: tenants whose public data anyone may read ('' is the default tenant); data in any other
    #: tenant is seen only by that tenant's own credentials
    public_tenants: frozenset[str] = frozenset({""})

    @classmethod
    def from_settings(cls, types: str | None, tenants: str | None) -> Policy:
        """Return the policy of comma-separated public types and tenants (None: defaults)."""
        policy = cls()
        if types is not None:
            names = [name.strip() for name in types.split(",") if name.strip()]
            policy = replace(policy, public_types=expand_types(names))
        if tenants is not None:
            # "-" names the default tenant, which has no name of its own to write
            listed = [t.strip() for t in tenants.split(",") if t.strip()]
            policy = replace(
                policy, public_tenants=frozenset("" if t == "-" else t for t in listed)
            )
        return policy

    def describe(self) -> dict[str, list[str]]:
        """Return the settings that matter, in a stable order (for the audit log)."""
        return {
            "public_types": sorted(t for t in self.public_types if ":" not in t)
            + sorted(t for t in self.public_types if ":" in t and not _is_default_iri(t)),
            "public_tenants": sorted(self.public_tenants),
        }

    def is_public(self, op: Operation) -> bool:
        """Return True when anyone may read what op reads (in a public tenant)."""
        if op.area in ("catalog", "datastore"):
            return op.visibility != "restricted"
        if op.area in ("entities", "temporal"):
            return bool(op.entity_types) and all(t in self.public_types for t in op.entity_types)
        return False

    def decide(self, principal: Principal, op: Operation) -> Decision:
        """Return whether principal may perform op, and if not what to answer."""
        if (
            op.action == "read"
            and self.is_public(op)
            and (op.tenant in self.public_tenants or principal.in_tenant(op.tenant))
        ):
            # public data is public to everyone where the tenant is public, and to a tenant's
            # own credentials whatever their scopes: a key never sees less than nobody does
            return _allow("public data")
        return self._granted(principal, op)

    def reading(self, principal: Principal, area: Area, tenant: str) -> Reading | Decision:
        """Return what principal may read in area of tenant, or the refusal of any reading."""
        granted = self._granted(principal, Operation("read", area, tenant))
        if granted.allowed:
            return EVERYTHING
        if area in PUBLIC_AREAS and (tenant in self.public_tenants or principal.in_tenant(tenant)):
            return Reading(
                everything=False,
                public_types=self.public_types,
                anonymous=principal.kind == "anonymous",
            )
        return granted

    def _granted(self, principal: Principal, op: Operation) -> Decision:
        """Return whether principal's roles, tenants and scopes allow op (public data aside)."""
        if principal.kind == "anonymous":
            if op.action != "read":
                return Decision(False, f"{op.action} on {op.area} needs a credential", 401)
            return Decision(False, f"reading {_what(op)} needs a credential", 401)
        if not principal.in_tenant(op.tenant):
            if op.tenant in self.public_tenants:
                # a public tenant's existence is no secret: say what is wrong
                return Decision(
                    False, f"this credential does not belong to tenant {op.tenant!r}", 403
                )
            return Decision(False, f"tenant {op.tenant!r} does not exist", 404)
        if not principal.has_scope(op.action, op.area):
            return Decision(
                False, f"this credential's scopes do not include {op.area}:{op.action}", 403
            )
        for role in sorted(principal.roles):
            if role == "app" and op.area in _APP_AREAS and op.action != "admin":
                return _allow(f"scope {op.area}:{op.action}")
            if (op.action, op.area) in _GRANTS.get(role, frozenset()):
                return _allow(f"role {role}")
        roles = ", ".join(sorted(principal.roles)) or "no role"
        return Decision(False, f"{roles} may not {op.action} {op.area}", 403)


def _is_default_iri(name: str) -> bool:
    return name.startswith(DEFAULT_VOCAB)


def _what(op: Operation) -> str:
    if op.area in ("entities", "temporal") and not op.entity_types:
        return f"{op.area} without naming public entity types"
    if op.entity_types:
        return "entities of type " + ", ".join(op.entity_types)
    if op.visibility == "restricted":
        return "a restricted dataset"
    return op.area


def expand_types(names: Iterable[str]) -> frozenset[str]:
    """Return the names with their IRIs in the default @vocab (IRIs are kept as they are)."""
    out: set[str] = set()
    for name in names:
        out.add(name)
        if ":" not in name:
            out.add(DEFAULT_VOCAB + name)
    return frozenset(out)
