"""A Gslb's probe annotations read into a checked `ProbeConfig`, or a `ProbeError` saying what is wrong.

The URL is a template whose host must be the literal `{address}`: probes only ever go to the Gslb's own
exposed addresses (and its peers' addresses for the same hosts), never to a host someone writes into an
annotation. A malformed annotation turns probing off for that Gslb (it answers by endpoint health) and
shows as the Gslb's `Probed` condition and a Warning Event.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

PROBE = "coredns-gslb.io/probe"
INTERVAL = "coredns-gslb.io/probe-interval-seconds"
FAILURES = "coredns-gslb.io/probe-failures"
TIMEOUT = "coredns-gslb.io/probe-timeout-seconds"
DEFAULT_INTERVAL, DEFAULT_FAILURES, MAX_TIMEOUT = 2.0, 2, 1.0
MIN_INTERVAL, MAX_INTERVAL, MAX_FAILURES = 0.2, 3600.0, 10
DEFAULT_PORTS = {"http": 80, "https": 443}
_TEMPLATE = re.compile(r"(?P<scheme>[a-z]+)://(?P<host>[^/:]*)(?::(?P<port>\d{1,5}))?(?P<path>/\S*)?")


class ProbeError(ValueError):
    """A probe annotation that cannot be used; the message names the annotation and the problem."""


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """How to probe one Gslb's targets: `scheme` http|https|tcp to `port`, GET `path` (HTTP only)."""

    scheme: str
    port: int
    path: str
    interval: float
    failures: int  # consecutive failures that withdraw a target, and successes that bring it back
    timeout: float

    def url(self, address: str) -> str:
        host = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{host}:{self.port}{self.path if self.scheme != 'tcp' else ''}"


def _number(annotations: Mapping[str, str], key: str, default: float, low: float, high: float) -> float:
    raw = annotations.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ProbeError(f"{key}: {raw!r} is not a number") from None
    if not low <= value <= high:
        raise ProbeError(f"{key}: {raw} is not between {low:g} and {high:g}")
    return value


def parse(annotations: Mapping[str, str] | None) -> ProbeConfig | None:
    """None without the probe annotation; ProbeError for anything malformed."""
    annotations = annotations or {}
    template = annotations.get(PROBE)
    if template is None:
        if any(k in annotations for k in (INTERVAL, FAILURES, TIMEOUT)):
            raise ProbeError(f"probe settings without {PROBE}: nothing to probe")
        return None
    m = _TEMPLATE.fullmatch(template.strip())
    if m is None:
        raise ProbeError(f"{PROBE}: {template!r} is not http://{{address}}[:port]/path, "
                         "https://{address}[:port]/path or tcp://{address}:port")
    scheme, port, path = m["scheme"], m["port"], m["path"] or "/"
    if scheme not in ("http", "https", "tcp"):
        raise ProbeError(f"{PROBE}: scheme {scheme!r} is not http, https or tcp")
    if m["host"] != "{address}":
        raise ProbeError(f"{PROBE}: the host must be {{address}} (probes go only to the Gslb's own "
                         f"exposed addresses), not {m['host']!r}")
    if scheme == "tcp" and (port is None or m["path"]):
        raise ProbeError(f"{PROBE}: tcp probes are tcp://{{address}}:port, without a path")
    number = int(port) if port else DEFAULT_PORTS[scheme]
    if not 0 < number < 65536:
        raise ProbeError(f"{PROBE}: port {number} is out of range")
    interval = _number(annotations, INTERVAL, DEFAULT_INTERVAL, MIN_INTERVAL, MAX_INTERVAL)
    failures = _number(annotations, FAILURES, DEFAULT_FAILURES, 1, MAX_FAILURES)
    if failures != int(failures):
        raise ProbeError(f"{FAILURES}: {annotations[FAILURES]} is not a whole number")
    timeout = _number(annotations, TIMEOUT, min(MAX_TIMEOUT, interval), 0.05, interval)
    return ProbeConfig(scheme, number, path, interval, int(failures), timeout)
