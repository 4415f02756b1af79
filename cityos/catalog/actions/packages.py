"""CKAN actions on datasets and resources: package_*, resource_*, package_search, tag_list."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final

from cityos.catalog import licenses, registry, search, text, validate
from cityos.catalog.errors import IntegrityError, NotAuthorized, NotFound, ValidationError
from cityos.catalog.files_api import download_path, remove_files, store_upload
from cityos.catalog.registry import Context, Params, action
from cityos.storage.sqlite_catalog import DatasetRow, now_iso

ROWS_MAX: Final = 1000
DEFAULT_ROWS: Final = 10
#: resource keys CKAN always shows
RESOURCE_KEYS: Final = (
    "cache_last_updated",
    "cache_url",
    "created",
    "datastore_active",
    "description",
    "format",
    "hash",
    "id",
    "last_modified",
    "metadata_modified",
    "mimetype",
    "mimetype_inner",
    "name",
    "package_id",
    "position",
    "resource_type",
    "size",
    "state",
    "url",
    "url_type",
)
_RESOURCE_TEXT: Final = ("name", "description", "format", "mimetype", "mimetype_inner", "hash")
_RESOURCE_FIXED: Final = frozenset(
    {"id", "package_id", "position", "created", "metadata_modified", "upload"}
)


def _can_see(ctx: Context, doc: dict[str, Any]) -> bool:
    """Private, draft and deleted datasets need a user (any token, for now)."""
    if ctx.user is not None or ctx.system:
        return True
    return not doc.get("private") and doc.get("state") == "active"


async def _dataset(ctx: Context, ref: Any, field: str = "id") -> dict[str, Any]:
    """Return a dataset by id or name that the caller may see, or raise."""
    key = validate.as_str(ref, field)
    if not key:
        raise validate.fail(field, validate.MISSING)
    doc = await ctx.catalog.meta.get_dataset(key)
    if doc is None:
        raise NotFound("Dataset not found")
    if not _can_see(ctx, doc):
        raise NotAuthorized(f"User {ctx.user or ''} not authorized to read package {doc['id']}")
    return doc


# -- building a dataset ---------------------------------------------------------------------


def _resource(
    ctx: Context, raw: Any, package_id: str, position: int, old: dict[str, Any] | None, now: str
) -> dict[str, Any]:
    """Return a clean resource dict from what a client sent (old: the stored one, kept ids)."""
    if not isinstance(raw, dict):
        raise validate.fail("resources", "Each resource must be an object")
    res: dict[str, Any] = {k: v for k, v in raw.items() if k not in _RESOURCE_FIXED}
    for key in _RESOURCE_TEXT:
        res[key] = validate.as_str(raw.get(key), f"resources.{key}")
    url = validate.url(raw.get("url"), "url") or ""
    res["url"] = url
    res["format"] = (res["format"] or "").strip() or _format_of(url)
    res["size"] = (
        None
        if raw.get("size") in (None, "")
        else validate.as_int(raw.get("size"), "size", 0, minimum=0)
    )
    res["datastore_active"] = validate.as_bool(raw.get("datastore_active"), "datastore_active")
    res["url_type"] = validate.as_str(raw.get("url_type"), "url_type")
    res["state"] = "active"
    given = raw.get("id")
    if given is not None and not (isinstance(given, str) and validate.NAME.match(given.lower())):
        raise validate.fail("resources", f"Invalid resource id {given!r}")
    res["id"] = old["id"] if old else given if isinstance(given, str) and given else _new_id()
    res["package_id"] = package_id
    res["position"] = position
    res["created"] = old["created"] if old else now
    res["metadata_modified"] = now
    for key in ("cache_last_updated", "cache_url", "last_modified", "resource_type"):
        res.setdefault(key, None)
    if old and old.get("url_type") == "upload" and res["url_type"] is None and url == old["url"]:
        # a client echoing an uploaded resource back keeps its file
        for key in ("url_type", "size", "hash", "mimetype", "last_modified"):
            res[key] = old.get(key) if raw.get(key) in (None, "") else res[key]
    return {k: res.get(k) for k in RESOURCE_KEYS} | {
        k: v for k, v in res.items() if k not in RESOURCE_KEYS
    }


def _new_id() -> str:
    return str(uuid.uuid4())


def _format_of(url: str) -> str:
    """Guess a format (CSV, JSON...) from a URL's extension, as CKAN does."""
    last = url.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1]
    if "." not in last:
        return ""
    ext = last.rsplit(".", 1)[1]
    return ext.upper() if ext.isalnum() and len(ext) <= 8 else ""


