"""Adaptive polling: wait for a datagram by spinning briefly before sleeping.

A synchronous crossing between two processes on different CPUs costs a
wake-up of a sleeping CPU each way; on a virtual machine that is an interrupt
through the hypervisor, about 25 µs. Spinning on a non-blocking receive for a
few tens of microseconds before blocking avoids it when the answer comes
quickly, which is the common case for a driver call. Each turn of the loop
yields the CPU, so a peer that the scheduler put on the same CPU runs at once
instead of waiting for the poll to give up (measured here: a same-CPU round
trip of 10 µs with yielding, 108 µs without; across CPUs 17 µs, against 51 µs
with no polling at all). With only one CPU allowed, ``spin_budget`` turns
polling off.

Under a stream of calls a short spin does not pay: a call that comes every few
hundred microseconds finds the domain asleep each time, and the wake-up of its
CPU then costs the host more than the call (measured: an RTL8139 driver moving
0.11 Gbit/s with 50 µs of polling, 0.20 with 2 ms). ``Poller`` spins longer while
messages come closer together than its ``busy`` budget, and only that briefly
otherwise, so an idle domain sleeps.
"""

from __future__ import annotations

import os
import socket
import time

_DONTWAIT = socket.MSG_DONTWAIT
yield_cpu = os.sched_yield


def spin_budget(spin_us: float) -> float:
    """Seconds to spin before blocking, for this process: 0 with fewer than 2 CPUs."""
    if spin_us <= 0 or len(os.sched_getaffinity(0)) < 2:
        return 0.0
    return spin_us / 1e6


def recv_spinning(sock: socket.socket, buf: bytearray, budget: float) -> int:
    """``sock.recv_into(buf)``, spinning up to ``budget`` seconds first."""
    if budget > 0:
        end = time.perf_counter() + budget
        recv = sock.recv_into
        while True:
            try:
                return recv(buf, 0, _DONTWAIT)
            except BlockingIOError:
                # let a peer that shares this CPU run: polling must never keep it out
                yield_cpu()
                if time.perf_counter() > end:
                    break
    return sock.recv_into(buf)


class Poller:
    """``recv_spinning`` with a budget that follows the traffic: ``busy`` seconds
    after a message that came within ``busy`` of the wait's start (messages are
    streaming), else ``base`` (the first wait, or after a pause)."""

    __slots__ = ("_base", "_budget", "_busy")

    def __init__(self, base_us: float, busy_us: float = 0.0) -> None:
        self._base = spin_budget(base_us)
        # (no polling at all stays so: a process told not to poll never does)
        self._busy = max(self._base, spin_budget(busy_us)) if self._base else 0.0
        self._budget = self._base

    @property
    def budget(self) -> float:
        """Seconds the next receive spins before it sleeps."""
        return self._budget

    def recv(self, sock: socket.socket, buf: bytearray) -> int:
        if self._busy <= self._base:
            return recv_spinning(sock, buf, self._base)
        t0 = time.perf_counter()
        n = recv_spinning(sock, buf, self._budget)
        self._budget = self._busy if time.perf_counter() - t0 < self._busy else self._base
        return n
