"""`make bench`: qfsync against a bare walk (the floor) and a dlt pipeline (the reference).

Every measurement is a fresh process: its wall time, its CPU and peak RSS (from `os.wait4`, the
rusage of exactly that child), the requests it made (from the fake API's counter, which runs in
a process of its own, bench/fake_server.py), and the CPU the fake and the database server spent
meanwhile (from /proc), since on two cores the three together are the limit. Prints a table and
writes bench/RESULTS.md; the notes section at the end of RESULTS.md (after NOTES_MARK) is written
by hand and kept across runs.
"""

import hashlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"  # scratch databases and dlt's pipeline state; gitignored
BIN = Path(sys.executable).parent
QFSYNC = str(BIN / "qfsync")
POSTGRES_URL = os.environ.get("QFSYNC_BENCH_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("QFSYNC_BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
BARE_WALK = [sys.executable, str(HERE / "bare_walk.py")]
NOTES_MARK = "<!-- Everything below this line is written by hand; bench.py keeps it. -->"

# (jobs, latency ms, repetitions): three runs of each and the median. On a shared machine whose
# pace swings, one run per row could not tell a 10-20% change from noise, and the targets'
# ratios compare the 100k rows. MariaDB, which is no target's ratio (it must only not get
# slower), runs once at 100k to keep `make bench` near ten minutes on two cores.
SIZES = [(10_000, 0, 3), (20_000, 20, 3), (100_000, 0, 3)]
MARIADB_RUNS_AT_100K = 1
CAP_S = 150  # a measurement still running after this is stopped and reported as "> CAP_S"
BUDGET_S = 480  # after this many seconds, later repetitions are skipped (the table says so)
SYNC_SCENARIOS = ("first sync", "re-sync unchanged", "re-sync 1% changed", "incremental, 50 new")
DLT_SCENARIOS = ("first sync", "re-sync unchanged")
NAN = float("nan")
DEMO_ENV = {"QIANFAN_ACCESS_KEY": "qfsync-demo-ak", "QIANFAN_SECRET_KEY": "qfsync-demo-sk"}
# dlt would try to send telemetry; this machine has no network beyond the package index.
DLT_ENV = {"RUNTIME__DLTHUB_TELEMETRY": "false", "PYTHONWARNINGS": "ignore"}


@dataclass
class Run:
    wall_s: float
    cpu_s: float  # user + system time of the process, to tell CPU-bound from waiting
    rss_mb: float
    stdout: str
    timed_out: bool
    fake_cpu_s: float = NAN  # the fake API's CPU meanwhile
    server_cpu_s: float = NAN  # the database server's CPU meanwhile (any client's, see notes)


TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pids: list[int]) -> float:
    """CPU seconds of these processes, with their exited children's (a PostgreSQL backend's
    time moves to the postmaster when the connection ends)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / TICK


def server_pids(names: tuple[str, ...]) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().split(" (", 1)[1].split(")", 1)[0] in names:
                pids.append(int(stat.parent.name))
        except (OSError, IndexError):
            continue
    return pids


def settled(names: tuple[str, ...], before: list[int], timeout_s: float = 5.0) -> None:
    """Wait until the server processes that started during a run have ended: a backend's CPU
    reaches its parent's (counted) only once it has exited and been reaped, which may come a
    little after the client's own exit (qfsync's is immediate: see cli.run)."""
    deadline = time.monotonic() + timeout_s
    while set(server_pids(names)) - set(before) and time.monotonic() < deadline:
        time.sleep(0.01)


def watch_peak(pid: int, done: threading.Event, peak_kb: list[int]) -> None:
    """The child's peak RSS: its VmHWM, read every 10 ms until it exits. Not ru_maxrss, which
    on Linux starts from the RSS of the forking parent (this bench, about 60 MB with its drivers
    loaded) and so hid every child smaller than that."""
    path = Path(f"/proc/{pid}/status")
    while not done.is_set():
        try:
            status = path.read_text()
        except OSError:
            return
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak_kb[0] = max(peak_kb[0], int(line.split()[1]))
                break
        done.wait(0.01)


def measure(
    command: list[str],
    env: dict[str, str],
    stdout: Any = None,
    fake: "Fake | None" = None,
    server: tuple[str, ...] = (),
    cap_s: float = CAP_S,
) -> Run:
    """Run one command in a fresh process; stopped (SIGTERM, then SIGKILL) after `cap_s`."""
    OUT.mkdir(exist_ok=True)
    fake_pids = [fake.process.pid] if fake else []
    servers = server_pids(server) if server else []
    fake_before, server_before = cpu_of(fake_pids), cpu_of(servers)
    with open(OUT / "child.out", "w+") as captured, open(OUT / "child.err", "w") as errors:
        start = time.perf_counter()
        child = subprocess.Popen(
            command, stdout=stdout or captured, stderr=errors, env={**os.environ, **env}
        )
        stopped, done = threading.Event(), threading.Event()

        def stop() -> None:
            stopped.set()
            child.send_signal(signal.SIGTERM)  # qfsync stops at a page boundary
            if not done.wait(10):
                child.kill()

        timer = threading.Timer(cap_s, stop)
        timer.start()
        peak_kb = [0]
        watcher = threading.Thread(target=watch_peak, args=(child.pid, done, peak_kb))
        watcher.start()
        # wait4 reports the rusage of this child alone (and its own waited-for children).
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        timer.cancel()
        watcher.join()
        child.returncode = os.waitstatus_to_exitcode(status)
        captured.seek(0)
        output = captured.read()
    if child.returncode != 0 and not stopped.is_set():
        errors_text = (OUT / "child.err").read_text()[-2000:]
        raise SystemExit(f"bench: {' '.join(command)} exited {child.returncode}:\n{errors_text}")
    cpu = usage.ru_utime + usage.ru_stime
    if server:
        settled(server, servers)
    return Run(
        wall,
        cpu,
        peak_kb[0] / 1024,
        output,
        stopped.is_set(),
        cpu_of(fake_pids) - fake_before if fake else NAN,
        cpu_of(servers) - server_before if server else NAN,
    )


class Fake:
    """bench/fake_server.py in its own process, asked over stdin."""

    def __init__(self, jobs: int, latency_ms: int):
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "fake_server.py"), str(jobs), str(latency_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self._read().split()
        if ready[:1] != ["ready"]:
            raise SystemExit("bench: the fake API did not start")
        self.url = ready[1]
        self.env = {**DEMO_ENV, "QIANFAN_CONSOLE_API_BASE_URL": self.url}

    def _read(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def ask(self, command: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._read()

    def requests(self) -> int:
        """Requests since the last call."""
        return int(self.ask("count"))

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)


class Sqlite:
    name = "sqlite"
    server: tuple[str, ...] = ()  # in the measured process itself

    def create(self, tag: str) -> str:
        self.drop(tag)
        return f"sqlite:///{OUT / tag}.db"

    def drop(self, tag: str) -> None:
        for path in OUT.glob(f"{tag}*.db*"):  # dlt keeps each dataset in a file of its own
            path.unlink()

    def count(self, url: str, dataset: str | None, table: str, where: str = "") -> int:
        path = make_url(url).database
        if dataset:  # dlt's sqlalchemy destination: `<file>__<dataset>.db` beside the main file
            path = path.removesuffix(".db") + f"__{dataset}.db"
        with sqlite3.connect(path) as connection:
            return connection.execute(f"SELECT COUNT(*) FROM {table} {where}").fetchone()[0]

    def version(self) -> str:
        return f"SQLite {sqlite3.sqlite_version}"


class ServerDatabase:
    """A fresh database per measurement on a database server, created and dropped through the
    server's `test` database. A subclass says which server and how it names things."""

    name: str
    server: tuple[str, ...]  # the server's process names, for its CPU
    label: str
    url: str
    setting: str  # the environment variable that overrides `url`
    driver: str  # SQLAlchemy's name for the driver qfsync uses
    create_options = ""
    drop_options = ""
    version_sql: str

    def __init__(self) -> None:
        self.base = make_url(self.url)
        self.admin = create_engine(self.sqlalchemy_url(self.url), isolation_level="AUTOCOMMIT")
        try:
            self.admin.connect().close()
        except OperationalError:
            raise SystemExit(
                f"bench: cannot reach {self.label} at {self.url}; set {self.setting}"
            ) from None

    def sqlalchemy_url(self, url: str) -> Any:
        parsed = make_url(url)
        return parsed.set(drivername=f"{parsed.get_backend_name()}+{self.driver}")

    def create(self, tag: str) -> str:
        self.drop(tag)
        with self.admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE qfsync_bench_{tag}{self.create_options}"))
        url = self.base.set(drivername=self.base.get_backend_name(), database=f"qfsync_bench_{tag}")
        return url.render_as_string(hide_password=False)

    def drop(self, tag: str) -> None:
        with self.admin.connect() as connection:
            connection.execute(
                text(f"DROP DATABASE IF EXISTS qfsync_bench_{tag}{self.drop_options}")
            )

    def count(self, url: str, dataset: str | None, table: str, where: str = "") -> int:
        engine = create_engine(self.sqlalchemy_url(url))
        with engine.connect() as connection:
            name = f"{dataset}.{table}" if dataset else table
            count = connection.scalar(text(f"SELECT COUNT(*) FROM {name} {where}"))
        engine.dispose()
        return int(count or 0)

    def version(self) -> str:
        with self.admin.connect() as connection:
            return f"{self.label} {connection.scalar(text(self.version_sql))}"


