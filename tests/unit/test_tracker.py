"""ObjectTracker: per-domain table of host objects behind opaque ids."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from nooks.domain.tracker import NotOwned, ObjectTracker


class Thing:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Thing({self.name})"


def test_add_then_get_returns_the_same_object() -> None:
    t = ObjectTracker("dom")
    a, b = Thing("a"), Thing("b")
    ia = t.add("file", a)
    ib = t.add("irq", b)
    assert ia != ib
    assert t.get(ia, "file") is a
    assert t.get(ib, "irq") is b


def test_get_unknown_id_raises_not_owned_naming_id_kind_and_owner() -> None:
    t = ObjectTracker("netdrv")
    t.add("file", Thing("a"))
    with pytest.raises(NotOwned) as ei:
        t.get(12345, "file")
    text = str(ei.value)
    assert "12345" in text
    assert "file" in text
    assert "netdrv" in text


def test_get_with_wrong_kind_raises_not_owned_naming_both_kinds() -> None:
    t = ObjectTracker("dom")
    oid = t.add("file", Thing("a"))
    with pytest.raises(NotOwned) as ei:
        t.get(oid, "irq")
    text = str(ei.value)
    assert str(oid) in text
    assert "file" in text
    assert "irq" in text
    # the failed lookup did not disturb the entry
    assert t.get(oid, "file").name == "a"


def test_ids_of_one_tracker_are_not_valid_in_another() -> None:
    mine, other = ObjectTracker("mine"), ObjectTracker("other")
    secret = Thing("secret")
    oid = mine.add("file", secret)
    with pytest.raises(NotOwned, match="other"):
        other.get(oid, "file")
    with pytest.raises(NotOwned):
        other.release(oid, "file")
    with pytest.raises(NotOwned):
        other.remove(oid, "file")
    # even when the other table holds objects, the first table's object is never
    # reachable through it
    for i in range(5):
        other.add("file", Thing(f"other{i}"))
    for candidate in range(0, 10):
        try:
            found = other.get(candidate, "file")
        except NotOwned:
            continue
        assert found is not secret
    assert mine.get(oid, "file") is secret


def test_remove_forgets_without_running_release() -> None:
    released: list[Any] = []
    t = ObjectTracker("dom")
    obj = Thing("a")
    oid = t.add("file", obj, released.append)
    assert t.remove(oid, "file") is obj
    assert released == []
    assert len(t) == 0
    with pytest.raises(NotOwned):
        t.get(oid, "file")
    # nothing left to release
    assert t.release_all() == 0
    assert released == []


def test_remove_with_wrong_kind_keeps_the_entry() -> None:
    t = ObjectTracker("dom")
    oid = t.add("file", Thing("a"))
    with pytest.raises(NotOwned):
        t.remove(oid, "irq")
    assert len(t) == 1


def test_release_runs_release_once_and_forgets() -> None:
    released: list[Any] = []
    t = ObjectTracker("dom")
    obj = Thing("a")
    oid = t.add("file", obj, released.append)
    t.release(oid, "file")
    assert released == [obj]
    assert len(t) == 0
    with pytest.raises(NotOwned):
        t.release(oid, "file")
    assert released == [obj]


def test_release_without_release_function_just_forgets() -> None:
    t = ObjectTracker("dom")
    oid = t.add("file", Thing("a"))
    t.release(oid, "file")
    assert len(t) == 0


def test_release_with_wrong_kind_does_not_release() -> None:
    released: list[Any] = []
    t = ObjectTracker("dom")
    oid = t.add("file", Thing("a"), released.append)
    with pytest.raises(NotOwned):
        t.release(oid, "irq")
    assert released == []
    assert len(t) == 1


def test_release_all_runs_newest_first_and_returns_count() -> None:
    order: list[str] = []
    t = ObjectTracker("dom")
    for name in ("first", "second", "third"):
        t.add("file", Thing(name), lambda o: order.append(o.name))
    t.add("irq", Thing("no-release"))  # counted, but has nothing to run
    t.add("irq", Thing("fourth"), lambda o: order.append(o.name))
    assert t.release_all() == 5
    assert order == ["fourth", "third", "second", "first"]
    assert len(t) == 0
    assert t.counts() == {}
    assert t.release_all() == 0


def test_release_all_continues_past_a_failing_release(caplog: pytest.LogCaptureFixture) -> None:
    order: list[str] = []

    def boom(o: Thing) -> None:
        order.append(o.name)
        raise RuntimeError("release exploded")

    t = ObjectTracker("faulty")
    t.add("file", Thing("a"), lambda o: order.append(o.name))
    bad = t.add("dma", Thing("b"), boom)
    t.add("file", Thing("c"), lambda o: order.append(o.name))
    with caplog.at_level(logging.ERROR, logger="nooks.domain.tracker"):
        assert t.release_all() == 3
    assert order == ["c", "b", "a"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    msg = errors[0].getMessage()
    assert "dma" in msg
    assert str(bad) in msg
    assert "faulty" in msg
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)
    assert len(t) == 0


def test_counts_and_len_follow_adds_and_removals() -> None:
    t = ObjectTracker("dom")
    assert len(t) == 0
    assert t.counts() == {}
    f1 = t.add("file", Thing("f1"))
    t.add("file", Thing("f2"))
    i1 = t.add("irq", Thing("i1"))
    assert len(t) == 3
    assert t.counts() == {"file": 2, "irq": 1}
    t.remove(f1, "file")
    t.release(i1, "irq")
    assert len(t) == 1
    assert t.counts() == {"file": 1}
    assert "file" in repr(t)
