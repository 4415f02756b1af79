"""CKAN actions about the site and its publishers: status, licenses, help, organizations, groups."""

from __future__ import annotations

import inspect
import uuid
from typing import Any, Final

from cityos import __version__
from cityos.catalog import licenses, search, validate
from cityos.catalog.errors import NotFound, ValidationError
from cityos.catalog.registry import ACTIONS, Context, Params, action
from cityos.storage.sqlite_catalog import now_iso

#: the CKAN API version whose behaviour the catalog follows
CKAN_VERSION: Final = "2.11.6"
SORTS: Final = ("name", "title", "package_count")


@action("status_show")
async def status_show(ctx: Context, params: Params) -> dict[str, Any]:
    """Return the site's version and extensions."""
    return {
        "ckan_version": CKAN_VERSION,
        "cityos_version": __version__,
        "site_url": ctx.catalog.base_url,
        "site_title": ctx.catalog.settings.catalog_title,
        "site_description": "",
        "locale_default": "ja",
        "error_emails_to": None,
        "extensions": ["datastore", "dcat"],
    }


@action("license_list")
async def license_list(ctx: Context, params: Params) -> list[dict[str, Any]]:
    """Return the licenses datasets may carry."""
    return [lic.as_dict() for lic in licenses.LICENSES]


@action("help_show")
async def help_show(ctx: Context, params: Params) -> str:
    """Return the documentation of an action."""
    name = validate.as_str(params.get("name"), "name")
    found = ACTIONS.get(name or "")
    if found is None:
        raise NotFound("Action function not found")
    return inspect.getdoc(found.fn) or ""


# -- organizations and groups -----------------------------------------------------------------


async def _create(ctx: Context, params: Params, *, is_org: bool) -> dict[str, Any]:
    errors: dict[str, Any] = {}
    try:
        name = validate.name(params.get("name"))
    except ValidationError as exc:
        errors.update(exc.errors)
        name = ""
    fields: dict[str, Any] = {}
    for key in ("title", "description", "image_url"):
        try:
            fields[key] = validate.as_str(params.get(key), key) or ""
        except ValidationError as exc:
            errors.update(exc.errors)
    try:
        extras = validate.extras(params.get("extras"))
        state = validate.state(params.get("state"))
    except ValidationError as exc:
        errors.update(exc.errors)
    if errors:
        raise ValidationError(errors)
    kind = "organization" if is_org else "group"
    doc = {
        "approval_status": "approved",
        "created": now_iso(),
        "description": fields["description"],
        "display_name": fields["title"] or name,
        "extras": extras,
        "groups": [],
        "id": str(uuid.uuid4()),
        "image_display_url": fields["image_url"],
        "image_url": fields["image_url"],
        "is_organization": is_org,
        "name": name,
        "num_followers": 0,
        "state": state,
        "tags": [],
        "title": fields["title"],
        "type": kind,
        "users": [{"name": ctx.user, "capacity": "admin"}] if ctx.user else [],
    }
    if not await ctx.catalog.meta.save_group(doc, is_org=is_org):
        raise validate.fail("name", "Group name already exists in database")
    return {**doc, "package_count": 0}


async def _show(ctx: Context, params: Params, *, is_org: bool) -> dict[str, Any]:
    ref = validate.as_str(params.get("id"), "id")
    if not ref:
        raise validate.fail("id", validate.MISSING)
    doc = await ctx.catalog.meta.get_group(ref, is_org=is_org)
    if doc is None:
        raise NotFound("Organization not found" if is_org else "Group not found")
    if validate.as_bool(params.get("include_datasets"), "include_datasets"):
        where = search.Equals(
            "owner_org" if is_org else "groups", doc["id"] if is_org else doc["name"]
        )
        found = await ctx.catalog.meta.search(
            search.Query(
                where=where,
                sort=search.parse_sort("name asc"),
                rows=1000,
                start=0,
                facet_fields=[],
                facet_limit=0,
                facet_mincount=1,
                include_private=ctx.user is not None or ctx.system,
                include_drafts=False,
                include_deleted=False,
            )
        )
        doc["packages"] = found.docs
    if not validate.as_bool(params.get("include_dataset_count"), "x", default=True):
        doc.pop("package_count", None)
    return doc


async def _list(ctx: Context, params: Params, *, is_org: bool) -> list[Any]:
    all_fields = validate.as_bool(params.get("all_fields"), "all_fields")
    sort_raw = validate.as_str(params.get("sort"), "sort") or "title asc"
    words = sort_raw.split()
    if (
        not words
        or len(words) > 2
        or words[0] not in SORTS
        or (len(words) == 2 and words[1].lower() not in ("asc", "desc"))
    ):
        raise validate.fail(
            "sort", f"Cannot sort by {sort_raw!r}; use name, title or package_count"
        )
    names_key = "organizations" if is_org else "groups"
    names = [str(n) for n in validate.as_list(params.get(names_key), names_key)]
    docs = await ctx.catalog.meta.list_groups(
        is_org=is_org,
        sort=words[0],
        desc=len(words) == 2 and words[1].lower() == "desc",
        limit=validate.as_int(params.get("limit"), "limit", 25 if all_fields else 1000, minimum=0),
        offset=validate.as_int(params.get("offset"), "offset", 0, minimum=0),
        names=names,
    )
    if not all_fields:
        return [d["name"] for d in docs]
    if not validate.as_bool(params.get("include_dataset_count"), "x", default=True):
        for d in docs:
            d.pop("package_count", None)
    return docs


@action("organization_create", write=True)
async def organization_create(ctx: Context, params: Params) -> dict[str, Any]:
    """Create an organization (a publisher of datasets)."""
    return await _create(ctx, params, is_org=True)


@action("organization_show")
async def organization_show(ctx: Context, params: Params) -> dict[str, Any]:
    """Return an organization by id or name (with its datasets if include_datasets)."""
    return await _show(ctx, params, is_org=True)


@action("organization_list")
async def organization_list(ctx: Context, params: Params) -> list[Any]:
    """Return organization names, or dicts with all_fields."""
    return await _list(ctx, params, is_org=True)


@action("group_create", write=True)
async def group_create(ctx: Context, params: Params) -> dict[str, Any]:
    """Create a group (a theme datasets can belong to)."""
    return await _create(ctx, params, is_org=False)


@action("group_show")
async def group_show(ctx: Context, params: Params) -> dict[str, Any]:
    """Return a group by id or name (with its datasets if include_datasets)."""
    return await _show(ctx, params, is_org=False)


@action("group_list")
async def group_list(ctx: Context, params: Params) -> list[Any]:
    """Return group names, or dicts with all_fields."""
    return await _list(ctx, params, is_org=False)
