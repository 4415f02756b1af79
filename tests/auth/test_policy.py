"""The policy: roles x operations x tenants, public-read data, scopes, and hidden tenants."""

from __future__ import annotations

import pytest

from cityos.auth.policy import (
    ANONYMOUS,
    AREAS,
    EVERYTHING,
    Action,
    Area,
    Decision,
    Operation,
    Policy,
    Principal,
    Reading,
)

V = "https://uri.etsi.org/ngsi-ld/default-context/"
POLICY = Policy()

# What each principal of tenant `sano` may do there: r(ead), w(rite), a(dmin), - nothing.
# Reads here concern restricted things (a Building, a restricted dataset): public data is
# tested on its own below.
GRID = """
area           admin  steward  operator  app      app_read  steward_read
entities       rwa    rw       r         rw       r         r
subscriptions  rwa    rw       -         rw       -         -
temporal       rwa    rw       r         rw       -         -
iot            rwa    -        rw        rw       -         -
catalog        rwa    rw       -         rw       -         -
datastore      rwa    rw       -         rw       -         -
portal_admin   rwa    -        rw        -        -         -
keys           rwa    -        -         -        -         -
audit          rwa    -        -         -        -         -
demo           rwa    -        rw        -        -         -
"""
PRINCIPALS = {
    "admin": Principal("key", "k1", frozenset({"admin"}), frozenset({"sano"})),
    "steward": Principal("user", "u1", frozenset({"steward"}), frozenset({"sano"})),
    "operator": Principal("user", "u2", frozenset({"operator"}), frozenset({"sano"})),
    "app": Principal("key", "k2", frozenset({"app"}), frozenset({"sano"})),
    "app_read": Principal(
        "key", "k3", frozenset({"app"}), frozenset({"sano"}), frozenset({"entities:read"})
    ),
    # scopes narrow a role: a steward key that may only read entities
    "steward_read": Principal(
        "key", "k4", frozenset({"steward"}), frozenset({"sano"}), frozenset({"entities:read"})
    ),
}
ACTION_LETTERS: dict[str, Action] = {"r": "read", "w": "write", "a": "admin"}


def grid() -> dict[tuple[str, str], str]:
    lines = GRID.strip().splitlines()
    who = lines[0].split()[1:]
    return {
        (name, row.split()[0]): cell
        for row in lines[1:]
        for name, cell in zip(who, row.split()[1:], strict=True)
    }


def operation(action: Action, area: Area, tenant: str) -> Operation:
    if area in ("entities", "temporal"):
        return Operation(action, area, tenant, entity_types=("Building",))
    if area in ("catalog", "datastore"):
        return Operation(action, area, tenant, visibility="restricted")
    return Operation(action, area, tenant)


CASES = [
    (who, area, letter, tenant)
    for (who, area), cell in grid().items()
    for letter in "rwa"
    for tenant in ("sano", "ashikaga", "")
]


def test_the_grid_covers_every_area() -> None:
    assert {area for _, area in grid()} == AREAS
    assert {who for who, _ in grid()} == set(PRINCIPALS)


@pytest.mark.parametrize(("who", "area", "letter", "tenant"), CASES)
def test_roles_by_operations_by_tenants(who: str, area: Area, letter: str, tenant: str) -> None:
    decision = POLICY.decide(PRINCIPALS[who], operation(ACTION_LETTERS[letter], area, tenant))
    if tenant == "ashikaga":
        # another tenant's things are answered exactly as missing ones: no hint it exists
        assert (decision.allowed, decision.status, decision.hide) == (False, 404, True)
        assert decision.reason == f"tenant {tenant!r} does not exist"
    elif tenant == "":
        # the default tenant is public (its safety data is open): no secret that it exists
        assert (decision.allowed, decision.status) == (False, 403)
        assert decision.reason == "this credential does not belong to tenant ''"
    elif letter in grid()[(who, area)]:
        assert (decision.allowed, decision.status) == (True, 200)
    else:
        assert (decision.allowed, decision.status, decision.hide) == (False, 403, False)
        assert area in decision.reason


def test_a_principal_of_every_tenant_acts_in_each() -> None:
    admin = Principal("key", "root", frozenset({"admin"}), frozenset({"*"}))
    for tenant in ("", "sano", "ashikaga"):
        assert POLICY.decide(admin, Operation("admin", "keys", tenant)).allowed


