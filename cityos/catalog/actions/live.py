"""cityos's own actions for live datasets (datasets defined by an NGSI-LD query)."""

from __future__ import annotations

from typing import Any

from cityos.catalog.registry import Context, Params, action


@action("cityos_live_dataset_create", write=True)
async def live_dataset_create(ctx: Context, params: Params) -> Any:
    """Create or redefine a live dataset: package fields plus `query` (and `tenant`)."""
    return await ctx.catalog.live.define(ctx, params)


@action("cityos_live_dataset_list")
async def live_dataset_list(ctx: Context, params: Params) -> Any:
    """List the live datasets and their queries."""
    return await ctx.catalog.live.definitions()
