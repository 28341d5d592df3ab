"""Adaptive polling: a long spin while messages stream, a short one after a pause,
none where the process has one CPU or was told not to poll."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest

from nooks.xpc import poll
from nooks.xpc.poll import Poller


class _Clock:
    """The poller's clock, moved by the fake receive: each message comes ``wait``
    seconds after its receive began."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> tuple[_Clock, list[float], list[float]]:
    """Two CPUs, a fake clock, and a receive that records the budget it was given
    and takes as long as the next of ``waits`` says."""
    clock, budgets, waits = _Clock(), list[float](), list[float]()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(poll, "time", clock)

    def recv_spinning(sock: Any, buf: bytearray, budget: float) -> int:
        budgets.append(budget)
        clock.now += waits.pop(0)
        return 1

    monkeypatch.setattr(poll, "recv_spinning", recv_spinning)
    return clock, budgets, waits


def test_streaming_messages_spin_long_and_a_pause_spins_short(
        fake: tuple[_Clock, list[float], list[float]]) -> None:
    _, budgets, waits = fake
    p = Poller(50, 2000)
    # at once, soon, after a pause (longer than 2 ms), at once again
    waits += [0.0, 0.0015, 0.5, 0.0001, 0.0001]
    for _ in range(5):
        p.recv(None, bytearray(1))  # type: ignore[arg-type]
    assert budgets == pytest.approx([50e-6, 2e-3, 2e-3, 50e-6, 2e-3])
    assert p.budget == pytest.approx(2e-3)


def test_without_a_busy_budget_or_a_base_it_spins_the_base_only(
        fake: tuple[_Clock, list[float], list[float]]) -> None:
    _, budgets, waits = fake
    waits += [0.0] * 4
    for p in (Poller(50), Poller(0, 2000)):  # (told not to poll: never does)
        p.recv(None, bytearray(1))  # type: ignore[arg-type]
        p.recv(None, bytearray(1))  # type: ignore[arg-type]
    assert budgets == pytest.approx([50e-6, 50e-6, 0.0, 0.0])


def test_with_one_cpu_it_never_spins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    p = Poller(50, 2000)
    assert p.budget == 0.0
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        a.send(b"one")
        buf = bytearray(8)
        assert p.recv(b, buf) == 3 and buf[:3] == b"one"  # (a real socket, blocking)
        assert p.budget == 0.0
        a.close()
        assert p.recv(b, buf) == 0  # a closed peer: an empty read
