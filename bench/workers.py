"""Scaling across backend processes: (b) with N backends on N ports, listed in the grpc plugin
(`grpc . A B C { policy round_robin }`).

N backends on one port with SO_REUSEPORT were measured too (bench/results.json): the kernel spreads
connections, not requests, and CoreDNS keeps one HTTP/2 connection per upstream, so one backend got
all of it. The listener no longer uses SO_REUSEPORT (no other process may take a share of its port).
"""

from __future__ import annotations

from bench import dataset
from bench.env import Bed
from bench.throughput import Target, backend_stack, interleaved, load_dataset
from lab.proc import wait_for
from lab.sidecar import Backend


def grpc_upstreams(addresses: list[str]) -> str:
    """The grpc plugin's TO list, round robin over several."""
    if len(addresses) == 1:
        return addresses[0]
    return " ".join(addresses) + " {\n        policy round_robin\n    }"


def run(bed: Bed, seconds: float, counts: list[int], rounds: int = 3) -> dict[str, object]:
    """One set of backends shared by every configuration; the configurations' rounds interleaved."""
    load_dataset(bed)
    mix = bed.workdir / "queries.txt"
    dataset.write_mix(mix)
    own = [bed.backend(dataset.BACKEND_FLAGS, name=f"backend-{k}") for k in range(max(counts))]
    configs: dict[str, tuple[list[Backend], str]] = {
        f"upstreams_{n}": (own[:n], grpc_upstreams([b.grpc for b in own[:n]])) for n in counts
    }
    targets: dict[str, Target] = {}
    for label, (backends, upstreams) in configs.items():
        coredns = backend_stack(bed, upstreams, f"coredns-{label}")
        wait_for(lambda c=coredns: dataset.ready(c.address), what=f"bench names through CoreDNS ({label})",
                 timeout=90, watch=[b.process for b in backends])
        pids = {f"backend{k}": b.process.pid or 0 for k, b in enumerate(backends)}
        pids["coredns"] = coredns.process.pid or 0
        targets[label] = (coredns.address, pids, None)
    out: dict[str, object] = dict(interleaved(targets, mix, seconds / rounds, rounds, bed.workdir))
    for r in out.values():
        assert isinstance(r, dict)
        cpu = r["cpu_us_per_query"]
        r["busy_backends"] = sum(1 for k, v in cpu.items() if k.startswith("backend") and v > 1)
    out["best"] = max(out.values(), key=lambda r: float(r["qps"]))["label"]  # type: ignore[index]
    return out
