"""The `qfsync` command: thin click commands over the library; every expected failure becomes
one line on stderr and a documented exit code, here and nowhere else."""

import atexit
import importlib.util
import json
import logging
import math
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any

import click
import orjson

from . import DEFAULT_DATABASE_URL, __version__, api, logs
from .client import DEFAULT_BASE_URL, MAX_PAGE_SIZE, RetryPolicy
from .errors import (
    EXIT_SIGINT,
    EXIT_SIGPIPE,
    EXIT_SIGTERM,
    ForcedInterrupt,
    Interrupted,
    QfsyncError,
    SyncLocked,
    one_line,
)
from .fake_api import DEFAULT_SEED, DEMO_ACCESS_KEY, DEMO_SECRET_KEY, FakeApi, Faults
from .guard import DEFAULT as DEFAULT_MAX_DELETE
from .pages import Job
from .task_fetch import DEFAULT_CONCURRENCY, DEFAULT_MAX_AGE

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from . import db, report, runs
    from .syncer import StopFlag, SyncResult

log = logging.getLogger("qfsync")


def lazy(name: str) -> ModuleType:
    """The module, executed at its first attribute access (importlib's LazyLoader): SQLAlchemy
    takes about 0.2 s to import, which `qfsync jobs` and `--help` need not pay."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.loader is not None
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


if not TYPE_CHECKING:
    db, report, runs = lazy("qfsync.db"), lazy("qfsync.report"), lazy("qfsync.runs")


def json_logs() -> bool:
    ctx = click.get_current_context(silent=True)
    return ctx is not None and ctx.find_root().meta.get("qfsync.log_format") == "json"


def say(message: str) -> None:
    """A note for the operator on stderr: one JSON object with JSON logs. (A sync's notes are
    logged by the library itself, so the sync passes this only for text logs.)"""
    if json_logs():
        log.info(message)
    else:
        click.echo(f"qfsync: {message}", err=True)


def fail(message: str, exit_code: int, exc: BaseException | None = None) -> None:
    message = one_line(message)
    if json_logs():
        facts = {key: getattr(exc, key, None) for key in ("run_id", "request_id")}
        # An internal error is not qfsync's own: api.name_run named its run apart.
        facts["run_id"] = facts["run_id"] or getattr(exc, "qfsync_run_id", None)
        if exc is not None:
            facts["error"] = str(exc)
        log.error(message, extra=logs.facts(exit_code=exit_code, **facts))
    else:
        click.echo(f"qfsync: {message}", err=True)
    sys.exit(exit_code)


def is_database_error(exc: BaseException) -> bool:
    from sqlalchemy.exc import SQLAlchemyError  # loaded already: a command opened a database

    return isinstance(exc, SQLAlchemyError)


class EnvOption(click.Option):
    """An option whose environment variable, set but empty, is refused rather than taken for
    unset, click's rule: a cron line whose variable lost its value would otherwise sync into
    ./qfsync.db, or push no metrics, without a word."""

    def resolve_envvar_value(self, ctx: click.Context) -> str | None:
        value = super().resolve_envvar_value(ctx)
        if value is None and isinstance(self.envvar, str) and os.environ.get(self.envvar) == "":
            raise click.BadParameter(
                f"{self.envvar} is set but empty: give it a value or unset it", ctx, self
            )
        return value


def usage_failure(exc: click.UsageError) -> None:
    # click's usage block is several lines; one says the same, in text as in a JSON log.
    hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx else ""
    fail(f"usage error: {exc.format_message()}{hint}", exc.exit_code, exc)


def format_asked(args: list[str]) -> str:
    """The log format a command line asked for, read from its words: for a line click refused
    before reading --log-format (an unknown option beside it, or the format itself wrong)."""
    asked = os.environ.get(logs.FORMAT_ENV)
    for word, following in zip(args, [*args[1:], None], strict=False):
        if word == "--log-format":
            asked = following
        elif word.startswith("--log-format="):
            asked = word.partition("=")[2]
    return "json" if asked == "json" else "text"


class Group(click.Group):
    """Translates qfsync's errors into one line and an exit code; --verbose adds the detail."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        words = list(args)  # click's parser consumes `args`
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `qfsync`: a group without its command shows its help, as click does
        except click.UsageError as exc:
            if parent is not None:
                raise  # a subgroup's: said by the root's invoke, in the format it set up
            # qfsync's own options did not parse, so invoke never set up the log format.
            # (click leaves out the context of an option that lacks its value.)
            exc.ctx = exc.ctx or click.Context(self, info_name=info_name)
            log_format = format_asked(words)
            exc.ctx.meta["qfsync.log_format"] = log_format
            logs.configure(log_format, verbose=False)
            with exc.ctx:
                usage_failure(exc)
            raise  # not reached: usage_failure exits

    def invoke(self, ctx: click.Context) -> Any:
        if ctx.parent is None:
            # Here, not in `main`: click looks up the command before it runs the group's own
            # callback, so an unknown command's usage error would miss the chosen log format.
            ctx.meta["qfsync.log_format"] = ctx.params["log_format"]
            logs.configure(ctx.params["log_format"], ctx.params["verbose"])
        try:
            return super().invoke(ctx)
        except QfsyncError as exc:
            log.debug("failure detail", exc_info=True)
            fail(f"error: {exc}", exc.exit_code, exc)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `qfsync db`: a group without its command shows its help, as click does
        except click.UsageError as exc:
            usage_failure(exc)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C outside a sync (which has its own handler)
            fail("error: interrupted by SIGINT", EXIT_SIGINT, exc)
        except BrokenPipeError:  # any command's reader went away (`qfsync runs | head -1`)
            reader_gone()
        except Exception as exc:  # a bug: say so briefly, with the way to see more
            engine = ctx.meta.get("qfsync.engine")
            if engine is not None and is_database_error(exc):
                # A command's query refused (a missing privilege, a damaged table): the
                # database's problem, said without the statement, as a sync says it.
                error = db.database_error(exc, engine.url)
                fail(f"error: {error}", error.exit_code, error)
            if json_logs():
                log.debug("internal error", exc_info=True)
            elif log.isEnabledFor(logging.DEBUG):
                traceback.print_exc()
            fail(
                f"internal error: {type(exc).__name__}: {exc} (run with --verbose for details)",
                1,
                exc,
            )


