"""The catalog's services in one object: metadata, datastore, uploaded files, settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from cityos.broker.api.common import Broker
    from cityos.catalog.live import LiveDatasets
    from cityos.storage.engines import CatalogMeta, Datastore

#: uploads through resource_create / resource_update (multipart `upload`)
MAX_UPLOAD: Final = 100 * 1024 * 1024


class Catalog:
    """What every action needs; built once per app by create_app."""

    def __init__(self, broker: Broker) -> None:
        from cityos.storage import engines

        store = broker.store
        self.broker = broker
        self.settings = broker.settings
        self.meta: CatalogMeta = engines.catalog(store)
        self.datastore: Datastore = engines.datastore(store, broker.settings.data_dir)
        #: uploaded resource files: <files_dir>/<resource id>/<file name>
        self.files_dir: Path = broker.settings.data_dir / "catalog" / "files"
        self.max_upload = MAX_UPLOAD
        from cityos.catalog.live import LiveDatasets

        #: datasets defined by an NGSI-LD query, regenerated as their entities change
        self.live: LiveDatasets = LiveDatasets(self, interval=broker.settings.live_interval)
        engines.on_change(store, self.live.note)

    @property
    def base_url(self) -> str:
        """The public base URL (CITYOS_PUBLIC_URL, else the bound address)."""
        return self.settings.base_url

    async def start(self) -> None:
        """Create the catalog's tables and open the datastore."""
        await self.meta.setup()
        await self.datastore.start()
        await self.live.start()

    async def stop(self) -> None:
        await self.live.stop()
        await self.datastore.close()

    async def user_for_token(self, token: str) -> str | None:
        """Return the user an API token belongs to, or None when unknown or revoked."""
        return await self.meta.user_for_token(token)
