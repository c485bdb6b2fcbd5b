"""PostgreSQL: the whole page in one data-modifying statement, prepared once per connection.

The page's columns go in as arrays in psycopg's binary format, so the statement text stays the
same from page to page: the server parses and plans it once, and psycopg converts 100 jobs'
values without building a 1,200-parameter query. Every lookup of a stored row is a correlated
subquery on a primary key: without table statistics (autovacuum may not have run yet) the
planner would otherwise pick a hash join of the page against the whole table, whose cost grows
with the table.
"""

import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.adapt import Dumper
from psycopg.errors import InvalidTextRepresentation
from psycopg.pq import Format
from sqlalchemy import Connection

from ..pages import Job, content_hash
from ..runs import check_fenced
from ..store import Counts
from . import driver_errors, raw_text

# stored: NULL for a new job, '' for a deleted one (so it counts as changed), else its hash.
_PAGE_SQL = """
WITH page AS MATERIALIZED (
    SELECT p.*,
           (SELECT CASE WHEN j.deleted_at IS NULL THEN j.content_hash ELSE '' END
              FROM finetuning_jobs j WHERE j.job_id = p.job_id) AS stored
      FROM unnest(%(job_id)b::text[], %(name)b::text[], %(description)b::text[],
                  %(model)b::text[], %(train_mode)b::text[], %(created_at)b::timestamptz[],
                  %(raw)b::text[], %(content_hash)b::text[])
           AS p(job_id, name, description, model, train_mode, created_at, raw, content_hash)
),
inserted AS (
    -- A plain INSERT, not an upsert: stored IS NULL means no row, and the sync's lock keeps
    -- any other sync from adding one meanwhile; ON CONFLICT would probe the key first.
    INSERT INTO finetuning_jobs (job_id, name, description, model, train_mode, created_at,
                                 first_seen_at, last_seen_at, deleted_at, raw, content_hash,
                                 last_run_id)
    SELECT job_id, name, description, model, train_mode, created_at,
           %(now)s::timestamptz, %(now)s::timestamptz, NULL, raw::json, content_hash,
           %(run_id)s::integer
      FROM page WHERE stored IS NULL
),
rewritten AS (
    -- Changed, or deleted and listed again: all but first_seen_at.
    UPDATE finetuning_jobs j
       SET (name, description, model, train_mode, created_at, raw, content_hash)
               = (SELECT p.name, p.description, p.model, p.train_mode, p.created_at,
                         p.raw::json, p.content_hash
                    FROM page p WHERE p.job_id = j.job_id),
           last_seen_at = %(now)s::timestamptz, deleted_at = NULL,
           last_run_id = %(run_id)s::integer
     WHERE job_id = ANY (ARRAY(SELECT job_id FROM page WHERE stored <> content_hash))
),
touched AS (
    UPDATE finetuning_jobs
       SET last_seen_at = %(now)s::timestamptz, last_run_id = %(run_id)s::integer
     WHERE job_id = ANY (ARRAY(SELECT job_id FROM page WHERE stored = content_hash))
),
latest AS MATERIALIZED (
    -- New and changed jobs with their newest version, open or closed (only changed ones have one).
    SELECT p.*, v.version,
           v.version IS NOT NULL AND v.valid_to IS NULL AS open,
           (v.name, v.description, v.model, v.train_mode)
               IS NOT DISTINCT FROM (p.name, p.description, p.model, p.train_mode) AS same
      FROM page p
      LEFT JOIN LATERAL (
          SELECT * FROM finetuning_job_versions v
           WHERE v.job_id = p.job_id AND p.stored IS NOT NULL
           ORDER BY v.version DESC LIMIT 1
      ) v ON true
     WHERE p.stored IS DISTINCT FROM p.content_hash
),
closed AS (
    UPDATE finetuning_job_versions SET valid_to = %(now)s::timestamptz
     WHERE job_id = ANY (ARRAY(SELECT job_id FROM latest WHERE open AND NOT same))
       AND valid_to IS NULL
),
opened AS (
    -- A change outside the versioned fields (e.g. createTime's format) keeps the open version.
    INSERT INTO finetuning_job_versions (job_id, version, valid_from, valid_to, name,
                                         description, model, train_mode, run_id)
    SELECT job_id, coalesce(version, 0) + 1, %(now)s::timestamptz, NULL, name, description,
           model, train_mode, %(run_id)s::integer
      FROM latest WHERE NOT (open AND same)
),
counts AS (
    SELECT count(*) AS seen,
           count(*) FILTER (WHERE stored IS NULL) AS inserted,
           count(*) FILTER (WHERE stored <> content_hash) AS updated,
           count(*) FILTER (WHERE stored = content_hash) AS unchanged
      FROM page
),
progress AS (
    UPDATE sync_runs SET pages = pages + 1, jobs_seen = jobs_seen + counts.seen,
           jobs_inserted = jobs_inserted + counts.inserted,
           jobs_updated = jobs_updated + counts.updated,
           jobs_unchanged = jobs_unchanged + counts.unchanged,
           next_marker = %(next_marker)s::text, progress_at = %(now)s::timestamptz
      FROM counts
     WHERE id = %(run_id)s::integer AND status = 'running'
    RETURNING 1
)
-- The fence fails the statement, so that a COMMIT sent along with it (`write`) never commits
-- the page of a run that lost its lock. A cast of the count, which the planner cannot fold into
-- a constant and so raise while planning, as it would a literal's.
SELECT inserted, updated, unchanged,
       (SELECT CASE count(*) WHEN 1 THEN 1 ELSE ('qfsync fence: ' || count(*))::integer END
          FROM progress),
       set_config('synchronous_commit', 'off', true)
  FROM counts
"""
FENCE = "qfsync fence: "  # in the error of a fenced page
# Sent without its indentation: psycopg caches the conversion of a query's %(name)s
# placeholders only for texts up to 4096 bytes (psycopg._queries.MAX_CACHED_STATEMENT_LENGTH);
# indented, this one is longer, and converting it again cost every page more than hashing it.
PAGE_SQL = "\n".join(line.strip() for line in _PAGE_SQL.strip().splitlines())

