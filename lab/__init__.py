"""The local lab and the test bed's process management (README.md); `coredns-gslb lab up|down|status`."""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Imported lazily so `import backend.lab.proc` (the fixtures) does not load the whole lab."""
    from backend.lab.run import main as run

    return run(argv)
