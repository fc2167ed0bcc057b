"""Scaling across backend processes: (b) with N backends, two ways of spreading the load.

- upstreams: N backends on N ports, listed in the grpc plugin (`grpc . A B C { policy round_robin }`);
- reuseport: N backends on one port with SO_REUSEPORT (the server listens with reuse_port); the
  kernel spreads connections, not requests, and CoreDNS's grpc plugin keeps one HTTP/2 connection
  per upstream, so this shows whether one CoreDNS ever reaches more than one of them.
"""

from __future__ import annotations

from backend.lab.proc import free_port, wait_for
from backend.lab.sidecar import Backend
from bench import dataset
from bench.env import Bed
from bench.procstat import cpu_seconds
from bench.throughput import backend_stack, load_dataset, measure


def grpc_upstreams(addresses: list[str]) -> str:
    """The grpc plugin's TO list, round robin over several."""
    if len(addresses) == 1:
        return addresses[0]
    return " ".join(addresses) + " {\n        policy round_robin\n    }"


def run(bed: Bed, seconds: float, counts: list[int]) -> dict[str, object]:
    load_dataset(bed)
    mix = bed.workdir / "queries.txt"
    dataset.write_mix(mix)
    out: dict[str, object] = {}
    for mode in ("upstreams", "reuseport"):
        for n in counts:
            if mode == "reuseport" and n == 1:
                continue
            shared = f"127.0.0.1:{free_port()}"
            backends: list[Backend] = []
            for k in range(n):
                flags = [*dataset.BACKEND_FLAGS, *(("--grpc-listen", shared) if mode == "reuseport" else ())]
                backends.append(bed.backend(flags, name=f"backend-{mode}-{n}-{k}"))
            targets = [shared] if mode == "reuseport" else [b.grpc for b in backends]
            coredns = backend_stack(bed, grpc_upstreams(targets), f"coredns-{mode}-{n}")
            wait_for(lambda c=coredns: dataset.ready(c.address), what="bench names through CoreDNS",
                     timeout=90, watch=[b.process for b in backends])
            pids = {f"backend{k}": b.process.pid or 0 for k, b in enumerate(backends)}
            pids["coredns"] = coredns.process.pid or 0
            label = f"{mode}_{n}"
            before = {k: cpu_seconds(p) for k, p in pids.items()}
            result = measure(label, coredns.address, mix, seconds, pids, bed.workdir)
            spent = {k: cpu_seconds(p) - before[k] for k, p in pids.items() if k.startswith("backend")}
            result["busy_backends"] = sum(1 for v in spent.values() if v > 0.1 * seconds)
            out[label] = result
            for item in (coredns, *backends):
                bed.stop(item)
    best = max(out.values(), key=lambda r: float(r["qps"]))  # type: ignore[arg-type]
    out["best"] = best["label"]
    return out
