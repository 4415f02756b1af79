"""cityos: a City OS: NGSI-LD context broker and data platform for cities."""

__version__ = "0.1.0"
