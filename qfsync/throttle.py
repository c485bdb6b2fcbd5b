"""A pause shared by clients that run side by side: when the API answers one of them with 429
and Retry-After, none of the others sends a request before that time either."""

import threading
import time


class Throttle:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until = 0.0  # time.monotonic() before which no request may start

    def hold(self, seconds: float) -> None:
        """Nobody sends for `seconds` from now (a later hold already in force is kept)."""
        with self._lock:
            self._until = max(self._until, time.monotonic() + seconds)

    def wait(self, stop: threading.Event | None = None) -> None:
        """Return once no hold is in force, or at once when `stop` is set."""
        while True:
            with self._lock:
                delay = self._until - time.monotonic()
            if delay <= 0:
                return
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                return
