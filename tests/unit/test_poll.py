"""Adaptive polling: a long spin while messages stream, a short one after a pause."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from nooks.xpc.poll import Poller

Pair = tuple[socket.socket, socket.socket]
pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                                reason="polling is off with one CPU")


@pytest.fixture
def pair() -> Iterator[Pair]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a, b
    a.close()
    b.close()


def test_streaming_messages_spin_long_and_a_pause_spins_short(pair: Pair) -> None:
    a, b = pair
    buf = bytearray(64)
    p = Poller(50, 1000)
    assert p.budget == pytest.approx(50e-6)  # (the first wait: nothing streams yet)
    a.send(b"one")
    assert p.recv(b, buf) == 3 and buf[:3] == b"one"
    assert p.budget == pytest.approx(1e-3)  # it came at once: messages stream
    # the next one comes long after the busy budget: the domain may sleep again
    timer = threading.Timer(0.05, a.send, (b"two",))
    t0 = time.perf_counter()
    timer.start()
    assert p.recv(b, buf) == 3 and buf[:3] == b"two"
    assert time.perf_counter() - t0 >= 0.05
    timer.join()
    assert p.budget == pytest.approx(50e-6)


def test_without_a_busy_budget_it_spins_the_base_only(pair: Pair) -> None:
    a, b = pair
    buf = bytearray(64)
    p = Poller(50)
    a.send(b"x")
    assert p.recv(b, buf) == 1
    assert p.budget == pytest.approx(50e-6)


def test_a_closed_peer_is_an_empty_read(pair: Pair) -> None:
    a, b = pair
    p = Poller(50, 1000)
    a.close()
    assert p.recv(b, bytearray(8)) == 0
