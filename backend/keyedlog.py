"""One log line per key, for events that come in floods (a hostile client's bad frames, thousands of
refused writes while a namespace is deleted): without it one cause wrote a line, or a traceback, per
occurrence (111 MB in 38 s once). The bottom layer, so that every part can use it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable


class KeyedLog:
    """Lets a line through per key. With `window`: at most one every `window` seconds, the next one
    saying how many were left out meanwhile. Without: only the first, until `rearm(key)`. Past `limit`
    keys it starts afresh (a line again rather than unbounded memory)."""

    def __init__(self, logger: logging.Logger, window: float | None = None, limit: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.window = window
        self.limit = limit
        self._clock = clock
        self._last: dict[str, float] = {}  # key -> when its last line went out
        self._left_out: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, key: str, level: int, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log `msg % args` at `level` unless `key` had its line; True if it went out."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and (self.window is None or now - last < self.window):
                if self.window is not None:
                    self._left_out[key] += 1
                return False
            if last is None and len(self._last) >= self.limit:
                self._last.clear()
                self._left_out.clear()
            self._last[key] = now
            left_out = self._left_out.pop(key, 0)
        if left_out:
            msg += f" ({left_out} more like this in the last {self.window:.0f} s)"
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def rearm(self, key: str) -> None:
        """The next line for `key` goes out (what it was about is over, or began anew)."""
        with self._lock:
            self._last.pop(key, None)
            self._left_out.pop(key, None)
