"""Public-safety domain logic (river flood alert levels), free of HTTP and SQL."""
