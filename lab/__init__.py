"""the local lab: up | down | status | dataplane CLUSTER down|up | roll CLUSTER (lab/README.md)

`coredns-gslb lab ...` finds this module through the entry-point group `coredns_gslb.commands`
(lab/pyproject.toml); the test bed imports the modules beside it (`lab.proc`, `lab.kube`, ...).
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Imported lazily so `import lab.proc` (the fixtures) does not load the whole lab."""
    from lab.run import main as run

    return run(argv)
