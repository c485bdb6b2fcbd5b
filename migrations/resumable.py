"""Schema operations that a migration can run again over a failed run of itself.

MariaDB and MySQL commit each DDL statement as it runs: a migration that fails partway (its
user may not create views, the server restarts, a lock wait times out) keeps the tables,
columns and indexes it had made, while alembic_version still names the revision before it.
The next upgrade runs the whole migration again, so each of its steps must pass over what
that first run left and do the rest. (PostgreSQL and SQLite roll a failed migration back
whole: there these operations do all of it, as `op`'s own do.)

Every migration builds its schema with these rather than with `op`'s own, and the MariaDB
test in tests/test_migrations.py cuts an upgrade short before each of its statements.
"""

from typing import Any

import sqlalchemy as sa
from alembic import op


def _leftovers_possible() -> bool:
    """Whether a failed run of this migration can have left part of it: on MariaDB/MySQL.
    Elsewhere an object of the same name is not ours (a user's own sync_runs), and must fail
    the migration rather than be taken as done or replaced."""
    return op.get_bind().dialect.name in ("mysql", "mariadb")


def _inspector() -> sa.Inspector | None:
    """What the schema holds now, where a failed run can have left part of it; else None."""
    if not _leftovers_possible():
        return None
    # A new inspector each time: one caches what it read, and every step changes the schema.
    return sa.inspect(op.get_bind())


def create_table(name: str, *columns: Any, **kw: Any) -> None:
    # A table comes whole or not at all: CREATE TABLE is one statement.
    inspector = _inspector()
    if inspector is None or not inspector.has_table(name):
        op.create_table(name, *columns, **kw)


def create_index(name: str, table: str, columns: list[str]) -> None:
    inspector = _inspector()
    if inspector is None or name not in {index["name"] for index in inspector.get_indexes(table)}:
        op.create_index(name, table, columns)


def missing_column(table: str, column: str) -> bool:
    inspector = _inspector()
    return inspector is None or column not in {
        found["name"] for found in inspector.get_columns(table)
    }


def add_column(table: str, column: sa.Column[Any]) -> None:
    if missing_column(table, column.name):
        op.add_column(table, column)


def create_view(name: str, select: str) -> None:
    # Replaced rather than passed over where a failed run may have left it: whatever view has
    # the name, the migration's definition is the one it must leave.
    if _leftovers_possible():
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.execute(f"CREATE VIEW {name} AS {select}")
