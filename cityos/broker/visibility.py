"""What of the entities a request may see, as the access policy bound it for the request.

The access middleware asks `Policy.reading` once per request; a caller allowed to read the
whole area is unrestricted here. Anyone else sees only entities having a public type: a query
naming another type is refused (401 without a credential, 403 with one), a query naming no
type is narrowed to the public ones (so counts, pages and `/types` agree), and an entity asked
for by id is answered as missing, exactly as one that does not exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from cityos.auth import context
from cityos.auth.policy import Operation, Reading
from cityos.broker import typesel
from cityos.broker.errors import Forbidden, NgsiError, Unauthorized
from cityos.broker.model import Doc
from cityos.storage.base import EntityQuery, TypeInfo


def refusal(reading: Reading, what: str) -> NgsiError:
    """Return the error refusing to read `what` to this caller."""
    decision = reading.refuse(what)
    cls = Unauthorized if decision.status == 401 else Forbidden
    return cls(decision.reason)


def public_selection(reading: Reading) -> typesel.TypeExpr:
    """Return the type selection of every public type (as IRIs)."""
    iris = sorted(t for t in reading.public_types if ":" in t)
    if not iris:
        # nothing is public: a type no entity can have (stored types are IRIs)
        return typesel.TypeName("urn:cityos:no-public-type")
    names = tuple(typesel.TypeName(t) for t in iris)
    return names[0] if len(names) == 1 else typesel.TypeOr(names)


def narrow(query: EntityQuery) -> EntityQuery:
    """Return the query limited to what the request may read; refuse restricted types named."""
    reading = context.reading()
    if reading.everything:
        return query
    if query.types is None:
        return replace(query, types=public_selection(reading))
    named = sorted(typesel.type_names(query.types))
    refused = [n for n in named if not reading.type_readable(query.expand(n))]
    if refused:
        raise refusal(reading, "entities of type " + ", ".join(refused))
    return query


def readable(doc: Doc) -> bool:
    """Return True when the request may see this stored entity (one of its types is public)."""
    reading = context.reading()
    return reading.everything or any(reading.type_readable(t) for t in doc.get("type", ()))


def readable_types(infos: Iterable[TypeInfo]) -> list[TypeInfo]:
    """Return the entity types the request may see."""
    reading = context.reading()
    return [i for i in infos if reading.type_readable(i.type)]


def type_filter() -> frozenset[str] | None:
    """Return the entity type IRIs the request may see, or None when it may see every type."""
    reading = context.reading()
    if reading.everything:
        return None
    return frozenset(t for t in reading.public_types if ":" in t)


def check_watch(tenant: str, selectors: Iterable[dict[str, str]] | None) -> None:
    """Refuse a subscription that would notify entities the caller may not read.

    Without entity selectors (watchedAttributes only) a subscription watches every type.
    """
    types: tuple[str, ...] = ()
    if selectors is not None:
        names: set[str] = set()
        for sel in selectors:
            names |= typesel.type_names(typesel.parse_type_selection(sel["type"]))
        types = tuple(sorted(names))
    decision = context.decide(Operation("read", "entities", tenant, entity_types=types))
    if not decision.allowed:
        what = "entities of type " + ", ".join(types) if types else "entities of every type"
        reading = Reading(everything=False, anonymous=context.current().kind == "anonymous")
        raise refusal(reading, f"{what} (a subscription would notify them)")
