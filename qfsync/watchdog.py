"""Ending a request that is blocked on the network, from outside it.

requests' read timeout applies to each read, so a server that trickles a byte a second, or one
that never answers while the operator presses Ctrl-C, can hold a request for as long as it
likes. Each attempt runs under a `Watch`; one watchdog thread checks the watches in flight
and, when a watch's stop event is set or its deadline passes, shuts its socket down: the
blocked recv() returns at once, in whichever thread it is, and the attempt fails with the
watch's reason. Shutting a socket down (rather than closing it) leaves its file descriptor to
its owner, so the descriptor cannot be reused under urllib3's feet.

To know the socket, the session's connections record it, on the thread that sends them, in
the watch of the attempt running on that thread (`WatchedAdapter`): when they connect, and
when a kept-alive connection sends again. (The connection itself is no guide: http.client
drops its socket as soon as the response is to be read until the server closes.)
"""

import os
import socket
import threading
import time
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

POLL_S = 0.1  # how soon a stop request or a deadline is noticed during a request

_current = threading.local()


class Watch:
    """Watches one attempt: use as a context manager around the request and its body."""

    def __init__(self, stop: threading.Event | None, deadline_s: float):
        self.stop = stop
        self.deadline = time.monotonic() + deadline_s
        self.reason: str | None = None  # "stopped" or "deadline", once the watch has fired
        self._socket: socket.socket | None = None

    def __enter__(self) -> "Watch":
        _current.watch = self
        _watchdog.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _current.watch = None
        _watchdog.remove(self)  # after this, the watchdog never touches the socket again

    def watch(self, sock: Any) -> None:
        if isinstance(sock, socket.socket):  # not TLS-in-TLS through a proxy: not cut
            self._socket = sock

    def check(self, now: float) -> None:
        """Fire if asked to stop or past the deadline; once fired, cut the socket, and keep
        cutting (a connection still being made when the watch fired gets its socket later)."""
        if self.reason is None:
            if self.stop is not None and self.stop.is_set():
                self.reason = "stopped"
            elif now >= self.deadline:
                self.reason = "deadline"
            else:
                return
        if self._socket is not None:
            try:
                # socket.socket's own shutdown: ssl.SSLSocket's would also drop its TLS state
                # under the reading thread's feet.
                socket.socket.shutdown(self._socket, socket.SHUT_RDWR)
            except OSError:
                pass  # already closed: nothing left to unblock


class _Watchdog:
    """One thread for every watch in the process, started on first use and asleep while no
    request is in flight: a thread per attempt would cost a GIL hand-off or two (milliseconds)
    on every page."""

    def __init__(self) -> None:
        self._watches: set[Watch] = set()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, watch: Watch) -> None:
        with self._changed:
            self._watches.add(watch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="qfsync-watch", daemon=True)
                self._thread.start()
            self._changed.notify()

    def remove(self, watch: Watch) -> None:
        with self._changed:
            self._watches.discard(watch)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._watches))
                now = time.monotonic()
                for watch in self._watches:
                    watch.check(now)
            time.sleep(POLL_S)


_watchdog = _Watchdog()


def _after_fork_in_child() -> None:
    # A child forked from a process that had made a request (a host's prefork workers)
    # inherits the watchdog's state but not its thread: without a fresh watchdog, no stop
    # or deadline would cut a request of the child's.
    global _watchdog
    _watchdog = _Watchdog()


os.register_at_fork(after_in_child=_after_fork_in_child)


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

    def close(self) -> None:
        """requests' close, which under urllib3 2 only forgets the pools: their sockets would
        stay open until the pools are garbage collected, which a failure's traceback (held by
        a host, or in a reference cycle) can put off indefinitely."""
        for manager in [self.poolmanager, *self.proxy_manager.values()]:
            for key in list(manager.pools.keys()):
                pool = manager.pools.get(key)
                if pool is not None:
                    pool.close()
        super().close()
