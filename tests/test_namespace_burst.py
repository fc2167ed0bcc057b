"""A namespace deleted at once (issue 12, "bad input and failure"): kube-controller-manager's namespace
controller deletes its Services, EndpointSlices and Gslbs kind by kind, and through real CoreDNS every
name in it goes from its old answer to NXDOMAIN and stays gone, a GSLB host at most through NODATA on
the way (its EndpointSlice gone before its Gslb: the API's own state), while the names of another
namespace answer as before. What `python -m bench burst` checks at 10,000 + 10,000 (`bench.burst.Judge`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest

from bench import dataset
from bench.burst import Judge, Poller, expected, hosted
from bench.lookup import Lookup
from bench.objects import Api, pin_cluster_ips
from bench.objects import namespace as namespace_object
from lab import demo
from lab.kube import ControlPlane
from lab.proc import wait_for
from lab.sidecar import DnsStack

pytestmark = pytest.mark.controlplane
DOOMED, KEPT = 150, 20  # Services, each with a Gslb and an EndpointSlice: 450 objects deleted
RATE = 300.0  # questions a second: each of the 340 names about once a second


def test_a_deleted_namespace_leaves_the_answers_whole_and_for_good(
        control_plane: ControlPlane, dns_stack_factory: Callable[..., DnsStack], namespace: str) -> None:
    demo.install_crds(control_plane)
    api, tag = Api(control_plane), secrets.token_hex(3)
    doomed_ns, prefix, kept_prefix = f"burst-{tag}", f"b{tag}", f"k{tag}"

    def doomed_ip(i: int) -> str:
        return f"10.7.{i // 250}.{i % 250 + 1}"

    def kept_ip(i: int) -> str:
        return f"10.8.{i // 250}.{i % 250 + 1}"

    api.create(namespace_object(doomed_ns))
    objs = hosted(doomed_ns, prefix, DOOMED, doomed_ip) + hosted(namespace, kept_prefix, KEPT, kept_ip)
    pin_cluster_ips(api, objs)
    api.create_all(objs, workers=8)
    stack = dns_stack_factory(control_plane, zones=(dataset.ZONE, dataset.GSLB_ZONE),
                              flags=dataset.BACKEND_FLAGS)
    judge = Judge(expected(prefix, DOOMED, doomed_ip, survives=False)
                  | expected(kept_prefix, KEPT, kept_ip, survives=True))
    lookup = Lookup(stack.address)
    wait_for(lambda: all(lookup.answer(name) == (0, list(e.pre)) for name, e in judge.expects.items()),
             what="every name answering its address", timeout=120, watch=[stack.backend.process])

    poller = Poller(lookup, judge, judge.expects, RATE)
    poller.start()
    try:
        wait_for(lambda: min(judge.answered.get(name, 0) for name in judge.expects) >= 1,
                 what="every name asked once before the delete", timeout=30)
        control_plane.kubectl("delete", "namespace", doomed_ns, "--wait=false")
        wait_for(judge.all_gone, what=f"every name of namespace {doomed_ns} answering NXDOMAIN", timeout=180,
                 watch=[stack.backend.process])
        asked = dict(judge.answered)
        wait_for(lambda: all(judge.answered.get(name, 0) >= asked.get(name, 0) + 2 for name in judge.expects),
                 what="every name asked twice more after the last one went", timeout=30)
    finally:
        poller.stop()
    assert judge.wrong == {}, judge.examples
    assert set(judge.gone_at) == set(judge.doomed())
    print(f"{sum(judge.answered.values())} answers judged, {poller.lost} polls lost, "
          f"{len(judge.nodata)} GSLB hosts went through NODATA")


def test_the_judge_flags_what_a_half_applied_or_undone_table_would_answer() -> None:
    """In-process: the answers the burst and the test above count as wrong, and those they allow."""
    judge = Judge(expected("d", 1, lambda _i: "10.0.0.1", survives=False)
                  | expected("k", 1, lambda _i: "10.0.0.2", survives=True))
    plain, host, kept = f"d-0.{dataset.ZONE}", f"dg-0.{dataset.GSLB_ZONE}", f"k-0.{dataset.ZONE}"
    for name, rcode, found in ((plain, 0, ["10.0.0.1"]), (host, 0, []), (host, 3, []), (plain, 3, []),
                               (kept, 0, ["10.0.0.2"])):
        judge.see(name, rcode, found, 1.0)
    assert judge.wrong == {} and judge.all_gone() and judge.nodata == {host}
    for name, rcode, found in ((plain, 0, ["10.0.0.1"]), (host, 0, []), (plain, 2, []), (kept, 3, []),
                               (plain, 0, ["10.0.0.9"])):
        judge.see(name, rcode, found, 2.0)
    assert judge.wrong == {"came back": 2, "SERVFAIL": 1, "survivor": 1, "other records": 1}
    fresh = Judge(expected("d", 1, lambda _i: "10.0.0.1", survives=False))
    fresh.see(plain, 0, [], 1.0)
    assert fresh.wrong == {"NODATA": 1} and not fresh.all_gone()
