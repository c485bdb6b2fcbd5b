"""Prototype for issue 10: the walk in a process of its own, measured against `qfsync sync`.

Not part of qfsync and not run by `make bench`. A sync runs three threads in one process
(fetch, prepare, write), so their Python shares one core through the GIL, and the writing
thread waits for the GIL each time the database answers. Here the walk, the page checks and
`prepare` run in a child process and send prepared pages through a pipe to a parent that only
writes them. The prototype leaves out what a real design must add: retries' statistics, logs
and errors carried back from the child, stop requests and signals, tasks, deletions.

    bench/.venv/bin/python bench/experiments/walk_process.py [JOBS] [ROUNDS]

Runs, in alternation, `qfsync sync`, the prototype (started with fork, and with spawn, as a
real design would have to: a forked child inherits the parent's threads' locks and database
connections) and the bench's dlt pipeline into a fresh database, and prints each run and the
medians, with dlt's over each.
"""

import multiprocessing
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

# bench/bench.py, beside this directory; imported by compare() alone, so that a spawned child,
# which imports this script again, loads only what the walk needs.
BENCH = Path(__file__).resolve().parent.parent


def produce(pipe: Any, dialect: str) -> None:
    """The child: walk, check and prepare every page; send (next marker, prepared page)."""
    from qfsync import fits
    from qfsync.client import Client, Credentials, JobQuery, walk
    from qfsync.writers import for_dialect

    writer = for_dialect(dialect)
    credentials = Credentials(os.environ["QIANFAN_ACCESS_KEY"], os.environ["QIANFAN_SECRET_KEY"])
    client = Client(credentials, os.environ["QIANFAN_CONSOLE_API_BASE_URL"])
    for page in walk(client, JobQuery()):
        fits.check_page(page.jobs, page.next_marker, dialect)
        pipe.send((page.next_marker, writer.prepare(page.jobs)))
    pipe.send(peak_mb())
    pipe.close()


def peak_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def sync(url: str, start_method: str) -> None:
    """The parent: the run's bookkeeping and every page's transaction, as `qfsync sync` does."""
    from qfsync import db, runs
    from qfsync.store import Scope
    from qfsync.writers import for_dialect

    engine = db.connect(url)
    db.ensure_schema(engine, True)
    writer = for_dialect(engine.dialect.name)
    context = multiprocessing.get_context(start_method)
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=produce, args=(send, engine.dialect.name))
    child.start()
    send.close()
    with engine.connect() as connection:
        with connection.begin():
            run_id, _ = runs.start(connection, Scope(None, None), "full", 100, None)
        while not isinstance(item := receive.recv(), float):
            next_marker, prepared = item
            with connection.begin():
                writer.write(connection, prepared, run_id, runs.utcnow(), next_marker)
        with connection.begin():
            runs.succeed(connection, run_id, True, 0)
    child.join()
    print(f"{item:.1f}", flush=True)  # the child's peak RSS; os._exit does not flush
    os._exit(0)


def compare(jobs: int, rounds: int) -> None:
    sys.path.insert(0, str(BENCH))
    import bench

    fake = bench.Fake(jobs, 0)
    postgres = bench.Postgres()
    databases = {"postgres": postgres, "sqlite": bench.Sqlite()}
    variants = [
        (name, how)
        for name in databases
        for how in ("threads", "child (fork)", "child (spawn)", "dlt")
    ]
    results: dict[tuple[str, str], list[tuple[bench.Run, float]]] = {v: [] for v in variants}
    state = bench.OUT / "walk_process_pipelines"
    for round_ in range(rounds):
        for name, how in variants if round_ % 2 == 0 else variants[::-1]:
            database = databases[name]
            url = database.create("walk_process")
            env, dataset = fake.env, None
            if how == "threads":
                command = [bench.QFSYNC, "sync", "--json", "--database-url", url]
            elif how == "dlt":
                shutil.rmtree(state, ignore_errors=True)
                command = [sys.executable, str(bench.HERE / "dlt_pipeline.py"), fake.url, url]
                command.append(str(state))
                env, dataset = bench.DLT_ENV, "dlt_jobs"
            else:
                method = "fork" if "fork" in how else "spawn"
                command = [sys.executable, __file__, "sync", url, method]
            run = bench.measure(command, env, fake=fake, server=database.server)
            stored = database.count(url, dataset, "finetuning_jobs")
            if stored != jobs:
                raise SystemExit(f"{name} {how}: {stored} jobs stored, not {jobs}")
            child_mb = float(run.stdout) if how.startswith("child") else 0.0
            results[(name, how)].append((run, child_mb))
            print(
                f"{name:8s} {how:13s} wall {run.wall_s:6.2f} s  CPU {run.cpu_s:6.2f} s"
                f"  server CPU {run.server_cpu_s:5.2f} s  peak RSS {run.rss_mb:5.1f} MB"
                + (f" + child {child_mb:5.1f} MB" if child_mb else ""),
                flush=True,
            )
            database.drop("walk_process")
    fake.close()
    print(f"\nmedians of {rounds} runs, {jobs:,} jobs, first sync:")
    for (name, how), measured in results.items():
        wall = statistics.median(run.wall_s for run, _ in measured)
        cpu = statistics.median(run.cpu_s for run, _ in measured)
        server = statistics.median(run.server_cpu_s for run, _ in measured)
        rss = statistics.median(run.rss_mb for run, _ in measured)
        child = statistics.median(child_mb for _, child_mb in measured)
        dlt = statistics.median(run.wall_s for run, _ in results[(name, "dlt")])
        print(
            f"{name:8s} {how:13s} wall {wall:6.2f} s  CPU {cpu:6.2f} s  server {server:5.2f} s"
            f"  peak RSS {rss:5.1f}" + (f" + {child:5.1f}" if child else "") + " MB"
            f"  dlt/this {dlt / wall:4.2f}x"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["sync"]:
        sync(sys.argv[2], sys.argv[3])
    else:
        compare(
            int(sys.argv[1]) if len(sys.argv) > 1 else 100_000,
            int(sys.argv[2]) if len(sys.argv) > 2 else 3,
        )
