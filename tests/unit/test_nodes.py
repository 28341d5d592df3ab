"""The node table: counts as the kernel keeps them, paths as a path-based driver
needs them, and the same table rebuilt from its log by a successor."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from nooks.fs.kernelproto import ROOT_ID
from nooks.fs.nodes import Nodes
from nooks.fs.statelog import COMPACT_SLACK, StateLog
from tests.conftest import anonymous_log


@pytest.fixture
def log() -> Iterator[StateLog]:
    with anonymous_log(4096) as log:
        yield log


def _table(nodes: Nodes) -> dict[int, tuple[bytes | None, int]]:
    return {k: (nodes.path(k), n.count) for k, n in nodes.nodes.items()}


def test_a_name_looked_up_twice_is_one_node_until_forgotten(log: StateLog) -> None:
    nodes = Nodes(log)
    d = nodes.lookup(ROOT_ID, b"d")
    assert nodes.lookup(ROOT_ID, b"d") == d and nodes.nodes[d].count == 2
    f = nodes.lookup(d, b"f")
    assert nodes.path(f) == b"/d/f" and nodes.path(ROOT_ID) == b"/"
    nodes.forget(f, 1)
    assert f not in nodes.nodes and nodes.lookup(d, b"f") != f  # (gone: a new one)


def test_a_rename_moves_what_is_under_it_and_an_unlink_takes_the_name(
        log: StateLog) -> None:
    nodes = Nodes(log)
    d = nodes.lookup(ROOT_ID, b"d")
    f = nodes.lookup(d, b"f")
    e = nodes.lookup(ROOT_ID, b"e")
    nodes.moved(ROOT_ID, b"d", ROOT_ID, b"e")  # (onto e: e loses its name)
    assert nodes.path(f) == b"/e/f" and nodes.path(e) is None
    nodes.removed(d, b"f")
    assert nodes.path(f) is None and f in nodes.nodes  # (until the kernel forgets it)
    assert nodes.lookup(d, b"f") != f


def test_a_successor_rebuilds_the_same_table_from_the_log() -> None:
    """Random work — lookups, forgets, renames, unlinks — enough to fill the log
    and compact it; a fresh table read from the log is the same."""
    with anonymous_log(32768) as log:
        _rebuilt_alike(log)


def _rebuilt_alike(log: StateLog) -> None:
    rng = random.Random(12)
    nodes = Nodes(log)
    names = [b"a", b"b", b"c", b"longer-name-%d" % 7]
    for _ in range(3000):
        known = list(nodes.nodes)
        parent = rng.choice(known)
        what = rng.random()
        if what < 0.5:
            nodes.lookup(parent, rng.choice(names))
        elif what < 0.8:
            node = rng.choice(known)
            nodes.forget(node, rng.randint(1, 2))
        elif what < 0.9:
            nodes.moved(parent, rng.choice(names), rng.choice(known), rng.choice(names))
        else:
            nodes.removed(parent, rng.choice(names))
    again = Nodes(log)
    assert _table(again) == _table(nodes) and not log.torn
    assert len(list(log.records())) < 3000  # (compacted on the way)
    assert again.next_id == nodes.next_id  # (ids are not handed out twice)


def test_a_hidden_node_stays_hidden_for_a_successor_and_across_compaction() -> None:
    with anonymous_log(512) as log:
        nodes = Nodes(log)
        hidden = nodes.lookup(ROOT_ID, b"open-then-unlinked")
        plain = nodes.lookup(ROOT_ID, b".fuse_hidden0000000200000001")  # (merely named so)
        nodes.moved(ROOT_ID, b"open-then-unlinked", ROOT_ID, b".fuse_hidden0000000100000001")
        nodes.hide(hidden)
        for i in range(100):  # past the buffer: compacted on the way
            nodes.forget(nodes.lookup(ROOT_ID, b"x%d" % i), 1)
        again = Nodes(log)
        assert again.nodes[hidden].hidden and not again.nodes[plain].hidden
        assert again.path(hidden) == b"/.fuse_hidden0000000100000001"


def test_a_storm_of_lookups_leaves_a_log_in_proportion_to_the_table() -> None:
    """Each lookup is a record; the log is compacted long before it is full, so a
    successor reads back about the table, with the same counts."""
    with anonymous_log(1 << 20) as big:
        nodes = Nodes(big)
        names = [nodes.lookup(ROOT_ID, f"f{i}".encode()) for i in range(10)]
        for _ in range(20_000):
            nodes.lookup(ROOT_ID, b"f3")
        assert len(list(big.records())) <= COMPACT_SLACK + 2 * len(nodes.nodes) + 1
        successor = Nodes(big)
        assert _table(successor) == _table(nodes)
        assert successor.nodes[names[3]].count == 20_001
