"""The real `dig`, parsed: what a user would see, as a small value the tests and the lab can assert on."""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass

from lab.proc import binary

_STATUS = re.compile(r"->>HEADER<<- opcode: (\S+), status: (\S+), id: (\d+)")
_FLAGS = re.compile(r";; flags:([^;]*);")
_SECTION = re.compile(r";; (ANSWER|AUTHORITY|ADDITIONAL) SECTION:")
_ECS = re.compile(r"; CLIENT-SUBNET: (\S+)")


@dataclass(frozen=True, slots=True)
class Record:
    name: str
    ttl: int
    rtype: str
    data: str


@dataclass(frozen=True, slots=True)
class DigResult:
    """rcode is None when no reply came (timeout, connection refused); `output` is dig's full text."""

    rcode: str | None
    flags: frozenset[str]
    answer: tuple[Record, ...]
    authority: tuple[Record, ...]
    additional: tuple[Record, ...]
    ecs: str | None
    output: str
    seconds: float

    def values(self, rtype: str | None = None) -> list[str]:
        """Answer data in dig's order, optionally only of one type (A, AAAA, CNAME, ...)."""
        return [r.data for r in self.answer if rtype is None or r.rtype == rtype]

    @property
    def addresses(self) -> list[str]:
        return [r.data for r in self.answer if r.rtype in ("A", "AAAA")]


def _parse_record(line: str) -> Record:
    name, ttl, _cls, rtype, *data = line.split(None, 4)
    return Record(name, int(ttl), rtype, data[0].strip() if data else "")


def parse(output: str, seconds: float = 0.0) -> DigResult:
    status = _STATUS.search(output)
    flags = _FLAGS.search(output)
    sections: dict[str, list[Record]] = {"ANSWER": [], "AUTHORITY": [], "ADDITIONAL": []}
    current: list[Record] | None = None
    for line in output.splitlines():
        header = _SECTION.match(line)
        if header:
            current = sections[header.group(1)]
        elif not line.strip():
            current = None
        elif current is not None and not line.startswith(";"):
            current.append(_parse_record(line))
    ecs = _ECS.search(output)
    return DigResult(
        rcode=status.group(2) if status else None,
        flags=frozenset(flags.group(1).split()) if flags else frozenset(),
        answer=tuple(sections["ANSWER"]),
        authority=tuple(sections["AUTHORITY"]),
        additional=tuple(sections["ADDITIONAL"]),
        ecs=ecs.group(1) if ecs else None,
        output=output,
        seconds=seconds,
    )


def split_server(server: str, default_port: int = 53) -> tuple[str, int]:
    """ "IP", "IP:PORT" or "[IPv6]:PORT" as in .lab/state.json."""
    if server.startswith("["):
        host, _, port = server[1:].partition("]:")
        return host, int(port or default_port)
    if server.count(":") == 1:
        host, port = server.split(":")
        return host, int(port)
    return server, default_port


def dig(server: str, name: str, rtype: str = "A", *options: str, timeout: float = 2.0) -> DigResult:
    """`dig @server name rtype +tries=1 +time=T options`: dig("127.0.0.1:1053", "x.k8s", "A", "+short")."""
    host, port = split_server(server)
    argv = [
        binary("dig"),
        f"@{host}",
        "-p",
        str(port),
        name,
        rtype,
        "+tries=1",
        f"+time={max(1, round(timeout))}",
        *options,
    ]
    t0 = time.monotonic()
    run = subprocess.run(argv, capture_output=True, text=True, timeout=timeout * 3 + 5)
    return parse(run.stdout + run.stderr, time.monotonic() - t0)