class Postgres(ServerDatabase):
    name, label, url, setting = "postgres", "PostgreSQL", POSTGRES_URL, "QFSYNC_BENCH_POSTGRES_URL"
    server = ("postgres", "postmaster")
    driver = "psycopg"
    drop_options = " WITH (FORCE)"
    version_sql = "SHOW server_version"


class Mariadb(ServerDatabase):
    name, label, url, setting = "mariadb", "MariaDB", MYSQL_URL, "QFSYNC_BENCH_MYSQL_URL"
    server = ("mariadbd", "mysqld")
    driver = "pymysql"
    create_options = " CHARACTER SET utf8mb4"
    version_sql = "SELECT VERSION()"


@dataclass
class Row:
    tool: str
    scenario: str
    database: str
    jobs: int
    latency_ms: int
    runs: list[Run] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)  # qfsync's own duration_s
    skipped: int = 0

    def median(self, values: list[float]) -> float:
        return statistics.median(values) if values else NAN

    @property
    def wall(self) -> float:
        return self.median([run.wall_s for run in self.runs])

    @property
    def cpu(self) -> float:
        return self.median([run.cpu_s for run in self.runs])

    @property
    def rss(self) -> float:
        return self.median([run.rss_mb for run in self.runs])

    @property
    def fake_cpu(self) -> float:
        return self.median([run.fake_cpu_s for run in self.runs])

    @property
    def server_cpu(self) -> float:
        return self.median([run.server_cpu_s for run in self.runs])

    @property
    def timed_out(self) -> bool:
        return any(run.timed_out for run in self.runs)


