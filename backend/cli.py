"""`coredns-gslb serve | listen | explain NAME | edge leave`: one entry point, a module per verb.

Verbs import their module lazily so one verb works even where another's dependencies are broken.
Other distributions add verbs through the entry-point group `coredns_gslb.commands` (name = verb,
value = a module with `main(argv)`): the lab registers `coredns-gslb lab` that way (lab/pyproject.toml),
so the product never imports it and a cluster's image, which has no lab, has no `lab` verb.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

COMMANDS_GROUP = "coredns_gslb.commands"
VERBS = {
    "serve": ("backend.app", "serve the zones to CoreDNS's grpc plugin"),
    "listen": ("backend.listener", "hold serve's sockets across restarts (--listener-socket PATH)"),
    "explain": ("backend.cli_explain", "why a name answers what it answers"),
    "edge": ("backend.edge", "edge delegation by RFC 2136: leave"),
}


def modules() -> dict[str, str]:
    """verb -> module: ours, then the verbs installed distributions add."""
    found = {verb: module for verb, (module, _) in VERBS.items()}
    for ep in entry_points(group=COMMANDS_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def usage(found: dict[str, str]) -> str:
    """Our verbs' help; an added verb's is the first line of its module's docstring."""
    lines = []
    for verb, module in found.items():
        help_ = VERBS[verb][1] if verb in VERBS else (importlib.import_module(module).__doc__ or "").strip()
        lines.append(f"  {verb:8} {help_.splitlines()[0] if help_ else ''}")
    return "usage: coredns-gslb VERB [ARGS]\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    found = modules()
    if not args or args[0] not in found:
        print(usage(found), file=sys.stderr)
        return 2
    return int(importlib.import_module(found[args[0]]).main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
