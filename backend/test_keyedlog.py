"""KeyedLog's two policies: a line per key per time window (with the count left out), or once per key."""

from __future__ import annotations

import logging

import pytest

from backend.keyedlog import KeyedLog

log = logging.getLogger("test.keyedlog")


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == log.name]


def test_a_window_lets_one_line_per_key_through_and_counts_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    limited = KeyedLog(log, window=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger=log.name):
        assert limited("a", logging.WARNING, "bad frame from %s", "x")
        assert not limited("a", logging.WARNING, "bad frame from %s", "y")
        assert not limited("a", logging.WARNING, "bad frame from %s", "z")
        assert limited("b", logging.WARNING, "other kind")  # each key has its own window
        now[0] += 10.0
        assert limited("a", logging.WARNING, "bad frame from %s", "w")
    assert lines(caplog) == ["bad frame from x", "other kind",
                             "bad frame from w (2 more like this in the last 10 s)"]


def test_without_a_window_only_the_first_line_per_key_and_memory_stays_bounded(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    once = KeyedLog(log, limit=2, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger=log.name):
        assert once("ns1", logging.INFO, "namespace %s is being deleted", "ns1")
        now[0] += 3600.0
        assert not once("ns1", logging.INFO, "namespace %s is being deleted", "ns1")
        assert once("ns2", logging.INFO, "namespace %s is being deleted", "ns2")
        assert once("ns3", logging.INFO, "namespace %s is being deleted", "ns3")  # past the limit: afresh
        assert once("ns1", logging.INFO, "namespace %s is being deleted", "ns1")
    assert lines(caplog) == [f"namespace {ns} is being deleted" for ns in ("ns1", "ns2", "ns3", "ns1")]
