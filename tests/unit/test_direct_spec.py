"""Direct mode's recovery step (``DirectSpec.prepare_restart``) with a fake
connection: what the dead domain had in flight goes back to the kernel, and a
request in flight through ``max_tries`` failures is answered EIO by the host."""

from __future__ import annotations

import errno
import mmap
import os
from typing import Any

from nooks.fs import kernelproto as kp
from nooks.fs.direct import DirectSpec
from nooks.fs.inflight import InFlight, size_for
from nooks.fs.serve import RESEND


class FakeConnection:
    can_resend = True

    def __init__(self) -> None:
        self.rfd, self.fd = os.pipe()
        self.resends = 0

    def resend(self) -> None:
        self.resends += 1

    def written(self) -> list[tuple[int, int]]:
        """(unique, error) of each reply written."""
        os.set_blocking(self.rfd, False)
        try:
            data = os.read(self.rfd, 1 << 16)
        except BlockingIOError:
            return []
        out = []
        while data:
            length, error, unique = kp.OUT_HEADER.unpack_from(data)
            out.append((unique, -error))
            data = data[length:]
        return out


class FakeSession:
    def __init__(self) -> None:
        self.conn: Any = FakeConnection()
        self.inflight = InFlight(memoryview(mmap.mmap(-1, size_for(1))))


def test_in_flight_requests_are_given_back_then_poison_is_answered() -> None:
    session = FakeSession()
    spec = DirectSpec(session, max_tries=3)  # type: ignore[arg-type]
    session.inflight.took(0, 40, kp.Op.READ, 1)
    spec.prepare_restart()  # the first driver died with request 40
    assert session.conn.resends == 1 and session.conn.written() == []
    session.inflight.took(0, 40 | RESEND, kp.Op.READ, 2)  # and the second
    spec.prepare_restart()
    assert session.conn.written() == []
    session.inflight.took(0, 40 | RESEND, kp.Op.READ, 3)  # and the third: poison
    spec.prepare_restart()
    assert session.conn.written() == [(40 | RESEND, errno.EIO)]
    assert spec.poisoned == 1 and session.inflight.taken() == []
    assert session.conn.resends == 3


def test_a_failure_on_another_request_starts_the_count_again() -> None:
    session = FakeSession()
    spec = DirectSpec(session, max_tries=2)  # type: ignore[arg-type]
    for unique in (40, 42, 40 | RESEND):
        session.inflight.took(0, unique, kp.Op.GETATTR, 1)
        spec.prepare_restart()
    assert session.conn.written() == [] and spec.poisoned == 0


def test_without_resend_the_recorded_request_is_answered_at_once() -> None:
    session = FakeSession()
    session.conn.can_resend = False
    spec = DirectSpec(session, max_tries=3)  # type: ignore[arg-type]
    session.inflight.took(0, 8, kp.Op.LOOKUP, 1)
    spec.prepare_restart()
    assert session.conn.written() == [(8, errno.EIO)] and session.conn.resends == 0


def test_a_driver_that_failed_before_reading_leaves_the_counts() -> None:
    """A recovery attempt whose driver failed while it was built read nothing: the
    request's count stands, and the entry given back is not seen again."""
    session = FakeSession()
    spec = DirectSpec(session, max_tries=2)  # type: ignore[arg-type]
    session.inflight.took(0, 40, kp.Op.READ, 1)
    spec.prepare_restart()
    assert session.inflight.taken() == []  # (given back: no stale entry to look hung)
    spec.prepare_restart()  # a driver that never read
    session.inflight.took(0, 40 | RESEND, kp.Op.READ, 2)
    spec.prepare_restart()
    assert session.conn.written() == [(40 | RESEND, errno.EIO)]
