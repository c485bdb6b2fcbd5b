"""Alembic migrations, shipped inside the package as qfsync.migrations."""