def test_roles_add_up() -> None:
    both = Principal("user", "u", frozenset({"operator", "steward"}), frozenset({"sano"}))
    assert POLICY.decide(both, operation("write", "iot", "sano")).allowed
    assert POLICY.decide(both, operation("write", "catalog", "sano")).allowed
    assert not POLICY.decide(both, operation("read", "audit", "sano")).allowed


def test_scopes_are_named_in_the_refusal() -> None:
    decision = POLICY.decide(PRINCIPALS["steward_read"], operation("write", "entities", "sano"))
    assert decision.reason == "this credential's scopes do not include entities:write"
    area_scope = Principal(
        "key", "k", frozenset({"app"}), frozenset({"sano"}), frozenset({"iot:*"})
    )
    assert POLICY.decide(area_scope, operation("write", "iot", "sano")).allowed
    assert not POLICY.decide(area_scope, operation("read", "entities", "sano")).allowed


def test_an_app_never_manages_keys_audit_portal_or_demo_whatever_its_scopes() -> None:
    for area in ("keys", "audit", "portal_admin", "demo"):
        for action in ("read", "write", "admin"):
            decision = POLICY.decide(PRINCIPALS["app"], operation(action, area, "sano"))
            assert decision.status == 403
            assert decision.reason == f"app may not {action} {area}"


# -- public data and anonymous callers ----------------------------------------------------------


@pytest.mark.parametrize(
    "types",
    [
        ("WaterObserved",),
        (V + "WaterObserved",),
        ("WeatherObserved", "EvacuationShelter"),
        ("Alert",),
        ("PointOfInterest",),  # AEDs
        (V + "EvacuationShelter", "Alert"),
    ],
)
@pytest.mark.parametrize("area", ["entities", "temporal"])
def test_anyone_reads_public_safety_types_in_public_tenants(
    types: tuple[str, ...], area: Area
) -> None:
    public = Operation("read", area, "", entity_types=types)
    assert POLICY.decide(ANONYMOUS, public).allowed
    # a key of another tenant sees no less than nobody does
    assert POLICY.decide(PRINCIPALS["app_read"], public).allowed
    # in a tenant that is not public only its own credentials read, whatever their scopes
    closed = Operation("read", area, "sano", entity_types=types)
    assert POLICY.decide(ANONYMOUS, closed).status == 401
    assert POLICY.decide(PRINCIPALS["app_read"], closed).allowed
    iot_only = Principal("key", "k", frozenset({"app"}), frozenset({"sano"}), frozenset({"iot:*"}))
    assert POLICY.decide(iot_only, closed).allowed
    outsider = Principal("key", "k", frozenset({"admin"}), frozenset({"ashikaga"}))
    assert POLICY.decide(outsider, closed).status == 404


@pytest.mark.parametrize(
    ("op", "reason"),
    [
        (Operation("read", "entities", entity_types=("Building",)), "entities of type Building"),
        (
            Operation("read", "entities", entity_types=("WaterObserved", "Building")),
            "entities of type WaterObserved, Building",
        ),
        (Operation("read", "entities"), "naming public entity types"),
        (Operation("read", "temporal"), "naming public entity types"),
        (Operation("read", "entities", entity_types=("https://x.org/WaterObserved",)), "type"),
        (Operation("read", "subscriptions"), "subscriptions"),
        (Operation("read", "iot"), "iot"),
        (Operation("read", "catalog", visibility="restricted"), "a restricted dataset"),
        (Operation("read", "datastore", visibility="restricted"), "a restricted dataset"),
    ],
)
def test_anonymous_reads_of_anything_else_need_a_credential(op: Operation, reason: str) -> None:
    decision = POLICY.decide(ANONYMOUS, op)
    assert (decision.allowed, decision.status) == (False, 401)
    assert reason in decision.reason
    assert decision.reason.endswith("needs a credential")


@pytest.mark.parametrize(
    "op",
    [
        Operation("write", "entities", entity_types=("WaterObserved",)),
        Operation("write", "catalog", visibility="public"),
        Operation("write", "iot"),
        Operation("admin", "keys"),
        Operation("write", "portal_admin"),
    ],
)
def test_writes_always_need_a_credential(op: Operation) -> None:
    decision = POLICY.decide(ANONYMOUS, op)
    assert (decision.allowed, decision.status) == (False, 401)
    assert decision.reason == f"{op.action} on {op.area} needs a credential"


