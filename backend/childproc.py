"""Child processes of the backend that speak pickled tuples: the parent writes to the child's stdin,
the child writes to its stdout; its logs go to the stderr it shares with the parent. Parent and
child run the same code, so pickle is a safe and cheap wire. The prober's worker (probes/) and the
answer process (answer/) are such children: work that must not share the answer loop's GIL.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO

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
