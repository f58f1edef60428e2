"""Tables of the cdf package (declared on charging.db.metadata)."""
