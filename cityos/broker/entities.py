"""Entity and attribute operations (GS CIM 009 clauses 5.6 and 5.7) as storage mutations.

Each operation validates the payload first (nothing is written when it is bad), then hands
the storage engine a pure function that turns the current document into the new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cityos.broker.errors import AlreadyExists, BadRequestData, NgsiError, ResourceNotFound
from cityos.broker.model import CORE_MEMBERS, VALUE_MEMBER, Doc, Instance
from cityos.broker.normalize import (
    ENTITY_SKIP,
    Expander,
    Normalizer,
    check_entity_id,
    check_name,
    expand_types,
    parse_scope,
)
from cityos.storage.base import Mutation, Outcome, Storage

NULL_IRI = "urn:ngsi-ld:null"


@dataclass(slots=True)
class UpdateResult:
    """Which attributes an update changed and which it left alone, with why."""

    updated: list[str] = field(default_factory=list)
    not_updated: list[tuple[str, str]] = field(default_factory=list)

    def body(self, compact: Any) -> dict[str, Any]:
        return {
            "updated": [compact(a) for a in self.updated],
            "notUpdated": [{"attributeName": compact(a), "reason": r} for a, r in self.not_updated],
        }


def not_found(entity_id: str) -> ResourceNotFound:
    return ResourceNotFound(f"entity {entity_id!r} not found")


def raise_outcome(outcome: Outcome) -> Outcome:
    """Raise the error of a failed outcome; return it otherwise."""
    if outcome.error is not None:
        raise outcome.error
    return outcome


async def apply_one(store: Storage, tenant: str, entity_id: str, fn: Any) -> Outcome:
    """Apply one mutation and raise its error, if any."""
    (outcome,) = await store.apply(tenant, [Mutation(entity_id, fn)])
    return raise_outcome(outcome)


# -- pure document transformations ---------------------------------------------------------
def _ds(inst: Instance) -> str | None:
    ds: str | None = inst.get("datasetId")
    return ds


def touch(doc: Doc, now: str) -> Doc:
    doc["modifiedAt"] = now
    return doc


def put_instance(current: list[Instance], new: Instance) -> list[Instance]:
    """Replace the instance with the same datasetId (keeping its createdAt) or add it."""
    out = []
    placed = False
    for inst in current:
        if _ds(inst) == _ds(new):
            new["createdAt"] = inst.get("createdAt", new["createdAt"])
            out.append(new)
            placed = True
        else:
            out.append(inst)
    if not placed:
        out.append(new)
    return out


def put_attributes(cur: Doc, attrs: dict[str, list[Instance]], now: str) -> Doc:
    """Return cur with each given instance put in place (replacing its datasetId's), touched."""
    merged = dict(cur["attrs"])
    for iri, insts in attrs.items():
        for inst in insts:
            merged[iri] = put_instance(list(merged.get(iri, [])), dict(inst))
    return {**cur, "modifiedAt": now, "attrs": merged}


def merge_instance(old: Instance, patch: Instance, now: str) -> Instance:
    """Merge a patch into an instance: given members replace, sub-attributes merge."""
    merged = dict(old)
    if patch.get("type") != old.get("type"):
        # The value member changes with the type; drop the old one.
        for m in ("value", "object", "languageMap", "json", "vocab", "valueList", "objectList"):
            merged.pop(m, None)
    for k, v in patch.items():
        if k in ("createdAt",):
            continue
        if k not in CORE_MEMBERS and isinstance(v, dict) and isinstance(old.get(k), dict):
            if _is_null(v):
                merged.pop(k, None)
            else:
                merged[k] = merge_instance(old[k], v, now)
        elif k not in CORE_MEMBERS and _is_null(v):
            merged.pop(k, None)
        else:
            merged[k] = v
    merged["modifiedAt"] = now
    return merged


def _start_from(
    cur: Doc | None,
    entity_id: str,
    types: list[str],
    scope: list[str] | None,
    now: str,
    *,
    create: bool,
) -> Doc:
    """Return a copy of the current entity (or a new one, when create allows) with the
    given types added and scope set: the common start of merge, append and update."""
    if cur is None:
        if not create:
            raise not_found(entity_id)
        if not types:
            raise BadRequestData("type: missing (every entity needs a type)")
        cur = {"id": entity_id, "type": [], "createdAt": now, "modifiedAt": now, "attrs": {}}
    new = dict(cur)
    new["type"] = cur["type"] + [t for t in types if t not in cur["type"]]
    if scope is not None:
        new["scope"] = scope
    return new


def _is_null(inst: Any) -> bool:
    if not isinstance(inst, dict):
        return False
    for m in ("value", "object", "vocab", "json"):
        if m in inst:
            return inst[m] == NULL_IRI or inst[m] is None
    return False


# -- operations ------------------------------------------------------------------------------
class EntityService:
    """The NGSI-LD entity operations of one request."""

    def __init__(self, store: Storage, tenant: str, ctx: Expander, now: str) -> None:
        self.store = store
        self.tenant = tenant
        self.ctx = ctx
        self.now = now
        self.norm = Normalizer(ctx, now)

    async def create(self, payload: Any) -> Doc:
        doc = self.norm.entity(payload)

        def fn(cur: Doc | None) -> Doc:
            if cur is not None:
                raise AlreadyExists(f"entity {doc['id']!r} already exists")
            return doc

        await apply_one(self.store, self.tenant, doc["id"], fn)
        return doc

    def replace_fn(self, entity_id: str, payload: Any) -> Any:
        if isinstance(payload, dict) and "id" not in payload:
            payload = {**payload, "id": entity_id}
        doc = self.norm.entity(payload)
        if doc["id"] != entity_id:
            raise BadRequestData(f"id: {doc['id']!r} does not match the URL's {entity_id!r}")

        def fn(cur: Doc | None) -> Doc:
            if cur is None:
                raise not_found(entity_id)
            doc["createdAt"] = cur["createdAt"]
            return doc

        return fn

    async def replace(self, entity_id: str, payload: Any) -> None:
        await apply_one(self.store, self.tenant, entity_id, self.replace_fn(entity_id, payload))

    def merge_fn(self, entity_id: str, payload: Any, *, create: bool = False) -> Any:
        """Return the mutation of Merge Entity (PATCH /entities/{id})."""
        if not isinstance(payload, dict):
            raise BadRequestData("the entity fragment must be a JSON object")
        if "id" in payload and check_entity_id(payload["id"]) != entity_id:
            raise BadRequestData(f"id: {payload['id']!r} does not match the URL's {entity_id!r}")
        types = expand_types(payload["type"], self.ctx) if "type" in payload else []
        scope = parse_scope(payload["scope"]) if "scope" in payload else None
        deletions: list[str] = []
        attrs: dict[str, list[Instance]] = {}
        for key, raw in payload.items():
            if key in ENTITY_SKIP:
                continue
            check_name(key, key)
            iri = self.ctx.expand_term(key)
            if raw is None or raw == NULL_IRI or _is_null(raw):
                deletions.append(iri)
            else:
                attrs[iri] = self.norm.attribute(key, raw, key)
        now = self.now

        def fn(cur: Doc | None) -> Doc:
            new = _start_from(cur, entity_id, types, scope, now, create=create)
            cur_attrs = dict(new.get("attrs", {}))
            for iri in deletions:
                cur_attrs.pop(iri, None)
            for iri, insts in attrs.items():
                existing = cur_attrs.get(iri, [])
                for inst in insts:
                    old = next((x for x in existing if _ds(x) == _ds(inst)), None)
                    if old is None:
                        existing = [*existing, inst]
                    else:
                        existing = [
                            merge_instance(x, inst, now) if x is old else x for x in existing
                        ]
                cur_attrs[iri] = existing
            new["attrs"] = cur_attrs
            return touch(new, now)

        return fn

    async def merge(self, entity_id: str, payload: Any) -> None:
        await apply_one(self.store, self.tenant, entity_id, self.merge_fn(entity_id, payload))

    async def delete(self, entity_id: str) -> None:
        def fn(cur: Doc | None) -> None:
            if cur is None:
                raise not_found(entity_id)
            return

        await apply_one(self.store, self.tenant, entity_id, fn)

    def append_fn(
        self,
        entity_id: str,
        payload: Any,
        *,
        overwrite: bool,
        only_existing: bool,
        result: UpdateResult,
        create: bool = False,
    ) -> Any:
        """Return the mutation of Append (POST .../attrs) or Update (PATCH .../attrs)."""
        if not isinstance(payload, dict):
            raise BadRequestData("the attributes fragment must be a JSON object")
        if "id" in payload and check_entity_id(payload["id"]) != entity_id:
            raise BadRequestData(f"id: {payload['id']!r} does not match the URL's {entity_id!r}")
        types = expand_types(payload["type"], self.ctx) if "type" in payload else []
        scope = parse_scope(payload["scope"]) if "scope" in payload else None
        attrs = self.norm.attributes(payload, ENTITY_SKIP)
        now = self.now

        def fn(cur: Doc | None) -> Doc:
            result.updated.clear()
            result.not_updated.clear()
            new = _start_from(cur, entity_id, types, scope, now, create=create)
            cur_attrs = dict(new.get("attrs", {}))
            for iri, insts in attrs.items():
                existing = cur_attrs.get(iri)
                if existing is None and only_existing:
                    result.not_updated.append((iri, "attribute does not exist"))
                    continue
                existing = existing or []
                changed = False
                for inst in insts:
                    present = any(_ds(x) == _ds(inst) for x in existing)
                    if present and not overwrite:
                        result.not_updated.append((iri, "attribute exists and noOverwrite is set"))
                        continue
                    if not present and only_existing:
                        result.not_updated.append(
                            (iri, f"no instance with datasetId {_ds(inst)!r}")
                        )
                        continue
                    existing = put_instance(existing, inst)
                    changed = True
                if changed:
                    cur_attrs[iri] = existing
                    result.updated.append(iri)
            new["attrs"] = cur_attrs
            return touch(new, now)

        return fn

    async def append(self, entity_id: str, payload: Any, *, overwrite: bool) -> UpdateResult:
        result = UpdateResult()
        fn = self.append_fn(
            entity_id, payload, overwrite=overwrite, only_existing=False, result=result
        )
        await apply_one(self.store, self.tenant, entity_id, fn)
        return result

    async def update(self, entity_id: str, payload: Any) -> UpdateResult:
        result = UpdateResult()
        fn = self.append_fn(entity_id, payload, overwrite=True, only_existing=True, result=result)
        await apply_one(self.store, self.tenant, entity_id, fn)
        return result

    def _attr_iri(self, attr: str) -> str:
        check_name(attr, "attrId")
        return self.ctx.expand_term(attr)

    async def patch_attribute(self, entity_id: str, attr: str, payload: Any) -> None:
        """Partial Attribute Update: merge members into an existing attribute instance."""
        iri = self._attr_iri(attr)
        if not isinstance(payload, dict):
            raise BadRequestData("the attribute fragment must be a JSON object")
        ds = payload.get("datasetId")
        now = self.now
        norm = self.norm

        def fn(cur: Doc | None) -> Doc:
            if cur is None:
                raise not_found(entity_id)
            existing = cur.get("attrs", {}).get(iri) or []
            target = next((x for x in existing if _ds(x) == ds), None)
            if target is None:
                where = f" with datasetId {ds!r}" if ds else ""
                raise ResourceNotFound(
                    f"attribute {attr!r}{where} not found in entity {entity_id!r}"
                )
            frag = dict(payload)
            frag.setdefault("type", target["type"])
            member = VALUE_MEMBER.get(frag["type"])
            if member is not None and member not in frag:
                if "value" in frag:
                    frag[member] = frag.pop("value")
                elif target["type"] == frag["type"]:
                    frag[member] = target[member]
            patch = norm.instance(frag, attr)
            merged = merge_instance(target, patch, now)
            new = dict(cur)
            new["attrs"] = {**cur["attrs"], iri: [merged if x is target else x for x in existing]}
            return touch(new, now)

        await apply_one(self.store, self.tenant, entity_id, fn)

    async def replace_attribute(self, entity_id: str, attr: str, payload: Any) -> None:
        iri = self._attr_iri(attr)
        insts = self.norm.attribute(attr, payload, attr)
        now = self.now

        def fn(cur: Doc | None) -> Doc:
            if cur is None:
                raise not_found(entity_id)
            existing = cur.get("attrs", {}).get(iri)
            if existing is None:
                raise ResourceNotFound(f"attribute {attr!r} not found in entity {entity_id!r}")
            for inst in insts:
                existing = put_instance(existing, inst)
            new = dict(cur)
            new["attrs"] = {**cur["attrs"], iri: existing}
            return touch(new, now)

        await apply_one(self.store, self.tenant, entity_id, fn)

    async def delete_attribute(
        self, entity_id: str, attr: str, dataset_id: str | None, delete_all: bool
    ) -> None:
        iri = self._attr_iri(attr)
        now = self.now

        def fn(cur: Doc | None) -> Doc:
            if cur is None:
                raise not_found(entity_id)
            existing = cur.get("attrs", {}).get(iri)
            if not existing:
                raise ResourceNotFound(f"attribute {attr!r} not found in entity {entity_id!r}")
            if delete_all:
                remaining: list[Instance] = []
            else:
                remaining = [x for x in existing if _ds(x) != dataset_id]
                if len(remaining) == len(existing):
                    raise ResourceNotFound(
                        f"attribute {attr!r} has no instance with datasetId {dataset_id!r}"
                        if dataset_id
                        else f"attribute {attr!r} has no default instance"
                    )
            attrs = dict(cur["attrs"])
            if remaining:
                attrs[iri] = remaining
            else:
                del attrs[iri]
            new = dict(cur)
            new["attrs"] = attrs
            return touch(new, now)

        await apply_one(self.store, self.tenant, entity_id, fn)


__all__ = ["EntityService", "NgsiError", "UpdateResult"]
