"""The staff accounts page: list, create, disable, enable and unlock; and its JSON twin."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from cityos.admin.web import Admin, Staff, back, field, html, json, refuse, split_list
from cityos.auth import users
from cityos.auth.users import STAFF_ROLES, User, UserInputError
from cityos.http.routing import Handler

TITLE = "職員アカウント / Staff accounts"
#: the buttons of each account and the notice after each
_ACTIONS = {
    "disable": "無効にしました / disabled",
    "enable": "有効にしました / enabled",
    "unlock": "ロックを解除しました / unlocked",
}


def users_routes(admin: Admin) -> list[tuple[str, str, Handler]]:
    """Return the routes of the staff accounts page."""

    async def visible(staff: Staff) -> list[User]:
        found = await admin.accounts.store.list_users()
        return [u for u in found if admin.gate.may(staff, "admin", "keys", u.tenants)]

    async def page(
        staff: Staff,
        status: int = 200,
        *,
        error: str = "",
        notice: str = "",
        form: dict[str, list[str]] | None = None,
    ) -> Response:
        now = time.time()
        return html(
            "users.html",
            staff,
            status,
            title=TITLE,
            users=[(u, u.state(now)) for u in await visible(staff)],
            roles=sorted(STAFF_ROLES),
            error=error,
            notice=notice,
            form=form or {},
            min_password=users.MIN_PASSWORD,
        )

    async def list_page(request: Request) -> Response:
        staff = await admin.allowed(request, "admin", "keys")
        if isinstance(staff, Response):
            return staff
        done, name = request.query_params.get("done", ""), request.query_params.get("name", "")
        notice = f"{name}: {_ACTIONS.get(done, '作成しました / created')}" if done else ""
        return await page(staff, notice=notice)

    async def list_json(request: Request) -> Response:
        staff = await admin.allowed(request, "admin", "keys", as_json=True)
        if isinstance(staff, Response):
            return staff
        now = time.time()
        return json({"users": [u.as_dict(now) for u in await visible(staff)]})

    async def create(request: Request) -> Response:
        posted = await admin.posted(request, "admin", "keys")
        if isinstance(posted, Response):
            return posted
        staff, form = posted
        kept = {k: v for k, v in form.items() if k not in ("password", "password2")}
        password = field(form, "password")
        try:
            tenants = users.check_tenants(split_list(field(form, "tenants")) or [""])
            if password != field(form, "password2"):
                raise UserInputError("the two passwords differ / パスワードが一致しません")
        except UserInputError as exc:
            return await page(staff, 400, error=str(exc), form=kept)
        if not admin.gate.may(staff, "admin", "keys", tenants):
            message = "そのテナントの職員は作れません / You may not add staff to those tenants"
            return await page(staff, 403, error=message, form=kept)
        try:
            user = await admin.accounts.create(
                field(form, "name").strip(),
                password,
                roles=form.get("role", []),
                tenants=tenants,
                display_name=field(form, "display_name"),
            )
        except UserInputError as exc:
            return await page(staff, 400, error=str(exc), form=kept)
        await admin.record(staff, "user.create", f"user:{user.name}", roles=list(user.roles),
                           tenants=list(user.tenants))  # fmt: skip
        return back(f"/admin/users?done=create&name={user.name}")

    async def change(request: Request) -> Response:
        posted = await admin.posted(request, "admin", "keys")
        if isinstance(posted, Response):
            return posted
        staff, _ = posted
        name, what = request.path_params["name"], request.path_params["action"]
        if what not in _ACTIONS:
            return refuse(staff, 404, f"no such action: {what}")
        found = await admin.accounts.store.get(name)
        if found is None or not admin.gate.may(staff, "admin", "keys", found.tenants):
            return refuse(staff, 404, f"no user is called {name}")
        if what == "disable" and staff.actor == f"user:{name}":
            return refuse(staff, 400, "自分自身は無効にできません / You cannot disable yourself")
        store = admin.accounts.store
        if what == "unlock":
            await store.unlock(name)
        else:
            await store.set_disabled(name, what == "disable")  # disabling ends their sessions
        await admin.record(staff, f"user.{what}", f"user:{name}")
        return back(f"/admin/users?done={what}&name={name}")

    return [
        ("GET", "/admin/users", list_page),
        ("POST", "/admin/users", create),
        ("GET", "/admin/users.json", list_json),
        ("POST", "/admin/users/{name}/{action}", change),
    ]