def qfsync_scenarios(latency: int) -> tuple[str, ...]:
    # With latency, only the first sync: the question there is whether writing hides behind
    # the waiting, and the first sync writes the most.
    return SYNC_SCENARIOS if latency == 0 else SYNC_SCENARIOS[:1]


class Bench:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str, int, int], Row] = {}
        self.started = time.monotonic()
        self.databases: list[Any] = [Sqlite(), Postgres(), Mariadb()]
        self.revision = revision()

    def row(self, tool: str, scenario: str, database: str, jobs: int, latency: int) -> Row:
        key = (tool, scenario, database, jobs, latency)
        return self.rows.setdefault(key, Row(*key))

    def out_of_time(self, repetition: int) -> bool:
        """The first run of everything always happens; later ones only within the budget."""
        return repetition > 0 and time.monotonic() - self.started > BUDGET_S

    def record(self, row: Row, run: Run, fake: Fake) -> None:
        row.runs.append(run)
        row.requests.append(fake.requests())
        state = f"stopped after {CAP_S} s" if run.timed_out else f"{run.wall_s:.2f} s"
        print(
            f"  {row.tool:6} {row.scenario:20} {row.database:8} {row.jobs:>7} jobs: {state}, "
            f"{run.rss_mb:.0f} MB, {row.requests[-1]} requests",
            flush=True,
        )

    def walk(self, fake: Fake, jobs: int, latency: int) -> None:
        """Three runs at every size: the walks are cheap, and ratios divide by them."""
        for tool, command in (("bare", BARE_WALK), ("qfsync", [QFSYNC, "jobs"])):
            row = self.row(tool, "walk", "-", jobs, latency)
            for repetition in range(3):
                if self.out_of_time(repetition):
                    row.skipped += 1
                    continue
                self.record(row, measure(command, fake.env, subprocess.DEVNULL, fake), fake)

    def skip(self, tool: str, scenarios: tuple[str, ...], db: Any, jobs: int, latency: int) -> None:
        for scenario in scenarios:
            self.row(tool, scenario, db.name, jobs, latency).skipped += 1

    def qfsync(self, fake: Fake, db: Any, jobs: int, latency: int) -> None:
        """First sync into an empty database, re-sync unchanged, re-sync after 1% renames, and
        an incremental sync after 50 new jobs."""
        scenarios = qfsync_scenarios(latency)
        tag = f"qfsync_{jobs}"
        url = db.create(tag)
        if latency:
            # The latency question is whether start-up and writing hide behind the waiting
            # on a sync as a schedule runs it, not the one-off migration of a new database.
            measure([QFSYNC, "db", "upgrade", "--database-url", url], {})
        for scenario in scenarios:
            row = self.row("qfsync", scenario, db.name, jobs, latency)
            renamed, listed = 0, jobs
            if scenario == "re-sync 1% changed":
                renamed = int(fake.ask("rename 1").split()[1])
            command = [QFSYNC, "sync", "--json", "--database-url", url]
            if scenario == "incremental, 50 new":
                fake.ask("add 50")
                command.append("--incremental")
                listed += 50
            run = measure(command, fake.env, fake=fake, server=db.server)
            self.record(row, run, fake)
            if run.timed_out:  # what follows needs this run's data
                break
            result = json.loads(run.stdout)
            row.durations.append(result["duration_s"])
            expected = {
                "first sync": ("jobs_inserted", jobs),
                "re-sync unchanged": ("jobs_unchanged", jobs),
                "re-sync 1% changed": ("jobs_updated", renamed),
                "incremental, 50 new": ("jobs_inserted", 50),
            }[scenario]
            stored = db.count(url, None, "finetuning_jobs", "WHERE deleted_at IS NULL")
            if result[expected[0]] != expected[1] or stored != listed:
                raise SystemExit(f"bench: {scenario}: {result} with {stored} rows stored")
            if scenario == "incremental, 50 new":
                fake.ask("forget")  # later measurements expect the fake's N jobs
        db.drop(tag)

    def dlt(self, fake: Fake, db: Any, jobs: int) -> None:
        """dlt's merge into an empty database, then the same pipeline again, nothing changed."""
        tag = f"dlt_{jobs}"
        url = db.create(tag)
        state = OUT / f"{tag}_pipelines"
        shutil.rmtree(state, ignore_errors=True)
        command = [sys.executable, str(HERE / "dlt_pipeline.py"), fake.url, url, str(state)]
        for scenario in DLT_SCENARIOS:
            row = self.row("dlt", scenario, db.name, jobs, 0)
            run = measure(command, DLT_ENV, fake=fake, server=db.server)
            self.record(row, run, fake)
            if run.timed_out:
                break
            stored = db.count(url, "dlt_jobs", "finetuning_jobs")
            if stored != jobs:  # an honest comparison loads the same rows
                raise SystemExit(f"bench: dlt {scenario} left {stored} rows, not {jobs}")
        db.drop(tag)
        shutil.rmtree(state, ignore_errors=True)

    def run(self) -> None:
        for jobs, latency, repetitions in SIZES:
            print(f"{jobs} jobs, {latency} ms latency, up to {repetitions} runs each", flush=True)
            fake = Fake(jobs, latency)
            try:
                self.walk(fake, jobs, latency)
                for db in self.databases:
                    if latency and db.name == "mariadb":
                        continue  # the latency question is the same on every database
                    runs = repetitions
                    if db.name == "mariadb" and jobs == 100_000:
                        runs = MARIADB_RUNS_AT_100K
                    # qfsync and dlt take turns, so that each ratio's two medians come from
                    # runs minutes apart at most, through the machine's changes of pace.
                    with_dlt = latency == 0 and db.name != "mariadb"  # dlt's are the reference
                    for repetition in range(runs):
                        if self.out_of_time(repetition):
                            self.skip("qfsync", qfsync_scenarios(latency), db, jobs, latency)
                            if with_dlt:
                                self.skip("dlt", DLT_SCENARIOS, db, jobs, 0)
                            continue
                        self.qfsync(fake, db, jobs, latency)
                        if with_dlt:
                            self.dlt(fake, db, jobs)
            finally:
                fake.close()


