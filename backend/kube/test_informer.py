"""The order in which a list reaches the handlers, fed the API's own streaming-list events in process:
the first list hands each object on as it arrives; a relist after sync applies nothing until it is
whole, then DELETED first. The same through the real apiserver (streamed and paged):
tests/test_sources_informer.py."""

from __future__ import annotations

from collections.abc import Callable

from kubernetes import client

from backend.kube.informer import INITIAL_EVENTS_END, SERVICES, Informer
from backend.model import Endpoint, Obj, Store, Target


def added(name: str, rv: str) -> dict:
    return {"type": "ADDED", "object": {"metadata": {"namespace": "ns", "name": name, "resourceVersion": rv}}}


def initial_events_end(rv: str) -> dict:
    return {"type": "BOOKMARK",
            "object": {"metadata": {"resourceVersion": rv, "annotations": {INITIAL_EVENTS_END: "true"}}}}


class Handler:
    """Records each call with what the informer itself held at that moment."""

    def __init__(self, inf: Informer) -> None:
        self.inf = inf
        self.calls: list[tuple[str, str, str | None]] = []  # (type, name, rv then held under its key)

    def __call__(self, type_: str, obj: Obj, _old: Obj | None) -> None:
        meta = obj["metadata"]
        now = self.inf.get(f"ns/{meta['name']}")
        self.calls.append((type_, meta["name"], None if now is None else now["metadata"]["resourceVersion"]))


def listed(inf: Informer, *events: dict) -> None:
    """A streaming list as `_watch` takes it: begun once the API answered, then its events."""
    inf._begin_list()
    for event in events:
        inf._apply(event)


def synced_informer() -> tuple[Informer, Handler]:
    inf = Informer(client.ApiClient(), SERVICES)
    inf.add_index("rv", lambda obj: [obj["metadata"]["resourceVersion"]])
    handler = Handler(inf)
    inf.add_handler(handler)
    listed(inf, added("a", "1"), added("b", "2"), added("c", "3"))
    assert handler.calls[:1] == [("ADDED", "a", "1")] and not inf.synced.is_set(), (
        "the first list hands each object on as it arrives")
    inf._apply(initial_events_end("3"))
    assert inf.synced.is_set()
    handler.calls.clear()
    return inf, handler


def test_a_relist_after_sync_applies_nothing_until_whole_then_reports_deleted_first() -> None:
    inf, handler = synced_informer()
    # "a" deleted while away, "b" changed, "c" unchanged, "d" new (as a name moving from a to d)
    listed(inf, added("b", "5"), added("c", "3"), added("d", "6"))
    assert handler.calls == [], "nothing handed on while the relist runs"
    assert sorted(inf.objects) == ["ns/a", "ns/b", "ns/c"], "the informer's own view is the last good state"
    assert [o["metadata"]["name"] for o in inf.by_index("rv", "2")] == ["b"] and not inf.by_index("rv", "5")
    inf._apply(initial_events_end("6"))
    assert handler.calls == [("DELETED", "a", None), ("MODIFIED", "b", "5"), ("ADDED", "d", "6")]
    assert sorted(inf.objects) == ["ns/b", "ns/c", "ns/d"] and inf.resource_version == "6"
    assert [o["metadata"]["name"] for o in inf.by_index("rv", "5")] == ["b"] and not inf.by_index("rv", "2")


def test_a_relist_cut_short_and_restarted_applies_nothing_it_held() -> None:
    inf, handler = synced_informer()
    listed(inf, added("a", "1"), added("late", "7"))  # the connection is lost here
    listed(inf, added("a", "1"), added("b", "2"), added("c", "3"), initial_events_end("8"))
    assert handler.calls == [], "the restarted list names nothing new: the cut one's object is dropped"
    assert sorted(inf.objects) == ["ns/a", "ns/b", "ns/c"]



def test_a_relist_reaches_the_store_at_once_so_a_moved_name_always_has_an_owner() -> None:
    """"a" deleted while away and "d" made with its hostname: a compile (a Store listener) between the
    two writes would serve the name with neither owner, NXDOMAIN that resolvers cache."""
    store = Store()
    addresses = {"a": "10.0.0.1", "d": "10.0.0.4"}  # the two owners of x.example; "b" publishes nothing

    def write(type_: str, obj: Obj, _old: Obj | None) -> None:
        name = obj["metadata"]["name"]
        eps = [Endpoint("x.example", "A", (Target(addresses[name]),))] if name in addresses else []
        store.replace(f"service/ns/{name}", [] if type_ == "DELETED" else eps)

    inf = Informer(client.ApiClient(), SERVICES, batch=store.batch)
    inf.add_handler(write)
    listed(inf, added("a", "1"), added("b", "2"), initial_events_end("2"))
    assert list(store.snapshot()[1]) == ["service/ns/a"]
    seen: list[list[str]] = []  # the Store's keys at each notification
    store.subscribe(lambda _version: seen.append(sorted(store.snapshot()[1])))
    listed(inf, added("b", "2"), added("d", "6"), initial_events_end("6"))
    assert seen == [["service/ns/d"]], "one notification, and the name's new owner already in it"


class Scripted(Informer):
    """`_watch` replaced by steps (a small double of the API's connection): each gets the informer and
    whether `_run` asked for a streaming list (`initial`)."""

    def __init__(self, *steps: Callable[[Informer], None]) -> None:
        super().__init__(client.ApiClient(), SERVICES, backoff_cap=0.2)
        self.steps = list(steps)
        self.initials: list[bool] = []

    def _watch(self, initial: bool = False) -> None:
        self.initials.append(initial)
        self.steps.pop(0)(self)


def lost(inf: Informer) -> None:
    raise OSError("connection reset by peer")


def stop(inf: Informer) -> None:
    inf._stop.set()


def test_a_connection_lost_after_its_list_resumes_the_watch_and_one_lost_mid_list_lists_again() -> None:
    def whole_then_lost(inf: Informer) -> None:
        listed(inf, added("a", "1"), initial_events_end("3"))
        lost(inf)

    def cut_mid_list(inf: Informer) -> None:
        listed(inf, added("a", "1"))
        lost(inf)

    inf = Scripted(whole_then_lost, stop)
    inf._run()
    assert inf.initials == [True, False] and inf.resource_version == "3", "the watch resumed, no relist"
    inf = Scripted(cut_mid_list, whole_then_lost, stop)
    inf._run()
    assert inf.initials == [True, True, False]
