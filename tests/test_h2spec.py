"""h2spec, the HTTP/2 conformance suite nobody here wrote, against the backend's gRPC port.

The backend's DnsServer runs in-process (the fixture of tests/test_dns_semantics.py; h2spec needs no
apiserver), h2spec speaks cleartext HTTP/2 with prior knowledge to its gRPC port, every group
(generic, http2, hpack) with --strict, which adds the strict cases to the others. h2spec sends plain
HTTP requests (`GET /`), which the server answers with 415 as grpc-go does.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_dns_semantics import InProcessBackend

from lab.proc import binary

SUMMARY = re.compile(r"(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed")


@pytest.fixture(params=[True, False], ids=["uvloop", "asyncio"])  # the default loop and --no-uvloop's
def backend(request: pytest.FixtureRequest) -> Iterator[InProcessBackend]:
    b = InProcessBackend(use_uvloop=request.param)
    b.start()
    yield b
    b.stop()


@pytest.mark.timeout(600)  # a broken server makes h2spec wait -o seconds per failing case
def test_h2spec_strict_has_no_failures_and_skips_nothing(backend: InProcessBackend, tmp_path: Path) -> None:
    junit = tmp_path / "h2spec.xml"
    # -o: seconds h2spec waits for an expected frame; a passing run never waits (0.2 s in all)
    run = subprocess.run(
        [binary("h2spec"), "--strict", "-h", "127.0.0.1", "-p", str(backend.server.grpc_port), "-o", "4",
         "-j", str(junit), "generic", "http2", "hpack"],
        capture_output=True, text=True, timeout=580,
    )
    summary = SUMMARY.search(run.stdout)
    assert summary, f"no h2spec summary (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-2000:]}"
    tests, passed, skipped, failed = map(int, summary.groups())
    failures = run.stdout.partition("Failures:")[2].strip()
    assert failed == 0, f"h2spec: {summary.group(0)}\n{failures}"
    assert skipped == 0, f"h2spec skipped cases (not run = not checked): {summary.group(0)}"
    assert tests == passed >= 146, summary.group(0)  # 146 cases in h2spec 2.2.1 with --strict
