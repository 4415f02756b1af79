"""NGSI-LD context broker: entities, query language, geo-queries and JSON-LD handling."""
