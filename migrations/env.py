"""Alembic environment: qfsync's MetaData is the target; the engine comes from qfsync when it
runs the migrations, or from QFSYNC_DATABASE_URL when a developer runs `alembic` by hand."""

import os
from logging.config import fileConfig

from alembic import context

from qfsync.db import DEFAULT_URL, connect, sqlite_migration_engine
from qfsync.schema import metadata

config = context.config
if config.config_file_name is not None:
    # Keep qfsync's own loggers alive.
    fileConfig(config.config_file_name, disable_existing_loggers=False)

engine = config.attributes.get("engine")
if engine is None:  # `alembic` run by hand: as qfsync would migrate the database
    engine = connect(os.environ.get("QFSYNC_DATABASE_URL", DEFAULT_URL))
    if engine.dialect.name == "sqlite":
        checked, engine = engine, sqlite_migration_engine(engine.url)
        checked.dispose()
# Each revision commits on its own with its alembic_version row, rather than the whole upgrade
# at the end: MariaDB commits DDL as it runs anyway, and a revision that fails there must find
# the ones before it recorded, so that the next upgrade runs only the failed one again (see
# resumable.py). PostgreSQL and SQLite roll back the failed revision whole.
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()
