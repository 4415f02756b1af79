"""The action registry: every CKAN action is an async function registered by name.

An action takes the call's `Context` and its parameters (a dict, as CKAN clients send it:
query-string values for GET, a JSON object or form fields for POST) and returns the
`result`, or raises a `CkanError`. The HTTP layer (catalog/api.py), the CLI importer and the
catalog pages all call actions through `call`, so they share validation and permissions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cityos.catalog.errors import NotAuthorized, UnknownAction

if TYPE_CHECKING:
    from cityos.catalog.service import Catalog

Params = dict[str, Any]
ActionFn = Callable[["Context", Params], Awaitable[Any]]


@dataclass(slots=True)
class Context:
    """Who calls and with what: the catalog services and the authenticated user (or None)."""

    catalog: Catalog
    user: str | None = None
    #: uploaded files of a multipart call: field name -> (filename, content type, bytes)
    files: dict[str, tuple[str, str, bytes]] = field(default_factory=dict)
    #: the public base URL (for resource URLs and help links), without a trailing slash
    base_url: str = ""
    #: the importer and live datasets write as the system, whatever the HTTP user
    system: bool = False


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    fn: ActionFn
    write: bool  # needs an authenticated user (an API token)


ACTIONS: dict[str, Action] = {}


def action(name: str, *, write: bool = False) -> Callable[[ActionFn], ActionFn]:
    """Register an action under its CKAN name."""

    def register(fn: ActionFn) -> ActionFn:
        if name in ACTIONS:
            raise RuntimeError(f"action {name} registered twice")
        ACTIONS[name] = Action(name, fn, write)
        return fn

    return register


async def call(ctx: Context, name: str, params: Params) -> Any:
    """Run an action by name, checking that writes come with a user."""
    import cityos.catalog.actions  # noqa: F401  # registers every action

    found = ACTIONS.get(name)
    if found is None:
        raise UnknownAction(name)
    if found.write and ctx.user is None and not ctx.system:
        raise NotAuthorized(f"Action {name} requires an authorized user (an API token)")
    return await found.fn(ctx, params)
