"""Ending a request that is blocked on the network, from outside it.

requests' read timeout applies to each read, so a server that trickles a byte a second, or one
that never answers while the operator presses Ctrl-C, can hold a request for as long as it
likes. A `Watch` runs beside one attempt and, when the stop event is set or the attempt's
deadline passes, shuts the attempt's socket down: the blocked recv() returns at once, in
whichever thread it is, and the attempt fails with the watch's reason. Shutting a socket down
(rather than closing it) leaves its file descriptor to its owner, so the descriptor cannot be
reused under urllib3's feet.

To know the socket, the session's connections record it, on the thread that sends them, in
the watch of the attempt running on that thread (`WatchedAdapter`): when they connect, and
when a kept-alive connection sends again. (The connection itself is no guide: http.client
drops its socket as soon as the response is to be read until the server closes.)
"""

import socket
import threading
import time
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

POLL_S = 0.1  # how soon a stop request is noticed during a request

_current = threading.local()


class Watch:
    """Watches one attempt: use as a context manager around the request and its body."""

    def __init__(self, stop: threading.Event | None, deadline_s: float):
        self.stop = stop
        self.deadline_s = deadline_s
        self.reason: str | None = None  # "stopped" or "deadline", once the watch has fired
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()  # no shutdown once the attempt is over
        self._over = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qfsync-watch", daemon=True)

    def __enter__(self) -> "Watch":
        _current.watch = self
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._over = True
        self._done.set()
        _current.watch = None
        self._thread.join()

    def watch(self, sock: Any) -> None:
        if isinstance(sock, socket.socket):  # not TLS-in-TLS through a proxy: not cut
            self._socket = sock

    def _run(self) -> None:
        end = time.monotonic() + self.deadline_s
        while not self._done.wait(max(0.0, min(POLL_S, end - time.monotonic()))):
            if self.stop is not None and self.stop.is_set():
                self.reason = "stopped"
            elif time.monotonic() >= end:
                self.reason = "deadline"
            else:
                continue
            break
        else:
            return
        # Keep cutting until the attempt ends: a connection still being made when the watch
        # fired gets its socket only later.
        while True:
            self._cut()
            if self._done.wait(POLL_S):
                return

    def _cut(self) -> None:
        with self._lock:
            if self._over:
                return
            if self._socket is not None:
                try:
                    # socket.socket's own shutdown: ssl.SSLSocket's would also drop its TLS
                    # state under the reading thread's feet.
                    socket.socket.shutdown(self._socket, socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed: nothing left to unblock


def _record(sock: Any) -> None:
    watch: Watch | None = getattr(_current, "watch", None)
    if watch is not None and sock is not None:
        watch.watch(sock)


class _WatchedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _record(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _record(self.sock)  # a kept-alive connection: connect() is not called again
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _record(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _record(self.sock)
        super().request(*args, **kwargs)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class WatchedAdapter(HTTPAdapter):
    """requests' adapter, with connections a `Watch` can cut (direct and through a proxy)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS pools have connections of their own
            manager.pool_classes_by_scheme = POOLS
        return manager