# --- tasks: side by side against one at a time -------------------------------------------------

TASK_JOBS, TASK_LATENCY_MS, TASK_CONCURRENCY = 10_000, 20, 8
TASK_CAP_S = 600  # one at a time, 10,000 jobs at 20 ms need some 220 s


def tasks_speedup(
    jobs: int = TASK_JOBS, latency_ms: int = TASK_LATENCY_MS, concurrency: int = TASK_CONCURRENCY
) -> list[str]:
    """`qfsync sync --tasks` of `jobs` jobs into a fresh SQLite file with `latency_ms` per
    request, once with `concurrency` task requests in flight and once with one; returns the
    rows of a markdown table, the last one the speed-up. The jobs walk is the same in both (and
    sequential); the ideal one-at-a-time time is task requests × latency."""
    lines = [
        "| tasks in flight | wall s | run s | task requests | tasks | run s − walk s |",
        "|--:|--:|--:|--:|--:|--:|",
    ]
    fake = Fake(jobs, latency_ms)
    results: dict[int, dict[str, Any]] = {}
    try:
        walk = measure([QFSYNC, "jobs"], fake.env, subprocess.DEVNULL)
        fake.requests()
        for width in (concurrency, 1):
            url = Sqlite().create(f"tasks_{width}")
            command = [QFSYNC, "sync", "--tasks", "--json", "--task-concurrency", str(width)]
            run = measure([*command, "--database-url", url], fake.env, cap_s=TASK_CAP_S)
            fake.requests()
            if run.timed_out:
                raise SystemExit(f"bench: tasks with {width} in flight ran past {TASK_CAP_S} s")
            result = results[width] = json.loads(run.stdout)
            print(
                f"  tasks  {width:>2} in flight {jobs:>7} jobs: {run.wall_s:.2f} s, "
                f"{result['task_requests']} task requests",
                flush=True,
            )
            lines.append(
                f"| {width} | {run.wall_s:.2f} | {result['duration_s']:.2f} | "
                f"{result['task_requests']:,} | {result['tasks_seen']:,} | "
                f"{result['duration_s'] - walk.wall_s:.2f} |"
            )
            Sqlite().drop(f"tasks_{width}")
    finally:
        fake.close()
    wide_result, one_result = results[concurrency], results[1]
    ideal = one_result["task_requests"] * latency_ms / 1000
    lines += [
        "",
        f"{jobs:,} jobs, {latency_ms} ms per request; the jobs walk alone (`qfsync jobs`) took "
        f"{walk.wall_s:.2f} s. Speed-up of the run, {concurrency} in flight against one at a "
        f"time: **{one_result['duration_s'] / wide_result['duration_s']:.1f}×** (task requests "
        f"one at a time cannot beat {ideal:.0f} s).",
    ]
    return lines


