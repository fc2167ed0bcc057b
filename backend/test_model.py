"""Store.batch: a thread's writes applied together, seen all or none, with one notification."""

from __future__ import annotations

import threading

from backend.model import Endpoint, Store, Target


def eps(address: str) -> list[Endpoint]:
    return [Endpoint("x.example", "A", (Target(address),))]


def test_a_batch_is_seen_all_at_once_with_one_notification() -> None:
    store = Store()
    store.replace("service/ns/a", eps("10.0.0.1"))
    versions: list[int] = []
    keys: list[frozenset[str]] = []
    store.subscribe(versions.append)
    store.subscribe_keys(keys.append)
    before = store.version
    with store.batch():
        assert store.replace("service/ns/a", []) is True
        assert store.replace("service/ns/a", []) is False, "compared with what the batch holds so far"
        with store.batch():  # nested: the outer one applies
            assert store.replace("service/ns/d", eps("10.0.0.4")) is True
        assert store.snapshot()[1] == {"service/ns/a": tuple(eps("10.0.0.1"))}, "nothing seen before the end"
        assert versions == []
    assert store.snapshot()[1] == {"service/ns/d": tuple(eps("10.0.0.4"))}
    assert versions == [before + 1] and keys == [frozenset({"service/ns/a", "service/ns/d"})]


def test_other_threads_writes_are_applied_while_a_batch_runs() -> None:
    store = Store()
    with store.batch():
        store.replace("service/ns/a", eps("10.0.0.1"))
        other = threading.Thread(target=store.replace, args=("peer/us-nyc", eps("10.0.0.9")))
        other.start()
        other.join(5)
        assert list(store.snapshot()[1]) == ["peer/us-nyc"], "another thread's write is not held back"
    assert sorted(store.snapshot()[1]) == ["peer/us-nyc", "service/ns/a"]


def test_a_batch_that_changes_nothing_notifies_no_one() -> None:
    store = Store()
    store.replace("service/ns/a", eps("10.0.0.1"))
    versions: list[int] = []
    store.subscribe(versions.append)
    with store.batch():
        store.replace("service/ns/a", [])
        store.replace("service/ns/a", eps("10.0.0.1"))
    assert versions == [] and store.snapshot()[1] == {"service/ns/a": tuple(eps("10.0.0.1"))}