def test_anyone_reads_public_datasets_and_searches_the_catalog() -> None:
    for area in ("catalog", "datastore"):
        assert POLICY.decide(ANONYMOUS, Operation("read", area, visibility="public")).allowed
        # a search: the endpoint lists only what the caller may see
        assert POLICY.decide(ANONYMOUS, Operation("read", area)).allowed


def test_public_types_are_configurable() -> None:
    policy = Policy.from_settings("WaterObserved, Building,", None)
    assert policy.decide(
        ANONYMOUS, Operation("read", "entities", entity_types=("Building",))
    ).allowed
    assert policy.decide(
        ANONYMOUS, Operation("read", "entities", entity_types=(V + "Building",))
    ).allowed
    assert not policy.decide(
        ANONYMOUS, Operation("read", "entities", entity_types=("Alert",))
    ).allowed
    nothing = Policy.from_settings("", None)
    assert not nothing.decide(
        ANONYMOUS, Operation("read", "entities", entity_types=("WaterObserved",))
    ).allowed
    assert Policy.from_settings(None, None) == Policy()


# -- what a caller may read of an area ----------------------------------------------------------


def test_reading_everything_needs_the_read_right_in_the_tenant() -> None:
    assert POLICY.reading(PRINCIPALS["steward"], "entities", "sano") is EVERYTHING
    assert POLICY.reading(PRINCIPALS["app_read"], "entities", "sano") is EVERYTHING
    assert POLICY.reading(PRINCIPALS["admin"], "catalog", "sano") is EVERYTHING


@pytest.mark.parametrize("area", ["entities", "temporal", "catalog", "datastore"])
def test_without_the_right_only_the_public_part_is_readable(area: Area) -> None:
    anonymous = POLICY.reading(ANONYMOUS, area, "")
    assert isinstance(anonymous, Reading)
    assert not anonymous.everything
    assert anonymous.type_readable(V + "WaterObserved")
    assert not anonymous.type_readable(V + "Building")
    assert anonymous.refuse("entities of type Building") == Decision(
        False, "reading entities of type Building needs a credential", 401
    )
    # an operator reads entities, not the catalog; a key of another tenant only public things
    for who in ("operator", "app_read"):
        reading = POLICY.reading(PRINCIPALS[who], area, "")
        assert isinstance(reading, Reading)
        assert not reading.everything
        assert reading.refuse("x").status == 403


@pytest.mark.parametrize("area", ["subscriptions", "iot", "portal_admin", "keys", "audit"])
def test_areas_without_a_public_part_refuse_reading(area: Area) -> None:
    assert POLICY.reading(ANONYMOUS, area, "") == Decision(
        False, f"reading {area} needs a credential", 401
    )
    refused = POLICY.reading(PRINCIPALS["app_read"], area, "sano")
    assert isinstance(refused, Decision)
    assert refused.status == 403


def test_a_closed_tenant_is_hidden_from_outsiders_and_refused_to_anonymous() -> None:
    outsider = Principal("key", "k", frozenset({"admin"}), frozenset({"ashikaga"}))
    for area in ("entities", "catalog", "subscriptions"):
        hidden = POLICY.reading(outsider, area, "sano")
        assert isinstance(hidden, Decision)
        assert (hidden.status, hidden.reason) == (404, "tenant 'sano' does not exist")
        refused = POLICY.reading(ANONYMOUS, area, "sano")
        assert isinstance(refused, Decision)
        assert refused.status == 401


def test_public_tenants_are_configurable() -> None:
    policy = Policy.from_settings(None, "sano, -")
    assert policy.public_tenants == frozenset({"sano", ""})
    assert isinstance(policy.reading(ANONYMOUS, "entities", "sano"), Reading)
    closed = Policy.from_settings(None, "")
    assert closed.public_tenants == frozenset()
    assert isinstance(closed.reading(ANONYMOUS, "entities", ""), Decision)
    assert closed.describe() == {
        "public_types": [
            "Alert",
            "EvacuationShelter",
            "PointOfInterest",
            "WaterObserved",
            "WeatherObserved",
        ],
        "public_tenants": [],
    }
