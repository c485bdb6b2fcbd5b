"""The fake API in a process of its own, steered over stdin, so that the bench can change jobs
between two syncs and read how many requests a walk made, without sharing the measured process.

    python bench/fake_server.py JOBS LATENCY_MS

Prints `ready URL`, then answers one line per command:
    count          requests since the last count (the counter restarts), e.g. `1000`
    rename PCT     renames every (100/PCT)-th job of the listing, e.g. `renamed 1000`
    add N          adds N jobs newer than all others, e.g. `added 50`
    forget         deletes the jobs `add` added, e.g. `forgot 50`
"""

import sys

from qfsync.fake_api import FakeApi, Faults


def main(jobs: int, latency_ms: float) -> None:
    api = FakeApi(jobs, faults=Faults(latency_s=latency_ms / 1000)).start()
    added: list[str] = []
    print("ready", api.url, flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "count":
            answer = str(api.request_count)
            api.reset_counters()  # also drops the request bodies the fake keeps for tests
        elif command == "rename":
            listing = api.job_list()
            ids = [job["jobId"] for job in listing[:: round(100 / float(args[0]))]]
            api.rename(ids)
            answer = f"renamed {len(ids)}"
        elif command == "add":
            added += [job["jobId"] for job in api.add(int(args[0]))]
            answer = f"added {args[0]}"
        elif command == "forget":
            api.delete(added)
            answer, added = f"forgot {len(added)}", []
        else:
            answer = f"unknown command {command!r}"
        print(answer, flush=True)
    api.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]))
