"""JSON-LD @context handling: the shipped core context, a context cache and term expansion."""
