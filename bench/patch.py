"""What one change costs the compiler thread, in-process: the backend's own `Compiler` (Store -> table ->
`DnsServer.set_table`) over a Store of N names, no apiserver, no CoreDNS.

- `cost`: CPU per compile after one Store change (an address patched, a new name, a name deleted) at
  each size; proportional to the change, it stays flat as the table grows.
- `gc`: at `--gc-names` names, `--rate` single-key changes a second for `--seconds`, each compiled
  like the backend does under churn; every collection timed through `gc.callbacks`.

`python -m bench.patch [--sizes 2000,20000,100000] [--seconds 30] [--no-save]`; figures go to
bench/results.json under `patch` (not part of `make bench`: it needs no lab and takes about a minute).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from backend.model import Endpoint, Store, Target
from backend.server import DnsServer
from backend.zone.compiler import Compiler
from bench.answer_path import SETTINGS, endpoints
from bench.procstat import loadavg

CASES = ("address", "new_name", "deleted_name")


def loaded(names: int) -> tuple[Store, Compiler]:
    """A Store holding `names` names (half plain, half GSLB, as bench.answer_path makes them) and the
    backend's compiler (Store -> table -> `DnsServer.set_table`) after its first, full, compile."""
    store = Store()
    for ep in endpoints(names // 2):
        kind = "gslb" if ep.strategy is not None else "service"
        store.replace(f"{kind}/bench/{ep.source.name if ep.source else ep.name}", (ep,))
    compiler = Compiler(SETTINGS, None, store.snapshot, DnsServer(SETTINGS).set_table)
    store.subscribe_keys(compiler.changed)
    compiler._compile()  # the compiler thread's step, run here to time it alone
    return store, compiler


def change(store: Store, names: int, case: str, i: int) -> None:
    """One change of `case` in a Store of `names` names: the i-th Service's address, a new Service
    name, a Service counted from the end gone."""
    if case == "address":
        target = Target(f"192.0.2.{i % 250 + 1}")
        store.replace(f"service/bench/svc{i}", (Endpoint(f"svc{i}.foowidgets.k8s", "A", (target,)),))
    elif case == "new_name":
        target = Target("192.0.2.9")
        store.replace(f"service/bench/new{i}", (Endpoint(f"new{i}.foowidgets.k8s", "A", (target,)),))
    else:
        store.replace(f"service/bench/svc{names // 2 - 1 - i}", ())


@dataclass
class Pauses:
    """Every collection's duration, by generation, through `gc.callbacks`."""

    by_generation: dict[int, list[float]] = field(default_factory=lambda: {0: [], 1: [], 2: []})
    _started: float = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.by_generation[info["generation"]].append(time.perf_counter() - self._started)

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for gen, pauses in self.by_generation.items():
            ms = sorted(p * 1000 for p in pauses)
            out[f"gen{gen}"] = {"collections": len(ms), "total_ms": round(sum(ms), 1),
                                "max_ms": round(ms[-1], 2) if ms else 0.0,
                                "p50_ms": round(statistics.median(ms), 2) if ms else 0.0}
        return out


def cost(sizes: list[int], repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for names in sizes:
        store, compiler = loaded(names)
        row: dict[str, Any] = {}
        for case in CASES:
            cpu: list[float] = []
            for i in range(repeat):
                change(store, names, case, i)
                start = time.process_time()
                compiler._compile()
                cpu.append(time.process_time() - start)
            ms = sorted(c * 1000 for c in cpu)
            row[case] = {"p50_ms": round(statistics.median(ms), 3), "max_ms": round(ms[-1], 3)}
        row["full_compiles"] = compiler._recompiler.full  # 1: every change was patched
        out[str(names)] = row
        print(f"{names:>7} names: " + ", ".join(f"{c} p50 {row[c]['p50_ms']} ms (max {row[c]['max_ms']})"
                                               for c in CASES) + f"; full compiles {row['full_compiles']}",
              flush=True)
        del store, compiler
        gc.collect()
    return out


def pauses(names: int, rate: float, seconds: float) -> dict[str, Any]:
    store, compiler = loaded(names)
    gc.collect()
    gc.freeze()  # as the backend's compiler does after a full compile
    seen = Pauses()
    gc.callbacks.append(seen)
    start = time.perf_counter()
    cpu = time.process_time()
    n = 0
    try:
        while (now := time.perf_counter()) - start < seconds:
            change(store, names, CASES[n % len(CASES)], names // 4 + n)
            compiler._compile()
            n += 1
            time.sleep(max(0.0, start + n / rate - time.perf_counter()))
    finally:
        gc.callbacks.remove(seen)
    figures = {"names": names, "changes": n, "seconds": round(now - start, 1),
               "compiler_cpu_seconds": round(time.process_time() - cpu, 2), **seen.figures()}
    print(f"gc at {names} names, {n} changes in {figures['seconds']} s: " +
          ", ".join(f"gen{g} {figures[f'gen{g}']}" for g in range(3)), flush=True)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2000,20000,100000", help="names in the Store, comma-separated")
    ap.add_argument("--repeat", type=int, default=30, help="changes timed per case and size (default 30)")
    ap.add_argument("--gc-names", type=int, default=20000, help="names for the GC run (default 20000)")
    ap.add_argument("--rate", type=float, default=20.0, help="changes per second in the GC run (default 20)")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the GC run (default 30)")
    ap.add_argument("--no-save", action="store_true", help="print only; leave bench/results.json alone")
    a = ap.parse_args()
    started, load = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), loadavg()
    figures = {"cost": cost([int(s) for s in a.sizes.split(",")], a.repeat),
               "gc": pauses(a.gc_names, a.rate, a.seconds), "date": started, "loadavg_at_start": load,
               "loadavg_at_end": loadavg()}
    if not a.no_save:
        from bench.__main__ import load as load_results
        from bench.__main__ import save

        results = load_results()
        results["patch"] = figures
        save(results)


if __name__ == "__main__":
    main()