async def _organization(ctx: Context, ref: Any) -> dict[str, Any] | None:
    ref = validate.as_str(ref, "owner_org")
    if not ref:
        return None
    org = await ctx.catalog.meta.get_group(ref, is_org=True)
    if org is None or org.get("state") != "active":
        raise validate.fail("owner_org", "Organization does not exist")
    org.pop("package_count", None)
    return {
        k: org.get(k)
        for k in (
            "id",
            "name",
            "title",
            "type",
            "description",
            "image_url",
            "created",
            "is_organization",
            "approval_status",
            "state",
        )
    }


async def _groups(ctx: Context, refs: list[str]) -> list[dict[str, Any]]:
    out = []
    for ref in dict.fromkeys(refs):
        grp = await ctx.catalog.meta.get_group(ref, is_org=False)
        if grp is None or grp.get("state") != "active":
            raise validate.fail("groups", f"Group {ref} does not exist")
        out.append(
            {
                "id": grp["id"],
                "name": grp["name"],
                "title": grp["title"],
                "display_name": grp["display_name"],
                "description": grp.get("description") or "",
                "image_display_url": grp.get("image_display_url") or "",
            }
        )
    return out


async def _build(
    ctx: Context, params: Params, old: dict[str, Any] | None, *, keep_resources: bool
) -> dict[str, Any]:
    """Validate a full dataset dict (create or update) and return the dict to store."""
    now = now_iso()
    errors: dict[str, list[str]] = {}
    doc: dict[str, Any] = {}
    try:
        doc["name"] = validate.name(params.get("name") or (old or {}).get("name"))
    except ValidationError as exc:
        errors.update(exc.errors)
    for key in validate.PACKAGE_TEXT_FIELDS:
        try:
            value = validate.as_str(params.get(key), key)
            if key in ("author_email", "maintainer_email"):
                value = validate.email(value, key)
            elif key == "url":
                value = validate.url(value, key)
            doc[key] = value
        except ValidationError as exc:
            errors.update(exc.errors)
    steps = (
        ("private", lambda: validate.as_bool(params.get("private"), "private")),
        ("state", lambda: validate.state(params.get("state"))),
        ("tags", lambda: validate.tags(params)),
        ("extras", lambda: validate.extras(params.get("extras"))),
        ("groups", lambda: validate.refs(params.get("groups"), "groups")),
        ("resources", lambda: validate.as_list(params.get("resources"), "resources")),
    )
    clean: dict[str, Any] = {}
    for key, step in steps:
        try:
            clean[key] = step()
        except ValidationError as exc:
            errors.update(exc.errors)
    try:
        org = await _organization(ctx, params.get("owner_org"))
    except ValidationError as exc:
        errors.update(exc.errors)
        org = None
    if not errors:
        try:
            groups = await _groups(ctx, clean["groups"])
        except ValidationError as exc:
            errors.update(exc.errors)
    if errors:
        raise ValidationError(errors)
    type_ = validate.as_str(params.get("type"), "type") or "dataset"
    package_id = old["id"] if old else str(uuid.uuid4())
    old_resources = {r["id"]: r for r in (old or {}).get("resources", [])}
    if keep_resources and "resources" not in params and old is not None:
        resources = old["resources"]
    else:
        resources = []
        for i, raw in enumerate(clean["resources"]):
            rid = raw.get("id") if isinstance(raw, dict) else None
            resources.append(_resource(ctx, raw, package_id, i, old_resources.get(rid), now))
    tags = clean["tags"]
    doc.update(
        {
            "id": package_id,
            "type": type_,
            "owner_org": org["id"] if org else None,
            "organization": org,
            "private": clean["private"],
            "state": clean["state"],
            "extras": clean["extras"],
            "groups": groups,
            "resources": resources,
            "tags": [
                {
                    "display_name": t,
                    "id": _tag_id(t),
                    "name": t,
                    "state": "active",
                    "vocabulary_id": None,
                }
                for t in tags
            ],
            "num_tags": len(tags),
            "num_resources": len(resources),
            "metadata_created": old["metadata_created"] if old else now,
            "metadata_modified": now,
            "creator_user_id": old["creator_user_id"] if old else (ctx.user or "system"),
            "relationships_as_object": [],
            "relationships_as_subject": [],
        }
    )
    if not doc.get("title"):
        doc["title"] = doc["name"]
    doc.update(licenses.fields(doc.get("license_id")))
    return dict(sorted(doc.items()))


