"""The edge's wanted names follow the Store's changed keys: a pass reads only what changed, and comes
out as a from-scratch pass over the whole Store would (no edge server here)."""

from __future__ import annotations

from collections.abc import Iterable

from backend.config import GslbZone, Settings
from backend.edge.names import Held, Wanted, Wants, marker, marker_name, plan
from backend.edge.publisher import Record
from backend.model import Endpoint, ObjectRef, Store, Target

SETTINGS = Settings(gslb_zones=(GslbZone("gb.foowidgets.k8s", "foowidgets.k8s"),), cluster_geotag="us-buf")
ZONE = "foowidgets.k8s"
OWNER = "us-buf"


class CountingStore(Store):
    """A Store that records which keys each snapshot copied out (None: all of them)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[set[str] | None] = []

    def snapshot(self, keys: Iterable[str] | None = None) -> tuple[int, dict[str, tuple[Endpoint, ...]]]:
        keys = None if keys is None else set(keys)
        self.reads.append(keys)
        return super().snapshot(keys)


def service(store: Store, name: str, host: str, *ips: str, ttl: int = 60, rtype: str = "A") -> None:
    eps = [Endpoint(host, rtype, tuple(Target(ip) for ip in ips), ttl, ObjectRef("Service", "default", name))]
    store.replace(f"service/default/{name}", eps if ips else [])


def from_scratch(store: Store) -> Wants:
    return Wanted(SETTINGS, ZONE).update(store)


def a(host: str) -> tuple[str, str]:
    return (host, "A")


def test_a_pass_reads_only_the_changed_keys_and_equals_a_pass_over_the_whole_store() -> None:
    store = CountingStore()
    for i in range(2000):
        service(store, f"s{i}", f"s{i}.foowidgets.k8s", f"10.0.{i // 250}.{i % 250}")
    service(store, "gslb-ingress", "fe.gb.foowidgets.k8s", "10.2.1.167")  # delegated: never at the edge
    wanted = Wanted(SETTINGS, ZONE)
    store.subscribe_keys(wanted.changed)
    first = wanted.update(store)
    assert store.reads == [None], "the first pass reads the whole Store"
    assert len(first.want) == 2000 and first.changed == first.want.keys()
    assert a("fe.gb.foowidgets.k8s") not in first.want

    def step(change: str, touched: set[str], moved: set[tuple[str, str]]) -> Wants:
        store.reads.clear()
        w = wanted.update(store)
        assert store.reads == [touched], f"{change}: only the changed keys are read"
        assert w.changed == moved, change
        assert w.want == from_scratch(store).want, change
        return w

    service(store, "s7", "s7.foowidgets.k8s", "192.0.2.7")
    w = step("an address changed", {"service/default/s7"}, {a("s7.foowidgets.k8s")})
    assert w.want[a("s7.foowidgets.k8s")].values == {Record("s7.foowidgets.k8s", "A", "192.0.2.7")}

    service(store, "new", "new.foowidgets.k8s", "192.0.2.8")
    step("a Service added", {"service/default/new"}, {a("new.foowidgets.k8s")})
    service(store, "s8", "s8.foowidgets.k8s")
    w = step("a Service deleted", {"service/default/s8"}, {a("s8.foowidgets.k8s")})
    assert a("s8.foowidgets.k8s") not in w.want

    service(store, "shared-b", "shared.foowidgets.k8s", "192.0.2.21", ttl=300)
    service(store, "shared-a", "shared.foowidgets.k8s", "192.0.2.20", ttl=30)
    w = step("two Services ask for one name", {"service/default/shared-a", "service/default/shared-b"},
             {a("shared.foowidgets.k8s")})
    shared = w.want[a("shared.foowidgets.k8s")]
    assert {r.value for r in shared.values} == {"192.0.2.20", "192.0.2.21"}
    assert (shared.ttl, shared.resource) == (30, "service/default/shared-a"), "the first key's TTL, resource"
    service(store, "shared-a", "shared.foowidgets.k8s")
    w = step("one of them goes", {"service/default/shared-a"}, {a("shared.foowidgets.k8s")})
    shared = w.want[a("shared.foowidgets.k8s")]
    assert ({r.value for r in shared.values}, shared.ttl, shared.resource) == (
        {"192.0.2.21"}, 300, "service/default/shared-b")

    with store.batch():  # a name moving from one Service to another
        service(store, "s9", "s9.foowidgets.k8s")
        service(store, "s10", "s9.foowidgets.k8s", "10.0.0.9")
    w = step("a name moved", {"service/default/s9", "service/default/s10"},
             {a("s9.foowidgets.k8s"), a("s10.foowidgets.k8s")})
    assert w.want[a("s9.foowidgets.k8s")].resource == "service/default/s10"

    service(store, "alias", "s11.foowidgets.k8s", "s12.foowidgets.k8s", rtype="CNAME")
    service(store, "alias", "s11.foowidgets.k8s", "s12.foowidgets.k8s", ttl=90, rtype="CNAME")
    step("changed twice between passes", {"service/default/alias"}, {("s11.foowidgets.k8s", "CNAME")})

    last = step("nothing changed", set(), set())
    store.replace("gslb/demo/fe", [Endpoint("fe.gb.foowidgets.k8s", "A", (Target("10.2.1.98"),))])
    assert step("only a GSLB key changed", set(), set()) == last, "equal to the last pass: nothing to do"
    ref = ObjectRef("Service", "default", "s12")
    store.replace("service/default/s12", [Endpoint("s12.foowidgets.k8s", rtype, (Target(value),), 60, ref)
                                          for rtype, value in (("A", "10.0.0.12"), ("TXT", "hello"))])
    assert step("a change the edge does not publish", {"service/default/s12"}, set()) == last


def in_line(want: Wants) -> Held:
    """The edge zone once our records are there, with our markers, but for one name another owner holds."""
    held = Held()
    for (name, rtype), w in want.want.items():
        held.set((name, rtype), {r.value for r in w.values})
        held.set((marker_name(name, rtype), "TXT"), {marker(OWNER, w.resource)})
    held.set(a("taken.foowidgets.k8s"), {"192.0.2.99"})
    held.set((marker_name("taken.foowidgets.k8s", "A"), "TXT"), {marker("other", "service/x/y")})
    return held


def test_planning_only_the_changed_names_against_a_kept_view_is_planning_the_whole_zone() -> None:
    store = Store()
    for i in range(500):
        service(store, f"s{i}", f"s{i}.foowidgets.k8s", f"10.0.{i // 250}.{i % 250}")
    service(store, "taken", "taken.foowidgets.k8s", "192.0.2.1")
    wanted = Wanted(SETTINGS, ZONE)
    store.subscribe_keys(wanted.changed)
    held = in_line(wanted.update(store))
    assert plan(held, wanted.want, OWNER).skipped == [a("taken.foowidgets.k8s")]

    service(store, "s1", "s1.foowidgets.k8s", "192.0.2.1")  # changed
    service(store, "s2", "s2.foowidgets.k8s")  # gone: its records and marker go
    service(store, "fresh", "fresh.foowidgets.k8s", "192.0.2.3")  # claimed
    service(store, "s3", "s3.foowidgets.k8s", "s4.foowidgets.k8s", rtype="CNAME")  # the A became a CNAME
    w = wanted.update(store)
    part, whole = plan(held, w.want, OWNER, w.changed), plan(held, w.want, OWNER)
    assert (part.deletes, part.adds, part.claims) == (whole.deletes, whole.adds, whole.claims)
    assert part.deletes == [Record("s1.foowidgets.k8s", "A", "10.0.0.1"),
                            Record("s2.foowidgets.k8s", "A", "10.0.0.2"),
                            Record("a-s2.foowidgets.k8s", "TXT", marker(OWNER, "service/default/s2")),
                            Record("s3.foowidgets.k8s", "A", "10.0.0.3"),
                            Record("a-s3.foowidgets.k8s", "TXT", marker(OWNER, "service/default/s3"))]
    assert [m for m, _ in part.claims] == ["a-fresh.foowidgets.k8s"]
    assert part.skipped == [("s3.foowidgets.k8s", "CNAME")], "its own A is still there this round"
    assert whole.skipped == [("s3.foowidgets.k8s", "CNAME"), a("taken.foowidgets.k8s")]
