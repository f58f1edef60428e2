"""Tables of the ocf package (declared on charging.db.metadata)."""
