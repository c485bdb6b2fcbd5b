"""A lean fake of DescribeFineTuningJobs for the bench, in a process of its own, steered over
stdin, so that the bench can change jobs between two syncs and read how many requests a walk
made, without sharing the measured process.

    python bench/fake_server.py JOBS LATENCY_MS

The jobs are qfsync.fake_api.FakeApi's (same seed, same changes), but the HTTP side is a bare
keep-alive socket loop that answers from pages rendered ahead of time: qfsync's FakeApi checks
every signature and renders every page on request, which made the fake, not the client, the
bottleneck of a walk. This one does not check signatures (the test suite does); it only has to
be cheaper than any client, so that the bench measures the client and the database.

Prints `ready URL`, then answers one line per command:
    count          requests since the last count (the counter restarts), e.g. `1000`
    rename PCT     renames every (100/PCT)-th job of the listing, e.g. `renamed 1000`
    add N          adds N jobs newer than all others, e.g. `added 50`
    forget         deletes the jobs `add` added, e.g. `forgot 50`
"""

import socket
import sys
import threading
import time
from typing import Any

import orjson

from qfsync.fake_api import ACTION, ROUTE, TASKS_ACTION, FakeApi

PAGE_SIZE = 100  # the page size qfsync asks for by default: rendered ahead of every walk


class Pages:
    """Rendered responses by request, the default listing's rendered in advance."""

    def __init__(self, api: FakeApi):
        self.api = api
        self.cache: dict[tuple[Any, ...], bytes] = {}
        self.views: dict[tuple[Any, ...], dict[str, int]] = {}
        self.requests = 0
        self.lock = threading.Lock()

    def reset(self) -> None:
        """After a change of the jobs: render the default listing's pages again, eagerly."""
        self.cache, self.views = {}, {}
        jobs = self.api.job_list()
        marker = None
        for start in range(0, max(len(jobs), 1), PAGE_SIZE):
            self.render(None, None, False, marker, PAGE_SIZE, jobs)
            marker = jobs[start + PAGE_SIZE]["jobId"] if start + PAGE_SIZE < len(jobs) else None

    def positions(self, train_mode: str | None, model: str | None, reverse: bool) -> dict[str, int]:
        """Where each job id is in a listing, to find a marker's page."""
        key = (train_mode, model, reverse)
        if key not in self.views:
            listing = self.api.job_list(train_mode, model, reverse)
            self.views[key] = {job["jobId"]: i for i, job in enumerate(listing)}
        return self.views[key]

    def answer(self, target: bytes, body: bytes) -> bytes:
        with self.lock:
            self.requests += 1
        request = orjson.loads(body or b"{}")
        if b"Action=" + ACTION.encode() not in target:
            return self.task_answer(target, request)
        key = (
            request.get("trainMode"),
            request.get("model"),
            bool(request.get("pageReverse")),
            request.get("marker") or None,
            int(request.get("maxKeys") or PAGE_SIZE),
        )
        page = self.cache.get(key)
        if page is None:
            jobs = self.api.job_list(key[0], key[1], key[2])
            page = self.render(*key, jobs)
        return page

    def task_answer(self, target: bytes, request: dict[str, Any]) -> bytes:
        """The task actions, rendered on request by FakeApi itself (tasks change as time
        passes, so nothing is cached): only the bench's tasks row asks for them."""
        describe = (
            self.api._describe_tasks
            if b"Action=" + TASKS_ACTION.encode() in target
            else self.api._describe_task
        )
        body = orjson.dumps({"requestId": "bench-task", "result": describe(request, False)})
        return _ok(body)

    def render(
        self,
        train_mode: str | None,
        model: str | None,
        reverse: bool,
        marker: str | None,
        max_keys: int,
        jobs: list[dict[str, Any]],
    ) -> bytes:
        start = 0 if marker is None else self.positions(train_mode, model, reverse)[marker]
        end = start + max_keys
        info: dict[str, Any] = {"marker": marker or "", "maxKeys": max_keys}
        info["isTruncated"] = end < len(jobs)
        if info["isTruncated"]:
            info["nextMarker"] = jobs[end]["jobId"]
        body = orjson.dumps(
            {
                "requestId": f"bench-{start}",
                "result": {"jobList": jobs[start:end], "pageInfo": info},
            }
        )
        response = _ok(body)
        self.cache[(train_mode, model, reverse, marker, max_keys)] = response
        return response


def _ok(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body


def serve(connection: socket.socket, pages: Pages, latency_s: float) -> None:
    """One keep-alive connection: read a request, wait the latency, send the page."""
    buffered = b""
    with connection:
        while True:
            while b"\r\n\r\n" not in buffered:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                buffered += chunk
            head, buffered = buffered.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buffered) < length:
                buffered += connection.recv(65536)
            body, buffered = buffered[:length], buffered[length:]
            target = head.split(b" ", 2)[1]
            if not target.startswith(ROUTE.encode()):
                connection.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                continue
            if latency_s:
                time.sleep(latency_s)
            connection.sendall(pages.answer(target, body))


def main(jobs: int, latency_ms: float) -> None:
    api = FakeApi(jobs)
    pages = Pages(api)
    pages.reset()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.listen(16)

    def accept() -> None:
        while True:
            connection, _ = listener.accept()
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(
                target=serve, args=(connection, pages, latency_ms / 1000), daemon=True
            ).start()

    threading.Thread(target=accept, daemon=True).start()
    added: list[str] = []
    print("ready", f"http://127.0.0.1:{listener.getsockname()[1]}", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "count":
            with pages.lock:
                answer, pages.requests = str(pages.requests), 0
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
        if command in ("rename", "add", "forget"):
            pages.reset()
        print(answer, flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]))
