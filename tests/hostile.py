"""A loopback HTTP server that answers with whatever bytes a test scripts.

The boundary fake for what a well-behaved server cannot send: a wrong Content-Length, broken
chunked encoding, a Content-Encoding that does not decode, a decompression bomb, a body that
trickles or never comes, a redirect, control characters. Each reply is a function that writes
to the raw socket; request n (from 1) gets replies[n - 1], the last reply repeating. Every
connection is closed after its reply, so each attempt of a client is one connection.
"""

import json
import socket
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import Any

Reply = Callable[[socket.socket, "Hostile"], None]


class Hostile:
    """Serve scripted replies on 127.0.0.1; use as a context manager."""

    def __init__(self, *replies: Reply):
        assert replies, "a hostile server needs at least one reply"
        self.replies = list(replies)
        self.bodies: list[Any] = []  # each request's JSON body, in order
        self.heads: list[bytes] = []  # each request's line and headers, in order
        self.answered = 0  # replies written to the end
        self.closing = threading.Event()  # set when the server stops: ends hangs and trickles
        self.changed = threading.Condition()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "Hostile":
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        for connection in [self._listener, *self._connections]:  # wakes accept() and recv()
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def wait_for(self, requests: int = 1, answered: int = 0, timeout: float = 60) -> None:
        """Block until this many requests arrived and this many replies were written."""
        with self.changed:
            if not self.changed.wait_for(
                lambda: len(self.bodies) >= requests and self.answered >= answered, timeout
            ):
                raise AssertionError(f"{len(self.bodies)} requests, {self.answered} answered")

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self._connections.append(connection)
            self._spawn(self._serve, connection)

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            request = read_request(connection)
            if request is None:
                return
            with self.changed:
                self.heads.append(request[0])
                self.bodies.append(request[1])
                reply = self.replies[min(len(self.bodies), len(self.replies)) - 1]
                self.changed.notify_all()
            try:
                reply(connection, self)
                connection.shutdown(socket.SHUT_WR)
            except OSError:
                return  # the client went away first, as it should from a bomb or a trickle
            with self.changed:
                self.answered += 1
                self.changed.notify_all()


def read_request(connection: socket.socket) -> tuple[bytes, Any] | None:
    """The request's head (as sent) and JSON body, or None if the client left."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            return None
        body += chunk
    return head, json.loads(body) if body else {}


# --- replies ----------------------------------------------------------------------------------


def head(status: int = 200, headers: dict[str, str] | None = None, reason: str = "X") -> bytes:
    """A status line and headers, written as given (no Content-Length unless given)."""
    lines = [f"HTTP/1.1 {status} {reason}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def raw(data: bytes) -> Reply:
    """Exactly these bytes, then the connection closes."""

    def reply(connection: socket.socket, server: Hostile) -> None:
        connection.sendall(data)

    return reply


def answer(
    status: int = 200, body: bytes | str = b"", headers: dict[str, str] | None = None
) -> Reply:
    """A well-formed answer with a correct Content-Length (unless `headers` gives one)."""
    data = body.encode() if isinstance(body, str) else body
    return raw(head(status, {"Content-Length": str(len(data)), **(headers or {})}) + data)


def json_answer(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    return answer(status, json.dumps(payload).encode(), headers)


def hang() -> Reply:
    """Read the request and never answer (until the server stops)."""

    def reply(connection: socket.socket, server: Hostile) -> None:
        server.closing.wait()

    return reply


def trickle(data: bytes, every_s: float, prefix: bytes = b"") -> Reply:
    """`prefix` at once, then `data` one byte at a time, one every `every_s` seconds."""

    def reply(connection: socket.socket, server: Hostile) -> None:
        connection.sendall(prefix)
        for byte in data:
            if server.closing.wait(every_s):
                return
            connection.sendall(bytes([byte]))

    return reply


def endless(data: bytes, headers: dict[str, str] | None = None) -> Reply:
    """`data` over and over, at full speed, until the client goes away."""

    def reply(connection: socket.socket, server: Hostile) -> None:
        connection.sendall(head(200, headers))
        while not server.closing.is_set():
            connection.sendall(data)

    return reply


def long(size: int, headers: dict[str, str] | None = None, status: int = 200) -> Reply:
    """A body of `size` spaces with its Content-Length, sent a block at a time, never built."""

    def reply(connection: socket.socket, server: Hostile) -> None:
        connection.sendall(head(status, {"Content-Length": str(size), **(headers or {})}))
        block = b" " * 65536
        for _ in range(size // len(block)):
            if server.closing.is_set():
                return
            connection.sendall(block)
        connection.sendall(block[: size % len(block)])

    return reply


def bomb(
    decoded_bytes: int,
    encoding: str = "gzip",
    headers: dict[str, str] | None = None,
    status: int = 200,
) -> Reply:
    """A gzip (or zlib "deflate") body of `decoded_bytes` zeros, compressed as it is sent
    (about 1000:1), with no Content-Length: the client has to stop it."""
    wbits = {"gzip": 31, "deflate": 15}[encoding]

    def reply(connection: socket.socket, server: Hostile) -> None:
        connection.sendall(head(status, {"Content-Encoding": encoding, **(headers or {})}))
        packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
        block = bytes(1 << 20)
        for _ in range(decoded_bytes >> 20):
            if server.closing.is_set():
                return
            connection.sendall(packer.compress(block))
        connection.sendall(packer.flush())

    return reply


def chunked(*frames: bytes, headers: dict[str, str] | None = None) -> Reply:
    """A chunked answer whose framing is written as given, e.g. b"5\\r\\nhello\\r\\n"."""
    return raw(head(200, {"Transfer-Encoding": "chunked", **(headers or {})}) + b"".join(frames))


# --- bodies -----------------------------------------------------------------------------------


def page(job_ids: list[str], next_marker: str | None = None, **page_info: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"isTruncated": next_marker is not None, **page_info}
    if next_marker is not None:
        info["nextMarker"] = next_marker
    jobs = [{"jobId": job_id, "createTime": "2024-01-16T09:48:35Z"} for job_id in job_ids]
    return {"requestId": "req-1", "result": {"jobList": jobs, "pageInfo": info}}


def page_bytes(job_ids: list[str], next_marker: str | None = None) -> bytes:
    return json.dumps(page(job_ids, next_marker)).encode()


def frames(data: bytes, size: int) -> Iterator[bytes]:
    """`data` as well-formed chunks of `size` bytes, without the final zero chunk."""
    for start in range(0, len(data), size):
        part = data[start : start + size]
        yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
