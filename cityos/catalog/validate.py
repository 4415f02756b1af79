"""Parameter coercion and CKAN's validation rules for datasets, resources and groups.

Values arrive as CKAN clients send them: strings from a query string or a form, typed values
from a JSON body. Each function returns the clean value or raises ValidationError naming the
field, with CKAN's messages where CKAN has one.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from cityos.catalog.errors import ValidationError

NAME: Final = re.compile(r"^[a-z0-9_-]+$")
TAG: Final = re.compile(r"^[\w .-]+$")
EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MISSING: Final = "Missing value"

#: dataset fields that are strings (cleared to None by package_update when left out)
PACKAGE_TEXT_FIELDS: Final = (
    "title",
    "author",
    "author_email",
    "maintainer",
    "maintainer_email",
    "license_id",
    "notes",
    "url",
    "version",
)
#: what cannot be an extra's key: the dataset's own fields
CORE_FIELDS: Final = frozenset(
    {
        *PACKAGE_TEXT_FIELDS,
        "id",
        "name",
        "owner_org",
        "private",
        "state",
        "type",
        "tags",
        "extras",
        "groups",
        "resources",
        "organization",
        "metadata_created",
        "metadata_modified",
        "creator_user_id",
    }
)
STATES: Final = ("active", "draft", "deleted")


def fail(field: str, message: str) -> ValidationError:
    """Return a ValidationError of one field (raise it)."""
    return ValidationError({field: [message]})


def as_bool(value: Any, field: str, default: bool = False) -> bool:
    """Coerce true/false (or 1/0, yes/no, on/off) from a JSON or query-string value."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "1", "yes", "on", "t", "y"):
            return True
        if low in ("false", "0", "no", "off", "f", "n"):
            return False
    raise fail(field, f"Value must be one of: true, false (not {value!r})")


def as_int(
    value: Any, field: str, default: int, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """Coerce an integer; values under `minimum` are refused, above `maximum` capped."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise fail(field, "Invalid integer")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,18}\s*", value):
        value = int(value)
    if not isinstance(value, int):
        raise fail(field, "Invalid integer")
    if minimum is not None and value < minimum:
        raise fail(field, "Must be a natural number" if minimum == 0 else f"Must be >= {minimum}")
    if maximum is not None and value > maximum:
        return maximum
    return value


def as_str(value: Any, field: str, *, default: str | None = None) -> str | None:
    """Coerce an optional string; numbers become text, anything else is refused."""
    if value is None:
        return default
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise fail(field, "Must be a string")


def required_str(params: dict[str, Any], field: str) -> str:
    """Return a non-empty string parameter or raise CKAN's 'Missing value'."""
    value = as_str(params.get(field), field)
    if value is None or not value.strip():
        raise fail(field, MISSING)
    return value.strip()


def as_list(value: Any, field: str) -> list[Any]:
    """Coerce a list (a JSON list given as text, as from a query string or a form)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise fail(field, "Must be a list (JSON)") from None
    if not isinstance(value, list):
        raise fail(field, "Must be a list")
    return value


def name(value: Any, field: str = "name") -> str:
    """Validate a CKAN name: 2-100 characters, lowercase ASCII letters, digits, - and _."""
    text = as_str(value, field)
    if text is None or not text:
        raise fail(field, MISSING)
    if len(text) < 2:
        raise fail(field, "Must be at least 2 characters long")
    if len(text) > 100:
        raise fail(field, "Name must be a maximum of 100 characters long")
    if not NAME.match(text):
        raise fail(
            field, "Must be purely lowercase alphanumeric (ascii) characters and these symbols: -_"
        )
    return text


def email(value: Any, field: str) -> str | None:
    """Validate an optional email address."""
    text = as_str(value, field)
    if text and not EMAIL.match(text):
        raise fail(field, f"Email {text} is not a valid format")
    return text or None


def url(value: Any, field: str) -> str | None:
    """Validate an optional URL: http(s) or ftp when it has a scheme."""
    text = as_str(value, field)
    if not text:
        return text
    if len(text) > 2000:
        raise fail(field, "Please provide a valid URL (at most 2,000 characters)")
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", text)
    if scheme and scheme.group(1).lower() not in ("http", "https", "ftp"):
        raise fail(field, "Please provide a valid URL")
    return text


def tags(params: dict[str, Any]) -> list[str]:
    """Return tag names from `tags` ([{name}] or names) or `tag_string` ("a,b")."""
    out: list[str] = []
    if params.get("tag_string"):
        raw = as_str(params["tag_string"], "tag_string") or ""
        out.extend(t.strip() for t in raw.split(",") if t.strip())
    for item in as_list(params.get("tags"), "tags"):
        value = item.get("name") if isinstance(item, dict) else item
        if not isinstance(value, str) or not value.strip():
            raise fail("tags", "Each tag needs a name")
        out.append(value.strip())
    for tag in out:
        if len(tag) < 2:
            raise fail("tags", f'Tag "{tag}" length is less than minimum 2')
        if len(tag) > 100:
            raise fail("tags", f'Tag "{tag}" length is more than maximum 100')
        if not TAG.match(tag):
            raise fail("tags", f'Tag "{tag}" must be alphanumeric characters or symbols: -_.')
    return list(dict.fromkeys(out))


def extras(value: Any) -> list[dict[str, str]]:
    """Validate extras: [{key, value}] with unique keys that are not core fields."""
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for item in as_list(value, "extras"):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise fail("extras", "Each extra needs a key and a value")
        key = item["key"].strip()
        if not key:
            raise fail("extras", "key: Missing value")
        if key in CORE_FIELDS:
            raise fail("extras", f"key: There is a schema field with the same name: {key}")
        if key in seen:
            raise fail("extras", f"key: Duplicate key {key}")
        seen.add(key)
        raw = item.get("value")
        text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)
        out.append({"key": key, "value": "" if raw is None else text})
    return out


def refs(value: Any, field: str) -> list[str]:
    """Return the names or ids of groups given as [{name}] / [{id}] / names."""
    out: list[str] = []
    for item in as_list(value, field):
        ref = (item.get("id") or item.get("name")) if isinstance(item, dict) else item
        if not isinstance(ref, str) or not ref:
            raise fail(field, "Each item needs a name or an id")
        out.append(ref)
    return out


def state(value: Any, field: str = "state") -> str:
    """Validate a state: active, draft or deleted (default active)."""
    text = as_str(value, field) or "active"
    if text not in STATES:
        raise fail(field, f"State must be one of {', '.join(STATES)}")
    return text
