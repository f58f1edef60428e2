"""Tables of the billing package (declared on charging.db.metadata)."""
