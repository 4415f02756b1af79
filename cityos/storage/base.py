"""The storage interface every engine (SQLite now, PostgreSQL next) implements.

Domain code hands the engine typed requests; only engines build SQL. Writes are expressed as
*mutations*: a pure function from the entity's current stored document (or None) to its new
document (or None to delete). The engine runs each mutation atomically against the current
state, so read-modify-write needs no locks in the domain layer and a failed mutation leaves
nothing behind.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cityos.broker.model import Doc

#: (current doc or None) -> (new doc, or None to delete). May raise NgsiError to refuse.
MutateFn = Callable[[Doc | None], Doc | None]


@dataclass(frozen=True, slots=True)
class Mutation:
    entity_id: str
    fn: MutateFn


#: derived writes may cause derived writes, this many levels deep at most (every engine)
MAX_RULE_DEPTH = 4

#: rule(old, new) -> (new, more): derive attributes of an entity being written (returning the
#: document to store instead of new) and further writes (e.g. an Alert) that commit with it.
#: Rules run in the writer, so they must be quick, pure and never block.
Rule = Callable[[Doc | None, Doc], tuple[Doc, list[Mutation]]]


@dataclass(frozen=True, slots=True)
class Change:
    """One entity changed: what it was, what it is (None when absent), and when."""

    tenant: str
    entity_id: str
    old: Doc | None
    new: Doc | None
    at: str  # NGSI-LD DateTime of the change (the new modifiedAt, or now for a delete)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one mutation: ok with what happened, or the error that refused it."""

    entity_id: str
    created: bool = False
    deleted: bool = False
    error: Exception | None = None
    doc: Doc | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class EntityQuery:
    """A query over one tenant's entities; every filter is optional and ANDed."""

    ids: tuple[str, ...] = ()
    id_pattern: str | None = None
    types: Any = None  # typesel AST
    q: Any = None  # qlang AST
    scope_q: Any = None  # qlang scope AST
    geo: Any = None  # geo.GeoQuery
    geoproperty: str | None = None  # expanded IRI
    attrs: frozenset[str] = frozenset()  # entity must have at least one of these (expanded)
    expand: Callable[[str], str] = field(default=str)
    limit: int = 20
    offset: int = 0
    count: bool = False


@dataclass(frozen=True, slots=True)
class QueryResult:
    docs: list[Doc]
    count: int | None = None


@dataclass(frozen=True, slots=True)
class TypeInfo:
    type: str  # expanded IRI
    entity_count: int
    attributes: dict[str, set[str]]  # attribute IRI -> attribute types seen


@dataclass(frozen=True, slots=True)
class AttributeInfo:
    name: str  # expanded IRI
    count: int
    types: set[str]  # entity types (expanded) having it
    attribute_types: set[str]


class Storage(abc.ABC):
    """What the broker needs from a database engine."""

    #: True when writes started concurrently commit in the order they were started (one
    #: writer queue); False when they may overtake each other (a pool of connections)
    ordered_writes: bool = False

    @abc.abstractmethod
    async def start(self) -> None:
        """Open connections and create the schema if needed."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and close connections."""

    @abc.abstractmethod
    async def tenant_exists(self, tenant: str) -> bool:
        """Return whether the tenant has ever been written to."""

    @abc.abstractmethod
    async def get(self, tenant: str, entity_id: str) -> Doc | None:
        """Return the stored document of one entity, or None."""

    @abc.abstractmethod
    async def query(self, tenant: str, query: EntityQuery) -> QueryResult:
        """Return the entities matching a query, one page of them."""

    @abc.abstractmethod
    async def apply(self, tenant: str, mutations: Sequence[Mutation]) -> list[Outcome]:
        """Apply mutations, each atomically; one failing leaves the others and no trace."""

    @abc.abstractmethod
    async def purge(self, tenant: str, query: EntityQuery) -> int:
        """Delete every entity matching the query; return how many were deleted."""

    @abc.abstractmethod
    async def types(self, tenant: str) -> list[TypeInfo]:
        """Return every entity type with its attributes."""

    @abc.abstractmethod
    async def attributes(
        self, tenant: str, types: frozenset[str] | None = None
    ) -> list[AttributeInfo]:
        """Return every attribute name with the types that use it (of entities of `types`)."""

    @abc.abstractmethod
    async def kv_get(self, namespace: str, key: str) -> bytes | None:
        """Return a small stored blob (hosted @contexts and similar)."""

    @abc.abstractmethod
    async def kv_put(self, namespace: str, key: str, value: bytes) -> None:
        """Store a small blob."""

    @abc.abstractmethod
    async def kv_delete(self, namespace: str, key: str) -> bool:
        """Delete a small blob; return whether it existed."""

    @abc.abstractmethod
    async def kv_list(self, namespace: str) -> list[tuple[str, bytes]]:
        """Return all blobs of a namespace."""
