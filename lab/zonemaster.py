"""Zonemaster (Debian's zonemaster-cli) against the test bed: a root of our own, the full delegated test.

Zonemaster walks the delegation from the root hints it is given (`--hints`), so a root server of ours
(BIND9 serving a root zone written here) makes it test a zone exactly as it would on the Internet,
with nothing leaving loopback: names outside the zones we delegate end at our root with NXDOMAIN.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lab.proc import StartupError, binary

ROOT_NS = "ns.root.test."  # the root server's name (.test is reserved for testing, RFC 2606)
LEVELS = ("CRITICAL", "ERROR", "WARNING", "NOTICE")


def root_zone(root_host: str, delegations: Mapping[str, Mapping[str, str]]) -> str:
    """A root zone: its own NS + address, and each zone delegated to {ns name: glue address}."""
    lines = [
        "$TTL 3600",
        f". IN SOA {ROOT_NS} hostmaster.root.test. 1 86400 7200 3600000 3600",
        f". IN NS {ROOT_NS}",
        f"{ROOT_NS} IN A {root_host}",
    ]
    for zone, servers in delegations.items():
        for ns, address in servers.items():
            lines += [f"{zone.rstrip('.')}. IN NS {ns.rstrip('.')}.", f"{ns.rstrip('.')}. IN A {address}"]
    return "\n".join(lines) + "\n"


def hints(root_host: str) -> str:
    """Root hints (what `--hints` and named's `type hint` read) naming only our root server."""
    return f". 3600000 NS {ROOT_NS}\n{ROOT_NS} 3600000 A {root_host}\n"


@dataclass(frozen=True)
class Message:
    level: str
    module: str
    testcase: str
    tag: str
    args: Mapping[str, object]

    def __str__(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in sorted(self.args.items()))
        return f"{self.level} {self.testcase} {self.tag} {args}"


@dataclass(frozen=True)
class Report:
    messages: tuple[Message, ...]
    output: str

    def counts(self) -> dict[str, int]:
        """Messages per level, CRITICAL..NOTICE (Zonemaster's summary lines)."""
        found = Counter(m.level for m in self.messages)
        return {level: found[level] for level in LEVELS}

    def at_least(self, level: str) -> list[Message]:
        worst = LEVELS[: LEVELS.index(level) + 1]
        return [m for m in self.messages if m.level in worst]


def run(domain: str, hints_file: Path, *, timeout: float = 300.0) -> Report:
    """`zonemaster-cli --hints FILE --no-ipv6 DOMAIN`: messages at NOTICE and above, untranslated."""
    argv = [binary("zonemaster-cli"), "--hints", str(hints_file), "--no-ipv6", "--json", "--raw",
            "--level", "NOTICE", "--no-progress", domain]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    try:
        entries = json.loads(done.stdout)
    except json.JSONDecodeError as e:
        raise StartupError(f"zonemaster-cli exited {done.returncode}: {e}\n{done.stdout[-2000:]}"
                           f"\n{done.stderr[-2000:]}") from e
    messages = tuple(Message(e["level"], e["module"], e.get("testcase", ""), e["tag"], e.get("args") or {})
                     for e in entries)
    return Report(messages, done.stdout)