@click.group(
    cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="qfsync")
@click.option(
    "-v", "--verbose", is_flag=True, help="Log retries, pages and error details to stderr."
)
@click.option(
    "--log-format",
    type=click.Choice(logs.FORMATS),
    default="text",
    show_default=True,
    envvar=logs.FORMAT_ENV,
    show_envvar=True,
    cls=EnvOption,
    help="json: every line on stderr is one JSON object (time, level, message, run_id, page, "
    "marker, request_id, attempt, delay_s, error, ...), and notes and retries are logged.",
)
def main(verbose: bool, log_format: str) -> None:
    """Keep a SQL database in step with Baidu Qianfan fine-tuning jobs."""
    # Both options take effect in Group.invoke, before the command is looked up.


class Seconds(click.FloatRange):
    """A duration in seconds: at least `min`, at most a year, and a number (click's
    FloatRange lets NaN through, which would make a wait endless or a timeout an error)."""

    def __init__(self, min: float) -> None:
        super().__init__(min, api.LONGEST_S)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


def api_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command that talks to the API takes."""
    options = [
        click.option(
            "--endpoint",
            envvar=api.ENV["endpoint"],
            show_envvar=True,
            cls=EnvOption,
            default=DEFAULT_BASE_URL,
            show_default=True,
            help="Console API base URL.",
        ),
        click.option(
            "--access-key",
            envvar=api.ENV["access_key"],
            show_envvar=True,
            cls=EnvOption,
            help="IAM access key (AK).",
        ),
        click.option(
            "--secret-key",
            envvar=api.ENV["secret_key"],
            show_envvar=True,
            cls=EnvOption,
            help="IAM secret key (SK); prefer the environment variable.",
        ),
        click.option("--train-mode", help="Only jobs of this train mode (e.g. SFT)."),
        click.option("--model", help="Only jobs of this base model (e.g. ERNIE-Speed-8K)."),
        click.option(
            "--page-size",
            type=click.IntRange(1, MAX_PAGE_SIZE),
            default=MAX_PAGE_SIZE,
            show_default=True,
            help="Jobs per request (maxKeys).",
        ),
        click.option(
            "--max-attempts",
            type=click.IntRange(1, 100),
            default=RetryPolicy.max_attempts,
            show_default=True,
            help="Attempts per request before a transient failure is final.",
        ),
        click.option(
            "--max-retry-wait",
            type=Seconds(0),
            default=RetryPolicy.max_wait_s,
            show_default=True,
            help="Seconds of backoff allowed per request, in total.",
        ),
        click.option(
            "--timeout",
            type=Seconds(0.1),
            default=RetryPolicy.read_timeout_s,
            show_default=True,
            help="Read timeout per request, in seconds.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=json_default)


@main.command()
@api_options
@click.option("--reverse", is_flag=True, help="Newest first (pageReverse).")
def jobs(
    train_mode: str | None, model: str | None, page_size: int, reverse: bool, **options: Any
) -> None:
    """Print every job the API lists, one JSON object a line, without touching a database.

    The quickest check of credentials and filters, and a preview of what a sync would store.
    """
    write = stdout().buffer.write
    query = api.job_query(train_mode, model, page_size, reverse)
    try:
        for page in api.job_pages(api.make_client(**options), query):
            write(page_lines(page))
        sys.stdout.flush()
    except BrokenPipeError:
        reader_gone()


def stdout() -> Any:
    """Standard output, for a command that prints its result there; started with it closed
    (`>&-`), Python has none, and printing would fail on an attribute."""
    if sys.stdout is None:
        raise QfsyncError("there is no standard output to print to (it was closed)")
    return sys.stdout


def page_lines(jobs: list[Job]) -> bytes:
    """A page's lines of `qfsync jobs`: orjson writes each record's fields, several times
    faster than json, and the page in one go (half the cost of a call and a write per job)."""
    if not jobs:
        return b""
    try:
        return b"\n".join(map(orjson.dumps, jobs)) + b"\n"
    except orjson.JSONEncodeError:
        return b"".join(map(job_line, jobs))


def job_line(job: Job) -> bytes:
    """One line of `qfsync jobs`: an integer beyond 64 bits in the item, which orjson refuses,
    goes through json."""
    try:
        return orjson.dumps(job) + b"\n"
    except orjson.JSONEncodeError:
        return (dumps(job.to_json()) + "\n").encode()


def reader_gone() -> None:
    """The reader of stdout went away (`qfsync jobs | head`): end quietly with the status of a
    tool killed by SIGPIPE, as `cat` and `seq` do. Python ignores SIGPIPE, so the write fails
    instead; stdout now points at /dev/null, so that the interpreter's last flush of what is
    still buffered does not complain either."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(EXIT_SIGPIPE)


