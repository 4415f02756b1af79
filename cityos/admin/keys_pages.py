"""The API keys page: list, create (the key shown once) and revoke; and its JSON twin."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cityos.admin.web import Admin, Staff, back, field, html, iso, json, refuse, split_list
from cityos.auth import keys
from cityos.auth.keys import Credential, KeyInputError
from cityos.auth.policy import ROLES
from cityos.http.routing import Handler

TITLE = "APIキー / API keys"


def _state(c: Credential, now: float) -> str:
    if c.revoked is not None:
        return "revoked"
    return "active" if c.active(now) else "expired"


def _doc(c: Credential, now: float) -> dict[str, Any]:
    return {
        "prefix": c.prefix,
        "name": c.name,
        "roles": list(c.roles),
        "tenants": list(c.tenants),
        "scopes": list(c.scopes),
        "created": iso(c.created),
        "expires": iso(c.expires),
        "last_used": iso(c.last_used),
        "revoked": iso(c.revoked),
        "state": _state(c, now),
    }


def keys_routes(admin: Admin) -> list[tuple[str, str, Handler]]:
    """Return the routes of the API keys page."""

    async def visible(staff: Staff) -> list[Credential]:
        # a tenant's admin sees the keys of their tenants only
        found = await admin.identity.store.list_keys()
        return [c for c in found if admin.gate.may(staff, "admin", "keys", c.tenants)]

    async def page(
        staff: Staff,
        status: int = 200,
        *,
        error: str = "",
        made: tuple[Credential, str] | None = None,
        form: dict[str, list[str]] | None = None,
        notice: str = "",
    ) -> Response:
        now = time.time()
        return html(
            "keys.html",
            staff,
            status,
            title=TITLE,
            keys=[(c, _state(c, now)) for c in await visible(staff)],
            roles=sorted(ROLES),
            error=error,
            made=made,
            form=form or {},
            notice=notice,
        )

    async def list_page(request: Request) -> Response:
        staff = await admin.allowed(request, "admin", "keys")
        if isinstance(staff, Response):
            return staff
        revoked = request.query_params.get("revoked", "")
        notice = f"キー {revoked} を失効させました / Key {revoked} revoked" if revoked else ""
        return await page(staff, notice=notice)

    async def list_json(request: Request) -> Response:
        staff = await admin.allowed(request, "admin", "keys", as_json=True)
        if isinstance(staff, Response):
            return staff
        now = time.time()
        return json({"keys": [_doc(c, now) for c in await visible(staff)]})

    async def create(request: Request) -> Response:
        posted = await admin.posted(request, "admin", "keys")
        if isinstance(posted, Response):
            return posted
        staff, form = posted
        now = time.time()
        try:
            name = keys.check_name(field(form, "name"))
            roles = keys.check_roles(form.get("role", []))
            tenants = keys.check_tenants(split_list(field(form, "tenants")) or [""])
            scopes = keys.check_scopes(split_list(field(form, "scopes")))
            text = field(form, "expires").strip()
            expires = keys.parse_expiry(text, now) if text else None
        except KeyInputError as exc:
            return await page(staff, 400, error=str(exc), form=form)
        if not admin.gate.may(staff, "admin", "keys", tenants):
            message = "そのテナントのキーは作れません / You may not make keys for those tenants"
            return await page(staff, 403, error=message, form=form)
        cred, plaintext = await admin.identity.store.create_key(
            name, roles=roles, tenants=tenants, scopes=scopes, expires=expires, now=now
        )
        await admin.record(staff, "key.create", f"key:{cred.prefix}", name=cred.name,
                           roles=list(cred.roles), tenants=list(cred.tenants))  # fmt: skip
        # shown in this answer only (never cached, never in a URL): only its hash is kept
        return await page(staff, 201, made=(cred, plaintext))

    async def revoke(request: Request) -> Response:
        posted = await admin.posted(request, "admin", "keys")
        if isinstance(posted, Response):
            return posted
        staff, _ = posted
        try:
            prefix = keys.check_prefix(request.path_params["prefix"])
        except KeyInputError as exc:
            return refuse(staff, 400, str(exc))
        found = {c.prefix: c for c in await admin.identity.store.list_keys()}.get(prefix)
        if found is None or not admin.gate.may(staff, "admin", "keys", found.tenants):
            return refuse(staff, 404, f"no key has the prefix {prefix}")
        await admin.identity.revoke(prefix)  # this process stops trusting it at once
        await admin.record(staff, "key.revoke", f"key:{prefix}", name=found.name)
        return back(f"/admin/keys?revoked={prefix}")

    return [
        ("GET", "/admin/keys", list_page),
        ("POST", "/admin/keys", create),
        ("GET", "/admin/keys.json", list_json),
        ("POST", "/admin/keys/{prefix}/revoke", revoke),
    ]
