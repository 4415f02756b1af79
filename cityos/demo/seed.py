"""Load the demo data set into a store, replacing earlier demo entities of the same ids."""

from __future__ import annotations

from cityos.broker import clock
from cityos.broker.model import Doc
from cityos.broker.normalize import Normalizer
from cityos.demo import sano
from cityos.jsonld.loader import ContextLoader
from cityos.storage.base import MutateFn, Mutation, Storage


def _replace_with(doc: Doc) -> MutateFn:
    def fn(_current: Doc | None) -> Doc:
        return doc

    return fn


async def seed(store: Storage, tenant: str = "") -> int:
    """Upsert the Sano demo entities; return how many were written."""
    now = clock.now()
    norm = Normalizer(ContextLoader(remote_fetch=False).default(), now)
    docs = [norm.entity(e) for e in sano.entities(observed_at=now)]
    outcomes = await store.apply(tenant, [Mutation(d["id"], _replace_with(d)) for d in docs])
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise RuntimeError(f"demo data rejected: {failed[0].entity_id}: {failed[0].error}")
    return len(outcomes)