# Planning the page statement afresh cost the server about 0.3 ms of its 2-2.5 ms per page. A
# generic plan, made once per connection, does not, but alone it is planned for the tables as
# they were at the first page, empty on a first sync, and keeps scanning them whole as they grow
# (a re-sync of 20k jobs took ten times as long). With sequential scans ruled out while it is
# planned, every lookup in it is on a primary key whatever the table's size, so one plan serves
# every page. Both settings last only for the page's transaction (db.py makes every other
# statement plan afresh).
PLAN_SETTINGS = (
    "SELECT set_config('plan_cache_mode', 'force_generic_plan', true),"
    " set_config('enable_seqscan', 'off', true)"
)


# The page's columns in PostgreSQL's binary array format, built by `prepare` while the server
# works on the previous page (`meanwhile`): the same bytes psycopg's own list dumpers make,
# which, made as psycopg sent the page, cost the writing thread about a third of its time.
# Text goes as UTF-8, the client encoding db.py sets.
TEXT_OID, TIMESTAMPTZ_OID = 25, 1184
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)  # made once: making it per value cost half the array
INT64 = struct.Struct("!q")
NULL = struct.pack("!i", -1)


class TextArray(bytes):
    """A text[] already in binary form."""


class TimestamptzArray(bytes):
    """A timestamptz[] already in binary form."""


class _PreEncodedDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: bytes) -> bytes:
        return obj


class _TextArrayDumper(_PreEncodedDumper):
    oid = 1009  # text[]


class _TimestamptzArrayDumper(_PreEncodedDumper):
    oid = 1185  # timestamptz[]


def _array(oid: int, elements: list[bytes | None]) -> bytes:
    if not elements:
        return struct.pack("!iiI", 0, 0, oid)
    has_null = None in elements
    parts = [struct.pack("!iiIii", 1, has_null, oid, len(elements), 1)]
    for element in elements:
        if element is None:
            parts.append(NULL)
        else:
            parts += (struct.pack("!i", len(element)), element)
    return b"".join(parts)


def prepare_connection(driver: Any) -> None:
    """Teach a new connection (db.py's connect event) to send the pre-encoded arrays as is."""
    driver.adapters.register_dumper(TextArray, _TextArrayDumper)
    driver.adapters.register_dumper(TimestamptzArray, _TimestamptzArrayDumper)


def text_array(values: list[str | None]) -> TextArray:
    return TextArray(_array(TEXT_OID, [None if v is None else v.encode() for v in values]))


def timestamptz_array(values: list[datetime | None]) -> TimestamptzArray:
    micros = [None if v is None else INT64.pack((v - PG_EPOCH) // MICROSECOND) for v in values]
    return TimestamptzArray(_array(TIMESTAMPTZ_OID, micros))


class PostgresqlWriter:
    def prepare(self, jobs: Sequence[Job]) -> dict[str, Any]:
        return {
            "job_id": text_array([job.job_id for job in jobs]),
            "name": text_array([job.name for job in jobs]),
            "description": text_array([job.description for job in jobs]),
            "model": text_array([job.model for job in jobs]),
            "train_mode": text_array([job.train_mode for job in jobs]),
            "created_at": timestamptz_array([job.created_at for job in jobs]),
            "raw": text_array([raw_text(job.raw) for job in jobs]),
            "content_hash": text_array([content_hash(job.raw) for job in jobs]),
        }

    def write(
        self,
        connection: Connection,
        prepared: dict[str, Any],
        run_id: int,
        now: datetime,
        next_marker: str | None,
        meanwhile: Callable[[], None] | None = None,
        commit: bool = False,
    ) -> Counts:
        params = {**prepared, "now": now, "run_id": run_id, "next_marker": next_marker}
        driver = connection.connection.driver_connection
        assert driver is not None
        with driver_errors(connection):
            # Pipelined: the settings and the page go in one round trip, sent at once (psycopg
            # sends the transaction's BEGIN ahead of them, in a round trip of its own), and the
            # server runs them while `meanwhile` runs here. The COMMIT follows in the same round
            # trip; after `meanwhile`, so that a forced stop raised there leaves the page
            # uncommitted. The caller's commit then has nothing left to do (psycopg sends none
            # outside a transaction).
            try:
                with driver.pipeline():
                    driver.execute(PLAN_SETTINGS, prepare=True)
                    cursor = driver.execute(PAGE_SQL, params, prepare=True)
                    if meanwhile is not None:
                        meanwhile()
                    if commit:
                        driver.execute("COMMIT", prepare=False)
            except InvalidTextRepresentation as exc:
                if FENCE not in str(exc):
                    raise
                check_fenced(0, run_id)
            inserted, updated, unchanged, _, _ = cursor.fetchone()
        return Counts(inserted, updated, unchanged)