def concurrency_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--task-concurrency",
        type=click.IntRange(1, 64),
        default=DEFAULT_CONCURRENCY,
        show_default=True,
        help="Task requests in flight at once (a 429 with Retry-After pauses them all).",
    )(command)


@main.command("tasks")
@api_options
@concurrency_option
@click.option(
    "--job-id",
    "job_ids",
    multiple=True,
    help="Only this job's tasks (repeatable); without it, the tasks of every listed job.",
)
def tasks_command(**options: Any) -> None:
    """Print the tasks of a job, or of every job, one JSON object a line, without touching a
    database: running tasks with their progress, as a `sync --tasks` would store them."""
    write = stdout().write
    try:
        for task in api.tasks(**options):
            write(dumps(task.to_json()) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        reader_gone()


def parse_max_age(_ctx: click.Context, _param: click.Parameter, value: str) -> Any:
    try:
        return report.parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def database_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--database-url",
        envvar=api.ENV["database_url"],
        show_envvar=True,
        cls=EnvOption,
        default=DEFAULT_DATABASE_URL,
        show_default=True,
        help="SQLAlchemy URL: sqlite:///FILE, postgresql://..., mysql://...",
    )(command)


def open_db(database_url: str) -> "Engine":
    """An engine that lives as long as the command, its connections closed at the end; the
    command's database errors are reported as such (`Group.invoke`)."""
    ctx = click.get_current_context()
    engine = ctx.with_resource(db.connected(database_url))
    ctx.meta["qfsync.engine"] = engine
    return engine


# How long a stop may wait for the next page boundary before it is forced: a page is written
# in well under a second, so longer means a statement waits on a database lock.
STOP_GRACE_S = 5.0