# --- the report -------------------------------------------------------------------------------


def machine(bench: Bench) -> list[tuple[str, str]]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor(),
    )
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return [
        ("CPU", f"{model}, {os.cpu_count()} cores"),
        ("memory", f"{memory_kb / 1024**2:.1f} GiB"),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("databases", ", ".join(db.version() for db in bench.databases)),
        ("qfsync revision", bench.revision),
        (
            "packages",
            ", ".join(
                f"{name} {version(name)}"
                for name in (
                    "qfsync",
                    "SQLAlchemy",
                    "psycopg",
                    "PyMySQL",
                    "requests",
                    "orjson",
                    "dlt",
                )
            ),
        ),
    ]


def revision() -> str:
    """What ran: the last commit that changed qfsync's code, plus a digest of the uncommitted
    changes to that code, if any. Docs and bench/ do not count."""
    code = ["qfsync", "migrations", "pyproject.toml"]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=HERE.parent, capture_output=True, text=True, check=True
        ).stdout

    try:
        commit = git("log", "-1", "--format=%h", "--", *code).strip()
        diff = git("diff", commit, "--", *code)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    if not diff:
        return commit
    return (
        f"{commit} + uncommitted changes (diff sha1 {hashlib.sha1(diff.encode()).hexdigest()[:8]})"
    )


