"""Child processes of the backend that speak pickled tuples: the parent writes to the child's stdin,
the child writes to its stdout; its logs go to the stderr it shares with the parent. Parent and
child run the same code, so pickle is a safe and cheap wire. The prober's worker (probes/) and the
answer process (answer/) are such children: work that must not share the answer loop's GIL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO

log = logging.getLogger(__name__)

_ROOT = str(Path(__file__).resolve().parents[1])  # the folder holding `backend`, for the child's imports


def spawn(module: str, args: Sequence[str] = (), pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
    """`python -m module args` with pipes on stdin and stdout and the descriptors `pass_fds`."""
    path = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)
    return subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, pass_fds=tuple(pass_fds),
                            env={**os.environ, "PYTHONPATH": path},
                            start_new_session=True)  # ^C in a terminal is the backend's to handle


def send(stream: IO[bytes] | None, message: tuple[Any, ...]) -> bool:
    """Write one message (the caller holds its lock); False if the other side is gone."""
    if stream is None:
        return False
    try:
        pickle.dump(message, stream, protocol=pickle.HIGHEST_PROTOCOL)
        stream.flush()
    except (OSError, ValueError):  # gone (ValueError: the pipe is closed)
        return False
    return True


def messages(stream: IO[bytes]) -> Iterator[tuple[Any, ...]]:
    """The messages on `stream` until it ends (or breaks: the other side died mid-message)."""
    with contextlib.suppress(EOFError, OSError, pickle.UnpicklingError):
        while True:
            yield pickle.load(stream)


def end(proc: subprocess.Popen[bytes], timeout: float, lock: threading.Lock | None = None) -> None:
    """Close the child's stdin (under the senders' `lock`; the child ends at the end of its input),
    SIGKILL it after `timeout`."""
    with lock or contextlib.nullcontext(), contextlib.suppress(OSError):
        assert proc.stdin is not None
        proc.stdin.close()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def channel() -> BinaryIO:
    """In the child: the stream to the parent (the real stdout); print() and fd 1 go to stderr from now."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


class Supervised:
    """The parent's side of such a child, run again and again on a thread of its own (`start_child`):
    started (`spawn`), its messages given to `receive` on a reader thread, fed by `serve` (which returns
    once the child ended or `_stopping` is set), ended, and started again after a back-off
    (RESTART_FIRST doubling to RESTART_MAX; a life longer than RESTART_RESET starts over). `ended(proc,
    restart)` follows each end. `send` and `pid` from any thread."""

    name = "child"  # for thread names and the log
    meanwhile = ""  # what the log says stays true while none runs
    RESTART_FIRST, RESTART_MAX, RESTART_RESET = 0.5, 30.0, 60.0  # seconds
    STOP_TIMEOUT = 5.0  # for the child to exit at the end of its input before SIGKILL

    def __init__(self) -> None:
        self._wake = threading.Event()  # the child ended, and whatever `serve` waits for
        self._stopping = threading.Event()
        self._send_lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None  # set by `serve` once the child may be asked
        self._thread: threading.Thread | None = None

    def spawn(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def receive(self, message: tuple[Any, ...]) -> None:
        raise NotImplementedError

    def serve(self, proc: subprocess.Popen[bytes], reader: threading.Thread) -> None:
        raise NotImplementedError

    def ended(self, proc: subprocess.Popen[bytes], restart: bool) -> None:
        """After a child ended (`restart`: unasked, it is started again)."""

    def end_timeout(self) -> float:
        return self.STOP_TIMEOUT

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def send(self, message: tuple[Any, ...], proc: subprocess.Popen[bytes] | None = None) -> bool:
        proc = proc or self._proc
        if proc is None:
            return False
        with self._send_lock:
            return send(proc.stdin, message)

    def start_child(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name=self.name, daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        delay = self.RESTART_FIRST
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                proc = self.spawn()
            except OSError as e:
                log.error("cannot start the %s process (%s); again in %.1f s", self.name, e, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, self.RESTART_MAX)
                continue
            assert proc.stdout is not None
            reader = threading.Thread(target=self._read, args=(proc.stdout,), name=f"{self.name}-reader",
                                      daemon=True)
            reader.start()
            self.serve(proc, reader)
            end(proc, self.end_timeout(), self._send_lock)
            reader.join(self.STOP_TIMEOUT)
            self._proc = None
            restart = not self._stopping.is_set()
            self.ended(proc, restart)
            if not restart:
                return
            lived = time.monotonic() - began
            delay = self.RESTART_FIRST if lived > self.RESTART_RESET else delay
            log.error("the %s process ended (exit %s after %.1f s); %s, starting it again in %.1f s",
                      self.name, proc.returncode, lived, self.meanwhile, delay)
            self._stopping.wait(delay)
            delay = min(delay * 2, self.RESTART_MAX)

    def _read(self, stream: IO[bytes]) -> None:
        """The child's messages until its stdout ends; then wake `serve`."""
        for message in messages(stream):
            self.receive(message)
        self._wake.set()
