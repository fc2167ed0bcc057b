"""`python -m fuzz [NAME ...]`: run every fuzz module here (or the named ones); exit 1 on any crash."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import fuzz


def main(argv: list[str]) -> int:
    names = argv or sorted(m.name for m in pkgutil.iter_modules(fuzz.__path__) if not m.name.startswith("_"))
    failed = 0
    for name in names:
        print(f"[fuzz] {name}", flush=True)
        failed += importlib.import_module(f"fuzz.{name}").main([]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
