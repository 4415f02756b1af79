"""The admin routes: sign-in and out, the home page, the stylesheet, and the pages' table."""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.responses import Response

from cityos.admin.audit_page import audit_routes
from cityos.admin.keys_pages import keys_routes
from cityos.admin.users_pages import users_routes
from cityos.admin.web import (
    CROSS_SITE,
    CSS,
    LOGIN_COOKIE,
    STALE_FORM,
    Admin,
    Gate,
    Staff,
    back,
    field,
    html,
    iso,
    json,
    read_form,
    refuse,
    same_origin,
    to_login,
)
from cityos.auth.audit import Entry
from cityos.auth.context import Identity
from cityos.auth.policy import Policy
from cityos.auth.sessions import ABSOLUTE_SECONDS, COOKIE, Sessions, same_token
from cityos.auth.users import REFUSED, Accounts, SignIn
from cityos.http.routing import Handler
from cityos.storage.engines import Audit

__all__ = ["admin_routes"]


def _cookie(
    response: Response, request: Request, name: str, value: str, path: str, *, https: bool
) -> None:
    response.set_cookie(
        name,
        value,
        path=path,
        httponly=True,
        samesite="strict",
        # behind a TLS proxy the request itself is plain http: the public URL tells
        secure=https or request.url.scheme == "https",
    )


async def _audit_sign_in(admin: Admin, name: str, outcome: SignIn) -> None:
    target = f"user:{name[:64]}"
    if outcome.ok:
        entry = Entry(target, "user.login", target, detail={"rehashed": outcome.rehashed})
    else:
        entry = Entry("anonymous", "user.login", target, outcome="denied",
                      detail={"result": outcome.result})  # fmt: skip
    await admin.audit.append(entry)
    if outcome.locked_now and outcome.user is not None:
        until = outcome.user.locked_until
        await admin.audit.append(
            Entry(
                "system",
                "user.lock",
                target,
                outcome="denied",
                detail={"until": iso(until), "reason": "too many wrong passwords"},
            )
        )


def _home_doc(staff: Staff) -> dict[str, object]:
    user = staff.user
    return {
        "actor": staff.actor,
        "local": staff.local,
        "roles": sorted(staff.principal.roles),
        "tenants": sorted(staff.principal.tenants),
        "display_name": user.display_name if user else "",
        "last_login": iso(user.last_login) if user else None,
    }


def admin_routes(
    *,
    accounts: Accounts,
    sessions: Sessions,
    identity: Identity,
    audit: Audit,
    policy: Policy,
    enforce: bool,
    https: bool = False,
) -> list[tuple[str, str, Handler]]:
    """Return the /admin/ routes (CITYOS_AUTH=off: a local admin, no sign-in).

    With https (the public URL is https://), session cookies are Secure even when a TLS proxy
    in front forwards plain http.
    """
    admin = Admin(Gate(sessions, policy, enforce=enforce), accounts, identity, audit)

    async def stylesheet(_: Request) -> Response:
        return Response(
            CSS,
            headers={"content-type": "text/css; charset=utf-8", "cache-control": "max-age=3600"},
        )

    async def login_form(request: Request) -> Response:
        if not enforce:
            return back("/admin/")
        return _login_page(request, "", None, 200)

    def _login_page(request: Request, name: str, error: str | None, status: int) -> Response:
        token = secrets.token_urlsafe(32)
        page = html("login.html", None, status, title="ログイン / Sign in", name=name,
                    error=error, token=token)  # fmt: skip
        _cookie(page, request, LOGIN_COOKIE, token, "/admin/login", https=https)
        return page

    async def login(request: Request) -> Response:
        if not enforce:
            return back("/admin/")
        if not same_origin(request):
            return refuse(None, 403, CROSS_SITE)
        form = await read_form(request)
        if form is None:
            return refuse(None, 413, "the form is too large")
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not same_token(expected, field(form, "token")):
            return _login_page(request, "", STALE_FORM, 403)
        name = field(form, "name").strip()
        outcome = await accounts.sign_in(name, field(form, "password"))
        await _audit_sign_in(admin, name, outcome)
        if not outcome.ok or outcome.user is None:
            return _login_page(request, name, REFUSED, 403)
        await sessions.end(request.cookies.get(COOKIE))  # a new token at every sign-in
        token, _ = await sessions.start(outcome.user)
        response = back("/admin/")
        _cookie(response, request, COOKIE, token, "/admin", https=https)
        response.delete_cookie(LOGIN_COOKIE, path="/admin/login")
        return response

    async def logout(request: Request) -> Response:
        if not enforce:
            return back("/admin/")
        if not same_origin(request):
            return refuse(None, 403, CROSS_SITE)
        staff = await admin.gate.staff(request)
        if staff is None:
            return to_login()
        form = await read_form(request)
        if form is None or staff.csrf is None or not same_token(staff.csrf, field(form, "csrf")):
            return refuse(staff, 403, STALE_FORM)
        await sessions.end(request.cookies.get(COOKIE))
        await admin.record(staff, "user.logout", staff.actor)
        response = back("/admin/login")
        response.delete_cookie(COOKIE, path="/admin", httponly=True, samesite="strict")
        return response

    async def home(request: Request) -> Response:
        staff = await admin.gate.staff(request)
        if staff is None:
            return to_login()
        ends = None if staff.started is None else staff.started + ABSOLUTE_SECONDS
        return html("home.html", staff, title="管理 / Administration", me=_home_doc(staff),
                    ends=ends)  # fmt: skip

    async def home_json(request: Request) -> Response:
        staff = await admin.gate.staff(request, bearer=True)
        if staff is None:
            return to_login(as_json=True)
        return json(_home_doc(staff))

    return [
        ("GET", "/admin/assets/admin.css", stylesheet),
        ("GET", "/admin/login", login_form),
        ("POST", "/admin/login", login),
        ("POST", "/admin/logout", logout),
        ("GET", "/admin", home),
        ("GET", "/admin/me.json", home_json),
        *keys_routes(admin),
        *users_routes(admin),
        *audit_routes(admin),
    ]