def _tag_id(tag: str) -> str:
    """Return a stable id for a tag name (tags have no table of their own)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "cityos:tag:" + tag))


def _row(doc: dict[str, Any]) -> DatasetRow:
    org = doc.get("organization") or {}
    res = doc.get("resources", [])
    body = [
        doc["name"],
        *(t["name"] for t in doc.get("tags", [])),
        org.get("title") or "",
        org.get("name") or "",
        *(g.get("title") or g["name"] for g in doc.get("groups", [])),
        *(
            f"{r.get('name') or ''} {r.get('description') or ''} {r.get('format') or ''}"
            for r in res
        ),
        *(doc.get(k) or "" for k in ("author", "maintainer", "version")),
        *(e["value"] for e in doc.get("extras", [])),
    ]
    return DatasetRow(
        doc=doc,
        org_name=org.get("name"),
        tags=[t["name"] for t in doc.get("tags", [])],
        groups=[g["name"] for g in doc.get("groups", [])],
        resources=[(r["id"], r.get("format") or "") for r in res],
        fts=(
            text.index_text(doc.get("title") or ""),
            text.index_text(doc.get("notes") or ""),
            text.index_text(*body),
        ),
    )


#: attempts of a read-modify-write of one dataset before giving up (others kept changing it)
ATTEMPTS: Final = 8
Change = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def _store(ctx: Context, doc: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """Write a dataset unless it changed since `old` was read; False when it did."""
    expect = old["metadata_modified"] if old is not None else None
    conflict = await ctx.catalog.meta.save_dataset(_row(doc), expect_modified=expect)
    if conflict == "stale":
        return False
    if conflict == "name":
        raise validate.fail("name", "That URL is already in use.")
    if conflict is not None:
        raise validate.fail(conflict, "A resource id is already used by another dataset")
    if old is not None:
        kept = {r["id"] for r in doc["resources"] if r.get("url_type") == "upload"}
        await remove_files(ctx.catalog, [r["id"] for r in old["resources"] if r["id"] not in kept])
    return True


#: one read-modify-write at a time per dataset in this process (the stale check in the
#: store covers writers in other processes)
_LOCKS: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


async def _commit(ctx: Context, ref: Any, change: Change, field: str = "id") -> dict[str, Any]:
    """Read a dataset, apply `change`, write it; again if another write came in between."""
    first = await _dataset(ctx, ref, field)
    lock = _LOCKS.setdefault(first["id"], asyncio.Lock())
    async with lock:
        for attempt in range(ATTEMPTS):
            old = first if attempt == 0 else await _dataset(ctx, first["id"], field)
            doc = await change(old)
            if await _store(ctx, doc, old):
                return doc
            await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
    raise IntegrityError("the dataset kept changing during this update; try again")


# -- dataset actions ------------------------------------------------------------------------


@action("package_show")
async def package_show(ctx: Context, params: Params) -> dict[str, Any]:
    """Return a dataset by id or name."""
    return await _dataset(ctx, params.get("id") or params.get("name"))


@action("package_list")
async def package_list(ctx: Context, params: Params) -> list[str]:
    """Return the names of public, active datasets in name order."""
    limit = params.get("limit")
    return await ctx.catalog.meta.list_names(
        None if limit in (None, "") else validate.as_int(limit, "limit", 0, minimum=0),
        validate.as_int(params.get("offset"), "offset", 0, minimum=0),
    )


@action("package_create", write=True)
async def package_create(ctx: Context, params: Params) -> dict[str, Any]:
    """Create a dataset (and its resources given as URLs)."""
    if params.get("id"):
        raise validate.fail("id", "Cannot set the id of a new dataset")
    doc = await _build(ctx, params, None, keep_resources=False)
    await _store(ctx, doc, None)
    return doc


@action("package_update", write=True)
async def package_update(ctx: Context, params: Params) -> dict[str, Any]:
    """Replace a dataset: fields left out are cleared; resources replaced when given."""

    async def change(old: dict[str, Any]) -> dict[str, Any]:
        return await _build(ctx, params, old, keep_resources=True)

    return await _commit(ctx, params.get("id") or params.get("name"), change)


@action("package_patch", write=True)
async def package_patch(ctx: Context, params: Params) -> dict[str, Any]:
    """Change the given fields of a dataset, keeping the others."""

    async def change(old: dict[str, Any]) -> dict[str, Any]:
        merged = {**old, **{k: v for k, v in params.items() if k != "id"}}
        if "tags" not in params and "tag_string" in params:
            merged.pop("tags", None)
        return await _build(ctx, merged, old, keep_resources=True)

    return await _commit(ctx, params.get("id") or params.get("name"), change)


@action("package_delete", write=True)
async def package_delete(ctx: Context, params: Params) -> None:
    """Mark a dataset deleted: it leaves lists and search; its uploaded files are removed."""

    async def change(old: dict[str, Any]) -> dict[str, Any]:
        return {**old, "state": "deleted", "metadata_modified": now_iso()}

    doc = await _commit(ctx, params.get("id") or params.get("name"), change)
    gone = [r["id"] for r in doc.get("resources", [])]
    await remove_files(ctx.catalog, gone)
    await _drop_tables(ctx, gone)


async def _drop_tables(ctx: Context, resource_ids: list[str]) -> None:
    """Drop the datastore tables of removed resources (CKAN's datastore does the same)."""
    system = Context(catalog=ctx.catalog, system=True, base_url=ctx.base_url)
    for rid in resource_ids:
        with contextlib.suppress(NotFound):  # no table: nothing to drop
            await registry.call(system, "datastore_delete", {"resource_id": rid})


@action("package_search")
async def package_search(ctx: Context, params: Params) -> dict[str, Any]:
    """Search datasets (Solr subset, Japanese-aware) with facets."""
    user = ctx.user is not None or ctx.system
    fq = params.get("fq")
    fqs = [fq] if isinstance(fq, str) else list(fq or [])
    fqs += list(validate.as_list(params.get("fq_list"), "fq_list"))
    if not all(isinstance(f, str) for f in fqs):
        raise validate.fail("fq", "Must be a string")
    q = validate.as_str(params.get("q"), "q")
    facet = validate.as_bool(params.get("facet"), "facet", default=True)
    query = search.Query(
        where=search.parse_query(q, fqs),
        sort=search.parse_sort(validate.as_str(params.get("sort"), "sort")),
        rows=validate.as_int(params.get("rows"), "rows", DEFAULT_ROWS, minimum=0, maximum=ROWS_MAX),
        start=validate.as_int(params.get("start"), "start", 0, minimum=0),
        facet_fields=search.parse_facet_fields(params.get("facet.field")) if facet else [],
        facet_limit=validate.as_int(params.get("facet.limit"), "facet.limit", 50),
        facet_mincount=validate.as_int(params.get("facet.mincount"), "facet.mincount", 1),
        include_private=user and validate.as_bool(params.get("include_private"), "include_private"),
        include_drafts=user and validate.as_bool(params.get("include_drafts"), "include_drafts"),
        include_deleted=user and validate.as_bool(params.get("include_deleted"), "include_deleted"),
    )
    found = await ctx.catalog.meta.search(query)
    titles = await _facet_titles(ctx, found.facets)
    return {
        "count": found.count,
        "facets": {name: dict(items) for name, items in found.facets.items()},
        "results": found.docs,
        "search_facets": {
            name: {
                "title": name,
                "items": [
                    {"count": n, "display_name": titles.get((name, v), v), "name": v}
                    for v, n in items
                ],
            }
            for name, items in found.facets.items()
        },
        "sort": validate.as_str(params.get("sort"), "sort") or search.DEFAULT_SORT,
    }


async def _facet_titles(
    ctx: Context, facets: dict[str, list[tuple[str, int]]]
) -> dict[tuple[str, str], str]:
    """Return display names of organization and group facet values (their titles)."""
    out: dict[tuple[str, str], str] = {}
    for name, is_org in (("organization", True), ("groups", False)):
        values = [v for v, _ in facets.get(name, [])]
        if not values:
            continue
        titles = await ctx.catalog.meta.group_titles(values, is_org=is_org)
        out.update(((name, v), title) for v, title in titles.items())
    for v, _ in facets.get("license_id", []):
        lic = licenses.BY_ID.get(v)
        if lic is not None:
            out[("license_id", v)] = lic.title
    return out


@action("tag_list")
async def tag_list(ctx: Context, params: Params) -> list[Any]:
    """Return the tags of public datasets (names, or dicts with all_fields)."""
    names = await ctx.catalog.meta.tag_names(validate.as_str(params.get("query"), "query"))
    if validate.as_bool(params.get("all_fields"), "all_fields"):
        return [
            {"display_name": t, "id": _tag_id(t), "name": t, "vocabulary_id": None} for t in names
        ]
    return names


# -- resources ------------------------------------------------------------------------------


async def _resource_of(ctx: Context, params: Params) -> tuple[dict[str, Any], dict[str, Any]]:
    rid = validate.as_str(params.get("id"), "id")
    if not rid:
        raise validate.fail("id", validate.MISSING)
    pkg = await ctx.catalog.meta.dataset_of_resource(rid)
    if pkg is None:
        raise NotFound("Resource was not found.")
    if not _can_see(ctx, pkg):
        raise NotAuthorized(f"User {ctx.user or ''} not authorized to read resource {rid}")
    res = next(r for r in pkg["resources"] if r["id"] == rid)
    return pkg, res


@action("resource_show")
async def resource_show(ctx: Context, params: Params) -> dict[str, Any]:
    """Return a resource by id."""
    return (await _resource_of(ctx, params))[1]


async def _with_upload(
    ctx: Context, params: Params, pkg: dict[str, Any], rid: str
) -> tuple[dict[str, Any], bool]:
    """Store a multipart `upload` if any; return the resource fields it sets."""
    upload = ctx.files.get("upload")
    if upload is None:
        return dict(params), False
    filename, ctype, data = upload
    stored = await store_upload(ctx.catalog, rid, filename, ctype, data)
    fields = {
        **params,
        "url": ctx.catalog.base_url + download_path(pkg["id"], rid, stored.name),
        "url_type": "upload",
        "size": stored.size,
        "hash": stored.sha256,
        "mimetype": stored.mimetype,
        "last_modified": now_iso(),
    }
    if not params.get("format"):
        fields["format"] = stored.format
    if not params.get("name"):
        fields["name"] = stored.name
    return fields, True


async def _change_resources(
    ctx: Context,
    package_id: str,
    edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    uploaded: str | None = None,
) -> dict[str, Any]:
    """Store a dataset with its resource list edited; on failure remove a fresh upload."""

    async def change(old: dict[str, Any]) -> dict[str, Any]:
        raw = [{k: v for k, v in r.items() if k != "position"} for r in edit(old["resources"])]
        return await _build(ctx, {**old, "resources": raw}, old, keep_resources=False)

    try:
        return await _commit(ctx, package_id, change)
    except Exception:
        if uploaded is not None:
            await remove_files(ctx.catalog, [uploaded])
        raise


def _replace(rid: str, fields: dict[str, Any] | None) -> Callable[[list[Any]], list[Any]]:
    """Return an edit replacing (merging into, if fields is None: removing) one resource."""

    def edit(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not any(r["id"] == rid for r in resources):
            raise NotFound("Resource was not found.")
        if fields is None:
            return [r for r in resources if r["id"] != rid]
        return [fields if r["id"] == rid else r for r in resources]

    return edit


@action("resource_create", write=True)
async def resource_create(ctx: Context, params: Params) -> dict[str, Any]:
    """Add a resource to a dataset: a URL, or a file uploaded as multipart `upload`."""
    package_id = validate.as_str(params.get("package_id"), "package_id")
    if not package_id:
        raise validate.fail("package_id", validate.MISSING)
    pkg = await _dataset(ctx, package_id, "package_id")
    rid = str(uuid.uuid4())
    fields, uploaded = await _with_upload(ctx, params, pkg, rid)
    if not uploaded and not fields.get("url"):
        fields["url"] = ""
    fields["id"] = rid
    doc = await _change_resources(
        ctx, pkg["id"], lambda rs: [*rs, fields], rid if uploaded else None
    )
    return next(r for r in doc["resources"] if r["id"] == rid)


@action("resource_update", write=True)
async def resource_update(ctx: Context, params: Params) -> dict[str, Any]:
    """Replace a resource's fields (an upload replaces its file)."""
    pkg, res = await _resource_of(ctx, params)
    fields, uploaded = await _with_upload(ctx, params, pkg, res["id"])
    if not uploaded and res.get("url_type") == "upload" and not params.get("url"):
        fields.update({k: res.get(k) for k in ("url", "url_type", "size", "hash", "mimetype")})
    fields["datastore_active"] = params.get("datastore_active", res.get("datastore_active"))
    doc = await _change_resources(ctx, pkg["id"], _replace(res["id"], fields))
    return next(r for r in doc["resources"] if r["id"] == res["id"])


@action("resource_patch", write=True)
async def resource_patch(ctx: Context, params: Params) -> dict[str, Any]:
    """Change the given fields of a resource (e.g. datastore_active), keeping the others."""
    pkg, res = await _resource_of(ctx, params)
    fields, _ = await _with_upload(ctx, params, pkg, res["id"])

    def edit(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        fresh = next((r for r in resources if r["id"] == res["id"]), None)
        if fresh is None:
            raise NotFound("Resource was not found.")
        return _replace(res["id"], {**fresh, **fields})(resources)

    doc = await _change_resources(ctx, pkg["id"], edit)
    return next(r for r in doc["resources"] if r["id"] == res["id"])


@action("resource_delete", write=True)
async def resource_delete(ctx: Context, params: Params) -> None:
    """Remove a resource from its dataset (and its uploaded file and datastore table)."""
    pkg, res = await _resource_of(ctx, params)
    await _change_resources(ctx, pkg["id"], _replace(res["id"], None))
    await _drop_tables(ctx, [res["id"]])
