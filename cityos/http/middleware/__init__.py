"""Pure-ASGI middleware, one concern per module, assembled in cityos.app."""
