"""HTTP handlers of the NGSI-LD API: parse, call the broker services, render."""
