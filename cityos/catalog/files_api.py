"""Uploaded resource files: stored under <files_dir>/<resource id>/<name>, served for download.

GET /dataset/<id>/resource/<rid>/download/<filename> serves the file a resource_create or
resource_update upload stored; that URL is the resource's `url` (url_type "upload").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mimetypes
import os
import re
import shutil
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from cityos.catalog.service import Catalog
from cityos.http.routing import Handler

DOWNLOAD: str = "/dataset/{id}/resource/{rid}/download/{filename}"


@dataclass(frozen=True, slots=True)
class StoredFile:
    name: str
    size: int
    sha256: str
    mimetype: str
    format: str  # from the extension, upper case ("CSV"), or ""


def safe_name(filename: str) -> str:
    """Return a file name safe on disk and in a URL path (keeps Japanese letters)."""
    base = unicodedata.normalize("NFC", filename.replace("\\", "/").rsplit("/", 1)[-1])
    base = re.sub(r"[^\w.\-]+", "_", base).strip("._") or "upload"
    if len(base.encode()) > 200:
        _stem, dot, ext = base.rpartition(".")
        keep = ext[:16] if dot else ""
        base = base.encode()[: 190 - len(keep)].decode(errors="ignore") + (
            f".{keep}" if keep else ""
        )
    return base


def download_path(package_id: str, resource_id: str, filename: str) -> str:
    """Return the path (no host) an uploaded file is served at."""
    return f"/dataset/{package_id}/resource/{resource_id}/download/{filename}"


def _write(folder: Path, name: str, data: bytes) -> None:
    """Write the file atomically: a temporary file renamed over the final name."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.part"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    for old in folder.iterdir():  # a replaced upload may have had another name
        if old.name != tmp.name and old.name != name:
            old.unlink()
    os.replace(tmp, folder / name)


async def store_upload(
    catalog: Catalog, resource_id: str, filename: str, content_type: str, data: bytes
) -> StoredFile:
    """Store an uploaded file of a resource (replacing any earlier one)."""
    name = safe_name(filename)
    await asyncio.to_thread(_write, catalog.files_dir / resource_id, name, data)
    guessed = mimetypes.guess_type(name)[0]
    generic = content_type in ("", "application/octet-stream")
    mimetype = guessed if generic and guessed else content_type or "application/octet-stream"
    ext = name.rpartition(".")[2] if "." in name else ""
    return StoredFile(name, len(data), hashlib.sha256(data).hexdigest(), mimetype, ext.upper())


async def remove_files(catalog: Catalog, resource_ids: list[str]) -> None:
    """Delete the stored files of resources (nothing if they had none)."""

    def run() -> None:
        for rid in resource_ids:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(catalog.files_dir / rid)

    if resource_ids:
        await asyncio.to_thread(run)


def _not_found(what: str) -> Response:
    return JSONResponse(
        {"success": False, "error": {"__type": "Not Found Error", "message": what}}, 404
    )


def files_routes(catalog: Catalog) -> list[tuple[str, str, Handler]]:
    """Return the download routes of uploaded resources."""
    from cityos.catalog.api import caller
    from cityos.catalog.errors import NotAuthorized

    async def download(request: Request) -> Response:
        pkg = await catalog.meta.get_dataset(request.path_params["id"])
        rid = request.path_params["rid"]
        filename = request.path_params["filename"]
        if pkg is None:
            return _not_found("Dataset not found")
        if pkg.get("private") or pkg.get("state") != "active":
            try:
                user = await caller(request, catalog)
            except NotAuthorized:
                user = None
            if user is None:
                return _not_found("Dataset not found")
        res = next((r for r in pkg.get("resources", []) if r.get("id") == rid), None)
        if res is None or res.get("url_type") != "upload":
            return _not_found("Resource not found")
        path = catalog.files_dir / rid / safe_name(filename)
        if safe_name(filename) != filename or not await asyncio.to_thread(path.is_file):
            return _not_found("File not found")
        return FileResponse(
            path,
            media_type=res.get("mimetype") or "application/octet-stream",
            filename=filename,
            content_disposition_type="attachment",
        )

    return [("GET", DOWNLOAD, download)]
