"""Alembic's entry point: migrations run on the connection api.db.migrate hands over (never on a URL of their own)."""

from alembic import context

from api.db.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
