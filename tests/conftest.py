"""Shared fixtures: leak checks for processes, fds and shared memory."""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from nooks.domain.incarnation import wait_cgroups_ended
from nooks.fs.statelog import StateLog, size_for


def child_pids() -> set[int]:
    me = str(os.getpid())
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            out.add(int(entry))
    return out


def open_fds() -> dict[int, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    return out


@dataclass
class Snapshot:
    children: set[int]
    fds: dict[int, str]

    @staticmethod
    def take() -> Snapshot:
        return Snapshot(child_pids(), open_fds())

    def leaks(self) -> list[str]:
        now = Snapshot.take()
        out = [f"child process {p}" for p in now.children - self.children]
        out += [f"fd {fd} -> {target}" for fd, target in now.fds.items()
                if fd not in self.fds
                and ("nooks" in target or target.startswith(("socket:", "anon_inode:[pidfd]")))]
        return out


@pytest.fixture
def no_leaks() -> Iterator[Snapshot]:
    """Fails the test if it leaves a child process, socket, pidfd or arena open."""
    snap = Snapshot.take()
    yield snap
    wait_cgroups_ended()  # ended on threads of their own as domains exit
    leaks = snap.leaks()
    assert not leaks, f"leaked: {leaks}"


@contextlib.contextmanager
def anonymous_log(buffer: int) -> Iterator[StateLog]:
    """A ``StateLog`` with two ``buffer``-byte buffers in anonymous memory."""
    m = mmap.mmap(-1, size_for(buffer))
    view = memoryview(m)
    log = StateLog(view)
    try:
        yield log
    finally:
        log.close()
        view.release()
        m.close()
