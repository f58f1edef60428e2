"""Alembic environment: runs on the connection that charging.db.migrate hands over."""

from __future__ import annotations

from alembic import context

from charging.db import make_engine, metadata

config = context.config
connection = config.attributes.get("connection")

if connection is None:
    # Invoked through the alembic command line: take the URL from alembic.ini or -x url=...
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database as: alembic -x url=sqlite:///charging.db upgrade heads")
    with make_engine(url).begin() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    context.run_migrations()
