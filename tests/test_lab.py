"""`make lab` end to end: the chapter's answers, `.lab/state.json`, twice-safe up, a clean down.

Runs the real CLI (`python -m backend.cli lab ...`) with its own folder and loopback addresses, so it
never meets a lab someone has running. Alone: `.venv/bin/python -m pytest -m lab tests/test_lab.py`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import dnsperf
from lab.dig import dig
from lab.proc import PYTHON, ROOT, free_loopback_ip, free_port, pid_running, port_free, read_pidfile, wait_for

pytestmark = pytest.mark.lab


def lab(folder: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PYTHON), "-m", "backend.cli", "lab", *args, "--dir", str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def answers(output: str, observer: str, host: str = "fe.gb.foowidgets.k8s") -> list[str]:
    """What the replay printed for a host (fe.gb.foowidgets.k8s) at one observer, in order."""
    return re.findall(rf"\[lab\]\s+{observer} .*?{re.escape(host)} -> (\S+)", output)


class Addresses:
    def __init__(self) -> None:
        self.edge = f"127.0.0.1:{free_port()}"
        self.buf = free_loopback_ip()
        self.nyc = free_loopback_ip()

    def args(self) -> list[str]:
        return ["--edge", self.edge, "--buf-ip", self.buf, "--nyc-ip", self.nyc]


@pytest.fixture
def lab_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "lab"
    yield folder
    lab(folder, "down", timeout=120)


@pytest.mark.timeout(600)
def test_make_lab_replays_the_chapter_and_stops_cleanly(lab_dir: Path) -> None:
    addr = Addresses()
    run = lab(lab_dir, "up", *addr.args())
    out = run.stdout + run.stderr
    assert run.returncode == 0, out

    assert re.search(r"nginx\.foowidgets\.k8s -> 172\.18\.200\.101", out), out
    assert answers(out, "edge") == ["10.2.1.167", "10.2.1.98", "10.2.1.167"], out
    chapter = ["10.2.1.167", "10.2.1.98", "10.2.1.167"]
    data_plane = ["10.2.1.98", "10.2.1.167"]  # us-buf's data plane down (pods Ready), then up
    assert answers(out, "us-buf") == chapter + data_plane, out
    assert answers(out, "us-nyc") == [*chapter, *data_plane, "10.2.1.167"], "and buf's DNS down: " + out
    assert "no false failover" in out, out
    shop = ["172.18.200.102", "172.18.201.102", "172.18.200.102"]  # the Gateway-API host beside it
    for observer in ("edge", "us-buf", "us-nyc"):
        assert answers(out, observer, "shop.gb.foowidgets.k8s") == shop, out
    assert re.search(r"fe\.gb\.foowidgets\.k8s -> 10\.2\.1\.98\s+\(\d+\.\ds\)", out), (
        "switch times are printed"
    )

    state = json.loads((lab_dir / "state.json").read_text())
    assert set(state) == {"edge", "clusters"}
    assert state["edge"] == {"dns": addr.edge}
    assert set(state["clusters"]) == {"us-buf", "us-nyc"}
    for geotag, ip in (("us-buf", addr.buf), ("us-nyc", addr.nyc)):
        cluster = state["clusters"][geotag]
        assert set(cluster) == {"kubeconfig", "dns", "backend", "admin", "geotag", "dataplane"}
        assert cluster["dataplane"] == f"{ip}:8080"
        assert cluster["geotag"] == geotag
        assert cluster["dns"] == f"{ip}:53"
        assert re.fullmatch(r"127\.0\.0\.1:\d+", cluster["backend"])
        assert re.fullmatch(r"127\.0\.0\.1:\d+", cluster["admin"])
        kubeconfig = ROOT / cluster["kubeconfig"]
        assert not Path(cluster["kubeconfig"]).is_absolute() and kubeconfig.exists()
        assert dig(cluster["dns"], "fe.gb.foowidgets.k8s", "A", "+norecurse").values("A") == ["10.2.1.167"]
        nodes = subprocess.run(
            [str(ROOT / ".deps/bin/kubectl"), "--kubeconfig", str(kubeconfig), "get", "nodes"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert " Ready " in nodes.stdout, nodes.stdout + nodes.stderr
    assert dig(state["edge"]["dns"], "fe.gb.foowidgets.k8s").values("A") == ["10.2.1.167"]
    assert dig(state["clusters"]["us-buf"]["dns"], "nginx.foowidgets.k8s").values("A") == ["172.18.200.101"]

    nyc = state["clusters"]["us-nyc"]["dns"]
    for step, want in (("down", ["10.2.1.98"]), ("up", ["10.2.1.167"])):
        switched = lab(lab_dir, "dataplane", "us-buf", step, timeout=60)
        assert switched.returncode == 0, switched.stdout + switched.stderr
        wait_for(lambda w=want: dig(nyc, "fe.gb.foowidgets.k8s", "A", "+norecurse").values("A") == w,
                 what=f"us-nyc answers {want} after `lab dataplane us-buf {step}`", timeout=60, interval=0.2)

    pids = [recorded for f in lab_dir.rglob("*.pid") if (recorded := read_pidfile(f))]
    assert len(pids) >= 19, ("etcd, edge, per cluster 4 kube components, lbpool, data plane, listener, "
                             "backend, CoreDNS")
    again = lab(lab_dir, "up", "--no-demo", *addr.args())
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr

    stopped = lab(lab_dir, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert not [pid for pid, argv0 in pids if pid_running(pid, argv0)], "lab down leaves no process"
    assert not list(lab_dir.rglob("*.pid")) and not (lab_dir / "state.json").exists()
    edge_ip, edge_port = addr.edge.split(":")
    assert port_free(edge_ip, int(edge_port)) and port_free(addr.buf, 53) and port_free(addr.nyc, 53)


@pytest.mark.timeout(400)
def test_lab_roll_replaces_a_backend_under_load_and_loses_no_answer(lab_dir: Path, tmp_path: Path) -> None:
    """The lab's backends serve behind `coredns-gslb listen`, as in k8s/deployment.yaml: `lab roll us-buf`
    starts a new backend beside the old one while dnsperf asks us-buf's CoreDNS; the listener hands the
    sockets over and the old one drains and exits. Every query is answered, NOERROR."""
    run = lab(lab_dir, "up", "--no-demo", *Addresses().args())
    assert run.returncode == 0, run.stdout + run.stderr
    buf = json.loads((lab_dir / "state.json").read_text())["clusters"]["us-buf"]
    names = {"nginx.foowidgets.k8s": ["172.18.200.101"], "fe.gb.foowidgets.k8s": ["10.2.1.167"]}
    wait_for(lambda: all(dig(buf["dns"], n, "A", "+norecurse").values("A") == w for n, w in names.items()),
             what=f"us-buf's CoreDNS answering {names}", timeout=60, interval=0.2)
    folder = lab_dir / "us-buf"
    listener, old = read_pidfile(folder / "us-buf-listener.pid"), read_pidfile(folder / "us-buf-backend.pid")
    assert listener and pid_running(*listener) and old and pid_running(*old)

    queries = tmp_path / "queries.txt"
    queries.write_text("".join(f"{n} A\n" for n in names))
    result: list[dnsperf.Run] = []
    load = threading.Thread(target=lambda: result.append(dnsperf.run(buf["dns"], queries, 30, rate=400)))
    load.start()
    time.sleep(3)
    rolled = lab(lab_dir, "roll", "us-buf", timeout=90)
    load.join(90)
    assert not load.is_alive(), "dnsperf (30 s of load) did not finish within 90 s of the roll"
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    new = read_pidfile(folder / "us-buf-backend.pid")
    assert new and new[0] != old[0] and pid_running(*new) and not pid_running(*old), rolled.stdout
    assert "hands over to backend" in (folder / "us-buf-listener.log").read_text()
    [perf] = result
    print(f"lab roll us-buf under dnsperf: {rolled.stdout.strip()}; sent {perf.sent}, completed "
          f"{perf.completed}, lost {perf.lost}, rcodes {perf.rcodes}, p50 {perf.p50_ms} ms, "
          f"p99 {perf.p99_ms} ms, max {perf.max_ms} ms; load {os.getloadavg()[0]:.1f}")
    assert perf.lost == 0 and perf.rcodes == {"NOERROR": perf.completed} and perf.completed > 10000, perf


def test_lab_refuses_a_taken_port_and_starts_nothing(lab_dir: Path) -> None:
    addr = Addresses()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind((addr.buf, 53))
        run = lab(lab_dir, "up", *addr.args(), timeout=60)
    assert run.returncode == 1
    assert f"{addr.buf}:53 already taken" in run.stderr
    assert not list(lab_dir.rglob("*.pid"))


def test_lab_stops_what_it_started_when_a_component_dies(lab_dir: Path) -> None:
    run = lab(lab_dir, "up", "--no-demo", *Addresses().args(), "--backend-arg=--no-such-flag", timeout=180)
    assert run.returncode == 1
    assert "us-buf-backend exited" in run.stderr, run.stderr
    assert "unrecognized arguments: --no-such-flag" in run.stderr, "the component's log tail is shown"
    assert "stopped everything" in run.stdout
    assert not list(lab_dir.rglob("*.pid")) and not (lab_dir / "state.json").exists()
