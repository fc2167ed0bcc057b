"""`coredns-gslb serve | listen | lab up|down | explain NAME | edge leave`: one entry point, a module
per verb.

Verbs import their module lazily so `lab down` works even where the serving dependencies are broken.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

VERBS = {
    "serve": ("backend.app", "serve the zones to CoreDNS's grpc plugin"),
    "listen": ("backend.listener", "hold serve's sockets across restarts (--listener-socket PATH)"),
    "lab": ("backend.lab", "the local lab: up | down | status"),
    "explain": ("backend.cli_explain", "why a name answers what it answers"),
    "edge": ("backend.edge", "edge delegation by RFC 2136: leave"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in VERBS:
        lines = [f"  {verb:8} {help_}" for verb, (_, help_) in VERBS.items()]
        print("usage: coredns-gslb VERB [ARGS]\n" + "\n".join(lines), file=sys.stderr)
        return 2
    module = importlib.import_module(VERBS[args[0]][0])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