def number(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def ratio(top: Row | None, bottom: Row | None) -> str:
    """top's wall time over bottom's; a run stopped at the cap gives a bound."""
    if top is None or bottom is None or not top.runs or not bottom.runs:
        return "?"
    if top.timed_out and bottom.timed_out:
        return "?"
    if top.timed_out:
        return f"> {CAP_S / bottom.wall:.2f}×"
    if bottom.timed_out:
        return f"< {top.wall / CAP_S:.2f}×"
    return f"{top.wall / bottom.wall:.2f}×"


def results_table(bench: Bench) -> list[str]:
    lines = [
        "| tool | scenario | database | jobs | latency | runs | wall s | CPU s | fake CPU s "
        "| db CPU s | jobs/s | peak RSS MB | requests | ×bare walk | dlt/qfsync |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in bench.rows.values():
        bare = bench.rows.get(("bare", "walk", "-", row.jobs, row.latency_ms))
        qfsync = bench.rows.get(("qfsync", row.scenario, row.database, row.jobs, row.latency_ms))
        vs_bare = ratio(row, bare) if row.tool == "qfsync" else ""
        vs_qfsync = ratio(row, qfsync) if row.tool == "dlt" else ""
        wall = f"> {CAP_S}" if row.timed_out else number(row.wall)
        runs = f"{len(row.runs)}" + (f" ({row.skipped} skipped)" if row.skipped else "")
        lines.append(
            f"| {row.tool} | {row.scenario} | {row.database} | {row.jobs:,} | "
            f"{row.latency_ms} ms | {runs} | {wall} | {number(row.cpu)} | "
            f"{number(row.fake_cpu)} | {number(row.server_cpu)} | "
            f"{'n/a' if row.timed_out else number(row.jobs / row.wall, 0)} | "
            f"{number(row.rss, 0)} | {row.requests[0] if row.requests else 'n/a'} | "
            f"{vs_bare} | {vs_qfsync} |"
        )
    return lines


def targets(bench: Bench) -> list[str]:
    """Each target of issue 10 with its numbers and PASS or FAIL. A run stopped at the cap fails
    its target; a row that never ran is "not measured"."""
    big, small = 100_000, 10_000
    lines = ["| target | measured (medians, one run) | verdict |", "|---|---|---|"]

    def check(name: str, ok: bool | None, detail: str) -> None:
        verdict = "not measured" if ok is None else "PASS" if ok else "FAIL"
        lines.append(f"| {name} | {detail} | **{verdict}** |")

    def get(tool: str, scenario: str, db: str, jobs: int = big, latency: int = 0) -> Row | None:
        row = bench.rows.get((tool, scenario, db, jobs, latency))
        return row if row and row.runs else None

    def seconds(row: Row | None) -> str:
        return "?" if row is None else f"> {CAP_S}" if row.timed_out else number(row.wall)

    def at_least(top: Row | None, bottom: Row | None, limit: float) -> bool | None:
        """top's wall time ≥ limit × bottom's (bottom stopped at the cap fails)."""
        if top is None or bottom is None or top.timed_out:
            return None
        return not bottom.timed_out and top.wall >= limit * bottom.wall

    for db, scenario, limit in (
        ("postgres", "first sync", 3.0),
        ("postgres", "re-sync unchanged", 3.5),
        ("sqlite", "first sync", 3.0),
    ):
        ours, theirs = get("qfsync", scenario, db), get("dlt", scenario, db)
        check(
            f"{scenario} into {db}, 100k: dlt/qfsync ≥ {limit}×",
            at_least(theirs, ours, limit),
            f"dlt {seconds(theirs)} s vs qfsync {seconds(ours)} s: {ratio(theirs, ours)}",
        )
    walk, bare = get("qfsync", "walk", "-"), get("bare", "walk", "-")
    check(
        "`qfsync jobs` 100k vs the bare walk: ≤ 1.6×",
        at_least(bare, walk, 1 / 1.6),
        f"{seconds(walk)} s vs bare walk {seconds(bare)} s: {ratio(walk, bare)}",
    )
    for db in ("sqlite", "postgres"):
        sync = get("qfsync", "first sync", db, 20_000, 20)
        name = f"first sync into {db}, 20k, 20 ms latency: process ≤ 1.15 × pages × 20 ms"
        if sync is None or sync.timed_out:
            check(name, None if sync is None else False, f"process {seconds(sync)} s")
            continue
        ideal = sync.requests[0] * 0.020
        bare_latency = get("bare", "walk", "-", 20_000, 20)
        check(
            name,
            sync.wall <= 1.15 * ideal,
            f"process {sync.wall:.2f} s (its run {sync.median(sync.durations):.2f} s; the bare "
            f"walk's process {seconds(bare_latency)} s) vs {sync.requests[0]} pages × 20 ms = "
            f"{ideal:.2f} s: {sync.wall / ideal:.2f}×",
        )
    for db in ("sqlite", "postgres", "mariadb"):
        peaks = {}
        for jobs in (small, big):
            rows = [get("qfsync", scenario, db, jobs) for scenario in SYNC_SCENARIOS]
            peaks[jobs] = max((row.rss for row in rows if row), default=None)
        flat = None if None in peaks.values() else peaks[big] <= 1.1 * peaks[small]
        detail = f"{number(peaks[big] or NAN, 0)} MB at 100k vs {number(peaks[small] or NAN, 0)} MB"
        theirs = get("dlt", "first sync", db)
        half = None if theirs is None or flat is None else (peaks[big] or 0) <= theirs.rss / 2
        if theirs is not None:
            detail += f"; dlt's first sync {number(theirs.rss, 0)} MB"
        ok = flat if theirs is None else (None if half is None else bool(flat and half))
        suffix = "" if theirs is None else " and ≤ ½ dlt's"
        check(f"qfsync into {db}: peak RSS flat from 10k to 100k (±10%){suffix}", ok, detail)
    for db in ("sqlite", "postgres", "mariadb"):
        incremental = get("qfsync", "incremental, 50 new", db)
        check(
            f"incremental sync into {db}, 100k stored and 50 new: ≤ 2 requests",
            None if incremental is None else max(incremental.requests) <= 2,
            f"{'?' if incremental is None else max(incremental.requests)} requests",
        )
    return lines


def where_time_goes(bench: Bench) -> list[str]:
    """Per 100k row: the CPU of qfsync, the fake and the database server, against the wall."""
    lines = [
        "| tool | scenario | database | wall s | its CPU s | fake CPU s | db server CPU s "
        "| sum of CPU / wall |",
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    for row in bench.rows.values():
        if row.jobs != 100_000 or not row.runs:
            continue
        parts = [row.cpu, row.fake_cpu, row.server_cpu]
        total = sum(part for part in parts if part == part)
        lines.append(
            f"| {row.tool} | {row.scenario} | {row.database} | {number(row.wall)} | "
            f"{number(row.cpu)} | {number(row.fake_cpu)} | {number(row.server_cpu)} | "
            f"{number(total / row.wall)} |"
        )
    return lines


def report(
    bench: Bench, started_at: datetime, load: tuple[str, str], tasks: list[str] | None = None
) -> str:
    elapsed = time.monotonic() - bench.started
    results = HERE / "RESULTS.md"
    warning = []
    if (now := revision()) != bench.revision:
        warning.append(
            f"| **warning** | qfsync's files changed during the run (now {now}), so the rows "
            "mix two versions of qfsync: run `make bench` again |"
        )
    notes = ""
    if results.exists() and NOTES_MARK in results.read_text():
        notes = results.read_text().split(NOTES_MARK, 1)[1]
    lines = [
        "# qfsync benchmark",
        "",
        f"Written by `make bench` (bench/bench.py) on {started_at:%Y-%m-%d %H:%M} UTC; the "
        f"measurements took {elapsed:.0f} s.",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in machine(bench)),
        *warning,
        f"| load average (1 min) at start / end | {load[0]} / {load[1]} (the machine is shared: "
        "other work running at the same time slows every row) |",
        "",
        "## How it was measured",
        "",
        "- The fake API runs on loopback in a process of its own (bench/fake_server.py): the "
        "jobs of `qfsync.fake_api.FakeApi`, served as pages rendered in advance over a bare "
        "keep-alive socket, without checking signatures, so that it costs less than any client. "
        "Every measured command runs in a fresh process, with qfsync's modules byte-compiled "
        "beforehand (bench/run.sh), as pip compiles an installed wheel's and dlt's. Wall time "
        "is the whole process, start-up included; CPU is its user + system time (from "
        "`os.wait4`), peak RSS its `VmHWM` read every 10 ms; requests are the fake's own "
        "count for that process. `fake CPU` and "
        "`db CPU` are what the fake's process and the database server's processes (from "
        "/proc, exited PostgreSQL backends included) used meanwhile; the server's figure "
        "includes any other client's work at the time. All three share the two cores.",
        "- **bare walk**: bench/bare_walk.py signs, fetches and decodes every page (requests, "
        "qfsync's signer, orjson) and does nothing else: the floor of any client of this API. "
        "**walk**: `qfsync jobs > /dev/null`. **qfsync**: `qfsync sync --json` into a fresh "
        "SQLite file or a fresh PostgreSQL or MariaDB database: the first sync, a re-sync with "
        "nothing changed, a re-sync after the fake renamed 1% of the jobs (every 100th), then "
        "`--incremental` after the fake added 50 new jobs. "
        "**dlt**: bench/dlt_pipeline.py (rest_api source, `JSONResponseCursorPaginator` writing "
        "`marker` into the JSON body, merge on `jobId`, requests signed with "
        "`qfsync.signer.authorization` like qfsync's client) into a fresh database, then run "
        "again with nothing changed; each time the rows in dlt's table are counted and must "
        "equal the jobs. dlt writes SQLite through its `sqlalchemy` destination with "
        "`create_primary_keys=True` (so its table and its staging table have `jobId` as an "
        "indexed primary key) and PostgreSQL through its `postgres` destination.",
        "- Runs per row: "
        + ", ".join(f"{j:,} jobs {lat} ms: {r}" for j, lat, r in SIZES)
        + f" (MariaDB {MARIADB_RUNS_AT_100K} at 100,000 jobs: no target's ratio uses it); the "
        "walk runs three times at every size (it is cheap and every ratio divides by it). On "
        "each database qfsync's runs and dlt's take turns, so that a ratio's two medians come "
        "from the same stretch of time. The table shows the median and how many ran. "
        f"A run still going after {CAP_S} s is stopped and shown as "
        f"`> {CAP_S}`; repetitions after {BUDGET_S} s of measuring are skipped and counted. "
        "With 20 ms latency only the walks and the first sync are measured, against the ideal "
        "of pages × 20 ms; the database's tables are created beforehand (`qfsync db upgrade`, "
        "not measured), as they are for every scheduled sync but the very first.",
        "",
        "## Results",
        "",
        *results_table(bench),
        "",
        "## Targets",
        "",
        *targets(bench),
        "",
        "## Where the time goes (100k rows)",
        "",
        *where_time_goes(bench),
        "",
        "## Tasks: side by side against one at a time",
        "",
        *(tasks or ["not measured"]),
        "",
        NOTES_MARK,
    ]
    return "\n".join(lines) + (notes or "\n")


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> None:
    started_at = datetime.now(UTC)
    load_at_start = load_average()
    OUT.mkdir(exist_ok=True)
    bench = Bench()
    bench.run()
    task_lines = tasks_speedup()
    written = report(bench, started_at, (load_at_start, load_average()), task_lines)
    (HERE / "RESULTS.md").write_text(written)
    print("\n".join(results_table(bench)))
    print()
    print("\n".join(targets(bench)))
    print()
    print("\n".join(where_time_goes(bench)))
    print(f"\nwrote {HERE / 'RESULTS.md'}")
    if revision() != bench.revision:
        print("bench: qfsync's files changed during the run; run `make bench` again")


if __name__ == "__main__":
    if sys.argv[1:] == ["tasks"]:  # only the tasks rows: `python bench/bench.py tasks`
        print("\n".join(tasks_speedup()))
    else:
        main()
