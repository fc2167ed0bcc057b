"""dnsperf left running and stopped early (`bench.dnsperf.Background`, the burst's answers): its figures
cover the time it ran, and the queries outstanding at the stop count as interrupted, not lost."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from bench import dnsperf


def test_an_interrupted_dnsperf_reports_what_it_sent_until_then(tmp_path: Path) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes the queries, never answers
    silent.bind(("127.0.0.1", 0))
    queries = tmp_path / "queries.txt"
    queries.write_text("a.example A\n")
    try:
        perf = dnsperf.Background(f"127.0.0.1:{silent.getsockname()[1]}", queries, 60, rate=50)
        time.sleep(1)  # a duration the test holds, not a wait for something
        run = perf.finish()
    finally:
        silent.close()
    assert run.sent > 0 and run.completed == 0 and run.lost == 0 and run.rcodes == {}
    assert run.seconds < 30
