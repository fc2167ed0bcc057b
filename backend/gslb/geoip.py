"""Client address -> geotag from a MaxMind DB, for the geoip strategy.

coredns-crd-plugin reopens the mmdb on every query; here it is opened once and swapped when the
file's mtime (or size, or inode) changes, checked at most once per `check_interval` so the per-query
cost is one C lookup. The reader maps a private, already unlinked copy, so a file overwritten in
place cannot pull the data out from under a running lookup. A missing or broken file answers None
(the strategy then falls back to every healthy target) until a good file appears; a broken
replacement keeps the last good database.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Any

import maxminddb

log = logging.getLogger(__name__)


def _field(record: Any, path: str) -> str | None:
    """`datacenter`, or a dotted path into nested records (`location.datacenter`)."""
    for part in path.split("."):
        if not isinstance(record, dict):
            return None
        record = record.get(part)
    if record is None or isinstance(record, dict | list):
        return None
    return str(record)


def _open_copy(path: str) -> maxminddb.Reader:
    fd, copy = tempfile.mkstemp(prefix="geoip-", suffix=".mmdb")
    try:
        with open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return maxminddb.open_database(copy)
    finally:
        os.unlink(copy)  # the mapping outlives the name


class GeoIP:
    """A GeoLookup: `geo(ip)` -> the value of `field` in the client's mmdb record, or None."""

    def __init__(self, path: str, field: str = "datacenter", check_interval: float = 1.0) -> None:
        self.path = path
        self.field = field
        self.check_interval = check_interval
        self._reader: maxminddb.Reader | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._reload()

    def _reload(self) -> None:
        """Open the file if it changed since the last look; keep the old reader if the new one is bad."""
        self._checked = time.monotonic()
        try:
            st = os.stat(self.path)
        except OSError as e:
            if self._stamp is not None or self._reader is None:
                log.warning("geoip: cannot read %s: %s", self.path, e)
            self._stamp = None
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        try:
            reader = _open_copy(self.path)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as e:
            log.warning("geoip: %s is not a usable MaxMind DB (%s); keeping the previous one", self.path, e)
            self._stamp = stamp
            return
        # The old reader is not closed here: a query may still be using it; dropping the last
        # reference closes it.
        self._reader, self._stamp = reader, stamp
        log.info("geoip: loaded %s (%s)", self.path, reader.metadata().database_type)

    def __call__(self, ip: str) -> str | None:
        if time.monotonic() - self._checked >= self.check_interval and self._lock.acquire(blocking=False):
            try:
                self._reload()
            finally:
                self._lock.release()
        reader = self._reader
        if reader is None:
            return None
        try:
            return _field(reader.get(ip), self.field)
        except (ValueError, maxminddb.InvalidDatabaseError):
            return None

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