def install_signal_handlers(stop: "StopFlag") -> Callable[[], None]:
    """SIGINT/SIGTERM stop the sync at the next page boundary; a second signal, or the first
    still unheeded after STOP_GRACE_S, stops it where it is. Returns the function that
    disarms the grace timer once the sync has ended."""
    timers: list[threading.Timer] = []
    starting = False  # the grace timer's thread is being started
    held: ForcedInterrupt | None = None  # a second signal's, until it has

    def force(signum: int) -> None:
        if not stop.uninterruptible:
            os.kill(os.getpid(), signum)  # the handler runs again, in the main thread

    def handle(signum: int, _frame: Any) -> None:
        nonlocal starting, held
        name = signal.Signals(signum).name
        code = EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM
        if stop.reason is not None:
            # Stop now: the open transaction rolls back, a waiting statement is cancelled.
            forced = ForcedInterrupt(name, code)
            if starting:
                held = forced
                return
            raise forced
        stop.request(Interrupted(name, code))
        timer = threading.Timer(STOP_GRACE_S, force, (signum,))
        timer.daemon = True
        timers.append(timer)
        # Raised inside Thread.start(), a second signal's ForcedInterrupt would cut its
        # bookkeeping short (the new thread then prints a KeyError traceback), so it waits
        # until the timer has started. Python runs handlers in the main thread, between two
        # bytecodes, so a flag is enough (blocking the signals is not: the kernel hands them
        # to another thread).
        starting = True
        try:
            timer.start()
        finally:
            starting = False
        if held is not None:
            forced, held = held, None
            raise forced

    def disarm() -> None:
        for timer in timers:
            timer.cancel()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    return disarm


def progress_printer() -> Callable[["SyncResult"], None]:
    if not sys.stderr.isatty() or json_logs():
        return lambda result: None

    def show(result: "SyncResult") -> None:
        click.echo(
            f"\rrun {result.run_id}: {result.pages} pages, {result.jobs_seen} jobs",
            err=True,
            nl=False,
        )

    return show


@main.command()
@database_option
@api_options
@click.option(
    "--incremental",
    is_flag=True,
    help="Newest first, stopping at the first page with nothing new; never deletes.",
)
@click.option(
    "--restart", is_flag=True, help="Walk from the start instead of resuming a failed run."
)
@click.option(
    "--wait",
    "wait",
    type=Seconds(0),
    default=0.0,
    show_default=True,
    help="Seconds to wait for another sync of this database (of any scope) to finish.",
)
@click.option(
    "--no-migrate",
    is_flag=True,
    help="Refuse to run on an outdated schema instead of upgrading it.",
)
@click.option(
    "--max-delete",
    envvar="QFSYNC_MAX_DELETE",
    show_envvar=True,
    cls=EnvOption,
    default=DEFAULT_MAX_DELETE,
    show_default=True,
    help="Most jobs a complete walk may mark deleted: a count (200) or a share of the scope's "
    "listed jobs (50%; up to 10 jobs are always allowed). Beyond it the run fails and deletes "
    "nothing.",
)
@click.option(
    "--tasks",
    is_flag=True,
    help="Also sync each listed job's tasks (runs), in the same transaction as its page.",
)
@click.option(
    "--tasks-max-age",
    metavar="DURATION",
    default=f"{DEFAULT_MAX_AGE.days}d",
    show_default=True,
    callback=parse_max_age,
    help="With --tasks, a full sync lists again the tasks of jobs whose tasks all finished "
    "once they were last listed longer ago than this (90s, 30m, 26h, 7d). New jobs and jobs "
    "with unfinished tasks are listed on every sync.",
)
@concurrency_option
@click.option("--json", "as_json", is_flag=True, help="Print the run's result as one JSON object.")
@click.option(
    "--metrics-file",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the run's Prometheus metrics to this file (atomically, also on failure), e.g. "
    "in the node exporter's textfile directory as qfsync-full.prom; one file per scope and mode.",
)
@click.option(
    "--pushgateway",
    metavar="URL",
    envvar="QFSYNC_PUSHGATEWAY",
    show_envvar=True,
    cls=EnvOption,
    help="Push the run's Prometheus metrics to this Pushgateway (job qfsync, grouped by scope "
    "and mode), also on failure; user:password@ in the URL is sent as basic auth.",
)
def sync(as_json: bool, no_migrate: bool, **options: Any) -> None:
    """Walk every page of the API and upsert each job, recording the run in sync_runs.

    With --tasks, each job's tasks too: those of new jobs and of jobs with an unfinished task
    every time, the others once --tasks-max-age has passed (a full sync only)."""
    from .syncer import StopFlag

    stop = StopFlag()
    disarm = install_signal_handlers(stop)
    try:
        result = api.sync(
            **options,
            migrate=not no_migrate,
            stop=stop,
            progress=progress_printer(),
            notify=None if json_logs() else say,
        )
    finally:
        disarm()
        if sys.stderr.isatty() and not json_logs():
            click.echo("", err=True)
    if as_json:
        click.echo(dumps(result.to_json()))
    else:
        click.echo(
            f"run {result.run_id} {result.status} ({result.mode}): {result.pages} pages, "
            f"{result.jobs_seen} jobs seen: {result.jobs_inserted} inserted, "
            f"{result.jobs_updated} updated, {result.jobs_unchanged} unchanged, "
            f"{result.jobs_deleted} deleted in {result.duration_s:.1f}s"
        )
        if options["tasks"]:
            click.echo(
                f"  tasks: {result.tasks_seen} seen: {result.tasks_inserted} inserted, "
                f"{result.tasks_updated} updated, {result.tasks_unchanged} unchanged, "
                f"{result.tasks_deleted} deleted; {result.task_requests} task requests"
            )


