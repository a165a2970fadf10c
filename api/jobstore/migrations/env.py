"""Alembic environment: run with the connection `api.jobstore.db.migrate` hands over."""

from alembic import context

from api.jobstore.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic -c api/jobstore/alembic.ini ...` from the command line
    from api.jobstore.db import get_engine
    from api.jobstore.settings import get_settings

    connection = get_engine(get_settings().database_url).connect()

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