def run_row(run: dict[str, Any]) -> dict[str, Any]:
    finished, started = run["finished_at"], run["started_at"]
    duration = round((finished - started).total_seconds(), 3) if finished else None
    return {**run, "duration_s": duration}


def table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, datetime):
            return value.strftime("%Y-%m-%d %H:%M:%S")
        # Names and errors are the server's text: escaped, they cannot drive a terminal.
        text = "" if value is None else one_line(str(value))
        return text if len(text) <= 60 else text[:59] + "…"

    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [
        max([len(column)] + [len(row[i]) for row in cells]) for i, column in enumerate(columns)
    ]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


@main.command("runs")
@database_option
@click.option("--limit", type=click.IntRange(1, 2**31 - 1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def runs_command(database_url: str, limit: int, as_json: bool) -> None:
    """Show the sync run history, newest first."""
    engine = open_db(database_url)
    db.ensure_schema(engine, migrate=False)
    with engine.connect() as connection:
        history = [run_row(run) for run in runs.history(connection, limit)]
    if as_json:
        click.echo(dumps(history))
    elif history:
        columns = ("id", "started_at", "status", "mode", *runs.COUNTS, "duration_s", "error")
        click.echo(table(history, columns))
    else:
        click.echo("no sync runs yet")


@main.group("db")
def db_group() -> None:
    """Database schema: migrations ship with qfsync."""


@db_group.command()
@database_option
@click.option(
    "--wait",
    "wait_s",
    type=Seconds(0),
    default=0.0,
    show_default=True,
    help="Seconds to wait for a running sync to finish.",
)
def upgrade(database_url: str, wait_s: float) -> None:
    """Bring the database schema to the latest revision, under the sync lock."""
    from .lock import sync_lock

    engine = open_db(database_url)
    with sync_lock(engine, wait_s) as held:
        if not held:
            raise SyncLocked("a sync is running on this database; --wait for it to finish")
        click.echo(db.ensure_schema(engine, migrate=True) or f"already at {db.SCHEMA_HEAD}")


@db_group.command()
@database_option
def current(database_url: str) -> None:
    """Print the database's schema revision and the latest one qfsync knows."""
    engine = open_db(database_url)
    revision = db.current_revision(engine)
    head = db.SCHEMA_HEAD
    if revision == head:
        state = "up to date"
    elif revision is not None and revision not in db.known_revisions():
        state = "unknown to this qfsync, which a newer one wrote: upgrade qfsync"
    else:
        state = "behind: run `qfsync db upgrade`"
    click.echo(f"{revision or 'empty'} (head {head}, {state})")


@main.command("fake-api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--jobs", "job_count", type=click.IntRange(0), default=1000, show_default=True)
@click.option(
    "--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Seed for the generated jobs."
)
@click.option("--latency-ms", type=click.FloatRange(0), default=0.0, help="Delay per answer.")
@click.option("--error-rate", type=click.FloatRange(0, 1), default=0.0, help="Share of 500s.")
@click.option(
    "--throttle-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Share of 429s with Retry-After.",
)
@click.option(
    "--retry-after",
    type=click.IntRange(0),
    default=1,
    show_default=True,
    help="Retry-After seconds on a 429.",
)
@click.option(
    "--drop-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Share of connections closed without an answer.",
)
@click.option(
    "--malformed-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Share of answers that are not valid JSON.",
)
@click.option(
    "--busy-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Share of old-style 'server busy' (336100) answers.",
)
@click.option(
    "--fail-after-pages",
    type=click.IntRange(0),
    default=None,
    help="Fail every request after this many pages.",
)
@click.option("--no-auth", is_flag=True, help="Accept unsigned requests.")
@click.option(
    "--real-time",
    is_flag=True,
    help="Date the jobs up to an hour ago and let tasks run by the real clock (else the fake's "
    "own clock stands still an hour after the newest job). SIGUSR1 lets an hour pass.",
)
def fake_api(
    host: str,
    port: int,
    job_count: int,
    seed: int,
    latency_ms: float,
    error_rate: float,
    throttle_rate: float,
    retry_after: int,
    drop_rate: float,
    malformed_rate: float,
    busy_rate: float,
    fail_after_pages: int | None,
    no_auth: bool,
    real_time: bool,
) -> None:
    """Serve a local fake of DescribeFineTuningJobs and of each job's tasks
    (DescribeFineTuningTasks, DescribeFineTuningTask), for the demo, tests and rehearsals."""

    faults = Faults(
        latency_s=latency_ms / 1000,
        error_rate=error_rate,
        throttle_rate=throttle_rate,
        retry_after_s=retry_after,
        drop_rate=drop_rate,
        malformed_rate=malformed_rate,
        busy_rate=busy_rate,
        fail_after_pages=fail_after_pages,
    )
    api = FakeApi(
        job_count,
        seed,
        faults,
        host,
        port,
        check_auth=not no_auth,
        now=datetime.now(UTC) if real_time else None,
        live=real_time,
    )

    def let_an_hour_pass(_signum: int, _frame: Any) -> None:
        changed = api.advance(3600)
        click.echo(
            f"fake API: an hour passed; {len(changed['added'])} tasks added to old jobs, "
            f"{len(changed['deleted'])} deleted",
            err=True,
        )

    signal.signal(signal.SIGUSR1, let_an_hour_pass)
    try:
        api.start()
    except OSError as exc:
        raise QfsyncError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    say(
        f"fake API serving {job_count} jobs at {api.url} (Ctrl-C stops it); demo "
        f"credentials: QIANFAN_ACCESS_KEY={DEMO_ACCESS_KEY} "
        f"QIANFAN_SECRET_KEY={DEMO_SECRET_KEY}"
    )
    api.serve_forever()


@main.command("report")
@database_option
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="table: sections for people; csv: one table with the columns section, month, model, "
    "train_mode, metric, value, run_status (sections jobs, by_model, by_month, tasks_active, "
    "tasks_last_7_days, tasks_by_model, sync, and sync_full and sync_incremental with a row "
    "per scope in model and train_mode); json: one object.",
)
@click.option(
    "--max-age",
    metavar="[MODE=]DURATION",
    multiple=True,
    help="Exit with code 4 after printing if the last successful sync finished longer ago "
    "than DURATION (90s, 30m, 26h, 7d), or if none has. With MODE (full or incremental), "
    "the last success of that mode; repeat to check several, e.g. --max-age 1h "
    "--max-age full=26h.",
)
def report_command(database_url: str, output_format: str, max_age: tuple[str, ...]) -> None:
    """Print the state of the data: total, listed and deleted jobs; listed jobs by model and
    train mode; jobs created per month; tasks running and waiting now, their outcomes in the
    last 7 days and the failure share by model (after `sync --tasks`); the last sync and its
    health (the sync_health view), and the last run and success of every mode and scope (the
    sync_scopes view)."""
    try:
        limits = [report.parse_max_age(text) for text in max_age]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--max-age'") from None
    engine = open_db(database_url)
    db.ensure_schema(engine, migrate=False)
    with engine.connect() as connection:
        state = report.collect(connection)
    if output_format == "json":
        click.echo(dumps(state))
    elif output_format == "csv":
        click.echo(report.to_csv(state), nl=False)
    else:
        click.echo(
            "\n\n".join(
                f"{title}\n{table(rows, columns) if rows else '(none)'}"
                for title, columns, rows in report.sections(state)
            )
        )
    if limits:
        report.check_fresh(state, limits)


def run() -> None:
    """The `qfsync` program: `main`, then an exit without the interpreter's teardown.

    Tearing down some 600 modules and their objects took a quarter of a second on the bench
    machine, a tenth of a short sync, and nothing a finished command holds needs it: its
    connections are closed and its output flushed here. The exit handlers still run."""
    try:
        main(prog_name="qfsync")
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except OSError as exc:  # output refused (a full disk) before a command ran: --help, --version
        print(f"qfsync: error: cannot write the output: {exc.strerror or exc}", file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # logging's last flush among them
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with the descriptor closed (`>&-`)
            continue
        try:
            stream.flush()
        except BrokenPipeError:
            code = code or EXIT_SIGPIPE  # as `reader_gone` ends
        except (OSError, ValueError):
            code = code or 1  # output lost (a full disk): never report success
    os._exit(code)
